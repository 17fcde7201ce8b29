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
from companion.representations import REGISTRY
from export import export_checkpoint
from models import data
from models import multitrack_lstm as mt
from models import roll_nade as rn

torch.set_num_threads(1)
pytestmark = pytest.mark.slow


def save(tmp_path, name, model, rep, corpus) -> str:
    ckpt = tmp_path / f"{name}.pt"
    torch.save({"format": "midi-companion-checkpoint/1", "family": model.family,
                "model_args": model.model_args, "state_dict": model.state_dict(),
                "representation": rep.to_dict(), "corpus": corpus,
                "metrics": {}}, ckpt)
    out = tmp_path / f"{name}.onnx"
    export_checkpoint(ckpt, out, batch_sizes=(3,), steps=16)
    return str(out)


@pytest.fixture(scope="module")
def nade(tmp_path_factory, bench_dir):
    torch.manual_seed(0)
    model = rn.RollNade(hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0,
                        local_kernel=5).eval()
    ids = [f"benchmark:jsb/test/{i}" for i in (0, 4, 9)]
    path = save(tmp_path_factory.mktemp("nade"), "nade", model,
                benchmarks.representation("jsb"),
                {"name": "benchmark:jsb", "split": {}, "ids": {"test": ids}})
    return model, path


def torch_nll(model, rolls) -> tuple[float, int]:
    with torch.no_grad():
        nll, n = model.loss(rn.collate([np.asarray(r) for r in rolls]))
    return float(nll), int(n)


def test_benchmark_nll_equals_torch(nade):
    model, path = nade
    result = ev.evaluate_benchmark(path, "jsb", batch=32)
    total, frames = torch_nll(model, benchmarks.load("jsb")["test"])
    assert result["frames"] == frames == 4725 - 77  # frames t >= 1 of the 77 test pieces
    assert math.isclose(result["nll_per_frame"], total / frames, rel_tol=1e-5)


def test_split_of_a_roll_model_is_its_recorded_pieces(nade):
    model, path = nade
    result = ev.evaluate_split(path, "test")
    rolls = [benchmarks.load("jsb")["test"][i] for i in (0, 4, 9)]
    total, frames = torch_nll(model, rolls)
    assert result["frames"] == frames
    assert math.isclose(result["nll_per_frame"], total / frames, rel_tol=1e-5)


def test_frame_step_benchmark_is_the_bernoulli_sum(tmp_path, bench_dir):
    from models import roll_lstm

    torch.manual_seed(0)
    rep = benchmarks.representation("jsb")
    model = roll_lstm.build("roll-lstm", rep, embed=8, hidden=8, layers=1, dropout=0.0).eval()
    path = save(tmp_path, "bern", model, rep, {"name": "benchmark:jsb"})
    result = ev.evaluate_benchmark(path, "jsb", batch=50)
    rolls = benchmarks.load("jsb")["test"]
    with torch.no_grad():
        nll, n = model.loss(data.collate([np.asarray(r) for r in rolls], "frames"))
    assert result["frames"] == int(n)
    assert math.isclose(result["nll_per_frame"], float(nll) / int(n), rel_tol=1e-5)


def test_multitrack_split_scores_the_accompaniment(tmp_path, bench_dir):
    torch.manual_seed(0)
    rep = REGISTRY["multitrack"](grid=0.25, low=28, high=92, scheme="satb")
    model = mt.build(mt.FAMILY, rep, hidden=16, dec_hidden=12, dec_embed=8, dropout=0.0,
                     local_kernel=3).eval()
    ids = [f"benchmark:jsb-satb/valid/{i}" for i in (1, 2)]
    path = save(tmp_path, "mt", model, rep,
                {"name": "benchmark:jsb-satb", "ids": {"valid": ids}})
    result = ev.evaluate_split(path, "valid")
    rolls = [rep.encode(benchmarks.load_satb()["valid"][i]) for i in (1, 2)]
    with torch.no_grad():
        nll, n = model.loss(mt.collate(rolls))
    assert result["frames"] == int(n) == sum(len(r) for r in rolls)
    assert math.isclose(result["nll_per_frame"], float(nll) / int(n), rel_tol=1e-5)


def test_token_split_is_nll_per_predicted_token(tmp_path, bench_dir):
    from models import lstm

    torch.manual_seed(0)
    rep = REGISTRY["events"]()
    model = lstm.build("lstm", rep, embed=8, hidden=8, layers=1, dropout=0.0).eval()
    ids = [f"benchmark:jsb/valid/{i}" for i in (0, 1)]
    path = save(tmp_path, "tok", model, rep, {"name": "benchmark:jsb", "ids": {"valid": ids}})
    result = ev.evaluate_split(path, "valid")
    pieces = data.encode([benchmarks.as_scores("jsb", "valid")[i] for i in (0, 1)], rep)
    with torch.no_grad():
        nll, n = model.loss(data.collate(pieces, "tokens"))
    assert result["tokens"] == int(n)
    assert math.isclose(result["nll_per_token"], float(nll) / int(n), rel_tol=1e-5)


def test_cli_json_and_errors(nade, capsys):
    _, path = nade
    assert cli.main(["eval", path, "--benchmark", "jsb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"nll_per_frame", "frames", "set"} and out["set"] == "jsb/test"
    assert cli.main(["eval", path + ".missing", "--benchmark", "jsb"]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert cli.main(["eval", path, "--split", "valid"]) == 2  # no valid ids recorded
    assert "valid" in capsys.readouterr().err
