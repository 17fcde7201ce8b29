"""ONNX model file -> training checkpoint, for roll-nade-lstm (single or ensemble).

A shipped `nade-step` file whose torch checkpoint is gone can be fine-tuned again once its
weights are back in torch. The file's metadata holds the family, the model args and the
representation; its initializers hold the weights (``m.X`` for a single model,
``steps.<i>.m.X`` for ensemble member i; ``X__f16`` where the file stores float16), except
the frame LSTM's, which the exporter folded: ``weight_ih^T`` and ``weight_hh^T`` under
anonymous names (``t``, ``t_1``...) and ``bias_ih + bias_hh`` as one summed vector. Those are
found by the graph: each cell is an Add of two MatMuls (input @ W_ih^T, h @ W_hh^T) followed
by an Add of the bias; the MatMul whose input lies closest to the member's state input
``h[_i]`` is the recurrent one, and a member's layers come in the graph's (topological)
order. The summed bias is split as bias_ih = its float16 rounding, bias_hh = the rest, so the
sum is exact and a float16 re-export (`companion export --float16`) changes it by < 1e-6
relative.

The rebuilt model is checked before anything is written: its full-sequence logits must equal
onnxruntime's step-by-step ones (within ``--atol``, default 1e-3) on a few streams, the test
pieces of the benchmark the file was trained on when its metadata names one
(``benchmark:<set>``), else random ones. The checkpoint gets the file's metadata (corpus,
metrics, training) and ``recovered_from``.

    python -m midi_companion.export.recover_checkpoint models/zoo/bench-jsb.onnx \
        -o /tmp/bench-jsb.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
import torch

from midi_companion.export.onnx_export import ort_session
from midi_companion.models import roll_nade as rn
from midi_companion.models.checkpoint import CHECKPOINT_FORMAT


def _initializers(graph) -> dict[str, np.ndarray]:
    """Initializer name -> float32 array; a ``X__f16`` read through its Cast is named X."""
    from onnx import numpy_helper

    out = {}
    for init in graph.initializer:
        a = numpy_helper.to_array(init)
        name = init.name[:-5] if init.name.endswith("__f16") else init.name
        out[name] = a.astype(np.float32) if a.dtype == np.float16 else a
    return out


def _distances(graph, start: str) -> dict[str, int]:
    """Tensor name -> number of nodes between graph input `start` and it (BFS forward)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dist, queue = {start: 0}, deque([start])
    while queue:
        x = queue.popleft()
        for n in consumers.get(x, []):
            for o in n.output:
                if o not in dist:
                    dist[o] = dist[x] + 1
                    queue.append(o)
    return dist


def _frame_cells(
    graph, inits: dict[str, np.ndarray], state_inputs: list[str], hidden: list[int]
) -> dict[int, list[dict]]:
    """Member index -> its frame-LSTM cells in layer order, each {"w_ih", "w_hh", "bias"}
    in nn.LSTM's layout, traced from the graph (see the module doc)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    order = {id(n): k for k, n in enumerate(graph.node)}
    dists = [_distances(graph, h) for h in state_inputs]

    def weight(name: str) -> str | None:  # an initializer, directly or through a Cast
        if name in inits:
            return name
        n = producer.get(name)
        if n is not None and n.op_type == "Cast" and n.input[0] in inits:
            return n.input[0]
        return None

    cells: dict[int, list] = {}
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        mms = [producer.get(i) for i in add.input]
        if not all(m is not None and m.op_type == "MatMul" for m in mms):
            continue
        ws = [weight(m.input[1]) for m in mms]
        if None in ws or any(inits[w].ndim != 2 for w in ws):
            continue
        four_h = inits[ws[0]].shape[1]
        if inits[ws[1]].shape[1] != four_h or four_h % 4 or four_h // 4 not in hidden:
            continue
        # the recurrent MatMul: its input is nearest to a member's state input h[_i]
        near = [
            (d.get(m.input[0], 10**9), i, j) for i, d in enumerate(dists) for j, m in enumerate(mms)
        ]
        _, member, hh = min(near)
        if inits[ws[hh]].shape[0] != four_h // 4:
            raise ValueError(
                f"{add.name}: the recurrent weight has shape {inits[ws[hh]].shape}, not [H, 4H]"
            )
        bias = None
        for nxt in consumers.get(add.output[0], []):
            if nxt.op_type == "Add":
                other = [weight(i) for i in nxt.input if i != add.output[0]]
                if other and other[0] is not None and inits[other[0]].shape == (four_h,):
                    bias = inits[other[0]]
        if bias is None:
            raise ValueError(f"{add.name}: no bias Add after the frame-LSTM cell")
        cells.setdefault(member, []).append(
            {
                "order": order[id(add)],
                "w_ih": inits[ws[1 - hh]].T,
                "w_hh": inits[ws[hh]].T,
                "bias": bias,
            }
        )
    return {i: sorted(c, key=lambda x: x["order"]) for i, c in cells.items()}


def recover(onnx_path: str | Path) -> dict:
    """The checkpoint dict of a roll-nade-lstm ONNX file (not yet checked: see `check`)."""
    import onnx

    model_file = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model_file.metadata_props}
    if meta.get("family") != rn.FAMILY:
        raise ValueError(f"{onnx_path}: family {meta.get('family')!r}, not {rn.FAMILY!r}")
    args = json.loads(meta["model_args"])
    graph = model_file.graph
    inits = _initializers(graph)
    ensemble = "members" in args
    members = args["members"] if ensemble else [args]
    prefixes = [f"steps.{i}.m." if ensemble else "m." for i in range(len(members))]
    targets = [f"members.{i}." if ensemble else "" for i in range(len(members))]
    members = [{**m, "learn_init": f"{p}init_h" in inits} for m, p in zip(members, prefixes)]
    model = rn.build(rn.FAMILY, None, **({"members": members} if ensemble else members[0]))
    sd = {k: None for k in model.state_dict()}
    for p, t in zip(prefixes, targets):
        for name, a in inits.items():
            if name.startswith(p) and t + name[len(p) :] in sd:
                sd[t + name[len(p) :]] = torch.from_numpy(a.copy())
    states = [s["name"] for s in json.loads(meta["state"])]
    h_inputs = [n for n in states if n == "h" or (n.startswith("h_") and n[2:].isdigit())]
    cells = _frame_cells(graph, inits, h_inputs, [m["hidden"] for m in members])
    for i, (m, t) in enumerate(zip(members, targets)):
        found = cells.get(i, [])
        if len(found) != m["layers"]:
            raise ValueError(
                f"{onnx_path}: member {i} has {len(found)} frame-LSTM cells in the "
                f"graph, its model args say {m['layers']} layers"
            )
        for layer, cell in enumerate(found):
            s = cell["bias"].astype(np.float32)
            b_ih = s.astype(np.float16).astype(np.float32)
            for key, a in (
                ("weight_ih", cell["w_ih"]),
                ("weight_hh", cell["w_hh"]),
                ("bias_ih", b_ih),
                ("bias_hh", s - b_ih),
            ):
                sd[f"{t}frame_lstm.{key}_l{layer}"] = torch.from_numpy(
                    np.ascontiguousarray(a, dtype=np.float32)
                )
    missing = [k for k, v in sd.items() if v is None]
    if missing:
        raise ValueError(f"{onnx_path}: no initializer for {missing}")
    model.load_state_dict(sd)
    load = lambda k: json.loads(meta[k]) if k in meta else {}  # noqa: E731
    return {
        "format": CHECKPOINT_FORMAT,
        "family": rn.FAMILY,
        "model_args": dict(model.model_args),
        "state_dict": model.state_dict(),
        "representation": json.loads(meta["representation"]),
        "corpus": load("corpus"),
        "metrics": load("metrics"),
        "train": load("training"),
        "recovered_from": {"path": str(onnx_path), "weights": meta.get("weights")},
    }


def _streams(ckpt: dict, pieces: int, seed: int = 0) -> list[np.ndarray]:
    """Token streams to check on: test pieces of the file's benchmark, else random."""
    from midi_companion import benchmarks

    names, _ = benchmarks.parse_corpus(ckpt.get("corpus", {}).get("name", ""))
    if names:
        try:
            test = benchmarks.load(names[0])["test"]
            return [rn.stream_tokens(np.asarray(r)) for r in test[:pieces]]
        except Exception:  # no data here: random streams check the weights as well
            pass
    keys = ckpt["model_args"].get("keys") or ckpt["model_args"]["members"][0]["keys"]
    g = torch.Generator().manual_seed(seed)
    return [rn.random_stream(1, 120, keys, g)[0].numpy() for _ in range(pieces)]


def check(ckpt: dict, onnx_path: str | Path, pieces: int = 4) -> float:
    """Largest |torch - onnxruntime| over the raw logits of a few streams."""
    from midi_companion.models.checkpoint import build_model

    model = build_model(ckpt)
    spec = model.export_spec()
    sess = ort_session(onnx_path)
    worst = 0.0
    for toks in _streams(ckpt, pieces):
        with torch.no_grad():
            full = model.stream_logits(torch.from_numpy(toks)[None])[0].numpy()
        state = {k: v.numpy() for k, v in spec.initial_state(1).items()}
        for t, tok in enumerate(toks):
            out = sess.run(spec.output_names, {"token": np.array([[tok]], dtype=np.int64), **state})
            state = dict(zip(state, out[1:]))
            worst = max(worst, float(np.abs(out[0][0] - full[t]).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a roll-nade-lstm ONNX file")
    ap.add_argument("-o", "--output", required=True, help="checkpoint .pt to write")
    ap.add_argument("--pieces", type=int, default=4, help="streams to check on")
    ap.add_argument("--atol", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = recover(args.model)
    diff = check(ckpt, args.model, args.pieces)
    if not diff <= args.atol:
        print(
            f"{args.model}: recovered weights differ from the file by {diff:.3g} > "
            f"{args.atol}; nothing written",
            file=sys.stderr,
        )
        return 1
    torch.save(ckpt, args.output)
    print(
        f"{args.output}: {ckpt['family']} from {args.model}; logits equal "
        f"onnxruntime's within {diff:.2g} on {args.pieces} streams"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
