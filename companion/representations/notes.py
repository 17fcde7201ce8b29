"""Notes as (pitch, step, duration) triples, MidiRNN style (seed 002), flattened to tokens.

Each note is three tokens, one per field, laid out by offset:

- pitch ``[0, 128)``;
- step: beats since the previous note's onset (the first note: since beat 0), class ``k``
  = ``k / resolution`` beats, k = 0..``max_step * resolution``; 0 = a chord tone;
- duration: class ``d`` = ``d / resolution`` beats, d = 1..``max_duration * resolution``.

``fields`` = (128, n_step, n_duration) and ``offsets`` let a three-head model split a flat
sequence into triples (``note-step`` protocol). Onsets and durations are quantized to the
nearest class on their own (``base.quantize``); a duration is at least one class and is cut
to ``max_duration``; a gap longer than ``max_step`` shrinks to ``max_step`` (every later
note moves earlier with it). All tracks merge into one stream, ordered by onset then pitch;
notes of one pitch starting on the same step are one note, the longest. Velocity is not
held: decoded notes get ``params.velocity``.

Live, this representation is duration-based: a note is only known once it ends. The stream
encoder writes a note's triple after its note-off, in onset order, so a note waits until
every note with an earlier onset (or the same onset and a lower pitch) has ended too, and
until time has left its onset's rounding window (half a step) so no chord tone can still
join it. A sustained note therefore holds back everything played after it.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

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
from midi_companion.representations.events import N_PITCHES, check_int, check_pitch
from midi_companion.score import Score

FIELD_NAMES = ("Pitch", "Step", "Duration")


@dataclass(frozen=True)
class NotesParams(Params):
    """resolution: classes per beat; max_step, max_duration: largest classes in beats;
    velocity: the velocity decoded notes get."""

    resolution: int = 12
    max_step: int = 8
    max_duration: int = 8
    velocity: int = 80

    def validate(self) -> None:
        check_int("notes", "resolution", self.resolution, 1, 96)
        check_int("notes", "max_step", self.max_step, 1, 64)
        check_int("notes", "max_duration", self.max_duration, 1, 64)
        check_int("notes", "velocity", self.velocity, 1, 127)


class Notes(Representation):
    """(pitch, step, duration) triples, flattened (see the module doc)."""

    name = "notes"
    params_cls = NotesParams
    kind = "tokens"

    def __init__(self, params: NotesParams | None = None, **overrides):
        super().__init__(params, **overrides)
        p = self.params
        self.grid = 1.0 / p.resolution
        self.fields = (N_PITCHES, p.max_step * p.resolution + 1, p.max_duration * p.resolution)
        self.offsets = (0, N_PITCHES, N_PITCHES + self.fields[1])

    @property
    def vocab_size(self) -> int:
        return sum(self.fields)

    @property
    def step_classes(self) -> tuple[float, ...]:
        """Beats of each step class."""
        return tuple(k / self.params.resolution for k in range(self.fields[1]))

    @property
    def duration_classes(self) -> tuple[float, ...]:
        """Beats of each duration class."""
        return tuple((d + 1) / self.params.resolution for d in range(self.fields[2]))

    def split(self, token: int) -> tuple[int, int]:
        """(field index 0/1/2, class index within the field) of a token."""
        if not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
            raise RepresentationError(
                f"notes: token must be an integer 0..{self.vocab_size - 1} (received {token!r})"
            )
        field = 0 if token < self.offsets[1] else 1 if token < self.offsets[2] else 2
        return field, int(token) - self.offsets[field]

    def token_name(self, token: int) -> str:
        """Readable name: ``Pitch_60``, ``Step_3`` (steps of 1/resolution beat),
        ``Duration_12`` (steps)."""
        field, value = self.split(token)
        return f"{FIELD_NAMES[field]}_{value + (field == 2)}"

    def duration_steps(self, beats: float) -> int:
        """A duration in beats -> grid steps, at least 1, at most the largest class."""
        return min(max(quantize(beats, self.grid), 1), self.fields[2])

    def triple(self, pitch: int, step: int, duration: int) -> list[int]:
        """Tokens of one note: `step` grid steps since the previous onset (cut to the
        largest class) and `duration` steps."""
        return [
            pitch,
            self.offsets[1] + min(step, self.fields[1] - 1),
            self.offsets[2] + duration - 1,
        ]

    # ---- whole pieces ------------------------------------------------------------------
    def encode(self, score: Score) -> list[int]:
        """All notes of all tracks -> pitch, step, duration tokens in (onset, pitch) order."""
        notes: dict[tuple[int, int], int] = {}  # (on step, pitch) -> duration steps
        for n in score.notes:
            key = (quantize(n.onset, self.grid), n.pitch)
            notes[key] = max(notes.get(key, 0), self.duration_steps(n.duration))
        out, prev = [], 0
        for (on, pitch), dur in sorted(notes.items()):
            out += self.triple(pitch, on - prev, dur)
            prev = on
        return out

    # ---- live --------------------------------------------------------------------------
    def stream_encoder(self) -> NotesEncoder:
        return NotesEncoder(self)

    def stream_decoder(self, start: float = 0.0) -> NotesDecoder:
        return NotesDecoder(self, start)


class NotesEncoder(StreamEncoder):
    """Live notes -> triples, each written once it and every note before it are complete
    (see the module doc). Note-offs pair with note-ons per (track, pitch), first in first
    out, as MIDI files do."""

    def __init__(self, rep: Notes):
        self.rep = rep
        self.beat = 0.0
        self.now = 0
        self.prev = 0  # on step of the last note written
        # on step -> {pitch: duration steps, or None while sounding}
        self.groups: dict[int, dict[int, list]] = defaultdict(dict)
        self.open: dict[tuple[int, int], deque] = defaultdict(deque)

    def note_on(self, beat: float, pitch: int, velocity: int, track: int = 0) -> list[int]:
        check_pitch("notes", pitch)
        self._time(beat)
        record = [beat, None]  # onset beat, duration steps once known
        self.groups[self.now].setdefault(pitch, []).append(record)
        self.open[(track, pitch)].append(record)
        return self._emit()

    def note_off(self, beat: float, pitch: int, track: int = 0) -> list[int]:
        self._time(beat)
        queue = self.open.get((track, pitch))
        if queue:  # an off for a note never seen (held before start) is ignored
            record = queue.popleft()
            record[1] = self.rep.duration_steps(beat - record[0])
        return self._emit()

    def advance(self, beat: float) -> list[int]:
        self._time(beat)
        return self._emit()

    def flush(self) -> list[int]:
        """End every sounding note at the latest time seen, then write everything."""
        for queue in self.open.values():
            for record in queue:
                record[1] = self.rep.duration_steps(self.beat - record[0])
        self.open.clear()
        self.now = max(self.groups, default=0) + 1
        return self._emit()

    def _time(self, beat: float) -> None:
        if beat < self.beat:
            raise RepresentationError(
                f"notes: stream times must not decrease (received beat {beat} after {self.beat})"
            )
        self.beat = beat
        self.now = quantize(beat, self.rep.grid)

    def _emit(self) -> list[int]:
        out: list[int] = []
        for on in sorted(self.groups):
            group = self.groups[on]
            complete = all(r[1] is not None for records in group.values() for r in records)
            if on >= self.now or not complete:
                break
            for pitch, records in sorted(group.items()):
                out += self.rep.triple(pitch, on - self.prev, max(r[1] for r in records))
                self.prev = on
            del self.groups[on]
        return out


class NotesDecoder(StreamDecoder):
    """Triples -> NoteEvents: each duration token yields the note's note-on and note-off.

    ``allowed()`` is the field that comes next; a step of 0 (a chord tone) only for a pitch
    above the previous one at that onset, as the encoder writes chords. ``feed`` raises
    RepresentationError for any token the mask forbids.
    """

    def __init__(self, rep: Notes, start: float = 0.0):
        self.rep = rep
        self.start = start
        self.onset = 0  # steps from start of the current note
        self.field = 0
        self.pitch = -1  # pitch of the current (or last) note
        self.last_pitch = -1  # pitch of the last complete note at `onset`

    @property
    def position(self) -> float:
        return self.start + self.onset / self.rep.params.resolution

    def allowed(self) -> np.ndarray:
        rep = self.rep
        mask = np.zeros(rep.vocab_size, dtype=bool)
        lo = rep.offsets[self.field]
        mask[lo : lo + rep.fields[self.field]] = True
        if self.field == 1 and self.pitch <= self.last_pitch:
            mask[lo] = False
        return mask

    def feed(self, token) -> list[NoteEvent]:
        field, value = self.rep.split(token)
        if not self.allowed()[int(token)]:
            raise RepresentationError(
                f"notes: token {token} ({self.rep.token_name(token)}) is not allowed here: "
                f"expected a {FIELD_NAMES[self.field]} token"
                + (
                    " > 0 (the pitch is not above the previous chord tone)"
                    if field == self.field == 1
                    else ""
                )
            )
        self.field = (field + 1) % 3
        if field == 0:
            self.pitch = value
        elif field == 1:
            if value > 0:
                self.last_pitch = -1
            self.onset += value
        else:
            self.last_pitch = self.pitch
            on = self.position
            off = self.start + (self.onset + value + 1) / self.rep.params.resolution
            return [
                NoteEvent(on, self.pitch, self.rep.params.velocity),
                NoteEvent(off, self.pitch, 0),
            ]
        return []

    def flush(self) -> list[NoteEvent]:
        """Every complete note's note-off was already yielded; a partial triple is dropped."""
        self.field = 0
        return []
