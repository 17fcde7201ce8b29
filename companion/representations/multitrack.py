"""Multitrack roll: per grid step a frame [K, P], one multi-hot row of keys per track
(kind "frames"); track 0 is the lead, the part the player plays live.

Each row is a ``pianoroll`` without onsets over the keys ``low..high``: same-pitch notes
that touch merge, velocity is not held, notes outside the range are dropped (but count for
the length, as in ``pianoroll``).

Schemes (``tracks`` picks and orders the rows, default all of the scheme's, in order):

- ``satb``: soprano, alto, tenor, bass. A score part goes to the voice its name starts
  with (first word: "Soprano 1" -> soprano); the other non-drum parts fill the remaining
  voices in order; parts beyond four and drum parts are dropped. A voice row holds at most
  one pitch: where a part sounds several, soprano and alto keep the highest, tenor and
  bass the lowest. Decoded voices are choir (program 52).
- ``lpd5``: the five LPD-5 families by General MIDI program (Dong et al. 2018): piano
  0-7, guitar 24-31, bass 32-39, strings 40-51, drums = drum parts; by the LPD-5
  convention every other program goes to strings except synth effects (96-103),
  percussive (112-119) and sound effects (120-127), which are dropped. Before them comes a
  ``lead`` row: the score's lead part goes there instead of to its family. The lead part
  is the first non-drum part named "lead" or "melody" (first word; even when empty), else
  the held non-drum part with the highest mean pitch (earliest on ties). Leave "lead" out of
  ``tracks`` for the plain five LPD-5 rows. Decoded tracks get their family's first
  program (lead: 0) and drums ``is_drum``.
- ``quartet``: violin1, violin2, viola, cello: the score's non-drum parts in order (a
  string quartet's score order), parts beyond four dropped; rows keep every pitch (double
  stops). Decoded as violin (40), violin, viola (41), cello (42).

The streaming encoder's ``track`` argument is the row index (live input is already
routed to rows); ``rep.arrange(score)`` lays a score out as rows, so that
``feed_score(rep.stream_encoder(), rep.arrange(score))`` equals ``rep.encode(score)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from midi_companion.errors import RepresentationError
from midi_companion.representations.base import Params, Representation
from midi_companion.representations.pianoroll import (
    Layout,
    RollDecoder,
    RollEncoder,
    check_grid,
    check_velocity,
    note_span,
    render,
    transpose_frames,
)
from midi_companion.score import Score, Track

SATB = ("soprano", "alto", "tenor", "bass")
LPD5 = ("lead", "piano", "guitar", "bass", "strings", "drums")
QUARTET = ("violin1", "violin2", "viola", "cello")
SCHEMES = {"satb": SATB, "lpd5": LPD5, "quartet": QUARTET}

CHOIR = 52
#: General MIDI program of each decoded track, per scheme and track name (drums: is_drum)
PROGRAMS = {
    "satb": dict.fromkeys(SATB, CHOIR),
    "lpd5": {"lead": 0, "piano": 0, "guitar": 24, "bass": 32, "strings": 40, "drums": 0},
    "quartet": {"violin1": 40, "violin2": 40, "viola": 41, "cello": 42},
}
#: satb rows that keep their highest pitch when a part sounds several (the others: lowest)
KEEP_HIGHEST = ("soprano", "alto")
LEAD_NAMES = ("lead", "melody")


def lpd5_family(track: Track) -> str | None:
    """The LPD-5 family of a part (see the module docstring); None = dropped."""
    p = track.program
    if track.is_drum:
        return "drums"
    if 0 <= p <= 7:
        return "piano"
    if 24 <= p <= 31:
        return "guitar"
    if 32 <= p <= 39:
        return "bass"
    if 96 <= p <= 103 or p >= 112:
        return None
    return "strings"


@dataclass(frozen=True)
class MultiTrackParams(Params):
    """grid: beats per step; low, high: key range (MIDI pitches, inclusive); scheme: satb,
    lpd5 or quartet; tracks: the scheme's track names to hold, in row order (empty = all);
    velocity: velocity of decoded notes."""

    grid: float = 0.25
    low: int = 21
    high: int = 108
    scheme: str = "satb"
    tracks: tuple[str, ...] = ()
    velocity: int = 80

    def __post_init__(self):
        if isinstance(self.tracks, list):
            object.__setattr__(self, "tracks", tuple(self.tracks))
        if self.tracks == () and self.scheme in SCHEMES:
            object.__setattr__(self, "tracks", SCHEMES[self.scheme])
        super().__post_init__()

    def validate(self) -> None:
        check_grid("multitrack", self.grid)
        check_velocity("multitrack", self.velocity)
        for key in ("low", "high"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 127:
                raise RepresentationError(
                    f"multitrack: {key} must be a MIDI pitch 0..127 (received {value!r})"
                )
        if self.low > self.high:
            raise RepresentationError(
                f"multitrack: low must be <= high (received low={self.low}, high={self.high})"
            )
        if self.scheme not in SCHEMES:
            raise RepresentationError(
                f"multitrack: scheme must be one of {sorted(SCHEMES)} (received {self.scheme!r})"
            )
        names = SCHEMES[self.scheme]
        bad = [t for t in self.tracks if t not in names]
        if not isinstance(self.tracks, tuple) or bad or len(set(self.tracks)) < len(self.tracks):
            raise RepresentationError(
                f"multitrack: tracks must be distinct names of the {self.scheme} scheme "
                f"{list(names)} (received {list(self.tracks)!r})"
            )


class MultiTrack(Representation):
    """Frames uint8 [T, K, P]; see the module docstring."""

    name = "multitrack"
    params_cls = MultiTrackParams
    kind = "frames"

    @property
    def keys(self) -> int:
        """P: keys per row."""
        return self.params.high - self.params.low + 1

    @property
    def layout(self) -> Layout:
        p = self.params
        return Layout(p.grid, p.low, self.keys, len(p.tracks))

    @property
    def vocab_size(self) -> int:
        return self.keys

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(K, P): one row per track."""
        return len(self.params.tracks), self.keys

    def track_names(self) -> list[str]:
        return list(self.params.tracks)

    # ---- score parts -> rows ---------------------------------------------------------
    def assign(self, score: Score) -> list[list[int]]:
        """For each row, the indices of the score's tracks merged into it (others dropped)."""
        if self.params.scheme == "satb":
            part_of = _satb_parts(score)
        elif self.params.scheme == "quartet":
            parts = [i for i, t in enumerate(score.tracks) if not t.is_drum]
            part_of = dict(zip(parts, QUARTET))
        else:
            part_of = _lpd5_parts(score, with_lead="lead" in self.params.tracks)
        return [[i for i, name in part_of.items() if name == row] for row in self.params.tracks]

    def arrange(self, score: Score) -> Score:
        """The score laid out as this representation's rows: one named track per row."""
        tracks = [
            self._decoded_track(row, [n for i in parts for n in score.tracks[i].notes])
            for row, parts in zip(self.params.tracks, self.assign(score))
        ]
        return replace(score, tracks=tracks)

    # ---- whole pieces and streams ------------------------------------------------------
    def encode(self, score: Score) -> np.ndarray:
        """uint8 frames [T, K, P]; T = the end frame of the last note of a held part."""
        layout = self.layout
        spans = [
            (row, layout.key(n.pitch), *note_span(n.onset, n.end, layout.grid))
            for row, parts in enumerate(self.assign(score))
            for i in parts
            for n in score.tracks[i].notes
        ]
        return self._one_voice(render(spans, layout))

    def decode(self, tokens, start: float = 0.0) -> Score:
        score = super().decode(tokens, start)
        score.tracks = [self._decoded_track(t.name, t.notes) for t in score.tracks]
        return score

    def transpose_frames(self, frames: np.ndarray, semitones: int) -> np.ndarray:
        """Frames [..., K, P] shifted by `semitones`; the drum row stays where it is."""
        out = transpose_frames(frames, semitones)
        for row, name in enumerate(self.params.tracks):
            if name == "drums":
                out[..., row, :] = np.asarray(frames)[..., row, :]
        return out

    def stream_encoder(self) -> RollEncoder:
        """``track`` = row index; ``peek()`` gives the provisional [K, P] frame."""
        return RollEncoder(self.layout, row_of=self._row, finish=self._one_voice)

    def stream_decoder(self, start: float = 0.0) -> RollDecoder:
        """NoteEvents carry the row index as ``track``."""
        return RollDecoder(self.name, self.frame_shape, self.layout, self.params.velocity, start)

    # ---- helpers ---------------------------------------------------------------------
    def _row(self, track: int) -> int:
        if not isinstance(track, (int, np.integer)) or not 0 <= track < len(self.params.tracks):
            raise RepresentationError(
                f"multitrack: track must be a row index 0..{len(self.params.tracks) - 1} "
                f"{list(self.params.tracks)} (received {track!r})"
            )
        return int(track)

    def _one_voice(self, frames: np.ndarray) -> np.ndarray:
        """SATB rows keep one pitch per step (highest or lowest, see the module docstring)."""
        if self.params.scheme != "satb":
            return frames
        for row, name in enumerate(self.params.tracks):
            keys = frames[..., row, :]
            # argmax finds the first 1: from the top for the highest, the bottom for lowest.
            if name in KEEP_HIGHEST:
                keep = keys.shape[-1] - 1 - np.argmax(keys[..., ::-1], axis=-1)
            else:
                keep = np.argmax(keys, axis=-1)
            one = np.zeros_like(keys)
            np.put_along_axis(one, keep[..., None], 1, axis=-1)
            frames[..., row, :] = one * keys.any(axis=-1, keepdims=True)
        return frames

    def _decoded_track(self, name: str, notes) -> Track:
        return Track(
            name=name,
            program=PROGRAMS[self.params.scheme][name],
            is_drum=name == "drums",
            notes=sorted(notes),
        )


def _first_word(name: str) -> str:
    match = re.match(r"[a-z]+", name.strip().lower())
    return match.group(0) if match else ""


def _satb_parts(score: Score) -> dict[int, str]:
    """Score track index -> voice: by name first, then the rest in order."""
    free = [i for i, t in enumerate(score.tracks) if not t.is_drum]
    voice_of: dict[int, str] = {}
    for voice in SATB:
        match = next((i for i in free if _first_word(score.tracks[i].name) == voice), None)
        if match is not None:
            voice_of[match] = voice
            free.remove(match)
    remaining = [v for v in SATB if v not in voice_of.values()]
    voice_of.update(zip(free, remaining))
    return voice_of


def _lpd5_parts(score: Score, with_lead: bool) -> dict[int, str]:
    """Score track index -> LPD-5 row name (the lead part -> "lead" when there is one)."""
    part_of = {i: f for i, t in enumerate(score.tracks) if (f := lpd5_family(t)) is not None}
    lead = _lead_part(score) if with_lead else None
    if lead is not None:
        part_of[lead] = "lead"
    return part_of


def _lead_part(score: Score) -> int | None:
    named = [
        i for i, t in enumerate(score.tracks) if not t.is_drum and _first_word(t.name) in LEAD_NAMES
    ]
    if named:
        return named[0]
    candidates = [
        i for i, t in enumerate(score.tracks) if t.notes and lpd5_family(t) not in (None, "drums")
    ]
    if not candidates:
        return None
    # max() keeps the first of equal keys, so the earliest part wins ties.
    return max(candidates, key=lambda i: np.mean([n.pitch for n in score.tracks[i].notes]))
