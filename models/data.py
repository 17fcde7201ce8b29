"""Data for the training loop: corpora -> deterministic splits -> encoded pieces -> batches.

Shared by the families (torch only where batches are made):
- ``load_data(data_cfg)``: the corpus spec's pieces split deterministically (by piece id
  and seed, models.corpora.split_pieces; a benchmark keeps its published split).
- ``encode(scores, rep, shifts, rng)``: encoded pieces as numpy arrays (time on axis 0), each
  score transposed by a shift drawn from ``shifts`` (transposition augmentation; scores
  whose notes leave the representation's range at that shift are encoded untransposed).
- ``sequence_batches``: windows (training) or whole pieces (evaluation) padded into
  ``{key: [B, T, ...], "mask": [B, T]}``; the families' ``batches`` use it.
- ``shard``: the i-th of every ``world`` consecutive batches, for data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from midi_companion import benchmarks
from midi_companion.errors import ConfigError, DataError, RepresentationError
from midi_companion.score import Score

SPLITS = benchmarks.SPLITS


@dataclass
class Data:
    """A corpus split three ways; ``ids`` are the piece ids in each split."""

    name: str
    seed: int
    scores: dict[str, list[Score]]
    ids: dict[str, list[str]]

    def record(self) -> dict:
        """What a checkpoint (and the model file) records of the corpus."""
        return {
            "name": self.name,
            "seed": self.seed,
            "split": {k: len(v) for k, v in self.scores.items()},
            "ids": {k: self.ids[k] for k in ("valid", "test")},
        }


def load_data(cfg: dict, progress: bool = True) -> Data:
    """The `[data]` table -> Data. cfg keys: corpus, valid and test (fractions), seed,
    limit (at most this many pieces per source, for quick runs).

    The corpus spec joins sources with '+': anything models.corpora.load_corpus takes
    (split by piece id and seed, corpora.split_pieces), and ``benchmark:<name>``
    (companion.benchmarks; ``jsb-satb`` is the four-voice JSB) with its published split.
    """
    spec, seed, limit = cfg["corpus"], cfg["seed"], cfg.get("limit")
    names, other = benchmarks.parse_corpus(spec)
    scores: dict[str, list[Score]] = {k: [] for k in SPLITS}
    ids: dict[str, list[str]] = {k: [] for k in SPLITS}
    for name in names:
        for split in SPLITS:
            items = benchmarks.source_pieces(name, split)[:limit]
            scores[split] += [score for _, score in items]
            ids[split] += [piece_id for piece_id, _ in items]
    if other:
        from midi_companion.models.corpora import load_corpus, split_pieces

        pieces = load_corpus(other, progress=progress, limit=limit)
        for split, items in split_pieces(
            pieces, valid=cfg["valid"], test=cfg["test"], seed=seed
        ).items():
            scores[split] += [p.score for p in items]
            ids[split] += [p.id for p in items]
    for split in ("train", "valid"):
        if not scores[split]:
            raise DataError(
                f"corpus {spec!r}: the {split} split is empty "
                f"({sum(map(len, scores.values()))} pieces); use more pieces"
            )
    return Data(spec, seed, scores, ids)


def encode(
    scores: Iterable[Score],
    rep,
    shifts: tuple[int, int] = (0, 0),
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Encode scores, each transposed by a random shift in [lo, hi] (inclusive).

    A shift that pushes notes out of the representation's range falls back to the
    untransposed score; pieces shorter than two steps are dropped (nothing to predict).
    """
    lo, hi = shifts
    out = []
    for score in scores:
        shift = int(rng.integers(lo, hi + 1)) if hi > lo and rng is not None else lo
        try:
            x = rep.encode(score.transposed(shift) if shift else score)
        except RepresentationError:
            if not shift:
                raise
            x = rep.encode(score)
        x = np.asarray(x, dtype=np.uint8 if rep.kind == "frames" else np.int64)
        if len(x) >= 2:
            out.append(x)
    return out


def sequence_batches(
    pieces: list[np.ndarray],
    cfg: dict,
    rng: np.random.Generator | None,
    train: bool,
    key: str = "tokens",
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of sequences ``{key: [B, T, ...], "mask": bool [B, T]}`` (padding is 0).

    Training: each piece is cut into windows of ``seq_len + 1`` steps overlapping by one
    (so each step is predicted once an epoch) at a random phase, the windows shuffled and
    grouped by ``batch_size``. Evaluation: whole pieces, shortest first, grouped so a batch
    holds about ``batch_size * seq_len`` steps (the model sees each piece from its start).
    """
    bs, n = cfg["batch_size"], cfg["seq_len"] + 1
    if train:
        windows = []
        for p in pieces:
            phase = int(rng.integers(0, n - 1)) if len(p) > n else 0
            for s in range(-phase, len(p) - 1, n - 1):
                w = p[max(s, 0) : s + n]
                if len(w) >= 2:
                    windows.append(w)
        order = rng.permutation(len(windows))
        for i in range(0, len(order), bs):
            yield collate([windows[j] for j in order[i : i + bs]], key)
        return
    budget = bs * (n - 1)
    group: list[np.ndarray] = []
    for p in sorted(pieces, key=len):
        if group and len(p) * (len(group) + 1) > budget:
            yield collate(group, key)
            group = []
        group.append(p)
    if group:
        yield collate(group, key)


def collate(seqs: list[np.ndarray], key: str) -> dict[str, torch.Tensor]:
    T = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), T) + seqs[0].shape[1:], dtype=seqs[0].dtype)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    if x.dtype == np.uint8:  # frames
        x = x.astype(np.float32)
    return {key: torch.from_numpy(x), "mask": torch.from_numpy(mask)}


def shard(batches: Iterable, rank: int, world: int) -> Iterator:
    """Rank `rank`'s share: the rank-th batch of every complete group of `world` (a trailing
    incomplete group is dropped so every rank takes the same number of steps)."""
    if world == 1:
        yield from batches
        return
    group = []
    for b in batches:
        group.append(b)
        if len(group) == world:
            yield group[rank]
            group = []


def check_shifts(value, where: str) -> tuple[int, int]:
    """`augment = [lo, hi]` semitones (inclusive) -> (lo, hi)."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not -12 <= value[0] <= value[1] <= 12
    ):
        raise ConfigError(
            f"{where} must be [lo, hi] semitones with -12 <= lo <= hi <= 12 (received {value!r})"
        )
    return value[0], value[1]
