"""Metrical position: the token LSTM and the multitrack LSTM are told where the beat is, in
training (counted from the piece's start, whatever window is cut) and in the step graph
(counted in the state), and the two agree."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from midi_companion.models import lstm, multitrack_lstm  # noqa: E402
from midi_companion.representations import REGISTRY  # noqa: E402


def _events():
    return REGISTRY["events"](resolution=12, max_shift=24, velocity_bins=1)


def test_lstm_phases_count_time_shifts_from_the_start_of_the_piece():
    rep = _events()
    model = lstm.build("lstm", rep, embed=8, hidden=8, layers=1)
    assert model.model_args["meter"] is True
    shift = rep.shift_offset - 1  # TimeShift_k is shift + k
    toks = torch.tensor(
        [[rep.velocity_offset, 60, shift + 3, 128 + 60, shift + 12, 62, shift + 10]]
    )
    assert model.phases(toks).tolist() == [[0, 0, 3, 3, 3, 3, 1]]
    state = [torch.zeros(1, 1, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1)]
    for t in toks[0]:
        _, *state = model.step(t.view(1, 1), *state)
    assert state[-1].item() == 1.0  # the step graph counted the same 25 steps mod 12


def test_lstm_training_windows_carry_the_phase_of_the_whole_piece():
    rep = _events()
    shift = rep.shift_offset - 1
    piece = np.array([rep.velocity_offset] + [60, shift + 3, 128 + 60] * 40)
    cfg = {"batch_size": 4, "seq_len": 16}
    rng = np.random.default_rng(0)
    expected = np.cumsum(rep.token_steps()[piece]) % 12
    for batch in lstm.batches([piece], rep, cfg, rng, train=True):
        for toks, phase, mask in zip(batch["tokens"], batch["phase"], batch["mask"]):
            toks, phase = toks[mask].numpy(), phase[mask].numpy()
            starts = [
                s
                for s in range(len(piece) - len(toks) + 1)
                if (piece[s : s + len(toks)] == toks).all()
                and (expected[s : s + len(toks)] == phase).all()
            ]
            assert starts, "a window's phases are not those of its place in the piece"


def test_lstm_without_time_tokens_has_no_meter():
    rep = REGISTRY["notes"]()
    model = lstm.build("lstm", rep, embed=8, hidden=8, layers=1)
    assert model.model_args["meter"] is False
    assert [s["name"] for s in model.state_spec()] == ["h", "c"]


def test_multitrack_windows_know_their_position_in_the_beat():
    rep = REGISTRY["multitrack"](scheme="satb", grid=0.25, low=40, high=80)
    model = multitrack_lstm.build(
        "multitrack-lstm", rep, hidden=8, layers=1, dec_hidden=8, dec_embed=4
    )
    assert model.beat == 4
    assert model.state_spec()[-1]["name"] == "beat_pos"
    roll = np.zeros((37, 4, 41), dtype=np.uint8)
    roll[:, 0, 20] = 1
    cfg = {"batch_size": 8, "seq_len": 8}
    batch = next(multitrack_lstm.batches([roll], rep, cfg, np.random.default_rng(1), True))
    starts = batch["phase"][:, 0].tolist()
    assert any(s % 4 for s in starts)  # windows start off the beat, and say so
    assert (batch["phase"] - batch["phase"][:, :1] == torch.arange(batch["phase"].shape[1])).all()
