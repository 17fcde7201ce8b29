"""MIDI ports: a thin layer over python-rtmidi, and an in-process loopback.

- `open_input(name, backend, callback)` / `open_output(name, backend)`: with no name, a
  virtual port ("midi-companion in" / "midi-companion out") that the DAW connects to; with a
  name, a connection to the one existing port whose name contains it (case-insensitive).
- backend "native" is the platform's MIDI system (ALSA sequencer, CoreMIDI, Windows MM);
  "jack" is JACK MIDI (python-rtmidi's API_UNIX_JACK); "auto" (the default) is native,
  except on Linux without an ALSA sequencer (/dev/snd/seq) where a JACK server is running:
  then JACK (`choose_backend` says which, and why).
- Inputs stamp each message with `time.perf_counter_ns()` on arrival and hand the pair
  `(t_ns, msg)` to a queue.Queue (or the callback given) and do nothing else: the
  callback runs on the MIDI system's thread (for JACK its process thread), and a slow one
  stalls it. The queue is bounded (INPUT_QUEUE): in a flood, what does not fit is dropped
  and counted, never waited for. MIDI clock is not filtered out, since MidiClock needs it.
  Not a SimpleQueue: in CPython 3.11 its get(timeout) blocks forever when a signal handler
  runs past the deadline (the retry gets a negative timeout), which hung the daemon on
  SIGTERM.
- Outputs: `send(msg)` is thread-safe; `close()` is idempotent and lets JACK flush first.
- `loopback_pair()`: an output whose sends are recorded and delivered, through the very same
  stamping callback, to an input; for `companion demo` and for tests.
- JACK: companion/jack_watch.py (`JackWatch`: the server going away, its ports;
  `PeerLink`: a port kept connected by name through its peer's restart).

Failures to reach a MIDI system, or names that match no port, raise MidiPortError with one
sentence saying what to do. rtmidi is imported only when a real port is opened, so name
matching and the loopback work without it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence

from midi_companion.errors import MidiPortError

BACKENDS = ("auto", "native", "jack")
ALSA_SEQUENCER = "/dev/snd/seq"
CLIENT_NAME = "midi-companion"
VIRTUAL_INPUT = "midi-companion in"
VIRTUAL_OUTPUT = "midi-companion out"

# Messages waiting for the daemon's loop. It takes ~10 us each, so only a flood fills this
# (10,000 a second for seconds); then new messages are dropped and counted (`dropped`), and
# the loop stays on time instead of working through a backlog of stale input.
INPUT_QUEUE = 4096

Message = Sequence[int]
Stamped = tuple[int, list[int]]  # (t_ns on arrival, raw message)
Sink = Callable[[Stamped], object]


# ---- pure logic (no MIDI system needed) ------------------------------------------------


def match_port(names: Sequence[str], pattern: str, direction: str) -> int:
    """Index of the one port in `names` whose name contains `pattern` (case-insensitive).

    A port whose whole name equals the pattern wins over ports that merely contain it, so
    "Synth" picks "Synth" over "Synth 2". `direction` ("input"/"output") is for the message.
    """
    wanted = pattern.casefold()
    hits = [i for i, name in enumerate(names) if wanted in name.casefold()]
    exact = [i for i in hits if names[i].casefold() == wanted]
    if len(exact) == 1:
        return exact[0]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise MidiPortError(
            f"no MIDI {direction} port matches {pattern!r} (available: {_listing(names)}); "
            f"pass part of one of those names, or none for a virtual port"
        )
    raise MidiPortError(
        f"{len(hits)} MIDI {direction} ports match {pattern!r} "
        f"({_listing([names[i] for i in hits])}); pass more of the name to pick one"
    )


def _listing(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "none"


def system_name(backend: str, platform: str = sys.platform) -> str:
    """What `backend` talks to on `platform`, for messages."""
    if backend == "jack":
        return "JACK server"
    if platform.startswith("linux"):
        return "ALSA sequencer"
    return {"darwin": "CoreMIDI", "win32": "Windows MIDI"}.get(platform, "MIDI system")


def unreachable_hint(backend: str, platform: str = sys.platform) -> str:
    """What a user can do when `backend` cannot reach a MIDI system on `platform`."""
    if backend == "jack":
        return (
            "start a JACK server (e.g. `jackd -d dummy`, or your JACK control app) and "
            "retry, or try `companion demo`"
        )
    if platform.startswith("linux"):
        return (
            "load the ALSA sequencer (`sudo modprobe snd-seq`), or start a JACK server "
            "(then it is chosen by itself, or pass --backend jack), or try `companion demo`"
        )
    if platform == "win32":
        return (
            "create two loopMIDI ports and pass their names with --in/--out, or try "
            "`companion demo`"
        )
    return "check your MIDI setup, or try `companion demo`"


def choose_backend(
    backend: str = "auto",
    platform: str = sys.platform,
    sequencer: str = ALSA_SEQUENCER,
    jack_running: Callable[[], bool] | None = None,
) -> tuple[str, str]:
    """The backend to open ("native" or "jack") for `backend`, and why, in a few words.

    "auto" is the platform's MIDI system, except on Linux without an ALSA sequencer where a
    JACK server is running: JACK is then the MIDI system that is there. When neither is,
    it stays "native", whose error says what to do."""
    if backend != "auto":
        return backend, f"--backend {backend}"
    if not platform.startswith("linux"):
        return "native", f"the {system_name('native', platform)}"
    if os.path.exists(sequencer):
        return "native", f"the ALSA sequencer ({sequencer})"
    if (jack_running or jack_server_running)():
        return "jack", f"no ALSA sequencer ({sequencer} is absent) but a JACK server is running"
    return "native", f"no ALSA sequencer ({sequencer} is absent) and no JACK server"


def jack_server_running() -> bool:
    """Whether a JACK server answers (a client connects without starting one); libjack's
    complaints while it tries go to /dev/null, not to the user's terminal."""
    try:
        rtmidi = load_rtmidi()
    except MidiPortError:
        return False
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        return False
    saved_env = os.environ.get("JACK_NO_START_SERVER")
    os.environ["JACK_NO_START_SERVER"] = "1"  # a probe must never start a server
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            probe = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, f"{CLIENT_NAME}-probe")
    except rtmidi.RtMidiError:
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if saved_env is None:
            os.environ.pop("JACK_NO_START_SERVER", None)
        else:
            os.environ["JACK_NO_START_SERVER"] = saved_env
    probe.delete()
    return True


# ---- the port classes -------------------------------------------------------------------


class InputPort:
    """Timestamped MIDI input: each message arrives as (t_ns, msg).

    By default the pairs queue up on `queue` (read them with `receive`); a `callback` given
    at opening replaces the queue and is called on the MIDI thread, so it must return at once
    (e.g. another queue's put, to merge several inputs).
    """

    def __init__(
        self,
        name: str,
        callback: Sink | None = None,
        now_ns: Callable[[], int] = time.perf_counter_ns,
    ):
        self.name = name
        self.queue: queue.Queue[Stamped] = queue.Queue(maxsize=INPUT_QUEUE)
        self.dropped = 0  # messages that found the queue full (a flood): counted, not kept
        self._sink = callback if callback is not None else self._enqueue
        self._now = now_ns
        self.closed = False
        self._lock = threading.Lock()

    def _on_midi(self, event: tuple[list[int], float], data: object = None) -> None:
        """rtmidi's callback signature: stamp on arrival, hand over, nothing else."""
        self._sink((self._now(), event[0]))

    def _enqueue(self, item: Stamped) -> None:
        """Never blocks the MIDI thread: when the queue is full the message is dropped."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def receive(self, timeout: float | None = None) -> Stamped | None:
        """The next (t_ns, msg), waiting up to `timeout` seconds (None: forever, 0: not at
        all); None when nothing came. Only for inputs opened without a callback."""
        try:
            if timeout is not None and timeout <= 0:
                return self.queue.get_nowait()
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop receiving (idempotent, thread-safe); messages already queued stay readable."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._close()

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}{' closed' if self.closed else ''}>"


class OutputPort:
    """MIDI output: `send` locks and refuses once closed (the Scheduler validates messages);
    subclasses implement `_send` and `_close`."""

    timed = False  # True: send_at(due_ns, msg) sends at due_ns itself (port_process)
    failing = False  # sends are failing where the port learns it later (port_process)
    last_error: str | None = None

    def __init__(self, name: str):
        self.name = name
        self.closed = False
        self._lock = threading.Lock()

    def send(self, msg: Message) -> None:
        """Send one raw message (thread-safe); MidiPortError once the port is closed."""
        with self._lock:
            if self.closed:
                raise MidiPortError(f"MIDI output {self.name!r} is closed; open it again to send")
            self._send(msg)

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._close()

    def _send(self, msg: Message) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}{' closed' if self.closed else ''}>"


# ---- loopback (in-process) --------------------------------------------------------------


class LoopbackInput(InputPort):
    """The receiving end of a loopback pair; same interface and code path as MidiInput."""


class LoopbackOutput(OutputPort):
    """An in-process output: each send is recorded in `sent` as (t_ns, msg) when `record`
    is on, and delivered to the connected input as if it had come in over MIDI."""

    def __init__(
        self,
        name: str,
        target: InputPort | None = None,
        record: bool = True,
        now_ns: Callable[[], int] = time.perf_counter_ns,
    ):
        super().__init__(name)
        self.target = target
        self.record = record
        self.sent: list[tuple[int, tuple[int, ...]]] = []
        self._now = now_ns

    def _send(self, msg: Message) -> None:
        if self.record:
            self.sent.append((self._now(), tuple(msg)))
        if self.target is not None and not self.target.closed:
            self.target._on_midi((list(msg), 0.0))


def loopback_pair(
    name: str = "loopback",
    callback: Sink | None = None,
    record: bool = True,
    now_ns: Callable[[], int] = time.perf_counter_ns,
) -> tuple[LoopbackOutput, LoopbackInput]:
    """An (output, input) pair joined in-process: what the output sends, the input receives,
    stamped by `now_ns` (a fake clock in offline runs and tests)."""
    inp = LoopbackInput(name, callback, now_ns)
    return LoopbackOutput(name, inp, record, now_ns), inp


# ---- rtmidi -----------------------------------------------------------------------------


def load_rtmidi():
    try:
        import rtmidi
    except ImportError as err:  # missing wheel or missing shared library (libasound)
        raise MidiPortError(
            f"python-rtmidi cannot be loaded ({err}): reinstall it with "
            f"`pip install python-rtmidi`, or try `companion demo`"
        ) from err
    return rtmidi


def _api(backend: str) -> int:
    """The rtmidi API constant for "native" (the platform's own) or "jack"."""
    rtmidi = load_rtmidi()
    if backend == "jack":
        api = rtmidi.API_UNIX_JACK
    elif backend == "native":
        api = {"darwin": rtmidi.API_MACOSX_CORE, "win32": rtmidi.API_WINDOWS_MM}.get(
            sys.platform, rtmidi.API_LINUX_ALSA
        )
    else:
        raise MidiPortError(f"unknown MIDI backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if api not in rtmidi.get_compiled_api():
        raise MidiPortError(
            f"this python-rtmidi build has no {rtmidi.get_api_display_name(api)} support; "
            f"use --backend {'native' if backend == 'jack' else 'jack'}, or try `companion demo`"
        )
    return api


def _client(kind: str, backend: str, client_name: str = CLIENT_NAME):
    """A new rtmidi MidiIn/MidiOut on `backend`, or MidiPortError when it cannot be had."""
    rtmidi = load_rtmidi()
    api = _api(backend)
    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    try:
        return cls(api, client_name)
    except rtmidi.RtMidiError as err:
        raise MidiPortError(
            f"no {system_name(backend)} is reachable ({err}): {unreachable_hint(backend)}"
        ) from err


def _open(client, name: str | None, direction: str, virtual_name: str, backend: str) -> str:
    """Open a virtual port, or connect to the existing one matching `name`; return the name
    the port goes by."""
    rtmidi = load_rtmidi()
    try:
        if name is None:
            client.open_virtual_port(virtual_name)
            return virtual_name
        ports = client.get_ports()
        index = match_port(ports, name, direction)
        client.open_port(index, virtual_name)
        return ports[index]
    except rtmidi.UnsupportedOperationError as err:  # Windows MM: no virtual ports
        raise MidiPortError(
            f"this MIDI system cannot make virtual ports ({err}): {unreachable_hint(backend)}"
        ) from err
    except rtmidi.RtMidiError as err:
        raise MidiPortError(
            f"cannot open MIDI {direction} {name or virtual_name!r} ({err}): check that the "
            f"port still exists and retry, or try `companion demo`"
        ) from err


# jack2's client library races a port unregister against its own notification thread, which
# may still be walking the client's port list for a graph change made just before (another
# client's port closed or disconnected): a segfault in JackClient::HandleLatencyCallback
# (jack2 issue 216). Seen in CI when a test closed its listener right after its keyboard.
# Waiting for the graph to be quiet first avoids it: in a stress loop (a daemon exits, then a
# keyboard and a listener close at once) 0 s crashed within 25 cycles; 0.1 s ran 300 clean.
JACK_SETTLE_S = 0.1


def close_client(client) -> None:
    """Close an rtmidi client's port and the client itself; on JACK, only once the graph has
    settled (see JACK_SETTLE_S). Every JACK client of ours closes through here."""
    rtmidi = load_rtmidi()
    if client.get_current_api() == rtmidi.API_UNIX_JACK:
        time.sleep(JACK_SETTLE_S)
    client.close_port()
    client.delete()


def _leak(client) -> None:
    """Never free `client`: an rtmidi JACK client whose server is gone crashes libjack when
    it is closed or deleted, even at interpreter exit (seen: a segfault in close_port)."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(client))


class MidiInput(InputPort):
    """A real MIDI input (rtmidi.MidiIn) delivering (t_ns, msg) pairs."""

    def __init__(self, client, name: str | None, backend: str, callback: Sink | None):
        super().__init__(VIRTUAL_INPUT, callback)
        self._client = client
        client.ignore_types(sysex=True, timing=False, active_sense=True)  # keep MIDI clock
        client.set_callback(self._on_midi)  # before opening: nothing arrives unstamped
        self.name = _open(client, name, "input", VIRTUAL_INPUT, backend)

    def _close(self) -> None:
        self._client.cancel_callback()
        close_client(self._client)  # a virtual port only goes away with its client

    def abandon(self) -> None:
        """The MIDI system is gone: mark the port closed without touching its client."""
        with self._lock:
            if not self.closed:
                self.closed = True
                _leak(self._client)


class MidiOutput(OutputPort):
    """A real MIDI output (rtmidi.MidiOut)."""

    def __init__(self, client, name: str):
        super().__init__(name)
        self._client = client

    def _send(self, msg: Message) -> None:
        self._client.send_message(msg)

    def _close(self) -> None:
        # RtMidi's JACK closePort waits (up to 1 s) for the process thread to flush what was
        # sent, so the note-offs of a final panic still leave.
        close_client(self._client)

    def abandon(self) -> None:
        """The MIDI system is gone: mark the port closed without touching its client."""
        with self._lock:
            if not self.closed:
                self.closed = True
                _leak(self._client)


def open_input(
    name: str | None = None,
    backend: str = "native",
    callback: Sink | None = None,
    client_name: str = CLIENT_NAME,
) -> MidiInput:
    """Open a MIDI input: the virtual "midi-companion in" when `name` is None, else the one
    existing port (that we can receive from) whose name contains `name`, case-insensitive.
    See InputPort for `callback`."""
    backend = choose_backend(backend)[0]
    client = _client("input", backend, client_name)
    try:
        return MidiInput(client, name, backend, callback)
    except BaseException:
        client.delete()
        raise


def open_output(
    name: str | None = None, backend: str = "native", client_name: str = CLIENT_NAME
) -> MidiOutput:
    """Open a MIDI output: the virtual "midi-companion out" when `name` is None, else the one
    existing port (that we can send to) whose name contains `name`, case-insensitive."""
    backend = choose_backend(backend)[0]
    client = _client("output", backend, client_name)
    try:
        return MidiOutput(client, _open(client, name, "output", VIRTUAL_OUTPUT, backend))
    except BaseException:
        client.delete()
        raise


def list_ports(backend: str = "native") -> dict[str, list[str]]:
    """The ports `backend` offers: {"inputs": [...], "outputs": [...]} (inputs are ports we
    can receive from, outputs ports we can send to)."""
    backend = choose_backend(backend)[0]
    found = {}
    for kind, key in (("input", "inputs"), ("output", "outputs")):
        client = _client(kind, backend)
        try:
            found[key] = list(client.get_ports())
        finally:
            client.delete()
    return found
