"""Chord tokens: one token per grid step naming the set of sounding pitches (kind "tokens").

The steps are those of a 128-key ``pianoroll`` without onsets (all tracks merged, repeated
notes merge, velocity not held). The vocabulary comes from training data: ``rep.fit(scores)``
makes token 0 the empty set (silence), then every set seen at least ``min_count`` times, by
descending count, ties in ascending order of the sorted pitch tuple, cut to ``max_size``
tokens in all. It rides in ``to_dict`` as ``vocab``: a list of pitch lists, index = token.

A set outside the vocabulary encodes as its largest known subset; among subsets of equal
size, the most frequent (the lowest token). The empty set is a subset of every set, so every
set has a token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from midi_companion.errors import RepresentationError
from midi_companion.representations.base import (
    NoteEvent,
    Params,
    Representation,
    StreamDecoder,
)
from midi_companion.representations.pianoroll import (
    PianoRoll,
    RollDecoder,
    RollEncoder,
    check_grid,
    check_velocity,
)
from midi_companion.score import Score

PitchSet = tuple[int, ...]


@dataclass(frozen=True)
class ChordParams(Params):
    """grid: beats per step; velocity: velocity of decoded notes."""

    grid: float = 0.25
    velocity: int = 80

    def validate(self) -> None:
        check_grid("chord", self.grid)
        check_velocity("chord", self.velocity)


class Chord(Representation):
    """Tokens = indices into a fitted list of pitch sets; see the module docstring."""

    name = "chord"
    params_cls = ChordParams
    kind = "tokens"

    def __init__(self, params: ChordParams | None = None, **overrides):
        super().__init__(params, **overrides)
        self._roll = PianoRoll(grid=self.params.grid, pitches=128, velocity=self.params.velocity)
        self._chords: list[PitchSet] | None = None
        self._token_of: dict[PitchSet, int] = {}
        self._masks: list[int] = []

    # ---- vocabulary ------------------------------------------------------------------
    def fit(
        self, scores: Iterable[Score], min_count: int = 1, max_size: int | None = None
    ) -> Chord:
        """Build the vocabulary from the pitch sets of `scores`; returns self."""
        if not isinstance(min_count, int) or min_count < 1:
            raise RepresentationError(
                f"chord: min_count must be an integer >= 1 (received {min_count!r})"
            )
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise RepresentationError(
                f"chord: max_size must be an integer >= 1 or None (received {max_size!r})"
            )
        counts: Counter[PitchSet] = Counter()
        for score in scores:
            counts.update(_chord(frame) for frame in self._roll.encode(score))
        counts.pop((), None)
        kept = sorted(
            (c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c)
        )
        self._set_chords([(), *kept][:max_size])
        return self

    @property
    def chords(self) -> list[PitchSet]:
        """The pitch set of each token (token 0 = silence)."""
        return list(self._fitted())

    @property
    def vocab_size(self) -> int:
        return len(self._fitted())

    def vocab_to_json(self) -> Any:
        return None if self._chords is None else [list(c) for c in self._chords]

    def load_vocab(self, vocab: Any) -> None:
        if vocab is None:
            self._chords, self._token_of, self._masks = None, {}, []
            return
        if not isinstance(vocab, list) or not vocab or vocab[0] != []:
            raise RepresentationError(
                f"chord: vocab must be a list of pitch lists starting with [] (silence) "
                f"(received {str(vocab)[:80]})"
            )
        for i, entry in enumerate(vocab):
            ok = isinstance(entry, list) and all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 127 for p in entry
            )
            if not ok or entry != sorted(set(entry)):
                raise RepresentationError(
                    f"chord: vocab[{i}] must be a strictly increasing list of pitches "
                    f"0..127 (received {entry!r})"
                )
        first: dict[PitchSet, int] = {}
        for i, entry in enumerate(vocab):
            if first.setdefault(tuple(entry), i) != i:
                raise RepresentationError(
                    f"chord: vocab[{i}] repeats vocab[{first[tuple(entry)]}] (received {entry!r})"
                )
        self._set_chords(list(first))

    def token(self, pitches: Iterable[int]) -> int:
        """Token of a pitch set: itself if known, else its largest known subset."""
        chord = tuple(sorted(set(pitches)))
        found = self._token_of.get(chord)
        if found is None:
            chords, mask = self._fitted(), _mask(chord)
            # Largest subset first, then the most frequent (lowest token).
            found = min(
                (i for i, m in enumerate(self._masks) if m & ~mask == 0),
                key=lambda i: (-len(chords[i]), i),
            )
            self._token_of[chord] = found
        return found

    # ---- whole pieces and streams ------------------------------------------------------
    def encode(self, score: Score) -> list[int]:
        self._fitted()
        return [self._frame_token(f) for f in self._roll.encode(score)]

    def stream_encoder(self) -> RollEncoder:
        """Like pianoroll's; ``peek()`` returns the provisional token of the current step."""
        self._fitted()
        return RollEncoder(
            self._roll.layout, row_of=lambda track: 0, finish=lambda f: self._frame_token(f[0])
        )

    def stream_decoder(self, start: float = 0.0) -> ChordDecoder:
        return ChordDecoder(self._fitted(), self._roll.stream_decoder(start))

    def _frame_token(self, frame: np.ndarray) -> int:
        return self.token(np.flatnonzero(frame).tolist())

    def _set_chords(self, chords: list[PitchSet]) -> None:
        self._chords = chords
        self._token_of = {c: i for i, c in enumerate(chords)}
        self._masks = [_mask(c) for c in chords]

    def _fitted(self) -> list[PitchSet]:
        if self._chords is None:
            raise RepresentationError(
                "chord: no vocabulary yet; call rep.fit(scores) or load one with "
                "representations.from_dict"
            )
        return self._chords


class ChordDecoder(StreamDecoder):
    """Tokens -> pitch-set frames -> the piano-roll decoder's note events."""

    def __init__(self, chords: list[PitchSet], roll: RollDecoder):
        self._chords, self._roll = chords, roll

    @property
    def position(self) -> float:
        return self._roll.position

    def feed(self, token) -> list[NoteEvent]:
        ok = isinstance(token, (int, np.integer)) and not isinstance(token, bool)
        if not ok or not 0 <= token < len(self._chords):
            raise RepresentationError(
                f"chord: token must be an integer 0..{len(self._chords) - 1} (received {token!r})"
            )
        frame = np.zeros(128, dtype=np.uint8)
        frame[list(self._chords[token])] = 1
        return self._roll.feed(frame)

    def flush(self) -> list[NoteEvent]:
        return self._roll.flush()


def _chord(frame: np.ndarray) -> PitchSet:
    return tuple(np.flatnonzero(frame).tolist())


def _mask(chord: PitchSet) -> int:
    return sum(1 << p for p in chord)
