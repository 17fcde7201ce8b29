"""The sending process (companion/send_process.py): its order per key, its release when the
daemon is gone, and a real port on the private JACK server that sends each message at its
due time and ends cleanly."""

from __future__ import annotations

import os
import time

import pytest

from midi_companion import send_process
from midi_companion.send_process import RECORD, ProcessOutput, _Sender, serve

MS = 1_000_000


class Port:
    def __init__(self):
        self.sent: list[tuple[int, ...]] = []

    def send(self, msg) -> None:
        self.sent.append(tuple(msg))


def test_records_of_one_key_leave_in_the_order_handed_over_and_other_keys_do_not_wait():
    port = Port()
    s = _Sender(port)
    t = time.perf_counter_ns() + 50 * MS
    s.take(t, bytes((0xB1, 7, 90)))  # not a note: its due time is its own
    s.take(t, bytes((0x81, 60, 0)))  # handed over ahead
    s.take(t - 40 * MS, bytes((0x91, 60, 90)))  # scheduled later, due earlier: waits
    s.take(t - 40 * MS, bytes((0x91, 64, 90)))  # another key: not held back
    s.send_due(t - 30 * MS)
    assert port.sent == [(0x91, 64, 90)]
    s.send_due(t)
    assert port.sent == [(0x91, 64, 90), (0xB1, 7, 90), (0x81, 60, 0), (0x91, 60, 90)]
    assert s.sounding == {(1, 64), (1, 60)}


def test_a_release_before_a_waiting_note_on_of_its_key_means_the_note_never_starts():
    """An answer interrupted, a voice taken back: the note-on was handed over ahead, and its
    release comes before it is due. It must not start and stop at once (a click)."""
    port = Port()
    s = _Sender(port)
    t = time.perf_counter_ns() + 50 * MS
    s.take(t, bytes((0x91, 60, 90)))
    s.take(t - 40 * MS, bytes((0x81, 60, 0)))
    s.take(t - 40 * MS, bytes((0x91, 62, 90)))  # the voice that replaces it
    s.send_due(t + MS)
    assert port.sent == [(0x91, 62, 90), (0x81, 60, 0)]  # a note-off for a silent key at most
    assert s.sounding == {(1, 62)}


def test_when_the_pipe_closes_what_is_due_is_sent_and_every_sounding_note_released():
    """The daemon killed (-9) or closing: nothing it started is left hanging."""
    port = Port()
    r, w = os.pipe()
    now = time.perf_counter_ns()
    records = [
        (now - MS, bytes((0x92, 67, 80))),
        (now - MS, bytes((0xB2, 7, 100))),
        (now + 3600 * 10**9, bytes((0x92, 69, 80))),  # due in an hour: never starts
    ]
    os.write(w, b"".join(RECORD.pack(due, len(d), d) for due, d in records))
    os.close(w)
    serve(_Sender(port), r)
    os.close(r)
    assert port.sent == [(0x92, 67, 80), (0xB2, 7, 100), (0x82, 67, 0)]


def test_a_sending_process_is_used_only_where_real_time_scheduling_is_granted(monkeypatch):
    """Without SCHED_FIFO the hop to another process costs the harmonize answer ~0.5 ms
    (docs/BENCHMARKS.md): the daemon then sends itself."""

    def refused(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused, raising=False)
    assert send_process.wanted() is False


@pytest.mark.e2e
def test_a_process_output_on_jack_sends_each_message_at_its_due_time(jack_server):
    from midi_companion.jack_harness import Listener

    out = ProcessOutput(None, "jack").open()
    listener = Listener("send-process-listener")
    try:
        time.sleep(0.3)  # the connection is made
        t0 = time.perf_counter_ns() + 100 * MS
        dues = [t0 + i * 7 * MS for i in range(20)]
        for i, due in enumerate(dues):
            out.send_at(due, (0x90, 60 + i, 90))
            out.send_at(due + 3 * MS, (0x80, 60 + i, 0))
        out.send((0xB0, 7, 100))  # now: before all of them
        time.sleep((dues[-1] - time.perf_counter_ns()) / 1e9 + 0.2)
        heard = [(t, m) for t, m in listener.heard if m[0] & 0xF0 == 0x90]
        assert [m[1] for _, m in heard] == [60 + i for i in range(20)]
        assert listener.heard[0][1] == (0xB0, 7, 100)
        # held until due, not sent when handed over (how close to due: companion bench)
        assert all(t - due > -MS for (t, _), due in zip(heard, dues))
    finally:
        out.close()
        listener.close()
    assert out.report["sent"] == 41 and out.report["send_errors"] == 0
    with pytest.raises(Exception, match="closed"):
        out.send((0x90, 60, 90))
