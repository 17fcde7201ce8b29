"""`companion run`: the live daemon.

One main loop owns everything that changes: it takes stamped input from the port's queue,
feeds the performer, ticks it every few milliseconds, switches presets, flushes the
recording and draws the status line. Signal handlers only set a flag (gunicorn's arbiter
rule); the loop then ends with nothing sounding: pending messages dropped, note-offs for every
note in the ledger, CC 123 on every channel used.

What can fail is built before the ports open (the models loaded and checked against the
preset: `Daemon(...)`, then `attach(inp, out)`), so a bad preset leaves nothing behind. While
playing, an error in handling one event or generating ahead drops that response (its pending
messages cancelled, its notes released), is told once, and the performance goes on. Sends
that start failing (a dead output) are told once, and again when they work again. When the
JACK server goes away (JackWatch), the daemon stops at once: the recording flushed, the ports
left alone (libjack crashes on a client whose server is gone), one sentence, exit code 2.
Ports connected by name (`--in/--out PORT` on JACK) are kept connected: when the peer goes
away the daemon plays on and says so, and connects again when a port of that name is back.
A flood of input is bounded (the port's queue, MAX_DRAIN a turn, the performer's note rate):
what is dropped is told once and counted on the status line.
"""

from __future__ import annotations

import gc
import json
import queue
import signal
import sys
import threading
import time
import traceback

from midi_companion import jack_watch, port_process, ports, presets
from midi_companion.armed import Armed
from midi_companion.engine import check_provider
from midi_companion.errors import CompanionError, MidiFileError, MidiPortError
from midi_companion.latency_meter import LatencyMeter
from midi_companion.outfiles import check_output
from midi_companion.performer import Performer, make_clock
from midi_companion.port_process import SEND_AHEAD_NS
from midi_companion.recorder import FLUSH_EVERY_S, Recorder
from midi_companion.scheduler import Scheduler, configure_realtime, freeze_heap, trim_heap

TICK_S = 0.002  # how often the performer generates ahead (it does nothing when idle)
STATUS_EVERY_S = 0.5
TRIM_EVERY_S = 10.0  # what the allocator holds free goes back to the system this often
MAX_TOLD_ERRORS = 100  # distinct errors told once each; beyond, only counted
MAX_DRAIN = 256  # messages handled per turn of the loop at most: a flood cannot starve tick()


class MidiSystemGone(MidiPortError):
    """The MIDI system (the JACK server) went away while playing."""


class Daemon:
    """One performance on a pair of ports. Built (models loaded) before the ports exist;
    `attach(inp, out)` starts sending, `run()` plays until `stopping` is set."""

    def __init__(
        self,
        preset,
        inp=None,
        out=None,
        *,
        clock_kind="internal",
        bpm=None,
        seed=None,
        record=None,
        quiet=False,
        log_json=False,
        now_ns=time.perf_counter_ns,
        status_stream=sys.stderr,
        stopping: threading.Event | None = None,
        provider: str = "auto",
        debug: bool = False,
    ):
        self.preset = preset
        self.inp = self.out = None
        self.watch = None
        self.links: list = []  # jack_watch.PeerLink, kept connected by name
        self.clock_kind = clock_kind
        self.bpm = preset.timing.bpm if bpm is None else bpm
        self.seed = seed
        self.provider = provider
        self.quiet, self.log_json, self.debug = quiet, log_json, debug
        self.now_ns = now_ns
        self.status_stream = status_stream
        self.stopping = stopping or threading.Event()
        self.errors = 0  # responses dropped after an error
        self._told: set[tuple[str, str]] = set()
        self._sends_failing = False
        self._status_drawn = False
        self._gone = False  # the MIDI system went away: leave the ports alone
        self._notes_dropped_before = 0  # note-ons dropped by presets switched away from
        self._flooding = False  # input was being dropped at the last status
        self._dropped_seen = 0
        self._handled = 0  # the number of the last input message handled (a port process's)
        self._arming: tuple | None = None  # what was last armed in the port process
        self.clock = make_clock(clock_kind, self.bpm, preset.timing.beats_per_bar, now_ns)
        if clock_kind == "internal":
            self.clock.start()
        self.recorder = Recorder(record, self.bpm) if record else None
        self.meter = LatencyMeter()  # lead note-on -> answer, for the status line
        # started by attach(): nothing is sent before there is a port to send it to
        self.scheduler = Scheduler(
            self._send, now_ns=now_ns, tolerance_ns=int(preset.timing.tolerance_ms * 1e6)
        )
        if clock_kind == "internal":  # where beat 0 fell (perf_counter_ns), so scripts and
            # tests on this machine can line up with our beats
            self.event("clock", bpm=self.bpm, beat0_ns=self.clock.time_at(0.0))
        try:
            self.performer = self._perform(preset)
        except BaseException:
            self.scheduler.stop()
            raise
        if inp is not None or out is not None:
            self.attach(inp, out)

    def attach(self, inp, out, watch=None, thread: bool = True, links=()) -> None:
        """Play on these ports from now on (`watch`: a jack_watch.JackWatch, or None). With
        `thread=False` the scheduler's thread is not started: the caller dispatches with
        `scheduler.run_pending(now)` (virtual time, as the fuzz tests do). `links`:
        jack_watch.PeerLink for each port connected by name, kept connected."""
        self.inp, self.out, self.watch = inp, out, watch
        self.links = list(links)
        if out.timed:
            self.scheduler.send_ahead(SEND_AHEAD_NS)
        if thread:
            self.scheduler.start()
        self._announce(self.preset, self.performer)

    # ---- output ------------------------------------------------------------------------
    def _send(self, msg, due_ns: int | None = None) -> None:
        """The scheduler's output: now, or at `due_ns` by an output that sends on time
        itself (port_process.ProcessOutput, handed each message a little ahead)."""
        now = self.now_ns()
        if due_ns is None:
            self.out.send(msg)
        else:
            self.out.send_at(due_ns, msg)
            now = max(now, due_ns)
        if msg[0] & 0xF0 == 0x90 and msg[2] > 0:
            self.meter.sent(now)
        if self.recorder is not None:
            self.recorder.companion(self.clock.beat_at(now), msg)

    def _perform(self, preset) -> Performer:
        performer = Performer(
            preset, self.scheduler, self.clock, seed=self.seed, provider=self.provider
        )
        freeze_heap()  # loaded and warm: no full collection walks it while playing
        if self.recorder is not None:
            self.recorder.names.update(
                {t.channel - 1: t.name for t in preset.tracks + preset.solo_tracks}
            )
        return performer

    def _announce(self, preset, performer) -> None:
        """Start playing `performer`: its start messages, the "preset" event (ready: ports
        open, models warm), and what the user should know about how it runs."""
        now = self.now_ns()  # all notes off and the programs, first
        self.scheduler.schedule_many([(now, m) for m in performer.start_messages()])
        self.event(
            "preset", name=preset.name, mode=preset.mode, provider=",".join(performer.providers)
        )
        for note in performer.provider_notes:  # info: why CUDA is not used
            self.event("provider", provider=",".join(performer.providers), why=note)
            if not self.quiet:
                self.say(f"execution provider: {note}")
        for conflict in {e.conflict for e in performer.engines if e.conflict}:
            self.say(f"warning: {conflict}", always=True)

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
        except Exception as err:  # its model is missing or broken: keep the current one
            what = str(err) if isinstance(err, CompanionError) else _one_line(err)
            self.event("program_change_failed", program=index, error=what)
            self.say(f"Program Change {index} ignored: {what}", always=True)
            if self.debug and not isinstance(err, CompanionError):
                traceback.print_exception(err, file=self.status_stream)
            return
        self._notes_dropped_before += self.performer.notes_dropped
        self.preset, self.performer = new, performer
        # What the old preset leaves in reference cycles was frozen with it (freeze_heap):
        # unfrozen, it is collected, then the heap frozen again (a Program Change already
        # pauses for the models to load; this adds one collection to that pause).
        gc.unfreeze()
        freeze_heap()
        self._announce(new, performer)

    # ---- loop --------------------------------------------------------------------------
    def run(self) -> int:
        last_flush = last_status = last_trim = time.monotonic()
        try:
            while not self.stopping.is_set():
                self.step(TICK_S)
                self._arm()
                self._check_sends()
                mono = time.monotonic()
                if self.recorder is not None and mono - last_flush >= FLUSH_EVERY_S:
                    self.recorder.flush_in_background()
                    last_flush = mono
                if mono - last_trim >= TRIM_EVERY_S:
                    trim_heap()
                    last_trim = mono
                if mono - last_status >= STATUS_EVERY_S:
                    self._check_input()
                    self._check_links()
                    self.status()
                    last_status = mono
        finally:
            self.shutdown()
        return 0

    def step(self, timeout: float) -> None:
        """One turn of the loop: what came in (waiting up to `timeout` s for it), the MIDI
        system checked, then what is due generated ahead. An error drops one response, not
        the set; only the MIDI system going away ends it."""
        try:
            self._drain(timeout)
            self._check_system()
            self.performer.tick(self.now_ns())
        except MidiSystemGone:
            raise
        except Exception as err:  # one hiccup drops one response, not the set
            self._hiccup(err)

    def _drain(self, timeout: float) -> None:
        try:
            item = self.inp.queue.get(timeout=timeout)
        except queue.Empty:
            return
        for n in range(1, MAX_DRAIN + 1):
            t_ns, msg = item[:2]
            # from a port process: the message's number, and when it answered the note
            answered = item[3] if len(item) > 3 else None
            if self.recorder is not None:
                self.recorder.player(self.clock.beat_at(t_ns), msg)
            if self.preset.harmonize and len(msg) == 3 and msg[0] & 0xF0 == 0x90 and msg[2]:
                self.meter.asked(t_ns)  # a lead note harmonize answers at once (while handled)
                if answered is not None:
                    self.meter.sent(answered)
            try:
                asked = self.performer.handle(t_ns, msg)
            finally:
                if len(item) > 2:
                    self._handled = item[2]
                    if answered is not None:  # what it sent early and we did not, it ends
                        self.out.handled(item[2])
            if asked is not None:  # Program Change: what follows goes to the new preset
                self.switch(asked.index)
            if n == MAX_DRAIN:  # the rest waits for the next turn, after tick()
                return
            try:
                item = self.inp.queue.get_nowait()
            except queue.Empty:
                return

    def _arm(self) -> None:
        """Hand harmonize's answers for the next lead note to the port process, when they
        changed (companion/armed.py); nothing where the daemon owns its input itself."""
        if not isinstance(self.inp, port_process.ProcessInput):
            return
        try:
            got = self.performer.armed(self.now_ns())
        except Exception as err:  # an answer not armed is an answer computed: played on
            self._hiccup(err)
            got = None
        ident = None if got is None else (self._handled, got[0], id(got[3]))
        if ident == self._arming:
            return
        self._arming = ident
        self.out.arm(None if got is None else Armed(self._handled, *got))

    def _check_system(self) -> None:
        if self.watch is not None and self.watch.gone.is_set():
            self._gone = True
            where = f"; the recording is in {self.recorder.path}" if self.recorder else ""
            raise MidiSystemGone(
                f"the JACK server went away while playing, so the companion "
                f"stopped{where}; start the server again, then companion run"
            )

    def _hiccup(self, err: Exception) -> None:
        """An error while handling an event or generating: drop that response (nothing left
        sounding), tell it once (the traceback with --debug), play on."""
        self.errors += 1
        self.performer.drop_response(self.now_ns())
        what = _one_line(err)
        key = (type(err).__name__, what)
        if key in self._told or len(self._told) >= MAX_TOLD_ERRORS:
            return
        self._told.add(key)
        self.event("error", error=type(err).__name__, message=what, action="response dropped")
        self.say(
            f"warning: a response was dropped after an error ({what}); playing on", always=True
        )
        if self.debug:
            traceback.print_exception(err, file=self.status_stream)

    @property
    def in_dropped(self) -> int:
        """Input dropped in a flood: messages that found the input queue full, and note-ons
        beyond the rate a player can play (Performer.NOTE_RATE)."""
        queued = getattr(self.inp, "dropped", 0)
        return queued + self._notes_dropped_before + self.performer.notes_dropped

    def _check_input(self) -> None:
        """Tell when input starts being dropped (a flood), once per flood."""
        dropped = self.in_dropped
        flooding, self._dropped_seen = dropped > self._dropped_seen, dropped
        if flooding and not self._flooding:
            self.event("input_dropped", port=self.inp.name, in_dropped=dropped)
            self.say(
                f"warning: a flood of input on {self.inp.name!r}: messages beyond what a "
                f"player can play are dropped ({dropped} so far; the status line counts them)",
                always=True,
            )
        self._flooding = flooding

    def _check_links(self) -> None:
        """Tell when a port connected by name loses its peer, and when it is back."""
        if self.watch is not None and self.watch.gone.is_set():
            return  # libjack must not be asked anything once its server is gone
        for link in self.links:
            change = link.check()
            side = "output" if link.outgoing else "input"
            if change == "lost":
                self.event("peer_lost", port=link.peer, side=side)
                self.say(
                    f"warning: the {side} {link.peer!r} went away; playing on, and "
                    f"connecting again when it is back",
                    always=True,
                )
            elif change == "back":
                self.event("peer_back", port=link.peer, side=side)
                self.say(f"the {side} {link.peer!r} is back: connected again", always=True)

    def _check_sends(self) -> None:
        """Tell when sends start failing (a dead output), and when they work again."""
        failing = self.scheduler.failing or self.out.failing
        if failing == self._sends_failing:
            return
        self._sends_failing = failing
        errors = self._sending()["send_errors"]
        if failing:
            err = self.scheduler.last_error or self.out.last_error
            what = _one_line(err) if err is not None else "unknown error"
            self.event("send_failing", port=self.out.name, error=what, send_errors=errors)
            self.say(
                f"warning: sending to {self.out.name!r} fails ({what}); what the "
                f"companion plays is lost until it works again",
                always=True,
            )
        else:
            self.event("send_recovered", port=self.out.name, send_errors=errors)
            self.say(
                f"sending to {self.out.name!r} works again ({errors} message(s) lost in all)",
                always=True,
            )

    def shutdown(self) -> None:
        """Nothing left sounding, the recording on disk, ports closed."""
        try:
            self.performer.stop_sound(self.now_ns())
        finally:
            self.close()

    def close(self) -> None:
        """The scheduler stopped, the recording flushed, the ports closed (or, when the MIDI
        system is gone, abandoned: closing them would crash libjack)."""
        self.scheduler.stop()
        failed = None
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except MidiFileError as err:  # the ports still close; then the error is told
                failed = err
        for port in (self.out, self.inp):
            if port is None:
                continue
            if self._gone and hasattr(port, "abandon"):
                port.abandon()
            else:
                port.close()
        if self.watch is not None:
            self.watch.close()
        self.event("stopped", **self._sending(), errors=self.errors, in_dropped=self.in_dropped)
        if self._status_drawn and not self.log_json:
            print(file=self.status_stream)
            self._status_drawn = False
        if failed is not None:
            raise failed

    # ---- reporting ---------------------------------------------------------------------
    def _sending(self) -> dict:
        """The scheduler's counters; where the output sends on time itself, its own send
        errors added and its |send - due| instead of the hand-over's."""
        stats = self.scheduler.summary()
        report = getattr(self.out, "report", None) or {}
        stats["send_errors"] += report.get("send_errors", 0)
        for k in ("lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms"):
            if k in report:
                stats[k] = report[k]
        return stats

    def status(self) -> None:
        p50, p99 = self.performer.inference_ms()
        stats = self._sending()
        fields = {
            "in": self.inp.name,
            "out": self.out.name,
            "provider": ",".join(self.performer.providers),
            "bpm": round(self.clock.bpm, 1),
            "clock": self.clock_kind,
            "mode": self.preset.mode,
            "preset": self.preset.name,
            "notes_in": self.performer.notes_in,
            "notes_out": sum(o.notes_out for o in self.performer.outputs),
            "infer_p50_ms": round(p50, 2),
            "infer_p99_ms": round(p99, 2),
            "late_dropped": stats["late_dropped"],
            "late_on_arrival": stats["late_on_arrival"],
            "in_dropped": self.in_dropped,
            "send_errors": stats["send_errors"],
            "errors": self.errors,
        }
        if self.preset.harmonize:
            lat = self.meter.summary(self.now_ns())
            h = self.performer.harmonized
            fields.update(
                answer_p50_ms=round(lat["p50_ms"], 2),
                answer_p99_ms=round(lat["p99_ms"], 2),
                answered=lat["n"],
                held=lat["held"],
                speculation_hits=h["hits"],
                speculation_misses=h["misses"],
                lead_struck=h["struck_notes"],
                lead_held=h["held_notes"],
            )
        if self.log_json:
            self.event("status", **fields)
        elif not self.quiet:
            line = (
                f"{fields['preset']} [{fields['mode']}] {fields['bpm']} bpm "
                f"({fields['clock']}) | in {fields['notes_in']} out {fields['notes_out']} | "
                f"infer {fields['infer_p50_ms']}/{fields['infer_p99_ms']} ms p50/p99 | "
            )
            if "answer_p50_ms" in fields:  # harmonize: what the player hears, last minute
                line += f"answer {fields['answer_p50_ms']}/{fields['answer_p99_ms']} ms | "
            line += f"late {fields['late_dropped']} | {fields['provider']}"
            if fields["send_errors"]:
                line += (
                    f" | SEND FAILING ({fields['send_errors']})"
                    if self._sends_failing
                    else f" | send errors {fields['send_errors']}"
                )
            if fields["in_dropped"]:
                line += f" | in dropped {fields['in_dropped']}"
            if fields["errors"]:
                line += f" | dropped after errors {fields['errors']}"
            print("\r" + line[:160].ljust(160), end="", file=self.status_stream, flush=True)
            self._status_drawn = True

    def say(self, text: str, always: bool = False) -> None:
        """One line for the user on the status stream, below the status line (none with
        --log-json, whose events carry it; info only without --quiet, warnings `always`)."""
        if self.log_json or (self.quiet and not always):
            return
        lead = "\n" if self._status_drawn else ""
        print(f"{lead}midi-companion: {text}", file=self.status_stream, flush=True)
        self._status_drawn = False

    def event(self, kind: str, **fields) -> None:
        if self.log_json:
            print(json.dumps({"event": kind, "t": time.time(), **fields}), flush=True)


def _one_line(err: BaseException) -> str:
    """`Type: message`, on one line (the first line of the message, shortened)."""
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(args) -> int:
    """Entry point of `companion run`."""
    # From here on a signal only asks to stop: one during start-up (the models loading, the
    # ports opening) must not kill the process with its JACK clients still open; the daemon
    # then ends as soon as it can, cleanly, with exit code 0.
    stopping = threading.Event()
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: stopping.set())
    preset = presets.load(args.preset)
    if args.record:  # before any port opens: a take must never be lost to a bad path
        check_output(args.record, "--record")
    check_provider(args.provider)  # --provider cuda without CUDA: before any model loads
    backend, why = ports.choose_backend(args.backend)
    configure_realtime()
    debug = getattr(args, "debug", False)
    # The sending process starts up while the models load; its port opens after them.
    out = (
        port_process.ProcessOutput(args.out, backend, debug, with_input=True, input_name=args.inp)
        if port_process.wanted()
        else None
    )
    try:
        # The models are loaded and checked against the preset before any port opens: a
        # preset whose model does not fit ends here, leaving no port and no thread behind.
        daemon = Daemon(
            preset,
            clock_kind=args.clock,
            bpm=args.bpm,
            seed=args.seed,
            record=args.record,
            quiet=args.quiet,
            log_json=args.log_json,
            stopping=stopping,
            provider=args.provider,
            debug=debug,
        )
    except BaseException:
        if out is not None:
            out.close()
        raise
    if stopping.is_set():  # asked to stop while the models loaded: no port opens
        if out is not None:
            out.close()
        daemon.close()
        return 0
    try:
        if out is not None:  # the port process opens both
            inp = out.open().input
        else:
            inp = ports.open_input(args.inp, backend=backend)
            try:
                out = ports.open_output(args.out, backend)
            except BaseException:
                inp.close()
                raise
    except BaseException:
        if out is not None:
            out.close()
        daemon.close()
        raise
    system = ports.system_name(backend)
    own = isinstance(out, port_process.ProcessOutput)
    ports_in = "a process of their own" if own else "the daemon"
    daemon.event("backend", backend=backend, system=system, why=why, ports=ports_in)
    if not args.quiet and not args.log_json:
        print(
            f"midi-companion: listening on {inp.name!r}, playing on {out.name!r} through "
            f"the {system} ({why}; preset {preset.name}, {preset.mode}); Ctrl-C to stop",
            file=sys.stderr,
        )
    watch = jack_watch.JackWatch.start(verbose=daemon.debug) if backend == "jack" else None
    links = []
    if watch is not None:  # ports connected by name stay connected by name
        for asked, port, own, outgoing in (
            (args.inp, inp, ports.VIRTUAL_INPUT, False),
            (args.out, out, ports.VIRTUAL_OUTPUT, True),
        ):
            link = jack_watch.PeerLink.find(watch, port.name, own, outgoing) if asked else None
            links += [link] if link else []
    daemon.attach(inp, out, watch, links=links)
    return daemon.run()
