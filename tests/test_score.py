"""Score: MIDI file round trips (hand-made cases and a property), type-0 files, files that
cannot be read, values that cannot be written."""

from __future__ import annotations

import os
from collections import defaultdict

import mido
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from midi_companion.errors import MidiFileError
from midi_companion.score import (
    DRUM_CHANNEL,
    TICKS_PER_BEAT,
    Note,
    Score,
    Track,
    _bpm,
    assign_channels,
)

TPB = TICKS_PER_BEAT


def round_trip(score: Score, tmp_path) -> Score:
    path = tmp_path / "round.mid"
    score.to_midi(path)
    return Score.from_midi(path)


def test_multitrack_programs_drums_tempo_map_and_meters(tmp_path):
    score = Score(
        tracks=[
            Track("piano", 0, False, [Note(0.0, 60, 1.0, 90), Note(0.5, 64, 1.5, 70)]),
            Track("bass", 33, False, [Note(0.0, 36, 4.0, 100)]),
            Track("kit", 0, True, [Note(0.0, 36, 0.25, 120), Note(1.0, 38, 0.25, 110)]),
            Track("strings", 48, False, [Note(2.0, 72, 2.0, 64)]),
        ],
        tempos=[(0.0, 100.0), (4.0, 150.0), (6.5, 75.0)],
        time_signatures=[(0.0, 4, 4), (8.0, 6, 8), (11.0, 3, 4)],
    )
    back = round_trip(score, tmp_path)
    assert [t.name for t in back.tracks] == ["piano", "bass", "kit", "strings"]
    assert [t.program for t in back.tracks] == [0, 33, 0, 48]
    assert [t.is_drum for t in back.tracks] == [False, False, True, False]
    assert [t.channel for t in back.tracks] == [0, 1, DRUM_CHANNEL, 2]
    assert [t.notes for t in back.tracks] == [t.notes for t in score.tracks]
    assert back.tempos == score.tempos  # these bpm are whole microseconds per beat
    assert back.time_signatures == score.time_signatures
    assert back.bpm == pytest.approx(100.0) and back.beats_per_bar == 4.0


def test_drums_are_written_on_channel_10(tmp_path):
    score = Score(tracks=[Track("a"), Track("kit", is_drum=True), Track("b")])
    assert assign_channels(score.tracks) == [0, DRUM_CHANNEL, 1]
    many = [Track(str(i)) for i in range(12)]
    assert DRUM_CHANNEL not in assign_channels(many)


def test_overlapping_same_pitch_notes_are_matched_first_on_first_off(tmp_path):
    staggered = [Note(0.0, 60, 2.0, 90), Note(1.0, 60, 2.0, 50), Note(3.0, 60, 1.0, 70)]
    back = round_trip(Score.from_notes(staggered), tmp_path)
    assert back.tracks[0].notes == staggered
    # A note nested in a longer one: MIDI cannot tell the two offs apart; onsets, ends and
    # velocities survive, paired first on, first off.
    nested = [Note(0.0, 60, 3.0, 90), Note(1.0, 60, 1.0, 50)]
    back = round_trip(Score.from_notes(nested), tmp_path)
    assert back.tracks[0].notes == [Note(0.0, 60, 2.0, 90), Note(1.0, 60, 2.0, 50)]


def test_repeated_note_touching_the_next_is_two_notes(tmp_path):
    notes = [Note(0.0, 60, 1.0, 80), Note(1.0, 60, 1.0, 80)]
    assert round_trip(Score.from_notes(notes), tmp_path).tracks[0].notes == notes


def test_type0_file_with_several_channels_becomes_one_track_per_channel(tmp_path):
    mid = mido.MidiFile(type=0, ticks_per_beat=96)
    mid.tracks.append(
        mido.MidiTrack(
            [
                mido.MetaMessage("track_name", name="song"),
                mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90)),
                mido.Message("program_change", channel=0, program=5),
                mido.Message("program_change", channel=3, program=40),
                mido.Message("note_on", channel=0, note=60, velocity=100),
                mido.Message("note_on", channel=3, note=67, velocity=60),
                mido.Message("note_on", channel=DRUM_CHANNEL, note=42, velocity=90),
                mido.Message("note_off", channel=0, note=60, velocity=0, time=96),
                mido.Message("note_on", channel=3, note=67, velocity=0),  # off as velocity 0
                mido.Message("note_off", channel=DRUM_CHANNEL, note=42, time=48),
            ]
        )
    )
    path = tmp_path / "type0.mid"
    mid.save(path)
    score = Score.from_midi(path)
    assert [(t.name, t.channel, t.program, t.is_drum) for t in score.tracks] == [
        ("song ch 1", 0, 5, False),
        ("song ch 4", 3, 40, False),
        ("song ch 10", DRUM_CHANNEL, 0, True),
    ]
    assert [t.notes for t in score.tracks] == [
        [Note(0.0, 60, 1.0, 100)],
        [Note(0.0, 67, 1.0, 60)],
        [Note(0.0, 42, 1.5, 90)],
    ]
    assert score.tempos == [(0.0, 90.0)]


def test_programs_set_in_the_first_track_apply_to_later_tracks(tmp_path):
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    mid.tracks.append(mido.MidiTrack([mido.Message("program_change", channel=2, program=24)]))
    mid.tracks.append(
        mido.MidiTrack(
            [
                mido.Message("note_on", channel=2, note=64, velocity=80),
                mido.Message("note_off", channel=2, note=64, time=TPB),
            ]
        )
    )
    mid.save(tmp_path / "p.mid")
    [track] = Score.from_midi(tmp_path / "p.mid").tracks
    assert (track.program, track.channel, track.name) == (24, 2, "track 1 ch 3")


def test_unreleased_notes_end_with_their_track_and_late_meters_get_4_4_before(tmp_path):
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    mid.tracks.append(
        mido.MidiTrack(
            [
                mido.MetaMessage("time_signature", numerator=3, denominator=4, time=4 * TPB),
                mido.MetaMessage("set_tempo", tempo=0),  # nonsense: ignored
            ]
        )
    )
    mid.tracks.append(
        mido.MidiTrack(
            [
                mido.Message("note_on", note=60, velocity=80),
                mido.Message("note_on", note=62, velocity=80, time=2 * TPB),
            ]
        )
    )
    mid.save(tmp_path / "open.mid")
    score = Score.from_midi(tmp_path / "open.mid")
    assert score.tracks[0].notes == [Note(0.0, 60, 2.0, 80), Note(2.0, 62, 1 / TPB, 80)]
    assert score.time_signatures == [(0.0, 4, 4), (4.0, 3, 4)]
    assert score.tempos == [(0.0, 120.0)]


def test_empty_score_round_trips_to_no_tracks(tmp_path):
    back = round_trip(Score(), tmp_path)
    assert back.tracks == [] and back.end == 0.0 and back.tempos == [(0.0, 120.0)]


def test_names_outside_latin1_are_written_with_question_marks(tmp_path):
    score = Score(tracks=[Track("Sopran ♭ü", notes=[Note(0.0, 60, 1.0)])])
    assert round_trip(score, tmp_path).tracks[0].name == "Sopran ?ü"


def test_transposed_leaves_drums_and_copies_the_maps():
    score = Score(
        tracks=[
            Track("a", notes=[Note(0.0, 60, 1.0), Note(1.0, 125, 1.0)]),
            Track("d", is_drum=True, notes=[Note(0.0, 36, 1.0)]),
        ]
    )
    up = score.transposed(5)
    assert up.tracks[0].notes == [Note(0.0, 65, 1.0)]
    assert up.tracks[1].notes == [Note(0.0, 36, 1.0)]
    up.tempos.append((4.0, 90.0))
    assert score.tempos == [(0.0, 120.0)]


# ---- property: any Score on the tick grid survives a round trip ---------------------------

names = st.text(st.characters(min_codepoint=32, max_codepoint=255), min_size=1, max_size=12)
names = names.filter(lambda s: s.strip() == s)
notes = st.lists(
    st.builds(
        lambda on, pitch, dur, vel: Note(on / TPB, pitch, dur / TPB, vel),
        st.integers(0, 16 * TPB),
        st.integers(0, 127),
        st.integers(1, 4 * TPB),
        st.integers(1, 127),
    ),
    max_size=20,
)
tracks = st.builds(
    lambda name, program, drum, ns: Track(name, program, drum, ns),
    names,
    st.integers(0, 127),
    st.booleans(),
    notes,
)
tempo_maps = st.lists(
    st.tuples(st.integers(1, 32 * TPB), st.integers(30, 300)), max_size=3, unique_by=lambda t: t[0]
).map(lambda ts: [(0.0, 120.0)] + sorted((t / TPB, float(b)) for t, b in ts))
meters = st.lists(
    st.tuples(st.integers(1, 8), st.integers(1, 12), st.sampled_from([2, 4, 8, 16])),
    max_size=3,
    unique_by=lambda t: t[0],
).map(lambda ms: [(0.0, 4, 4)] + sorted((4.0 * bar, n, d) for bar, n, d in ms))
scores = st.builds(
    lambda ts, tempos, sigs: Score(tracks=ts, tempos=tempos, time_signatures=sigs),
    st.lists(tracks, max_size=5),
    tempo_maps,
    meters,
)


def fifo(notes: list[Note]) -> list[Note]:
    """What a MIDI file keeps of one channel's notes: per pitch, the i-th onset (in writing
    order) with the i-th end."""
    by_pitch: dict[int, list[Note]] = defaultdict(list)
    for n in sorted(notes, key=lambda n: n.onset):  # stable: writing order within a tick
        by_pitch[n.pitch].append(n)
    out = []
    for pitch, group in by_pitch.items():
        ends = sorted(round(n.end * TPB) for n in group)
        for n, end in zip(group, ends):
            on = round(n.onset * TPB)
            out.append(Note(on / TPB, pitch, (end - on) / TPB, n.velocity))
    return sorted(out)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scores)
def test_round_trip_property(tmp_path, score):
    back = round_trip(score, tmp_path)
    kept = [t for t in score.tracks if t.notes]
    channels = [c for t, c in zip(score.tracks, assign_channels(score.tracks)) if t.notes]
    assert [t.name for t in back.tracks] == [t.name for t in kept]
    assert [t.program for t in back.tracks] == [t.program for t in kept]
    assert [t.channel for t in back.tracks] == channels
    assert [t.is_drum for t in back.tracks] == [c == DRUM_CHANNEL for c in channels]
    assert [t.notes for t in back.tracks] == [fifo(t.notes) for t in kept]
    assert [b for b, _ in back.tempos] == [b for b, _ in score.tempos]
    assert [bpm for _, bpm in back.tempos] == pytest.approx([bpm for _, bpm in score.tempos])
    assert back.time_signatures == score.time_signatures


@given(st.integers(1, 0xFFFFFF))
def test_tempo_reads_as_a_bpm_that_writes_back_the_same(tempo):
    assert mido.bpm2tempo(_bpm(tempo)) == tempo


# ---- files that cannot be read --------------------------------------------------------------


def good_bytes(tmp_path) -> bytes:
    score = Score(tracks=[Track("a", notes=[Note(0.0, 60, 1.0), Note(1.0, 62, 0.5)])])
    score.to_midi(tmp_path / "good.mid")
    return (tmp_path / "good.mid").read_bytes()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"MThd\x00\x00\x00\x06\x00", id="truncated-header"),
        pytest.param(b"a text file\nwith lines\n", id="text"),
        pytest.param(os.urandom(300), id="random-bytes"),
        pytest.param(
            b"MThd\x00\x00\x00\x06\x00\x02\x00\x01\x01\xe0MTrk\x00\x00\x00\x00", id="type2"
        ),
        pytest.param(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\xe7\x28", id="smpte"),
    ],
)
def test_unreadable_file_names_the_file(tmp_path, content):
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(MidiFileError, match="bad.mid"):
        Score.from_midi(path)


def test_truncated_file_names_the_file(tmp_path):
    data = good_bytes(tmp_path)
    (tmp_path / "cut.mid").write_bytes(data[: len(data) - 9])
    with pytest.raises(MidiFileError, match="cut.mid"):
        Score.from_midi(tmp_path / "cut.mid")


def test_missing_file_and_folder_name_themselves(tmp_path):
    with pytest.raises(MidiFileError, match="nothere.mid: no such file"):
        Score.from_midi(tmp_path / "nothere.mid")
    with pytest.raises(MidiFileError, match="is a folder"):
        Score.from_midi(tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(st.data())
def test_damaged_bytes_give_midifileerror_or_a_score(tmp_path, data):
    raw = bytearray(good_bytes(tmp_path))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "damaged.mid"
    path.write_bytes(bytes(raw))
    try:
        assert isinstance(Score.from_midi(path), Score)
    except MidiFileError as err:
        assert "damaged.mid" in str(err)


# ---- values that cannot be written -----------------------------------------------------------


@pytest.mark.parametrize(
    "score, what",
    [
        (Score.from_notes([Note(0.0, 128, 1.0)]), "a note"),
        (Score.from_notes([Note(0.0, 60, 1.0, 0)]), "a note"),
        (Score.from_notes([Note(-1.0, 60, 1.0)]), "a note"),
        (Score.from_notes([Note(float("inf"), 60, 1.0)]), "a note"),
        (Score(tempos=[(0.0, 0.0)]), "a tempo"),
        (Score(time_signatures=[(0.0, 3, 3)]), "a time signature"),
        (Score(tracks=[Track("x", program=200)]), "program"),
    ],
)
def test_unwritable_values_name_the_file_and_the_value(tmp_path, score, what):
    with pytest.raises(MidiFileError, match=f"out.mid: .*{what}.*received"):
        score.to_midi(tmp_path / "out.mid")


def test_unwritable_path_names_the_file(tmp_path):
    with pytest.raises(MidiFileError, match="cannot write"):
        Score().to_midi(tmp_path / "no" / "such" / "folder.mid")
