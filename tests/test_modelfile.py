"""midi_companion.modelfile: model files are read and checked without torch; anything missing,
truncated or foreign is a ModelError naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from midi_companion import modelfile, presets
from midi_companion.engine import Engine
from midi_companion.errors import ModelError
from midi_companion.representations import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
V, H = REGISTRY["events"]().vocab_size, 4


def token_step_model(path: Path, meta: dict | None = None, width: int = V, **overrides) -> Path:
    """A tiny hand-built token-step graph (logits = h . W, h_out = h + 1, c_out = c) with
    metadata as export writes it; `overrides` replace metadata values (None removes);
    `width` is the logits width (the events vocabulary unless a test says otherwise)."""
    V = width
    rep = REGISTRY["events"]()
    state_shape = [1, "B", H]
    w = helper.make_tensor("W", TensorProto.FLOAT, [H, V], np.ones(H * V, np.float32))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Squeeze", ["h", "axis0"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W"], ["logits"]),
        helper.make_node("Add", ["h", "one"], ["h_out"]),
        helper.make_node("Identity", ["c"], ["c_out"]),
    ]
    axis0 = helper.make_tensor("axis0", TensorProto.INT64, [1], [0])
    graph = helper.make_graph(
        nodes,
        "step",
        [
            helper.make_tensor_value_info("token", TensorProto.INT64, ["B", 1]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, state_shape),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, state_shape),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", V]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state_shape),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state_shape),
        ],
        initializer=[w, one, axis0],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is None:
        meta = {
            "format": "midi-companion/1",
            "family": "lstm",
            "protocol": "token-step",
            "representation": rep.to_json(),
            "state": json.dumps(
                [{"name": "h", "shape": state_shape}, {"name": "c", "shape": state_shape}]
            ),
            "tracks": json.dumps(["lead"]),
            "corpus": json.dumps({"name": "music21:bach", "split": {"train": 1}}),
            "metrics": json.dumps({"valid_nll": 1.5, "test_nll": 1.6, "unit": "token"}),
            "parameters": str(H * V),
        }
        for k, v in overrides.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_reads_a_good_model(tmp_path):
    m = modelfile.load(token_step_model(tmp_path / "m.onnx"))
    assert (m.family, m.protocol, m.parameters) == ("lstm", "token-step", H * V)
    assert m.representation == REGISTRY["events"]()
    assert m.inputs == ("token",) and m.outputs == ("logits",)
    assert m.state_spec == [
        {"name": "h", "shape": [1, "B", H]},
        {"name": "c", "shape": [1, "B", H]},
    ]
    assert m.metrics["valid_nll"] == 1.5 and m.tracks == ["lead"]
    eng = Engine(m, batch=3, provider="cpu")
    assert eng.state["h"].shape == (1, 3, H) and eng.state["h"].dtype == np.float32
    out = eng.step({"token": np.zeros((3, 1), np.int64)})
    assert out["logits"].shape == (3, V) and (eng.state["h"] == 1).all()


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope.onnx'}: no such model file"):
        modelfile.load(tmp_path / "nope.onnx")


def test_truncated_and_garbage_files(tmp_path):
    good = token_step_model(tmp_path / "m.onnx").read_bytes()
    for name, data in [
        ("cut.onnx", good[: len(good) // 2]),
        ("text.onnx", b"hello world"),
        ("empty.onnx", b""),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=f"{tmp_path / name}: not a readable ONNX model"):
            modelfile.load(tmp_path / name)


def test_foreign_onnx(tmp_path):
    path = token_step_model(tmp_path / "foreign.onnx", meta={})
    with pytest.raises(ModelError, match="foreign.onnx: not a midi-companion model"):
        modelfile.load(path)
    path = token_step_model(tmp_path / "v9.onnx", format="midi-companion/9")
    with pytest.raises(ModelError, match="'midi-companion/9' is not supported"):
        modelfile.load(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"metrics": None}, r"metadata lacks \['metrics'\]"),
        ({"state": "[{"}, "metadata 'state' is not valid JSON"),
        ({"state": json.dumps([{"name": "h"}])}, "'state' entry"),
        (
            {"state": json.dumps([{"name": "h", "shape": [2, "B", H]}])},
            "state 'h' has shape .* in the graph but",
        ),
        ({"state": json.dumps([{"name": "z", "shape": ["B"]}])}, "state 'z' needs an input"),
        ({"protocol": "frame-step"}, "a frame-step model needs inputs"),
        ({"protocol": "telepathy"}, "unknown protocol 'telepathy'"),
        ({"representation": json.dumps({"name": "tablature"})}, "'representation': unknown"),
        ({"parameters": "many"}, "metadata 'parameters' is not valid JSON"),
        ({"corpus": "[]"}, "'corpus' must be a JSON object"),
    ],
)
def test_bad_metadata(tmp_path, overrides, message):
    path = token_step_model(tmp_path / "bad.onnx", **overrides)
    with pytest.raises(ModelError, match=message) as err:
        modelfile.load(path)
    assert str(err.value).startswith(str(path))


def test_a_logits_width_that_is_not_the_vocabulary_fails_at_load(tmp_path):
    """It used to load, and fail at the first answer with a numpy error."""
    path = token_step_model(tmp_path / "wide.onnx", width=V + 3)
    with pytest.raises(ModelError) as err:
        modelfile.load(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text
    assert f"{V + 3} wide" in text and f"needs {V}" in text and "'logits'" in text


def test_every_shipped_model_has_the_widths_of_its_vocabulary():
    zoo = presets.zoo_models(ROOT / "models" / "zoo")
    if not zoo:
        pytest.skip("no shipped models in models/zoo")
    for path in zoo:
        m = modelfile.load(path)
        outs = {o.name: o.shape[-1] for o in m.session.get_outputs()}
        for name, width in modelfile.output_widths(m.protocol, m.representation).items():
            assert outs[name] == width, (path.name, name)


def test_modelfile_needs_no_torch(tmp_path):
    path = token_step_model(tmp_path / "m.onnx")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from midi_companion import modelfile\n"
        f"m = modelfile.load({str(path)!r}); print(m.family, m.protocol)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lstm", "token-step"]
