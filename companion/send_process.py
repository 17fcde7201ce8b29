"""The sending side in a process of its own: it owns the MIDI output port and sends each
message at its due time, so no Python work of the daemon's (a model step, the mode's loop, a
collection) can stand between a due message and the port.

The daemon's Scheduler keeps everything it decides (order, late policy, the NoteLedger,
cancel and retract) and hands each message over `SEND_AHEAD_NS` before it is due
(`Scheduler(send_ahead_ns=...)`); an answer due now is handed over at once. Here a message
is a 12-byte record on a pipe, (due_ns, length, three bytes); the sending process keeps a heap
and sends each at its due time on perf_counter_ns (the system's monotonic clock, the same in
both processes), spinning the last stretch as the Scheduler does.

Order: what was handed over for one key (channel, note) leaves in the order it was handed
over (a later record is never sent before an earlier one for its key, so a release scheduled
now cannot overtake the note-on it ends), which keeps the daemon's ledger true; other keys'
messages do not wait for each other.

Reports: the sending process writes one JSON line on its stdout when a send fails, when sends
work again, and when it ends (sent, send errors, |send - due| p50/p99/max). When the daemon
dies without a word (kill -9), its pipe closes: the sending process releases every note it
left sounding and ends. SIGINT/SIGHUP/SIGTERM from the terminal are the daemon's to handle;
this process ends when the daemon closes it.

Usage (by ProcessOutput, not by hand): python -m midi_companion.send_process BACKEND [PORT]
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

from midi_companion.errors import MidiPortError
from midi_companion.ledger import note_kind
from midi_companion.ports import OutputPort
from midi_companion.stats import percentiles

RECORD = struct.Struct("<qB3s")  # due_ns, length, data
OPEN = b"o"  # the first byte on the pipe: open the port now
QUIT = RECORD.pack(-1, 0, b"")  # the last record: the daemon closes the port
ORPHANED_FLUSH_S = 0.05  # the daemon died: time for JACK to take the releases, then exit
SEND_AHEAD_NS = 10_000_000  # the Scheduler hands a message over this long before it is due
SPIN_NS = 250_000  # as the Scheduler: a timed wait wakes late, the last stretch spins
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


class ProcessOutput(OutputPort):
    """A MIDI output port owned by a sending process (see the module's docstring). The
    process starts at once; `open()` opens its port.

    `send(msg)` sends now, `send_at(due_ns, msg)` at due_ns; both only write a record (a few
    microseconds, thread-safe). `failing`/`last_error` follow the sending process's reports;
    `report` is its last one (the final counters after close())."""

    timed = True

    def __init__(self, name: str | None, backend: str, debug: bool = False):
        super().__init__(name or "")
        self.failing = False
        self.last_error: str | None = None
        self.report: dict = {}
        cmd = [sys.executable, "-m", "midi_companion.send_process", backend]
        self._proc = subprocess.Popen(
            cmd + ([name] if name is not None else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # libjack's complaints when its server dies are not the user's to read
            stderr=None if debug else subprocess.DEVNULL,
            bufsize=0,
        )
        self._fd = self._proc.stdin.fileno()
        self._reader: threading.Thread | None = None

    def open(self) -> ProcessOutput:
        """Open the port (the process was started before, to start up while the models
        load); MidiPortError with the sending process's sentence when it cannot."""
        try:
            os.write(self._fd, OPEN)
            first = self._read_line(OPEN_TIMEOUT_S)
        except OSError:
            first = None
        if first is None or "port" not in first:
            self.abandon()
            what = (first or {}).get("error") or "the sending process did not start"
            raise MidiPortError(what)
        self.name = first["port"]
        self._reader = threading.Thread(target=self._read, name="send-reports", daemon=True)
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
        for line in self._proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            self.report = report
            self.failing = bool(report.get("failing"))
            if report.get("error"):
                self.last_error = report["error"]

    def _send(self, msg) -> None:
        self._write(0, msg)

    def send_at(self, due_ns: int, msg) -> None:
        """Send `msg` at `due_ns` (perf_counter_ns); MidiPortError once closed."""
        with self._lock:
            if self.closed:
                raise MidiPortError(f"MIDI output {self.name!r} is closed; open it again to send")
            self._write(due_ns, msg)

    def _write(self, due_ns: int, msg) -> None:
        data = bytes(msg)
        try:
            os.write(self._fd, RECORD.pack(due_ns, len(data), data[:3]))
        except OSError as err:  # the sending process is gone (it crashed, or was killed)
            raise MidiPortError(f"the sending process of {self.name!r} has ended ({err})") from err

    def _close(self) -> None:
        """Ask the sending process to end (it releases what it left sounding and closes the
        port, letting JACK flush), and wait for its last report."""
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

    def abandon(self) -> None:
        """The MIDI system is gone: end the sending process without closing its client
        (closing a JACK client whose server is gone crashes libjack)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._proc.kill()
                self._proc.wait()


# ---- the sending process ------------------------------------------------------------------


class _Sender:
    """The heap and the port, in the sending process."""

    def __init__(self, port):
        self.port = port
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
        while self.heap and self.heap[0][0] <= now:
            due, seq, data, timed = heapq.heappop(self.heap)
            if seq in self.cancelled:
                self.cancelled.discard(seq)
                continue
            if _is_on(data):
                self.pending_on.get(_key(data), {}).pop(seq, None)
            self.send(data)
            if timed:
                self.lateness.append(abs(time.perf_counter_ns() - due))

    def send(self, data: bytes) -> None:
        try:
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
        p50, p99 = percentiles(self.lateness, 50, 99)
        return {
            "sent": self.sent,
            "send_errors": self.errors,
            "failing": self.failing,
            "lateness_p50_ms": p50 / 1e6,
            "lateness_p99_ms": p99 / 1e6,
            "lateness_max_ms": max(self.lateness, default=0) / 1e6,
        }


def _key(data: bytes) -> tuple[int, int] | None:
    """(channel, note) of a note message, None for anything else."""
    return (data[0] & 0x0F, data[1]) if note_kind(data) else None


def _is_on(data: bytes) -> bool:
    return note_kind(data) == "on"


def _tell(**report) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def serve(sender: _Sender, fd: int) -> bool:
    """Read records until the pipe closes, sending each at its due time; then release. True
    when the daemon said it closes us, False when the pipe just closed (it died)."""
    pending = b""
    quit_ = False
    while not quit_:
        now = time.perf_counter_ns()
        sender.send_due(now)
        wait = None
        if sender.heap:
            wait = max(0.0, (sender.heap[0][0] - now - SPIN_NS) / 1e9)
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            if sender.heap:
                due = sender.heap[0][0]
                while time.perf_counter_ns() < due:
                    pass  # the last stretch: spin
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        whole = len(pending) - len(pending) % RECORD.size
        for i in range(0, whole, RECORD.size):
            due, n, data = RECORD.unpack_from(pending, i)
            if due < 0:
                quit_ = True
                break
            sender.take(due, data[:n])
        pending = pending[whole:]
    # the daemon closed us (its panic is sent already) or died (kill -9)
    sender.send_due(time.perf_counter_ns())
    sender.release()
    return quit_


REALTIME_PRIORITY = 10  # SCHED_FIFO, low: below JACK's own threads (60-95 where it is RT)


def realtime() -> bool:
    """Wake on time however busy the daemon keeps the CPUs: SCHED_FIFO for the calling
    thread, where the system grants it (Linux with rtprio, as JACK users have). Safe in the
    sending process as it was not in the daemon: its one Python thread shares its GIL with
    nobody, and it sleeps but for the last 0.25 ms before a due time."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True


def wanted() -> bool:
    """Whether the daemon should send through a sending process: on POSIX (select() on
    pipes) where real-time scheduling is granted. Without it the hop to another process
    costs more than it saves (harmonize p50 +0.5 ms in docs/BENCHMARKS.md): the daemon
    sends itself. Asked of a throwaway thread, so this process's own scheduling is untouched."""
    if os.name != "posix":
        return False
    granted: list[bool] = []
    probe = threading.Thread(target=lambda: granted.append(realtime()), name="rt-probe")
    probe.start()
    probe.join()
    return granted == [True]


def main(argv: list[str] | None = None) -> int:
    from midi_companion import ports

    for name in ("SIGINT", "SIGHUP", "SIGTERM"):  # the daemon's to handle; it closes us
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    backend, name = args[0], (args[1] if len(args) > 1 else None)
    if os.read(0, 1) != OPEN:  # the daemon stopped before its ports were to open
        return 0
    realtime()
    try:
        port = ports.open_output(name, backend=backend)
    except MidiPortError as err:
        _tell(error=str(err))
        return 2
    _tell(port=port.name)
    sender = _Sender(port)
    if not serve(sender, sys.stdin.fileno()):
        # The daemon died. Its JACK clients are dead too, and the server is busy with them:
        # closing ours now would wait on it for seconds (a JACK server in synchronous mode
        # took 7 s). The releases are out once JACK's next cycles run; then leave, and the
        # server closes this client as it closed the daemon's.
        time.sleep(ORPHANED_FLUSH_S)
        os._exit(0)
    port.close()
    _tell(**sender.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
