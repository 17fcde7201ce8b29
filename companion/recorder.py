"""Recording: nothing the player played is lost.

Every message the player sends and every message the companion sends is kept with its
time; `flush()` rewrites the .mid file (written to a temporary file and renamed over the old
one, so a kill -9 between flushes leaves the previous complete file). The daemon flushes
every few seconds in the background (`flush_in_background`) and on exit. The path is
checked when the recorder is made, before anything is played; if a later write fails (a
full disk), everything stays in memory, one warning says so, and the next flush writes it
all again; only the final flush raises.

A flush must cost the live threads almost nothing, so each message is encoded to Standard
MIDI File bytes once, by the first flush after it arrives, onto its track's bytes; writing
the file is then joining byte strings. (Rebuilding the file with mido on every flush took
~0.3 s of Python after 10 minutes of dense play; holding the GIL that long made the
scheduler thread send up to 5 ms late.)
"""

from __future__ import annotations

import os
import struct
import sys
import threading

from midi_companion.errors import MidiFileError
from midi_companion.ledger import well_formed
from midi_companion.outfiles import check_output, write_atomic
from midi_companion.score import TICKS_PER_BEAT

FLUSH_EVERY_S = 2.0


def _vlq(n: int) -> bytes:
    """A variable-length quantity (SMF delta times and lengths)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _meta(kind: int, data: bytes) -> bytes:
    return b"\x00\xff" + bytes([kind]) + _vlq(len(data)) + data


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack(">I", len(data)) + data


class _Track:
    """One (source, channel)'s messages as SMF track bytes (delta times, no running status)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.tick = 0

    def add(self, beat: float, msg: tuple[int, ...]) -> None:
        # a clock that jumped back (Song Position Pointer) puts a message at the last tick
        tick = max(round(beat * TICKS_PER_BEAT), self.tick)
        self.data += _vlq(tick - self.tick) + bytes(msg)
        self.tick = tick


class Recorder:
    """Collects (beat, source, raw message); writes one track per (source, channel)."""

    def __init__(
        self,
        path: str | os.PathLike,
        bpm: float,
        names: dict[int, str] | None = None,
        warn=sys.stderr,
    ):
        self.path = check_output(path, "--record")
        self.bpm = bpm
        self.names = names or {}  # output channel (0-based) -> track name
        self._pending: list[tuple[float, str, tuple[int, ...]]] = []  # not encoded yet
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._unwritten = False  # encoded messages that no file holds yet
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time
        self._writer: threading.Thread | None = None
        self._warn = warn
        self.failed: MidiFileError | None = None  # the last background write's error

    def player(self, beat: float, msg) -> None:
        self._add(beat, "player", msg)

    def companion(self, beat: float, msg) -> None:
        self._add(beat, "companion", msg)

    def _add(self, beat: float, source: str, msg) -> None:
        if not well_formed(msg) or msg[0] >= 0xF0:
            # recorded: every whole channel voice message (notes, aftertouch, CCs, programs,
            # pitch bend); clock, SysEx and malformed messages are not part of the take
            return
        with self._lock:
            self._pending.append((max(beat, 0.0), source, tuple(msg)))

    def flush(self) -> None:
        """Write the file now (atomically), after any write in progress; a no-op when nothing
        changed."""
        with self._write_lock:
            with self._lock:
                if not self._pending and not self._unwritten:
                    return
                new, self._pending = self._pending, []
            for beat, source, msg in sorted(new, key=lambda e: e[0]):
                self._tracks.setdefault((source, msg[0] & 0x0F), _Track()).add(beat, msg)
            self._unwritten = True
            write_atomic(self.path, self._smf())
            self._unwritten = False
            self.failed = None

    def _smf(self) -> bytes:
        """The whole file: a conductor track (tempo), then one track per (source, channel)."""
        tempo = round(60_000_000 / self.bpm)
        chunks = [
            _chunk(b"MThd", struct.pack(">HHH", 1, len(self._tracks) + 1, TICKS_PER_BEAT)),
            _chunk(b"MTrk", _meta(0x51, tempo.to_bytes(3, "big")) + _meta(0x2F, b"")),
        ]
        for (source, ch), track in sorted(self._tracks.items()):
            name = "player" if source == "player" else self.names.get(ch, f"companion ch {ch + 1}")
            chunks.append(
                _chunk(
                    b"MTrk",
                    _meta(0x03, name.encode("latin-1", "replace"))
                    + bytes(track.data)
                    + _meta(0x2F, b""),
                )
            )
        return b"".join(chunks)

    def flush_in_background(self) -> None:
        """`flush()` on a thread of its own, unless the previous one is still writing."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(target=self._flush_quietly, name="recorder", daemon=True)
        self._writer.start()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except MidiFileError as err:
            if self.failed is None and self._warn is not None:
                print(
                    f"\ncompanion: warning: {err}; the recording is kept in memory and "
                    "written again at the next flush",
                    file=self._warn,
                    flush=True,
                )
            self.failed = err
