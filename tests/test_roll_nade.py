"""roll-nade-lstm: the frame probability is exact (sums to one over every set of keys),
the training loss equals the step protocol's token by token, batches augment within the
keyboard, and the `nade-step` graph exports with parity (ORT = torch, step = full)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from midi_companion.models import multitrack_lstm as mt
from midi_companion.models import roll_nade as rn
from midi_companion.sampling import ascending_mask

torch.set_num_threads(1)


def tiny(keys: int = 88, local_kernel: int = 5, seed: int = 0) -> rn.RollNade:
    torch.manual_seed(seed)
    return rn.RollNade(
        keys=keys,
        hidden=16,
        layers=2,
        dec_hidden=12,
        dec_embed=8,
        dropout=0.0,
        local_kernel=local_kernel,
    ).eval()


rolls = arrays(
    np.uint8,
    st.tuples(st.integers(1, 12), st.just(88)),
    elements=st.sampled_from([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
)


@given(rolls)
def test_frame_tokens_are_ascending_keys_then_end(roll):
    toks = rn.frame_tokens(roll)
    for frame, row in zip(roll, toks):
        keys = np.nonzero(frame)[0]
        n = len(keys)
        assert list(row[:n]) == list(keys) and row[n] == 88 and (row[n + 1 :] == -1).all()
    stream = rn.stream_tokens(roll)
    assert stream[0] == 88 and (stream == 88).sum() == len(roll) + 1


def tiny_ensemble(keys: int = 88) -> rn.RollNadeEnsemble:
    members = [tiny(keys, local_kernel=k, seed=i).model_args for i, k in enumerate((0, 3))]
    model = rn.build(rn.FAMILY, None, members=members, dropout=0.1)
    for i, m in enumerate(model.members):
        m.load_state_dict(tiny(keys, local_kernel=(0, 3)[i], seed=i).state_dict())
    return model.eval()


@pytest.mark.parametrize("kind", ["plain", "local", "ensemble"])
def test_frame_distribution_sums_to_one(kind):
    """Over all 2^P sets of a 5-key roll, exp(-NLL of the frame) sums to 1, in any context."""
    P = 5
    model = tiny_ensemble(P) if kind == "ensemble" else tiny(P, 3 if kind == "local" else 0)
    rng = np.random.default_rng(0)
    context = (rng.random((3, P)) < 0.4).astype(np.uint8)
    sets = np.array(list(itertools.product([0, 1], repeat=P)), dtype=np.uint8)
    pieces = [np.concatenate([context, s[None]]) for s in sets]
    with torch.no_grad():
        nll = model.per_frame_nll(rn.collate(pieces)).view(len(sets), -1)[:, -1]
    assert math.isclose(float(torch.exp(-nll.double()).sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_loss_equals_the_step_protocol_token_by_token(kind):
    model = tiny() if kind == "single" else tiny_ensemble()
    rng = np.random.default_rng(1)
    pieces = [(rng.random((n, 88)) < 0.05).astype(np.uint8) for n in (7, 4)]
    with torch.no_grad():
        nll, frames = model.loss(rn.collate(pieces))
    step = rn.NadeStep(model) if kind == "single" else rn.EnsembleStep(model)
    total = 0.0
    for piece in pieces:
        toks = rn.stream_tokens(piece)
        state = step.zero_state(1)
        ends = 0
        with torch.no_grad():
            for tok, nxt in zip(toks[:-1], toks[1:]):
                ends += tok == 88
                logits, *state = step(torch.tensor([[tok]]), *state)
                if ends >= 2:  # the next token belongs to frame >= 1
                    lp = rn.mask_logits(logits, torch.tensor([tok])).log_softmax(-1)
                    total -= float(lp[0, nxt])
    assert frames == sum(len(p) - 1 for p in pieces)
    assert math.isclose(float(nll), total, rel_tol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_the_numpy_mask_is_the_torch_mask(seed):
    """One rule on both sides: companion.sampling.ascending_mask (the voices, `companion
    eval`) masks exactly what mask_logits (the training loss, both families) masks, on random
    streams: nade streams, and any tokens at all (keys, END, multitrack's BEGIN)."""
    rng = np.random.default_rng(seed)
    P = int(rng.integers(2, 90))
    gen = torch.Generator().manual_seed(seed)
    streams = [rn.random_stream(3, 40, P, gen).numpy(), rng.integers(0, P + 2, (3, 40))]
    for fed in streams:
        logits = rng.standard_normal((*fed.shape, P + 1)).astype(np.float32)
        want = rn.mask_logits(torch.from_numpy(logits), torch.from_numpy(fed)).numpy()
        np.testing.assert_array_equal(np.where(ascending_mask(fed, P + 1), logits, -np.inf), want)
        for tok, row in zip(fed[0], want[0]):  # one token at a time, as the voices use it
            assert np.array_equal(ascending_mask(int(tok), P + 1), np.isfinite(row))
    assert mt.mask_logits is rn.mask_logits  # the multitrack family has no other


@pytest.mark.slow
def test_export_parity_at_other_batch_sizes(tmp_path):
    from midi_companion import benchmarks
    from midi_companion.export import export_checkpoint

    model = tiny()
    ckpt = tmp_path / "nade.pt"
    torch.save(
        {
            "format": "midi-companion-checkpoint/1",
            "family": rn.FAMILY,
            "model_args": model.model_args,
            "state_dict": model.state_dict(),
            "representation": benchmarks.representation("jsb").to_dict(),
            "corpus": {"name": "test"},
            "metrics": {},
        },
        ckpt,
    )
    report = export_checkpoint(ckpt, tmp_path / "nade.onnx", batch_sizes=(1, 3), steps=64)
    for batch in (1, 3):
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
    assert report["metadata"]["protocol"] == "nade-step"


def test_learned_initial_state_is_the_zero_state_of_the_step_graph():
    """The state tensors carry the offset from the learned init: from the all-zero state the
    step graph plays the frame LSTM started at (init_h, init_c), writes h - init_h, and a key
    token passes that offset state through exactly."""
    model = tiny(local_kernel=0)
    with torch.no_grad():
        model.init_h.normal_(0, 0.5)
        model.init_c.normal_(0, 0.5)
    step = rn.NadeStep(model)
    with torch.no_grad():
        logits, h, c, *_ = step(torch.tensor([[88]]), *step.zero_state(1))  # END from zeros
        _, (h_ref, c_ref) = model.frame_lstm(torch.zeros(1, 1, 88), model.initial_state(1))
        assert torch.allclose(h + model.init_h, h_ref, atol=1e-6)
        assert torch.allclose(c + model.init_c, c_ref, atol=1e-6)
        # the full-sequence forward starts from the same learned state
        full = model.stream_logits(torch.tensor([[88]]))
        assert torch.allclose(logits, full[:, 0], atol=1e-5)
        # a zero-init model differs: the offsets are what frame 0 is predicted from
        zero = tiny(local_kernel=0)
        assert not torch.allclose(
            rn.NadeStep(zero)(torch.tensor([[88]]), *step.zero_state(1))[0], logits
        )
        _, h2, c2, *_ = step(torch.tensor([[5]]), h, c, *step.zero_state(1)[2:])
        assert torch.equal(h2, h) and torch.equal(c2, c)  # a key leaves the frame state


def test_checkpoints_from_before_learn_init_load_as_before():
    old = tiny(local_kernel=0)
    sd = {k: v for k, v in old.state_dict().items() if not k.startswith("init_")}
    args = {k: v for k, v in old.model_args.items() if k != "learn_init"}
    model = rn.build(rn.FAMILY, None, **args)  # built with the default, then loaded
    model.load_state_dict(sd)
    assert not model.learn_init and model.model_args["learn_init"] is False
    assert not any(n.startswith("init_") for n, _ in model.named_parameters())
    ens = rn.build(rn.FAMILY, None, members=[args, {**args, "learn_init": True}])
    ens.load_state_dict(
        {
            **{f"members.0.{k}": v for k, v in sd.items()},
            **{f"members.1.{k}": v for k, v in old.state_dict().items()},
        }
    )
    assert [m["learn_init"] for m in ens.model_args["members"]] == [False, True]


@pytest.mark.slow
def test_learned_init_trains_and_exports_with_parity(tmp_path):
    """A 2-member ensemble with learn_init trains a few steps scoring every frame (frame 0
    from the learned state), moves its offsets, and exports with parity (ORT = torch,
    step = full sequence) from the all-zero state."""
    from midi_companion import benchmarks
    from midi_companion.export import export_checkpoint

    members = [tiny(local_kernel=k, seed=i).model_args for i, k in enumerate((0, 3))]
    torch.manual_seed(0)
    model = rn.build(rn.FAMILY, None, members=members)
    assert all(m.learn_init for m in model.members)
    rng = np.random.default_rng(0)
    pieces = [(rng.random((n, 88)) < 0.05).astype(np.uint8) for n in (9, 6, 12)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        batch = rn.collate(pieces)
        batch["valid"][:, 0] = True  # frame 0 too: what the learned state is for
        nll, n = model.loss(batch)
        opt.zero_grad()
        (nll / n).backward()
        opt.step()
    assert all(float(m.init_h.detach().abs().max()) > 0 for m in model.members)
    ckpt = tmp_path / "ens.pt"
    torch.save(
        {
            "format": "midi-companion-checkpoint/1",
            "family": rn.FAMILY,
            "model_args": model.model_args,
            "state_dict": model.state_dict(),
            "representation": benchmarks.representation("jsb").to_dict(),
            "corpus": {"name": "test"},
            "metrics": {},
        },
        ckpt,
    )
    report = export_checkpoint(
        ckpt, tmp_path / "ens.onnx", batch_sizes=(1, 3), steps=64, float16=True
    )
    for batch in (1, 3):
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
    args = json.loads(report["metadata"]["model_args"])
    assert [m["learn_init"] for m in args["members"]] == [True, True]
    # and the file gives its weights back (export/recover_checkpoint.py), 2-layer cells too
    from midi_companion.export import recover_checkpoint

    back = recover_checkpoint.recover(tmp_path / "ens.onnx")
    assert back["model_args"] == args
    assert recover_checkpoint.check(back, tmp_path / "ens.onnx", pieces=2) <= 1e-4
