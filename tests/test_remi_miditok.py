"""remi agrees token for token with MidiTok's REMI (the reference implementation).

MidiTok is configured to match ``Remi`` params: no chords, rests, tempos or programs; the
same pitch range, velocity bins, positions per beat and durations (``beat_res`` of
``max_duration`` beats at ``positions_per_beat``); duplicated notes removed; time
signatures on, so that 3/4 bars are 12 positions long, with its TimeSig tokens (which remi
does not have) dropped before comparing. All tracks are merged into one before MidiTok sees
them, since remi is one stream.

Compared: a fixed list of Bach chorales from music21's corpus (written to MIDI by music21)
and random off-grid scores written to MIDI. The chorales are those with one time signature
over a quarter-note beat; remi.py's docstring lists the intended differences that rule out
the others (x/8 and x/2 meters, where MidiTok's positions count the signature's beat, and
time-signature changes, which remi ignores). Each chorale asserts that it fits that rule.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midi_companion.representations.remi import Remi
from midi_companion.score import Note, Score, Track

miditok = pytest.importorskip("miditok")
symusic = pytest.importorskip("symusic")

CHORALES = (
    "bwv1.6",
    "bwv10.7",
    "bwv101.7",
    "bwv102.7",
    "bwv103.6",
    "bwv104.6",
    "bwv112.5-sc",
    "bwv161.6",
    "bwv185.6",  # 32nd notes: onsets half-way between positions
    "bwv11.6",
    "bwv122.6",
    "bwv137.5",  # 3/4
)
TICKS = 120  # strategy time unit: 1/120 beat, so position halves (1/8 beat) occur


def tokenizer(rep: Remi):
    """A MidiTok REMI configured like `rep`."""
    p = rep.params
    config = miditok.TokenizerConfig(
        pitch_range=p.pitch_range,  # both ends included, as in remi
        beat_res={(0, p.max_duration): p.positions_per_beat},
        num_velocities=p.velocity_bins,
        use_velocities=True,
        use_chords=False,
        use_rests=False,
        use_tempos=False,
        use_time_signatures=True,
        use_programs=False,
        remove_duplicated_notes=True,
    )
    return miditok.REMI(config)


def miditok_tokens(tok, path) -> list[str]:
    """MidiTok's tokens for a MIDI file with all its tracks merged, TimeSig tokens dropped."""
    score = symusic.Score(str(path))
    merged = symusic.Track(program=0)
    for track in score.tracks:
        for note in track.notes:
            merged.notes.append(note)
    while len(score.tracks):
        del score.tracks[0]
    score.tracks.append(merged)
    seqs = tok.encode(score)
    seq = seqs[0] if isinstance(seqs, list) else seqs
    return [t for t in seq.tokens if not t.startswith("TimeSig_")]


def remi_names(rep: Remi, tokens) -> list[str]:
    """remi tokens under MidiTok's names."""
    ppb = rep.params.positions_per_beat
    out = []
    for t in tokens:
        kind, value = rep.split(t)
        if kind == "Bar":
            out.append("Bar_None")
        elif kind == "Velocity":
            out.append(f"Velocity_{rep.velocities[value]}")
        elif kind == "Duration":
            out.append(f"Duration_{value // ppb}.{value % ppb}.{ppb}")
        else:
            out.append(f"{kind}_{value}")
    return out


def chorale_midi(config, name: str):
    """A Bach chorale from music21's corpus, written to MIDI once (in pytest's cache)."""
    pytest.importorskip("music21")
    folder = config.cache.mkdir("bach-chorales-midi")
    path = folder / f"{name}.mid"
    if not path.exists():
        from music21 import corpus

        tmp = folder / f"{name}.{os.getpid()}.tmp"
        corpus.parse(f"bach/{name}").write("midi", fp=str(tmp))
        tmp.replace(path)
    return path


@pytest.fixture(scope="module")
def default_pair():
    rep = Remi()
    return rep, tokenizer(rep)


@pytest.mark.parametrize("name", CHORALES)
def test_chorale_matches_miditok(request, default_pair, name):
    rep, tok = default_pair
    path = chorale_midi(request.config, name)
    score = Score.from_midi(path)
    signatures = {(num, den) for _, num, den in score.time_signatures}
    assert len(signatures) == 1 and score.time_signatures[0][2] == 4, (
        f"{name} is outside the comparison (time signatures {signatures})"
    )
    mine = remi_names(rep, rep.encode(score))
    assert len(mine) > 500
    assert mine == miditok_tokens(tok, path)


@st.composite
def midi_scores(draw) -> Score:
    """Off-grid notes on 1-3 tracks; same-pitch notes collide across tracks only (within a
    track, MIDI pairing of overlapping same-pitch notes is a reader's choice); some pitches
    outside the range (20, 24) used with them; velocities 1..127; 4/4, 3/4 or 2/4."""
    note = st.tuples(
        st.integers(0, 24 * TICKS),
        st.integers(1, 10 * TICKS),
        st.integers(18, 26),
        st.integers(1, 127),
    )
    tracks = []
    for i in range(draw(st.integers(1, 3))):
        notes, busy = [], {}
        for on, length, pitch, vel in sorted(draw(st.lists(note, max_size=15))):
            if on > busy.get(pitch, -1):
                busy[pitch] = on + length
                notes.append(Note(on / TICKS, pitch, length / TICKS, vel))
        tracks.append(Track(name=f"part {i}", notes=notes))
    anchor = draw(st.tuples(st.integers(0, 24 * TICKS), st.integers(20, 24)))
    tracks.append(Track(name="anchor", notes=[Note(anchor[0] / TICKS, anchor[1], 1.0, 80)]))
    sig = draw(st.sampled_from([(4, 4), (3, 4), (2, 4)]))
    return Score(tracks=tracks, time_signatures=[(0.0, *sig)])


@given(midi_scores(), st.sampled_from([(4, 8), (2, 2), (8, 4)]))
def test_random_scores_match_miditok(tmp_path_factory, score, params):
    ppb, max_duration = params
    rep = Remi(pitch_range=(20, 24), positions_per_beat=ppb, max_duration=max_duration)
    path = tmp_path_factory.mktemp("remi") / "piece.mid"
    score.to_midi(path)
    assert remi_names(rep, rep.encode(Score.from_midi(path))) == miditok_tokens(
        tokenizer(rep), path
    )
