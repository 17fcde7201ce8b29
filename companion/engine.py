"""Engine: one model's onnxruntime session and the recurrent state (or KV cache) it carries
between steps.

Sessions run on one thread, sequentially, with every graph optimization
(companion.modelfile.session_options); voices warm them up at load so the first real step is
as fast as the rest. The CUDA provider is used when it really loads; `engine.provider` says
which one runs.
"""

from __future__ import annotations

import time
from importlib import metadata

import numpy as np


def _wheel_conflict() -> str | None:
    """onnxruntime and onnxruntime-gpu share a module name; with both installed, the one
    imported is whichever pip wrote last. Say so instead of silently running on the CPU."""
    try:
        metadata.version("onnxruntime")
        metadata.version("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return None
    return ("both onnxruntime and onnxruntime-gpu are installed; keep one: "
            "pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu")


def gpu_session(model):
    """A CUDA session of `model` when onnxruntime-gpu really loads it, else None."""
    import onnxruntime as ort

    from companion.modelfile import session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    try:
        sess = ort.InferenceSession(str(model.path), session_options(),
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:  # a CUDA provider that fails to load falls back to the CPU session
        return None
    return sess if sess.get_providers()[0] == "CUDAExecutionProvider" else None


class Engine:
    """Steps one ONNX step-protocol graph, keeping its state between calls.

    ``state_spec`` lists {"name", "shape"} with "B" for the batch axis and 0 for an axis that
    starts empty (a KV cache's time axis). Output ``X_out`` feeds input ``X`` on the next step.
    """

    def __init__(self, model, batch: int = 1, use_gpu: bool = True):
        """`model` is a checked companion.modelfile.ModelFile (state names match the graph)."""
        self.model = model
        self.session = (gpu_session(model) if use_gpu else None) or model.session
        self.provider = self.session.get_providers()[0]
        self.conflict = _wheel_conflict()
        self.batch = batch
        self.state_spec = model.state_spec
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.state: dict[str, np.ndarray] = {}
        self.step_ms: list[float] = []
        self.reset()

    def reset(self, batch: int | None = None) -> None:
        """Zero state (the start of a piece)."""
        if batch is not None:
            self.batch = batch
        self.state = {
            s["name"]: np.zeros([self.batch if d == "B" else int(d) for d in s["shape"]],
                                dtype=np.float32)
            for s in self.state_spec
        }

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one step with `feeds` plus the current state; advance the state."""
        t0 = time.perf_counter_ns()
        outs = self.session.run(self._outputs, {**feeds, **self.state})
        result = dict(zip(self._outputs, outs))
        for name in self.state:
            self.state[name] = result[f"{name}_out"]
        self.step_ms.append((time.perf_counter_ns() - t0) / 1e6)
        if len(self.step_ms) > 4096:
            del self.step_ms[:2048]
        return result

    def snapshot(self) -> dict[str, np.ndarray]:
        """The state now (arrays are replaced, never mutated, so no copy is needed)."""
        return dict(self.state)

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.state = dict(snap)

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 of recent step times, in milliseconds."""
        if not self.step_ms:
            return (0.0, 0.0)
        a = np.asarray(self.step_ms)
        return float(np.percentile(a, 50)), float(np.percentile(a, 99))
