"""Model files: an exported .onnx and the metadata that makes it playable (torch-free).

``load(path)`` opens the file with onnxruntime, reads its ``metadata_props`` (written by
export/onnx_export.py; keys in docs/ARCHITECTURE.md, "ONNX files") and checks them against
the graph: the protocol's inputs and outputs exist, every state tensor ``X`` is an input
with an ``X_out`` output of the shape the metadata gives. The result is a ``ModelFile``
with the representation rebuilt (params and vocabulary), so a model file alone is enough
to play it. Anything missing, truncated or foreign is a ModelError naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midi_companion.errors import ModelError, RepresentationError
from midi_companion.representations import Representation, from_dict

FORMAT = "midi-companion/1"
REQUIRED = (
    "format",
    "family",
    "protocol",
    "representation",
    "state",
    "tracks",
    "corpus",
    "metrics",
    "parameters",
)
JSON_KEYS = (
    "representation",
    "state",
    "tracks",
    "corpus",
    "metrics",
    "parameters",
    "model_args",
    "training",
)
#: protocol -> (step input names, output names besides the state); None = documented by
#: the family module (its graph's non-state inputs are the step inputs)
PROTOCOL_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None] = {
    "token-step": (("token",), ("logits",)),
    "note-step": (("note",), ("pitch_logits", "step_logits", "duration_logits")),
    "frame-step": (("frame",), ("logits",)),
    "nade-step": (("token",), ("logits",)),
    "multitrack-step": None,
    "classify": (("tokens", "lengths"), ("logits",)),  # one-shot: a phrase -> class logits
    "generator": (("noise",), ("block",)),  # stateless: noise -> a block (models/gan.py)
    "band-step": (("lead", "noise"), ("lead_next",)),
}


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: its name and shape ("B" = the batch axis); float32, zeros at start."""

    name: str
    shape: tuple

    def zeros(self, batch: int = 1) -> np.ndarray:
        return np.zeros([batch if d == "B" else d for d in self.shape], dtype=np.float32)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape)}


@dataclass
class ModelFile:
    """What a model file says about itself, and its onnxruntime session (companion.engine's
    Engine steps it)."""

    path: Path
    family: str
    protocol: str
    representation: Representation
    state: tuple[StateSpec, ...]
    tracks: list[str]
    corpus: dict
    metrics: dict
    parameters: int
    inputs: tuple[str, ...]  # step inputs, without the state
    outputs: tuple[str, ...]  # protocol outputs, without the state
    metadata: dict[str, str] = field(repr=False)
    session: Any = field(repr=False)

    @property
    def state_spec(self) -> list[dict]:
        """The state as the metadata lists it: [{"name", "shape"}]."""
        return [s.to_dict() for s in self.state]


def session_options(threads: int = 1):
    """Real-time settings: `threads` intra-op threads, one inter-op, sequential, every
    graph optimization."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def load(path: str | os.PathLike, threads: int = 1) -> ModelFile:
    """Open and check a model file; ModelError naming the file when it is not one."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        sess = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own InvalidProtobuf/Fail/... kinds
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{path}: not a readable ONNX model (truncated, or not ONNX at all): {first[:200]}"
        ) from err
    return read(path, sess)


def read(path: str | os.PathLike, session) -> ModelFile:
    """A ModelFile from an already open onnxruntime session of `path`."""
    path = Path(path)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "format" not in meta:
        raise ModelError(
            f"{path}: not a midi-companion model (its metadata has no 'format'; "
            f"expected {FORMAT!r})"
        )
    if meta["format"] != FORMAT:
        raise ModelError(
            f"{path}: model format {meta['format']!r} is not supported (expected {FORMAT!r})"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{path}: metadata lacks {missing}")
    parsed = {k: _json(path, meta, k) for k in JSON_KEYS if k in meta}
    protocol = meta["protocol"]
    if protocol not in PROTOCOL_IO:
        raise ModelError(f"{path}: unknown protocol {protocol!r}; known: {sorted(PROTOCOL_IO)}")
    try:
        rep = from_dict(parsed["representation"])
    except RepresentationError as err:
        raise ModelError(f"{path}: metadata 'representation': {err}") from err
    state = _state(path, parsed["state"])
    inputs, outputs = _check_graph(path, session, protocol, state)
    _check_widths(path, session, protocol, rep)
    if not isinstance(parsed["parameters"], int):
        raise ModelError(
            f"{path}: metadata 'parameters' must be an integer (received {meta['parameters']!r})"
        )
    for key in ("corpus", "metrics"):
        if not isinstance(parsed[key], dict):
            raise ModelError(f"{path}: metadata '{key}' must be a JSON object")
    if not isinstance(parsed["tracks"], list):
        raise ModelError(f"{path}: metadata 'tracks' must be a JSON list")
    return ModelFile(
        path=path,
        family=meta["family"],
        protocol=protocol,
        representation=rep,
        state=state,
        tracks=list(parsed["tracks"]),
        corpus=parsed["corpus"],
        metrics=parsed["metrics"],
        parameters=parsed["parameters"],
        inputs=inputs,
        outputs=outputs,
        metadata=meta,
        session=session,
    )


def output_widths(protocol: str, rep: Representation) -> dict[str, int]:
    """The last axis each protocol output must have for `rep` (docs/ARCHITECTURE.md, step
    protocols): the vocabulary, its (pitch, step, duration) classes, or the keys + END."""
    if protocol == "token-step":
        return {"logits": rep.vocab_size}
    if protocol == "note-step":
        fields = getattr(rep, "fields", None)
        if fields is None:  # not the notes representation: evaluate/voices say so
            return {}
        return dict(zip(("pitch_logits", "step_logits", "duration_logits"), fields))
    if protocol == "frame-step":
        return {"logits": rep.vocab_size}
    if protocol in ("nade-step", "multitrack-step"):  # keys, then END
        return {"logits": rep.vocab_size + 1}
    return {}


def _check_widths(path: Path, session, protocol: str, rep: Representation) -> None:
    """A logits width that differs from the representation's vocabulary fails at load, not
    at the first answer (a width the graph leaves symbolic is not checked)."""
    outs = {o.name: o.shape for o in session.get_outputs()}
    for name, want in output_widths(protocol, rep).items():
        shape = outs.get(name)
        if not shape or not isinstance(shape[-1], int):
            continue
        if shape[-1] != want:
            raise ModelError(
                f"{path}: output {name!r} is {shape[-1]} wide but its {rep.name} "
                f"representation needs {want} (a {protocol} model over this vocabulary)"
            )


def _json(path: Path, meta: dict, key: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: metadata '{key}' is not valid JSON ({err})") from err


def _state(path: Path, entries: Any) -> tuple[StateSpec, ...]:
    if not isinstance(entries, list):
        raise ModelError(f"{path}: metadata 'state' must be a list of {{name, shape}}")
    out = []
    for e in entries:
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("shape"), list)
            and all(d == "B" or (isinstance(d, int) and d >= 0) for d in e["shape"])
        )
        if not ok:
            raise ModelError(
                f"{path}: metadata 'state' entry {e!r} must be {{\"name\": str, "
                f'"shape": [int or "B", ...]}}'
            )
        out.append(StateSpec(e["name"], tuple(e["shape"])))
    return tuple(out)


def _check_graph(path: Path, session, protocol: str, state: tuple[StateSpec, ...]):
    ins = {i.name: i for i in session.get_inputs()}
    outs = {o.name: o for o in session.get_outputs()}
    for s in state:
        if s.name not in ins or s.name + "_out" not in outs:
            raise ModelError(
                f"{path}: state {s.name!r} needs an input {s.name!r} and an "
                f"output {s.name + '_out'!r} (inputs: {sorted(ins)}, outputs: "
                f"{sorted(outs)})"
            )
        graph = ins[s.name].shape
        fixed = [d for d in s.shape]
        if len(graph) != len(fixed) or any(
            isinstance(g, int) and g != d for g, d in zip(graph, fixed)
        ):
            raise ModelError(
                f"{path}: state {s.name!r} has shape {list(graph)} in the graph "
                f"but {list(s.shape)} in the metadata"
            )
    names = {s.name for s in state}
    step_in = tuple(n for n in ins if n not in names)
    step_out = tuple(n for n in outs if not (n.endswith("_out") and n[:-4] in names))
    io = PROTOCOL_IO[protocol]
    if io is not None:
        want_in, want_out = io
        if set(want_in) - set(step_in) or set(want_out) - set(step_out):
            raise ModelError(
                f"{path}: a {protocol} model needs inputs {list(want_in)} and "
                f"outputs {list(want_out)} besides its state (the graph has "
                f"{list(step_in)} and {list(step_out)})"
            )
        step_in, step_out = want_in, want_out
    return step_in, step_out
