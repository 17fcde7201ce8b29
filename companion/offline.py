"""Offline performance: a MIDI file played into the same Performer as the live daemon, on a
virtual clock. `companion continue` and `companion accompany` are this, so what they write
is what the daemon would have played, deterministically for a seed.
"""

from __future__ import annotations

from dataclasses import replace

from companion.clock import InternalClock
from companion.performer import Performer
from companion.presets import Preset
from companion.scheduler import Scheduler
from companion.score import Note, Score, Track

TICK_NS = 5_000_000  # the live loop ticks at least this often; so does the virtual one
NEVER = 1e9  # silence_beats while the file plays: the file's end is the phrase end


class VirtualTime:
    """A settable now() for the clock and the scheduler."""

    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def perform(preset: Preset, score: Score, *, seed: int = 0, bars: int | None = None,
            use_gpu: bool = False) -> Score:
    """Play `score` (all tracks as the player's part) into `preset`; return the player's
    parts as they came (a channel a generated part takes moves to a free one) plus one track
    per generated part."""
    if bars is not None:
        preset = replace(preset, timing=replace(preset.timing, bars=bars))
    if preset.mode == "continue":
        preset = replace(preset, timing=replace(preset.timing, silence_beats=NEVER))
    now = VirtualTime()
    clock = InternalClock(bpm=score.bpm, beats_per_bar=preset.timing.beats_per_bar, now_ns=now)
    clock.start(at_ns=0)
    sent: list[tuple[int, tuple[int, ...]]] = []
    scheduler = Scheduler(lambda m: sent.append((now.ns, tuple(m))), now_ns=now,
                          tolerance_ns=10**15)  # virtual time is never late
    performer = Performer(preset, scheduler, clock, seed=seed, use_gpu=use_gpu)
    inputs = _input_messages(score, clock)
    end = clock.time_at(score.end)
    i, played = 0, False
    while True:
        while i < len(inputs) and inputs[i][0] <= now.ns:
            performer.handle(*inputs[i])
            i += 1
        if not played and i == len(inputs) and now.ns >= end:
            played = True
            performer.end_input(clock.beat_at(now.ns))
        performer.tick(now.ns)
        scheduler.run_pending(now.ns)
        if played and scheduler.pending == 0 and performer.mode.idle:
            break
        now.ns = next_time(now.ns, scheduler, inputs[i][0] if i < len(inputs) else None)
    scheduler.stop()
    return _result(score, preset, performer, clock, sent)


def next_time(now_ns: int, scheduler, next_input: int | None) -> int:
    """The next virtual instant: a tick later, or sooner when a message is due or an input
    arrives before that, so everything is sent exactly at its due time."""
    t = now_ns + TICK_NS
    due = scheduler.next_due()
    for candidate in (due, next_input):
        if candidate is not None and now_ns < candidate < t:
            t = candidate
    return t


def _input_messages(score: Score, clock) -> list[tuple[int, tuple[int, ...]]]:
    msgs = []
    for n in score.notes:
        msgs.append((clock.time_at(n.onset), 1, (0x90, n.pitch, n.velocity)))
        msgs.append((clock.time_at(n.end), 0, (0x80, n.pitch, 0)))
    msgs.sort(key=lambda m: (m[0], m[1]))
    return [(t, m) for t, _, m in msgs]


def _result(score, preset, performer, clock, sent) -> Score:
    outs = getattr(performer, "outputs", [performer.output])
    tracks_by_ch = {}
    for out in outs:
        for t in out.tracks:
            tracks_by_ch[t.channel - 1] = Track(name=t.name, program=t.program,
                                                channel=t.channel - 1)
    # the player's parts as they came (name, program, drums, channel); one whose channel a
    # generated part takes moves to the lowest free one, so no two parts share a channel
    played = [replace(t, notes=list(t.notes)) for t in score.tracks if t.notes]
    taken = set(tracks_by_ch)
    for t in played:
        if t.channel is None or t.channel in tracks_by_ch:
            free = [c for c in range(16) if c not in taken and (c == 9) == t.is_drum]
            t.channel = free[0] if free else None
        taken.add(t.channel)
    open_: dict[tuple[int, int], tuple[float, int]] = {}
    for t_ns, msg in sent:
        kind, ch = msg[0] & 0xF0, msg[0] & 0x0F
        if ch not in tracks_by_ch or kind not in (0x80, 0x90):
            continue
        beat = clock.beat_at(t_ns)
        if kind == 0x90 and msg[2] > 0:
            open_[(ch, msg[1])] = (beat, msg[2])
        elif (ch, msg[1]) in open_:
            onset, vel = open_.pop((ch, msg[1]))
            if beat > onset:
                tracks_by_ch[ch].notes.append(Note(onset, msg[1], beat - onset, vel))
    if open_:  # the scheduler's stop() released everything: this would be a ledger bug
        raise RuntimeError(f"notes left open after the performance: {sorted(open_)}")
    generated = [tracks_by_ch[ch] for ch in sorted(tracks_by_ch)]
    return Score(tracks=played + generated, tempos=list(score.tempos),
                 time_signatures=list(score.time_signatures))
