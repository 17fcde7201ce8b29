"""`companion eval`: the runtime's NLL from the ONNX file equals the torch model's loss, for
the benchmark metric (nade-step and frame-step: every frame, the first from the model's
initial state, and frames t >= 1 as a second figure) and for a model's own held-out split
(multitrack-step, token-step, note-step); bad input is one line and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from midi_companion import benchmarks, cli
from midi_companion import evaluate as ev
from midi_companion.engine import Engine
from midi_companion.errors import DataError
from midi_companion.export import export_checkpoint
from midi_companion.modelfile import StateSpec
from midi_companion.models import data
from midi_companion.models import multitrack_lstm as mt
from midi_companion.models import roll_nade as rn
from midi_companion.representations import REGISTRY

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class TorchSession:
    """A model's step module behind onnxruntime's session interface (no export, fast), so
    the runtime's own Engine steps it: the evaluation logic is checked against the torch loss
    with it, the ONNX path once."""

    def __init__(self, spec):
        self.spec = spec

    def get_providers(self):
        return ["torch"]

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.spec.output_names]

    def run(self, names, feeds):
        with torch.no_grad():
            out = self.spec.module(*(torch.from_numpy(feeds[n]) for n in self.spec.input_names))
        got = dict(zip(self.spec.output_names, out))
        return [got[n].numpy() for n in names]


def torch_engine(model) -> Engine:
    """An Engine over `model`'s step module, as it would be over its exported file."""
    spec = model.export_spec()
    file = SimpleNamespace(
        path="torch",
        protocol=model.protocol,
        session=TorchSession(spec),
        inputs=tuple(spec.step_inputs),
        outputs=tuple(spec.outputs),
        state=tuple(StateSpec(s["name"], tuple(s["shape"])) for s in spec.state),
    )
    return Engine(file, provider="cpu")


def tiny_nade():
    torch.manual_seed(0)
    return rn.RollNade(hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0, local_kernel=5).eval()


def torch_nll(model, rolls, every_frame: bool = False) -> tuple[float, int]:
    """The training loss (frames t >= 1) or, with every_frame, frame 0 scored too: the
    model's context for it has read only the empty frame, as the step graph after END."""
    batch = rn.collate([np.asarray(r) for r in rolls])
    if every_frame:
        batch["valid"][:, 0] = True
    with torch.no_grad():
        nll, n = model.loss(batch)
    return float(nll), int(n)


def test_nade_stream_gives_the_frame_of_each_next_token():
    roll = np.zeros((3, 88), np.uint8)
    roll[0, [3, 1]] = 1
    roll[2, 7] = 1
    toks, frame = ev.nade_stream(roll)
    assert toks.tolist() == [88, 1, 3, 88, 88, 7, 88]
    assert toks.tolist() == rn.stream_tokens(roll).tolist()
    # after END(start): 1, 3 and END are frame 0; then frame 1's END; then frame 2's 7, END
    assert frame.tolist() == [0, 0, 0, 1, 2, 2]


def test_benchmark_metric_counts_every_frame(bench_dir):
    """Every frame, the first from the model's initial state (the published protocol); the
    figure over frames t >= 1 (the training loss) comes second."""
    model = tiny_nade()
    rolls = benchmarks.load("jsb")["test"][:8]
    got = ev.nll(torch_engine(model), rolls, batch=8)
    want, n = torch_nll(model, rolls, every_frame=True)
    assert got.units == n == sum(len(r) for r in rolls)
    assert math.isclose(got.nll, want, rel_tol=1e-5)
    want, n = torch_nll(model, rolls)
    assert got.units_after_first == n == sum(len(r) - 1 for r in rolls)
    assert math.isclose(got.nll_after_first, want, rel_tol=1e-5)
    assert got.nll > got.nll_after_first  # the first frames are in the sum too


def test_frame_step_is_the_bernoulli_sum(bench_dir):
    """frame-step: frame 0 after an all-zero frame fed from the zero state, then the rest."""
    from midi_companion.models import roll_lstm

    torch.manual_seed(0)
    model = roll_lstm.build(
        "roll-lstm", benchmarks.representation("jsb"), embed=8, hidden=8, layers=1, dropout=0.0
    ).eval()
    rolls = benchmarks.load("jsb")["valid"][:12]
    got = ev.nll(torch_engine(model), rolls, batch=5)
    with torch.no_grad():
        nll, n = model.loss(data.collate([np.asarray(r) for r in rolls], "frames"))
        z0 = model(torch.zeros(1, 1, rolls[0].shape[1]))[0, 0]  # after the empty frame
        first = sum(
            torch.nn.functional.binary_cross_entropy_with_logits(
                z0, torch.tensor(np.array(r[0]), dtype=torch.float32), reduction="sum"
            )
            for r in rolls
        )
    assert got.units_after_first == int(n) and got.units == int(n) + 12
    assert math.isclose(got.nll_after_first, float(nll), rel_tol=1e-5)
    assert math.isclose(got.nll, float(nll + first), rel_tol=1e-5)


def test_multitrack_scores_the_accompaniment_given_the_lead():
    torch.manual_seed(0)
    rep = REGISTRY["multitrack"](grid=0.25, low=28, high=92, scheme="satb")
    model = mt.build(
        mt.FAMILY, rep, hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0, local_kernel=3
    ).eval()
    rng = np.random.default_rng(0)
    rolls = [(rng.random((n, 4, rep.keys)) < 0.03).astype(np.uint8) for n in (9, 4, 6)]
    got = ev.nll(torch_engine(model), rolls, batch=2)
    with torch.no_grad():
        nll, n = model.loss(mt.collate(rolls))
    assert got.units == int(n) == 19 and got.units_after_first == 19 - 3
    assert math.isclose(got.nll, float(nll), rel_tol=1e-5)
    assert got.nll_after_first < got.nll


def test_token_models_score_every_token_after_the_first(bench_dir):
    from midi_companion.models import lstm

    torch.manual_seed(0)
    rep = REGISTRY["events"]()
    model = lstm.build("lstm", rep, embed=8, hidden=8, layers=1, dropout=0.0).eval()
    pieces = data.encode(benchmarks.as_scores("jsb", "valid")[:3], rep)
    got = ev.nll(torch_engine(model), pieces, batch=2)
    with torch.no_grad():
        nll, n = model.loss(data.collate(pieces, "tokens"))
    assert got.units == got.units_after_first == int(n) == sum(len(p) - 1 for p in pieces)
    assert math.isclose(got.nll, float(nll), rel_tol=1e-5) and got.nll == got.nll_after_first


def test_held_out_scores_follow_the_recorded_ids(bench_dir):
    corpus = {
        "name": "benchmark:jsb",
        "ids": {"test": ["benchmark:jsb/test/5", "benchmark:jsb/test/2"]},
    }
    rep = benchmarks.representation("jsb")
    got = [rep.encode(s) for s in ev.held_out_scores(corpus, "test")]
    want = [benchmarks.load("jsb")["test"][i] for i in (5, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(DataError, match="valid"):
        ev.held_out_scores(corpus, "valid")
    gone = {"name": "benchmark:jsb", "ids": {"test": ["benchmark:jsb/test/999"]}}
    with pytest.raises(DataError, match="not there"):
        ev.held_out_scores(gone, "test")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bench_dir):
    """A tiny roll-nade-lstm exported to ONNX, its corpus recording three test pieces."""
    model = tiny_nade()
    tmp = tmp_path_factory.mktemp("nade")
    ids = [f"benchmark:jsb/test/{i}" for i in (0, 4, 9)]
    torch.save(
        {
            "format": "midi-companion-checkpoint/1",
            "family": rn.FAMILY,
            "model_args": model.model_args,
            "state_dict": model.state_dict(),
            "representation": benchmarks.representation("jsb").to_dict(),
            "corpus": {"name": "benchmark:jsb", "ids": {"test": ids}},
            "metrics": {},
        },
        tmp / "nade.pt",
    )
    export_checkpoint(tmp / "nade.pt", tmp / "nade.onnx", batch_sizes=(3,), steps=16)
    return model, str(tmp / "nade.onnx")


@pytest.mark.slow
def test_onnx_benchmark_and_split_equal_torch(exported):
    model, path = exported
    result = ev.evaluate_benchmark(path, "jsb", batch=40)
    test = benchmarks.load("jsb")["test"]
    total, frames = torch_nll(model, test, every_frame=True)
    assert result["frames"] == frames == 4725  # every frame of the 77 test pieces
    assert math.isclose(result["nll"], total / frames, rel_tol=1e-5)
    total, frames = torch_nll(model, test)
    assert result["frames_after_first"] == frames == 4725 - 77
    assert math.isclose(result["nll_after_first"], total / frames, rel_tol=1e-5)
    result = ev.evaluate_split(path, "test")
    pieces = [test[i] for i in (0, 4, 9)]
    for key, every in (("nll", True), ("nll_after_first", False)):
        total, frames = torch_nll(model, pieces, every_frame=every)
        assert result[key.replace("nll", "frames")] == frames
        assert math.isclose(result[key], total / frames, rel_tol=1e-5)


@pytest.mark.slow
def test_cli_json_and_errors(exported, capsys):
    _, path = exported
    assert cli.main(["eval", path, "--benchmark", "jsb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"nll", "nll_after_first", "frames", "frames_after_first", "unit", "set"}
    assert out["set"] == "jsb/test" and out["unit"] == "frame"
    assert (out["frames"], out["frames_after_first"]) == (4725, 4648)
    assert cli.main(["eval", path, "--benchmark", "jsb"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"jsb/test: {out['nll']:.4f} nats per frame over 4725 frames (every frame, "
        f"each piece's first from the model's initial state); "
        f"{out['nll_after_first']:.4f} over the 4648 frames t >= 1"
    )
    assert cli.main(["eval", path + ".missing", "--benchmark", "jsb"]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert cli.main(["eval", path, "--split", "valid"]) == 2  # no valid ids recorded
    assert "valid" in capsys.readouterr().err


@pytest.fixture(scope="module")
def note_model(tmp_path_factory):
    """models/configs/tiny-note-lstm.toml trained and exported (a note-step model)."""
    from midi_companion.models.train import train

    tmp = tmp_path_factory.mktemp("note")
    text = (ROOT / "models/configs/tiny-note-lstm.toml").read_text()
    config = tmp / "tiny-note-lstm.toml"  # its run goes to tmp/run, not runs/
    config.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp / "run"}"\n'))
    train(config, progress=False)
    export_checkpoint(tmp / "run" / "best.pt", tmp / "note.onnx", batch_sizes=(3,), steps=16)
    return torch.load(tmp / "run" / "best.pt", weights_only=True), str(tmp / "note.onnx")


@pytest.mark.slow
def test_note_step_split_is_per_note_and_equals_the_training_test_nll(note_model, capsys):
    ckpt, path = note_model
    result = ev.evaluate_split(path, "test")
    assert result["unit"] == "note" and ckpt["metrics"]["unit"] == "note"
    assert result["notes"] == result["notes_after_first"] == ckpt["metrics"]["test_units"]
    assert math.isclose(result["nll"], ckpt["metrics"]["test_nll"], rel_tol=1e-4)
    assert result["nll"] == result["nll_after_first"]
    assert cli.main(["eval", path, "--split", "test"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"{result['set']}: {result['nll']:.4f} nats per note over "
        f"{result['notes']} notes (each piece's first note is context only)"
    )
