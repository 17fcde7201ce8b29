"""What every representation shares: params that round-trip through JSON, whole-piece
encode/decode, and the streaming encoder/decoder pair the live daemon drives.

Contracts (tested for every representation):
- ``rep.decode(rep.encode(score))`` equals ``score`` up to the grid (and whatever the
  representation documents it cannot hold, e.g. velocity for rolls).
- Feeding a score's notes to ``rep.stream_encoder()`` in time order (``feed_score``) yields,
  concatenated, exactly ``rep.encode(score)``.
- ``rep.stream_decoder()`` fed ``rep.encode(score)`` token by token yields the note-ons and
  note-offs of ``rep.decode(...)`` with their times in beats, as the tokens come.
- ``type(rep).from_dict(rep.to_dict())`` equals ``rep`` (this rides inside ONNX files).

A "token" is an int for token representations, and a frame (numpy array) for rolls.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from midi_companion.errors import RepresentationError
from midi_companion.score import Note, Score, Track


@dataclass(frozen=True)
class NoteEvent:
    """A timed note-on (velocity > 0) or note-off (velocity 0) for one track, in beats."""

    beat: float
    pitch: int
    velocity: int
    track: int = 0

    @property
    def is_on(self) -> bool:
        return self.velocity > 0


@dataclass(frozen=True)
class Params:
    """Base for representation params: frozen, validated at construction, JSON round trip.

    Subclasses add fields and override ``validate`` to raise RepresentationError naming the
    field, what was received and what is allowed.
    """

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RepresentationError(
                f"{cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}"
            )
        # JSON turns tuples into lists; fields declared as tuples get them back.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class StreamEncoder(ABC):
    """Live notes in (times in beats, non-decreasing), tokens out as soon as they are final."""

    @abstractmethod
    def note_on(self, beat: float, pitch: int, velocity: int, track: int = 0) -> list: ...

    @abstractmethod
    def note_off(self, beat: float, pitch: int, track: int = 0) -> list: ...

    @abstractmethod
    def advance(self, beat: float) -> list:
        """Time has reached `beat` with no new note: return tokens that are now final."""

    @abstractmethod
    def flush(self) -> list:
        """The piece has ended: return every token still held back."""


class StreamDecoder(ABC):
    """Generated tokens in, timed NoteEvents out as they come."""

    @abstractmethod
    def feed(self, token) -> list[NoteEvent]: ...

    @abstractmethod
    def flush(self) -> list[NoteEvent]:
        """No more tokens: note-offs for every note still open."""

    @property
    @abstractmethod
    def position(self) -> float:
        """Beat the decoder has reached (time of the next token's events at the earliest)."""

    def allowed(self) -> np.ndarray | None:
        """Boolean mask over the vocabulary of tokens that can be decoded next; None = all.

        The Engine applies it before sampling (grammar masks stay outside the ONNX graph).
        """
        return None


class Representation(ABC):
    """A way to turn a Score into model tokens and back."""

    name: ClassVar[str]
    params_cls: ClassVar[type[Params]]
    #: "tokens": ints in [0, vocab_size); "frames": multi-hot numpy frames
    kind: ClassVar[str] = "tokens"

    def __init__(self, params: Params | None = None, **overrides):
        if params is None:
            params = self.params_cls(**overrides)
        elif overrides:
            raise TypeError("pass either params or keyword overrides, not both")
        if not isinstance(params, self.params_cls):
            raise RepresentationError(
                f"{self.name}: params must be {self.params_cls.__name__} "
                f"(received {type(params).__name__})"
            )
        self.params = params

    # ---- vocabulary ------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (for frame representations: the frame width)."""

    def vocab_to_json(self) -> Any:
        """Data-derived vocabulary (e.g. chord sets) as JSON-able data; None if fixed."""
        return None

    def load_vocab(self, vocab: Any) -> None:
        if vocab is not None:
            raise RepresentationError(f"{self.name}: has no data-derived vocabulary")

    # ---- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.to_dict(), "vocab": self.vocab_to_json()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Representation:
        if data.get("name") != cls.name:
            raise RepresentationError(
                f"expected representation {cls.name!r} (received {data.get('name')!r})"
            )
        rep = cls(cls.params_cls.from_dict(data.get("params") or {}))
        rep.load_vocab(data.get("vocab"))
        return rep

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    # ---- whole pieces ----------------------------------------------------------------
    @abstractmethod
    def encode(self, score: Score):
        """Whole score -> list of tokens (or array of frames)."""

    def decode(self, tokens, start: float = 0.0) -> Score:
        """Tokens -> Score, through the streaming decoder (one mechanism for both)."""
        dec = self.stream_decoder(start)
        events: list[NoteEvent] = []
        for tok in tokens:
            events.extend(dec.feed(tok))
        events.extend(dec.flush())
        return events_to_score(events, self.track_names())

    def token_steps(self) -> np.ndarray | None:
        """Grid steps each token moves time forward (int64 [vocab_size]), for the models
        that track metrical position inside their step graph; None when tokens do not
        carry time this way. ``steps_per_beat`` is the grid's steps in one beat."""
        return None

    steps_per_beat: int = 0

    def track_names(self) -> list[str]:
        return ["lead"]

    # ---- live ------------------------------------------------------------------------
    @abstractmethod
    def stream_encoder(self) -> StreamEncoder: ...

    @abstractmethod
    def stream_decoder(self, start: float = 0.0) -> StreamDecoder:
        """A decoder whose first token's events start at beat `start`."""


def score_events(score: Score, tracks: list[int] | None = None) -> list[tuple]:
    """A score as the live event stream: (beat, kind, pitch, velocity, track) sorted by time,
    note-offs before note-ons at the same beat (kind 0 = off, 1 = on)."""
    out = []
    for ti, track in enumerate(score.tracks):
        if tracks is not None and ti not in tracks:
            continue
        for n in track.notes:
            out.append((n.onset, 1, n.pitch, n.velocity, ti))
            out.append((n.end, 0, n.pitch, 0, ti))
    out.sort(key=lambda e: (e[0], e[1], e[4], e[2]))
    return out


def feed_score(encoder: StreamEncoder, score: Score) -> list:
    """Drive a stream encoder with a whole score as a live player would; return all tokens."""
    out: list = []
    for beat, kind, pitch, vel, track in score_events(score):
        out.extend(
            encoder.note_on(beat, pitch, vel, track)
            if kind
            else encoder.note_off(beat, pitch, track)
        )
    out.extend(encoder.flush())
    return out


def events_to_score(events: list[NoteEvent], track_names: list[str]) -> Score:
    """Pair note-ons with note-offs (first in, first out per track and pitch) into a Score."""
    tracks = [Track(name=n) for n in track_names]
    open_: dict[tuple[int, int], list[NoteEvent]] = {}
    for ev in sorted(events, key=lambda e: (e.beat, e.is_on)):
        while ev.track >= len(tracks):
            tracks.append(Track(name=f"track {len(tracks)}"))
        key = (ev.track, ev.pitch)
        if ev.is_on:
            open_.setdefault(key, []).append(ev)
        elif open_.get(key):
            on = open_[key].pop(0)
            if ev.beat > on.beat:
                tracks[ev.track].notes.append(
                    Note(on.beat, on.pitch, ev.beat - on.beat, on.velocity)
                )
    for t in tracks:
        t.notes.sort()
    return Score(tracks=tracks)


def quantize(beat: float, grid: float) -> int:
    """Index of the grid step nearest to `beat` (halves round up, so live and batch agree)."""
    return int(np.floor(beat / grid + 0.5 + 1e-9))
