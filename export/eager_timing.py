"""Torch eager per-step timing of an exported model's architecture, for `companion bench`
(which is torch-free, so it runs this as a subprocess):

    python -m midi_companion.export.eager_timing MODEL.onnx FEEDS.npz   ->  one JSON line on stdout

FEEDS.npz holds the step inputs the runtime fed the ONNX graph, named "<step>/<input>". The
module is rebuilt from the metadata (family, model_args) with fresh weights, which do not
change the cost, and run at batch 1 on one thread on the very same inputs.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import import_module

import numpy as np


def eager_step_ns(model_path: str, feeds_path: str) -> list[int]:
    import torch

    from midi_companion.modelfile import load
    from midi_companion.models import FAMILY_MODULES

    torch.set_num_threads(1)
    model = load(model_path)
    args = json.loads(model.metadata.get("model_args", "{}"))
    family = import_module(FAMILY_MODULES[model.family])
    spec = family.build(model.family, model.representation, **args).eval().export_spec()
    with np.load(feeds_path) as z:
        steps: dict[int, dict[str, np.ndarray]] = {}
        for key in z.files:
            i, name = key.split("/", 1)
            steps.setdefault(int(i), {})[name] = z[key]
    feeds = [steps[i] for i in sorted(steps)]
    n_out = len(spec.outputs)
    times = []
    with torch.no_grad():
        for warm in (True, False):
            state = spec.initial_state(1)
            for f in feeds[:20] if warm else feeds:
                x = [torch.from_numpy(np.asarray(f[name])) for name in spec.step_inputs]
                t0 = time.perf_counter_ns()
                out = spec.module(*x, *state.values())
                if not warm:
                    times.append(time.perf_counter_ns() - t0)
                state = dict(zip(state, out[n_out:]))
    return times


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        usage = "usage: python -m midi_companion.export.eager_timing MODEL.onnx FEEDS.npz"
        print(usage, file=sys.stderr)
        return 2
    import torch

    print(json.dumps({"step_ns": eager_step_ns(*argv), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
