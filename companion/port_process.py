"""The MIDI ports in a process of their own: it owns the output port and sends each message at
its due time, so no Python work of the daemon's (a model step, the mode's loop, a collection)
can stand between a due message and the port; and, where the daemon asks for it, it owns the
input port too, stamps what comes in and answers harmonize's lead notes from the table the
daemon armed (companion/armed.py) before forwarding them.

The daemon's Scheduler keeps everything it decides (order, late policy, the NoteLedger,
cancel and retract) and hands each message over `SEND_AHEAD_NS` before it is due
(`Scheduler(send_ahead_ns=...)`); an answer due now is handed over at once. Here a message
is a 12-byte record on a pipe, (due_ns, length, three bytes); the port process keeps a heap
and sends each at its due time on perf_counter_ns (the system's monotonic clock, the same in
both processes), spinning the last stretch as the Scheduler does. Two more records: ARM (an
armed table follows, its length in the three bytes) and HANDLED (the daemon has handled the
input message numbered in the three bytes).

Order: what was handed over for one key (channel, note) leaves in the order it was handed
over (a later record is never sent before an earlier one for its key, so a release scheduled
now cannot overtake the note-on it ends), which keeps the daemon's ledger true; other keys'
messages do not wait for each other.

Input: each message is stamped on arrival (perf_counter_ns, in the input's own thread) and
forwarded as a JSON line {"i": message, "t": stamp, "s": its number, "a": when it was
answered, if it was}. A forwarded line that would block (the daemon stuck for seconds in a
flood) is dropped and counted instead: the MIDI thread never waits.

Reports: the port process writes one JSON line on its stdout when a send fails, when sends
work again, and when it ends (sent, send errors, |send - due| p50/p99/max, answered early).
When the daemon dies without a word (kill -9), its pipe closes: the port process releases
every note it left sounding and ends. SIGINT/SIGHUP/SIGTERM from the terminal are the
daemon's to handle; this process ends when the daemon closes it.

Usage (by ProcessOutput, not by hand): python -m midi_companion.port_process BACKEND OUT IN
(OUT, IN: a port name to connect to, "" for the virtual port; IN "-" for no input).
"""

from __future__ import annotations

import heapq
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque

from midi_companion.armed import SEQ_MASK, Answerer, Armed
from midi_companion.errors import MidiPortError
from midi_companion.jack_frames import LEAD_NS
from midi_companion.ledger import note_kind
from midi_companion.ports import InputPort, OutputPort
from midi_companion.stats import percentiles

RECORD = struct.Struct("<qB3s")  # due_ns, length, data
OPEN = b"o"  # the first byte on the pipe: open the port now
QUIT = RECORD.pack(-1, 0, b"")  # the last record: the daemon closes the port
HANDLED = -2  # the daemon has handled input message N (its low 24 bits in the data)
ARM = -3  # an armed table follows (its length in the data), or none (length 0: disarmed)
NO_INPUT = "-"
REPORT_EVERY_S = 0.5  # input dropped in a flood is told at most this often
ORPHANED_FLUSH_S = 0.05  # the daemon died: time for JACK to take the releases, then exit
SEND_AHEAD_NS = 10_000_000  # the Scheduler hands a message over this long before it is due
SPIN_NS = 250_000  # as the Scheduler: a timed wait wakes late, the last stretch spins
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


class ProcessOutput(OutputPort):
    """A MIDI output port owned by a port process (see the module's docstring), and with
    `with_input` its input port too (`self.input`, a ProcessInput). The process starts at
    once; `open()` opens its ports.

    `send(msg)` sends now, `send_at(due_ns, msg)` at due_ns; both only write a record (a few
    microseconds, thread-safe). `arm(armed)` hands over the answers for the next lead note,
    `handled(n)` says input message n was handled. `failing`/`last_error` follow the port
    process's reports; `report` is its last one (the final counters after close())."""

    timed = True

    def __init__(
        self,
        name: str | None,
        backend: str,
        debug: bool = False,
        with_input: bool = False,
        input_name: str | None = None,
    ):
        super().__init__(name or "")
        self.failing = False
        self.last_error: str | None = None
        self.report: dict = {}
        self.input: ProcessInput | None = ProcessInput() if with_input else None
        inp = (input_name or "") if with_input else NO_INPUT
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "midi_companion.port_process", backend, name or "", inp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # libjack's complaints when its server dies are not the user's to read
            stderr=None if debug else subprocess.DEVNULL,
            bufsize=0,
        )
        self._fd = self._proc.stdin.fileno()
        self._reader: threading.Thread | None = None

    def open(self) -> ProcessOutput:
        """Open the ports (the process was started before, to start up while the models
        load); MidiPortError with the port process's sentence when it cannot."""
        try:
            os.write(self._fd, OPEN)
            first = self._read_line(OPEN_TIMEOUT_S)
        except OSError:
            first = None
        if first is None or "port" not in first:
            self.abandon()
            what = (first or {}).get("error") or "the port process did not start"
            raise MidiPortError(what)
        self.name = first["port"]
        if self.input is not None:
            self.input.name = first["input"]
        self._reader = threading.Thread(target=self._read, name="port-reports", daemon=True)
        self._reader.start()
        return self

    def _read_line(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def _read(self) -> None:
        """The port process's lines: input forwarded (to `input`'s queue) and reports."""
        for line in self._proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if "i" in report and self.input is not None:
                self.input._enqueue((report["t"], report["i"], report["s"], report.get("a")))
                continue
            self.report = report
            self.failing = bool(report.get("failing"))
            if report.get("error"):
                self.last_error = report["error"]
            if self.input is not None and "in_dropped" in report:  # counted as its own
                self.input.dropped += report["in_dropped"] - self.input.dropped_there
                self.input.dropped_there = report["in_dropped"]

    def _send(self, msg) -> None:
        self._write(RECORD.pack(0, *_packed(msg)))

    def send_at(self, due_ns: int, msg) -> None:
        """Send `msg` at `due_ns` (perf_counter_ns); MidiPortError once closed."""
        with self._lock:
            if self.closed:
                raise MidiPortError(f"MIDI output {self.name!r} is closed; open it again to send")
            self._write(RECORD.pack(due_ns, *_packed(msg)))

    def arm(self, armed: Armed | None) -> None:
        """The answers for the next lead note-on (None: none); see companion/armed.py."""
        data = armed.encode() if armed is not None else b""
        self._control(RECORD.pack(ARM, 0, len(data).to_bytes(3, "little")) + data)

    def handled(self, seq: int) -> None:
        """Input message `seq` (a note answered early) has been handled by the daemon."""
        self._control(RECORD.pack(HANDLED, 0, (seq & SEQ_MASK).to_bytes(3, "little")))

    def _control(self, record: bytes) -> None:
        with self._lock:
            if not self.closed:
                try:
                    self._write(record)
                except MidiPortError:
                    pass  # the process is gone: sends say so

    def _write(self, record: bytes) -> None:
        try:
            os.write(self._fd, record)
        except OSError as err:  # the port process is gone (it crashed, or was killed)
            raise MidiPortError(f"the port process of {self.name!r} has ended ({err})") from err

    def _close(self) -> None:
        """Ask the port process to end (it releases what it left sounding and closes the
        ports, letting JACK flush), and wait for its last report."""
        try:
            if self._reader is not None:
                os.write(self._fd, QUIT)
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(1.0)
        if self.input is not None:
            self.input.close()

    def abandon(self) -> None:
        """The MIDI system is gone: end the port process without closing its clients
        (closing a JACK client whose server is gone crashes libjack)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._proc.kill()
                self._proc.wait()
        if self.input is not None:
            self.input.close()


class ProcessInput(InputPort):
    """The input port of a port process, as the daemon reads it: (t_ns, msg, n, answered_ns)
    on `queue`, stamped there on arrival; `n` numbers the message (ProcessOutput.handled),
    `answered_ns` is when the port process sent its armed answer (None: not answered).
    Opened and closed with its ProcessOutput."""

    def __init__(self):
        super().__init__("")
        self.dropped_there = 0  # forwarded lines the port process dropped (in `dropped` too)


def _packed(msg) -> tuple[int, bytes]:
    data = bytes(msg)
    return len(data), data[:3]


# ---- the sending process ------------------------------------------------------------------


class _Sender:
    """The heap, the output port and the armed answers, in the port process. `lock` is
    held by whichever thread changes them: the main loop, or the input's thread answering."""

    def __init__(self, port):
        self.port = port
        # a port that places messages at their time itself (jack_frames.FramePorts) is
        # handed each this long ahead; another is sent to at the due time
        self.lead = LEAD_NS if hasattr(port, "send_at") else 0
        self.lock = threading.Lock()
        self.answerer = Answerer()
        self.heap: list[tuple[int, int, bytes, bool]] = []  # (due, seq, data, timed)
        self.seq = 0
        self.last_due: dict[tuple[int, int], int] = {}  # key -> due of its last record
        self.pending_on: dict[tuple[int, int], dict[int, int]] = {}  # key -> {seq: due}
        self.cancelled: set[int] = set()
        self.sounding: set[tuple[int, int]] = set()
        self.lateness: deque[int] = deque(maxlen=8192)
        self.sent = self.errors = 0
        self.failing = False

    def take(self, due: int, data: bytes) -> None:
        if self.answerer.matched(data):
            return  # the daemon's answer to a note, sent early already
        key = _key(data)
        if key is not None:
            waiting = self.pending_on.setdefault(key, {})
            if _is_on(data):
                waiting[self.seq] = due
            else:  # a release due before a note-on of its key still waiting: that note
                # never starts (an interrupted answer, a voice taken back)
                for seq in [q for q, on_due in waiting.items() if on_due >= due]:
                    self.cancelled.add(seq)
                    del waiting[seq]
        asked = due
        if key is not None:
            due = max(due, self.last_due.get(key, due))  # never before an earlier record
            self.last_due[key] = due
        # its lateness is measured when it was due at a time of its own (not "now", and not
        # held back behind an earlier record of its key)
        heapq.heappush(self.heap, (due, self.seq, data, asked != 0 and asked == due))
        self.seq += 1

    def send_due(self, now: int) -> None:
        while self.heap and self.heap[0][0] <= now + self.lead:
            due, seq, data, timed = heapq.heappop(self.heap)
            if seq in self.cancelled:
                self.cancelled.discard(seq)
                continue
            if _is_on(data):
                self.pending_on.get(_key(data), {}).pop(seq, None)
            self.send(data, due)
            self.answerer.sent_on(data[0] & 0x0F if data[0] < 0xF0 else None)
            if timed and not self.lead:  # a port that places messages measures itself
                self.lateness.append(abs(time.perf_counter_ns() - due))

    def answer(self, t_ns: int, msg) -> tuple[int, int | None]:
        """An input message stamped `t_ns`: its number, and when its armed answer was sent
        (None: it had none)."""
        with self.lock:
            seq, answer = self.answerer.heard(t_ns, msg, self._changing)
            for data in answer:
                self.send(data)
        if not answer:
            return seq, None
        # placed at the note's own frame by a port that places messages, else sent now
        return seq, (t_ns if self.lead else time.perf_counter_ns())

    def _changing(self, channels) -> bool:
        """Whether a record waiting here (or handed to the port, not yet placed) will change
        what sounds on `channels` (what sounds there is then not what the armed table was
        built on)."""
        waiting = [d for _, q, d, _ in self.heap if q not in self.cancelled]
        waiting += getattr(self.port, "waiting", list)()
        return any(d[0] < 0xF0 and d[0] & 0x0F in channels for d in waiting)

    def handled(self, seq: int) -> None:
        for data in self.answerer.handled(seq):
            if _key(data) in self.sounding:
                self.send(data)

    def send(self, data: bytes, due: int = 0) -> None:
        """Send `data` now (or place it at `due`, on a port that does), keeping the synth's
        notes whole whatever the daemon believes: a note-on of a sounding note ends it
        first, a note-off of a silent one is not sent (the daemon's ledger does the same;
        this holds also where an armed answer and the daemon's own answer differ)."""
        key = _key(data)
        if key is not None:
            if _is_on(data) and key in self.sounding:
                self._send(bytes((0x80 | key[0], key[1], 0)), due)
            elif not _is_on(data) and key not in self.sounding:
                return
        self._send(data, due)

    def _send(self, data: bytes, due: int) -> None:
        try:
            if self.lead:
                self.port.send_at(due, data)
            else:
                self.port.send(list(data))
        except Exception as err:  # the port's error, whatever it is: told, not raised
            self.errors += 1
            if not self.failing:
                self.failing = True
                _tell(failing=True, error=f"{type(err).__name__}: {err}", send_errors=self.errors)
            return
        self.sent += 1
        if self.failing:
            self.failing = False
            _tell(failing=False, send_errors=self.errors)
        key = _key(data)
        if key is not None:
            if _is_on(data):
                self.sounding.add(key)
            else:
                self.sounding.discard(key)

    def release(self) -> None:
        """The daemon has gone: what is still sounding is released, nothing more starts."""
        for ch, pitch in sorted(self.sounding):
            self.send(bytes((0x80 | ch, pitch, 0)))

    def summary(self) -> dict:
        lateness = getattr(self.port, "lateness", self.lateness)
        p50, p99 = percentiles(lateness, 50, 99)
        return {
            "sent": self.sent,
            "send_errors": self.errors,
            "failing": self.failing,
            "lateness_p50_ms": p50 / 1e6,
            "lateness_p99_ms": p99 / 1e6,
            "lateness_max_ms": max(lateness, default=0) / 1e6,
            "answered_early": self.answerer.answered,
            "frame_time_jumps": getattr(self.port, "jumps", 0),
        }


def _key(data: bytes) -> tuple[int, int] | None:
    """(channel, note) of a note message, None for anything else."""
    return (data[0] & 0x0F, data[1]) if note_kind(data) else None


def _is_on(data: bytes) -> bool:
    return note_kind(data) == "on"


_OUT_LOCK = threading.Lock()  # the main loop's reports and the input's forwarded lines


def _tell(**report) -> None:
    line = (json.dumps(report) + "\n").encode()
    with _OUT_LOCK:
        while line:
            try:
                line = line[os.write(1, line) :]
            except BlockingIOError:  # stdout is non-blocking once the input forwards
                select.select([], [1], [], 1.0)


class _Forward:
    """The input's callback: stamp, answer from the armed table, forward to the daemon.
    A line that would block is dropped and counted (the MIDI thread never waits)."""

    def __init__(self, sender: _Sender):
        self.sender = sender
        self.dropped = 0

    def __call__(self, item: tuple[int, list[int]]) -> None:
        t, msg = item  # stamped on arrival (ports.InputPort)
        seq, answered = self.sender.answer(t, msg)
        report = {"i": msg, "t": t, "s": seq}
        if answered is not None:
            report["a"] = answered
        line = (json.dumps(report, separators=(",", ":")) + "\n").encode()
        with _OUT_LOCK:
            try:
                os.write(1, line)  # under PIPE_BUF: whole, or not at all
            except BlockingIOError:
                self.dropped += 1


def serve(sender: _Sender, fd: int, forward: _Forward | None = None) -> bool:
    """Read records until the pipe closes, sending each at its due time; then release. True
    when the daemon said it closes us, False when the pipe just closed (it died)."""
    pending = b""
    quit_ = False
    told_dropped = 0
    while not quit_:
        now = time.perf_counter_ns()
        with sender.lock:
            sender.send_due(now)
            wait = REPORT_EVERY_S
            if sender.heap:
                spin = 0 if sender.lead else SPIN_NS
                ahead = sender.heap[0][0] - sender.lead - now - spin
                wait = min(wait, max(0.0, ahead / 1e9))
        if forward is not None and forward.dropped != told_dropped:
            told_dropped = forward.dropped
            _tell(in_dropped=told_dropped)
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            if sender.heap and not sender.lead:
                due = sender.heap[0][0]
                while time.perf_counter_ns() < due:
                    time.sleep(0)  # the last stretch: spin (letting the input's thread in)
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        with sender.lock:
            pending, quit_ = _take_records(sender, pending)
    # the daemon closed us (its panic is sent already) or died (kill -9)
    with sender.lock:
        sender.send_due(time.perf_counter_ns())
        sender.release()
    return quit_


def _take_records(sender: _Sender, pending: bytes) -> tuple[bytes, bool]:
    """Every whole record in `pending` taken; (what is left, whether QUIT came)."""
    i = 0
    while len(pending) - i >= RECORD.size:
        due, n, data = RECORD.unpack_from(pending, i)
        if due == ARM:
            size = int.from_bytes(data, "little")
            if len(pending) - i - RECORD.size < size:
                break  # the table's rest is still on its way
            body = pending[i + RECORD.size : i + RECORD.size + size]
            sender.answerer.arm(Armed.decode(body) if size else None)
            i += RECORD.size + size
            continue
        i += RECORD.size
        if due == HANDLED:
            sender.handled(int.from_bytes(data, "little"))
        elif due < 0:
            return b"", True
        else:
            sender.take(due, data[:n])
    return pending[i:], False


REALTIME_PRIORITY = 10  # SCHED_FIFO, low: below JACK's own threads (60-95 where it is RT)


def realtime(tid: int = 0) -> bool:
    """Wake on time however busy the daemon keeps the CPUs: SCHED_FIFO for thread `tid`
    (0: the calling one), where the system grants it (Linux with rtprio, as JACK users
    have). Safe in the port process as it was not in the daemon: its Python threads share
    their GIL with nobody but each other, and sleep but for the last 0.25 ms before a due
    time and the moment a message comes in."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True


def _realtime_threads() -> None:
    """Every thread of this process at SCHED_FIFO, the MIDI system's own among them (the
    input's callback runs there), where the system grants it and JACK has not already
    given them a priority of their own."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:
                realtime(tid)
        except (AttributeError, OSError):
            pass


def wanted() -> bool:
    """Whether the daemon should play through a port process: on POSIX (select() on pipes)
    where real-time scheduling is granted. Without it the hop to another process costs more
    than it saves (harmonize p50 +0.5 ms in docs/BENCHMARKS.md): the daemon opens its ports
    itself. Asked of a throwaway thread, so this process's own scheduling is untouched."""
    if os.name != "posix":
        return False
    granted: list[bool] = []
    probe = threading.Thread(target=lambda: granted.append(realtime()), name="rt-probe")
    probe.start()
    probe.join()
    return granted == [True]


def _open(backend: str, out_name: str | None, in_name: str):
    """(output, input or None, its _Forward or None, the _Sender): on JACK the ports of
    jack_frames (each message at its frame) where libjack loads, else python-rtmidi's."""
    from midi_companion import jack_frames, ports

    with_input = in_name != NO_INPUT
    if backend == "jack" and jack_frames.load() is not None:
        forward = None  # made once the sender is; the callback reads it when input comes
        on_input = (lambda t, data: forward((t, list(data)))) if with_input else None
        frames = jack_frames.FramePorts(
            out_name, (in_name or None) if with_input else None, on_input
        )
        sender = _Sender(frames)
        forward = _Forward(sender) if with_input else None
        inp = _NamedInput(frames.in_name) if with_input else None
        return frames, inp, forward, sender
    port = ports.open_output(out_name, backend=backend)
    sender = _Sender(port)
    if not with_input:
        return port, None, None, sender
    forward = _Forward(sender)
    try:
        inp = ports.open_input(in_name or None, backend=backend, callback=forward)
    except MidiPortError:
        port.close()
        raise
    return port, inp, forward, sender


class _NamedInput:
    """The input of FramePorts, as main() closes it (it closes with the output)."""

    def __init__(self, name: str):
        self.name = name

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):  # the daemon's to handle; it closes us
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    args = (sys.argv[1:] if argv is None else argv) + ["", NO_INPUT]
    backend, out_name, in_name = args[0], args[1] or None, args[2]
    if os.read(0, 1) != OPEN:  # the daemon stopped before its ports were to open
        return 0
    realtime()
    try:
        port, inp, forward, sender = _open(backend, out_name, in_name)
    except MidiPortError as err:
        _tell(error=str(err))
        return 2
    _realtime_threads()
    _tell(port=port.name, input=inp.name if inp is not None else None)
    os.set_blocking(1, False)  # a forwarded line never makes the MIDI thread wait
    if not serve(sender, sys.stdin.fileno(), forward):
        # The daemon died. Its JACK clients are dead too, and the server is busy with them:
        # closing ours now would wait on it for seconds (a JACK server in synchronous mode
        # took 7 s). The releases are out once JACK's next cycles run; then leave, and the
        # server closes this client as it closed the daemon's.
        time.sleep(ORPHANED_FLUSH_S)
        os._exit(0)
    if inp is not None:
        inp.close()
    port.close()
    _tell(**sender.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
