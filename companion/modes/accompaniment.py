"""Accompany: continuous multitrack accompaniment of the live lead, one grid step at a time.

Each grid step is committed once: the accompanist model gets the lead's pitches at that step
and answers with every accompaniment track's pitches for it. A track's pitch that stays the
same is held; one that changes is released and the new one struck.

- Plain accompaniment commits a step `lookahead` before its time from the lead as it is then,
  and the notes go out on the step's time.
- Harmonize (`harmonize = true`) answers each lead note-on at once: the note's step (nearest
  grid line) is committed or, if it was committed already without this note (ahead of time,
  or a moment ago), taken back with every step committed after it (the model state from
  before it, the messages not yet sent) and committed again; the changed voices sound
  immediately, with the note (or as soon as they are generated: late, never dropped). A
  note-off likewise takes back a step committed ahead that has not sounded yet. Steps with
  no new note (a held soprano) are committed ahead as above. While the lead rests the
  voices hold (a breath between phrases, a late note); after `REST_BEATS` of rest they end.
  Those steps are fed to the model as played, so it knows what sounds.
- Speculation (harmonize): between lead notes the state before the step a note-on would
  land on is known, so meanwhile the whole step is computed ahead for the likely lead
  pitches in one batch (companion/speculator.py: a worker thread live, inline offline). A
  note-on whose step and lead were computed is answered by a lookup: every voice is sent
  at once, with no model call between the note and the answer; any other note-on is
  computed as before. `hits` and `misses` count the note-ons of each kind.
- Armed answers (`armed`): those lookups written out as the very messages a hit would send,
  for a note-on that comes before the state they were built from changes, so that the port
  process can send them the moment the note arrives (companion/armed.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from midi_companion.armed import as_sent
from midi_companion.modes.continuation import Continuation
from midi_companion.output import Output
from midi_companion.representations.base import NoteEvent, quantize
from midi_companion.speculator import Speculator

REST_BEATS = 1.0  # harmonize: the voices hold through a rest of the lead this long
HISTORY_STEPS = 8  # committed steps that can be taken back (lookahead + a grid step is ~2)


@dataclass
class _Committed:
    step: int
    lead: frozenset[int]
    state: object  # the accompanist's snapshot from before this step


class Accompaniment:
    """Turn-taking for accompany (and the accompanying half of jam)."""

    def __init__(self, accompanist, preset, output: Output, rng, speculate: str | None = "thread"):
        """`speculate`: "thread" (live: computed ahead by a worker thread), "inline"
        (offline: computed when asked, as if every step left enough idle time) or None."""
        self.acc = accompanist
        self.preset = preset
        self.output = output
        # each step samples from its own generator, seeded by the performance's seed and the
        # step: a step generated again (a take-back) or ahead (speculation) draws the same
        self.seed = int(rng.integers(2**62))
        self.grid = accompanist.grid
        self.harmonize = preset.harmonize
        self.speculate = bool(speculate) and self.harmonize
        self.sounding: set[int] = set()  # lead pitches held now
        self.next_step: int | None = None  # first step not committed yet
        self.history: deque[_Committed] = deque(maxlen=HISTORY_STEPS)
        self.voices: list[set[int]] = [set() for _ in output.tracks]
        self.active = True
        self.last_input: float | None = None
        self.last_off: float | None = None  # when the lead last fell silent
        self.hits = self.misses = 0
        # harmonized lead note-ons under which a voice was struck at once / every voice held
        self.struck_notes = self.held_notes = 0
        self._struck = False
        self.speculator = (
            Speculator(accompanist, self._rng, inline=speculate == "inline")
            if self.speculate
            else None
        )
        self.last_pitch: int | None = None  # the lead's last note-on: speculation's centre
        self.last_on: float | None = None  # ... and its beat
        self._armed: tuple = (None, None, None)  # (built from, armed()'s answer, its spec)

    # ---- input -------------------------------------------------------------------------
    def note_on(self, beat: float, pitch: int, velocity: int) -> None:
        self.sounding.add(pitch)
        self.last_pitch = pitch
        self.last_input = self.last_on = beat
        if not self.active:
            return
        step = quantize(beat, self.grid)
        if self.next_step is None:
            self.next_step = step
            self.acc.reset(step)
        if not self.harmonize:
            return
        self._struck = False
        if self._answer(step, pitch, beat):  # counted: a voice struck with the note, or not
            self.struck_notes += self._struck
            self.held_notes += not self._struck

    def _answer(self, step: int, pitch: int, beat: float) -> bool:
        """Harmonize a lead note-on at once; False when there was nothing to do."""
        if step < self.next_step:
            entry = self._committed(step)
            if entry is None or pitch in entry.lead:
                return False  # too old to take back, or nothing new for it
            if self._answer_from_speculation(step, entry, beat):
                return True
            self._take_back(entry, beat)
        elif self._answer_from_speculation(step, None, beat):
            return True
        while self.next_step <= step:
            self._commit(self.next_step, at=beat if self.next_step == step else None)
        return True

    def note_off(self, beat: float, pitch: int) -> None:
        self.sounding.discard(pitch)
        self.last_input = beat
        if not self.sounding:
            self.last_off = beat
        if self.harmonize and self.active:
            # a step committed ahead with this note in it, not sounding yet: generate it again
            entry = next(
                (c for c in self.history if c.step * self.grid >= beat and pitch in c.lead), None
            )
            if entry is not None:
                self._take_back(entry, entry.step * self.grid)

    def end_phrase(self, beat: float) -> None:
        """Accompaniment has no phrases; triggers only matter in jam."""

    def set_temperature(self, t: float) -> None:
        self.acc.sampling.temperature = t

    def set_scale_lock(self, on: bool) -> None:
        self.acc.scale_lock = on

    # ---- time --------------------------------------------------------------------------
    def tick(self, now: float, horizon: float) -> None:
        if not self.active or self.next_step is None:
            return
        while self.next_step * self.grid <= horizon:
            self._commit(self.next_step)
        if self.speculate:
            self._speculate(now)

    # ---- speculation -------------------------------------------------------------------
    def _base(self, step: int):
        """(key, snapshot) of the model's state before `step`, if a note-on there would be
        answered from it: a step committed ahead (its entry's snapshot, which a take-back
        restores) or the next one to commit (the state now). The key is the identity of the
        state's arrays (never mutated, only replaced), so a take-back's restored state is
        recognised as the one it was."""
        if step < self.next_step:
            entry = self._committed(step)
            return (None, None) if entry is None else (self.acc.state_key(entry.state), entry.state)
        if step == self.next_step:
            return self.acc.state_key(), None
        return None, None

    def _speculate(self, now: float) -> None:
        """Ask for the step the next note-on will land on computed ahead: the step now, if
        no note-on came in it yet (one may come any moment), then the next one (a note
        lands on it from half a grid step before its line); once a note came in this step,
        the next one first. Each again if its base changed since (a take-back)."""
        held = frozenset(self.sounding)
        now_step = quantize(now, self.grid)
        played = self.last_on is not None and quantize(self.last_on, self.grid) >= now_step
        for step in (now_step + 1, now_step) if played else (now_step, now_step + 1):
            key, snap = self._base(step)
            if key is None or self.speculator.ready(step, key, held):
                continue
            if not self.speculator.busy_with(step, key, held):
                snap = snap if snap is not None else self.acc.snapshot()
                self.speculator.want(step, key, held, snap, self.last_pitch)
            return

    def _answer_from_speculation(self, step: int, entry, beat: float) -> bool:
        """A note-on at `step` whose lead was computed ahead from the state it would be
        answered from: commit that member and send every voice now. False (and nothing
        done) when there is none."""
        if not self.speculate:
            return False
        key, _ = self._base(step)
        lead = frozenset(self.sounding)
        found = self.speculator.find(step, key, lead) if key is not None else None
        if found is None:
            self.misses += 1
            self.speculator.clear()  # its work is stale now, and the note needs the CPU
            return False
        self.hits += 1
        spec, i = found
        if entry is not None:
            self._take_back(entry, beat)
        self.history.append(_Committed(step, lead, spec.base))
        for k, row in enumerate(self.acc.adopt(spec, i)):
            self._play_row(k, row, beat, True)
        self.next_step = step + 1
        return True

    def armed(self, now: float) -> tuple[float, dict[int, bytes]] | None:
        """What `_answer_from_speculation` would send for a lead note-on coming from `now`
        until the beat returned, by lead pitch: the messages as the scheduler's ledger would
        send them, in order. None when no note-on there would be a hit. It holds while
        nothing is sent on the voices' channels and no input comes (the caller's part:
        Performer.armed, the port process); the same object is returned while what it is
        built from is unchanged."""
        if not self.speculate or not self.active or self.next_step is None:
            return None
        step = quantize(now, self.grid)
        key, _ = self._base(step)
        done = self.speculator.done.get(step) if key is not None else None
        if done is None or done[0] != key:
            return None
        scheduler, spec, held = self.output.scheduler, done[2], frozenset(self.sounding)
        # the speculation by identity (held in _armed, so its id is not reused)
        basis = (step, key, id(spec), held, self.next_step, scheduler.stats.sent)
        if self._armed[0] == basis:
            return self._armed[1]
        entry = self._committed(step) if step < self.next_step else None
        voices = self.output.sounding_at(now) if entry is not None else self.voices
        answers = {}
        for lead, (rows, _, _) in zip(spec.leads, spec.results, strict=True):
            new = lead - held
            if len(new) != 1 or not held <= lead:
                continue
            (pitch,) = new
            if entry is not None and pitch in entry.lead:
                continue  # nothing new for that step: no answer (see _answer)
            moves = [ev for k, row in enumerate(rows) for ev in self._moves(k, voices[k], row, now)]
            answers[pitch] = as_sent(scheduler.ledger, [self.output.message(ev) for ev in moves])
        armed = ((step + 0.5) * self.grid, answers) if answers else None
        self._armed = (basis, armed, spec)
        return armed

    def _commit(self, step: int, at: float | None = None) -> None:
        """Generate step `step` from the lead as it is now; play it at `at` or on the grid."""
        lead = frozenset(self.sounding)
        self.history.append(_Committed(step, lead, self.acc.snapshot()))
        rows = None
        if self.harmonize and not lead:
            resting = self.last_off is None or step * self.grid - self.last_off >= REST_BEATS
            rows = [set() for _ in self.voices] if resting else [set(v) for v in self.voices]
        beat, asap = (step * self.grid, False) if at is None else (at, True)
        # each voice is sent as soon as it is sampled: the alto sounds before the bass is
        # generated, which is what an answer's latency is made of
        self.acc.step(
            lead, self._rng(step), rows, on_row=lambda k, new: self._play_row(k, new, beat, asap)
        )
        self.next_step = step + 1

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, step))

    def _committed(self, step: int) -> _Committed | None:
        return next((c for c in self.history if c.step == step), None)

    def _take_back(self, entry: _Committed, beat: float) -> None:
        """Undo the commits of `entry`'s step and after: the model goes back to its state
        before that step, what was to be sent from `beat` on is retracted, and the voices are
        what will be sounding at `beat`."""
        while self.history and self.history[-1].step >= entry.step:
            self.history.pop()
        self.acc.restore(entry.state)
        self.voices = self.output.retract_from(beat)
        self.next_step = entry.step

    def _play_row(self, k: int, new: set[int], beat: float, asap: bool) -> None:
        """Voice `k` moves to `new` at `beat`: what it leaves is released, what it takes is
        struck, what it keeps is held."""
        old = self.voices[k]
        if new == old:
            return
        self.voices[k] = set(new)
        self.output.play(self._moves(k, old, new, beat), asap=asap)
        self._struck |= asap and bool(new - old)

    def _moves(self, k: int, old: set[int], new: set[int], beat: float) -> list[NoteEvent]:
        """Voice `k` from `old` to `new` at `beat`: the releases, then the new notes."""
        events = [NoteEvent(beat, p, 0, k) for p in sorted(old - new)]
        return events + [NoteEvent(beat, p, self.acc.velocity, k) for p in sorted(new - old)]

    # ---- stopping ----------------------------------------------------------------------
    def release(self, beat: float) -> None:
        """Stop accompanying: cancel what is pending, end what sounds."""
        if self.speculator is not None:
            self.speculator.clear()
        self.output.cancel_after(beat)
        self.voices = [set() for _ in self.voices]
        self.next_step = None
        self.history.clear()

    def stop(self, beat: float) -> None:
        self.release(beat)

    @property
    def idle(self) -> bool:
        return not self.sounding and not any(self.voices)


class Jam:
    """Accompany while the player plays; when they stop, a solo; hand back when they resume."""

    def __init__(self, accompaniment: Accompaniment, solo: Continuation):
        self.acc = accompaniment
        self.solo = solo

    def set_temperature(self, t: float) -> None:
        self.acc.set_temperature(t)
        self.solo.set_temperature(t)

    def set_scale_lock(self, on: bool) -> None:
        self.acc.set_scale_lock(on)
        self.solo.set_scale_lock(on)

    def note_on(self, beat, pitch, velocity):
        if not self.acc.active:  # the player is back: the solo yields, accompaniment resumes
            self.solo.interrupt(beat)
            self.acc.active = True
        self.solo.note_on(beat, pitch, velocity)
        self.acc.note_on(beat, pitch, velocity)

    def note_off(self, beat, pitch):
        self.solo.note_off(beat, pitch)
        self.acc.note_off(beat, pitch)

    def end_phrase(self, beat):
        self._to_solo(beat)
        self.solo.end_phrase(beat)

    def armed(self, now):
        return self.acc.armed(now) if self.acc.active else None

    def tick(self, now, horizon):
        if (
            self.acc.active
            and self.acc.last_input is not None
            and not self.acc.sounding
            and now - self.acc.last_input >= self.solo.timing.silence_beats
        ):
            self._to_solo(now)
        self.acc.tick(now, horizon)
        self.solo.tick(now, horizon)

    def _to_solo(self, beat):
        if self.acc.active:
            self.acc.release(beat)
            self.acc.active = False

    def stop(self, beat):
        self.acc.stop(beat)
        self.solo.stop(beat)

    @property
    def idle(self):
        return self.acc.idle and self.solo.idle
