"""How late does the Scheduler send while another thread runs pure Python?

Schedules N control changes at a fixed spacing and measures |send time - due time| in the
output callback (what a MIDI port would see), for a few set-ups:

- idle: nothing else runs;
- busy: a second thread burns CPU in pure Python (the Engine/mode loop between onnxruntime
  calls);

each with CPython's default GIL switch interval (5 ms) and with the one configure_realtime()
sets (0.5 ms), and with and without the final spin (default 0.25 ms).

Usage: python benchmarks/scheduler_jitter.py [--n 2000] [--spacing-ms 2]
       [--switch-ms 5 0.5 0.1] [--spin-ms 1 0.25 0]
A report, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from midi_companion.scheduler import (
    DEFAULT_SPIN_NS,
    DEFAULT_TOLERANCE_NS,
    REALTIME_SWITCH_INTERVAL_S,
    Scheduler,
)
from midi_companion.stats import percentiles

LEAD_NS = 50_000_000  # the first message is due this far after scheduling


def burn(stop: threading.Event) -> None:
    """Pure-Python work that holds the GIL until CPython makes it switch."""
    while not stop.is_set():
        sum(i * i for i in range(2_000))


def measure(n: int, spacing_ns: int, busy: bool, spin_ns: int) -> list[int]:
    """Lateness (ns) of each of n messages, measured in the send callback."""
    stamps: list[int] = []
    done = threading.Event()

    def send(msg) -> None:
        stamps.append(time.perf_counter_ns())
        if len(stamps) == n:
            done.set()

    stop = threading.Event()
    burner = threading.Thread(target=burn, args=(stop,), daemon=True)
    if busy:
        burner.start()
    sched = Scheduler(send, spin_ns=spin_ns).start()
    t0 = time.perf_counter_ns() + LEAD_NS
    dues = [t0 + k * spacing_ns for k in range(n)]
    sched.schedule_many((due, (0xB0, 1, k % 128)) for k, due in enumerate(dues))
    done.wait(n * spacing_ns / 1e9 + 10)
    stop.set()
    sched.stop()
    if busy:
        burner.join()
    return [abs(s - d) for s, d in zip(stamps, dues)]


def report(label: str, lateness: list[int]) -> str:
    p50, p99 = percentiles(lateness, 50, 99)
    over = sum(1 for x in lateness if x > DEFAULT_TOLERANCE_NS)
    return f"{label:<50} {p50 / 1e6:8.3f} {p99 / 1e6:8.3f} {max(lateness) / 1e6:8.3f} {over:>6d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per run (default 2000)")
    parser.add_argument("--spacing-ms", type=float, default=2.0, help="between messages (2)")
    parser.add_argument(
        "--switch-ms",
        type=float,
        nargs="+",
        help="GIL switch intervals to try (default: CPython's, then the one "
        "configure_realtime() sets)",
    )
    parser.add_argument(
        "--spin-ms",
        type=float,
        nargs="+",
        default=[DEFAULT_SPIN_NS / 1e6, 0.0],
        help="spins to try (default: the Scheduler's, then none)",
    )
    args = parser.parse_args(argv)
    spacing = round(args.spacing_ms * 1e6)
    default_interval = sys.getswitchinterval()
    switches = args.switch_ms or [default_interval * 1e3, REALTIME_SWITCH_INTERVAL_S * 1e3]
    print(
        f"{args.n} messages every {args.spacing_ms:g} ms on {os.cpu_count()} CPUs; "
        f"|lateness| in ms; '>tol' = later than the {DEFAULT_TOLERANCE_NS / 1e6:g} ms "
        f"note-on tolerance"
    )
    print(f"{'set-up':<50} {'p50':>8} {'p99':>8} {'max':>8} {'>tol':>6}")
    for busy in (False, True):
        for switch_ms in switches:
            sys.setswitchinterval(switch_ms / 1e3)
            for spin_ms in args.spin_ms:
                label = (
                    f"{'busy' if busy else 'idle'}, switch {switch_ms:g} ms, spin {spin_ms:g} ms"
                )
                lateness = measure(args.n, spacing, busy, round(spin_ms * 1e6))
                print(report(label, lateness), flush=True)
    sys.setswitchinterval(default_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
