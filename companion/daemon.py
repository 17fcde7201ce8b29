"""`companion run`: the live daemon.

One main loop owns everything that changes: it takes stamped input from the port's queue,
feeds the performer, ticks it every few milliseconds, switches presets, flushes the
recording and draws the status line. Signal handlers only set a flag (gunicorn's arbiter
rule); the loop then ends with nothing sounding: pending messages dropped, note-offs for every
note in the ledger, CC 123 on every channel used.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time

from companion import ports, presets
from companion.errors import CompanionError, MidiFileError
from companion.outfiles import check_output
from companion.performer import Performer, make_clock
from companion.recorder import FLUSH_EVERY_S, Recorder
from companion.scheduler import Scheduler, configure_realtime, freeze_heap

TICK_S = 0.002  # how often the performer generates ahead (it does nothing when idle)
STATUS_EVERY_S = 0.5


class Daemon:
    def __init__(self, preset, inp, out, *, clock_kind="internal", bpm=None, seed=None,
                 record=None, quiet=False, log_json=False, now_ns=time.perf_counter_ns,
                 status_stream=sys.stderr, stopping: threading.Event | None = None):
        self.preset = preset
        self.inp, self.out = inp, out
        self.clock_kind = clock_kind
        self.bpm = preset.timing.bpm if bpm is None else bpm
        self.seed = seed
        self.quiet, self.log_json = quiet, log_json
        self.now_ns = now_ns
        self.status_stream = status_stream
        self.stopping = stopping or threading.Event()
        self.clock = make_clock(clock_kind, self.bpm, preset.timing.beats_per_bar, now_ns)
        if clock_kind == "internal":
            self.clock.start()
        self.recorder = Recorder(record, self.bpm) if record else None
        self.scheduler = Scheduler(self._send, now_ns=now_ns,
                                   tolerance_ns=int(preset.timing.tolerance_ms * 1e6)).start()
        if clock_kind == "internal":  # where beat 0 fell (perf_counter_ns), so scripts and
            # tests on this machine can line up with our beats
            self.event("clock", bpm=self.bpm, beat0_ns=self.clock.time_at(0.0))
        self.performer = self._perform(preset)

    # ---- output ------------------------------------------------------------------------
    def _send(self, msg) -> None:
        self.out.send(msg)
        if self.recorder is not None:
            self.recorder.companion(self.clock.beat_at(self.now_ns()), msg)

    def _perform(self, preset) -> Performer:
        performer = Performer(preset, self.scheduler, self.clock, seed=self.seed)
        freeze_heap()  # loaded and warm: no full collection walks it while playing
        now = self.now_ns()
        self.scheduler.schedule_many([(now, m) for m in performer.start_messages()])
        if self.recorder is not None:
            self.recorder.names.update({t.channel - 1: t.name for t in
                                        preset.tracks + preset.solo_tracks})
        self.event("preset", name=preset.name, mode=preset.mode,
                   provider=",".join(performer.providers))
        for conflict in {e.conflict for e in performer.engines if e.conflict}:
            print(f"midi-companion: warning: {conflict}", file=sys.stderr)
        return performer

    def switch(self, index: int) -> None:
        """Program Change N: the Nth preset (sorted by name), with no stuck notes."""
        names = presets.available()
        if not 0 <= index < len(names):
            self.event("program_change_ignored", program=index, presets=len(names))
            return
        self.performer.stop_sound(self.now_ns())
        try:
            new = presets.load(str(names[index]))
            performer = self._perform(new)
        except CompanionError as err:  # its model is missing or broken: keep the current one
            self.event("program_change_failed", program=index, error=str(err))
            if not self.log_json:
                print(f"\nmidi-companion: Program Change {index} ignored: {err}",
                      file=sys.stderr)
            return
        self.preset, self.performer = new, performer

    # ---- loop --------------------------------------------------------------------------
    def run(self) -> int:
        last_flush = last_status = time.monotonic()
        try:
            while not self.stopping.is_set():
                self._drain(TICK_S)
                now = self.now_ns()
                self.performer.tick(now)
                pc = self.performer.counters.program_change
                if pc is not None:
                    self.performer.counters.program_change = None
                    self.switch(pc)
                mono = time.monotonic()
                if self.recorder is not None and mono - last_flush >= FLUSH_EVERY_S:
                    self.recorder.flush_in_background()
                    last_flush = mono
                if mono - last_status >= STATUS_EVERY_S:
                    self.status()
                    last_status = mono
        finally:
            self.shutdown()
        return 0

    def _drain(self, timeout: float) -> None:
        try:
            item = self.inp.queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            t_ns, msg = item
            if self.recorder is not None:
                self.recorder.player(self.clock.beat_at(t_ns), msg)
            self.performer.handle(t_ns, msg)
            try:
                item = self.inp.queue.get_nowait()
            except queue.Empty:
                return

    def shutdown(self) -> None:
        """Nothing left sounding, the recording on disk, ports closed."""
        self.performer.stop_sound(self.now_ns())
        self.scheduler.stop()
        failed = None
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except MidiFileError as err:  # the ports still close; then the error is told
                failed = err
        self.out.close()
        self.inp.close()
        self.event("stopped", **self.scheduler.summary())
        if not self.quiet and not self.log_json:
            print(file=self.status_stream)
        if failed is not None:
            raise failed

    # ---- reporting ---------------------------------------------------------------------
    def status(self) -> None:
        p50, p99 = self.performer.inference_ms()
        stats = self.scheduler.summary()
        fields = {
            "in": self.inp.name, "out": self.out.name,
            "provider": ",".join(self.performer.providers),
            "bpm": round(self.clock.bpm, 1), "clock": self.clock_kind,
            "mode": self.preset.mode, "preset": self.preset.name,
            "notes_in": self.performer.counters.notes_in,
            "notes_out": sum(o.notes_out for o in self._outputs()),
            "infer_p50_ms": round(p50, 2), "infer_p99_ms": round(p99, 2),
            "late_dropped": stats["late_dropped"],
        }
        if self.log_json:
            self.event("status", **fields)
        elif not self.quiet:
            line = (f"{fields['preset']} [{fields['mode']}] {fields['bpm']} bpm "
                    f"({fields['clock']}) | in {fields['notes_in']} out {fields['notes_out']} | "
                    f"infer {fields['infer_p50_ms']}/{fields['infer_p99_ms']} ms p50/p99 | "
                    f"late {fields['late_dropped']} | {fields['provider']}")
            print("\r" + line[:160].ljust(160), end="", file=self.status_stream, flush=True)

    def _outputs(self):
        return getattr(self.performer, "outputs", [self.performer.output])

    def event(self, kind: str, **fields) -> None:
        if self.log_json:
            print(json.dumps({"event": kind, "t": time.time(), **fields}), flush=True)


def main(args) -> int:
    """Entry point of `companion run`."""
    preset = presets.load(args.preset)
    if args.record:  # before any port opens: a take must never be lost to a bad path
        check_output(args.record, "--record")
    configure_realtime()
    # From here on a signal only asks to stop: one during start-up (the "preset" event is
    # printed before run()) must not kill the process with its JACK clients still open.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    inp = ports.open_input(args.inp, backend=args.backend)
    try:
        out = ports.open_output(args.out, backend=args.backend)
    except BaseException:
        inp.close()
        raise
    if not args.quiet and not args.log_json:
        print(f"midi-companion: listening on {inp.name!r}, playing on {out.name!r} "
              f"(preset {preset.name}, {preset.mode}); Ctrl-C to stop", file=sys.stderr)
    daemon = Daemon(preset, inp, out, clock_kind=args.clock, bpm=args.bpm, seed=args.seed,
                    record=args.record, quiet=args.quiet, log_json=args.log_json,
                    stopping=stopping)
    return daemon.run()
