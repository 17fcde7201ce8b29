"""Offline performance: a MIDI file played into the same Performer as the live daemon, on a
virtual clock. `companion continue` and `companion accompany` are this, so what they write
is what the daemon would have played, deterministically for a seed: in continue mode every
phrase that ends in `silence_beats` of silence is answered (and a phrase that comes while
an answer plays interrupts it, as live), and the file's end answers the last phrase.
"""

from __future__ import annotations

from dataclasses import replace

from midi_companion.clock import InternalClock
from midi_companion.errors import CompanionError
from midi_companion.performer import Performer
from midi_companion.presets import Preset
from midi_companion.scheduler import Scheduler
from midi_companion.score import DRUM_CHANNEL, Note, Score, Track

TICK_NS = 5_000_000  # the live loop ticks at least this often; so does the virtual one
NEVER = 1e9  # silence_beats with one_phrase: the file's end is the only phrase end


class VirtualTime:
    """A settable now() for the clock and the scheduler."""

    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


MIN_BPM, MAX_BPM = 20.0, 300.0  # what the companion plays at (as `companion run --bpm`)


def check_tempos(score: Score, source: str) -> None:
    """CompanionError naming `source` when a tempo of the file is one nobody plays at
    (a damaged or hostile file: 1 us per beat is 60 million bpm)."""
    for beat, bpm in score.tempos:
        if not MIN_BPM <= bpm <= MAX_BPM:
            raise CompanionError(
                f"{source}: tempo {bpm:.6g} bpm at beat {beat:g} is outside "
                f"{MIN_BPM:g}..{MAX_BPM:g} bpm, the tempi the companion plays at"
            )


def perform(
    preset: Preset,
    score: Score,
    *,
    seed: int = 0,
    bars: int | None = None,
    provider: str = "cpu",
    source: str = "the input",
    one_phrase: bool = False,
    speculate: bool = False,
    on_done=None,
) -> Score:
    """Play `score` (all tracks as the player's part) into `preset`; return the player's
    parts as they came (`input_parts`, each on a channel of its own: see `place_parts`),
    then one track per generated part, on the preset's channels. CompanionError naming
    `source` (the input file) when the parts and the preset need more than 16 channels.
    `one_phrase`: the whole file is one phrase, answered at its end whatever silences it
    holds (the quality report's prompts, cut from real pieces). `speculate`: harmonize
    computes ahead as live (the same notes, more work); `on_done(performer)` is called at
    the end (the bench reads its counters)."""
    check_tempos(score, source)
    parts = place_parts(input_parts(score), [c - 1 for c in preset.channels], source)
    if bars is not None:
        preset = replace(preset, timing=replace(preset.timing, bars=bars))
    if preset.mode == "continue" and one_phrase:
        preset = replace(preset, timing=replace(preset.timing, silence_beats=NEVER))
    now = VirtualTime()
    clock = InternalClock(bpm=score.bpm, beats_per_bar=preset.timing.beats_per_bar, now_ns=now)
    clock.start(at_ns=0)
    sent: list[tuple[int, tuple[int, ...]]] = []
    scheduler = Scheduler(
        lambda m: sent.append((now.ns, tuple(m))), now_ns=now, tolerance_ns=10**15
    )  # virtual time is never late
    # no speculation: it changes no note (each step samples from its own generator), only
    # how early each is known, and here nobody waits
    performer = Performer(
        preset,
        scheduler,
        clock,
        seed=seed,
        provider=provider,
        speculate="inline" if speculate else None,
    )
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
    if on_done is not None:
        on_done(performer)
    return _result(score, parts, performer, clock, sent)


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


def input_parts(score: Score) -> list[Track]:
    """The player's parts as `perform` returns them first: copies of the tracks with notes,
    in order (so the generated tracks of a result are `result.tracks[len(input_parts(score)):]`)."""
    return [replace(t, notes=list(t.notes)) for t in score.tracks if t.notes]


def place_parts(parts: list[Track], generated: list[int], source: str) -> list[Track]:
    """Give every part its own channel beside the generated tracks' `generated` (0-based).

    A part keeps its channel unless a generated track or an earlier part has it; then it
    moves to the lowest channel nobody uses (neither the generated tracks nor any part as it
    came), never to 10 (index 9, drums). Drum parts stay on 10, where several drum parts
    may sound together as one kit; one moves there from elsewhere when its channel is taken.
    CompanionError naming `source` when no channel is left."""
    generated_set = set(generated)
    used = generated_set | {t.channel for t in parts if t.channel is not None}
    taken = set(generated_set)
    kit = False  # an input drum part is on 10
    for t in parts:
        ch = t.channel
        if t.is_drum and (ch is None or ch in taken) and not (ch == DRUM_CHANNEL and kit):
            ch = DRUM_CHANNEL
        if t.is_drum and ch == DRUM_CHANNEL:
            if DRUM_CHANNEL in generated_set:
                raise CompanionError(
                    f"{source}: its drum part {t.name!r} needs MIDI channel 10, which the "
                    f"preset plays on (expected a preset that leaves channel 10 free)"
                )
            kit = True
        elif ch is None or ch in taken:
            free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used]
            if not free:
                n_melodic = sum(1 for p in parts if not p.is_drum)
                raise CompanionError(
                    f"{source}: has {len(parts)} parts ({n_melodic} not drums), and beside "
                    f"the preset's {len(generated_set)} channel(s) no MIDI channel is left for "
                    f"part {t.name!r} (expected at most "
                    f"{15 - len(generated_set - {DRUM_CHANNEL})} parts that are not drums: "
                    f"16 channels, 10 for drums)"
                )
            ch = free[0]
        used.add(ch)
        taken.add(ch)
        t.channel = ch
    return parts


def _result(score, parts, performer, clock, sent) -> Score:
    tracks_by_ch = {}
    for out in performer.outputs:
        for t in out.tracks:
            tracks_by_ch[t.channel - 1] = Track(
                name=t.name, program=t.program, channel=t.channel - 1
            )
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
    return Score(
        tracks=parts + generated,
        tempos=list(score.tempos),
        time_signatures=list(score.time_signatures),
    )
