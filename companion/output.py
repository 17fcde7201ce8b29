"""Output: a mode's NoteEvents (beats, track index) -> MIDI messages on the tracks' channels,
scheduled at the clock's absolute times. The only place beats become due times."""

from __future__ import annotations

from collections.abc import Iterable

from midi_companion.presets import TrackOut
from midi_companion.representations.base import NoteEvent


class Output:
    def __init__(self, scheduler, clock, tracks: list[TrackOut]):
        self.scheduler = scheduler
        self.clock = clock
        self.tracks = tracks
        self.channels = [t.channel - 1 for t in tracks]
        self.notes_out = 0

    def play(self, events: Iterable[NoteEvent], asap: bool = False) -> None:
        """Schedule events; a track index past the preset's tracks is a model/preset mismatch
        caught at load, so it is not checked here (hot path). `asap`: an answer to what the
        player just did (harmonize), due at its beat or, if that has passed while it was
        generated, now: late, not dropped (a silent voice under the note is worse)."""
        floor = self.scheduler.now_ns() if asap else None
        for ev in events:
            msg = self.message(ev)
            self.notes_out += ev.velocity > 0
            due = self.clock.time_at(ev.beat)
            self.scheduler.schedule(due if floor is None else max(due, floor), msg)

    def message(self, ev: NoteEvent) -> tuple[int, int, int]:
        """The MIDI message of `ev` on its track's channel (velocity scaled, 0 = note-off)."""
        t = self.tracks[ev.track]
        ch = t.channel - 1
        if ev.velocity > 0:
            return (0x90 | ch, ev.pitch, max(1, min(127, round(ev.velocity * t.velocity_scale))))
        return (0x80 | ch, ev.pitch, 0)

    def beat_now(self) -> float:
        """The beat it is now, by the scheduler's clock (virtual time offline)."""
        return self.clock.beat_at(self.scheduler.now_ns())

    def cancel_after(self, beat: float) -> None:
        """Drop what was to start after `beat` and end what sounds then (interruption)."""
        self.scheduler.cancel_after(self.clock.time_at(beat), channels=set(self.channels))

    def sounding_at(self, beat: float) -> list[set[int]]:
        """The pitches each track will be sounding at `beat` (what `retract_from` returns,
        taking nothing back)."""
        keys = self.scheduler.sounding_at(self.clock.time_at(beat), self.channels)
        return [{p for ch, p in keys if ch == c} for c in self.channels]

    def retract_from(self, beat: float) -> list[set[int]]:
        """Take back what was scheduled from `beat` on, releasing nothing; the pitches each
        track will be sounding then (see Scheduler.retract)."""
        keys = self.scheduler.retract(self.clock.time_at(beat), self.channels)
        return [{p for ch, p in keys if ch == c} for c in self.channels]

    def program_changes(self) -> list[tuple[int, ...]]:
        return [(0xC0 | t.channel - 1, t.program) for t in self.tracks]
