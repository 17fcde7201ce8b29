"""Data parallel: `companion train` under torchrun with 2 CPU processes (gloo). Each rank
prints a digest of the batches it trained on and of its weights when it ends; the ranks
must have seen different data and hold the same weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_cpu_ranks_share_work_and_agree(tmp_path):
    text = (ROOT / "models" / "configs" / "tiny-lstm.toml").read_text()
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp_path / "run"}"\n'))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "midi_companion.models.train",
            str(cfg),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = {
        int(m[1]): (m[2], m[3], m[4])
        for m in re.finditer(
            r"rank (\d)/2: (\d+) steps, \d+ \w+s, data ([0-9a-f]{16}), weights ([0-9a-f]{16})",
            r.stdout,
        )
    }
    assert set(ranks) == {0, 1}, r.stdout
    (steps0, data0, weights0), (steps1, data1, weights1) = ranks[0], ranks[1]
    assert steps0 == steps1 == "6"
    assert data0 != data1  # each rank trained on its own share
    assert weights0 == weights1  # and DDP kept them in step
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["train"]["world_size"] == 2 and best["train"]["step"] == 6
