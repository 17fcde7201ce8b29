"""Beats <-> nanoseconds: an internal tempo, or the DAW's MIDI clock.

Both clocks answer the same questions, so modes never care which one runs:

- `beat_at(ns) -> float`: the musical position (in beats from the song start) at time `ns`;
- `time_at(beat) -> int`: the time (perf_counter_ns) at which `beat` falls;
- `bar_at(ns)`, `next_beat(ns, grid)`, `bpm`, `beats_per_bar`, `running`.

Times are integer nanoseconds of `time.perf_counter_ns` (monotonic). Positions come from one
straight line (an anchor time, the beat at the anchor, nanoseconds per beat), so
`time_at(beat)` is absolute (anchor + beats * period), never accumulated sleeps. A tempo change
moves the anchor to the moment of the change, keeping the beat continuous. While a clock is
stopped its position is frozen: `beat_at` returns where it stopped and `time_at` raises
RuntimeError, since no time reaches a beat until the transport runs (check `running`).

The line is one immutable object swapped in a single assignment, so other threads may read a
clock while the listener thread feeds it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

NS_PER_MINUTE = 60_000_000_000
PPQN = 24  # MIDI clock ticks per quarter note
TICKS_PER_SIXTEENTH = PPQN // 4  # Song Position Pointer counts sixteenth notes

TIMING_CLOCK = 0xF8
SONG_START = 0xFA
SONG_CONTINUE = 0xFB
SONG_STOP = 0xFC
SONG_POSITION = 0xF2
TRANSPORT_STATUSES = frozenset({TIMING_CLOCK, SONG_START, SONG_CONTINUE, SONG_STOP, SONG_POSITION})


class Clock(Protocol):
    """What modes may ask of a clock (InternalClock and MidiClock both provide it)."""

    beats_per_bar: int

    @property
    def running(self) -> bool: ...

    @property
    def bpm(self) -> float: ...

    def beat_at(self, ns: int) -> float: ...

    def time_at(self, beat: float) -> int: ...

    def bar_at(self, ns: int) -> float: ...

    def next_beat(self, ns: int, grid: float = 1.0) -> float: ...


def period_ns(bpm: float) -> float:
    """Nanoseconds per beat at `bpm`; ValueError unless 0 < bpm < inf."""
    if not 0 < bpm < math.inf:
        raise ValueError(f"tempo must be a positive number of beats per minute (received {bpm})")
    return NS_PER_MINUTE / bpm


def _slope(times: Sequence[int]) -> float:
    """Least-squares ns per tick through equally spaced ticks stamped `times` (n >= 2)."""
    n = len(times)
    mid = (n - 1) / 2
    t0 = times[0]  # small numbers keep the float sums exact
    return sum((i - mid) * (t - t0) for i, t in enumerate(times)) / (n * (n * n - 1) / 12)


@dataclass(frozen=True)
class _Line:
    """beat = beat0 + (ns - ns0) / period_ns while running; frozen at beat0 when not."""

    ns0: int
    beat0: float
    period_ns: float
    running: bool

    def beat_at(self, ns: int) -> float:
        if not self.running:
            return self.beat0
        return self.beat0 + (ns - self.ns0) / self.period_ns

    def time_at(self, beat: float) -> int:
        if not self.running:
            raise RuntimeError(
                f"the clock is stopped: beat {beat} has no time until the transport runs"
            )
        return self.ns0 + round((beat - self.beat0) * self.period_ns)


class _LineClock:
    """The questions both clocks answer from their current line."""

    beats_per_bar: int
    _line: _Line

    @property
    def running(self) -> bool:
        """True while the transport runs (positions advance with time)."""
        return self._line.running

    def beat_at(self, ns: int) -> float:
        """Position in beats at time `ns` (frozen while stopped)."""
        return self._line.beat_at(ns)

    def time_at(self, beat: float) -> int:
        """Time in ns at which `beat` falls; RuntimeError while stopped."""
        return self._line.time_at(beat)

    def bar_at(self, ns: int) -> float:
        """Position in bars at time `ns` (bar 0 starts at beat 0)."""
        return self.beat_at(ns) / self.beats_per_bar

    def next_beat(self, ns: int, grid: float = 1.0) -> float:
        """The first multiple of `grid` beats at or after the position at `ns`, e.g.
        `next_beat(t, clock.beats_per_bar)` is the next downbeat."""
        steps = self.beat_at(ns) / grid
        return math.ceil(steps - 1e-9) * grid  # a position a hair past a boundary is on it


class InternalClock(_LineClock):
    """A steady tempo of our own: `start()` puts beat 0 at now (or `at_ns`)."""

    def __init__(
        self,
        bpm: float = 120.0,
        beats_per_bar: int = 4,
        now_ns: Callable[[], int] = time.perf_counter_ns,
    ):
        self.beats_per_bar = beats_per_bar
        self._now = now_ns
        self._line = _Line(0, 0.0, period_ns(bpm), False)

    def start(self, at_ns: int | None = None) -> None:
        """Start (or restart) the transport: beat 0 falls at `at_ns` (default: now)."""
        at = self._now() if at_ns is None else at_ns
        self._line = _Line(at, 0.0, self._line.period_ns, True)

    def stop(self, at_ns: int | None = None) -> None:
        """Freeze the position where it is at `at_ns` (default: now)."""
        line = self._line
        at = self._now() if at_ns is None else at_ns
        self._line = _Line(at, line.beat_at(at), line.period_ns, False)

    @property
    def bpm(self) -> float:
        """Tempo in beats per minute; assigning it changes tempo now (see set_bpm)."""
        return NS_PER_MINUTE / self._line.period_ns

    @bpm.setter
    def bpm(self, bpm: float) -> None:
        self.set_bpm(bpm)

    def set_bpm(self, bpm: float, at_ns: int | None = None) -> None:
        """Change tempo from `at_ns` (default: now) on; the beat at `at_ns` is unchanged."""
        period = period_ns(bpm)
        line = self._line
        at = self._now() if at_ns is None else at_ns
        self._line = _Line(at, line.beat_at(at), period, line.running)


@dataclass(frozen=True)
class TransportEvent:
    """Something the DAW's transport did.

    kind: "started" (Start: from beat 0), "continued" (Continue: from the current position),
    "stopped" (Stop: release every sounding note), "position" (Song Position Pointer:
    relocated), or "tempo" (the estimate moved by at least `tempo_epsilon`).
    """

    kind: str
    t_ns: int
    beat: float
    bpm: float


class MidiClock(_LineClock):
    """Follows the DAW: MIDI clock (24 per quarter note), Start/Continue/Stop and Song
    Position Pointer, fed from the input listener with their arrival times.

    Tempo comes from the last `window` tick intervals, as in python-rtmidi's midiclock example,
    but as the least-squares slope of tick time over tick count rather than the plain mean
    interval: the mean telescopes to (newest - oldest) / window and so rests on two stamps;
    the slope weighs all of them (half the error for the same window and jitter). Phase is
    the newest tick: averaging it over past ticks would halve the effect of arrival jitter
    (about 0.5 ms to 0.2 ms rms at 2 ms of jitter) but, after a tempo jump, would project old
    ticks along a stale tempo and misplace the next beats by up to 12 ms instead of 3.
    Between ticks the position is extrapolated along the line; when a tick lands early or
    late the position jumps by that error, so `beat_at` is not strictly monotonic at ticks.

    MIDI clock semantics: after Start, the first tick is beat 0; after Continue, the first tick
    is the position where the transport stopped (or where a Song Position Pointer put it).
    An interval longer than the one at `min_bpm` is a gap (the DAW stopped sending), not a
    tempo: it restarts the estimate without feeding it.
    """

    def __init__(
        self,
        bpm: float = 120.0,
        beats_per_bar: int = 4,
        on_event: Callable[[TransportEvent], None] | None = None,
        window: int = 24,
        tempo_epsilon: float = 0.5,
        min_bpm: float = 20.0,
    ):
        self.beats_per_bar = beats_per_bar
        self.on_event = on_event
        self.window = window
        self.tempo_epsilon = tempo_epsilon
        self._max_tick_ns = period_ns(min_bpm) / PPQN
        self._tick_ns = period_ns(bpm) / PPQN
        self._ticks: deque[int] = deque(maxlen=window + 1)  # arrival times, no gap between
        self._next_pos = 0  # song position (ticks) of the next tick that arrives while running
        self._reported_bpm: float | None = None
        self._line = _Line(0, 0.0, self._tick_ns * PPQN, False)

    @staticmethod
    def handles(msg: Sequence[int]) -> bool:
        """True for the messages feed() acts on (clock, start, continue, stop, SPP)."""
        return bool(msg) and msg[0] in TRANSPORT_STATUSES

    @property
    def bpm(self) -> float:
        """The DAW's tempo as estimated from its clock (the constructor's bpm until ticks)."""
        return NS_PER_MINUTE / (self._tick_ns * PPQN)

    @property
    def synced(self) -> bool:
        """True once a full window of tick intervals backs the tempo estimate."""
        return len(self._ticks) == self.window + 1

    def feed(self, msg: Sequence[int], t_ns: int) -> list[TransportEvent]:
        """Take one incoming message stamped `t_ns`; return the transport events it caused
        (also passed to `on_event`). Messages other than transport ones are ignored."""
        status = msg[0] if msg else None
        if status == TIMING_CLOCK:
            events = self._tick(t_ns)
        elif status == SONG_START:
            events = [self._start(t_ns)]
        elif status == SONG_CONTINUE:
            events = [self._continue(t_ns)]
        elif status == SONG_STOP:
            events = [self._stop(t_ns)]
        elif status == SONG_POSITION and len(msg) >= 3:
            events = [self._locate(msg[1] | (msg[2] << 7), t_ns)]
        else:
            return []
        if self.on_event is not None:
            for event in events:
                self.on_event(event)
        return events

    def _event(self, kind: str, t_ns: int) -> TransportEvent:
        return TransportEvent(kind, t_ns, self._line.beat_at(t_ns), self.bpm)

    def _tick(self, t_ns: int) -> list[TransportEvent]:
        self._measure(t_ns)
        if self._line.running:  # this tick is song position _next_pos, falling at t_ns
            self._line = _Line(t_ns, self._next_pos / PPQN, self._tick_ns * PPQN, True)
            self._next_pos += 1
        return self._tempo_event(t_ns)

    def _measure(self, t_ns: int) -> None:
        """Add a tick to the tempo estimate; after a gap the history starts again."""
        ticks = self._ticks
        if ticks and not 0 < t_ns - ticks[-1] <= self._max_tick_ns:
            ticks.clear()
        ticks.append(t_ns)
        if len(ticks) >= 3:  # two intervals, as the midiclock example waits for
            self._tick_ns = _slope(ticks)

    def _tempo_event(self, t_ns: int) -> list[TransportEvent]:
        if not self.synced:
            return []
        bpm = self.bpm
        if self._reported_bpm is not None and abs(bpm - self._reported_bpm) < self.tempo_epsilon:
            return []
        self._reported_bpm = bpm
        return [self._event("tempo", t_ns)]

    def _run_from(self, t_ns: int) -> None:
        """Provisional line until the first tick: the next position falls at `t_ns`."""
        self._line = _Line(t_ns, self._next_pos / PPQN, self._tick_ns * PPQN, True)

    def _start(self, t_ns: int) -> TransportEvent:
        self._next_pos = 0
        self._run_from(t_ns)
        return self._event("started", t_ns)

    def _continue(self, t_ns: int) -> TransportEvent:
        self._run_from(t_ns)
        return self._event("continued", t_ns)

    def _stop(self, t_ns: int) -> TransportEvent:
        # Freeze between the last tick and the next one, never past where Continue resumes.
        beat = min(self._line.beat_at(t_ns), self._next_pos / PPQN)
        self._line = _Line(t_ns, beat, self._tick_ns * PPQN, False)
        return self._event("stopped", t_ns)

    def _locate(self, sixteenths: int, t_ns: int) -> TransportEvent:
        self._next_pos = sixteenths * TICKS_PER_SIXTEENTH
        if self._line.running:
            self._run_from(t_ns)
        else:
            self._line = _Line(t_ns, self._next_pos / PPQN, self._tick_ns * PPQN, False)
        return self._event("position", t_ns)
