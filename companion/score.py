"""Score: a small, torch-free container of notes in beats, read from and written to MIDI files.

A Score is what every representation encodes and decodes, what the corpora cache, and what
the offline commands read and write. Times are in beats (quarter notes), so tempo is a
property of playback, not of the music.
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import mido

from midi_companion.errors import MidiFileError
from midi_companion.outfiles import write_atomic

DRUM_CHANNEL = 9
DEFAULT_BPM = 120.0
TICKS_PER_BEAT = 480
_DENOMINATORS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True, order=True)
class Note:
    """One note: onset and duration in beats, MIDI pitch 0..127, velocity 1..127."""

    onset: float
    pitch: int
    duration: float
    velocity: int = 80

    @property
    def end(self) -> float:
        return self.onset + self.duration


@dataclass
class Track:
    """One part: a name, a General MIDI program (0..127), a drum flag, its notes."""

    name: str = ""
    program: int = 0
    is_drum: bool = False
    notes: list[Note] = field(default_factory=list)
    channel: int | None = None  # preferred MIDI channel when written; None = assign

    def sorted_notes(self) -> list[Note]:
        return sorted(self.notes)


@dataclass
class Score:
    """Tracks of notes plus a tempo map [(beat, bpm)] and time signatures [(beat, num, den)]."""

    tracks: list[Track] = field(default_factory=list)
    tempos: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, DEFAULT_BPM)])
    time_signatures: list[tuple[float, int, int]] = field(default_factory=lambda: [(0.0, 4, 4)])

    # ---- convenience -------------------------------------------------------------------
    @classmethod
    def from_notes(cls, notes, *, name: str = "lead", program: int = 0, bpm: float = DEFAULT_BPM):
        """A one-track score from an iterable of Note."""
        return cls(
            tracks=[Track(name=name, program=program, notes=list(notes))],
            tempos=[(0.0, float(bpm))],
        )

    @property
    def notes(self) -> list[Note]:
        """All notes of all tracks, sorted by onset then pitch."""
        return sorted(n for t in self.tracks for n in t.notes)

    @property
    def end(self) -> float:
        return max((n.end for t in self.tracks for n in t.notes), default=0.0)

    @property
    def bpm(self) -> float:
        return self.tempos[0][1] if self.tempos else DEFAULT_BPM

    @property
    def beats_per_bar(self) -> float:
        """Length of a bar in beats under the first time signature (4/4 -> 4, 6/8 -> 3)."""
        _, num, den = self.time_signatures[0] if self.time_signatures else (0.0, 4, 4)
        return num * 4.0 / den

    def transposed(self, semitones: int) -> Score:
        """A copy shifted by `semitones`; drum tracks are left alone; notes that would leave
        0..127 are dropped."""
        tracks = []
        for t in self.tracks:
            if t.is_drum or semitones == 0:
                notes = list(t.notes)
            else:
                notes = [
                    replace(n, pitch=n.pitch + semitones)
                    for n in t.notes
                    if 0 <= n.pitch + semitones <= 127
                ]
            tracks.append(replace(t, notes=notes))
        return replace(
            self,
            tracks=tracks,
            tempos=list(self.tempos),
            time_signatures=list(self.time_signatures),
        )

    # ---- MIDI files --------------------------------------------------------------------
    @classmethod
    def from_midi(cls, path: str | os.PathLike) -> Score:
        """Read a Standard MIDI File; raise MidiFileError naming the file when it cannot."""
        path = Path(path)
        if not path.exists():
            raise MidiFileError(f"{path}: no such file")
        if path.is_dir():
            raise MidiFileError(f"{path}: is a folder (expected a .mid file)")
        try:
            mid = mido.MidiFile(path, clip=True)
        except Exception as err:
            # mido's parser raises many kinds on damaged bytes (OSError, EOFError, ValueError,
            # KeySignatureError, ...); all mean the same thing to the caller.
            if path.stat().st_size == 0:
                why = "the file is empty"
            elif isinstance(err, EOFError):
                why = "it ends in the middle of a chunk: truncated"
            else:
                why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            raise MidiFileError(f"{path}: not a readable Standard MIDI File ({why})") from err
        if mid.type == 2:
            raise MidiFileError(
                f"{path}: MIDI file type 2 (sequential songs) is not supported "
                f"(expected type 0 or 1)"
            )
        return cls.from_mido(mid, source=str(path))

    @classmethod
    def from_mido(cls, mid: mido.MidiFile, source: str = "<midi>") -> Score:
        """A Score from a parsed file: one Track per (MIDI track, channel) that has notes, so a
        type-0 file's channels become separate tracks. Same-pitch notes on one channel are
        matched first on, first off."""
        tpb = mid.ticks_per_beat
        if tpb < 0:  # the header's sign bit marks SMPTE frames instead of ticks per beat
            raise MidiFileError(
                f"{source}: SMPTE time division is not supported "
                f"(expected ticks per beat; received {tpb})"
            )
        if tpb == 0:
            raise MidiFileError(f"{source}: ticks per beat must be > 0 (received 0)")
        tempos: dict[int, float] = {}
        sigs: dict[int, tuple[int, int]] = {}
        programs: dict[int, int] = {}
        tracks: list[Track] = []
        for ti, mtrack in enumerate(mid.tracks):
            tracks.extend(_read_track(mtrack, ti, tpb, tempos, sigs, programs))
        score = cls(tracks=tracks)
        if tempos:
            score.tempos = [(t / tpb, bpm) for t, bpm in sorted(tempos.items())]
            if score.tempos[0][0] > 0:
                score.tempos.insert(0, (0.0, DEFAULT_BPM))
        if sigs:
            score.time_signatures = [(t / tpb, n, d) for t, (n, d) in sorted(sigs.items())]
            if score.time_signatures[0][0] > 0:  # MIDI's default before the first one
                score.time_signatures.insert(0, (0.0, 4, 4))
        return score

    def to_midi(self, path: str | os.PathLike, ticks_per_beat: int = TICKS_PER_BEAT) -> None:
        """Write a type-1 Standard MIDI File: a conductor track, then one track per part.

        Times are rounded to the tick; a note shorter than a tick lasts one. Reading it back
        gives the same Score, except that: tracks without notes are left out; each track gets
        the channel it was written on; names are latin-1 ('?' for other characters) without
        surrounding spaces, an empty one read back as "track N ch C"; and same-pitch notes
        overlapping on one track are matched first on, first off (MIDI cannot say which note
        an off ends), so a note nested inside a longer one of its pitch swaps ends with it."""
        mid = self.to_mido(ticks_per_beat, source=str(path))
        buf = io.BytesIO()
        mid.save(file=buf)
        write_atomic(path, buf.getvalue())

    def to_mido(
        self, ticks_per_beat: int = TICKS_PER_BEAT, *, source: str = "<midi>"
    ) -> mido.MidiFile:
        """The type-1 mido.MidiFile that to_midi writes; MidiFileError naming `source` when a
        value does not fit MIDI."""
        _check_writable(self, ticks_per_beat, source)
        mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
        conductor = _conductor_events(self, ticks_per_beat)
        mid.tracks.append(_to_delta(conductor))
        for track, channel in zip(self.tracks, assign_channels(self.tracks)):
            mid.tracks.append(_to_delta(_track_events(track, channel, ticks_per_beat)))
        return mid


def _conductor_events(score: Score, tpb: int) -> list:
    events = [(0, 0, mido.MetaMessage("track_name", name="tempo"))]
    for beat, bpm in score.tempos:
        msg = mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))
        events.append((round(beat * tpb), 1, msg))
    for beat, num, den in score.time_signatures:
        msg = mido.MetaMessage("time_signature", numerator=num, denominator=den)
        events.append((round(beat * tpb), 1, msg))
    return events


def _track_events(track: Track, channel: int, tpb: int) -> list:
    # Track names are latin-1 in MIDI files (mido's default); other characters become '?'.
    name = track.name.encode("latin-1", "replace").decode("latin-1")
    events = [
        (0, 0, mido.MetaMessage("track_name", name=name)),
        (0, 1, mido.Message("program_change", channel=channel, program=track.program)),
    ]
    for n in track.notes:
        on = round(n.onset * tpb)
        off = max(round(n.end * tpb), on + 1)
        events.append(
            (on, 3, mido.Message("note_on", channel=channel, note=n.pitch, velocity=n.velocity))
        )
        # Offs before ons at the same tick, so a repeated note re-articulates.
        events.append((off, 2, mido.Message("note_off", channel=channel, note=n.pitch, velocity=0)))
    return events


def _check_writable(score: Score, tpb: int, source: str) -> None:
    """Raise MidiFileError naming the first value a MIDI file cannot hold."""

    def bad(what: str, received, expected: str) -> MidiFileError:
        return MidiFileError(f"{source}: {what} must be {expected} (received {received!r})")

    if not 1 <= tpb <= 0x7FFF:
        raise bad("ticks per beat", tpb, "1..32767")
    for beat, bpm in score.tempos:
        if not (_beat_ok(beat) and 3.58 <= bpm <= 6e7):  # 1..2**24-1 microseconds per beat
            raise bad("a tempo (beat, bpm)", (beat, bpm), "beat >= 0 and bpm 3.58..6e7")
    for beat, num, den in score.time_signatures:
        if not (_beat_ok(beat) and 1 <= num <= 255 and den in _DENOMINATORS):
            raise bad(
                "a time signature (beat, num, den)",
                (beat, num, den),
                "beat >= 0, num 1..255, den a power of two up to 128",
            )
    for t in score.tracks:
        if not 0 <= t.program <= 127 or t.channel not in (None, *range(16)):
            raise bad(
                f"track {t.name!r}: program and channel",
                (t.program, t.channel),
                "0..127 and None or 0..15",
            )
        for n in t.notes:
            if not (
                0 <= n.pitch <= 127
                and 1 <= n.velocity <= 127
                and _beat_ok(n.onset)
                and _beat_ok(n.duration)
            ):
                raise bad(
                    f"track {t.name!r}: a note",
                    n,
                    "pitch 0..127, velocity 1..127, onset and duration finite and >= 0",
                )


def _beat_ok(beat: float) -> bool:
    return 0 <= beat < math.inf


def assign_channels(tracks: list[Track]) -> list[int]:
    """Each track's MIDI channel: its own if set (even for drums), else drums on 10 and the
    others in order, skipping 10 and the channels taken; past 15 tracks they share 16."""
    used = {t.channel for t in tracks if t.channel is not None}
    free = (c for c in range(16) if c != DRUM_CHANNEL and c not in used)
    out = []
    for t in tracks:
        if t.channel is not None:
            out.append(t.channel)
        elif t.is_drum:
            out.append(DRUM_CHANNEL)
        else:
            out.append(next(free, 15))
    return out


def _read_track(mtrack, index, tpb, tempos, sigs, programs) -> list[Track]:
    """The Tracks of one MIDI track (one per channel with notes). Tempos and time signatures
    go into the file-wide maps (keyed by tick). `programs` carries each channel's program
    from earlier tracks, for files whose first track sets the programs of all channels."""
    name, parts = "", {}
    open_notes: dict[tuple[int, int], deque] = defaultdict(deque)
    tick = 0
    for msg in mtrack:
        tick += msg.time
        kind = msg.type
        if kind == "note_on" and msg.velocity > 0:
            if msg.channel not in parts:  # the program sounding at the part's first note
                parts[msg.channel] = Track(
                    program=programs.get(msg.channel, 0),
                    is_drum=msg.channel == DRUM_CHANNEL,
                    channel=msg.channel,
                )
            open_notes[(msg.channel, msg.note)].append((tick, msg.velocity))
        elif kind in ("note_off", "note_on"):
            queue = open_notes.get((msg.channel, msg.note))
            if queue:
                on, velocity = queue.popleft()
                parts[msg.channel].notes.append(
                    Note(on / tpb, msg.note, (tick - on) / tpb, velocity)
                )
        elif kind == "program_change":
            programs[msg.channel] = msg.program
        elif kind == "track_name":
            name = msg.name.strip()
        elif kind == "set_tempo" and msg.tempo > 0:  # 0 us per beat is no tempo at all
            tempos[tick] = _bpm(msg.tempo)
        elif kind == "time_signature":
            sigs[tick] = (msg.numerator, msg.denominator)
    # Notes never released end with their track (a truncated take keeps its notes).
    for (channel, pitch), queue in open_notes.items():
        for on, velocity in queue:
            parts[channel].notes.append(Note(on / tpb, pitch, max(tick - on, 1) / tpb, velocity))
    return [_finish_part(parts[ch], name, index, len(parts)) for ch in sorted(parts)]


def _bpm(tempo: int) -> float:
    """The bpm of a tempo in microseconds per beat, with the fewest decimals that still
    write back as the same tempo: 666667 us reads as 90.0, not 89.999955."""
    exact = mido.tempo2bpm(tempo)
    for decimals in range(7):
        bpm = round(exact, decimals)
        if mido.bpm2tempo(bpm) == tempo:
            return bpm
    return exact


def _finish_part(track: Track, name: str, index: int, n_parts: int) -> Track:
    ch = track.channel + 1
    if not name:
        track.name = f"track {index} ch {ch}"
    else:
        # One MIDI track on several channels (type 0) gives parts that need telling apart.
        track.name = f"{name} ch {ch}" if n_parts > 1 else name
    track.notes.sort()
    return track


def _to_delta(events) -> mido.MidiTrack:
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track
