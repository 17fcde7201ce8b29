"""`companion eval`: the runtime's NLL from the ONNX file equals the torch model's loss, for
the benchmark metric (nade-step and frame-step) and for a model's own held-out split
(multitrack-step, token-step); bad input is one line and exit code 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from companion import benchmarks, cli
from companion import evaluate as ev
from companion.errors import DataError
from companion.representations import REGISTRY
from export import export_checkpoint
from models import data
from models import multitrack_lstm as mt
from models import roll_nade as rn

torch.set_num_threads(1)


class TorchStep:
    """A model's step module behind the runtime's ModelFile interface (no export, fast):
    the evaluation logic is checked against the torch loss with it, the ONNX path once."""

    def __init__(self, model):
        self.spec = model.export_spec()
        self.protocol = model.protocol
        self.inputs, self.outputs = self.spec.step_inputs, self.spec.outputs
        self.path = "torch"

    def initial_state(self, batch):
        return {k: v.numpy() for k, v in self.spec.initial_state(batch).items()}

    def step(self, feeds, state):
        with torch.no_grad():
            out = self.spec.module(*(torch.from_numpy(feeds[n]) for n in self.inputs),
                                   *(torch.from_numpy(v) for v in state.values()))
        n = len(self.outputs)
        return ({k: v.numpy() for k, v in zip(self.outputs, out[:n])},
                {k: v.numpy() for k, v in zip(state, out[n:])})


def tiny_nade():
    torch.manual_seed(0)
    return rn.RollNade(hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0,
                       local_kernel=5).eval()


def torch_nll(model, rolls) -> tuple[float, int]:
    with torch.no_grad():
        nll, n = model.loss(rn.collate([np.asarray(r) for r in rolls]))
    return float(nll), int(n)


def test_nade_stream_marks_frames_after_the_first():
    roll = np.zeros((3, 88), np.uint8)
    roll[0, [3, 1]] = 1
    roll[2, 7] = 1
    toks, scored = ev.nade_stream(roll)
    assert toks.tolist() == [88, 1, 3, 88, 88, 7, 88]
    assert toks.tolist() == rn.stream_tokens(roll).tolist()
    # after END(start), 1, 3 comes frame 0; after frame 0's END, frames 1 and 2
    assert scored.tolist() == [False, False, False, True, True, True]


def test_benchmark_metric_equals_the_torch_loss(bench_dir):
    model = tiny_nade()
    rolls = benchmarks.load("jsb")["test"][:8]
    total, frames = ev.nll(TorchStep(model), rolls, batch=8)
    want, n = torch_nll(model, rolls)
    assert frames == n == sum(len(r) - 1 for r in rolls)
    assert math.isclose(total, want, rel_tol=1e-5)


def test_frame_step_is_the_bernoulli_sum(bench_dir):
    from models import roll_lstm

    torch.manual_seed(0)
    model = roll_lstm.build("roll-lstm", benchmarks.representation("jsb"), embed=8, hidden=8,
                            layers=1, dropout=0.0).eval()
    rolls = benchmarks.load("jsb")["valid"][:12]
    total, frames = ev.nll(TorchStep(model), rolls, batch=5)
    with torch.no_grad():
        nll, n = model.loss(data.collate([np.asarray(r) for r in rolls], "frames"))
    assert frames == int(n)
    assert math.isclose(total, float(nll), rel_tol=1e-5)


def test_multitrack_scores_the_accompaniment_given_the_lead():
    torch.manual_seed(0)
    rep = REGISTRY["multitrack"](grid=0.25, low=28, high=92, scheme="satb")
    model = mt.build(mt.FAMILY, rep, hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0,
                     local_kernel=3).eval()
    rng = np.random.default_rng(0)
    rolls = [(rng.random((n, 4, rep.keys)) < 0.03).astype(np.uint8) for n in (9, 4, 6)]
    total, frames = ev.nll(TorchStep(model), rolls, batch=2)
    with torch.no_grad():
        nll, n = model.loss(mt.collate(rolls))
    assert frames == int(n) == 19
    assert math.isclose(total, float(nll), rel_tol=1e-5)


def test_token_models_score_every_token_after_the_first(bench_dir):
    from models import lstm

    torch.manual_seed(0)
    rep = REGISTRY["events"]()
    model = lstm.build("lstm", rep, embed=8, hidden=8, layers=1, dropout=0.0).eval()
    pieces = data.encode(benchmarks.as_scores("jsb", "valid")[:3], rep)
    total, tokens = ev.nll(TorchStep(model), pieces, batch=2)
    with torch.no_grad():
        nll, n = model.loss(data.collate(pieces, "tokens"))
    assert tokens == int(n) == sum(len(p) - 1 for p in pieces)
    assert math.isclose(total, float(nll), rel_tol=1e-5)


def test_held_out_scores_follow_the_recorded_ids(bench_dir):
    corpus = {"name": "benchmark:jsb", "ids": {"test": ["benchmark:jsb/test/5",
                                                        "benchmark:jsb/test/2"]}}
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
    torch.save({"format": "midi-companion-checkpoint/1", "family": rn.FAMILY,
                "model_args": model.model_args, "state_dict": model.state_dict(),
                "representation": benchmarks.representation("jsb").to_dict(),
                "corpus": {"name": "benchmark:jsb", "ids": {"test": ids}},
                "metrics": {}}, tmp / "nade.pt")
    export_checkpoint(tmp / "nade.pt", tmp / "nade.onnx", batch_sizes=(3,), steps=16)
    return model, str(tmp / "nade.onnx")


@pytest.mark.slow
def test_onnx_benchmark_and_split_equal_torch(exported):
    model, path = exported
    result = ev.evaluate_benchmark(path, "jsb", batch=40)
    total, frames = torch_nll(model, benchmarks.load("jsb")["test"])
    assert result["frames"] == frames == 4725 - 77  # frames t >= 1 of the 77 test pieces
    assert math.isclose(result["nll_per_frame"], total / frames, rel_tol=1e-5)
    result = ev.evaluate_split(path, "test")
    total, frames = torch_nll(model, [benchmarks.load("jsb")["test"][i] for i in (0, 4, 9)])
    assert result["frames"] == frames
    assert math.isclose(result["nll_per_frame"], total / frames, rel_tol=1e-5)


@pytest.mark.slow
def test_cli_json_and_errors(exported, capsys):
    _, path = exported
    assert cli.main(["eval", path, "--benchmark", "jsb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"nll_per_frame", "frames", "set"} and out["set"] == "jsb/test"
    assert cli.main(["eval", path + ".missing", "--benchmark", "jsb"]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert cli.main(["eval", path, "--split", "valid"]) == 2  # no valid ids recorded
    assert "valid" in capsys.readouterr().err
