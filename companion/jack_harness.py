"""A JACK test harness: a private JACK server, and the client side of a session with the
daemon as a user starts it. `companion bench` measures through it; tests/jack_server.py
and tests/test_e2e.py test through it.

- JackServer: `jackd -S --no-realtime -d dummy` under a name of its own (no sound card,
  nothing else shares it), which this process and its children then use;
- Keyboard and Listener: python-rtmidi JACK clients playing into the daemon's input and
  stamping what arrives on its output (perf_counter_ns);
- DaemonProcess: `python -m companion run PRESET --backend jack --quiet --log-json ...` as a
  subprocess, its JSON events collected, its beats readable (`time_at`, `beat_at`);
- preset_copy: a shipped preset with other models or settings, written where a daemon can
  load it; model_grid: the grid a model's notes fall on; pair_notes, is_note_on/off.
"""

from __future__ import annotations

import json
import os
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

from midi_companion import presets
from midi_companion.errors import CompanionError
from midi_companion.ports import (
    CLIENT_NAME,
    JACK_SETTLE_S,
    VIRTUAL_INPUT,
    VIRTUAL_OUTPUT,
    close_client,
    jack_server_running,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# ---- a private JACK server ------------------------------------------------------------------


JACK_ENV = ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")  # what JackServer sets here


class JackServer:
    """`jackd [-S] --no-realtime -d dummy -r RATE -p PERIOD` under a unique server name, which
    this process (and every child it starts) then uses through JACK_DEFAULT_SERVER. With
    `realtime=True`, `-R -P 70` instead of --no-realtime: the server and its clients' process
    threads run at SCHED_FIFO, as JACK runs for its users (where the system grants it).

    Synchronous mode (-S, the default here) makes the server wait for late clients: without
    realtime priority on a loaded CPU, the default asynchronous mode skips a client that
    misses a cycle, and that cycle's MIDI to it is lost (1-5% of messages at load 6 on 2
    cores, 0 with -S). A late cycle then shows as latency instead, which is what we measure."""

    def __init__(
        self,
        period: int = 64,
        rate: int = 48000,
        sync: bool = True,
        start_timeout_s: float = 15.0,
        realtime: bool = False,
        log: Path | None = None,
        prefix: str = "companion-bench",
    ):
        self.period, self.rate, self.sync, self.realtime = period, rate, sync, realtime
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._timeout = start_timeout_s
        self._saved = {k: os.environ.get(k) for k in JACK_ENV}
        self.proc: subprocess.Popen | None = None
        self.log_path = log  # jackd's output goes here (a temporary file when None)
        self.log = open(log, "w+b") if log is not None else tempfile.TemporaryFile()

    def __enter__(self) -> JackServer:
        jackd = shutil.which("jackd")
        if jackd is None:
            raise CompanionError(
                "companion bench needs jackd (apt install jackd2): it measures "
                "through a private JACK server"
            )
        env = {
            **os.environ,
            "JACK_DEFAULT_SERVER": self.name,
            "JACK_NO_AUDIO_RESERVATION": "1",
            "JACK_NO_START_SERVER": "1",
        }
        self.proc = subprocess.Popen(
            [
                jackd,
                *self.realtime_flags(self.realtime).split(),
                *(["-S"] if self.sync else []),
                "-d",
                "dummy",
                "-r",
                str(self.rate),
                "-p",
                str(self.period),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        os.environ["JACK_NO_START_SERVER"] = "1"  # a client never starts a server of its own
        deadline = time.monotonic() + self._timeout
        while not jack_server_running():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                self.log.seek(0)
                raise CompanionError(f"jackd did not start: {self.log.read().decode()[-500:]}")
            time.sleep(0.1)  # polling a server start-up, not timing anything
        return self

    @staticmethod
    def realtime_flags(realtime: bool) -> str:
        return "-R -P 70" if realtime else "--no-realtime"

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
    hits = [
        i
        for i, n in enumerate(names)
        if n.endswith(":" + port) and n.split(":", 1)[0].startswith(owner)
    ]
    if len(hits) != 1:
        raise CompanionError(
            f"expected one port {owner}:{port} on the JACK server, found "
            f"{[names[i] for i in hits]} among {names}"
        )
    return hits[0]


class Keyboard:
    """A JACK MIDI client playing into the daemon's input (what the DAW's keyboard track is).

    `send` is thread-safe (a clock thread and a note player may share it) and returns the
    perf_counter_ns stamp taken just before the message went to JACK."""

    def __init__(
        self,
        client_name: str = "companion-keyboard",
        target: str = VIRTUAL_INPUT,
        owner: str = CLIENT_NAME,
    ):
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


class FrameListener:
    """A JACK MIDI client on the daemon's output, in a process of its own, that stamps each
    message with the time of its JACK frame (companion/jack_frames.py), not when a callback
    ran: where the daemon places messages at their frames, this shows how close to their
    time they are (the Listener's stamps spread over the period its callback runs in, and
    over the waits for its process's GIL). `open()` is None where libjack cannot be loaded;
    `stop()` ends it and returns every (t_ns, msg) heard."""

    def __init__(self, client_name: str, source: str):
        code = "from midi_companion.jack_harness import frame_listener; frame_listener()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, client_name, source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            self._proc.wait()
            raise CompanionError("the frame-stamping listener did not start")

    @classmethod
    def open(
        cls, client_name: str = "companion-frame-listener", source: str = VIRTUAL_OUTPUT
    ) -> FrameListener | None:
        from midi_companion.jack_frames import load

        return cls(client_name, source) if load() is not None else None

    def stop(self) -> list[tuple[int, tuple[int, ...]]]:
        self._proc.stdin.close()
        heard = json.loads(self._proc.stdout.read() or "[]")
        self._proc.wait(timeout=10)
        return [(t, tuple(m)) for t, m in heard]


def frame_listener() -> None:
    """FrameListener's process: argv client name, source port; "ready", then on stdin's end
    what it heard as one JSON list."""
    from midi_companion.jack_frames import FramePorts

    heard: list = []
    ports = FramePorts(
        None,
        sys.argv[2],
        on_input=lambda t, data: heard.append((t, list(data))),
        client_name=sys.argv[1],
        output=False,
    )
    print("ready", flush=True)
    sys.stdin.read()
    time.sleep(JACK_SETTLE_S)
    ports.close(flush_s=0.0)
    print(json.dumps(heard), flush=True)


class Listener:
    """A JACK MIDI client on the daemon's output: every message, stamped on arrival
    (perf_counter_ns in the JACK callback), in `heard`."""

    def __init__(
        self,
        client_name: str = "companion-listener",
        source: str = VIRTUAL_OUTPUT,
        owner: str = CLIENT_NAME,
    ):
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

    def wait_for(
        self, pred: Callable[[int, tuple[int, ...]], bool], timeout: float, start: int = 0
    ) -> tuple[int, tuple[int, ...]] | None:
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
    return (
        len(msg) == 3
        and msg[0] & 0xF0 == 0x90
        and msg[2] > 0
        and (channel is None or msg[0] & 0x0F == channel)
    )


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
            [
                sys.executable,
                "-m",
                "midi_companion",
                "run",
                str(preset),
                "--backend",
                "jack",
                "--quiet",
                "--log-json",
                *map(str, args),
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
        )
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

    def wait_event(
        self, kind: str, timeout: float = 60.0, start: int = 0, **fields
    ) -> tuple[int, dict]:
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
                    raise RuntimeError(
                        f"no {kind!r} event from the daemon within {timeout} s "
                        f"(exit code {self.proc.poll()}):\n{self.error_text()}"
                    )
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
            raise RuntimeError(
                f"the daemon did not stop within {timeout} s of SIGTERM:\n{self.error_text()}"
            ) from None
        finally:
            self._reader.join(timeout=5)

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the daemon and its child processes (the sending
        process) have used so far (Linux), None where /proc cannot tell."""
        pids, total = [self.proc.pid], 0.0
        try:
            pids += child_pids(self.proc.pid)
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        return total

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the running daemon, plus what its child processes (the sending process)
        hold of their own now (VmRSS less RssShmem: JACK's shared memory, ~100 MB, is
        counted in every client's RSS, and once here is enough), in MB (Linux)."""
        pid = self.proc.pid
        try:
            total = status_kb(pid, "VmHWM")
            for child in child_pids(pid):
                total += status_kb(child, "VmRSS") - status_kb(child, "RssShmem")
        except (OSError, ValueError):
            return None
        return total / 1024

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (its sending process), from /proc (Linux; OSError
    elsewhere)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (OSError when the process or the field is not
    there)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/{pid}/status")


def model_grid(path: str | os.PathLike) -> float:
    """The time grid (beats) a model's notes fall on: its representation's step."""
    from midi_companion.modelfile import load

    rep = load(path).representation
    grid = getattr(rep, "grid", None) or getattr(rep.params, "grid", None)
    if not grid:
        raise CompanionError(f"{path}: its representation ({rep.name}) has no time grid")
    return float(grid)


# ---- presets to play -----------------------------------------------------------------------------


def preset_toml(path: Path) -> dict:
    """A preset file's TOML as written (no defaults filled, nothing checked)."""
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))


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


def preset_copy(
    base: str, out: Path, models: dict[str, Path] | None = None, zoo: Path | None = None, **changes
) -> Path:
    """The shipped preset `base` written to `out` with changes: its models from `models`
    ({"model": path, "solo_model": path}), else from the folder `zoo` (same names), else as
    shipped; `timing={...}` merged into [timing]; other keys replace the preset's."""
    data = preset_toml(presets.presets_dir() / f"{base}.toml")
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
