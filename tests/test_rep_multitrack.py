"""multitrack: schemes and part assignment, round trips, streaming, peek, params, errors."""

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
from midi_companion.representations.multitrack import LPD5, SATB, MultiTrack, lpd5_family
from midi_companion.score import Note, Score, Track

LPD5_PROGRAMS = (0, 0, 24, 32, 40, 0)
LPD5_DRUMS = (False, False, False, False, False, True)


def stacked(frames: list, shape: tuple[int, int]) -> np.ndarray:
    return np.array(frames, dtype=np.uint8).reshape(-1, *shape)


def satb_scores(grid: float):
    return st.permutations(SATB).flatmap(
        lambda order: scores(
            names=order, grid=grid, low=40, high=80, gap=1, monophonic=True, programs=[52] * 4
        )
    )


@given(
    st.sampled_from([1.0, 0.5, 0.25, 1 / 3]).flatmap(
        lambda g: st.tuples(st.just(g), satb_scores(g))
    )
)
def test_satb_round_trip_by_name_in_any_order(case):
    grid, score = case
    rep = MultiTrack(grid=grid, low=40, high=80)
    back = rep.decode(rep.encode(score))
    assert [t.name for t in back.tracks] == list(SATB)
    assert {t.program for t in back.tracks} == {52}
    by_name = dict(on_grid(score, grid))
    assert on_grid(back, grid) == [(v, by_name[v]) for v in SATB]


@given(scores(names=LPD5, programs=LPD5_PROGRAMS, drums=LPD5_DRUMS, gap=1, max_notes=8))
def test_lpd5_round_trip(score):
    rep = MultiTrack(scheme="lpd5")
    back = rep.decode(rep.encode(score))
    assert on_grid(back, 0.25) == on_grid(score, 0.25)
    assert [(t.program, t.is_drum) for t in back.tracks] == list(zip(LPD5_PROGRAMS, LPD5_DRUMS))


def test_satb_assigns_by_name_then_order_and_drops_the_rest():
    tracks = [Track("Bass"), Track("x"), Track("drums", is_drum=True), Track("Alto 2"), Track("y")]
    tracks += [Track("z")]
    assert MultiTrack().assign(Score(tracks=tracks)) == [[1], [3], [4], [0]]
    assert MultiTrack(tracks=("bass", "soprano")).assign(Score(tracks=tracks)) == [[0], [1]]


def test_satb_rows_hold_one_pitch():
    chord = [Note(0, p, 1) for p in (60, 64, 67)]
    score = Score(tracks=[Track("soprano", notes=chord), Track("bass", notes=chord)])
    rep = MultiTrack(grid=1.0, low=60, high=67)
    frames = rep.encode(score)
    assert [np.flatnonzero(row).tolist() for row in frames[0]] == [[7], [], [], [0]]
    streamed = feed_score(rep.stream_encoder(), rep.arrange(score))
    assert np.array_equal(stacked(streamed, (4, 8)), frames)


def test_lpd5_families_follow_the_convention():
    def family(program: int, is_drum: bool = False):
        return lpd5_family(Track(program=program, is_drum=is_drum))

    assert [family(p) for p in (0, 7, 24, 31, 32, 39, 40, 51)] == [
        "piano", "piano", "guitar", "guitar", "bass", "bass", "strings", "strings"
    ]  # fmt: skip
    assert [family(p) for p in (8, 16, 52, 56, 73, 80, 88, 104)] == ["strings"] * 8
    assert [family(p) for p in (96, 103, 112, 127)] == [None] * 4
    assert family(5, is_drum=True) == "drums"


def test_lpd5_lead_is_named_or_highest_non_drum_part():
    parts = [
        Track("keys", program=0, notes=[Note(0, 60, 1)]),
        Track("flute", program=73, notes=[Note(0, 84, 1)]),
        Track("fx", program=100, notes=[Note(0, 100, 1)]),
        Track("kit", is_drum=True, notes=[Note(0, 90, 1)]),
        Track("bass", program=33, notes=[Note(0, 40, 1)]),
    ]
    rep = MultiTrack(scheme="lpd5")
    assert rep.assign(Score(tracks=parts)) == [[1], [0], [], [4], [], [3]]
    named = [*parts, Track("Melody", program=33, notes=[Note(0, 50, 1)])]
    assert rep.assign(Score(tracks=named))[0] == [5]
    plain = MultiTrack(scheme="lpd5", tracks=("piano", "strings", "drums"))
    assert plain.assign(Score(tracks=parts)) == [[0], [1], [3]]


@given(scores(tracks=(1, 6), gap=None, low=30, high=90), st.sampled_from(["satb", "lpd5"]))
def test_streaming_equals_batch_after_arrange(score, scheme):
    rep = MultiTrack(scheme=scheme, low=36, high=84)
    frames = rep.encode(score)
    streamed = feed_score(rep.stream_encoder(), rep.arrange(score))
    assert np.array_equal(stacked(streamed, rep.frame_shape), frames)
    assert np.array_equal(rep.encode(rep.arrange(score)), frames)


def test_satb_chorales_stream_encode_and_round_trip(bench_dir):
    arrays = benchmarks.load_satb_arrays()["valid"][:6]
    rep = MultiTrack(grid=benchmarks.SATB_GRID, low=36, high=81)
    for steps, score in zip(arrays, benchmarks.load_satb()["valid"][:6]):
        frames = rep.encode(score)
        expected = np.zeros((len(steps), 4, rep.keys), np.uint8)
        t, v = np.nonzero(steps >= 0)
        expected[t, v, steps[t, v] - 36] = 1
        assert np.array_equal(frames, expected[: len(frames)]) and not expected[len(frames) :].any()
        assert np.array_equal(stacked(feed_score(rep.stream_encoder(), score), (4, 46)), frames)
        assert on_grid(rep.decode(frames), 0.25) == on_grid(score, 0.25)


def test_stream_decoder_events_carry_the_row_and_peek_is_live():
    rep = MultiTrack(grid=1.0, low=60, high=71, tracks=("soprano", "bass"))
    enc = rep.stream_encoder()
    enc.note_on(0.0, 67, 100, track=0)
    enc.note_on(0.02, 60, 100, track=1)
    assert [np.flatnonzero(row).tolist() for row in enc.peek()] == [[7], [0]]
    [frame] = enc.advance(0.5)
    dec = rep.stream_decoder(start=8.0)
    events = dec.feed(frame)
    assert [(e.beat, e.pitch, e.track, e.is_on) for e in events] == [
        (8.0, 67, 0, True),
        (8.0, 60, 1, True),
    ]
    assert dec.position == 9.0
    assert [(e.beat, e.track, e.is_on) for e in dec.flush()] == [(9.0, 0, False), (9.0, 1, False)]


def test_transpose_leaves_the_drum_row():
    rep = MultiTrack(scheme="lpd5", tracks=("piano", "drums"), low=30, high=90)
    frames = np.zeros((1, 2, rep.keys), np.uint8)
    frames[0, :, 6] = 1
    moved = rep.transpose_frames(frames, 3)
    assert np.flatnonzero(moved[0, 0]).tolist() == [9]
    assert np.flatnonzero(moved[0, 1]).tolist() == [6]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"scheme": "lpd5", "grid": 1 / 3},
        {"scheme": "satb", "tracks": ("bass", "soprano"), "low": 36, "high": 81},
        {"scheme": "lpd5", "tracks": ["piano", "bass", "drums"], "velocity": 64},
    ],
)
def test_params_round_trip_through_json(params):
    rep = MultiTrack(**params)
    back = representations.from_dict(json.loads(rep.to_json()))
    assert back == rep and back.params == rep.params
    assert rep.vocab_size == rep.keys and rep.frame_shape == (len(rep.params.tracks), rep.keys)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"grid": 0}, r"grid .*received 0\)"),
        ({"low": 60, "high": 50}, r"low must be <= high \(received low=60, high=50\)"),
        ({"high": 128}, r"high must be a MIDI pitch 0..127 \(received 128\)"),
        (
            {"scheme": "lpd17"},
            r"scheme must be one of \['lpd5', 'quartet', 'satb'\] \(received 'lpd17'\)",
        ),
        ({"tracks": ("soprano", "piano")}, r"satb scheme .*received \['soprano', 'piano'\]"),
        ({"tracks": ("bass", "bass")}, r"distinct names"),
    ],
)
def test_bad_params_say_what_was_received(params, words):
    with pytest.raises(RepresentationError, match=words):
        MultiTrack(**params)


def test_bad_rows_and_frames_are_refused():
    rep = MultiTrack(low=60, high=71)
    with pytest.raises(RepresentationError, match=r"track must be a row index 0..3 .*received 4"):
        rep.stream_encoder().note_on(0.0, 60, 90, track=4)
    with pytest.raises(RepresentationError, match=r"shape \(4, 12\) \(received \(12,\)\)"):
        rep.decode([np.zeros(12)])
