"""notes (MidiRNN pitch/step/duration triples): round trips, streaming = batch, grammar,
params."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from midi_companion import representations
from midi_companion.errors import RepresentationError
from midi_companion.representations.base import feed_score, quantize, score_events
from midi_companion.representations.notes import Notes
from midi_companion.score import Note, Score, Track

CHORALES = ("bwv1.6", "bwv10.7", "bwv101.7")
TICKS = 120  # strategy time unit: 1/120 beat, so grid halves (1/24 beat) occur


# ---- helpers -----------------------------------------------------------------------------
def onsets(beats: int):
    """Ticks 0..beats*TICKS, often close to a sixteenth so notes crowd one grid step."""
    near = st.builds(lambda q, j: q * TICKS // 4 + j, st.integers(0, beats * 4), st.integers(0, 8))
    return st.one_of(st.integers(0, beats * TICKS), near)


def lengths(longest: int):
    """Lengths in ticks, often shorter than half a grid step."""
    return st.one_of(st.integers(1, longest), st.integers(1, 8))


@st.composite
def raw_scores(draw, low: int = 60, high: int = 63, max_notes: int = 20) -> Score:
    """Off-grid notes (1/120 beat) on 1-3 tracks, few pitches so same-pitch notes collide,
    gaps up to 16 beats. Within a track, same-pitch notes end in onset order, as FIFO-paired
    MIDI files do."""
    note = st.tuples(onsets(16), lengths(3 * TICKS), st.integers(low, high), st.integers(1, 127))
    tracks = []
    for i in range(draw(st.integers(1, 3))):
        last_end: dict[int, int] = {}
        notes = []
        for on, length, pitch, vel in sorted(draw(st.lists(note, max_size=max_notes))):
            end = max(on + length, last_end.get(pitch, 0))
            last_end[pitch] = end
            notes.append(Note(on / TICKS, pitch, (end - on) / TICKS, vel))
        tracks.append(Track(name=f"part {i}", notes=notes))
    return Score(tracks=tracks)


def chorale(config, name: str) -> Score:
    """A Bach chorale from music21's corpus, written to MIDI once (in pytest's cache)."""
    pytest.importorskip("music21")
    folder = config.cache.mkdir("bach-chorales-midi")
    path = folder / f"{name}.mid"
    if not path.exists():
        from music21 import corpus

        tmp = folder / f"{name}.{os.getpid()}.tmp"
        corpus.parse(f"bach/{name}").write("midi", fp=str(tmp))
        tmp.replace(path)
    return Score.from_midi(path)


@pytest.fixture(scope="module")
def chorales(request) -> list[Score]:
    return [chorale(request.config, name) for name in CHORALES]


def feed_with_advances(encoder, score: Score, data) -> list[int]:
    """Like base.feed_score, with advance() calls drawn between events."""
    out, prev = [], 0.0
    for beat, kind, pitch, vel, track in score_events(score):
        if data.draw(st.booleans()):
            out += encoder.advance(prev + data.draw(st.floats(0, 1)) * (beat - prev))
        out += (
            encoder.note_on(beat, pitch, vel, track)
            if kind
            else encoder.note_off(beat, pitch, track)
        )
        prev = beat
    return out + encoder.flush()


def expected(rep: Notes, score: Score) -> list[tuple]:
    """The decoded notes as (onset step, pitch, end step): onsets to the grid, gaps cut to
    max_step, durations 1..max_duration steps, one note per onset and pitch (the longest)."""
    res, p = rep.params.resolution, rep.params
    longest: dict[tuple[int, int], int] = {}
    for n in score.notes:
        key = (quantize(n.onset, rep.grid), n.pitch)
        dur = min(max(quantize(n.duration, rep.grid), 1), p.max_duration * res)
        longest[key] = max(longest.get(key, 0), dur)
    out, prev, at = [], 0, 0
    for (on, pitch), dur in sorted(longest.items()):
        at += min(on - prev, p.max_step * res)
        prev = on
        out.append((at, pitch, at + dur))
    return sorted(out)


def decoded_notes(rep: Notes, tokens, start: float = 0.0) -> list[tuple]:
    """Notes as the stream decoder yields them (on and off together), in grid steps."""
    dec, out, res = rep.stream_decoder(start), [], rep.params.resolution
    for tok in tokens:
        events = dec.feed(tok)
        if events:
            on, off = events
            assert on.is_on and not off.is_on and on.pitch == off.pitch
            assert on.velocity == rep.params.velocity
            out.append((round(on.beat * res), on.pitch, round(off.beat * res)))
    return sorted(out)


def names(rep: Notes, tokens) -> list[str]:
    return [rep.token_name(t) for t in tokens]


# ---- whole pieces ------------------------------------------------------------------------
def test_layout():
    rep = Notes()
    assert rep.fields == (128, 97, 96) and rep.offsets == (0, 128, 225)
    assert rep.vocab_size == 321
    assert rep.step_classes[:3] == (0.0, 1 / 12, 2 / 12) and rep.step_classes[-1] == 8.0
    assert rep.duration_classes[0] == 1 / 12 and rep.duration_classes[-1] == 8.0
    small = Notes(resolution=4, max_step=2, max_duration=1)
    assert small.fields == (128, 9, 4) and small.offsets == (0, 128, 137)


def test_chord_order_steps_and_clipping():
    rep = Notes()
    score = Score(
        tracks=[
            Track(notes=[Note(0, 64, 1, 80), Note(0.02, 60, 20, 80)]),
            Track(notes=[Note(0.5, 67, 0.01, 80), Note(20, 62, 1, 80)]),
        ]
    )
    assert names(rep, rep.encode(score)) == [
        "Pitch_60",
        "Step_0",
        "Duration_96",
        "Pitch_64",
        "Step_0",
        "Duration_12",
        "Pitch_67",
        "Step_6",
        "Duration_1",
        "Pitch_62",
        "Step_96",
        "Duration_12",
    ]


def test_same_onset_and_pitch_keeps_the_longest():
    rep = Notes()
    score = Score(tracks=[Track(notes=[Note(1, 60, 1, 80)]), Track(notes=[Note(1, 60, 2, 80)])])
    assert names(rep, rep.encode(score)) == ["Pitch_60", "Step_12", "Duration_24"]


@given(raw_scores())
def test_round_trip_up_to_the_grid(score):
    rep = Notes()
    tokens = rep.encode(score)
    assert decoded_notes(rep, tokens) == expected(rep, score)
    decoded = rep.decode(tokens)  # pairs same-pitch notes first in, first out
    assert len(decoded.notes) == len(expected(rep, score))


@given(raw_scores(), st.sampled_from([(4, 2, 1), (24, 1, 4), (1, 16, 16)]))
def test_round_trip_other_params(score, params):
    res, max_step, max_duration = params
    rep = Notes(resolution=res, max_step=max_step, max_duration=max_duration, velocity=100)
    assert decoded_notes(rep, rep.encode(score)) == expected(rep, score)


def test_decode_to_score():
    rep = Notes(velocity=64)
    score = Score.from_notes([Note(0.5, 60, 1.0, 80), Note(1.0, 64, 0.25, 80)])
    assert rep.decode(rep.encode(score), start=4.0).notes == [
        Note(4.5, 60, 1.0, 64),
        Note(5.0, 64, 0.25, 64),
    ]


def test_chorales_round_trip(chorales):
    rep = Notes()
    for score in chorales:
        assert decoded_notes(rep, rep.encode(score)) == expected(rep, score)


# ---- streaming ---------------------------------------------------------------------------
@given(raw_scores(), st.data())
def test_stream_equals_batch(score, data):
    rep = Notes()
    assert feed_score(rep.stream_encoder(), score) == rep.encode(score)
    assert feed_with_advances(rep.stream_encoder(), score, data) == rep.encode(score)


def test_stream_equals_batch_on_chorales(chorales):
    rep = Notes()
    for score in chorales:
        assert feed_score(rep.stream_encoder(), score) == rep.encode(score)


def test_a_note_waits_for_earlier_notes_and_its_window():
    rep = Notes()
    enc = rep.stream_encoder()
    assert enc.note_on(0.0, 60, 80) == []
    assert enc.note_on(1.0, 64, 80) == []
    assert enc.note_off(1.5, 64) == []  # 64 is complete, but 60 (earlier) still sounds
    assert names(rep, enc.note_off(4.0, 60)) == [
        "Pitch_60",
        "Step_0",
        "Duration_48",
        "Pitch_64",
        "Step_12",
        "Duration_6",
    ]
    assert enc.note_on(5.0, 67, 80) == [] and enc.note_off(5.02, 67) == []
    assert enc.advance(5.0 + 1 / 24 - 1e-6) == []  # a chord tone could still land on beat 5
    assert names(rep, enc.advance(5.0 + 1 / 24)) == ["Pitch_67", "Step_48", "Duration_1"]
    assert enc.flush() == []


@pytest.mark.parametrize("later", [60, 64, 67])
def test_a_note_landing_on_a_finished_notes_step(later):
    rep = Notes()
    score = Score(tracks=[Track(notes=[Note(1.0, 64, 0.01, 80), Note(1.02, later, 1.0, 80)])])
    assert feed_score(rep.stream_encoder(), score) == rep.encode(score)


def test_flush_ends_held_notes():
    rep = Notes()
    enc = rep.stream_encoder()
    out = enc.note_on(0.0, 60, 80) + enc.advance(2.0) + enc.flush()
    assert names(rep, out) == ["Pitch_60", "Step_0", "Duration_24"]


def test_stream_rejects_time_going_back():
    enc = Notes().stream_encoder()
    enc.note_on(2.0, 60, 80)
    with pytest.raises(RepresentationError, match="received beat 1.0 after 2.0"):
        enc.advance(1.0)


def test_stream_decoder_position():
    rep = Notes()
    dec = rep.stream_decoder(start=2.0)
    assert dec.position == 2.0
    for tok in (60, rep.offsets[1] + 6, rep.offsets[2] + 11):
        dec.feed(tok)
    assert dec.position == 2.5
    assert dec.flush() == []


# ---- grammar -----------------------------------------------------------------------------
@given(raw_scores())
def test_encoder_output_is_allowed_by_the_grammar(score):
    rep = Notes()
    dec = rep.stream_decoder()
    for tok in rep.encode(score):
        assert dec.allowed()[tok], rep.token_name(tok)
        dec.feed(tok)


@given(st.integers(0, 2**32 - 1))
def test_sampled_sequences_decode_and_reencode(seed):
    rep = Notes(resolution=4, max_step=2, max_duration=2)
    rng = np.random.default_rng(seed)
    dec, tokens, notes = rep.stream_decoder(), [], []
    for _ in range(90):
        tok = int(rng.choice(np.flatnonzero(dec.allowed())))
        events = dec.feed(tok)
        tokens.append(tok)
        if events:
            notes.append(Note(events[0].beat, events[0].pitch, events[1].beat - events[0].beat))
    assert rep.encode(Score.from_notes(notes)) == tokens


def test_mask_cycles_through_the_fields():
    rep = Notes()
    dec = rep.stream_decoder()
    for field, tok in enumerate((64, rep.offsets[1], rep.offsets[2])):
        mask = dec.allowed()
        lo = rep.offsets[field]
        assert mask[lo : lo + rep.fields[field]].all() and mask.sum() == rep.fields[field]
        dec.feed(tok)
    dec.feed(60)  # below the chord tone 64: a step of 0 would write the chord out of order
    mask = dec.allowed()
    assert not mask[rep.offsets[1]] and mask[rep.offsets[1] + 1 : rep.offsets[2]].all()


def test_feed_refuses_what_the_mask_forbids():
    rep = Notes()
    dec = rep.stream_decoder()
    with pytest.raises(
        RepresentationError,
        match=r"token 128 \(Step_0\) is not allowed here: "
        r"expected a Pitch token",
    ):
        dec.feed(128)
    with pytest.raises(RepresentationError, match=r"integer 0..320 \(received -1\)"):
        dec.feed(-1)
    for tok in (64, 128, 225, 60):
        dec.feed(tok)
    with pytest.raises(RepresentationError, match=r"Step_0.*expected a Step token > 0"):
        dec.feed(128)


# ---- params ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params", [{}, {"resolution": 4, "max_step": 4, "max_duration": 2, "velocity": 100}]
)
def test_params_json_round_trip(params):
    rep = Notes(**params)
    again = representations.from_dict(json.loads(rep.to_json()))
    assert again == rep and isinstance(again, Notes) and again.fields == rep.fields


@pytest.mark.parametrize(
    "params, message",
    [
        ({"resolution": 0}, "resolution must be an integer 1..96 (received 0)"),
        ({"max_step": 0.5}, "max_step must be an integer 1..64 (received 0.5)"),
        ({"max_duration": 65}, "max_duration must be an integer 1..64 (received 65)"),
        ({"velocity": 0}, "velocity must be an integer 1..127 (received 0)"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(RepresentationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Notes(**params)


def test_unknown_param_key():
    with pytest.raises(RepresentationError, match=r"unknown key\(s\) \['spacing'\]"):
        representations.from_dict({"name": "notes", "params": {"spacing": "log"}})
