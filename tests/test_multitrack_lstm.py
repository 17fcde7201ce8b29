"""multitrack-lstm: the accompaniment of a step given the lead is an exact distribution, the
loss equals the `multitrack-step` protocol token by token, and the graph exports with
parity at batch sizes other than the example's."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from midi_companion.models import multitrack_lstm as mt
from midi_companion.representations import REGISTRY

torch.set_num_threads(1)


def tiny(keys: int, tracks: int, local_kernel: int = 3) -> mt.MultitrackLSTM:
    torch.manual_seed(0)
    return mt.MultitrackLSTM(
        keys=keys,
        tracks=tracks,
        hidden=16,
        dec_hidden=12,
        dec_embed=8,
        dropout=0.0,
        local_kernel=local_kernel,
    ).eval()


def test_build_takes_rows_and_keys_from_the_representation():
    rep = REGISTRY["multitrack"](grid=0.25, low=40, high=80, scheme="satb")
    model = mt.build(mt.FAMILY, rep, hidden=8, dec_hidden=8, dec_embed=4)
    assert (model.K, model.P) == (4, 41)
    with pytest.raises(ValueError, match="lead"):
        mt.MultitrackLSTM(keys=5, tracks=1)


@pytest.mark.parametrize("local_kernel", [0, 3])
def test_accompaniment_distribution_sums_to_one(local_kernel):
    """Two tracks of 3 keys: over the 8 sets of the second row, given a fixed lead row and
    context, the step probabilities sum to 1."""
    P = 3
    model = tiny(P, 2, local_kernel)
    context = np.array([[[1, 0, 0], [0, 1, 1]], [[0, 1, 0], [1, 0, 0]]], np.uint8)
    lead = np.array([0, 0, 1], np.uint8)
    pieces = []
    for bits in itertools.product([0, 1], repeat=P):
        step = np.stack([lead, np.array(bits, np.uint8)])[None]
        pieces.append(np.concatenate([context, step]))
    total = 0.0
    with torch.no_grad():
        for p in pieces:
            full, _ = model.loss(mt.collate([p]))
            ctx, _ = model.loss(mt.collate([p[:2]]))
            total += math.exp(-(float(full) - float(ctx)))
    assert math.isclose(total, 1.0, rel_tol=1e-5)


def test_loss_equals_the_step_protocol_token_by_token():
    model = tiny(10, 3)
    rng = np.random.default_rng(0)
    pieces = [(rng.random((n, 3, 10)) < 0.15).astype(np.uint8) for n in (5, 3)]
    with torch.no_grad():
        nll, steps = model.loss(mt.collate(pieces))
    step, total = mt.MultitrackStep(model), 0.0
    with torch.no_grad():
        for piece in pieces:
            toks = [t for f in piece for t in mt.step_tokens(f, 10)]
            state = step.zero_state(1)
            for tok, nxt in zip(toks[:-1], toks[1:]):
                logits, *state = step(torch.tensor([[tok]]), *state)
                row = int(state[-1][0, 0])
                if nxt != 11 and row >= 1:  # accompaniment tokens only
                    lp = mt.mask_logits(logits, torch.tensor([tok])).log_softmax(-1)
                    total -= float(lp[0, nxt])
    assert steps == 8
    assert math.isclose(float(nll), total, rel_tol=1e-5)


@pytest.mark.slow
def test_export_parity_at_other_batch_sizes(tmp_path):
    from midi_companion.export import export_checkpoint

    rep = REGISTRY["multitrack"](grid=0.25, low=50, high=70, scheme="satb")
    model = mt.build(mt.FAMILY, rep, hidden=16, dec_hidden=12, dec_embed=8, local_kernel=3)
    ckpt = tmp_path / "mt.pt"
    torch.save(
        {
            "format": "midi-companion-checkpoint/1",
            "family": mt.FAMILY,
            "model_args": model.model_args,
            "state_dict": model.state_dict(),
            "representation": rep.to_dict(),
            "corpus": {"name": "test"},
            "metrics": {},
        },
        ckpt,
    )
    report = export_checkpoint(ckpt, tmp_path / "mt.onnx", batch_sizes=(1, 3), steps=64)
    for batch in (1, 3):
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
    assert report["metadata"]["protocol"] == "multitrack-step"
    assert report["metadata"]["tracks"] == '["soprano","alto","tenor","bass"]'
