"""Checkpoint -> ONNX step model + metadata, checked against torch.

A family says how it is played through ``Model.export_spec() -> ExportSpec``: a small
``nn.Module`` that runs ONE step (step input(s) and state in, outputs and new state out),
example inputs at batch 2, the state it carries, and how to check it (random valid inputs and
the full-sequence forward). ``export_checkpoint`` rebuilds the model from a self-describing
checkpoint, exports that step with the dynamo exporter (``torch.onnx.export(dynamo=True)``,
batch axis dynamic), writes the metadata the runtime reads (companion/modelfile.py), and
refuses to keep a file that fails the parity check:

- ORT equals torch (every output, state included) within ``atol`` over a 64-step rollout
  where each side carries its own state, and
- the step-by-step outputs equal the full-sequence forward,

at batch sizes other than the example's (the dynamo exporter specializes example sizes 0/1
and silently bakes some sizes, e.g. nn.LSTM's sequence length, into the graph).

A family may add one-shot graphs beside the step (``ExportSpec.graphs``, e.g. lstm-vae's
encoder): each is written to ``<stem>.<name>.onnx``, checked by ``check_graph_parity`` and
named in the step file's metadata under its name; all or none of the files are written.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from midi_companion import modelfile
from midi_companion.errors import CompanionError, ModelError
from midi_companion.modelfile import PROTOCOL_IO
from midi_companion.models.checkpoint import build_model, count_parameters, load_checkpoint
from midi_companion.models.export_spec import ExportSpec, GraphSpec

FORMAT = modelfile.FORMAT


class ParityError(CompanionError, RuntimeError):
    """An exported graph whose outputs differ from torch's: a bug, never a user error."""


def export_onnx(spec: ExportSpec, out_path: str | os.PathLike) -> None:
    """Export the step module with a dynamic batch axis (dynamo exporter, one file)."""
    dims: dict[str, torch.export.Dim] = {}
    flat = [
        {
            axis: dims.setdefault(label, torch.export.Dim(label, min=1, max=4096))
            for axis, label in spec.dynamic_axes.get(name, {}).items()
        }
        for name in spec.input_names
    ]
    dynamic = _nest_like_signature(spec.module.forward, flat)
    # The exporter swaps in a while-loop LSTM/GRU decomposition (dynamic sequence length) by
    # editing the ops' py_kernels without clearing their dispatch caches, so from the second
    # export in a process on, a dynamic time axis through nn.LSTM was silently baked to the
    # example's length (torch 2.13; lstm-vae's encoder). A cleared cache sees the patch.
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        op._dispatch_cache.clear()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter is chatty about its own internals (deprecations, axis renames).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module.eval(),
            tuple(spec.example_inputs),
            str(out_path),
            input_names=list(spec.input_names),
            output_names=spec.output_names,
            dynamo=True,
            dynamic_shapes=dynamic,
            external_data=False,
            optimize=True,
            verbose=False,
        )


def _nest_like_signature(fn, flat: list) -> tuple:
    """Per-input dynamic shapes in the structure torch.export expects for ``fn``'s
    parameters: one entry per positional parameter, a tuple for ``*args``."""
    out, i = [], 0
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            out.append(tuple(flat[i:]))
            i = len(flat)
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and i < len(flat):
            out.append(flat[i])
            i += 1
    return tuple(out)


def write_metadata(path: str | os.PathLike, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def round_to_float16(model: nn.Module) -> None:
    """Round every floating-point weight to the nearest float16 (kept in float32), so that the
    torch model the parity check runs is exactly the model `store_float16` writes."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.half().float())


def store_float16(path: str | os.PathLike, min_elements: int = 16) -> int:
    """Rewrite an ONNX file so that its float32 weights are stored as float16, each read
    through a Cast back to float32: half the bytes; the computation stays float32 (the
    runtime folds each Cast once, at load). Only weights that float16 holds exactly are
    converted (all of them after `round_to_float16`, except what the exporter computed from
    several, such as summed biases), so the file computes exactly what torch did.
    Returns how many initializers were converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    keep, casts = [], []
    for init in graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type != TensorProto.FLOAT or n < min_elements:
            keep.append(init)
            continue
        full = numpy_helper.to_array(init)
        if not np.array_equal(full.astype(np.float16).astype(np.float32), full):
            keep.append(init)  # folded by the exporter (two biases summed): not exact in f16
            continue
        half = numpy_helper.from_array(full.astype(np.float16), name=f"{init.name}__f16")
        keep.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__to_f32"
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def metadata(model: nn.Module, ckpt: dict, spec: ExportSpec) -> dict[str, str]:
    """The metadata_props of a model file (strings; JSON where structured)."""
    from midi_companion import representations

    rep = representations.from_dict(ckpt["representation"])
    js = lambda x: json.dumps(x, separators=(",", ":"))  # noqa: E731
    return {
        "format": FORMAT,
        "family": ckpt["family"],
        "protocol": model.protocol,
        "representation": rep.to_json(),
        "state": js(spec.state),
        "tracks": js(rep.track_names()),
        "corpus": js(ckpt.get("corpus", {})),
        "metrics": js(ckpt.get("metrics", {})),
        "parameters": str(count_parameters(model)),
        "model_args": js(ckpt["model_args"]),
        "training": js(ckpt.get("train", {})),
    }


def ort_session(path: str | os.PathLike):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_parity(
    spec: ExportSpec,
    onnx_path: str | os.PathLike,
    batch: int = 3,
    steps: int = 64,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Roll ``steps`` steps through ORT and torch side by side; ParityError past ``atol``.

    Returns the largest differences seen: ``ort_vs_torch`` (all outputs and state, each side
    carrying its own state) and ``step_vs_full`` (torch steps vs the full-sequence forward).
    """
    if spec.random_inputs is None or spec.sequence is None:
        raise ParityError(
            f"{onnx_path}: the family's ExportSpec has no random_inputs/sequence, "
            "so its parity cannot be checked"
        )
    sess = ort_session(onnx_path)
    seq = spec.random_inputs(batch, steps, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = spec.sequence(seq)
        state_t = spec.initial_state(batch)
        state_t.update({k: v for k, v in seq.items() if k in state_t})  # a given start (z)
        state_o = {k: v.numpy() for k, v in state_t.items()}
        worst = {"ort_vs_torch": 0.0, "step_vs_full": 0.0}
        n_out = len(spec.outputs)
        for t in range(steps):
            x = spec.step_slice(seq, t)
            out_t = spec.module(*x.values(), *state_t.values())
            out_o = sess.run(spec.output_names, {**{k: v.numpy() for k, v in x.items()}, **state_o})
            for name, a, b in zip(spec.output_names, out_o, out_t):
                if a.shape != tuple(b.shape):
                    raise ParityError(
                        f"{onnx_path}: {name} has shape {a.shape} in ORT and "
                        f"{tuple(b.shape)} in torch at batch {batch}"
                    )
                worst["ort_vs_torch"] = max(worst["ort_vs_torch"], _maxdiff(a, b.numpy()))
            for name, b in zip(spec.outputs, out_t):
                worst["step_vs_full"] = max(
                    worst["step_vs_full"], _maxdiff(b.numpy(), full[name][:, t].numpy())
                )
            state_t = dict(zip(state_t, out_t[n_out:]))
            state_o = dict(zip(state_o, out_o[n_out:]))
    for what, diff in worst.items():
        if not diff <= atol:
            raise ParityError(
                f"{onnx_path}: {what} differs by {diff:.3g} > {atol} (batch {batch}, {steps} steps)"
            )
    return worst


def check_graph_parity(
    graph: GraphSpec,
    onnx_path: str | os.PathLike,
    batch: int = 3,
    atol: float = 1e-4,
    seed: int = 0,
    tries: int = 4,
) -> dict[str, float]:
    """A one-shot graph (``ExportSpec.graphs``) on ``tries`` random inputs at ``batch``:
    ORT equals torch within ``atol`` (``ort_vs_torch``), and torch equals the graph's
    ``reference`` where it has one (``reference``); ParityError past ``atol``."""
    sess = ort_session(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    worst = {"ort_vs_torch": 0.0, "reference": 0.0}
    with torch.no_grad():
        for _ in range(tries):
            x = graph.random_inputs(batch, gen)
            out_t = graph.module(*(x[n] for n in graph.input_names))
            out_t = out_t if isinstance(out_t, (tuple, list)) else (out_t,)
            out_o = sess.run(graph.output_names, {k: v.numpy() for k, v in x.items()})
            for name, a, b in zip(graph.output_names, out_o, out_t):
                if a.shape != tuple(b.shape):
                    raise ParityError(
                        f"{onnx_path}: {name} has shape {a.shape} in ORT and "
                        f"{tuple(b.shape)} in torch at batch {batch}"
                    )
                worst["ort_vs_torch"] = max(worst["ort_vs_torch"], _maxdiff(a, b.numpy()))
            if graph.reference is not None:
                ref = graph.reference(x)
                for name, b in zip(graph.output_names, out_t):
                    worst["reference"] = max(
                        worst["reference"], _maxdiff(b.numpy(), ref[name].numpy())
                    )
    for what, diff in worst.items():
        if not diff <= atol:
            raise ParityError(f"{onnx_path}: {what} differs by {diff:.3g} > {atol} (batch {batch})")
    return worst


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch_sizes: tuple[int, ...] = (1, 3),
    steps: int = 64,
    atol: float = 1e-4,
    float16: bool = False,
) -> dict:
    """Checkpoint -> ONNX model file with metadata; parity-checked at ``batch_sizes``.

    ``float16``: store the weights as float16 (half the file; see `store_float16`). The
    weights are rounded first, so the file is exactly the rounded model, parity included;
    what `companion eval` then measures is that model.

    Returns a report: the metadata written, the file size, the parity differences and the
    export time. On a parity failure nothing is written and ParityError is raised.
    """
    t0 = time.perf_counter()
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)
    if float16:
        round_to_float16(model)
    if model.protocol not in PROTOCOL_IO:
        raise ModelError(
            f"{ckpt_path}: protocol {model.protocol!r} is not one the runtime "
            f"knows ({sorted(PROTOCOL_IO)})"
        )
    spec = model.export_spec()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and moved over it only once checked: a failed export never
    # replaces a good model file.
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    # one-shot graphs beside the step graph (a VAE's encoder): <stem>.<name>.onnx
    extra = {g.name: (g, out_path.with_name(f"{out_path.stem}.{g.name}.onnx")) for g in spec.graphs}
    extra_tmp = {
        name: path.with_name(f".{path.name}.{os.getpid()}.tmp") for name, (_, path) in extra.items()
    }
    try:
        export_onnx(spec, tmp)
        if float16:
            store_float16(tmp)
        meta = metadata(model, ckpt, spec)
        meta["weights"] = "float16" if float16 else "float32"
        graph_parity = {}
        for name, (graph, path) in extra.items():
            export_onnx(graph, extra_tmp[name])
            if float16:
                store_float16(extra_tmp[name])
            write_metadata(
                extra_tmp[name],
                {
                    "format": FORMAT,
                    "family": ckpt["family"],
                    "graph": name,
                    "weights": meta["weights"],
                },
            )
            graph_parity[name] = {
                b: check_graph_parity(graph, extra_tmp[name], batch=b, atol=atol)
                for b in batch_sizes
            }
            meta[name] = path.name  # the step file names its companion graphs
        write_metadata(tmp, meta)
        parity = {b: check_parity(spec, tmp, batch=b, steps=steps, atol=atol) for b in batch_sizes}
        modelfile.load(tmp)  # the runtime accepts it: metadata agrees with the graph
        for name, (_, path) in extra.items():  # the companions first: the step file names them
            os.replace(extra_tmp[name], path)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        for t in extra_tmp.values():
            t.unlink(missing_ok=True)
    return {
        "path": str(out_path),
        "bytes": out_path.stat().st_size,
        "metadata": meta,
        "parity": parity,
        "graphs": {
            name: {"path": str(path), "bytes": path.stat().st_size, "parity": graph_parity[name]}
            for name, (_, path) in extra.items()
        },
        "seconds": time.perf_counter() - t0,
    }


def main(args) -> int:
    """`companion export CHECKPOINT -o MODEL.onnx`."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    report = export_checkpoint(args.checkpoint, args.output, float16=args.float16)
    meta = report["metadata"]
    worst = max(max(p.values()) for p in report["parity"].values())
    print(
        f"{report['path']}: {meta['family']} ({meta['protocol']}), "
        f"{int(meta['parameters']):,} parameters, {report['bytes'] / 1e6:.2f} MB; "
        f"parity at batch {', '.join(map(str, report['parity']))}: max diff {worst:.2g}; "
        f"{report['seconds']:.1f} s"
    )
    for name, g in report["graphs"].items():
        worst = max(max(p.values()) for p in g["parity"].values())
        print(
            f"{g['path']}: the {name} graph, {g['bytes'] / 1e6:.2f} MB; parity at batch "
            f"{', '.join(map(str, g['parity']))}: max diff {worst:.2g}"
        )
    return 0
