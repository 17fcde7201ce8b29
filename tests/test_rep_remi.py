"""remi (Bar/Position/Pitch/Velocity/Duration[/Tempo]): round trips, streaming = batch, bars
and time signatures, tempos, grammar, params. Token-for-token agreement with MidiTok's REMI
is in test_remi_miditok.py."""

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
from midi_companion.representations.remi import Remi
from midi_companion.score import Note, Score, Track

CHORALES = ("bwv1.6", "bwv10.7", "bwv11.6")  # the last one in 3/4
TICKS = 120  # strategy time unit: 1/120 beat, so position halves (1/8 beat) occur


# ---- helpers -----------------------------------------------------------------------------
def onsets(beats: int):
    """Ticks 0..beats*TICKS, often close to a sixteenth so notes crowd one grid step."""
    near = st.builds(lambda q, j: q * TICKS // 4 + j, st.integers(0, beats * 4), st.integers(0, 8))
    return st.one_of(st.integers(0, beats * TICKS), near)


def lengths(longest: int):
    """Lengths in ticks, often shorter than half a grid step."""
    return st.one_of(st.integers(1, longest), st.integers(1, 8))


@st.composite
def raw_scores(draw, low: int = 19, high: int = 23, max_notes: int = 20) -> Score:
    """Off-grid notes (1/120 beat) on 1-3 tracks, few pitches (some below the default range)
    so same-pitch notes collide. Within a track, same-pitch notes end in onset order, as
    FIFO-paired MIDI files do. Time signature 4/4, 3/4 or 6/8."""
    note = st.tuples(onsets(24), lengths(3 * TICKS), st.integers(low, high), st.integers(1, 127))
    tracks = []
    for i in range(draw(st.integers(1, 3))):
        last_end: dict[int, int] = {}
        notes = []
        for on, length, pitch, vel in sorted(draw(st.lists(note, max_size=max_notes))):
            end = max(on + length, last_end.get(pitch, 0))
            last_end[pitch] = end
            notes.append(Note(on / TICKS, pitch, (end - on) / TICKS, vel))
        tracks.append(Track(name=f"part {i}", notes=notes))
    sig = draw(st.sampled_from([(4, 4), (3, 4), (6, 8)]))
    return Score(tracks=tracks, time_signatures=[(0.0, *sig)])


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


def signature(score: Score) -> tuple[int, int]:
    return tuple(score.time_signatures[0][1:])


def feed_with_advances(encoder, score: Score, data, tempos: bool = False) -> list[int]:
    """Like base.feed_score, with advance() calls drawn between events and, with `tempos`,
    the score's tempo changes sent before the notes on the same beat."""
    events = [(b, -1, bpm, 0, 0) for b, bpm in score.tempos] if tempos else []
    events = sorted(events + score_events(score), key=lambda e: (e[0], e[1]))
    out, prev = [], 0.0
    for beat, kind, value, vel, track in events:
        if data.draw(st.booleans()):
            out += encoder.advance(prev + data.draw(st.floats(0, 1)) * (beat - prev))
        if kind == -1:
            out += encoder.tempo(beat, value)
        elif kind:
            out += encoder.note_on(beat, value, vel, track)
        else:
            out += encoder.note_off(beat, value, track)
        prev = beat
    return out + encoder.flush()


def expected(rep: Remi, score: Score) -> list[tuple]:
    """(onset position, pitch, end position, velocity) of the decoded notes: pitches in
    range, onsets and durations to the grid (1..max_duration), velocity to its bin, one note
    per position and pitch (the shortest, then the softest)."""
    kept: dict[tuple[int, int], tuple[int, int]] = {}
    for n in score.notes:
        if rep.low <= n.pitch <= rep.high:
            key = (quantize(n.onset, rep.grid), n.pitch)
            dur = min(max(quantize(n.duration, rep.grid), 1), rep.n_durations)
            note = (dur, rep.velocities[rep.velocity_bin(n.velocity)])
            kept[key] = min(kept.get(key, note), note)
    return sorted((on, pitch, on + dur, vel) for (on, pitch), (dur, vel) in kept.items())


def decoded_notes(rep: Remi, tokens, time_signature=(4, 4)) -> list[tuple]:
    """Notes as the stream decoder yields them (on and off together), in positions."""
    dec, out, ppb = rep.stream_decoder(0.0, time_signature), [], rep.params.positions_per_beat
    for tok in tokens:
        events = dec.feed(tok)
        if events:
            on, off = events
            out.append((round(on.beat * ppb), on.pitch, round(off.beat * ppb), on.velocity))
    return sorted(out)


def names(rep: Remi, tokens) -> list[str]:
    return [rep.token_name(t) for t in tokens]


# ---- whole pieces ------------------------------------------------------------------------
def test_layout():
    rep = Remi()
    assert rep.vocab_size == 1 + 32 + 88 + 32 + 32
    assert names(rep, [0, 1, 32, 33, 120, 121, 152, 153, 184]) == [
        "Bar",
        "Position_0",
        "Position_31",
        "Pitch_21",
        "Pitch_108",
        "Velocity_3",
        "Velocity_127",
        "Duration_1",
        "Duration_32",
    ]
    with_tempos = Remi(tempos=True, tempo_bins=3, tempo_range=(60.0, 180.0))
    assert with_tempos.vocab_size == rep.vocab_size + 3
    assert names(with_tempos, [185, 187]) == ["Tempo_60", "Tempo_180"]


def test_bars_positions_and_note_order():
    rep = Remi()
    score = Score(
        tracks=[
            Track(
                notes=[
                    Note(0, 64, 1, 80),
                    Note(0, 60, 1.1, 40),
                    Note(9.5, 62, 0.01, 80),
                    Note(1, 10, 1, 80),
                ]
            ),
            Track(notes=[Note(0, 64, 0.5, 100), Note(0.52, 67, 20, 80)]),
        ]
    )
    assert names(rep, rep.encode(score)) == [
        "Bar",
        "Position_0",
        "Pitch_60",
        "Velocity_39",
        "Duration_4",
        "Pitch_64",
        "Velocity_99",
        "Duration_2",  # the shorter of the two
        "Position_2",
        "Pitch_67",
        "Velocity_79",
        "Duration_32",
        "Bar",
        "Bar",
        "Position_6",
        "Pitch_62",
        "Velocity_79",
        "Duration_1",
    ]


def test_bar_length_follows_the_first_time_signature():
    rep = Remi()
    notes = [Note(0, 60, 1, 80), Note(3, 62, 1, 80), Note(6.5, 64, 1, 80)]
    tokens = {
        sig: names(
            rep,
            rep.encode(
                Score(tracks=[Track(notes=notes)], time_signatures=[(0.0, *sig), (3.0, 4, 4)])
            ),
        )
        for sig in [(3, 4), (6, 8), (4, 4)]
    }
    assert (
        tokens[(3, 4)]
        == tokens[(6, 8)]
        == [
            "Bar",
            "Position_0",
            "Pitch_60",
            "Velocity_79",
            "Duration_4",
            "Bar",
            "Position_0",
            "Pitch_62",
            "Velocity_79",
            "Duration_4",
            "Bar",
            "Position_2",
            "Pitch_64",
            "Velocity_79",
            "Duration_4",
        ]
    )
    assert [t for t in tokens[(4, 4)] if not t.startswith(("P", "V", "D"))] == ["Bar", "Bar"]
    assert "Position_12" in tokens[(4, 4)] and "Position_10" in tokens[(4, 4)]


@pytest.mark.parametrize(
    "sig, remi", [((3, 8), Remi(positions_per_beat=1)), ((9, 4), Remi()), ((5, 0), Remi())]
)
def test_time_signature_that_does_not_fit(sig, remi):
    score = Score(tracks=[Track(notes=[Note(0, 60, 1, 80)])], time_signatures=[(0.0, *sig)])
    with pytest.raises(
        RepresentationError,
        match=r"time signature \(.*\) must give a bar of "
        r"a whole number of positions, 1\.\.",
    ):
        remi.encode(score)
    with pytest.raises(RepresentationError, match="time signature"):
        remi.stream_encoder(time_signature=sig)


@given(raw_scores())
def test_round_trip_up_to_the_grid(score):
    rep = Remi(pitch_range=(21, 108))
    sig = signature(score)
    tokens = rep.encode(score)
    assert decoded_notes(rep, tokens, sig) == expected(rep, score)
    decoded = rep.decode(tokens, time_signature=sig)  # pairs same-pitch notes first in first out
    assert len(decoded.notes) == len(expected(rep, score))
    assert decoded.time_signatures == [(0.0, *sig)]


@given(raw_scores(), st.sampled_from([(1, (18, 22), 4, 1), (12, (0, 127), 127, 2)]))
def test_round_trip_other_params(score, params):
    ppb, pitch_range, velocity_bins, max_duration = params
    rep = Remi(
        positions_per_beat=ppb,
        pitch_range=pitch_range,
        velocity_bins=velocity_bins,
        max_duration=max_duration,
    )
    sig = signature(score)
    assert decoded_notes(rep, rep.encode(score), sig) == expected(rep, score)


def test_decode_to_score():
    rep = Remi()
    score = Score.from_notes([Note(0.5, 60, 1.0, 80), Note(5.0, 64, 0.25, 81)])
    assert rep.decode(rep.encode(score), start=8.0).notes == [
        Note(8.5, 60, 1.0, 79),
        Note(13.0, 64, 0.25, 83),
    ]


def test_chorales_round_trip(chorales):
    rep = Remi()
    for score in chorales:
        sig = signature(score)
        assert decoded_notes(rep, rep.encode(score), sig) == expected(rep, score)


# ---- tempos ------------------------------------------------------------------------------
def test_tempo_tokens():
    rep = Remi(tempos=True, tempo_bins=5, tempo_range=(60.0, 140.0))  # 60, 80, 100, 120, 140
    score = Score(
        tracks=[Track(notes=[Note(1, 60, 1, 80), Note(4, 62, 1, 80)])],
        tempos=[(0.0, 100.0), (1.0, 101.0), (2.0, 79.0), (2.1, 131.0), (4.0, 60.0)],
    )
    assert names(rep, rep.encode(score)) == [
        "Bar",
        "Position_0",
        "Tempo_100",
        "Position_4",
        "Pitch_60",
        "Velocity_79",
        "Duration_4",  # 101 bpm: same bin, no token
        "Position_8",
        "Tempo_140",  # the last change on the position wins
        "Bar",
        "Position_0",
        "Tempo_60",
        "Pitch_62",
        "Velocity_79",
        "Duration_4",
    ]
    decoded = rep.decode(rep.encode(score))
    assert decoded.tempos == [(0.0, 100.0), (2.0, 140.0), (4.0, 60.0)]


def test_tempo_defaults_to_120_at_the_start():
    rep = Remi(tempos=True)
    score = Score(tracks=[Track(notes=[Note(0, 60, 1, 80)])], tempos=[(2.0, 90.0)])
    assert names(rep, rep.encode(score))[:3] == ["Bar", "Position_0", "Tempo_121.29"]
    assert names(rep, rep.encode(Score()))[:3] == ["Bar", "Position_0", "Tempo_121.29"]


@given(
    raw_scores(),
    st.lists(st.tuples(st.integers(0, 24 * TICKS), st.floats(30, 260)), max_size=6),
    st.data(),
)
def test_stream_equals_batch_with_tempos(score, changes, data):
    score.tempos = sorted({on / TICKS: bpm for on, bpm in changes}.items())
    rep = Remi(tempos=True)
    enc = rep.stream_encoder(signature(score))
    assert feed_with_advances(enc, score, data, tempos=True) == rep.encode(score)


def test_tempo_needs_tempos_on():
    with pytest.raises(RepresentationError, match="tempo\\(\\) needs params tempos=true"):
        Remi().stream_encoder().tempo(0.0, 100.0)


# ---- streaming ---------------------------------------------------------------------------
@given(raw_scores(), st.data())
def test_stream_equals_batch(score, data):
    rep = Remi()
    sig = signature(score)
    assert feed_score(rep.stream_encoder(sig), score) == rep.encode(score)
    assert feed_with_advances(rep.stream_encoder(sig), score, data) == rep.encode(score)


def test_stream_equals_batch_on_chorales(chorales):
    rep = Remi()
    for score in chorales:
        assert feed_score(rep.stream_encoder(signature(score)), score) == rep.encode(score)


def test_a_position_waits_for_earlier_notes_and_its_window():
    rep = Remi()
    enc = rep.stream_encoder()
    assert enc.note_on(0.0, 60, 80) == [] and enc.note_on(4.0, 64, 80) == []
    assert enc.note_off(4.5, 64) == []  # complete, but 60 (earlier) still sounds
    assert names(rep, enc.note_off(5.0, 60)) == [
        "Bar",
        "Position_0",
        "Pitch_60",
        "Velocity_79",
        "Duration_20",
        "Bar",
        "Position_0",
        "Pitch_64",
        "Velocity_79",
        "Duration_2",
    ]
    assert enc.note_on(6.0, 67, 80) == [] and enc.note_off(6.1, 67) == []
    assert enc.advance(6.125 - 1e-6) == []  # a chord tone could still land on beat 6
    assert names(rep, enc.advance(6.125)) == ["Position_8", "Pitch_67", "Velocity_79", "Duration_1"]
    assert enc.advance(20.0) == [] and enc.flush() == []  # no trailing bars


@pytest.mark.parametrize("later", [60, 64, 67])
def test_a_note_landing_on_a_finished_notes_position(later):
    rep = Remi()
    score = Score(tracks=[Track(notes=[Note(1.0, 64, 0.05, 80), Note(1.1, later, 1.0, 80)])])
    assert feed_score(rep.stream_encoder(), score) == rep.encode(score)


def test_stream_ignores_pitches_out_of_range():
    rep = Remi()
    enc = rep.stream_encoder()
    out = enc.note_on(0.0, 10, 80) + enc.note_off(1.0, 10) + enc.flush()
    assert out == [] == rep.encode(Score.from_notes([Note(0.0, 10, 1.0, 80)]))


def test_stream_rejects_time_going_back():
    enc = Remi().stream_encoder()
    enc.note_on(2.0, 60, 80)
    with pytest.raises(RepresentationError, match="received beat 1.0 after 2.0"):
        enc.note_off(1.0, 60)


def test_stream_decoder_position():
    rep = Remi()
    dec = rep.stream_decoder(start=1.0, time_signature=(3, 4))
    assert dec.position == 1.0
    dec.feed(rep.bar)
    dec.feed(rep.bar)
    assert dec.position == 4.0
    dec.feed(rep.position_offset + 5)
    assert dec.position == 5.25
    assert dec.flush() == []


# ---- grammar -----------------------------------------------------------------------------
@given(raw_scores(), st.booleans())
def test_encoder_output_is_allowed_by_the_grammar(score, tempos):
    rep = Remi(tempos=tempos)
    dec = rep.stream_decoder(0.0, signature(score))
    for tok in rep.encode(score):
        assert dec.allowed()[tok], rep.token_name(tok)
        dec.feed(tok)


@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([(4, 4), (3, 4), (5, 8)]))
def test_sampled_sequences_decode_and_reencode(seed, tempos, sig):
    rep = Remi(tempos=tempos, pitch_range=(60, 64), max_bar_beats=4, max_duration=2, tempo_bins=4)
    rng = np.random.default_rng(seed)
    dec, tokens, notes, complete = rep.stream_decoder(0.0, sig), [], [], 0
    for _ in range(120):
        tok = int(rng.choice(np.flatnonzero(dec.allowed())))
        events = dec.feed(tok)
        tokens.append(tok)
        if events:
            on, off = events
            notes.append(Note(on.beat, on.pitch, off.beat - on.beat, on.velocity))
        if rep.split(tok)[0] in ("Duration", "Tempo"):
            complete = len(tokens)
    tokens = tokens[:complete]  # a piece ends after a whole position
    score = Score(
        tracks=[Track(notes=notes)],
        time_signatures=[(0.0, *sig)],
        tempos=dec.tempos or [(0.0, 120.0)],
    )
    assert rep.encode(score) == tokens


def test_mask_rules():
    rep = Remi()
    dec = rep.stream_decoder()
    assert np.flatnonzero(dec.allowed()).tolist() == [rep.bar]
    dec.feed(rep.bar)
    mask = dec.allowed()
    assert mask[rep.bar] and mask[1:17].all() and mask.sum() == 17  # 16 positions in 4/4
    dec.feed(rep.position_offset + 3)
    assert np.flatnonzero(dec.allowed()).tolist() == list(range(33, 121))  # a pitch
    dec.feed(rep.pitch_offset + 60 - 21)
    assert dec.allowed()[rep.velocity_offset : rep.duration_offset].all()
    dec.feed(rep.velocity_offset)
    assert dec.allowed()[rep.duration_offset :].all() and dec.allowed().sum() == 32
    dec.feed(rep.duration_offset)
    mask = dec.allowed()
    assert mask[rep.bar] and not mask[1:5].any() and mask[5:17].all() and not mask[17:33].any()
    assert not mask[33 : 33 + 40].any() and mask[33 + 40 : 121].all()  # pitches above 60


def test_mask_with_tempos_starts_with_a_tempo():
    rep = Remi(tempos=True)
    dec = rep.stream_decoder()
    dec.feed(rep.bar)
    assert np.flatnonzero(dec.allowed()).tolist() == [rep.position_offset]
    dec.feed(rep.position_offset)
    assert np.flatnonzero(dec.allowed()).tolist() == list(range(rep.tempo_offset, rep.vocab_size))
    dec.feed(rep.tempo_offset + 4)
    mask = dec.allowed()
    assert mask[rep.bar] and mask[rep.pitch_offset] and not mask[rep.tempo_offset :].any()


def test_feed_refuses_what_the_mask_forbids():
    rep = Remi()
    dec = rep.stream_decoder()
    with pytest.raises(
        RepresentationError,
        match=r"token 1 \(Position_0\) cannot follow the "
        r"start at beat 0; allowed here: Bar",
    ):
        dec.feed(1)
    dec.feed(rep.bar)
    with pytest.raises(RepresentationError, match=r"Position_16.*allowed here: Bar, Position"):
        dec.feed(rep.position_offset + 16)  # past the end of a 4/4 bar
    with pytest.raises(RepresentationError, match=r"integer 0..184 \(received 185\)"):
        dec.feed(185)


# ---- params ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {},
        {
            "positions_per_beat": 12,
            "pitch_range": (0, 127),
            "tempos": True,
            "tempo_range": (50, 200.5),
        },
    ],
)
def test_params_json_round_trip(params):
    rep = Remi(**params)
    again = representations.from_dict(json.loads(rep.to_json()))
    assert again == rep and isinstance(again, Remi) and again.vocab_size == rep.vocab_size


@pytest.mark.parametrize(
    "params, message",
    [
        ({"positions_per_beat": 0}, "positions_per_beat must be an integer 1..96 (received 0)"),
        ({"max_bar_beats": 33}, "max_bar_beats must be an integer 1..32 (received 33)"),
        (
            {"pitch_range": (60, 59)},
            "pitch_range must be (lowest, highest) MIDI pitches with "
            "0 <= lowest <= highest <= 127 (received (60, 59))",
        ),
        ({"pitch_range": (0, 128)}, "(received (0, 128))"),
        ({"velocity_bins": 0}, "velocity_bins must be an integer 1..127 (received 0)"),
        ({"max_duration": 0}, "max_duration must be an integer 1..64 (received 0)"),
        ({"tempos": "yes"}, "tempos must be true or false (received 'yes')"),
        (
            {"tempo_range": (120, 60)},
            "tempo_range must be (slowest, fastest) bpm with "
            "0 < slowest < fastest <= 1000 (received (120, 60))",
        ),
        ({"tempo_bins": 0}, "tempo_bins must be an integer 1..256 (received 0)"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(RepresentationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Remi(**params)


def test_unknown_param_key():
    with pytest.raises(RepresentationError, match=r"unknown key\(s\) \['chords'\]"):
        representations.from_dict({"name": "remi", "params": {"chords": True}})
