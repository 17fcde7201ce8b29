"""pianoroll: round trips up to the grid, streaming equals batch, peek, params, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import on_grid, scores

from midi_companion import benchmarks, representations
from midi_companion.errors import RepresentationError
from midi_companion.representations.base import feed_score
from midi_companion.representations.pianoroll import PianoRoll, transpose_frames
from midi_companion.score import Note, Score, Track

GRIDS = st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 1 / 6])


def stacked(frames: list, width: int) -> np.ndarray:
    return np.array(frames, dtype=np.uint8).reshape(-1, width)


def merged(score: Score) -> Score:
    return Score(tracks=[Track(name="lead", notes=score.notes)])


@st.composite
def rolls_and_scores(draw, gap: int, onsets: bool):
    grid = draw(GRIDS)
    pitches = draw(st.sampled_from([128, 88]))
    rep = PianoRoll(grid=grid, pitches=pitches, onsets=onsets)
    low = 0 if pitches == 128 else 21
    return rep, draw(scores(tracks=1, grid=grid, low=low, high=low + pitches - 1, gap=gap))


@given(rolls_and_scores(gap=1, onsets=False))
def test_round_trip_without_onsets(case):
    rep, score = case
    assert on_grid(rep.decode(rep.encode(score)), rep.params.grid) == on_grid(
        score, rep.params.grid
    )


@given(rolls_and_scores(gap=0, onsets=True))
def test_round_trip_with_onsets_keeps_touching_repeats(case):
    rep, score = case
    assert on_grid(rep.decode(rep.encode(score)), rep.params.grid) == on_grid(
        score, rep.params.grid
    )


@given(scores(tracks=(1, 3), gap=None), st.booleans())
def test_tracks_merge_and_encode_is_idempotent(score, onsets):
    rep = PianoRoll(onsets=onsets)
    frames = rep.encode(score)
    assert np.array_equal(frames, rep.encode(merged(score)))
    assert np.array_equal(rep.encode(rep.decode(frames)), frames)


def test_touching_same_pitch_notes_merge_without_onsets():
    score = Score.from_notes([Note(0, 60, 1), Note(1, 60, 1)])
    assert PianoRoll(grid=1.0).decode(PianoRoll(grid=1.0).encode(score)).notes == [
        Note(0.0, 60, 2.0, 80)
    ]
    rep = PianoRoll(grid=1.0, onsets=True, velocity=90)
    assert rep.decode(rep.encode(score)).notes == [Note(0.0, 60, 1.0, 90), Note(1.0, 60, 1.0, 90)]


def test_spans_quantize_and_hold_at_least_one_frame():
    rep = PianoRoll(grid=1.0, pitches=88)
    frames = rep.encode(Score.from_notes([Note(0.4, 60, 0.2), Note(1.5, 64, 1.0), Note(0, 10, 9)]))
    # Pitch 10 is outside the 88 keys: not held, but the roll lasts until it ends.
    assert frames.shape == (9, 88) and frames.dtype == np.uint8
    assert frames[:4, 60 - 21].tolist() == [1, 0, 0, 0]  # 0.4..0.6 -> step 0, one frame
    assert frames[:4, 64 - 21].tolist() == [0, 0, 1, 0]  # 1.5..2.5 -> steps [2, 3)
    assert frames.sum() == 2 and rep.encode(Score()).shape == (0, 88)


@st.composite
def loose_scores(draw):
    """Notes anywhere (not on the grid), overlapping freely, in several tracks."""
    times = st.floats(0, 12, allow_nan=False).map(lambda x: round(x, 3))
    lengths = st.floats(0.01, 4, allow_nan=False).map(lambda x: round(x, 3))
    note = st.builds(Note, times, st.integers(0, 127), lengths, st.integers(1, 127))
    # pitches 0..127 against 88 keys: notes outside the range must not change the length
    return Score(tracks=[Track(notes=draw(st.lists(note, max_size=12))) for _ in range(2)])


@given(loose_scores(), GRIDS, st.booleans(), st.sampled_from([128, 88]))
def test_streaming_equals_batch(score, grid, onsets, pitches):
    rep = PianoRoll(grid=grid, onsets=onsets, pitches=pitches)
    streamed = feed_score(rep.stream_encoder(), score)
    assert np.array_equal(stacked(streamed, rep.vocab_size), rep.encode(score))


@given(scores(tracks=(1, 2), gap=None), st.booleans())
def test_stream_decoder_matches_decode(score, onsets):
    rep = PianoRoll(onsets=onsets)
    dec = rep.stream_decoder(start=4.0)
    events = [e for frame in rep.encode(score) for e in dec.feed(frame)] + dec.flush()
    shifted = [Note(n.onset - 4.0, n.pitch, n.duration, n.velocity) for n in _notes(events)]
    assert sorted(shifted) == rep.decode(rep.encode(score)).notes
    assert all(a.beat <= b.beat for a, b in zip(events, events[1:]))


def _notes(events):
    return representations.base.events_to_score(events, ["lead"]).notes


def test_frames_become_final_half_a_step_after_they_start():
    rep = PianoRoll(grid=1.0, pitches=88, onsets=True)
    enc = rep.stream_encoder()
    assert enc.note_on(0.0, 60, 100) == []
    assert enc.peek()[60 - 21] == 1 and enc.peek()[88 + 60 - 21] == 1
    assert enc.advance(0.49) == []
    [frame0] = enc.advance(0.5)
    assert frame0[60 - 21] == 1
    assert enc.note_on(0.9, 64, 100) == []  # step 1: a live note-on a little early
    assert enc.peek()[64 - 21] == 1 and enc.peek()[88 + 64 - 21] == 1
    assert enc.peek()[88 + 60 - 21] == 0  # held, not struck again
    [frame1] = enc.note_off(1.6, 60)  # 60 ends at step 2, so step 1 is final now
    assert np.flatnonzero(frame1).tolist() == [60 - 21, 64 - 21, 88 + 64 - 21]
    assert enc.note_off(2.4, 64) == []  # 64 ends at step 2: frame 2 is silent
    assert [np.flatnonzero(f).tolist() for f in enc.flush()] == []


def test_streaming_equals_batch_on_jsb_pieces(bench_dir):
    for name in ("jsb", "jsb-16th"):
        rep = benchmarks.representation(name)
        rolls = benchmarks.load(name)["valid"][:8]
        for roll, score in zip(rolls, benchmarks.as_scores(name, "valid")[:8]):
            frames = rep.encode(score)
            assert np.array_equal(stacked(feed_score(rep.stream_encoder(), score), 88), frames)
            # Without onsets a roll -> notes -> roll is exact (trailing silence aside).
            assert np.array_equal(frames, roll[: len(frames)]) and not roll[len(frames) :].any()


def test_transpose_frames_drops_keys_leaving_the_range():
    frames = np.zeros((2, 8), np.uint8)
    frames[0, [0, 7]] = 1
    assert np.flatnonzero(transpose_frames(frames, 1)[0]).tolist() == [1]
    assert np.flatnonzero(transpose_frames(frames, -1)[0]).tolist() == [6]
    assert not transpose_frames(frames, 8).any()
    rep = PianoRoll(pitches=88, onsets=True)
    two = rep.encode(Score.from_notes([Note(0, 60, 1)]))
    up = rep.transpose_frames(two, 2)
    assert np.flatnonzero(up[0]).tolist() == [62 - 21, 88 + 62 - 21]


@given(GRIDS, st.sampled_from([128, 88]), st.booleans(), st.integers(1, 127))
def test_params_round_trip_through_json(grid, pitches, onsets, velocity):
    rep = PianoRoll(grid=grid, pitches=pitches, onsets=onsets, velocity=velocity)
    back = representations.from_dict(json.loads(rep.to_json()))
    assert back == rep and back.params.grid == grid
    assert rep.vocab_size == pitches * (2 if onsets else 1) and rep.kind == "frames"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"grid": 0}, r"grid .*received 0\)"),
        ({"grid": -0.5}, r"grid .*received -0.5\)"),
        ({"grid": "1/4"}, r"grid .*received '1/4'\)"),
        ({"pitches": 100}, r"pitches must be 128 .* or 88 .*received 100\)"),
        ({"onsets": 1}, r"onsets .*received 1\)"),
        ({"velocity": 0}, r"velocity must be an integer 1..127 \(received 0\)"),
    ],
)
def test_bad_params_say_what_was_received(params, words):
    with pytest.raises(RepresentationError, match=words):
        PianoRoll(**params)


def test_bad_frames_and_keys_are_refused():
    with pytest.raises(RepresentationError, match=r"shape \(128,\) \(received \(88,\)\)"):
        PianoRoll().decode(np.zeros((1, 88)))
    with pytest.raises(RepresentationError, match=r"unknown key\(s\) \['grids'\]"):
        representations.from_dict({"name": "pianoroll", "params": {"grids": 1}})
