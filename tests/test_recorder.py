"""The recording: a valid Standard MIDI File after every flush, one track per source and
channel, every message at its beat; only messages of the music are kept."""

import mido
import pytest

from midi_companion.recorder import Recorder
from midi_companion.score import TICKS_PER_BEAT, Score


def _notes(mid: mido.MidiFile) -> dict[str, list[tuple[int, str, int, int]]]:
    """Track name -> [(absolute tick, type, channel, note or program)]."""
    out = {}
    for track in mid.tracks[1:]:
        tick, items = 0, []
        for m in track:
            tick += m.time
            if not m.is_meta:
                what = getattr(m, "note", getattr(m, "program", -1))
                items.append((tick, m.type, m.channel, what))
        out[track.name] = items
    return out


def test_flushes_write_every_message_at_its_beat_on_its_track(tmp_path):
    path = tmp_path / "take.mid"
    rec = Recorder(path, 100.0, names={1: "alto"})
    rec.player(0.0, (0x90, 60, 90))
    rec.companion(0.5, (0xC1, 52))
    rec.companion(0.5, (0x91, 55, 70))
    rec.player(1.0, (0x80, 60, 0))
    rec.flush()
    first = mido.MidiFile(path)
    assert first.ticks_per_beat == TICKS_PER_BEAT
    assert [m.tempo for m in first.tracks[0] if m.type == "set_tempo"] == [mido.bpm2tempo(100)]
    assert _notes(first) == {
        "player": [(0, "note_on", 0, 60), (TICKS_PER_BEAT, "note_off", 0, 60)],
        "alto": [
            (TICKS_PER_BEAT // 2, "program_change", 1, 52),
            (TICKS_PER_BEAT // 2, "note_on", 1, 55),
        ],
    }
    # what comes after lands after what was written, in a file that is whole again
    rec.companion(2.25, (0x81, 55, 0))
    rec.player(2.0, (0x90, 62, 80))
    rec.player(3.0, (0x80, 62, 0))
    rec.flush()
    notes = _notes(mido.MidiFile(path))
    assert notes["alto"][-1] == (int(2.25 * TICKS_PER_BEAT), "note_off", 1, 55)
    assert notes["player"][2:] == [
        (2 * TICKS_PER_BEAT, "note_on", 0, 62),
        (3 * TICKS_PER_BEAT, "note_off", 0, 62),
    ]
    score = Score.from_midi(path)  # our own reader takes it too
    assert sorted(n.pitch for t in score.tracks for n in t.notes) == [55, 60, 62]


def test_keeps_only_the_music_and_never_goes_back_in_time(tmp_path):
    path = tmp_path / "take.mid"
    rec = Recorder(path, 120.0)
    rec.player(1.0, (0xF8,))  # clock
    rec.player(1.0, (0xF0, 1, 2, 0xF7))  # sysex
    rec.player(1.0, (0x90, 60))  # malformed: a note-on needs two data bytes
    rec.player(1.0, (0xB0, 64, 127))  # sustain pedal: kept
    rec.player(2.0, (0x90, 64, 90))
    rec.flush()
    rec.player(1.5, (0x80, 64, 0))  # a clock that jumped back: at the last tick, not before
    rec.flush()
    assert _notes(mido.MidiFile(path))["player"] == [
        (TICKS_PER_BEAT, "control_change", 0, -1),
        (2 * TICKS_PER_BEAT, "note_on", 0, 64),
        (2 * TICKS_PER_BEAT, "note_off", 0, 64),
    ]


def test_a_flush_with_nothing_new_leaves_the_file_alone(tmp_path):
    path = tmp_path / "take.mid"
    rec = Recorder(path, 120.0)
    rec.flush()
    assert not path.exists()
    rec.player(0.0, (0x90, 60, 90))
    rec.flush()
    stamp = path.stat().st_mtime_ns
    rec.flush()
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("delta", [0, 127, 128, 16383, 16384, 2**21 + 5])
def test_long_gaps_are_encoded_as_smf_variable_length_quantities(tmp_path, delta):
    path = tmp_path / "take.mid"
    rec = Recorder(path, 120.0)
    rec.player(0.0, (0x90, 60, 90))
    rec.player(delta / TICKS_PER_BEAT, (0x80, 60, 0))
    rec.flush()
    assert _notes(mido.MidiFile(path))["player"][1][0] == delta


def test_a_path_that_cannot_be_written_is_refused_before_anything_is_played(tmp_path):
    from midi_companion.errors import MidiFileError

    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "missing" / "take.mid", tmp_path / "afile" / "take.mid", tmp_path):
        with pytest.raises(MidiFileError, match="--record"):
            Recorder(bad, 120.0)
    assert not (tmp_path / "missing").exists()


def test_a_failed_write_keeps_everything_and_the_next_flush_writes_it(tmp_path):
    import io

    from midi_companion.errors import MidiFileError

    folder = tmp_path / "takes"
    folder.mkdir()
    warned = io.StringIO()
    rec = Recorder(folder / "take.mid", 120.0, warn=warned)
    rec.player(0.0, (0x90, 60, 90))
    folder.rmdir()  # the drive goes away mid-session: every write fails
    for beat, msg in ((1.0, (0x80, 60, 0)), (2.0, (0x90, 62, 90))):
        rec.player(beat, msg)
        rec.flush_in_background()
        rec._writer.join()
    assert isinstance(rec.failed, MidiFileError)
    assert warned.getvalue().count("warning") == 1, warned.getvalue()
    with pytest.raises(MidiFileError, match="take.mid"):
        rec.flush()  # the final flush tells
    folder.mkdir()  # it is back: everything played is written
    rec.flush()
    notes = _notes(mido.MidiFile(folder / "take.mid"))["player"]
    assert notes == [
        (0, "note_on", 0, 60),
        (TICKS_PER_BEAT, "note_off", 0, 60),
        (2 * TICKS_PER_BEAT, "note_on", 0, 62),
    ]


def test_pitch_bend_and_aftertouch_are_part_of_the_take(tmp_path):
    path = tmp_path / "take.mid"
    rec = Recorder(path, 120.0)
    rec.player(0.0, (0x90, 60, 90))
    rec.player(0.25, (0xE0, 0x00, 0x50))  # bend up
    rec.player(0.5, (0xD0, 70))  # channel pressure
    rec.player(0.75, (0xA0, 60, 40))  # poly aftertouch
    rec.player(1.0, (0x80, 60, 0))
    rec.flush()
    msgs = [m for m in mido.MidiFile(path).tracks[1] if not m.is_meta]
    assert [m.type for m in msgs] == [
        "note_on",
        "pitchwheel",
        "aftertouch",
        "polytouch",
        "note_off",
    ]
    assert msgs[1].pitch == (0x50 << 7) - 8192
