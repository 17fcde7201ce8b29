"""The sending process (companion/port_process.py): its order per key, its release when the
daemon is gone, and a real port on the private JACK server that sends each message at its
due time and ends cleanly."""

from __future__ import annotations

import os
import time

import pytest

from midi_companion import port_process
from midi_companion.port_process import RECORD, ProcessOutput, _Sender, serve

MS = 1_000_000


class Port:
    def __init__(self):
        self.sent: list[tuple[int, ...]] = []

    def send(self, msg) -> None:
        self.sent.append(tuple(msg))


def test_records_of_one_key_leave_in_the_order_handed_over_and_other_keys_do_not_wait():
    port = Port()
    s = _Sender(port)
    s.sounding.add((1, 60))
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
    assert port.sent == [(0x91, 62, 90)]  # and no note-off for a silent key
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
    assert port_process.wanted() is False


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
        # held until due, not sent when handed over 100-240 ms ahead (how close to due:
        # companion bench). On JACK it is written in the period of its due time, whose
        # callbacks (this listener's among them, which stamps when it runs) may run up to a
        # period before that frame, and earlier still by JACK's estimate of its frame times
        # on a loaded machine: CI saw one note more than 1 ms before its due time.
        assert all(t - due > -5 * MS for (t, _), due in zip(heard, dues))
    finally:
        out.close()
        listener.close()
    assert out.report["sent"] == 41 and out.report["send_errors"] == 0
    with pytest.raises(Exception, match="closed"):
        out.send((0x90, 60, 90))


# ---- armed answers (companion/armed.py) ------------------------------------------------------

ON, OFF = 0x90, 0x80


def _armed(after=0, until=None, channel=None, answers=None):
    from midi_companion.armed import Armed

    until = time.perf_counter_ns() + 1000 * MS if until is None else until
    answers = {67: bytes((0x81, 60, 0, 0x91, 62, 80, 0x92, 55, 80))} if answers is None else answers
    return Armed(after, until, channel, (1, 2, 3), answers)


def test_an_armed_lead_note_is_answered_at_once_and_the_daemons_same_answer_not_sent_twice():
    port = Port()
    s = _Sender(port)
    s.sounding.add((1, 60))
    s.answerer.arm(_armed())
    seq, answered = s.answer(time.perf_counter_ns(), [ON, 67, 90])
    assert seq == 1 and answered is not None
    assert port.sent == [(0x81, 60, 0), (0x91, 62, 80), (0x92, 55, 80)]
    # the daemon's hit hands the same messages over: they are not sent again
    for m in ((0x81, 60, 0), (0x91, 62, 80), (0x92, 55, 80)):
        s.take(0, bytes(m))
    s.handled(seq)
    s.send_due(time.perf_counter_ns())
    assert len(port.sent) == 3 and s.sounding == {(1, 62), (2, 55)}


def test_what_the_daemon_did_not_answer_like_the_table_is_released_when_it_has_handled_it():
    """A table that went stale unseen (or a note dropped in a flood): every note started
    early that the daemon did not start too ends when the daemon says it handled the note."""
    port = Port()
    s = _Sender(port)
    s.answerer.arm(_armed(answers={67: bytes((0x91, 62, 80, 0x92, 55, 80))}))
    seq, _ = s.answer(time.perf_counter_ns(), [ON, 67, 90])
    s.take(0, bytes((0x91, 62, 80)))  # the daemon agrees on one voice only
    s.take(0, bytes((0x92, 57, 80)))  # and plays another note on the other
    s.send_due(time.perf_counter_ns())
    s.handled(seq)
    assert port.sent[-2:] == [(0x92, 57, 80), (0x82, 55, 0)]
    assert s.sounding == {(1, 62), (2, 57)}


@pytest.mark.parametrize(
    "case", ["input came since", "too late", "other channel", "not armed for that pitch"]
)
def test_an_armed_table_answers_only_the_next_input_if_it_is_the_note_it_was_built_for(case):
    port = Port()
    s = _Sender(port)
    now = time.perf_counter_ns()
    s.answerer.arm(
        _armed(
            after=0,
            until=now - 1 if case == "too late" else None,
            channel=0 if case == "other channel" else None,
        )
    )
    if case == "input came since":
        s.answer(now, [0xB0, 64, 127])  # a sustain pedal: the daemon has not seen it
        s.answerer.arm(_armed(after=0))  # the table it built before it came
    msg = [ON | (1 if case == "other channel" else 0), 66 if "pitch" in case else 67, 90]
    seq, answered = s.answer(now, msg)
    assert answered is None and port.sent == []
    s.answer(now, [ON, 67, 90])  # the table is spent: the next note is the daemon's
    assert port.sent == []


def test_a_table_is_stale_once_something_is_sent_on_a_voice_channel_and_clock_ticks_leave_it():
    port = Port()
    s = _Sender(port)
    s.answerer.arm(_armed())
    assert s.answer(time.perf_counter_ns(), [0xF8]) == (0, None)  # MIDI clock: not counted
    assert s.answerer.armed is not None
    s.take(0, bytes((0xB5, 7, 100)))  # another channel: the table holds
    s.send_due(time.perf_counter_ns())
    assert s.answerer.armed is not None
    s.take(0, bytes((0x92, 50, 80)))  # a voice's channel: what sounds there changed
    s.send_due(time.perf_counter_ns())
    assert s.answerer.armed is None


def test_records_arm_and_handled_travel_the_pipe_between_messages():
    from midi_companion.port_process import ARM, HANDLED

    port = Port()
    s = _Sender(port)
    r, w = os.pipe()
    table = _armed().encode()
    stream = RECORD.pack(ARM, 0, len(table).to_bytes(3, "little")) + table
    stream += RECORD.pack(HANDLED, 0, (7).to_bytes(3, "little"))
    stream += RECORD.pack(0, 3, bytes((0x90, 60, 90))) + port_process.QUIT
    os.write(w, stream[:5])  # a record cut in two by the pipe
    os.write(w, stream[5:])
    os.close(w)
    assert serve(s, r) is True
    os.close(r)
    assert s.answerer.armed is not None and s.answerer.armed.answers == _armed().answers
    assert port.sent[0] == (0x90, 60, 90)


@pytest.mark.e2e
def test_a_port_process_answers_an_armed_lead_note_itself_and_forwards_it_stamped(jack_server):
    """The input in the port process: the note is answered from the armed table the moment
    it comes (before the daemon's loop could see it), forwarded with its number and when it
    was answered, and the daemon's own answer to it is not sent a second time."""
    from midi_companion.armed import Armed
    from midi_companion.jack_harness import Keyboard, Listener

    out = ProcessOutput(None, "jack", with_input=True)
    out.open()
    inp = out.input
    keyboard = Keyboard("port-process-keyboard")
    listener = Listener("port-process-listener")
    answer = bytes((0x91, 62, 80, 0x92, 55, 80))
    try:
        time.sleep(0.3)  # the connections are made
        out.arm(Armed(0, time.perf_counter_ns() + 5000 * MS, None, (1, 2), {67: answer}))
        time.sleep(0.05)  # the table is there
        t = keyboard.send((0x90, 67, 90))
        stamp, msg, seq, answered = inp.queue.get(timeout=2.0)
        # stamped on arrival: with the time of its JACK frame where the port process
        # places messages at their frames (then the answer is at that very frame)
        assert msg == [0x90, 67, 90] and seq == 1 and abs(stamp - t) < 20 * MS
        assert stamp <= answered < stamp + 2 * MS
        out.send((0x91, 62, 80))  # the daemon's hit: the same messages, and one more
        out.send((0x92, 55, 80))
        out.send((0x93, 48, 80))
        out.handled(seq)
        keyboard.send((0x80, 67, 0))
        assert inp.queue.get(timeout=2.0)[1:] == ([0x80, 67, 0], 2, None)  # not answered
        time.sleep(0.3)
        notes = [m for _, m in listener.heard if m[0] & 0xF0 == 0x90]
        assert notes == [(0x91, 62, 80), (0x92, 55, 80), (0x93, 48, 80)]
    finally:
        keyboard.close()
        out.close()
        listener.close()
    assert out.report["answered_early"] == 1 and inp.closed


@pytest.mark.e2e
def test_jack_frame_ports_place_each_message_at_its_due_time_and_stamp_it_so(jack_server):
    """companion/jack_frames.py: a message handed over ahead is written in the period of its
    due time, at its frame, not at once; a listener of the same kind stamps each with its
    frame's time. (How close: companion bench, in JACK frame time.)"""
    from midi_companion.jack_frames import FramePorts, load

    if load() is None:
        pytest.skip("libjack is not loadable here")
    heard: list[tuple[int, bytes]] = []
    sender = FramePorts(None, client_name="frames-sender")
    listener = FramePorts(
        None,
        "frames-sender:",
        on_input=lambda t, data: heard.append((t, data)),
        client_name="frames-listener",
        output=False,
    )
    try:
        time.sleep(0.2)  # connected
        t0 = time.perf_counter_ns() + 100 * MS
        dues = [t0 + i * 7 * MS + i * 37_000 for i in range(20)]
        for i, due in enumerate(dues):
            sender.send_at(due, bytes((0x90, 60 + i, 90)))
        sender.send((0xB0, 7, 100))  # as soon as possible: before all of them
        time.sleep((dues[-1] - time.perf_counter_ns()) / 1e9 + 0.2)
    finally:
        listener.close(flush_s=0.0)
        sender.close()
    assert heard[0][1] == bytes((0xB0, 7, 100))
    notes = heard[1:]
    assert [d[1] for _, d in notes] == [60 + i for i in range(20)]
    # placed at its time: never ahead of it by more than a frame, and not sent at hand-over
    frame_ns = 1e9 / sender.rate
    assert all(t >= due - frame_ns for (t, _), due in zip(notes, dues))
    assert all(t < due + 20 * MS for (t, _), due in zip(notes, dues))
