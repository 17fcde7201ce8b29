"""chord: vocabulary fitting, unknown sets, round trips, streaming, JSON, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import on_grid, scores

from midi_companion import benchmarks, representations
from midi_companion.errors import RepresentationError
from midi_companion.representations.base import feed_score
from midi_companion.representations.chord import Chord
from midi_companion.score import Note, Score

C, E, G, B = 60, 64, 67, 71


def block_chords(*sets: tuple[int, ...]) -> Score:
    """One chord per beat, with a silent beat between chords."""
    notes = [Note(2.0 * i, p, 1.0) for i, s in enumerate(sets) for p in s]
    return Score.from_notes(notes)


def test_fit_orders_by_count_then_pitches_with_silence_first():
    rep = Chord(grid=1.0).fit([block_chords((C, E, G), (G,), (C, E, G), (C,), (E,))])
    assert rep.chords == [(), (C, E, G), (C,), (E,), (G,)]  # ties: by pitch tuple
    assert rep.encode(block_chords((C, E, G), (G,))) == [1, 0, 4]


def test_min_count_and_max_size_cut_the_vocabulary():
    data = [block_chords((C, E, G), (G,), (C, E, G), (C,), (E,))]
    assert Chord(grid=1.0).fit(data, min_count=2).chords == [(), (C, E, G)]
    assert Chord(grid=1.0).fit(data, max_size=3).chords == [(), (C, E, G), (C,)]
    assert Chord(grid=1.0).fit(data, max_size=1).vocab_size == 1


def test_unknown_set_takes_its_largest_known_subset_then_the_most_frequent():
    sets = [(E, G)] * 3 + [(C, E)] * 2 + [(B,)] * 2 + [(C,)]
    rep = Chord(grid=1.0).fit([block_chords(*sets)])
    assert rep.chords == [(), (E, G), (C, E), (B,), (C,)]
    assert rep.token((C, E, G)) == rep.chords.index((E, G))  # two 2-subsets: the commoner
    assert rep.token((C, G, B)) == rep.chords.index((B,))  # (B,) is commoner than (C,)
    assert rep.token((61,)) == 0
    assert rep.encode(block_chords((C, E, G, B))) == [1]


@given(scores(tracks=1, grid=0.5, low=48, high=72, gap=1))
def test_round_trip_when_every_set_is_known(score):
    rep = Chord(grid=0.5).fit([score])
    assert on_grid(rep.decode(rep.encode(score)), 0.5) == on_grid(score, 0.5)


@given(scores(tracks=(1, 3), gap=None, low=55, high=66), st.lists(scores(low=55, high=66)))
def test_streaming_equals_batch_with_unknown_sets(score, training):
    rep = Chord().fit(training, max_size=8)
    enc = rep.stream_encoder()
    assert feed_score(enc, score) == rep.encode(score)
    assert all(0 <= t < rep.vocab_size for t in rep.encode(score))


def test_peek_gives_the_provisional_token():
    rep = Chord(grid=1.0).fit([block_chords((C, E, G), (C,))])
    enc = rep.stream_encoder()
    enc.note_on(0.0, C, 90)
    assert enc.peek() == rep.chords.index((C,))
    enc.note_on(0.1, E, 90)
    enc.note_on(0.2, G, 90)
    assert enc.peek() == rep.chords.index((C, E, G))
    assert enc.advance(0.6) == [rep.chords.index((C, E, G))]


def test_vocab_round_trips_through_json():
    rep = Chord(grid=1 / 3, velocity=70).fit([block_chords((C, E, G), (G,))])
    back = representations.from_dict(json.loads(rep.to_json()))
    assert back == rep and back.chords == rep.chords
    assert back.encode(block_chords((C, E, G))) == rep.encode(block_chords((C, E, G)))
    unfitted = Chord()
    assert representations.from_dict(unfitted.to_dict()) == unfitted


def test_streaming_equals_batch_on_jsb(bench_dir):
    train = benchmarks.as_scores("jsb", "train")
    rep = Chord(grid=benchmarks.GRID["jsb"]).fit(train, min_count=2)
    assert 100 < rep.vocab_size < 2000
    for score in benchmarks.as_scores("jsb", "test")[:10]:
        assert feed_score(rep.stream_encoder(), score) == rep.encode(score)


def test_unfitted_encode_says_how_to_fit():
    with pytest.raises(RepresentationError, match=r"no vocabulary yet; call rep.fit"):
        Chord().encode(block_chords((C,)))


@pytest.mark.parametrize(
    ("vocab", "words"),
    [
        ([[60]], r"starting with \[\]"),
        ([[], [64, 60]], r"vocab\[1\] must be a strictly increasing .*received \[64, 60\]"),
        ([[], [200]], r"vocab\[1\] .*0..127 \(received \[200\]\)"),
        ([[], [60], [60]], r"vocab\[2\] repeats vocab\[1\] \(received \[60\]\)"),
    ],
)
def test_bad_vocab_is_refused(vocab, words):
    with pytest.raises(RepresentationError, match=words):
        representations.from_dict({"name": "chord", "params": {}, "vocab": vocab})


def test_bad_tokens_params_and_fit_arguments_are_refused():
    rep = Chord(grid=1.0).fit([block_chords((C,))])
    with pytest.raises(RepresentationError, match=r"token must be an integer 0..1 \(received 2\)"):
        rep.decode([0, 2])
    with pytest.raises(RepresentationError, match=r"grid .*received 0\)"):
        Chord(grid=0)
    with pytest.raises(RepresentationError, match=r"min_count .*received 0\)"):
        Chord().fit([], min_count=0)
    with pytest.raises(RepresentationError, match=r"max_size .*received 0\)"):
        Chord().fit([], max_size=0)
