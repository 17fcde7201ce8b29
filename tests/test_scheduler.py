"""Scheduler: order, late policy, panic, cancel_after; on a fake clock through run_pending."""

import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midi_companion.ledger import all_notes_off, note_kind, note_off, note_on
from midi_companion.scheduler import Scheduler, SchedulerStats, configure_realtime

MS = 1_000_000
T0 = 1_000_000 * MS


class Out:
    """A fake output: what was sent, and what a synth would have sounding."""

    def __init__(self):
        self.sent = []
        self.on = set()

    def __call__(self, msg):
        self.sent.append(tuple(msg))
        kind, key = note_kind(msg), (msg[0] & 15, msg[1] if len(msg) > 1 else None)
        if kind == "on":
            assert key not in self.on, f"note-on for sounding {key}: the ledger must re-articulate"
            self.on.add(key)
        elif kind == "off":
            self.on.discard(key)
        elif msg[0] & 0xF0 == 0xB0 and msg[1] == 123:
            self.on = {k for k in self.on if k[0] != key[0]}


def make(**kw):
    out = Out()
    return Scheduler(out, now_ns=lambda: T0, **kw), out


def test_sends_in_due_order_and_only_when_due():
    sched, out = make()
    sched.schedule(T0 + 30 * MS, note_on(0, 62, 90))
    sched.schedule_many([(T0 + 10 * MS, note_on(0, 60, 90)), (T0 + 20 * MS, (0xB0, 1, 5))])
    assert sched.run_pending(T0 + 5 * MS) == 0
    assert sched.run_pending(T0 + 20 * MS) == 2
    assert out.sent == [note_on(0, 60, 90), (0xB0, 1, 5)]
    assert sched.pending == 1 and sched.next_due() == T0 + 30 * MS
    sched.run_pending(T0 + 30 * MS)
    assert out.sent[-1] == note_on(0, 62, 90)
    assert sched.stats.sent == 3


def test_at_the_same_time_note_offs_go_first_then_fifo():
    sched, out = make()
    t = T0 + 10 * MS
    sched.schedule(T0, note_on(0, 60, 90))
    sched.schedule_many([(t, (0xC0, 3)), (t, note_on(0, 60, 80)), (t, note_off(0, 60))])
    sched.run_pending(t)
    # Without note-offs first, the new note would be re-articulated and then cut at once.
    assert out.sent == [note_on(0, 60, 90), note_off(0, 60), (0xC0, 3), note_on(0, 60, 80)]
    assert out.on == {(0, 60)}


def test_late_note_on_is_dropped_and_counted():
    sched, out = make(tolerance_ns=10 * MS)
    sched.schedule(T0, note_on(0, 60, 90))
    sched.schedule(T0, note_on(0, 61, 90))
    sched.run_pending(T0 + 10 * MS)  # exactly at tolerance: still sent
    assert out.sent == [note_on(0, 60, 90), note_on(0, 61, 90)]
    sched.schedule(T0 + 20 * MS, note_on(0, 62, 90))
    sched.run_pending(T0 + 30 * MS + 1)
    assert note_on(0, 62, 90) not in out.sent
    assert sched.stats.late_dropped == 1 and sched.stats.sent == 2


def test_note_off_is_never_dropped_however_late():
    sched, out = make()
    sched.schedule(T0, note_on(0, 60, 90))
    sched.schedule(T0 + 100 * MS, note_off(0, 60))
    sched.run_pending(T0)
    sched.run_pending(T0 + 5_000 * MS)
    assert out.sent == [note_on(0, 60, 90), note_off(0, 60)]
    assert out.on == set()


def test_note_off_of_a_dropped_note_on_is_skipped():
    sched, out = make()
    sched.schedule(T0, note_on(0, 60, 90))
    sched.schedule(T0 + 100 * MS, note_off(0, 60))
    sched.run_pending(T0 + 50 * MS)
    sched.run_pending(T0 + 100 * MS)
    assert out.sent == []
    assert sched.stats.late_dropped == 1 and sched.stats.offs_skipped == 1


def test_other_messages_are_sent_late_rather_than_never():
    sched, out = make()
    sched.schedule(T0, (0xB0, 64, 0))
    sched.run_pending(T0 + 1_000 * MS)
    assert out.sent == [(0xB0, 64, 0)]


def test_panic_leaves_nothing_sounding():
    sched, out = make()
    sched.schedule_many(
        [
            (T0, note_on(0, 60, 90)),
            (T0, note_on(2, 64, 90)),
            (T0 + MS, note_on(0, 67, 90)),
            (T0 + 500 * MS, note_off(0, 60)),
        ]
    )
    sched.run_pending(T0)
    assert out.on == {(0, 60), (2, 64)}
    sent = sched.panic()
    assert sched.pending == 0 and sched.ledger.sounding() == frozenset() and out.on == set()
    assert out.sent[-4:] == [note_off(0, 60), note_off(2, 64), all_notes_off(0), all_notes_off(2)]
    assert sent == 4
    sched.run_pending(T0 + 1_000 * MS)
    assert out.on == set()


def response(sched):
    """A: 0-100 ms, B: 50-300 ms, C: 200-400 ms, all on channel 0; plus a CC at 250 ms."""
    sched.schedule_many(
        [
            (T0, note_on(0, 60, 90)),
            (T0 + 100 * MS, note_off(0, 60)),
            (T0 + 50 * MS, note_on(0, 62, 90)),
            (T0 + 300 * MS, note_off(0, 62)),
            (T0 + 200 * MS, note_on(0, 64, 90)),
            (T0 + 400 * MS, note_off(0, 64)),
            (T0 + 250 * MS, (0xB0, 1, 10)),
        ]
    )


def sent_after(out, n):
    return out.sent[n:]


def test_cancel_after_cuts_sounding_notes_at_the_time_and_drops_later_notes():
    sched, out = make()
    response(sched)
    sched.run_pending(T0)
    sched.run_pending(T0 + 60 * MS)  # A and B sounding
    assert sched.cancel_after(T0 + 150 * MS) == 1  # C's note-on
    n = len(out.sent)
    sched.run_pending(T0 + 150 * MS)
    assert sent_after(out, n) == [note_off(0, 60), note_off(0, 62)]  # A at 100, B cut at 150
    sched.run_pending(T0 + 1_000 * MS)
    assert sent_after(out, n + 2) == [(0xB0, 1, 10)]  # no C at all; the CC stays
    assert out.on == set() and sched.stats.cancelled == 1


def test_cancel_after_with_ring_lets_sounding_notes_end_on_their_own():
    sched, out = make()
    response(sched)
    sched.run_pending(T0)
    sched.run_pending(T0 + 60 * MS)
    sched.cancel_after(T0 + 150 * MS, ring=True)
    sched.run_pending(T0 + 299 * MS)
    assert out.on == {(0, 62)}  # B rings on
    sched.run_pending(T0 + 300 * MS)
    assert out.on == set() and out.sent[-1] == note_off(0, 62)
    assert sched.pending == 0


def test_cancel_after_releases_notes_whose_note_off_was_not_scheduled_yet():
    sched, out = make()
    sched.schedule(T0, note_on(0, 60, 90))  # its note-off is still being generated
    sched.schedule(T0 + 10 * MS, note_on(0, 64, 90))
    sched.run_pending(T0)
    sched.cancel_after(T0 + 5 * MS, ring=True)
    sched.run_pending(T0 + 1_000 * MS)
    assert out.sent == [note_on(0, 60, 90), note_off(0, 60)] and out.on == set()


def test_cancel_after_on_some_channels_leaves_the_others():
    sched, out = make()
    sched.schedule_many(
        [
            (T0, note_on(0, 60, 90)),
            (T0 + 200 * MS, note_off(0, 60)),
            (T0, note_on(1, 40, 90)),
            (T0 + 200 * MS, note_off(1, 40)),
            (T0 + 100 * MS, note_on(1, 43, 90)),
            (T0 + 300 * MS, note_off(1, 43)),
            (T0 + 100 * MS, note_on(0, 62, 90)),
            (T0 + 300 * MS, note_off(0, 62)),
        ]
    )
    sched.run_pending(T0)
    assert sched.cancel_after(T0 + 50 * MS, channels=[1]) == 1
    sched.run_pending(T0 + 50 * MS)
    assert out.on == {(0, 60)}
    sched.run_pending(T0 + 100 * MS)
    sched.run_pending(T0 + 1_000 * MS)
    assert note_on(0, 62, 90) in out.sent and note_on(1, 43, 90) not in out.sent
    assert out.on == set()


def test_cancel_after_a_time_already_past_releases_at_once():
    sched, out = make()
    response(sched)
    sched.run_pending(T0)
    sched.run_pending(T0 + 60 * MS)
    sched.cancel_after(T0 + 20 * MS)
    sched.run_pending(T0 + 61 * MS)
    assert out.on == set()


def test_stop_is_idempotent_panics_and_refuses_new_work():
    sched, out = make()
    sched.schedule(T0, note_on(0, 60, 90))
    sched.run_pending(T0)
    sched.stop()
    assert out.on == set()
    n = len(out.sent)
    sched.stop()
    assert len(out.sent) == n
    with pytest.raises(RuntimeError, match="stopped"):
        sched.schedule(T0, note_on(0, 60, 90))


def test_messages_are_validated():
    sched, out = make()
    for bad in [(), (60, 100), (0x90, 300, 1), (0x90, 60.0, 1), "abc"]:
        with pytest.raises(ValueError, match="raw MIDI"):
            sched.schedule(T0, bad)
    sched.schedule(np.int64(T0), np.array([0x90, 60, 100]))  # numpy ints are fine
    sched.run_pending(T0)
    assert out.sent == [(0x90, 60, 100)]


def test_a_failing_output_is_counted_not_raised():
    def broken(msg):
        raise OSError("port gone")

    sched = Scheduler(broken, now_ns=lambda: T0)
    sched.schedule(T0, note_on(0, 60, 90))
    assert sched.run_pending(T0) == 0
    assert sched.stats.send_errors == 1 and isinstance(sched.last_error, OSError)


def test_lateness_statistics():
    stats = SchedulerStats()
    assert stats.percentile(50) == 0
    stats.lateness_ns.extend(range(1, 101))
    assert stats.percentile(50) == 50 and stats.percentile(99) == 99
    sched, _ = make()
    for k in range(10):
        sched.schedule(T0 + k * MS, (0xB0, 1, k))
    sched.run_pending(T0 + 9 * MS)
    summary = sched.summary()
    assert summary["sent"] == 10 and summary["lateness_max_ms"] == 9.0
    assert summary["lateness_p50_ms"] == 4.0  # nearest rank: the 5th of 0..9 ms


def test_the_thread_sends_on_its_own_and_stop_joins_it():
    sent, done = [], threading.Event()

    def send(msg):
        sent.append((time.perf_counter_ns(), tuple(msg)))
        if len(sent) == 3:
            done.set()

    sched = Scheduler(send).start()
    now = time.perf_counter_ns()
    sched.schedule_many(
        [
            (now + 3 * MS, note_off(0, 60)),
            (now + 1 * MS, note_on(0, 60, 1)),
            (now + 2 * MS, (0xB0, 7, 100)),
        ]
    )
    assert done.wait(5.0)
    assert [m for _, m in sent] == [note_on(0, 60, 1), (0xB0, 7, 100), note_off(0, 60)]
    assert all(t >= now + (k + 1) * MS for k, (t, _) in enumerate(sent))  # never early
    sched.schedule(now + 60_000 * MS, note_on(0, 61, 1))
    sched.stop()
    assert not sched._thread.is_alive() and sched.pending == 0


# ---- property: whatever happens, nothing is left sounding -----------------------------------

note = st.tuples(st.integers(0, 400), st.integers(1, 300), st.integers(0, 2), st.integers(60, 64))
step = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 80)),
    st.tuples(
        st.just("cancel"),
        st.integers(-50, 200),
        st.booleans(),
        st.sampled_from([None, [0], [1, 2]]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(note, max_size=25), st.lists(step, max_size=12), st.booleans())
def test_nothing_hangs(notes, steps, panic):
    sched, out = make(tolerance_ns=10 * MS)
    sched.schedule_many(
        pair
        for start, dur, ch, pitch in notes
        for pair in [
            (T0 + start * MS, note_on(ch, pitch, 90)),
            (T0 + (start + dur) * MS, note_off(ch, pitch)),
        ]
    )
    now = T0
    for action, *args in steps:
        if action == "run":
            now += args[0] * MS
            sched.run_pending(now)
        else:
            sched.cancel_after(now + args[0] * MS, channels=args[2], ring=args[1])
        assert sched.ledger.sounding() == out.on
    if panic:
        sched.panic()
    sched.run_pending(now + 10_000 * MS)
    assert out.on == set() and sched.ledger.sounding() == frozenset()
    ons = sum(1 for m in out.sent if note_kind(m) == "on")
    assert ons + sched.stats.late_dropped + sched.stats.cancelled <= len(notes)


def test_configure_realtime_shortens_the_gil_switch_interval():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # CPython's default (an earlier test may have set it)
    try:
        applied = configure_realtime()
        assert sys.getswitchinterval() == pytest.approx(applied["switch_interval_s"])
        assert applied["switch_interval_s"] < 0.005
    finally:
        sys.setswitchinterval(saved)
