"""`companion bench`: how close to the physical limit the companion plays.

Every figure comes from one run on one private JACK server (dummy driver, so no sound card
is needed and nothing else shares it), with the daemon started exactly as a user starts it
(`companion run PRESET --backend jack`) and separate JACK clients playing into it and
listening to it:

- floor: a plain python-rtmidi echo client in its own process (note in -> the same note
  out, no model): the best any Python companion can do on this server;
- harmonize: lead note-on in -> first harmony note-on out (the `chorale` preset);
- timing: |arrival - intended time| of scheduled output (continue and accompany);
- engine: per-step inference of every shipped model, onnxruntime vs torch eager (when torch
  is importable), and the real-time factor on one thread;
- start-up: process start -> ports open and model warm, per shipped preset;
- memory: peak RSS of the daemon over a session of continuous play (10 minutes; 30 s with
  --smoke), which also counts late-dropped notes at 120 BPM with 16th-note accompaniment.

It writes docs/BENCHMARKS.md (the generated part; a hand-written "## Analysis" section of
the existing file is kept) and the raw numbers as JSON. A report, never a timed test.

The client side (Keyboard, Listener, DaemonProcess) is also what tests/test_e2e.py drives.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from companion import presets
from companion.engine import check_provider
from companion.errors import CompanionError
from companion.ports import (
    CLIENT_NAME,
    VIRTUAL_INPUT,
    VIRTUAL_OUTPUT,
    close_client,
    jack_server_running,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MS = 1_000_000
ECHO = "companion-echo"  # the floor's echo client


# ---- a private JACK server ------------------------------------------------------------------


JACK_ENV = ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")  # what JackServer sets here


class JackServer:
    """`jackd [-S] --no-realtime -d dummy -r RATE -p PERIOD` under a unique server name, which
    this process (and every child it starts) then uses through JACK_DEFAULT_SERVER.

    Synchronous mode (-S, the default here) makes the server wait for late clients: without
    realtime priority on a loaded CPU, the default asynchronous mode skips a client that
    misses a cycle, and that cycle's MIDI to it is lost (1-5% of messages at load 6 on 2
    cores, 0 with -S). A late cycle then shows as latency instead, which is what we measure."""

    def __init__(self, period: int = 64, rate: int = 48000, sync: bool = True,
                 start_timeout_s: float = 15.0, log: Path | None = None,
                 prefix: str = "companion-bench"):
        self.period, self.rate, self.sync = period, rate, sync
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._timeout = start_timeout_s
        self._saved = {k: os.environ.get(k) for k in JACK_ENV}
        self.proc: subprocess.Popen | None = None
        self.log_path = log  # jackd's output goes here (a temporary file when None)
        self.log = open(log, "w+b") if log is not None else tempfile.TemporaryFile()

    def __enter__(self) -> JackServer:
        jackd = shutil.which("jackd")
        if jackd is None:
            raise CompanionError("companion bench needs jackd (apt install jackd2): it measures "
                                 "through a private JACK server")
        env = {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1",
               "JACK_NO_START_SERVER": "1"}
        self.proc = subprocess.Popen(
            [jackd, *(["-S"] if self.sync else []), "--no-realtime", "-d", "dummy",
             "-r", str(self.rate), "-p", str(self.period)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        os.environ["JACK_NO_START_SERVER"] = "1"  # a client never starts a server of its own
        deadline = time.monotonic() + self._timeout
        while not _jack_reachable():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                self.log.seek(0)
                raise CompanionError(f"jackd did not start: {self.log.read().decode()[-500:]}")
            time.sleep(0.1)  # polling a server start-up, not timing anything
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _jack_reachable() -> bool:
    return jack_server_running()


# ---- the client side: a keyboard, a listener, the daemon as a user starts it ---------------


def sleep_until(t_ns: int, spin_ns: int = 1_000_000) -> None:
    """Wait until perf_counter_ns() >= t_ns: sleep, then spin the last stretch."""
    delay = t_ns - time.perf_counter_ns() - spin_ns
    if delay > 0:
        time.sleep(delay / 1e9)
    while time.perf_counter_ns() < t_ns:
        pass


def _port(client, port: str, owner: str = CLIENT_NAME) -> int:
    """Index of port `port` of the JACK client(s) named `owner`, "owner-01", ... among what
    `client` can connect to (the daemon's by default; our own clients are named apart)."""
    names = client.get_ports()
    hits = [i for i, n in enumerate(names)
            if n.endswith(":" + port) and n.split(":", 1)[0].startswith(owner)]
    if len(hits) != 1:
        raise CompanionError(f"expected one port {owner}:{port} on the JACK server, found "
                             f"{[names[i] for i in hits]} among {names}")
    return hits[0]


class Keyboard:
    """A JACK MIDI client playing into the daemon's input (what the DAW's keyboard track is).

    `send` is thread-safe (a clock thread and a note player may share it) and returns the
    perf_counter_ns stamp taken just before the message went to JACK."""

    def __init__(self, client_name: str = "companion-keyboard", target: str = VIRTUAL_INPUT,
                 owner: str = CLIENT_NAME):
        import rtmidi

        self._out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, client_name)
        self._out.open_port(_port(self._out, target, owner), "out")
        self._lock = threading.Lock()

    def send(self, msg: Iterable[int]) -> int:
        msg = list(msg)
        with self._lock:
            t = time.perf_counter_ns()
            self._out.send_message(msg)
        return t

    def play(self, events: Iterable[tuple[int, tuple[int, ...]]]) -> list[int]:
        """Send each (due_ns, msg) at its time; returns the send stamps."""
        stamps = []
        for due, msg in sorted(events, key=lambda e: e[0]):
            sleep_until(due)
            stamps.append(self.send(msg))
        return stamps

    def close(self) -> None:
        close_client(self._out)


class Listener:
    """A JACK MIDI client on the daemon's output: every message, stamped on arrival
    (perf_counter_ns in the JACK callback), in `heard`."""

    def __init__(self, client_name: str = "companion-listener", source: str = VIRTUAL_OUTPUT,
                 owner: str = CLIENT_NAME):
        import rtmidi

        self.heard: list[tuple[int, tuple[int, ...]]] = []
        self._cond = threading.Condition()
        self._in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, client_name)
        self._in.ignore_types(sysex=True, timing=True, active_sense=True)
        self._in.set_callback(self._on_midi)
        self._in.open_port(_port(self._in, source, owner), "in")

    def _on_midi(self, event, data=None) -> None:
        t = time.perf_counter_ns()
        msg = tuple(event[0])
        with self._cond:
            self.heard.append((t, msg))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[int, tuple[int, ...]], bool], timeout: float,
                 start: int = 0) -> tuple[int, tuple[int, ...]] | None:
        """The first (t_ns, msg) at index >= `start` of `heard` matching `pred`, waiting up
        to `timeout` seconds; None when none came."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.heard):
                    if pred(*self.heard[i]):
                        return self.heard[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def since(self, t_ns: int) -> list[tuple[int, tuple[int, ...]]]:
        with self._cond:
            return [(t, m) for t, m in self.heard if t >= t_ns]

    def close(self) -> None:
        self._in.cancel_callback()
        close_client(self._in)


def is_note_on(msg, channel: int | None = None) -> bool:
    """A note-on with velocity > 0 (on 0-based `channel` when given)."""
    return (len(msg) == 3 and msg[0] & 0xF0 == 0x90 and msg[2] > 0
            and (channel is None or msg[0] & 0x0F == channel))


def is_note_off(msg) -> bool:
    return len(msg) == 3 and (msg[0] & 0xF0 == 0x80 or (msg[0] & 0xF0 == 0x90 and msg[2] == 0))


def pair_notes(heard: Iterable[tuple[int, tuple[int, ...]]]):
    """Pair note-ons with note-offs: (notes, hanging). notes: (t_on, t_off, ch, pitch, vel);
    hanging: (t_on, ch, pitch, vel) of note-ons with no note-off after them (a second note-on
    of a sounding key leaves the first hanging: the ledger must never send one)."""
    open_: dict[tuple[int, int], tuple[int, int]] = {}
    notes, hanging = [], []
    for t, msg in heard:
        key = (msg[0] & 0x0F, msg[1]) if len(msg) == 3 else None
        if is_note_on(msg):
            if key in open_:
                hanging.append((open_[key][0], *key, open_[key][1]))
            open_[key] = (t, msg[2])
        elif is_note_off(msg) and key in open_:
            t_on, vel = open_.pop(key)
            notes.append((t_on, t, *key, vel))
    hanging += [(t, ch, p, v) for (ch, p), (t, v) in open_.items()]
    return sorted(notes), sorted(hanging)


class DaemonProcess:
    """`python -m companion run PRESET --backend jack --quiet --log-json ARGS...` as a
    subprocess, with its JSON events collected as they are printed.

    `ready()` waits for the "preset" event (ports open, model warm); with the internal clock
    the "clock" event before it says where beat 0 fell, so `time_at(beat)` lines the client
    up with the daemon's beats (perf_counter_ns is the system's monotonic clock)."""

    def __init__(self, preset: str | os.PathLike, *args: object, cwd: str | None = None):
        self.stderr = tempfile.TemporaryFile()
        self.events: list[tuple[int, dict]] = []
        self._cond = threading.Condition()
        self.started_ns = time.perf_counter_ns()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "companion", "run", str(preset), "--backend", "jack",
             "--quiet", "--log-json", *map(str, args)],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, text=True,
            cwd=cwd)
        self._reader = threading.Thread(target=self._read, name="daemon-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t = time.perf_counter_ns()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append((t, event))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_event(self, kind: str, timeout: float = 60.0, start: int = 0,
                   **fields) -> tuple[int, dict]:
        """The first event `kind` (with `fields` equal) at index >= `start`, and when it was
        read; RuntimeError with the daemon's stderr when it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.events):
                    t, ev = self.events[i]
                    if ev.get("event") == kind and all(ev.get(k) == v for k, v in fields.items()):
                        return t, ev
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise RuntimeError(f"no {kind!r} event from the daemon within {timeout} s "
                                       f"(exit code {self.proc.poll()}):\n{self.error_text()}")
                self._cond.wait(min(left, 0.2))

    def ready(self, timeout: float = 120.0) -> dict:
        """Wait until the ports are open and the model warm; the "preset" event."""
        return self.wait_event("preset", timeout)[1]

    def clock(self) -> dict:
        return self.wait_event("clock", 0.0)[1]

    def time_at(self, beat: float) -> int:
        """When the daemon's internal clock reaches `beat` (perf_counter_ns)."""
        c = self.clock()
        return c["beat0_ns"] + round(beat * 60e9 / c["bpm"])

    def beat_at(self, t_ns: int) -> float:
        c = self.clock()
        return (t_ns - c["beat0_ns"]) * c["bpm"] / 60e9

    def error_text(self, tail: int = 3000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-tail:]

    def signal(self, sig: int) -> int:
        t = time.perf_counter_ns()
        self.proc.send_signal(sig)
        return t

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; the exit code (SIGKILL after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the daemon did not stop within {timeout} s of SIGTERM:\n"
                               f"{self.error_text()}") from None
        finally:
            self._reader.join(timeout=5)

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the running daemon (Linux), in MB."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": load,
            "python": platform.python_version(), "platform": platform.platform()}


def model_grid(path: str | os.PathLike) -> float:
    """The time grid (beats) a model's notes fall on: its representation's step."""
    from companion.modelfile import load

    rep = load(path).representation
    grid = getattr(rep, "grid", None) or getattr(rep.params, "grid", None)
    if not grid:
        raise CompanionError(f"{path}: its representation ({rep.name}) has no time grid")
    return float(grid)


# ---- presets to measure (and to test with) ------------------------------------------------------


def _toml(data: dict) -> str:
    """Enough TOML for a preset: scalars, arrays of scalars, tables, arrays of tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"[{key}]", value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables += [(f"[[{key}]]", t) for t in value]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for head, table in tables:
        lines += ["", head, *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def preset_copy(base: str, out: Path, models: dict[str, Path] | None = None,
                zoo: Path | None = None, **changes) -> Path:
    """The shipped preset `base` written to `out` with changes: its models from `models`
    ({"model": path, "solo_model": path}), else from the folder `zoo` (same names), else as
    shipped; `timing={...}` merged into [timing]; other keys replace the preset's."""
    data = tomllib.loads((presets.presets_dir() / f"{base}.toml").read_text(encoding="utf-8"))
    for key in ("model", "solo_model"):
        if models and key in models:
            data[key] = str(Path(models[key]).resolve())
        elif zoo is not None and key in data and not data[key].endswith(".onnx"):
            data[key] = str((Path(zoo) / f"{data[key]}.onnx").resolve())
    timing = changes.pop("timing", {})
    data.update(changes)
    data["timing"] = {**data.get("timing", {}), **timing}
    out.write_text(_toml(data), encoding="utf-8")
    return out


def playable_presets(zoo: Path) -> dict[str, Path]:
    """Shipped preset name -> the model files it needs, for the presets whose models are all
    in `zoo`."""
    found = {}
    for path in presets.available():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        names = [data[k] for k in ("model", "solo_model") if k in data]
        files = [Path(zoo) / f"{n}.onnx" for n in names]
        if all(f.is_file() for f in files):
            found[path.stem] = files
    return found


# ---- statistics ---------------------------------------------------------------------------------


def summary_ms(values_ns: list[int]) -> dict:
    """n, p50, p99, max and mean in milliseconds (nearest-rank percentiles)."""
    v = sorted(values_ns)
    if not v:
        return {"n": 0}

    def pct(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))] / MS

    return {"n": len(v), "p50": pct(50), "p99": pct(99), "max": v[-1] / MS,
            "mean": sum(v) / len(v) / MS}


def grid_errors(stamps: Iterable[int], beat_at: Callable[[int], float],
                time_at: Callable[[float], int], grid: float) -> list[int]:
    """|t - nearest grid line| for each stamp, with the grid in beats of the given clock."""
    return [abs(t - time_at(round(beat_at(t) / grid) * grid)) for t in stamps]


def melody(n: int, low: int = 62, high: int = 79, seed: int = 1) -> list[int]:
    """A stepwise random melody with no repeated note (a soprano line)."""
    rng = random.Random(seed)
    out, p = [], (low + high) // 2
    for _ in range(n):
        q = min(high, max(low, p + rng.choice((-3, -2, -1, 1, 2, 3))))
        p = q if q != p else (q - 1 if q > low else q + 1)
        out.append(p)
    return out


def _log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# ---- floor: a plain python-rtmidi echo -----------------------------------------------------------


def echo_client() -> None:
    """The floor's echo (its own process): every message in goes straight back out, from
    python-rtmidi's callback. Runs until its stdin closes."""
    import rtmidi

    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, ECHO)
    out.open_virtual_port("out")
    inp = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, ECHO)
    inp.set_callback(lambda event, data=None: out.send_message(event[0]))
    inp.open_virtual_port("in")
    print("ready", flush=True)
    sys.stdin.read()
    inp.cancel_callback()
    close_client(inp)
    close_client(out)


def measure_floor(notes: int) -> dict:
    """Round trip note-on out -> the echo's note-on back, over `notes` notes."""
    echo = subprocess.Popen(
        [sys.executable, "-c", "from companion.bench import echo_client; echo_client()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if echo.stdout.readline().strip() != "ready":
            raise CompanionError("the echo client did not start")
        keyboard = Keyboard("bench-keyboard", "in", owner=ECHO)
        listener = Listener("bench-listener", "out", owner=ECHO)
        rng = random.Random(0)
        rtts = []
        for i in range(notes):
            pitch = 36 + i % 60
            mark = len(listener.heard)
            t = keyboard.send((0x90, pitch, 64))
            got = listener.wait_for(lambda _, m, p=pitch: m == (0x90, p, 64), 1.0, mark)
            if got is not None:
                rtts.append(got[0] - t)
            keyboard.send((0x80, pitch, 0))
            time.sleep(rng.uniform(0.002, 0.006))  # off the JACK period's phase
        keyboard.close()
        listener.close()
    finally:
        echo.stdin.close()
        echo.wait(timeout=10)
    return {"notes": notes, "lost": notes - len(rtts), "round_trip_ms": summary_ms(rtts)}


# ---- the daemon as played -----------------------------------------------------------------------


def _session(preset: Path, *args: object):
    daemon = DaemonProcess(preset, "--seed", "1", *args)
    try:
        daemon.ready()
        keyboard, listener = Keyboard("bench-keyboard"), Listener("bench-listener")
    except BaseException:
        daemon.__exit__()
        raise
    return daemon, keyboard, listener


def _finish(daemon: DaemonProcess, keyboard: Keyboard, listener: Listener) -> dict:
    """Stop the daemon (SIGTERM); its last "stopped" event (scheduler counters)."""
    n = len(daemon.events)
    try:
        code = daemon.stop()
        if code != 0:
            raise CompanionError(f"the daemon exited with {code}: {daemon.error_text()}")
        return daemon.wait_event("stopped", 5.0, start=n)[1]
    finally:
        keyboard.close()
        listener.close()
        daemon.__exit__()


def measure_harmonize(preset: Path, notes: int, bpm: float, provider: str = "auto") -> dict:
    """Lead note-on sent -> first harmony note-on back. Each lead note falls 0.4 of a grid
    step after a grid line (still that step), so an answer is told apart from the step
    committed ahead for the grid line; an answer must come 10 ms before the next grid line."""
    p = presets.load(str(preset))
    voices = {t.channel - 1 for t in p.tracks}
    grid = p.timing.grid
    daemon, keyboard, listener = _session(preset, "--bpm", bpm, "--provider", provider)
    latencies, lead = [], melody(notes)
    try:
        b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 500 * MS)) + 1
        for i, pitch in enumerate(lead):
            sleep_until(daemon.time_at(b0 + (i + 0.4) * grid))
            mark = len(listener.heard)
            t = keyboard.send((0x90, pitch, 90))
            # until 10 ms before the next grid line, whose step was committed ahead
            left = (daemon.time_at(b0 + (i + 1) * grid) - 10 * MS - time.perf_counter_ns()) / 1e9
            got = listener.wait_for(lambda tt, m, t=t: tt >= t and is_note_on(m)
                                    and m[0] & 0x0F in voices, max(left, 0.0), mark)
            if got is not None:
                latencies.append(got[0] - t)
            sleep_until(daemon.time_at(b0 + (i + 0.9) * grid))
            keyboard.send((0x80, pitch, 0))
        status = [e for _, e in daemon.events if e.get("event") == "status"]
    finally:
        stopped = _finish(daemon, keyboard, listener)
    return {"notes": notes, "answered": len(latencies), "bpm": bpm, "grid": grid,
            "latency_ms": summary_ms(latencies), "late_dropped": stopped["late_dropped"],
            "inference_ms": {"p50": status[-1]["infer_p50_ms"], "p99": status[-1]["infer_p99_ms"]}
            if status else None}


def measure_continue_timing(preset: Path, cycles: int, provider: str = "auto") -> dict:
    """Phrase, silence, the whole response, `cycles` times; |arrival - grid| of every note
    message of the responses (the model's grid on the daemon's beats)."""
    p = presets.load(str(preset))
    t = p.timing
    grid = model_grid(p.model)
    daemon, keyboard, listener = _session(preset, "--provider", provider)
    try:
        for c in range(cycles):
            b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 300 * MS)) + 1
            events, last_off = [], b0
            for i, pitch in enumerate(melody(8, seed=c)):
                last_off = b0 + i / 2 + 0.45
                events += [(daemon.time_at(b0 + i / 2), (0x90, pitch, 90)),
                           (daemon.time_at(last_off), (0x80, pitch, 0))]
            keyboard.play(events)
            unit = t.beats_per_bar if t.start_on == "bar" else 1
            start = (math.floor((last_off + t.silence_beats) / unit) + 1) * unit
            sleep_until(daemon.time_at(start + t.bars * t.beats_per_bar) + 300 * MS)
        stamps = [s for s, m in listener.heard if len(m) == 3 and m[0] & 0xE0 == 0x80]
    finally:
        stopped = _finish(daemon, keyboard, listener)
    errors = grid_errors(stamps, daemon.beat_at, daemon.time_at, grid)
    return {"preset": p.name, "cycles": cycles, "grid": grid, "error_ms": summary_ms(errors),
            "late_dropped": stopped["late_dropped"], "dispatch_ms": _dispatch(stopped)}


def _dispatch(stopped: dict) -> dict:
    """The daemon's own |send - due| (before JACK), from its scheduler counters."""
    return {k: stopped[f"lateness_{k}_ms"] for k in ("p50", "p99", "max")}


def measure_session(preset: Path, seconds: float, bpm: float, record: Path,
                    provider: str = "auto") -> dict:
    """Continuous play, recorded to `record`: eighth notes of a random melody for `seconds`,
    accompanied on the 16th-note grid (harmonize off, so every accompaniment message is
    scheduled on a grid line). Late drops, |arrival - grid| of the accompaniment and the
    daemon's peak RSS."""
    p = presets.load(str(preset))
    voices = {t.channel - 1 for t in p.tracks}
    grid = p.timing.grid
    daemon, keyboard, listener = _session(preset, "--bpm", bpm, "--record", record,
                                          "--provider", provider)
    try:
        b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 500 * MS)) + 1
        n = int(seconds * bpm / 60 * 2)
        for i, pitch in enumerate(melody(n, seed=2)):
            sleep_until(daemon.time_at(b0 + i / 2))
            keyboard.send((0x90, pitch, 90))
            sleep_until(daemon.time_at(b0 + i / 2 + 0.45))
            keyboard.send((0x80, pitch, 0))
        end = time.perf_counter_ns()
        rss = daemon.peak_rss_mb()
        stamps = [s for s, m in listener.heard
                  if s < end and len(m) == 3 and m[0] & 0xE0 == 0x80 and m[0] & 0x0F in voices]
    finally:
        stopped = _finish(daemon, keyboard, listener)
    errors = grid_errors(stamps, daemon.beat_at, daemon.time_at, grid)
    return {"preset": p.name, "seconds": seconds, "bpm": bpm, "grid": grid,
            "lead_notes": n, "messages": len(stamps), "late_dropped": stopped["late_dropped"],
            "sent": stopped["sent"], "error_ms": summary_ms(errors),
            "dispatch_ms": _dispatch(stopped), "peak_rss_mb": rss}


def measure_startup(preset: Path, runs: int, provider: str = "auto") -> dict:
    """Process start -> the "preset" event (ports open, model warm), `runs` times."""
    seconds = []
    for _ in range(runs):
        with DaemonProcess(preset, "--provider", provider) as daemon:
            t, _ = daemon.wait_event("preset", 120.0)
            seconds.append((t - daemon.started_ns) / 1e9)
            daemon.stop()
    seconds.sort()
    return {"runs": seconds, "median_s": seconds[len(seconds) // 2], "max_s": seconds[-1]}


# ---- the engine, on its own ----------------------------------------------------------------------


def _bpm_of(model: Path) -> float:
    """The tempo of the first shipped preset that plays `model`, else 120."""
    for path in presets.available():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if model.stem in (data.get("model"), data.get("solo_model")):
            return float(data.get("timing", {}).get("bpm", presets.Timing().bpm))
    return 120.0


def measure_engine(path: Path, steps: int, provider: str = "auto") -> dict:
    """Per-step inference (onnxruntime, one thread, as the daemon runs it) while generating
    for real (sampling, grammar masks, decoding), the real-time factor of that generation,
    and torch eager on the very same step inputs when torch is importable."""
    import numpy as np

    from companion.engine import Engine
    from companion.modelfile import load
    from companion.sampling import Sampling
    from companion.score import Note, Score
    from companion.voices import Accompanist, voice_for

    model = load(path)
    rng = np.random.default_rng(0)
    sampling = Sampling(0.9, 0, 0.95)
    feeds: list[dict] = []
    bpm = _bpm_of(path)
    if model.protocol == Accompanist.protocol:
        gen = Accompanist(Engine(model, provider=provider), model.representation, sampling)
        gen.warm_up(rng)
        engine, lead = gen.engine, melody(steps)
        _record(engine, feeds, steps)
        t0, i = time.perf_counter_ns(), 0
        while len(engine.step_ms) < steps:
            gen.step({lead[i % len(lead)]}, rng)
            i += 1
        wall, beats = time.perf_counter_ns() - t0, i * gen.grid
    else:
        voice = voice_for(model, provider=provider)
        voice.warm_up(rng)
        engine, rep = voice.engine, model.representation
        decoder = rep.stream_decoder(0.0)
        primer = Score.from_notes([Note(i / 2, p, 0.45, 90) for i, p in enumerate(melody(8))])
        for tok in rep.encode(primer):
            voice.feed(tok)
            decoder.feed(tok)
        engine.step_ms.clear()
        start = decoder.position
        _record(engine, feeds, steps)
        t0 = time.perf_counter_ns()
        while len(engine.step_ms) < steps:
            decoder.feed(voice.next(rng, sampling, decoder.allowed()))
        wall, beats = time.perf_counter_ns() - t0, decoder.position - start
    ort_ms = [round(ms * MS) for ms in engine.step_ms]
    return {"model": path.stem, "family": model.family, "protocol": model.protocol,
            "parameters": model.parameters, "steps": len(ort_ms), "bpm": bpm,
            "ort_ms": summary_ms(ort_ms), "torch_ms": _torch_eager(model, feeds),
            "beats": beats, "seconds": wall / 1e9,
            "real_time_factor": beats * 60 / bpm / (wall / 1e9) if wall else None}


def _record(engine, feeds: list, limit: int) -> None:
    """Keep the step inputs the engine gets (to replay them through torch)."""
    step = engine.step

    def recording(f):
        if len(feeds) < limit:
            feeds.append(f)
        return step(f)

    engine.step = recording


def _torch_eager(model, feeds: list[dict]) -> dict | None:
    """Per-step time of the same architecture in torch eager (one thread) on `feeds`, measured
    in a subprocess (export/eager_timing.py) so that this process stays torch-free; None
    when torch is not installed."""
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "feeds.npz"
        np.savez(path, **{f"{i}/{k}": np.asarray(v) for i, f in enumerate(feeds)
                          for k, v in f.items()})
        r = subprocess.run([sys.executable, "-m", "export.eager_timing", str(model.path),
                            str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        if "No module named 'torch'" in r.stderr:
            return None
        raise RuntimeError(f"torch eager timing of {model.path} failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {**summary_ms(out["step_ns"]), "torch": out["torch"]}


# ---- the run and its report --------------------------------------------------------------------

SECTIONS = ("floor", "harmonize", "timing", "session", "startup", "engine")
ANALYSIS = "## Analysis"  # from this heading on, docs/BENCHMARKS.md is hand-written and kept


def run(args) -> dict:
    """Every measurement of `args.only` (default all); the results as one dict."""
    smoke = args.smoke
    zoo = Path(args.zoo) if args.zoo else presets.zoo_dir()
    only = set(args.only or SECTIONS)
    provider = getattr(args, "provider", "auto")
    check_provider(provider)  # --provider cuda without CUDA: before the JACK server starts
    playable = playable_presets(zoo)
    shipped = sorted(zoo.glob("*.onnx"))
    r: dict = {"mode": "smoke" if smoke else "full", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "machine": machine(), "zoo": [m.name for m in shipped],
               "presets": sorted(playable), "skipped": {}, "provider": provider}
    r["jack"] = {"driver": "dummy", "period": args.period, "rate": args.rate,
                 "period_ms": args.period / args.rate * 1000,
                 "mode": "asynchronous" if args.jack_async else "synchronous (-S)"}
    tmp = Path(tempfile.mkdtemp(prefix="companion-bench-"))

    def skip(section: str, why: str) -> None:
        r["skipped"][section] = why
        _log(f"{section}: skipped ({why})")

    with JackServer(args.period, args.rate, sync=not args.jack_async):
        if "floor" in only:
            r["floor"] = measure_floor(200 if smoke else 1000)
            _log(f"floor: {_fmt(r['floor']['round_trip_ms'])}")
        if "harmonize" in only:
            if "chorale" in playable:
                path = preset_copy("chorale", tmp / "chorale.toml", zoo=zoo)
                r["harmonize"] = measure_harmonize(path, 100 if smoke else 500, 120, provider)
                _log(f"harmonize: {_fmt(r['harmonize']['latency_ms'])}, answered "
                     f"{r['harmonize']['answered']}/{r['harmonize']['notes']}")
            else:
                skip("harmonize", f"no chorale model in {zoo}")
        if "timing" in only:
            continuing = [n for n in ("folk", "piano") if n in playable]
            if continuing:
                path = preset_copy(continuing[0], tmp / "continue.toml", zoo=zoo)
                r["timing_continue"] = measure_continue_timing(path, 2 if smoke else 8, provider)
                _log(f"timing ({continuing[0]}): {_fmt(r['timing_continue']['error_ms'])}")
            else:
                skip("timing", f"no folk or piano model in {zoo}")
        if "session" in only:
            if "chorale" in playable:
                path = preset_copy("chorale", tmp / "session.toml", zoo=zoo, harmonize=False,
                                   timing={"bpm": 120, "grid": 0.25})
                seconds = args.session_s or (30.0 if smoke else 600.0)
                r["session"] = measure_session(path, seconds, 120, tmp / "session.mid", provider)
                s = r["session"]
                _log(f"session {seconds:g} s: late dropped {s['late_dropped']}, timing "
                     f"{_fmt(s['error_ms'])}, peak RSS {s['peak_rss_mb']:.0f} MB")
            else:
                skip("session", f"no chorale model in {zoo}")
        if "startup" in only:
            r["startup"] = {}
            for name in sorted(playable):
                path = preset_copy(name, tmp / f"{name}-startup.toml", zoo=zoo)
                r["startup"][name] = measure_startup(path, 1 if smoke else 3, provider)
                _log(f"start-up {name}: {r['startup'][name]['runs']}")
            if not playable:
                skip("startup", f"no shipped preset has its models in {zoo}")
    if "engine" in only:
        r["engine"] = []
        for model in shipped:
            r["engine"].append(measure_engine(model, 300 if smoke else 2000, provider))
            e = r["engine"][-1]
            _log(f"engine {model.stem}: ORT {_fmt(e['ort_ms'])}, torch "
                 f"{_fmt(e['torch_ms']) if e['torch_ms'] else 'n/a'}, "
                 f"RTF {e['real_time_factor']:.0f}x")
        if not shipped:
            skip("engine", f"no model in {zoo}")
    r["machine"]["load_avg_end"] = machine()["load_avg"]
    shutil.rmtree(tmp, ignore_errors=True)
    r["targets"] = targets(r)
    return r


def _fmt(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return f"p50 {s['p50']:.2f} / p99 {s['p99']:.2f} / max {s['max']:.2f} ms (n={s['n']})"


def targets(r: dict) -> list[dict]:
    """Each target of issue 5: what was measured and by how much it is missed (0 = met)."""
    rows = []

    def add(name: str, goal: str, measured: float | None, limit: float, unit: str,
            above: bool = False, note: str = "") -> None:
        if measured is None:
            rows.append({"target": name, "goal": goal, "measured": None, "met": None,
                         "miss": None, "unit": unit, "note": note or "not measured"})
            return
        miss = (limit - measured) if above else (measured - limit)
        rows.append({"target": name, "goal": goal, "measured": measured, "met": miss <= 0,
                     "miss": max(miss, 0.0), "unit": unit, "note": note})

    floor, harm = r.get("floor"), r.get("harmonize")
    if floor and harm and harm["latency_ms"].get("n"):
        add("harmonize p99 - floor p99", "<= 1 ms",
            harm["latency_ms"]["p99"] - floor["round_trip_ms"]["p99"], 1.0, "ms",
            note=f"{harm['answered']} of {harm['notes']} lead notes answered before the next "
                 f"grid line")
        if harm["answered"] < harm["notes"] / 2:  # a p99 of the few answered says little
            rows[-1].update(met=False, miss=None)
    else:
        add("harmonize p99 - floor p99", "<= 1 ms", None, 1.0, "ms",
            note=r["skipped"].get("harmonize", "no lead note was answered"))
    for key, label in (("timing_continue", "continue"), ("session", "accompany")):
        s = r.get(key, {}).get("error_ms", {})
        add(f"scheduled-output timing p99 ({label})", "< 2 ms", s.get("p99"), 2.0, "ms")
    s = r.get("session")
    add("late-dropped notes, 120 BPM, 16th-note accompaniment", "0 in 10 minutes",
        s["late_dropped"] if s else None, 0, "notes",
        note=f"over {s['seconds']:g} s" if s else "")
    st = r.get("startup") or {}
    worst = max(st.items(), key=lambda kv: kv[1]["median_s"]) if st else None
    add("start-up (slowest preset, median)", "< 1.5 s", worst[1]["median_s"] if worst else None,
        1.5, "s", note=worst[0] if worst else "")
    add("peak RSS of the daemon", "< 300 MB", s["peak_rss_mb"] if s else None, 300, "MB")
    eng = r.get("engine") or []
    slowest = min(eng, key=lambda e: e["real_time_factor"]) if eng else None
    add("real-time factor (slowest model)", "> 50x",
        slowest["real_time_factor"] if slowest else None, 50, "x", above=True,
        note=slowest["model"] if slowest else "")
    return rows


def markdown(r: dict, analysis: str) -> str:
    m, j = r["machine"], r["jack"]
    load = ", ".join(f"{x:.1f}" for x in m["load_avg"]) if m["load_avg"] else "n/a"
    if m.get("load_avg_end"):
        load += " at the start, " + ", ".join(f"{x:.1f}" for x in m["load_avg_end"]) + " at the end"
    out = [
        "# Benchmarks",
        "",
        f"Generated by `companion bench{' --smoke' if r['mode'] == 'smoke' else ''}` on "
        f"{r['date']} ({r['mode']} run); the raw numbers are in `benchmarks.json` beside this "
        f"file. Everything above \"{ANALYSIS}\" is rewritten by the next run.",
        "",
        "## Setup",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} CPU cores, {m['platform']}, Python {m['python']}; "
        f"load average (1, 5, 15 min) {load}.",
        f"- JACK: a private `jackd{' -S' if j['mode'].startswith('sync') else ''} --no-realtime "
        f"-d {j['driver']}` server ({j['mode']}), period {j['period']} frames at {j['rate']} Hz "
        f"({j['period_ms']:.2f} ms per period), started by the bench.",
        "- The daemon runs as a user starts it (`companion run PRESET --backend jack --quiet "
        "--log-json --seed 1`) in its own process; the keyboard and the listener are two "
        "python-rtmidi JACK clients in the bench's process, stamping with perf_counter_ns.",
        f"- Shipped models: {', '.join(r['zoo']) or 'none'}; playable presets: "
        f"{', '.join(r['presets']) or 'none'}.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        measured = "-" if t["measured"] is None else (
            f"{t['measured']:.2f} {t['unit']}".replace(".00 notes", " notes"))
        verdict = _verdict(t)
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"| {t['target']} | {t['goal']} | {measured}{note} | {verdict} |")
    out += ["", *_details(r), "", analysis.rstrip(), ""]
    return "\n".join(out)


def _verdict(t: dict) -> str:
    if t["met"] is None:
        return "not measured"
    if t["met"]:
        return "met"
    return "missed" if t["miss"] is None else f"missed by {t['miss']:.2f} {t['unit']}"


def _row(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "- | - | - | -"
    return f"{s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {s['n']}"


def _details(r: dict) -> list[str]:
    out = ["## Latency and timing", "",
           "| measurement | p50 ms | p99 ms | max ms | n |", "|---|---|---|---|---|"]
    if r.get("floor"):
        out.append(f"| floor: echo round trip (python-rtmidi, no model) | "
                   f"{_row(r['floor']['round_trip_ms'])} |")
    if r.get("harmonize"):
        h = r["harmonize"]
        out.append(f"| harmonize: lead note-on -> first harmony note-on ({h['answered']} of "
                   f"{h['notes']} answered, {h['bpm']:g} BPM) | {_row(h['latency_ms'])} |")
    if r.get("timing_continue"):
        t = r["timing_continue"]
        out.append(f"| continue ({t['preset']}): \\|arrival - grid\\|, {t['cycles']} responses "
                   f"| {_row(t['error_ms'])} |")
    if r.get("session"):
        s = r["session"]
        out.append(f"| accompany ({s['preset']}, harmonize off): \\|arrival - grid\\| | "
                   f"{_row(s['error_ms'])} |")
    for key, label in (("timing_continue", "continue"), ("session", "accompany")):
        if r.get(key):
            d = r[key]["dispatch_ms"]
            out.append(f"| {label}: the daemon's own \\|send - due\\| (before JACK; last 4096) | "
                       f"{d['p50']:.2f} | {d['p99']:.2f} | {d['max']:.2f} | - |")
    if r.get("harmonize") and r["harmonize"].get("inference_ms"):
        i = r["harmonize"]["inference_ms"]
        out.append(f"| harmonize: inference per engine step (daemon's status line) | "
                   f"{i['p50']:.2f} | {i['p99']:.2f} | - | - |")
    if r.get("engine"):
        out += ["", "## Engine", "",
                "Per engine step on one thread, generating for real (sampling, grammar masks, "
                "decoding); torch eager replays the very same step inputs through the same "
                "architecture (rebuilt from the metadata: weights do not change the cost). "
                "Real-time factor = musical time generated / wall time, at the tempo of the "
                "model's preset.", "",
                "| model | family (protocol) | parameters | ORT p50 / p99 ms | torch eager p50 / "
                "p99 ms | torch / ORT (p50) | real-time factor |",
                "|---|---|---|---|---|---|---|"]
        for e in r["engine"]:
            o, t = e["ort_ms"], e["torch_ms"]
            torch_cell = f"{t['p50']:.3f} / {t['p99']:.3f}" if t else "n/a (no torch)"
            ratio = f"{t['p50'] / o['p50']:.1f}x" if t and o.get("p50") else "-"
            out.append(f"| {e['model']} | {e['family']} ({e['protocol']}) | "
                       f"{e['parameters']:,} | {o['p50']:.3f} / {o['p99']:.3f} | {torch_cell} | "
                       f"{ratio} | {e['real_time_factor']:.0f}x ({e['beats']:.1f} beats at "
                       f"{e['bpm']:g} BPM in {e['seconds']:.2f} s) |")
    if r.get("startup"):
        out += ["", "## Start-up", "",
                "Process start -> ports open and model warm (the daemon's \"preset\" event).", "",
                "| preset | median s | max s | runs |", "|---|---|---|---|"]
        for name, s in sorted(r["startup"].items()):
            out.append(f"| {name} | {s['median_s']:.2f} | {s['max_s']:.2f} | "
                       f"{', '.join(f'{x:.2f}' for x in s['runs'])} |")
    if r.get("session"):
        s = r["session"]
        out += ["", "## Session: memory and late drops", "",
                f"{s['seconds']:g} s of continuous play at {s['bpm']:g} BPM, recorded "
                f"(`--record`): {s['lead_notes']} "
                f"lead eighth notes, accompanied by `{s['preset']}` (harmonize off) on the "
                f"{s['grid']:g}-beat grid. The daemon sent {s['sent']} messages and dropped "
                f"{s['late_dropped']} late note-ons; its peak RSS (VmHWM) was "
                f"{s['peak_rss_mb']:.0f} MB."]
    if r["skipped"]:
        out += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in r["skipped"].items())
                + "."]
    return out


def main(args) -> int:
    """Entry point of `companion bench`."""
    md, js = Path(args.markdown), Path(args.json)
    results = run(args)
    analysis = f"{ANALYSIS}\n\n(Hand-written: why each missed target is missed and what " \
               f"would close it.)\n"
    heading = f"\n{ANALYSIS}\n"
    if md.is_file() and heading in (old := md.read_text(encoding="utf-8")):
        analysis = old[old.index(heading) + 1:]
    md.parent.mkdir(parents=True, exist_ok=True)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    md.write_text(markdown(results, analysis), encoding="utf-8")
    for t in results["targets"]:
        _log(f"target {t['target']} ({t['goal']}): {_verdict(t)}")
    _log(f"wrote {md} and {js}")
    return 0
