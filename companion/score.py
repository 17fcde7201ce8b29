"""Score: a small, torch-free container of notes in beats, read from and written to MIDI files.

A Score is what every representation encodes and decodes, what the corpora cache, and what
the offline commands read and write. Times are in beats (quarter notes), so tempo is a
property of playback, not of the music.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import mido

from companion.errors import MidiFileError

DRUM_CHANNEL = 9
DEFAULT_BPM = 120.0
TICKS_PER_BEAT = 480


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
        return cls(tracks=[Track(name=name, program=program, notes=list(notes))],
                   tempos=[(0.0, float(bpm))])

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
                notes = [replace(n, pitch=n.pitch + semitones) for n in t.notes
                         if 0 <= n.pitch + semitones <= 127]
            tracks.append(replace(t, notes=notes))
        return replace(self, tracks=tracks)

    # ---- MIDI files --------------------------------------------------------------------
    @classmethod
    def from_midi(cls, path: str | os.PathLike) -> Score:
        """Read a Standard MIDI File; raise MidiFileError naming the file when it cannot."""
        path = Path(path)
        try:
            mid = mido.MidiFile(path, clip=True)
        except FileNotFoundError as err:
            raise MidiFileError(f"{path}: no such file") from err
        except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
            raise MidiFileError(
                f"{path}: not a readable Standard MIDI File ({type(err).__name__}: {err})"
            ) from err
        if mid.type == 2:
            raise MidiFileError(f"{path}: MIDI file type 2 (sequential songs) is not supported")
        return cls.from_mido(mid, source=str(path))

    @classmethod
    def from_mido(cls, mid: mido.MidiFile, source: str = "<midi>") -> Score:
        tpb = mid.ticks_per_beat
        if not tpb or tpb <= 0:
            raise MidiFileError(f"{source}: ticks per beat must be > 0 (received {tpb})")
        tempos: dict[float, float] = {}
        sigs: dict[float, tuple[int, int]] = {}
        parts: dict[tuple[int, int], Track] = {}
        for ti, mtrack in enumerate(mid.tracks):
            name = ""
            programs: dict[int, int] = defaultdict(int)
            open_notes: dict[tuple[int, int], deque] = defaultdict(deque)
            tick = 0
            for msg in mtrack:
                tick += msg.time
                beat = tick / tpb
                if msg.type == "track_name":
                    name = msg.name
                elif msg.type == "set_tempo":
                    tempos[beat] = round(mido.tempo2bpm(msg.tempo), 6)
                elif msg.type == "time_signature":
                    sigs[beat] = (msg.numerator, msg.denominator)
                elif msg.type == "program_change":
                    programs[msg.channel] = msg.program
                elif msg.type == "note_on" and msg.velocity > 0:
                    open_notes[(msg.channel, msg.note)].append((beat, msg.velocity))
                elif msg.type in ("note_off", "note_on"):
                    queue = open_notes.get((msg.channel, msg.note))
                    if queue:
                        onset, vel = queue.popleft()
                        _part(parts, ti, msg.channel, name, programs).notes.append(
                            Note(onset, msg.note, beat - onset, vel))
            # Notes never released end with their track (a truncated take keeps its notes).
            for (ch, pitch), queue in open_notes.items():
                for onset, vel in queue:
                    _part(parts, ti, ch, name, programs).notes.append(
                        Note(onset, pitch, max(tick / tpb - onset, 1.0 / tpb), vel))
        tracks = [parts[k] for k in sorted(parts)]
        for t in tracks:
            t.notes.sort()
        score = cls(tracks=tracks)
        if tempos:
            score.tempos = sorted(tempos.items())
            if score.tempos[0][0] > 0:
                score.tempos.insert(0, (0.0, DEFAULT_BPM))
        if sigs:
            score.time_signatures = sorted((b, n, d) for b, (n, d) in sigs.items())
        return score

    def to_midi(self, path: str | os.PathLike, ticks_per_beat: int = TICKS_PER_BEAT) -> None:
        """Write a type-1 Standard MIDI File: a conductor track, then one track per part."""
        self.to_mido(ticks_per_beat).save(path)

    def to_mido(self, ticks_per_beat: int = TICKS_PER_BEAT) -> mido.MidiFile:
        mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
        conductor = [(0, 0, mido.MetaMessage("track_name", name="tempo", time=0))]
        for beat, bpm in self.tempos:
            conductor.append((round(beat * ticks_per_beat), 1,
                              mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
        for beat, num, den in self.time_signatures:
            conductor.append((round(beat * ticks_per_beat), 1,
                              mido.MetaMessage("time_signature", numerator=num, denominator=den)))
        mid.tracks.append(_to_delta(conductor))
        for track, channel in zip(self.tracks, assign_channels(self.tracks)):
            events = [(0, 0, mido.MetaMessage("track_name", name=track.name)),
                      (0, 1, mido.Message("program_change", channel=channel,
                                          program=track.program))]
            for n in track.notes:
                on = round(n.onset * ticks_per_beat)
                off = max(round(n.end * ticks_per_beat), on + 1)
                events.append((on, 3, mido.Message("note_on", channel=channel, note=n.pitch,
                                                   velocity=n.velocity)))
                # Offs before ons at the same tick, so a repeated note re-articulates.
                events.append((off, 2, mido.Message("note_off", channel=channel, note=n.pitch,
                                                     velocity=0)))
            mid.tracks.append(_to_delta(events))
        return mid


def assign_channels(tracks: list[Track]) -> list[int]:
    """Each track's MIDI channel: its own if set, drums on 10, others in order skipping 10."""
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


def _part(parts, track_index, channel, name, programs) -> Track:
    key = (track_index, channel)
    if key not in parts:
        parts[key] = Track(name=name or f"track {track_index} ch {channel + 1}",
                           program=programs[channel], is_drum=channel == DRUM_CHANNEL,
                           channel=channel)
    return parts[key]


def _to_delta(events) -> mido.MidiTrack:
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track
