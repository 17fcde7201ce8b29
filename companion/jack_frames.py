"""JACK MIDI ports that place each message at its exact frame: the port process's backend on
JACK (libjack through ctypes, as jack_watch.py; no binding to install).

python-rtmidi's JACK ports write a message at the start of the period after it was sent, so
a scheduled note lands anywhere in the period after its time (1.33 ms at 64 frames, 48 kHz).
Here the process callback, run by JACK once a period, writes each message due within the
period at the frame of its due time, and stamps what comes in with the time of its own
frame. Due times are perf_counter_ns; JACK's clock (jack_get_time) is another monotonic
clock, so the offset between the two is measured when the ports open (microseconds of
error, the same in every process: a listener of this kind agrees with the sender), and
JACK's frame times (frames_to_time) are followed where they jump away from its clock
(`_follow`).

What is sent from within the callback (an armed answer to the note just read) goes out in
that very period, at the note's frame. A message handed over after its period has run goes
out at the start of the next one (counted as late by `lateness`).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from midi_companion.errors import MidiPortError
from midi_companion.ports import CLIENT_NAME, VIRTUAL_INPUT, VIRTUAL_OUTPUT, match_port

MIDI_TYPE = b"8 bit raw midi"
IS_INPUT, IS_OUTPUT = 0x1, 0x2
NO_START_SERVER = 0x01
LEAD_NS = 4_000_000  # messages are handed to the callback this long before they are due
CALIBRATION_SAMPLES = 9
MAX_LAG_NS = 20_000_000  # a period's callback this far from its first frame's time ...
JUMP_PERIODS = 32  # ... this many periods in a row: JACK's frame times jumped (_follow)

_PROCESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p)


class _Event(ctypes.Structure):
    _fields_ = [
        ("time", ctypes.c_uint32),
        ("size", ctypes.c_size_t),
        ("buffer", ctypes.POINTER(ctypes.c_ubyte)),
    ]


def load() -> ctypes.CDLL | None:
    """libjack with the functions used here typed; None where there is none."""
    try:
        lib = ctypes.CDLL("libjack.so.0")
    except OSError:
        return None
    p, u32, u64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
    for name, res, args in (
        ("jack_client_open", p, [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]),
        ("jack_client_close", ctypes.c_int, [p]),
        ("jack_get_client_name", ctypes.c_char_p, [p]),
        (
            "jack_port_register",
            p,
            [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong],
        ),
        ("jack_port_name", ctypes.c_char_p, [p]),
        ("jack_set_process_callback", ctypes.c_int, [p, _PROCESS, p]),
        ("jack_activate", ctypes.c_int, [p]),
        ("jack_deactivate", ctypes.c_int, [p]),
        ("jack_port_get_buffer", p, [p, u32]),
        ("jack_midi_clear_buffer", None, [p]),
        ("jack_midi_event_write", ctypes.c_int, [p, u32, ctypes.c_char_p, ctypes.c_size_t]),
        ("jack_midi_get_event_count", u32, [p]),
        ("jack_midi_event_get", ctypes.c_int, [ctypes.POINTER(_Event), p, u32]),
        ("jack_last_frame_time", u32, [p]),
        ("jack_frames_to_time", u64, [p, u32]),
        ("jack_get_time", u64, []),
        ("jack_get_sample_rate", u32, [p]),
        (
            "jack_get_ports",
            ctypes.POINTER(ctypes.c_char_p),
            [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong],
        ),
        ("jack_free", None, [p]),
        ("jack_connect", ctypes.c_int, [p, ctypes.c_char_p, ctypes.c_char_p]),
    ):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            return None
        fn.restype, fn.argtypes = res, args
    return lib


class FramePorts:
    """An output port (and with `on_input`, an input port) on one JACK client. `send_at`
    places a message at the frame of `due_ns` (0: as soon as possible); `on_input(t_ns,
    data)` is called from JACK's thread for each message in, and what it sends goes out in
    the same period. MidiPortError when JACK cannot be reached or a name matches no port."""

    def __init__(
        self,
        out_name: str | None,
        in_name: str | None = None,
        on_input: Callable[[int, bytes], None] | None = None,
        lib: ctypes.CDLL | None = None,
        client_name: str = CLIENT_NAME,
        output: bool = True,
    ):
        """`client_name`, `output=False`: a client of another name with an input only (the
        bench's listener, stamping in frames)."""
        self.lib = lib or load()
        if self.lib is None:
            raise MidiPortError("libjack is not installed: install JACK (jackd2)")
        status = ctypes.c_int(0)
        self.client = self.lib.jack_client_open(client_name.encode(), NO_START_SERVER, status)
        if not self.client:
            raise MidiPortError(
                f"no JACK server is reachable (status {status.value:#x}): start one "
                f"(e.g. qjackctl), then companion run"
            )
        self.rate = self.lib.jack_get_sample_rate(self.client)
        self.ns_per_frame = 1e9 / self.rate
        self.on_input = on_input
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = itertools.count()
        self._cycle: list | None = None  # this period's events, while the callback runs
        self._cycle_frame = 0
        self._cycle_thread: int | None = None
        self.lateness: deque[int] = deque(maxlen=8192)
        self.skew_ns = 0  # JACK's clock - its frame times, where they jumped apart (_follow)
        self._jumped: list[int] = []
        self.jumps = 0
        self.out = self._register(VIRTUAL_OUTPUT, IS_OUTPUT) if output else None
        self.inp = self._register(VIRTUAL_INPUT, IS_INPUT) if on_input is not None else None
        self._callback = _PROCESS(self._process)  # kept: libjack holds only the pointer
        self.lib.jack_set_process_callback(self.client, self._callback, None)
        self.offset_ns = self._calibrate()  # perf_counter_ns - JACK's clock
        if self.lib.jack_activate(self.client) != 0:
            self._close_client()
            raise MidiPortError("the JACK server refused to activate the companion's client")
        try:
            self.name = self._connect(out_name, self.out, "output") if output else None
            self.in_name = self._connect(in_name, self.inp, "input") if self.inp else None
        except MidiPortError:
            self.close()
            raise

    # ---- set-up ------------------------------------------------------------------------
    def _register(self, name: str, flags: int) -> int:
        port = self.lib.jack_port_register(self.client, name.encode(), MIDI_TYPE, flags, 0)
        if not port:
            self._close_client()
            raise MidiPortError(f"JACK refused the port {name!r}")
        return port

    def _connect(self, name: str | None, port: int, direction: str) -> str:
        """Connect our port to the one existing port matching `name` (None: leave it a
        virtual port for the user to connect); the name it goes by."""
        ours = VIRTUAL_OUTPUT if direction == "output" else VIRTUAL_INPUT
        if name is None:
            return ours
        # an output connects to ports that take input, and the other way round
        flags = IS_INPUT if direction == "output" else IS_OUTPUT
        found = self.lib.jack_get_ports(self.client, None, MIDI_TYPE, flags)
        names: list[str] = []
        if found:
            i = 0
            while found[i]:
                names.append(found[i].decode())
                i += 1
            self.lib.jack_free(found)
        names = [n for n in names if not n.startswith(self._client_name() + ":")]
        peer = names[match_port(names, name, direction)]
        own = self.lib.jack_port_name(port)
        src, dst = (own, peer.encode()) if direction == "output" else (peer.encode(), own)
        if self.lib.jack_connect(self.client, src, dst) not in (0, 17):  # 17: EEXIST
            raise MidiPortError(f"cannot connect to {peer!r}: check the port and retry")
        return peer

    def _client_name(self) -> str:
        return self.lib.jack_get_client_name(self.client).decode()

    # ---- sending -----------------------------------------------------------------------
    def send(self, msg) -> None:
        self.send_at(0, bytes(msg))

    def send_at(self, due_ns: int, data: bytes) -> None:
        """Write `data` at the frame of `due_ns` (0 or past: the next period's start; from
        within the input's callback: this period, at the note's frame)."""
        if self._cycle is not None and threading.get_ident() == self._cycle_thread:
            self._cycle.append((self._cycle_frame, next(self._seq), bytes(data)))
            return
        with self._lock:
            heapq.heappush(self._heap, (due_ns, next(self._seq), bytes(data)))

    def waiting(self) -> list[bytes]:
        """The messages handed over and not yet placed in a period."""
        with self._lock:
            return [data for _, _, data in self._heap]

    # ---- JACK's thread -----------------------------------------------------------------
    def _process(self, nframes: int, _arg) -> int:
        try:
            self._cycle_thread = threading.get_ident()
            lib, client = self.lib, self.client
            start = lib.jack_frames_to_time(client, lib.jack_last_frame_time(client)) * 1000
            self._follow(start)
            start += self.skew_ns + self.offset_ns
            npf = self.ns_per_frame
            events: list = []
            self._cycle = events
            if self.inp is not None:
                buf = lib.jack_port_get_buffer(self.inp, nframes)
                ev = _Event()
                for i in range(lib.jack_midi_get_event_count(buf)):
                    if lib.jack_midi_event_get(ctypes.byref(ev), buf, i) != 0:
                        continue
                    self._cycle_frame = ev.time
                    data = ctypes.string_at(ev.buffer, ev.size)
                    self.on_input(int(start + ev.time * npf), data)
            self._cycle = None
            end = start + nframes * npf
            with self._lock:
                while self._heap and self._heap[0][0] < end:
                    due, seq, data = heapq.heappop(self._heap)
                    frame = min(nframes - 1, max(0, int((due - start) / npf + 0.5)))
                    events.append((frame, seq, data))
                    if due:
                        self.lateness.append(abs(int(start + frame * npf) - due))
            if self.out is None:
                return 0
            out = lib.jack_port_get_buffer(self.out, nframes)
            lib.jack_midi_clear_buffer(out)
            for frame, _, data in sorted(events):
                lib.jack_midi_event_write(out, frame, data, len(data))
        except Exception:  # noqa: BLE001 - JACK's thread must never see an exception
            self._cycle = None
        return 0

    def _calibrate(self) -> int:
        """perf_counter_ns - JACK's clock (jack_get_time, ns): the median of a few readings,
        each taken between two readings of perf_counter_ns (microseconds of error, and the
        same in every process on the machine, so their stamps agree)."""
        offsets = []
        for _ in range(CALIBRATION_SAMPLES):
            a = time.perf_counter_ns()
            j = self.lib.jack_get_time() * 1000
            b = time.perf_counter_ns()
            offsets.append((a + b) // 2 - j)
        return sorted(offsets)[len(offsets) // 2]

    def _follow(self, start: int) -> None:
        """Keep `skew_ns`, JACK's clock - its frame times: 0 while a period's callback runs
        within MAX_LAG_NS of its first frame's time (it runs 0.3 ms after it typically, a
        few ms at worst on a busy machine). When it is further, period after period for
        JUMP_PERIODS periods, JACK's frame times have jumped away from its clock (a server
        that stalled over a killed client keeps its frame count, and its frame times stay
        seconds behind): the skew is then the least of those lags. One late callback (a
        busy CPU) changes nothing."""
        lag = self.lib.jack_get_time() * 1000 - (start + self.skew_ns)
        if -MAX_LAG_NS <= lag <= MAX_LAG_NS:
            self._jumped.clear()
            return
        self._jumped.append(lag)
        if len(self._jumped) >= JUMP_PERIODS:
            self.skew_ns += min(self._jumped)
            self._jumped.clear()
            self.jumps += 1

    # ---- closing -----------------------------------------------------------------------
    def close(self, flush_s: float = 0.5) -> None:
        """Let what is queued go out (up to `flush_s`), then leave JACK."""
        deadline = time.monotonic() + flush_s
        while self._heap and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.01)  # the last period's events are read by their listeners
        self.lib.jack_deactivate(self.client)
        self._close_client()

    def _close_client(self) -> None:
        if self.client:
            self.lib.jack_client_close(self.client)
            self.client = None
