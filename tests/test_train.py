"""The training loop: config checking, schedule, batching, sharding, checkpoints, resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from midi_companion import cli
from midi_companion.errors import ConfigError
from midi_companion.models import data
from midi_companion.models import train as T
from midi_companion.representations import REGISTRY

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"

GOOD = """
[model]
family = "lstm"
hidden = 16

[representation]
name = "events"

[data]
corpus = "music21:bach"

[train]
max_steps = 10
"""


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / name
    p.write_text(text)
    return p


def tiny_config(tmp_path: Path, name: str, **train_overrides) -> Path:
    """models/configs/tiny-<name>.toml writing into tmp_path, [train] keys overridden."""
    text = (CONFIGS / f"tiny-{name}.toml").read_text()
    lines = [f'out = "{tmp_path / "run"}"']
    for key, value in train_overrides.items():
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"{key} ="))
        lines.append(f"{key} = {value}")
    text = text.replace("[train]\n", "[train]\n" + "\n".join(lines) + "\n")
    return write(tmp_path, text, f"tiny-{name}.toml")


# ---- config --------------------------------------------------------------------------------
def test_good_config_gets_defaults(tmp_path):
    cfg = T.load_config(write(tmp_path, GOOD))
    assert cfg["train"]["batch_size"] == 32
    assert cfg["train"]["min_lr"] == pytest.approx(cfg["train"]["lr"] / 10)
    assert cfg["train"]["out"] == str(Path("runs") / "cfg")
    assert cfg["data"]["augment"] == [0, 0]
    assert cfg["model"] == {"family": "lstm", "hidden": 16}


@pytest.mark.parametrize(
    "edit, where",
    [
        (("[train]\n", "[train]\nlr = -1\n"), "[train] lr must be > 0 (received -1"),
        (("[train]\n", '[train]\nbatch_size = "8"\n'), "[train] batch_size must be int"),
        (
            ("[train]\n", "[train]\nlearning_rate = 1.0\n"),
            "[train] has unknown key 'learning_rate'",
        ),
        (('family = "lstm"', 'family = "gru"'), "[model] family must be one of"),
        (('name = "events"', 'name = "midi"'), "[representation] name must be one of"),
        (('corpus = "music21:bach"', "limit = 5"), "[data] corpus is required"),
        (("[data]\n", "[data]\naugment = [3, -3]\n"), "[data] augment must be [lo, hi]"),
        (("[data]\n", "[data]\nvalid = 0.6\ntest = 0.5\n"), "[data] valid + test must be < 1"),
        (("max_steps = 10", "max_steps = 0"), "[train] max_steps or max_minutes must be set"),
        (("[train]\n", '[train]\ndecay = "linear"\n'), "[train] decay must be"),
        (("hidden = 16", "dropout = 0.2"), "[model] dropout belongs in [train]"),
        (("[train]\n", "[loss]\nx = 1\n[train]\n"), "the config has unknown key 'loss'"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path, edit, where):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        T.load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert where in str(err.value)


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        T.load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not a readable TOML"):
        T.load_config(write(tmp_path, "[model\nfamily="))


def test_model_and_representation_args_are_checked(tmp_path):
    cfg = T.load_config(write(tmp_path, GOOD.replace("hidden = 16", "hiden = 16")))
    rep = T.make_representation(cfg, Path("x.toml"))
    with pytest.raises(ConfigError, match=r"x.toml: \[model\] .*hiden"):
        T.make_model(cfg, rep, Path("x.toml"))
    cfg = T.load_config(
        write(tmp_path, GOOD.replace('name = "events"', 'name = "events"\nresolution = 0'))
    )
    with pytest.raises(ConfigError, match=r"x.toml: \[representation\] .*resolution"):
        T.make_representation(cfg, Path("x.toml"))


def test_cli_reports_config_error_in_one_line(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("max_steps = 10", "max_steps = -1"))
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "[train] max_steps must be >= 0" in err


# ---- schedule -------------------------------------------------------------------------------
def test_lr_warmup_then_cosine():
    tr = {"lr": 1.0, "min_lr": 0.1, "warmup": 10, "decay": "cosine"}
    assert T.lr_at(0, 0.0, tr) == pytest.approx(0.1)
    assert T.lr_at(9, 0.0, tr) == pytest.approx(1.0)
    assert T.lr_at(50, 0.5, tr) == pytest.approx(0.55)
    assert T.lr_at(99, 1.0, tr) == pytest.approx(0.1)
    assert T.lr_at(99, 1.0, {**tr, "decay": "none"}) == 1.0


# ---- batching -------------------------------------------------------------------------------
def test_training_windows_predict_every_step_once():
    pieces = [np.arange(1, n + 1) for n in (5, 40, 77, 2)]
    cfg = {"batch_size": 3, "seq_len": 8}
    targets = []
    for batch in data.sequence_batches(pieces, cfg, np.random.default_rng(0), True):
        x, m = batch["tokens"], batch["mask"]
        assert x.shape[1] <= 9 and x.dtype == torch.int64
        assert not x[~m].any()  # padding is 0
        targets += x[:, 1:][m[:, 1:]].tolist()
    expected = [t for p in pieces for t in p[1:].tolist()]
    assert sorted(targets) == sorted(expected)


def test_eval_batches_hold_whole_pieces():
    pieces = [np.arange(n) for n in (50, 3, 20)]
    got = []
    for batch in data.sequence_batches(pieces, {"batch_size": 2, "seq_len": 16}, None, False):
        for row, m in zip(batch["tokens"], batch["mask"]):
            got.append(row[m].tolist())
    assert sorted(got, key=len) == [list(range(n)) for n in (3, 20, 50)]


def test_frames_become_float():
    roll = (np.random.default_rng(0).random((10, 6)) < 0.3).astype(np.uint8)
    batch = next(
        data.sequence_batches([roll], {"batch_size": 2, "seq_len": 4}, None, False, key="frames")
    )
    assert batch["frames"].dtype == torch.float32 and batch["frames"].shape == (1, 10, 6)


def test_shard_is_disjoint_and_even():
    shares = [list(data.shard(range(11), r, 3)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert list(data.shard(range(4), 0, 1)) == [0, 1, 2, 3]


def test_augmentation_transposes_within_range():
    from midi_companion.score import Note, Score

    rep = REGISTRY["notes"]()
    score = Score.from_notes([Note(i * 0.5, 60 + i, 0.5) for i in range(8)])
    pitches = set()
    for seed in range(20):
        (x,) = data.encode([score], rep, (-3, 3), np.random.default_rng(seed))
        pitches.add(int(x[0]) - 60)
    assert pitches <= set(range(-3, 4)) and len(pitches) > 3


# ---- the loop -------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_writes_self_describing_checkpoint(tmp_path):
    ck = T.train(tiny_config(tmp_path, "lstm"), progress=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert set(best) >= {
        "format",
        "family",
        "model_args",
        "state_dict",
        "representation",
        "config",
        "corpus",
        "metrics",
        "train",
    }
    assert best["format"] == "midi-companion-checkpoint/1" and best["family"] == "lstm"
    assert best["corpus"]["name"] == "music21:bach"
    assert sum(best["corpus"]["split"].values()) == 12
    assert len(best["corpus"]["ids"]["test"]) == best["corpus"]["split"]["test"]
    m = best["metrics"]
    assert m["unit"] == "token" and math.isfinite(m["valid_nll"]) and math.isfinite(m["test_nll"])
    assert best["train"]["step"] == 6 and best["train"]["tokens_per_s"] > 0
    assert ck["metrics"] == m
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "optimizer" in last and last["resume"]["step"] == 6


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run interrupted after its step-3 checkpoint and resumed ends with the same weights
    as the run that was never interrupted (data position, RNG, optimizer, schedule)."""
    straight = T.train(tiny_config(tmp_path / "a", "lstm", dropout=0.2), progress=False)
    cfg_b = tiny_config(tmp_path / "b", "lstm", dropout=0.2)
    original = T.lr_at

    def interrupt_at_4(step, progress, tr):
        if step == 4:
            raise KeyboardInterrupt
        return original(step, progress, tr)

    monkeypatch.setattr(T, "lr_at", interrupt_at_4)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg_b, progress=False)
    monkeypatch.setattr(T, "lr_at", original)
    resumed = T.train(cfg_b, resume=True, progress=False)
    assert resumed["train"]["step"] == 6
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


@pytest.mark.slow
def test_resume_needs_last_checkpoint_and_same_model(tmp_path):
    cfg = tiny_config(tmp_path, "lstm")
    with pytest.raises(ConfigError, match="no .*last.pt"):
        T.train(cfg, resume=True, progress=False)
    T.train(cfg, progress=False)
    cfg.write_text(cfg.read_text().replace("hidden = 32", "hidden = 48"))
    with pytest.raises(ConfigError, match=r"\[model\] differs"):
        T.train(cfg, resume=True, progress=False)


@pytest.mark.slow
def test_early_stopping(tmp_path):
    # lr so small nothing improves after the first evaluation: stops after `patience` more
    cfg = tiny_config(
        tmp_path,
        "lstm",
        lr=1e-12,
        min_lr=0,
        max_steps=60,
        eval_every=1,
        patience=2,
        warmup=0,
        dropout=0.0,
    )
    ck = T.train(cfg, progress=False)
    assert ck["train"]["step"] < 60


@pytest.mark.slow
def test_seeds_train_members_and_save_their_ensemble(tmp_path):
    """[train] seeds: a member per seed, then one checkpoint of their ensemble, evaluated
    (a mixture of the members' distributions: never worse than the worst member), which
    exports; --resume then skips the finished members."""
    from midi_companion.export.onnx_export import export_checkpoint

    cfg = tiny_config(tmp_path, "roll-nade-lstm")
    ck = T.train(cfg, progress=False)
    members = [
        torch.load(tmp_path / "run" / f"seed{s}" / "best.pt", weights_only=True) for s in (1, 2)
    ]
    assert members[0]["config"]["train"]["seed"] == 1
    first_weights = [next(iter(m["state_dict"].values())) for m in members]
    assert not torch.equal(*first_weights)  # different seeds, different members
    m = ck["metrics"]
    assert [x["seed"] for x in m["members"]] == [1, 2]
    assert m["test_nll"] <= max(x["test_nll"] for x in m["members"]) + 1e-6
    assert ck["train"]["members"] == 2
    export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "ens.onnx")
    mtime = (tmp_path / "run" / "seed1" / "best.pt").stat().st_mtime
    T.train(cfg, resume=True, progress=False)
    assert (tmp_path / "run" / "seed1" / "best.pt").stat().st_mtime == mtime


@pytest.mark.slow
def test_members_may_change_the_model_and_still_ensemble(tmp_path):
    """A member {seed = N, model = {...}} trains its own architecture (in its own folder);
    the ensemble holds both architectures and exports (float16 weights too)."""
    from midi_companion.export.onnx_export import export_checkpoint

    cfg = tiny_config(
        tmp_path, "roll-nade-lstm", seeds="[1, {seed = 1, model = {dec_hidden = 24}}]"
    )
    ck = T.train(cfg, progress=False)
    wide = torch.load(tmp_path / "run" / "seed1-dec_hidden24" / "best.pt", weights_only=True)
    assert wide["model_args"]["dec_hidden"] == 24
    assert [m["dec_hidden"] for m in ck["model_args"]["members"]] == [
        torch.load(tmp_path / "run" / "seed1" / "best.pt", weights_only=True)["model_args"][
            "dec_hidden"
        ],
        24,
    ]
    full = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "ens.onnx")
    half = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "ens16.onnx", float16=True)
    assert half["metadata"]["weights"] == "float16"
    assert half["bytes"] < 0.8 * full["bytes"]  # the graph itself stays (a tiny model)


def test_seeds_need_a_family_that_ensembles(tmp_path):
    cfg = tiny_config(tmp_path, "lstm", seeds="[1, 2]")
    with pytest.raises(ConfigError, match=r"\[train\] seeds needs a family that ensembles"):
        T.load_config(cfg)
    cfg = tiny_config(tmp_path, "roll-nade-lstm", seeds="[1, 1]")
    with pytest.raises(ConfigError, match=r"\[train\] seeds must be a list"):
        T.load_config(cfg)
    cfg = tiny_config(tmp_path, "roll-nade-lstm", seeds="[1, {seed = 1, model = {}}]")
    with pytest.raises(ConfigError, match=r"\[train\] seeds must be a list"):
        T.load_config(cfg)  # the same member twice
    cfg = tiny_config(tmp_path, "roll-nade-lstm", seeds="[1, {seed = 1, model = {hiden = 8}}]")
    with pytest.raises(ConfigError, match=r"may only change keys that \[model\] sets"):
        T.load_config(cfg)
