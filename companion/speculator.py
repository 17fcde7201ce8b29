"""Harmonize's speculation: the step a lead note-on would land on, computed ahead for the
lead pitches it will likely be (Accompanist.speculation), so that the note-on is answered
by a lookup (modes/accompaniment.py).

Live, a worker thread computes: onnxruntime releases the GIL while it runs, so a note that
comes meanwhile is handled at once and no due send waits for the work. Offline (`inline`),
a wish is computed where it is made, so a file's run measures the hit rate as if every
grid step had left enough idle time. Either way the notes are the same: each member draws
from the step's own generator.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque

SPAN = 5  # lead pitches computed ahead: within this many semitones of the last lead note
TOP_K = 2  # ... and the model's likeliest lead pitches there
_STOP = threading.Event()  # the interpreter is ending: workers leave onnxruntime first
_WORKERS: list[threading.Thread] = []


class Speculator:
    def __init__(self, acc, rng_for, inline: bool = False):
        """`acc`: the Accompanist; `rng_for(step)`: the step's generator."""
        self.acc, self.inline = acc, inline
        # a mode's bound method held weakly: the mode holds this, the worker holds this while
        # it waits, so a strong one would keep a switched-away preset (its models, this
        # thread) alive for good (the soak's RSS grew ~0.5-5 MB a Program Change)
        self._rng_for = weakref.WeakMethod(rng_for) if hasattr(rng_for, "__self__") else None
        self._rng_plain = None if self._rng_for is not None else rng_for
        self.done: dict[int, tuple] = {}  # step -> (base key, held, Speculation)
        self.jobs_ns: deque[int] = deque(maxlen=4096)  # CPU time of each finished job
        self._wanted: tuple | None = None  # the newest wish, not started yet
        self._running: tuple | None = None
        self._cancelled = False
        self._cv = threading.Condition()
        if not inline:
            worker = threading.Thread(
                target=_work, args=(weakref.ref(self),), name="speculation", daemon=True
            )
            _WORKERS[:] = [w for w in _WORKERS if w.is_alive()] + [worker]
            worker.start()

    def ready(self, step: int, key, held: frozenset[int]) -> bool:
        """Whether `step` is computed from base `key` for a lead holding `held`: computed
        with `held` held, or with anything held if nothing is held now (every job computes
        the plain leads too, so a note-off needs no new one)."""
        return _serves(self.done.get(step, (None, None))[:2], key, held)

    def busy_with(self, step: int, key, held: frozenset[int]) -> bool:
        """Whether that is asked for or under way."""
        return any(
            j is not None and j[0] == step and _serves(j[1:3], key, held)
            for j in (self._running, self._wanted)
        )

    def want(self, step: int, key, held: frozenset[int], snap, last_pitch: int | None) -> None:
        """Compute `step` from the snapshot `snap` (base `key`), the lead holding `held`;
        a newer wish replaces one not started and stops one under way."""
        job = (step, key, held, snap, last_pitch)
        if self.inline:
            self._compute(job)
            return
        with self._cv:
            self._wanted = job
            self._cv.notify()

    def find(self, step: int, key, lead: frozenset[int]):
        """(Speculation, member) computed for `step` from base `key` with `lead`, or None."""
        found = self.done.get(step)
        if found is None or found[0] != key:
            return None
        i = found[2].find(lead)
        return None if i is None else (found[2], i)

    def clear(self) -> None:
        """Forget every result and stop the work under way (a note-on computed the usual
        way needs the CPU, and the base of that work is gone with it)."""
        with self._cv:
            self._wanted = None
            self._cancelled = True
            self.done = {}

    def _compute(self, job) -> None:
        step, key, held, snap, last = job
        t0 = time.thread_time_ns()
        pitches = self.acc.lead_candidates(snap, TOP_K)
        if last is not None:
            pitches = list(dict.fromkeys([*range(last - SPAN, last + SPAN + 1), *pitches]))
        leads = [frozenset({p}) for p in pitches]
        if held:  # the new note may come while the last one still sounds (legato)
            leads += [held | {p} for p in pitches if p not in held]
        rng_for = self._rng_plain or self._rng_for()
        if rng_for is None:  # its mode is gone
            return
        work = self.acc.speculation(snap, leads, rng_for(step))
        while True:
            try:
                next(work)
            except StopIteration as finished:
                spec = finished.value
                break
            if self.inline:
                continue
            if self._wanted is not None or self._cancelled or _STOP.is_set():
                return  # superseded (the newer wish is taken up next), cancelled, the end
            time.sleep(0)  # hand the GIL over: a note-on waiting on the main thread goes first
        done = {s: v for s, v in self.done.items() if s >= step - 1}
        done[step] = (key, held, spec)
        self.done = done  # one assignment: a reader sees the old dict or the new
        self.jobs_ns.append(time.thread_time_ns() - t0)


def _serves(computed: tuple, key, held: frozenset[int]) -> bool:
    """Whether a job computed for (base key, held) serves base `key` with `held` held."""
    return computed[0] == key and (computed[1] == held or not held)


def _work(ref) -> None:
    """The worker: take the newest wish, compute it, again; ends with its Speculator."""
    while not _STOP.is_set():
        me = ref()
        if me is None:
            return
        with me._cv:
            if me._wanted is None:
                me._cv.wait(0.5)
            job, me._wanted = me._wanted, None
            me._running, me._cancelled = job, False
        if job is not None:
            try:
                me._compute(job)
            except Exception:  # noqa: BLE001 - a failed guess is a miss, never an error
                pass
        me._running = None
        del me


@atexit.register
def _stop_workers() -> None:
    """Let every worker leave onnxruntime before the interpreter ends (a thread still in
    it then aborts the process)."""
    _STOP.set()
    for w in _WORKERS:
        w.join(timeout=2.0)
