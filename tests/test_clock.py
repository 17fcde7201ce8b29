"""InternalClock and MidiClock, on fake time (integer nanoseconds)."""

import random

import pytest

from midi_companion.clock import (
    SONG_CONTINUE,
    SONG_START,
    SONG_STOP,
    TIMING_CLOCK,
    InternalClock,
    MidiClock,
    TransportEvent,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 5_000 * S  # perf_counter_ns values are large; keep them so in tests


class FakeNow:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


# ---- InternalClock ------------------------------------------------------------------------


def test_internal_clock_maps_beats_and_times():
    clock = InternalClock(120, now_ns=FakeNow())
    clock.start()
    assert clock.running
    assert clock.beat_at(T0) == 0.0
    assert clock.beat_at(T0 + 500 * MS) == pytest.approx(1.0)
    assert clock.time_at(4) == T0 + 2 * S
    assert clock.bar_at(T0 + 2 * S) == pytest.approx(1.0)


def test_internal_clock_times_are_absolute_not_accumulated():
    clock = InternalClock(97.3)
    clock.start(at_ns=T0)
    period = 60 * S / 97.3
    for beat in (1, 10, 1_000, 100_000):
        assert clock.time_at(beat) == T0 + round(beat * period)
    t = T0 + 12_345 * S + 678
    assert abs(clock.time_at(clock.beat_at(t)) - t) <= 1


def test_tempo_change_keeps_the_beat_continuous():
    now = FakeNow()
    clock = InternalClock(120, now_ns=now)
    clock.start()
    now.t = T0 + 1 * S  # beat 2
    clock.bpm = 60
    assert clock.bpm == pytest.approx(60)
    assert clock.beat_at(now.t) == pytest.approx(2.0)
    assert clock.beat_at(now.t + 1 * S) == pytest.approx(3.0)
    assert clock.time_at(3) == now.t + 1 * S
    clock.set_bpm(240, at_ns=now.t + 2 * S)  # beat 4
    assert clock.beat_at(now.t + 2 * S) == pytest.approx(4.0)
    assert clock.time_at(5) == now.t + 2 * S + 250 * MS


def test_internal_clock_stopped_is_frozen_and_has_no_times():
    clock = InternalClock(120)
    assert not clock.running
    assert clock.beat_at(T0) == 0.0
    with pytest.raises(RuntimeError, match="stopped"):
        clock.time_at(1)
    clock.start(at_ns=T0)
    clock.stop(at_ns=T0 + 750 * MS)
    assert clock.beat_at(T0 + 10 * S) == pytest.approx(1.5)
    clock.bpm = 90  # allowed while stopped; takes effect on start
    clock.start(at_ns=T0 + 20 * S)
    assert clock.time_at(3) == T0 + 22 * S


def test_bad_tempo_is_refused():
    with pytest.raises(ValueError, match="received 0"):
        InternalClock(0)
    with pytest.raises(ValueError):
        InternalClock(120).bpm = -5


def test_next_beat():
    clock = InternalClock(120)
    clock.start(at_ns=T0)
    assert clock.next_beat(T0 + 600 * MS) == 2.0
    assert clock.next_beat(T0 + 1 * S) == 2.0  # on a boundary: that boundary
    assert clock.next_beat(T0 + 600 * MS, grid=clock.beats_per_bar) == 4.0
    assert clock.next_beat(T0 + 600 * MS, grid=0.25) == 1.25


# ---- MidiClock ------------------------------------------------------------------------------


def tick_times(bpm, n, start=T0, jitter_ns=0, seed=0):
    """True tick times and arrival stamps (late by up to jitter_ns, never early)."""
    rng = random.Random(seed)
    tick = 60 * S / bpm / 24
    true = [start + round(k * tick) for k in range(n)]
    return true, [t + rng.randint(0, jitter_ns) for t in true]


def feed_ticks(clock, stamps):
    events = []
    for t in stamps:
        events += clock.feed([TIMING_CLOCK], t)
    return events


def test_start_then_ticks_give_tempo_and_position():
    clock = MidiClock()
    assert clock.feed([SONG_START], T0 - 1 * MS)[0].kind == "started"
    assert clock.running
    true, stamps = tick_times(100, 97)
    feed_ticks(clock, stamps)
    assert clock.bpm == pytest.approx(100, abs=0.01)
    assert clock.synced
    assert clock.beat_at(true[96]) == pytest.approx(4.0)
    half_tick = (true[96] - true[95]) // 2
    assert clock.beat_at(true[96] + half_tick) == pytest.approx(4 + 0.5 / 24, abs=1e-4)
    assert clock.time_at(5) == pytest.approx(T0 + 3 * S, abs=0.01 * MS)
    assert clock.bar_at(true[96]) == pytest.approx(1.0)


def test_tempo_estimate_survives_jitter():
    clock = MidiClock()
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(128, 24 * 8 + 1, jitter_ns=2 * MS, seed=7)
    feed_ticks(clock, stamps)
    assert clock.bpm == pytest.approx(128, abs=0.3)
    # The phase is the newest tick: beat 8 falls where its stamp says.
    assert clock.time_at(8.0) == stamps[-1]
    # One bar ahead, the tempo error costs well under a millisecond more.
    late_ms = (clock.time_at(12.0) - true[-1] - 4 * 60 * S / 128) / MS
    assert abs(late_ms - (stamps[-1] - true[-1]) / MS) < 1.0


def test_a_tempo_jump_is_followed_within_a_beat():
    clock = MidiClock()
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(120, 24 * 4)
    feed_ticks(clock, stamps)
    tick = 60 * S / 140 / 24
    errors_ms = []
    for k in range(1, 24 * 2):
        t = true[-1] + round(k * tick)
        errors_ms.append(abs(clock.time_at((24 * 4 - 1 + k) / 24) - t) / MS)
        clock.feed([TIMING_CLOCK], t)
    assert max(errors_ms) < 3.5  # the next tick is never predicted further off than this
    assert max(errors_ms[24:]) < 0.01  # a beat later the estimate is exact
    assert clock.bpm == pytest.approx(140)


def test_tempo_events_when_synced_and_on_change_only():
    seen = []
    clock = MidiClock(on_event=seen.append)
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(120, 24 * 4, jitter_ns=MS // 2, seed=1)
    events = feed_ticks(clock, stamps)
    tempo = [e for e in events if e.kind == "tempo"]
    assert len(tempo) == 1 and tempo[0].bpm == pytest.approx(120, abs=0.5)
    assert seen[0].kind == "started" and seen[1:] == tempo
    _, faster = tick_times(140, 24 * 2, start=true[-1] + round(60 * S / 140 / 24))
    tempo = [e for e in feed_ticks(clock, faster) if e.kind == "tempo"]
    assert tempo and tempo[-1].bpm == pytest.approx(140, abs=0.5)
    assert isinstance(tempo[-1], TransportEvent)


def test_stop_freezes_and_continue_resumes_on_the_next_tick():
    clock = MidiClock()
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(120, 49)  # ticks 0..48: beat 2 at the last one
    feed_ticks(clock, stamps)
    tick = true[1] - true[0]
    [stopped] = clock.feed([SONG_STOP], true[48] + tick // 2)
    assert stopped.kind == "stopped"
    assert stopped.beat == pytest.approx(2 + 0.5 / 24, abs=1e-3)
    assert not clock.running
    assert clock.beat_at(true[48] + 10 * S) == stopped.beat
    with pytest.raises(RuntimeError):
        clock.time_at(3)
    resume = true[48] + 3 * S
    assert clock.feed([SONG_CONTINUE], resume)[0].kind == "continued"
    clock.feed([TIMING_CLOCK], resume + tick)
    assert clock.beat_at(resume + tick) == pytest.approx(49 / 24)
    assert clock.bpm == pytest.approx(120, abs=0.01)  # the 3 s gap fed no interval


def test_song_position_pointer_relocates():
    clock = MidiClock()
    [event] = clock.feed([0xF2, 32, 1], T0)  # 32 + 128 = 160 sixteenths = 40 beats
    assert event.kind == "position" and event.beat == 40.0
    assert not clock.running and clock.beat_at(T0 + S) == 40.0
    clock.feed([SONG_CONTINUE], T0 + S)
    true, stamps = tick_times(120, 3, start=T0 + S + 5 * MS)
    feed_ticks(clock, stamps)
    assert clock.beat_at(true[0]) == pytest.approx(40.0, abs=1e-3)
    assert clock.beat_at(true[2]) == pytest.approx(40 + 2 / 24)


def test_spp_while_running_relocates_from_the_next_tick():
    clock = MidiClock()
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(120, 30)
    feed_ticks(clock, stamps)
    tick = true[1] - true[0]
    clock.feed([0xF2, 16, 0], true[-1] + 1 * MS)  # 16 sixteenths = beat 4
    clock.feed([TIMING_CLOCK], true[-1] + tick)
    assert clock.beat_at(true[-1] + tick) == pytest.approx(4.0)
    assert clock.running


def test_restart_goes_back_to_beat_zero():
    clock = MidiClock()
    clock.feed([SONG_START], T0)
    true, stamps = tick_times(120, 50)
    feed_ticks(clock, stamps)
    clock.feed([SONG_STOP], true[-1] + MS)
    clock.feed([SONG_START], true[-1] + S)
    clock.feed([TIMING_CLOCK], true[-1] + S + 2 * MS)
    assert clock.beat_at(true[-1] + S + 2 * MS) == 0.0


def test_ticks_while_stopped_set_tempo_not_position():
    clock = MidiClock()
    _, stamps = tick_times(90, 30)
    events = feed_ticks(clock, stamps)
    assert not clock.running and clock.beat_at(stamps[-1]) == 0.0
    assert clock.bpm == pytest.approx(90, abs=0.01)
    assert [e.kind for e in events] == ["tempo"]


def test_before_start_the_midi_clock_is_stopped_at_zero():
    clock = MidiClock(bpm=100)
    assert not clock.running and clock.beat_at(T0) == 0.0 and clock.bpm == 100
    with pytest.raises(RuntimeError):
        clock.time_at(1)


def test_other_messages_are_ignored():
    clock = MidiClock()
    assert clock.feed([0x90, 60, 100], T0) == []
    assert clock.feed([], T0) == []
    assert MidiClock.handles([0xF8]) and MidiClock.handles([0xF2, 0, 0])
    assert not MidiClock.handles([0x90, 60, 1]) and not MidiClock.handles([])
