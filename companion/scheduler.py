"""The scheduler: timed MIDI messages out, on time or not at all, with nothing left hanging.

A heap of (due_ns, rank, seq, msg) drained by one thread. The thread sleeps until `spin_ns`
before the earliest due time, then spins on the clock for the last stretch, and sends. On
Linux a timed wait wakes about 0.08 ms late (timer slack) and a 0.25 ms spin takes the median
lateness under 0.01 ms (benchmarks/scheduler_jitter.py); longer spins bought nothing there,
and on a loaded machine any spin lengthens the tail a little (p99 +1-2 ms at load 8 on
2 CPUs: the OS preempts a spinning thread), so pass spin_ns=0 where tails matter more than
the median. On Windows waits round to the 1 ms timer tick (after configure_realtime()), so
the default spin covers that. Due times are absolute perf_counter_ns values, so nothing
accumulates. `run_pending(now_ns)` is the same dispatch without the thread: tests and the
offline virtual-clock path call it directly.

Ordering: by due time; at the same due time note-offs go first (so a note that ends where the
same key starts again does not cut the new one), then everything else in the order scheduled.

Late policy (DESIGN.md: a late note is dropped, never played late; a note-off is never
dropped):
- a note-on that would leave more than `tolerance_ns` after its due time is dropped and
  counted in `stats.late_dropped` (and in `stats.late_on_arrival` too when it was already
  that late when scheduled: generated too late, not sent late);
- a note-off is always dispatched, however late. Every send passes through the NoteLedger,
  which turns a note-off for a note that is not sounding into nothing (counted in
  `stats.offs_skipped`). So the note-off of a dropped note-on is skipped exactly when the
  ledger shows its key silent; if another note on the same key is sounding, it is released
  (a short note is better than a hanging one);
- everything else (control changes, program changes, ...) is sent late rather than never,
  since it changes the synth's state.

All sends happen under one lock, in the scheduler thread, in the caller of `panic()`/`stop()`,
or in the caller of `schedule()` for what is already due (an answer sent at once), so `send`
is never called from two threads at once.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import operator
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from midi_companion.ledger import NoteLedger, note_kind, note_off
from midi_companion.stats import percentiles

Message = Sequence[int]

DEFAULT_TOLERANCE_NS = 10_000_000  # 10 ms: later than this, a note-on is dropped
# spin the last stretch before a due time: longer than the OS wakes late (see above)
DEFAULT_SPIN_NS = 1_500_000 if sys.platform == "win32" else 250_000
IDLE_WAIT_S = 0.5  # with nothing pending, wake this often (stop() also wakes the thread)
REALTIME_SWITCH_INTERVAL_S = 0.0005  # see configure_realtime()


def configure_realtime() -> dict[str, object]:
    """Make this process's timing fit for live MIDI; the daemon calls it once at start-up.

    CPython hands the GIL to a waiting thread only every `sys.getswitchinterval()` (5 ms by
    default), so the scheduler thread, woken on time, can wait up to 5 ms for a thread running
    Python code (the Engine, a mode). benchmarks/scheduler_jitter.py measures it: with a thread
    busy in pure Python, the messages later than the 10 ms tolerance fell from 4-26% to
    0.2-3%, and the median lateness from 3-8 ms to 0.2-3 ms (2 CPUs shared with other jobs at
    load 5-8, so the ranges are wide). The cost is more GIL hand-offs for the busy thread.
    On Windows, timed waits also round to the 15.6 ms system tick unless the timer
    resolution is raised to 1 ms. Returns what was applied, for the log.
    """
    applied: dict[str, object] = {"switch_interval_s": REALTIME_SWITCH_INTERVAL_S}
    sys.setswitchinterval(REALTIME_SWITCH_INTERVAL_S)
    if sys.platform == "win32":
        import ctypes

        # timeBeginPeriod returns 0 (TIMERR_NOERROR) on success
        applied["timer_resolution_ms"] = 1 if ctypes.windll.winmm.timeBeginPeriod(1) == 0 else None
    return applied


def freeze_heap() -> None:
    """Put everything alive now out of the garbage collector's reach; the daemon calls it
    once a performance is loaded and warm (at start-up and after a preset switch).

    A full collection walks every tracked object while holding the GIL: ~20 ms for a loaded
    daemon (39k objects, this 2-core CPU), long enough for the scheduler thread to miss the
    10 ms tolerance (a 10-minute `companion bench` session dropped 2 notes that way). After
    `gc.freeze()` a collection walks only what was allocated since, which stays small.

    What the collection freed (a preset switched away from: its models, their arenas) goes
    back to the system where the C library allows (glibc's malloc_trim): without it the
    daemon's RSS crept up with every Program Change (120 switches jam <-> chorale: 152 ->
    179 MB; trimmed: flat at 115-127 MB).
    """
    gc.collect()
    gc.freeze()
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim(0): free heap pages back to the OS (~0.02 ms when there is
    nothing to give back; the daemon also calls it every TRIM_EVERY_S); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (musl has no malloc_trim)
        pass


def _rank(msg: Message) -> int:
    """0 for note-offs (first at a shared due time), 1 for everything else."""
    return 0 if note_kind(msg) == "off" else 1


def _channel(msg: Message) -> int | None:
    """The channel of a channel message, None for system messages."""
    return msg[0] & 0x0F if 0x80 <= msg[0] < 0xF0 else None


@dataclass
class SchedulerStats:
    """Counters and recent lateness (|dispatch time - due time|, ns) of sent messages."""

    sent: int = 0
    late_dropped: int = 0
    late_on_arrival: int = 0  # of late_dropped: due already past the tolerance when scheduled
    offs_skipped: int = 0
    cancelled: int = 0
    send_errors: int = 0
    lateness_ns: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def percentile(self, q: float) -> int:
        """The q-th percentile (0-100, nearest rank) of recent lateness; 0 when none."""
        return percentiles(self.lateness_ns, q)[0]

    def summary(self) -> dict[str, float | int]:
        """Counters and lateness p50/p99/max in ms, for the status line and benchmarks."""
        p50, p99 = percentiles(self.lateness_ns, 50, 99)
        return {
            "sent": self.sent,
            "late_dropped": self.late_dropped,
            "late_on_arrival": self.late_on_arrival,
            "offs_skipped": self.offs_skipped,
            "cancelled": self.cancelled,
            "send_errors": self.send_errors,
            "lateness_p50_ms": p50 / 1e6,
            "lateness_p99_ms": p99 / 1e6,
            "lateness_max_ms": max(self.lateness_ns, default=0) / 1e6,
        }


class Scheduler:
    """Sends raw MIDI messages at absolute times through a NoteLedger.

    `send(msg)` is the output (e.g. MidiOutput.send); `now_ns` the clock the due times are
    read against. Use `start()` to run the thread, or call `run_pending(now_ns)` yourself.
    Every public method may be called from any thread.
    """

    def __init__(
        self,
        send: Callable[[Message], object],
        now_ns: Callable[[], int] = time.perf_counter_ns,
        ledger: NoteLedger | None = None,
        tolerance_ns: int = DEFAULT_TOLERANCE_NS,
        spin_ns: int = DEFAULT_SPIN_NS,
    ):
        self._send = send
        self._now = now_ns
        self.ledger = ledger if ledger is not None else NoteLedger()
        self.tolerance_ns = tolerance_ns
        self.spin_ns = spin_ns
        self.stats = SchedulerStats()
        self.last_error: Exception | None = None
        self.failing = False  # the last send failed (True until one succeeds again)
        self._heap: list[tuple[int, int, int, tuple[int, ...]]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.send_ahead_ns = 0
        self._handed: deque[tuple[int, int | None]] = deque(maxlen=256)  # (due, channel)

    def send_ahead(self, ns: int) -> None:
        """Hand each message to the output `ns` before it is due, as `send(msg, due_ns)`: the
        output sends it at due_ns itself (companion/port_process.py). Call before start()."""
        self.send_ahead_ns = ns
        self.spin_ns = 0  # the output spins, not this thread

    # ---- producer side ------------------------------------------------------------------

    def now_ns(self) -> int:
        """The scheduler's clock (perf_counter_ns, or the virtual time it was given)."""
        return self._now()

    def schedule(self, due_ns: int, msg: Message) -> None:
        """Send `msg` at `due_ns` (perf_counter_ns time base)."""
        self.schedule_many([(due_ns, msg)])

    def schedule_many(self, items: Iterable[tuple[int, Message]]) -> None:
        """Schedule several (due_ns, msg) pairs at once (one lock, one wake-up). With the
        thread running, what is due already (an answer to the note just played) is sent
        from here at once, in order, rather than after the thread wakes for it."""
        entries = [self._entry(due, msg) for due, msg in items]
        with self._lock:
            if self._stopped:
                raise RuntimeError("the scheduler is stopped; make a new one to play again")
            now = self._now()
            for entry in entries:
                heapq.heappush(self._heap, entry)
                if entry[0] < now - self.tolerance_ns and note_kind(entry[3]) == "on":
                    self.stats.late_on_arrival += 1  # generated too late: dropped below
            if self._thread is not None and entries:
                if min(e[0] for e in entries) <= now + self.send_ahead_ns:
                    self.run_pending(now)
        self._wake.set()

    def _entry(self, due_ns: int, msg: Message) -> tuple[int, int, int, tuple[int, ...]]:
        try:
            data = tuple(operator.index(b) for b in msg)  # ints, numpy ints; never floats
        except TypeError:
            data = ()
        if not data or data[0] < 0x80 or not all(0 <= b < 256 for b in data):
            raise ValueError(f"not a raw MIDI message (received {msg!r})")
        return (operator.index(due_ns), _rank(data), next(self._seq), data)

    def cancel_after(
        self, ns: int, channels: Iterable[int] | None = None, ring: bool = False
    ) -> int:
        """Interrupt what is scheduled from `ns` on (a response the player cut short).

        Pending note-ons due at or after `ns` on `channels` (default: all) are dropped. Notes
        that will be sounding at `ns` are released at `ns` (now if `ns` has passed), or with
        `ring=True` at their own
        pending note-off (at `ns` when none is pending yet, e.g. a note whose note-off was
        still to be generated). Other note-offs after `ns` on those channels, whose note-ons
        were dropped, go too. Messages other than notes are kept. Returns the number of
        note-ons dropped.
        """
        affected = None if channels is None else set(channels)
        with self._lock:
            sounding = set(self.ledger.sounding())  # the synth now, then as pending plays out
            released: set[tuple[int, int]] = set()
            kept, dropped = [], 0
            for entry in sorted(self._heap):
                due, _, _, msg = entry
                kind, ch = note_kind(msg), _channel(msg)
                if kind is None or due < ns or (affected is not None and ch not in affected):
                    kept.append(entry)
                    if kind is not None:
                        self._replay(sounding, kind, (ch, msg[1]))
                elif kind == "on":
                    dropped += 1
                elif ring and (ch, msg[1]) in sounding and (ch, msg[1]) not in released:
                    kept.append(entry)  # the note-off that ends a note sounding at ns
                    released.add((ch, msg[1]))
            hanging = {key for key in sounding - released if affected is None or key[0] in affected}
            at = max(ns, self._now())  # a time already past: release now, not "late"
            kept += [self._entry(at, note_off(ch, pitch)) for ch, pitch in sorted(hanging)]
            heapq.heapify(kept)
            self._heap = kept
            self.stats.cancelled += dropped
        self._wake.set()
        return dropped

    def retract(self, ns: int, channels: Iterable[int]) -> set[tuple[int, int]]:
        """Take back every note message due at or after `ns` on `channels` (a part that is
        about to be generated again from there) and release nothing: returns the
        (channel, pitch) keys that will be sounding at `ns` on those channels, which now
        belong to the caller (their note-offs, if any were pending after `ns`, are gone)."""
        affected = set(channels)
        with self._lock:
            sounding = self.sounding_at(ns, affected)
            self._heap = [
                e
                for e in self._heap
                if e[0] < ns or _channel(e[3]) not in affected or note_kind(e[3]) is None
            ]
            heapq.heapify(self._heap)
        self._wake.set()
        return sounding

    def sounding_at(self, ns: int, channels: Iterable[int]) -> set[tuple[int, int]]:
        """The (channel, pitch) keys on `channels` that will be sounding at `ns`: the ledger
        now, then what is pending before `ns` played out (what `retract` returns, taking
        nothing back)."""
        affected = set(channels)
        with self._lock:
            sounding = set(self.ledger.sounding())
            for due, _, _, msg in sorted(self._heap):
                kind, ch = note_kind(msg), _channel(msg)
                if kind is not None and due < ns and ch in affected:
                    self._replay(sounding, kind, (ch, msg[1]))
        return {key for key in sounding if key[0] in affected}

    def next_change(self, ns: int, channels: Iterable[int]) -> int | None:
        """The due time of the first message on `channels` still to be sent after `ns`,
        pending here or handed over ahead to an output that sends it itself; None when there
        is none. Until then what sounds on them stays as it is."""
        affected = set(channels)
        with self._lock:
            dues = [e[0] for e in self._heap if e[0] > ns and _channel(e[3]) in affected]
            dues += [d for d, ch in self._handed if d > ns and ch in affected]
        return min(dues, default=None)

    @staticmethod
    def _replay(sounding: set[tuple[int, int]], kind: str, key: tuple[int, int]) -> None:
        if kind == "on":
            sounding.add(key)
        else:
            sounding.discard(key)

    def summary(self) -> dict[str, float | int]:
        """`stats.summary()` taken under the lock (safe while the thread runs)."""
        with self._lock:
            return self.stats.summary()

    @property
    def pending(self) -> int:
        """Number of messages waiting in the heap."""
        return len(self._heap)

    def next_due(self) -> int | None:
        """Due time of the earliest pending message, None when the heap is empty."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    # ---- dispatch -------------------------------------------------------------------------

    def run_pending(self, now_ns: int) -> int:
        """Dispatch every message due at or before `now_ns` (late policy applied, lateness
        measured against `now_ns`); return how many messages were sent."""
        sent = 0
        ahead = self.send_ahead_ns
        with self._lock:
            while self._heap and self._heap[0][0] <= now_ns + ahead:
                due, _, _, msg = heapq.heappop(self._heap)
                lateness = now_ns - due
                if note_kind(msg) == "on" and lateness > self.tolerance_ns:
                    self.stats.late_dropped += 1
                    continue
                out = self.ledger.outgoing(msg)
                if not out:
                    self.stats.offs_skipped += 1
                    continue
                for m in out:
                    sent += self._emit(m, due)
                if ahead and due > now_ns:  # the output holds it until due (next_change)
                    self._handed.append((due, _channel(msg)))
                # handed ahead: how late the hand-over was (the output measures the send)
                self.stats.lateness_ns.append(max(lateness, 0) if ahead else abs(lateness))
        return sent

    def _emit(self, msg: Message, due: int | None = None) -> int:
        """Send one message; a failing output is counted and kept in `last_error` (and
        `failing` says whether the latest send failed), not raised, so the thread keeps
        releasing notes on the outputs that still work; the daemon shows it."""
        try:
            if self.send_ahead_ns and due is not None:
                self._send(msg, due)
            else:
                self._send(msg)
        except Exception as err:  # the output's error, whatever it is
            self.stats.send_errors += 1
            self.last_error = err
            self.failing = True
            return 0
        self.stats.sent += 1
        self.failing = False
        return 1

    def panic(self) -> int:
        """Drop everything pending and silence every note the ledger knows is sounding
        (note-offs, then CC 123 on every channel used); return how many messages were sent."""
        with self._lock:
            self._heap.clear()
            return sum(self._emit(m) for m in self.ledger.release_all())

    # ---- thread ---------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Run the dispatch thread (daemon thread; stop() ends it). Returns self."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the scheduler is stopped; make a new one to play again")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="midi-scheduler", daemon=True
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, drop what is pending and release every sounding note. Idempotent;
        schedule() raises afterwards."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.panic()

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before peeking: a schedule() after the peek wakes the wait
            due = self.next_due()
            if due is None:
                self._wake.wait(IDLE_WAIT_S)
                continue
            due -= self.send_ahead_ns  # when it is handed to the output
            sleep_ns = due - self._now() - self.spin_ns
            if sleep_ns > 0:
                self._wake.wait(sleep_ns / 1e9)  # woken early by an earlier arrival or stop
                continue
            while self._now() < due and not self._stopping.is_set():
                pass  # the last stretch: spin, holding the GIL, instead of trusting a timer
            self.run_pending(self._now())
