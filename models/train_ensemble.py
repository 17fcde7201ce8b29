"""`[train] seeds`: an ensemble trained by the one loop (models/train.py), one member per
seed (into `out/seed<N>/`, or `out/seed<N>-<key><value>/` for a member that changes [model]
keys; `--resume` skips finished members and resumes the one that was cut off), then
combined by the family's `ensemble` (roll-nade-lstm averages the members' next-token
distributions), evaluated on valid and test, and written as `out/best.pt`."""

from __future__ import annotations

import copy
import os
import time
from importlib import import_module
from pathlib import Path

import torch

from midi_companion.models import FAMILY_MODULES, data
from midi_companion.models.checkpoint import CHECKPOINT_FORMAT
from midi_companion.models.train_config import member, member_dir


def train_ensemble(cfg, config_path, resume, dev, rank, world, progress) -> dict:
    """Train a member per seed, then combine, evaluate and save the ensemble as best.pt."""
    from midi_companion.models.checkpoint import load_checkpoint
    from midi_companion.models.train import _cpu, _run, evaluate

    tr = cfg["train"]
    out = Path(tr["out"])
    paths = []
    for entry in tr["seeds"]:
        seed, changes = member(entry)
        where = out / member_dir(entry)
        one = copy.deepcopy(cfg)
        one["model"].update(dict(changes))
        one["train"].update(seed=seed, seeds=None, out=str(where))
        best, last = where / "best.pt", where / "last.pt"
        finished = best.is_file() and (
            not last.is_file() or best.stat().st_mtime >= last.stat().st_mtime
        )
        if not (resume and finished):
            if progress:
                print(f"ensemble member {member_dir(entry)} -> {best}", flush=True)
            _run(one, config_path, resume and last.is_file(), dev, rank, world, progress)
        paths.append(best)
    if rank != 0:
        return {}
    t0 = time.perf_counter()
    members = [load_checkpoint(p) for p in paths]
    module = import_module(FAMILY_MODULES[cfg["model"]["family"]])
    from midi_companion.representations import from_dict

    rep = from_dict(members[0]["representation"])
    model = module.ensemble(rep, members).to(dev)
    corpus = data.load_data(cfg["data"], progress=False)
    metrics = {
        "unit": members[0]["metrics"]["unit"],
        "best_step": None,
        "members": [{"seed": s, **m["metrics"]} for s, m in zip(tr["seeds"], members)],
    }
    for split in ("valid", "test"):
        pieces = data.encode(corpus.scores[split], rep)
        nll, n = evaluate(model, module, pieces, rep, tr, dev) if pieces else (None, 0)
        metrics[f"{split}_nll"] = nll
        metrics[f"{split}_units"] = n
    seconds = sum(m["train"]["seconds"] for m in members) + time.perf_counter() - t0
    ck = {
        "format": CHECKPOINT_FORMAT,
        "family": cfg["model"]["family"],
        "model_args": dict(model.model_args),
        "state_dict": _cpu(model.state_dict()),
        "representation": members[0]["representation"],
        "config": cfg,
        "corpus": members[0]["corpus"],
        "metrics": metrics,
        "train": {
            "step": sum(m["train"]["step"] for m in members),
            "seconds": round(seconds, 1),
            "members": len(members),
            "world_size": world,
            "device": dev.type,
        },
    }
    tmp = out / "best.tmp"  # `out` holds the members' folders: it exists
    torch.save(ck, tmp)
    os.replace(tmp, out / "best.pt")
    if progress:
        print(
            f"ensemble of {len(members)}: valid {metrics['valid_nll']:.4f} test "
            f"{metrics['test_nll']:.4f} nats/{metrics['unit']} (members' test "
            f"{[round(m['metrics']['test_nll'], 4) for m in members]}); wrote "
            f"{out / 'best.pt'}",
            flush=True,
        )
    return ck
