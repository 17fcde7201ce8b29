"""events (MIDI-like): round trips, streaming = batch, grammar masks, params."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from midi_companion import representations
from midi_companion.errors import RepresentationError
from midi_companion.representations.base import feed_score, quantize, score_events
from midi_companion.representations.events import Events, velocity_table
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
    """Off-grid notes (1/120 beat) on 1-3 tracks, few pitches so same-pitch notes collide.
    Within a track, same-pitch notes end in onset order, as FIFO-paired MIDI files do."""
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


def expected(rep: Events, score: Score) -> list[tuple]:
    """What decode(encode(score)) should hold, worked out as a roll: a pitch sounds on the
    steps any note covers (at least one step each); a run of sounding steps is a note, cut
    again at every onset; velocity is the loudest onset's bin."""
    steps, onsets = defaultdict(set), defaultdict(dict)
    for n in score.notes:
        on = quantize(n.onset, rep.grid)
        steps[n.pitch].update(range(on, max(quantize(n.end, rep.grid), on + 1)))
        onsets[n.pitch][on] = max(onsets[n.pitch].get(on, 0), n.velocity)
    out = []
    for pitch, held in steps.items():
        start = None
        for s in range(min(held), max(held) + 2):
            if start is not None and (s not in held or s in onsets[pitch]):
                vel = rep.velocities[rep.velocity_bin(onsets[pitch][start])]
                out.append((start, pitch, s - start, vel))
                start = None
            if s in held and start is None:
                start = s
    return sorted(out)


def on_steps(score: Score, res: int) -> list[tuple]:
    return sorted(
        (round(n.onset * res), n.pitch, round(n.duration * res), n.velocity) for n in score.notes
    )


def sample(rep, rng: np.random.Generator, n: int) -> tuple[list[int], object]:
    """n tokens drawn uniformly from each step's allowed() mask; returns them and the decoder."""
    dec = rep.stream_decoder()
    tokens = []
    for _ in range(n):
        tok = int(rng.choice(np.flatnonzero(dec.allowed())))
        dec.feed(tok)
        tokens.append(tok)
    return tokens, dec


def names(rep: Events, tokens) -> list[str]:
    return [rep.token_name(t) for t in tokens]


# ---- whole pieces ------------------------------------------------------------------------
def test_layout_and_names():
    rep = Events()
    assert rep.vocab_size == 128 + 128 + 12 + 32
    assert rep.kind == "tokens"
    assert names(rep, [0, 127, 128, 255, 256, 267, 268, 299]) == [
        "NoteOn_0",
        "NoteOn_127",
        "NoteOff_0",
        "NoteOff_127",
        "TimeShift_1",
        "TimeShift_12",
        "Velocity_3",
        "Velocity_127",
    ]
    assert velocity_table(32)[:4] == (3, 7, 11, 15)


def test_order_shifts_and_velocity_changes():
    rep = Events()
    score = Score(
        tracks=[
            Track(notes=[Note(0, 64, 1, 80), Note(0, 60, 1, 80), Note(1, 62, 0.5, 80)]),
            Track(notes=[Note(1, 55, 2.75, 100)]),
        ]
    )
    assert names(rep, rep.encode(score)) == [
        "Velocity_79",
        "NoteOn_60",
        "NoteOn_64",
        "TimeShift_12",
        "NoteOff_60",
        "NoteOff_64",
        "Velocity_99",
        "NoteOn_55",
        "Velocity_79",
        "NoteOn_62",
        "TimeShift_6",
        "NoteOff_62",
        "TimeShift_12",
        "TimeShift_12",
        "TimeShift_3",
        "NoteOff_55",
    ]


def test_late_first_note_keeps_its_time():
    rep = Events()
    assert names(rep, rep.encode(Score.from_notes([Note(2.5, 60, 1 / 12, 80)]))) == [
        "TimeShift_12",
        "TimeShift_12",
        "TimeShift_6",
        "Velocity_79",
        "NoteOn_60",
        "TimeShift_1",
        "NoteOff_60",
    ]


def test_same_pitch_rearticulates_and_merges():
    rep = Events()
    score = Score(
        tracks=[
            Track(notes=[Note(0, 60, 2, 60), Note(3, 60, 1, 60)]),
            Track(notes=[Note(1, 60, 2, 60), Note(3, 60, 0.5, 90)]),
        ]
    )
    assert names(rep, rep.encode(score)) == [
        "Velocity_59",
        "NoteOn_60",
        "TimeShift_12",
        "NoteOff_60",
        "NoteOn_60",
        "TimeShift_12",
        "TimeShift_12",
        "NoteOff_60",
        "Velocity_91",
        "NoteOn_60",
        "TimeShift_12",
        "NoteOff_60",
    ]


def test_struck_again_within_its_first_step_merges():
    rep = Events()
    score = Score(
        tracks=[Track(notes=[Note(1.0, 60, 0.01, 100)]), Track(notes=[Note(1.02, 60, 1.0, 40)])]
    )
    tokens = ["TimeShift_12", "Velocity_99", "NoteOn_60", "TimeShift_12", "NoteOff_60"]
    assert names(rep, rep.encode(score)) == tokens
    assert names(rep, feed_score(rep.stream_encoder(), score)) == tokens


def test_rearticulated_within_one_step_keeps_one_note_on():
    rep = Events()
    score = Score(
        tracks=[
            Track(notes=[Note(0.0, 60, 2.0, 80)]),
            Track(notes=[Note(1.0, 60, 0.01, 80), Note(1.02, 60, 0.5, 100)]),
        ]
    )
    tokens = [
        "Velocity_79",
        "NoteOn_60",
        "TimeShift_12",
        "NoteOff_60",
        "Velocity_99",
        "NoteOn_60",
        "TimeShift_12",
        "NoteOff_60",
    ]
    assert names(rep, rep.encode(score)) == tokens
    assert names(rep, feed_score(rep.stream_encoder(), score)) == tokens


def test_short_note_lasts_one_step():
    rep = Events()
    decoded = rep.decode(rep.encode(Score.from_notes([Note(1.0, 60, 0.01, 80)])))
    assert on_steps(decoded, 12) == [(12, 60, 1, 79)]


@given(raw_scores())
def test_round_trip_up_to_the_grid(score):
    rep = Events()
    assert on_steps(rep.decode(rep.encode(score)), 12) == expected(rep, score)


@given(raw_scores(), st.sampled_from([(4, 4, 8), (24, 6, 127), (1, 1, 1)]))
def test_round_trip_other_params(score, params):
    res, shift, bins = params
    rep = Events(resolution=res, max_shift=shift, velocity_bins=bins)
    assert on_steps(rep.decode(rep.encode(score)), res) == expected(rep, score)


def test_decode_start_offsets_times():
    rep = Events()
    tokens = rep.encode(Score.from_notes([Note(0.5, 60, 1, 80)]))
    assert on_steps(rep.decode(tokens, start=8.0), 12) == [(102, 60, 12, 79)]


def test_chorales_round_trip(chorales):
    rep = Events()
    for score in chorales:
        assert on_steps(rep.decode(rep.encode(score)), 12) == expected(rep, score)


# ---- streaming ---------------------------------------------------------------------------
@given(raw_scores(), st.data())
def test_stream_equals_batch(score, data):
    rep = Events()
    assert feed_score(rep.stream_encoder(), score) == rep.encode(score)
    assert feed_with_advances(rep.stream_encoder(), score, data) == rep.encode(score)


def test_stream_equals_batch_on_chorales(chorales):
    rep = Events()
    for score in chorales:
        assert feed_score(rep.stream_encoder(), score) == rep.encode(score)


def test_a_step_is_final_half_a_step_later():
    rep = Events()
    enc = rep.stream_encoder()
    assert names(rep, enc.note_on(1.0, 60, 80)) == ["TimeShift_12"]  # time has passed
    assert enc.advance(1.0 + 1 / 24 - 1e-6) == []  # a chord tone may still land on beat 1
    assert names(rep, enc.advance(1.0 + 1 / 24)) == ["Velocity_79", "NoteOn_60"]
    assert names(rep, enc.advance(3.9)) == ["TimeShift_12", "TimeShift_12"]
    assert names(rep, enc.note_off(4.5, 60)) == ["TimeShift_12"]
    assert names(rep, enc.flush()) == ["TimeShift_6", "NoteOff_60"]


def test_stream_concatenation_matches_encode_with_advances():
    rep = Events()
    enc = rep.stream_encoder()
    out = enc.note_on(1.0, 60, 80) + enc.advance(1.5) + enc.advance(3.9)
    out += enc.note_off(4.5, 60) + enc.flush()
    assert out == rep.encode(Score.from_notes([Note(1.0, 60, 3.5, 80)]))


def test_flush_releases_held_notes():
    rep = Events()
    enc = rep.stream_encoder()
    out = enc.note_on(0.0, 60, 80) + enc.advance(2.0) + enc.flush()
    assert on_steps(rep.decode(out), 12) == [(0, 60, 24, 79)]


def test_stream_rejects_time_going_back():
    enc = Events().stream_encoder()
    enc.note_on(2.0, 60, 80)
    with pytest.raises(RepresentationError, match="received beat 1.0 after 2.0"):
        enc.note_off(1.0, 60)


def test_stream_rejects_bad_pitch():
    with pytest.raises(RepresentationError, match="pitch must be an integer 0..127"):
        Events().stream_encoder().note_on(0.0, 128, 80)


def test_stream_decoder_yields_events_as_tokens_come():
    rep = Events()
    dec = rep.stream_decoder(start=4.0)
    tokens = rep.encode(Score.from_notes([Note(0.0, 60, 1.0, 80), Note(0.5, 64, 1.0, 80)]))
    got = [
        (rep.token_name(t), [(e.beat, e.pitch, e.velocity) for e in dec.feed(t)]) for t in tokens
    ]
    assert got == [
        ("Velocity_79", []),
        ("NoteOn_60", [(4.0, 60, 79)]),
        ("TimeShift_6", []),
        ("NoteOn_64", [(4.5, 64, 79)]),
        ("TimeShift_6", []),
        ("NoteOff_60", [(5.0, 60, 0)]),
        ("TimeShift_6", []),
        ("NoteOff_64", [(5.5, 64, 0)]),
    ]
    assert dec.position == 5.5
    assert dec.flush() == []


# ---- grammar -----------------------------------------------------------------------------
@given(raw_scores())
def test_encoder_output_is_allowed_by_the_grammar(score):
    rep = Events()
    dec = rep.stream_decoder()
    for tok in rep.encode(score):
        assert dec.allowed()[tok], rep.token_name(tok)
        dec.feed(tok)


@given(st.integers(0, 2**32 - 1), st.sampled_from([Events(), Events(max_shift=3)]))
def test_sampled_sequences_decode_and_reencode(seed, rep):
    tokens, dec = sample(rep, np.random.default_rng(seed), 150)
    # Close what is still sounding the way the grammar allows, so the piece is complete.
    while dec.sounding:
        mask = dec.allowed()
        offs = np.flatnonzero(mask[rep.note_off_offset : rep.shift_offset])
        ons = np.flatnonzero(mask[: rep.note_off_offset])
        tok = (
            rep.note_off_offset + offs[0]
            if len(offs)
            else int(ons[0])
            if dec.after_velocity
            else rep.shift_offset
        )
        dec.feed(int(tok))
        tokens.append(int(tok))
    while tokens and rep.split(tokens[-1])[0] == "TimeShift":
        tokens.pop()  # trailing silence is not part of a piece
    assert rep.encode(rep.decode(tokens)) == tokens


def test_mask_rules():
    rep = Events()
    dec = rep.stream_decoder()
    mask = dec.allowed()
    assert not mask[:256].any()  # no velocity yet, nothing sounding
    assert mask[256:].all()
    dec.feed(rep.velocity_offset + 5)
    mask = dec.allowed()
    assert mask[:128].all() and not mask[128:].any()  # a velocity token needs a note-on
    dec.feed(62)
    mask = dec.allowed()
    assert not mask[:63].any() and mask[63:128].all()  # ascending at one step
    assert not mask[128:256].any()  # no note-off after a note-on at one step
    assert not mask[rep.velocity_offset + 5] and mask[rep.velocity_offset + 6]
    dec.feed(rep.shift_offset + 2)  # a partial shift: an event must follow
    mask = dec.allowed()
    assert not mask[rep.shift_offset : rep.velocity_offset].any()
    assert mask[128 + 62] and mask[:128].sum() == 127 and not mask[62]


def test_feed_refuses_what_the_mask_forbids():
    rep = Events()
    dec = rep.stream_decoder()
    with pytest.raises(
        RepresentationError,
        match=r"token 188 \(NoteOff_60\) cannot follow "
        r"the start at beat 0; allowed here",
    ):
        dec.feed(188)
    with pytest.raises(
        RepresentationError,
        match=r"token must be an integer 0..299 "
        r"\(received 300\)",
    ):
        dec.feed(300)
    dec.feed(rep.velocity_offset)
    dec.feed(60)
    dec.feed(rep.shift_offset)
    with pytest.raises(RepresentationError, match=r"token 60 \(NoteOn_60\) cannot follow"):
        dec.feed(60)  # pitch 60 is sounding


# ---- params ------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"resolution": 4, "max_shift": 16, "velocity_bins": 8}])
def test_params_json_round_trip(params):
    rep = Events(**params)
    again = representations.from_dict(json.loads(rep.to_json()))
    assert again == rep and isinstance(again, Events) and again.vocab_size == rep.vocab_size


@pytest.mark.parametrize(
    "params, message",
    [
        ({"resolution": 0}, "resolution must be an integer 1..960 (received 0)"),
        ({"resolution": 1.5}, "resolution must be an integer 1..960 (received 1.5)"),
        ({"max_shift": 0}, "max_shift must be an integer 1..1200 (received 0)"),
        ({"velocity_bins": 128}, "velocity_bins must be an integer 1..127 (received 128)"),
        ({"velocity_bins": True}, "velocity_bins must be an integer 1..127 (received True)"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(RepresentationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Events(**params)


def test_unknown_param_key():
    with pytest.raises(RepresentationError, match=r"unknown key\(s\) \['grid'\]"):
        representations.from_dict({"name": "events", "params": {"grid": 0.25}})
