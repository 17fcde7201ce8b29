"""Piano roll: one multi-hot frame of sounding keys per grid step (kind ``"frames"``).

A note sounds in frames ``[quantize(onset), max(quantize(end), quantize(onset) + 1))``, so
every note holds at least one frame. All tracks of a score merge into one roll, and notes
outside the key range are not held. Velocity is not held either: decoded notes get
``params.velocity``. Notes outside the range still count for the length of the roll, as they
would for a live stream, where time passing makes frames final.

Without onsets a frame is ``[P]`` wide (P = 128 keys 0..127, or 88 keys 21..108) and says
only which keys sound, so same-pitch notes that touch or overlap decode as one long note.
With ``onsets=True`` a frame is ``[2P]``: the sounding plane, then an onset plane marking
the keys struck on that step, so a repeated note re-articulates. An onset bit on a key that
does not sound is ignored on decode.

The roll machinery here (``Layout``, ``note_span``, ``render``, ``RollEncoder``,
``RollDecoder``) is written for frames of several rows, so ``multitrack`` and ``chord``
share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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

#: frame width (keys) -> lowest MIDI pitch of the range
KEY_RANGES = {128: 0, 88: 21}

# (row, key index or None for a note outside the range, first frame, end frame exclusive)
Span = tuple[int, int | None, int, int]


@dataclass(frozen=True)
class Layout:
    """The shape of a roll: grid (beats per step), `rows` rows of `keys` keys from MIDI
    pitch `low`, and an onset plane after the sounding plane when `onsets`."""

    grid: float
    low: int
    keys: int
    rows: int = 1
    onsets: bool = False

    @property
    def width(self) -> int:
        """Frame values per row."""
        return self.keys * (2 if self.onsets else 1)

    def key(self, pitch: int) -> int | None:
        """Key index of a MIDI pitch, None outside the range."""
        return pitch - self.low if 0 <= pitch - self.low < self.keys else None


# ---- params checks shared by the roll representations --------------------------------
def check_grid(owner: str, grid: Any) -> None:
    """Raise RepresentationError unless `grid` (beats per step) is a finite number > 0."""
    ok = isinstance(grid, (int, float)) and not isinstance(grid, bool)
    if not ok or not math.isfinite(grid) or grid <= 0:
        raise RepresentationError(
            f"{owner}: grid must be a number of beats per step > 0, e.g. 0.25 (received {grid!r})"
        )


def check_velocity(owner: str, velocity: Any) -> None:
    """Raise RepresentationError unless `velocity` is an int in 1..127."""
    if not isinstance(velocity, int) or isinstance(velocity, bool) or not 1 <= velocity <= 127:
        raise RepresentationError(
            f"{owner}: velocity must be an integer 1..127 (received {velocity!r})"
        )


# ---- roll machinery ------------------------------------------------------------------
def note_span(onset: float, end: float, grid: float) -> tuple[int, int]:
    """Frames [a, b) a note sounds in: at least one frame; negative times clamp to step 0."""
    a = max(quantize(onset, grid), 0)
    return a, max(quantize(end, grid), a + 1)


def render(spans: Iterable[Span], layout: Layout) -> np.ndarray:
    """Spans -> uint8 frames [T, rows, width]; T = the last span's end."""
    spans = list(spans)
    length = max((b for _, _, _, b in spans), default=0)
    out = np.zeros((length, layout.rows, layout.width), dtype=np.uint8)
    for row, key, a, b in spans:
        if key is not None:
            out[a:b, row, key] = 1
            if layout.onsets:
                out[a, row, layout.keys + key] = 1
    return out


def transpose_frames(frames: np.ndarray, semitones: int, planes: int = 1) -> np.ndarray:
    """Frames shifted by `semitones` keys along the last axis; keys leaving the range are
    dropped. `planes` > 1 splits the last axis into equal planes (sounding, onsets) shifted
    each on its own. Returns a new array."""
    frames = np.asarray(frames)
    width = frames.shape[-1] // planes
    if width * planes != frames.shape[-1]:
        raise RepresentationError(
            f"transpose_frames: last axis {frames.shape[-1]} does not split into {planes} planes"
        )
    out = np.zeros_like(frames)
    k = int(semitones)
    if abs(k) >= width:
        return out
    for p in range(planes):
        src = frames[..., p * width : (p + 1) * width]
        dst = out[..., p * width : (p + 1) * width]
        if k >= 0:
            dst[..., k:] = src[..., : width - k]
        else:
            dst[..., :k] = src[..., -k:]
    return out


class RollEncoder(StreamEncoder):
    """Live notes in, frames out: frame t is final once time reaches (t + 0.5) * grid,
    because any later event quantizes to step t + 1 or beyond.

    `row_of(track)` gives the roll row of a track (raising for a track it refuses) and
    `finish(frame)` turns a final [rows, width] frame into what the representation emits.
    """

    def __init__(
        self,
        layout: Layout,
        row_of: Callable[[int], int],
        finish: Callable[[np.ndarray], Any],
    ):
        self._layout, self._row_of, self._finish = layout, row_of, finish
        self._next = 0  # index of the first frame not yet emitted
        self._open: dict[tuple[int, int], list[tuple[int, int | None, int]]] = {}  # row, key, a
        self._closed: list[Span] = []  # ended notes whose last frame is not emitted yet

    @property
    def step(self) -> int:
        """Index of the current (not yet final) frame."""
        return self._next

    def note_on(self, beat: float, pitch: int, velocity: int, track: int = 0) -> list:
        row, key = self._row_of(track), self._layout.key(pitch)
        out = self.advance(beat)
        a = max(quantize(beat, self._layout.grid), 0)
        # A key of None (outside the range) sounds nothing but still makes the roll last.
        self._open.setdefault((track, pitch), []).append((row, key, a))
        return out

    def note_off(self, beat: float, pitch: int, track: int = 0) -> list:
        self._row_of(track)
        out = self.advance(beat)
        starts = self._open.get((track, pitch))
        if starts:
            # First in, first out, as events_to_score pairs them; the union of the spans
            # (all a roll holds) does not depend on the pairing anyway.
            row, key, a = starts.pop(0)
            self._closed.append((row, key, a, max(quantize(beat, self._layout.grid), a + 1)))
        return out

    def advance(self, beat: float) -> list:
        return self._emit_until(quantize(beat, self._layout.grid))

    def flush(self) -> list:
        for starts in self._open.values():
            for row, key, a in starts:
                self._closed.append((row, key, a, max(self._next, a + 1)))
        self._open.clear()
        return self._emit_until(max((b for *_, b in self._closed), default=self._next))

    def peek(self):
        """The provisional current frame: what it would be if nothing else happened now.

        Lets a harmonizer answer a note-on within milliseconds, before the step is final.
        """
        return self._finish(self._frame(self._next))

    def _emit_until(self, end: int) -> list:
        out = [self._finish(self._frame(t)) for t in range(self._next, end)]
        if end > self._next:
            self._next = end
            self._closed = [s for s in self._closed if s[3] > end]
        return out

    def _frame(self, t: int) -> np.ndarray:
        layout = self._layout
        frame = np.zeros((layout.rows, layout.width), np.uint8)
        opened = [(r, k, a, t + 1) for starts in self._open.values() for r, k, a in starts]
        for row, key, a, b in self._closed + opened:
            if a <= t < b and key is not None:
                frame[row, key] = 1
                if layout.onsets and a == t:
                    frame[row, layout.keys + key] = 1
        return frame


class RollDecoder(StreamDecoder):
    """Frames in, NoteEvents out: a key starts when it begins to sound (or its onset bit is
    set) and ends when it stops (or is struck again). Offs come before ons at a step."""

    def __init__(
        self, owner: str, shape: tuple[int, ...], layout: Layout, velocity: int, start: float
    ):
        self._owner, self._shape, self._layout = owner, shape, layout
        self._velocity, self._start = velocity, float(start)
        self._steps = 0
        self._prev: set[tuple[int, int]] = set()  # (row, key) sounding in the last frame

    @property
    def position(self) -> float:
        return self._start + self._steps * self._layout.grid

    def feed(self, token) -> list[NoteEvent]:
        frame = np.asarray(token)
        if frame.shape != self._shape:
            raise RepresentationError(
                f"{self._owner}: a frame must have shape {self._shape} (received {frame.shape})"
            )
        # Frames are sparse: sets of (row, key) beat numpy masks on per-frame overhead.
        keys, width = self._layout.keys, self._layout.width
        sounding, struck = set(), set()
        for i in np.flatnonzero(frame).tolist():
            row, key = divmod(i, width)
            (sounding if key < keys else struck).add((row, key % keys))
        struck &= sounding
        offs = sorted((self._prev - sounding) | (self._prev & struck))
        ons = sorted((sounding - self._prev) | struck)
        events = self._events(offs, 0) + self._events(ons, self._velocity)
        self._prev = sounding
        self._steps += 1
        return events

    def flush(self) -> list[NoteEvent]:
        events = self._events(sorted(self._prev), 0)
        self._prev = set()
        return events

    def _events(self, keys: list[tuple[int, int]], velocity: int) -> list[NoteEvent]:
        beat, low = self.position, self._layout.low
        return [NoteEvent(beat, low + key, velocity, row) for row, key in keys]


# ---- the representation --------------------------------------------------------------
@dataclass(frozen=True)
class PianoRollParams(Params):
    """grid: beats per step; pitches: 128 (0..127) or 88 (21..108); onsets: add the onset
    plane; velocity: velocity of decoded notes."""

    grid: float = 0.25
    pitches: int = 128
    onsets: bool = False
    velocity: int = 80

    def validate(self) -> None:
        check_grid("pianoroll", self.grid)
        if self.pitches not in KEY_RANGES or isinstance(self.pitches, bool):
            raise RepresentationError(
                f"pianoroll: pitches must be 128 (0..127) or 88 (21..108) "
                f"(received {self.pitches!r})"
            )
        if not isinstance(self.onsets, bool):
            raise RepresentationError(
                f"pianoroll: onsets must be true or false (received {self.onsets!r})"
            )
        check_velocity("pianoroll", self.velocity)


class PianoRoll(Representation):
    """Frames uint8 [T, P] (or [T, 2P] with onsets); see the module docstring."""

    name = "pianoroll"
    params_cls = PianoRollParams
    kind = "frames"

    @property
    def layout(self) -> Layout:
        p = self.params
        return Layout(p.grid, KEY_RANGES[p.pitches], p.pitches, 1, p.onsets)

    @property
    def vocab_size(self) -> int:
        return self.layout.width

    def encode(self, score: Score) -> np.ndarray:
        """All tracks merged -> uint8 frames [T, vocab_size]; T = the last note's end frame."""
        layout = self.layout
        spans = [
            (0, layout.key(n.pitch), *note_span(n.onset, n.end, layout.grid))
            for t in score.tracks
            for n in t.notes
        ]
        return render(spans, layout)[:, 0, :]

    def transpose_frames(self, frames: np.ndarray, semitones: int) -> np.ndarray:
        """Frames of this representation shifted by `semitones` (both planes with onsets)."""
        return transpose_frames(frames, semitones, planes=2 if self.params.onsets else 1)

    def stream_encoder(self) -> RollEncoder:
        """Frames as they become final; ``peek()`` gives the provisional current frame."""
        return RollEncoder(self.layout, row_of=lambda track: 0, finish=lambda frame: frame[0])

    def stream_decoder(self, start: float = 0.0) -> RollDecoder:
        return RollDecoder(self.name, (self.vocab_size,), self.layout, self.params.velocity, start)
