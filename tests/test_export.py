"""Every family of models/lstm.py, note_lstm.py, roll_lstm.py and transformer.py trains on a
small corpus slice and exports to ONNX with parity: ORT equals torch within 1e-4 over a
64-step rollout, the step graph equals the full-sequence forward, at batch sizes other than
the example's; and an exported model plays without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from midi_companion import modelfile
from midi_companion.engine import Engine
from midi_companion.errors import ModelError
from midi_companion.export import (
    ParityError,
    build_model,
    check_parity,
    export_checkpoint,
    load_checkpoint,
)
from midi_companion.export.onnx_export import export_onnx
from midi_companion.models.train import train
from midi_companion.representations import from_dict

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["lstm", "bilstm", "conv-lstm", "note-lstm", "roll-lstm", "transformer"]
PROTOCOL = {"note-lstm": "note-step", "roll-lstm": "frame-step"}


def tiny_config(tmp_path: Path, family: str) -> Path:
    """models/configs/tiny-<family>.toml, writing its run into tmp_path/run."""
    text = (ROOT / "models" / "configs" / f"tiny-{family}.toml").read_text()
    path = tmp_path / f"tiny-{family}.toml"
    path.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp_path / "run"}"\n'))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """family -> (checkpoint path, model path, export report), trained and exported once."""
    out = {}

    def get(family):
        if family not in out:
            tmp = tmp_path_factory.mktemp(family)
            train(tiny_config(tmp, family), progress=False)
            ckpt = tmp / "run" / "best.pt"
            report = export_checkpoint(ckpt, tmp / f"{family}.onnx", batch_sizes=(1, 3))
            out[family] = (ckpt, tmp / f"{family}.onnx", report)
        return out[family]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_and_exports_with_parity(exported, family):
    ckpt, path, report = exported(family)
    for batch in (1, 3):
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(props) >= set(modelfile.REQUIRED)
    assert props["format"] == "midi-companion/1" and props["family"] == family
    assert props["protocol"] == PROTOCOL.get(family, "token-step")
    ck = load_checkpoint(ckpt)
    assert json.loads(props["metrics"]) == ck["metrics"]
    assert json.loads(props["corpus"])["split"] == ck["corpus"]["split"]
    assert from_dict(json.loads(props["representation"])) == from_dict(ck["representation"])
    assert int(props["parameters"]) == sum(p.numel() for p in build_model(ck).parameters())
    m = modelfile.load(path)
    assert m.family == family and m.parameters == int(props["parameters"])
    # one more batch size, through the runtime's own loader and Engine
    engine = Engine(m, batch=5, provider="cpu")
    for _ in range(3):
        feeds = {name: np.zeros([5, *_shape(m, name)[1:]], _dtype(m, name)) for name in m.inputs}
        outs = engine.step(feeds)
    assert all(outs[name].shape[0] == 5 for name in m.outputs)


def _shape(m, name):
    return [
        d if isinstance(d, int) else 1
        for d in next(i for i in m.session.get_inputs() if i.name == name).shape
    ]


def _dtype(m, name):
    t = next(i for i in m.session.get_inputs() if i.name == name).type
    return np.int64 if "int64" in t else np.float32


@pytest.mark.slow
def test_parity_check_catches_a_wrong_graph(exported, tmp_path):
    ckpt, _, _ = exported("lstm")
    model = build_model(load_checkpoint(ckpt))
    spec = model.export_spec()
    export_onnx(spec, tmp_path / "m.onnx")
    with torch.no_grad():
        model.head.bias += 1e-2  # torch drifts from the exported graph
    with pytest.raises(ParityError, match="ort_vs_torch"):
        check_parity(spec, tmp_path / "m.onnx", batch=3, steps=4)


@pytest.mark.slow
def test_export_cli(exported, tmp_path, capsys):
    from midi_companion import cli

    ckpt, _, _ = exported("lstm")
    assert cli.main(["export", str(ckpt), "-o", str(tmp_path / "x.onnx")]) == 0
    assert "parity" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "y.onnx")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


SAMPLER = r"""
import sys
sys.modules["torch"] = None  # the runtime must not need torch
import numpy as np
from midi_companion import modelfile
from midi_companion.engine import Engine
from midi_companion.sampling import Sampling, sample, sample_bernoulli

m = modelfile.load(sys.argv[1])
rep, rng, engine = m.representation, np.random.default_rng(0), Engine(m)
seq = []
if m.protocol == "token-step":  # grammar masks applied before sampling, as the Engine does
    dec = rep.stream_decoder()
    logits = np.zeros(rep.vocab_size)
    for _ in range(64):
        tok = sample(logits, rng, Sampling(temperature=1.0), mask=dec.allowed())
        dec.feed(tok)
        seq.append(tok)
        out = engine.step({"token": np.array([[tok]], np.int64)})
        logits = out["logits"][0]
elif m.protocol == "note-step":  # each field under the decoder's grammar, as NoteVoice
    dec = rep.stream_decoder()
    x = {"note": np.array([[[60, 0, 3]]], np.int64)}
    for _ in range(20):
        out = engine.step(x)
        cls = []
        for k, off, n in zip(m.outputs, rep.offsets, rep.fields):
            full = np.full(rep.vocab_size, -np.inf)
            full[off:off + n] = out[k][0]
            tok = sample(full, rng, Sampling(), mask=dec.allowed() & np.isfinite(full))
            dec.feed(tok)
            seq.append(tok)
            cls.append(tok - off)
        x = {"note": np.array([[cls]], np.int64)}
else:
    x = {"frame": np.zeros((1, rep.vocab_size), np.float32)}
    for _ in range(32):
        out = engine.step(x)
        frame = sample_bernoulli(out["logits"][0], rng)
        seq.append(frame)
        x = {"frame": frame[None].astype(np.float32)}
score = rep.decode(seq)
print(m.family, m.protocol, len(seq), sum(len(t.notes) for t in score.tracks))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lstm", "note-lstm", "roll-lstm", "transformer"])
def test_exported_model_plays_without_torch(exported, family):
    _, path, _ = exported(family)
    r = subprocess.run(
        [sys.executable, "-c", SAMPLER, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    fam, protocol, _steps, notes = r.stdout.split()
    assert fam == family and protocol == PROTOCOL.get(family, "token-step")
    assert int(notes) > 0  # what it sampled decodes to music


@pytest.mark.slow
def test_failed_export_keeps_the_old_file(exported, tmp_path, monkeypatch):
    from midi_companion.export import onnx_export

    ckpt, _, _ = exported("lstm")
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the good old model")

    def fail(spec, path, **kw):
        raise ParityError(f"{path}: differs")

    monkeypatch.setattr(onnx_export, "check_parity", fail)
    with pytest.raises(ParityError):
        export_checkpoint(ckpt, target)
    assert target.read_bytes() == b"the good old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left
