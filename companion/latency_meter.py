"""The live latency meter: lead note-on in -> the companion's first note-on out, over the
last minute, for the status line (harmonize answers every lead note at once).

`asked(t_ns)` when a lead note-on arrives (its input stamp), `sent(t_ns)` when the daemon
sends a note-on. A send within `window_ns` of the oldest unanswered note-on answers it
(and every note-on before it); a lead note that gets no note-on that soon was answered by
held voices (nothing changed), counted in `held`, not in the latencies.
"""

from __future__ import annotations

import threading
from collections import deque

from midi_companion.stats import percentiles

WINDOW_NS = 20_000_000  # later than this, the note-on out is not an answer to it
SPAN_NS = 60_000_000_000  # the status line's figures: the last minute


class LatencyMeter:
    def __init__(self, window_ns: int = WINDOW_NS, span_ns: int = SPAN_NS):
        self.window_ns = window_ns
        self.span_ns = span_ns
        self._waiting: deque[int] = deque()  # stamps of lead note-ons not answered yet
        self._done: deque[tuple[int, int]] = deque()  # (answered at, latency ns)
        self.held = 0
        self._lock = threading.Lock()  # asked on the main thread, sent on the scheduler's

    def asked(self, t_ns: int) -> None:
        with self._lock:
            self._expire(t_ns)
            self._waiting.append(t_ns)

    def sent(self, t_ns: int) -> None:
        with self._lock:
            self._expire(t_ns)
            if self._waiting:
                first = self._waiting[0]
                self._waiting.clear()
                self._done.append((t_ns, max(0, t_ns - first)))

    def summary(self, now_ns: int) -> dict[str, float | int]:
        """{"p50_ms", "p99_ms", "n", "held"} over the last minute (p50/p99 NaN with no
        answer yet)."""
        with self._lock:
            self._expire(now_ns)
            while self._done and self._done[0][0] < now_ns - self.span_ns:
                self._done.popleft()
            lat = [ns / 1e6 for _, ns in self._done]
        p50, p99 = percentiles(lat, 50, 99, default=float("nan"))
        return {"p50_ms": p50, "p99_ms": p99, "n": len(lat), "held": self.held}

    def _expire(self, now_ns: int) -> None:
        while self._waiting and now_ns - self._waiting[0] > self.window_ns:
            self._waiting.popleft()
            self.held += 1
