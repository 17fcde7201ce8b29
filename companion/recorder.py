"""Recording: nothing the player played is lost.

Every message the player sends and every message the companion sends is kept with its
time; `flush()` rewrites the .mid file (written to a temporary file and renamed over the old
one, so a kill -9 between flushes leaves the previous complete file). The daemon flushes
every few seconds in the background (`flush_in_background`: a rewrite costs time in
proportion to everything recorded, about 0.3 s after 10 minutes of dense play, which the
live loop cannot spend between its ticks) and on exit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import mido

from companion.score import TICKS_PER_BEAT

FLUSH_EVERY_S = 2.0


class Recorder:
    """Collects (beat, source, raw message); writes one track per (source, channel)."""

    def __init__(self, path: str | os.PathLike, bpm: float, names: dict[int, str] | None = None):
        self.path = Path(path)
        self.bpm = bpm
        self.names = names or {}  # output channel (0-based) -> track name
        self._events: list[tuple[float, str, tuple[int, ...]]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time
        self._writer: threading.Thread | None = None
        self._dirty = False

    def player(self, beat: float, msg) -> None:
        self._add(beat, "player", msg)

    def companion(self, beat: float, msg) -> None:
        self._add(beat, "companion", msg)

    def _add(self, beat: float, source: str, msg) -> None:
        if not msg or msg[0] >= 0xF0 or (msg[0] & 0xF0) not in (0x80, 0x90, 0xB0, 0xC0):
            return  # clock and sysex are not part of the music
        with self._lock:
            self._events.append((max(beat, 0.0), source, tuple(msg)))
            self._dirty = True

    def flush(self) -> None:
        """Write the file now (atomically), after any write in progress; a no-op when nothing
        changed."""
        with self._write_lock:
            with self._lock:
                if not self._dirty:
                    return
                events = list(self._events)
                self._dirty = False
            mid = self._build(events)
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mid.save(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def flush_in_background(self) -> None:
        """`flush()` on a thread of its own, unless the previous one is still writing."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(target=self.flush, name="recorder", daemon=True)
        self._writer.start()

    def _build(self, events) -> mido.MidiFile:
        mid = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
        conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(self.bpm))])
        mid.tracks.append(conductor)
        groups: dict[tuple[str, int], list[tuple[float, tuple[int, ...]]]] = {}
        for beat, source, msg in events:
            groups.setdefault((source, msg[0] & 0x0F), []).append((beat, msg))
        for (source, ch), items in sorted(groups.items()):
            name = "player" if source == "player" else self.names.get(ch, f"companion ch {ch + 1}")
            track = mido.MidiTrack([mido.MetaMessage("track_name", name=name)])
            now = 0
            for beat, msg in sorted(items, key=lambda x: x[0]):
                tick = round(beat * TICKS_PER_BEAT)
                track.append(mido.Message.from_bytes(list(msg), time=tick - now))
                now = tick
            mid.tracks.append(track)
        return mid
