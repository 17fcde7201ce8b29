"""MIDI-like events (seed 003; Music Transformer's performance events, shifts in beats).

Vocabulary, fixed, laid out by offset:

- ``NoteOn_p``   ``[0, 128)``: pitch ``p`` starts sounding;
- ``NoteOff_p``  ``[128, 256)``: pitch ``p`` stops;
- ``TimeShift_k`` k = 1..``max_shift`` steps of ``1 / resolution`` beat (default 12 steps a
  beat, so sixteenths and eighth-note triplets both land on the grid);
- ``Velocity_b`` b = 0..``velocity_bins - 1``: the velocity of the note-ons that follow
  (bin values as MidiTok's, see ``velocity_table``); written only when the bin changes.

Times are quantized to the step grid (``base.quantize``). A gap longer than ``max_shift`` is
several full shifts, then the remainder. The piece starts at beat 0, so a late first note
is preceded by shifts. At one step the note-offs come first, then the note-ons, each in
ascending pitch order.

A pitch is one voice: all tracks merge into one stream, and a pitch sounds while any note
holds it. A note that starts while its pitch sounds re-articulates it (note-off, then
note-on, at its step); notes of one pitch that start on the same step merge into one, with
the loudest velocity. Every note lasts at least one step.

Live, the events of a step are final once no later input can quantize onto it, i.e. half
a step after it (1/24 beat at the default resolution): only then are its offs and ons known
and sorted. A held note's note-off is written at its release.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from midi_companion.errors import RepresentationError
from midi_companion.representations.base import (
    NoteEvent,
    Params,
    Representation,
    StreamDecoder,
    StreamEncoder,
    quantize,
)
from midi_companion.score import Score

N_PITCHES = 128


# ---- helpers shared by the token representations (notes, remi) ---------------------------
def check_int(owner: str, name: str, value: Any, low: int, high: int) -> None:
    """Raise RepresentationError unless `value` is an int in ``low..high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RepresentationError(
            f"{owner}: {name} must be an integer {low}..{high} (received {value!r})"
        )


def velocity_table(bins: int) -> tuple[int, ...]:
    """Velocity of each bin: ``bins`` values spread over 1..127, the top one 127.

    Same values as MidiTok's (``linspace(0, 127, bins + 1)[1:]`` truncated to ints).
    """
    return tuple(int(v) for v in np.linspace(0, 127, bins + 1)[1:].astype(np.intc))


def nearest(table: tuple, value: float) -> int:
    """Index of the value in the sorted `table` nearest to `value`; halves go up."""
    i = bisect.bisect_left(table, value)
    if i == len(table):
        return i - 1
    if i > 0 and value - table[i - 1] < table[i] - value:
        return i - 1
    return i


def check_pitch(owner: str, pitch: Any) -> None:
    """Raise RepresentationError unless `pitch` is a MIDI pitch 0..127."""
    check_int(owner, "pitch", pitch, 0, N_PITCHES - 1)


# ---- params and representation -----------------------------------------------------------
@dataclass(frozen=True)
class EventsParams(Params):
    """resolution: time-shift steps per beat; max_shift: longest shift in steps;
    velocity_bins: number of velocity tokens."""

    resolution: int = 12
    max_shift: int = 12
    velocity_bins: int = 32

    def validate(self) -> None:
        check_int("events", "resolution", self.resolution, 1, 960)
        check_int("events", "max_shift", self.max_shift, 1, 100 * self.resolution)
        check_int("events", "velocity_bins", self.velocity_bins, 1, 127)


class Events(Representation):
    """MIDI-like note-on / note-off / time-shift / velocity tokens (see the module doc)."""

    name = "events"
    params_cls = EventsParams
    kind = "tokens"

    def __init__(self, params: EventsParams | None = None, **overrides):
        super().__init__(params, **overrides)
        p = self.params
        self.grid = 1.0 / p.resolution
        self.note_on_offset = 0
        self.note_off_offset = N_PITCHES
        self.shift_offset = 2 * N_PITCHES
        self.velocity_offset = self.shift_offset + p.max_shift
        self.velocities = velocity_table(p.velocity_bins)

    @property
    def vocab_size(self) -> int:
        return self.velocity_offset + self.params.velocity_bins

    def token_name(self, token: int) -> str:
        """Readable name of a token id: ``NoteOn_60``, ``TimeShift_3`` (steps), ``Velocity_63``
        (the velocity)."""
        kind, value = self.split(token)
        return f"{kind}_{self.velocities[value] if kind == 'Velocity' else value}"

    def split(self, token: int) -> tuple[str, int]:
        """(kind, value) of a token: NoteOn/NoteOff pitch, TimeShift steps, Velocity bin."""
        if not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
            raise RepresentationError(
                f"events: token must be an integer 0..{self.vocab_size - 1} (received {token!r})"
            )
        token = int(token)
        if token < self.note_off_offset:
            return "NoteOn", token
        if token < self.shift_offset:
            return "NoteOff", token - self.note_off_offset
        if token < self.velocity_offset:
            return "TimeShift", token - self.shift_offset + 1
        return "Velocity", token - self.velocity_offset

    @property
    def steps_per_beat(self) -> int:
        return self.params.resolution

    def token_steps(self) -> np.ndarray:
        """TimeShift_k moves time k steps; every other token none."""
        steps = np.zeros(self.vocab_size, dtype=np.int64)
        steps[self.shift_offset : self.velocity_offset] = np.arange(1, self.params.max_shift + 1)
        return steps

    def velocity_bin(self, velocity: int) -> int:
        """Bin of a MIDI velocity: the nearest bin value (halves go up)."""
        return nearest(self.velocities, velocity)

    # ---- whole pieces ------------------------------------------------------------------
    def encode(self, score: Score) -> list[int]:
        """All notes of all tracks -> tokens (see the module doc for the rules)."""
        events = []  # (step, 0 = off / 1 = on, pitch, velocity bin)
        for pitch, notes in self._quantized_by_pitch(score).items():
            for on, off, vbin in _segments(notes):
                events.append((on, 1, pitch, vbin))
                events.append((off, 0, pitch, 0))
        events.sort()
        writer = _Writer(self)
        for step, kind, pitch, vbin in events:
            writer.event(step, kind, pitch, vbin)
        return writer.take()

    def _quantized_by_pitch(self, score: Score) -> dict[int, list[tuple[int, int, int]]]:
        """pitch -> [(on step, off step, velocity bin)], each note at least one step long."""
        by_pitch = defaultdict(list)
        for n in score.notes:
            on = quantize(n.onset, self.grid)
            off = max(quantize(n.end, self.grid), on + 1)
            by_pitch[n.pitch].append((on, off, self.velocity_bin(n.velocity)))
        return by_pitch

    # ---- live --------------------------------------------------------------------------
    def stream_encoder(self) -> EventsEncoder:
        return EventsEncoder(self)

    def stream_decoder(self, start: float = 0.0) -> EventsDecoder:
        return EventsDecoder(self, start)


def _segments(notes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Merge one pitch's notes into sounding segments: a note starting while the pitch
    sounds cuts the segment there and the new one lasts to the later end; notes starting
    on the same step are one note with the longest end and the loudest velocity."""
    at: dict[int, tuple[int, int]] = {}
    for on, off, vbin in notes:
        prev_off, prev_v = at.get(on, (off, vbin))
        at[on] = (max(off, prev_off), max(vbin, prev_v))
    out = []
    cur = None  # [on, off, vbin]
    for on in sorted(at):
        off, vbin = at[on]
        if cur is not None and on < cur[1]:
            off = max(off, cur[1])
            cur[1] = on
        if cur is not None:
            out.append(tuple(cur))
        cur = [on, off, vbin]
    if cur is not None:
        out.append(tuple(cur))
    return out


class _Writer:
    """Turns (step, off/on, pitch, velocity bin) events, in order, into tokens: time-shifts
    between steps, a velocity token when the bin changes."""

    def __init__(self, rep: Events):
        self.rep = rep
        self.cursor = 0  # step reached by the tokens written so far
        self.vbin: int | None = None
        self.out: list[int] = []

    def shifts_to(self, step: int, full_only: bool = False) -> None:
        """Time-shifts from the cursor to `step`: full shifts, then the remainder (unless
        `full_only`, when the remainder is not known to be final yet)."""
        rep = self.rep
        m = rep.params.max_shift
        while step - self.cursor >= m:
            self.out.append(rep.shift_offset + m - 1)
            self.cursor += m
        if step > self.cursor and not full_only:
            self.out.append(rep.shift_offset + step - self.cursor - 1)
            self.cursor = step

    def event(self, step: int, kind: int, pitch: int, vbin: int = 0) -> None:
        self.shifts_to(step)
        if kind == 0:
            self.out.append(self.rep.note_off_offset + pitch)
            return
        if vbin != self.vbin:
            self.out.append(self.rep.velocity_offset + vbin)
            self.vbin = vbin
        self.out.append(self.rep.note_on_offset + pitch)

    def take(self) -> list[int]:
        out, self.out = self.out, []
        return out


class EventsEncoder(StreamEncoder):
    """Live notes -> events tokens; concatenated output equals ``Events.encode``.

    A step's tokens are written once time has moved past the step's rounding window; full
    time-shifts are written as soon as time has passed them.
    """

    def __init__(self, rep: Events):
        self.rep = rep
        self.writer = _Writer(rep)
        self.now = 0  # quantized step of the latest time seen
        self.beat = 0.0
        # pitch -> [since step, holders]: pitches sounding (held by `holders` notes)
        self.sounding: dict[int, list[int]] = {}
        # pitch -> (since step, off step): released pitches whose note-off is not written
        self.released: dict[int, tuple[int, int]] = {}
        self.offs: dict[int, set[int]] = defaultdict(set)  # step -> pitches
        self.ons: dict[int, dict[int, int]] = defaultdict(dict)  # step -> {pitch: vbin}

    def note_on(self, beat: float, pitch: int, velocity: int, track: int = 0) -> list[int]:
        check_pitch("events", pitch)
        self._time(beat)
        step, vbin = self.now, self.rep.velocity_bin(velocity)
        held = self.sounding.get(pitch)
        if held is not None and held[0] == step:  # same step as the sounding note: merge
            held[1] += 1
            self.ons[step][pitch] = max(self.ons[step][pitch], vbin)
        elif held is not None:  # re-articulate
            self.offs[step].add(pitch)
            self.ons[step][pitch] = vbin
            self.sounding[pitch] = [step, held[1] + 1]
        else:
            since, off = self.released.pop(pitch, (None, None))
            if since == step:  # released and struck again within its first step: merge
                self.offs[off].discard(pitch)
                vbin = max(vbin, self.ons[step][pitch])
            self.ons[step][pitch] = vbin
            self.sounding[pitch] = [step, 1]
        return self._emit()

    def note_off(self, beat: float, pitch: int, track: int = 0) -> list[int]:
        check_pitch("events", pitch)
        self._time(beat)
        held = self.sounding.get(pitch)
        if held is not None:  # an off for a note never seen (held before start) is ignored
            held[1] -= 1
            if held[1] == 0:
                self._release(pitch, held[0])
        return self._emit()

    def advance(self, beat: float) -> list[int]:
        self._time(beat)
        return self._emit()

    def flush(self) -> list[int]:
        """Release every held pitch at the latest time seen, then write everything."""
        for pitch, (since, _) in list(self.sounding.items()):
            self._release(pitch, since)
        for step in sorted(set(self.offs) | set(self.ons)):
            self._write_step(step)
        return self.writer.take()

    def _release(self, pitch: int, since: int) -> None:
        off = max(self.now, since + 1)
        self.offs[off].add(pitch)
        self.released[pitch] = (since, off)
        del self.sounding[pitch]

    def _time(self, beat: float) -> None:
        if beat < self.beat:
            raise RepresentationError(
                f"events: stream times must not decrease (received beat {beat} after {self.beat})"
            )
        self.beat = beat
        self.now = quantize(beat, self.rep.grid)

    def _emit(self) -> list[int]:
        """Write every step before `now` (no later input can land on it), then the full
        shifts up to `now` (the next event cannot come earlier)."""
        closed = sorted(s for s in set(self.offs) | set(self.ons) if s < self.now)
        for step in closed:
            self._write_step(step)
        self.writer.shifts_to(self.now, full_only=True)
        return self.writer.take()

    def _write_step(self, step: int) -> None:
        for pitch in sorted(self.offs.pop(step, ())):
            self.writer.event(step, 0, pitch)
            if self.released.get(pitch, (None, None))[1] == step:
                del self.released[pitch]
        for pitch, vbin in sorted(self.ons.pop(step, {}).items()):
            self.writer.event(step, 1, pitch, vbin)


class EventsDecoder(StreamDecoder):
    """Events tokens -> NoteEvents as they come.

    ``allowed()`` is the grammar the encoder writes: a note-off only for a sounding pitch,
    a note-on only for a silent one and only once a velocity is set, offs before ons and
    pitches ascending within a step, a velocity token only when it changes the bin and only
    right before a note-on, and a partial time-shift only right before an event. ``feed``
    raises RepresentationError for any token the mask forbids.
    """

    def __init__(self, rep: Events, start: float = 0.0):
        self.rep = rep
        self.start = start
        self.step = 0
        self.vbin: int | None = None
        self.sounding: dict[int, int] = {}  # pitch -> on step
        self._new_step()
        self.after_velocity = False
        self.after_partial_shift = False
        self.last: int | None = None

    def _new_step(self) -> None:
        self.last_off = -1  # highest pitch turned off at this step
        self.last_on = -1  # highest pitch turned on at this step

    @property
    def position(self) -> float:
        return self.start + self.step / self.rep.params.resolution

    def allowed(self) -> np.ndarray:
        rep = self.rep
        mask = np.zeros(rep.vocab_size, dtype=bool)
        free = [p for p in range(self.last_on + 1, N_PITCHES) if p not in self.sounding]
        if self.vbin is not None:
            mask[[rep.note_on_offset + p for p in free]] = True
        if self.after_velocity:
            return mask
        if self.last_on < 0:
            offs = [p for p in self.sounding if p > self.last_off]
            mask[[rep.note_off_offset + p for p in offs]] = True
        if free:
            mask[rep.velocity_offset : rep.vocab_size] = True
            if self.vbin is not None:
                mask[rep.velocity_offset + self.vbin] = False
        if not self.after_partial_shift:
            mask[rep.shift_offset : rep.velocity_offset] = True
        return mask

    def feed(self, token) -> list[NoteEvent]:
        kind, value = self.rep.split(token)
        if not self.allowed()[int(token)]:
            raise RepresentationError(self._refusal(int(token)))
        self.last = int(token)
        self.after_velocity = kind == "Velocity"
        self.after_partial_shift = kind == "TimeShift" and value < self.rep.params.max_shift
        if kind == "TimeShift":
            self.step += value
            self._new_step()
            return []
        if kind == "Velocity":
            self.vbin = value
            return []
        if kind == "NoteOn":
            self.sounding[value] = self.step
            self.last_on = value
            return [NoteEvent(self.position, value, self.rep.velocities[self.vbin])]
        del self.sounding[value]
        self.last_off = value
        return [NoteEvent(self.position, value, 0)]

    def flush(self) -> list[NoteEvent]:
        """Note-offs for the sounding pitches, each at least one step after its note-on."""
        out = []
        for pitch, on in sorted(self.sounding.items()):
            beat = self.start + max(self.step, on + 1) / self.rep.params.resolution
            out.append(NoteEvent(beat, pitch, 0))
        self.sounding.clear()
        return out

    def _refusal(self, token: int) -> str:
        rep = self.rep
        after = "the start" if self.last is None else rep.token_name(self.last)
        kinds = sorted({rep.split(t)[0] for t in np.flatnonzero(self.allowed())})
        return (
            f"events: token {token} ({rep.token_name(token)}) cannot follow {after} "
            f"at beat {self.position:g}; allowed here: {', '.join(kinds)}"
        )
