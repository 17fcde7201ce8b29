"""Generator model files (protocol `generator`: noise -> a block), torch-free.

A GAN's model file (models/gan.py: `dcgan`, `image-gan`, `note-gan`) maps noise [B, latent]
to a block: a piano roll [B, steps, P] of per-key probabilities over its `pianoroll`
representation's keys, or [B, notes, 3] notes as (pitch, step, duration), each a share
(0..1) of 127 and of the `notes` representation's `max_step` and `max_duration` beats.
`BlockGenerator` draws blocks and turns them into `Note`s, with the density chosen by a
threshold (rolls) or a number of notes; `fit_key` transposes notes into a key.

``python -m midi_companion.pattern MODEL.onnx`` measures what a generator plays (its blocks
against real held-out blocks of the same length and a first-order Markov model's, with the
measures of companion/metrics.py; docs/MODELS.md).
"""

from __future__ import annotations

import math

import numpy as np

from midi_companion.errors import ModelError
from midi_companion.representations.base import quantize
from midi_companion.rules import key_from_profile, pitch_class_profile, scale_pcs
from midi_companion.score import Note

PROTOCOL = "generator"


class BlockGenerator:
    """Draws blocks from a generator model file and decodes them to notes."""

    def __init__(self, model, provider: str = "auto"):
        from midi_companion.engine import Engine

        if model.protocol != PROTOCOL:
            raise ModelError(
                f"{model.path}: pattern mode plays a generator model (protocol "
                f"{PROTOCOL!r}: dcgan, image-gan, note-gan); this one is {model.protocol!r}"
            )
        self.model = model
        self.rep = model.representation
        self.engine = Engine(model, provider=provider)
        ins = {i.name: i.shape for i in self.engine.session.get_inputs()}
        outs = {o.name: o.shape for o in self.engine.session.get_outputs()}
        self.latent = ins["noise"][-1]
        self.rolls = self.rep.kind == "frames"
        width = outs["block"][-1]
        want = self.rep.vocab_size if self.rolls else 3
        if not isinstance(self.latent, int) or (isinstance(width, int) and width != want):
            raise ModelError(
                f"{model.path}: a generator over {self.rep.name} needs noise [B, latent] and "
                f"a block [B, T, {want}] (the graph has {ins['noise']} and {outs['block']})"
            )
        if self.rolls:
            self.grid = float(self.rep.params.grid)
            self.low = {128: 0, 88: 21}[self.rep.params.pitches]
        else:
            self.grid = 1.0 / self.rep.params.resolution
        self.velocity = int(self.rep.params.velocity)

    def sample(self, rng: np.random.Generator, batch: int = 1, temperature: float = 1.0):
        """`batch` blocks from noise drawn with standard deviation `temperature`."""
        z = rng.standard_normal((batch, self.latent)).astype(np.float32) * np.float32(temperature)
        return self.engine.step({"noise": z})["block"]

    def warm_up(self, rng: np.random.Generator) -> None:
        self.sample(rng)

    def notes(
        self, block: np.ndarray, threshold: float = 0.5, count: int = 0, beats: float | None = None
    ) -> list[Note]:
        """One block -> notes from beat 0; with `beats`, only its first `beats` beats (notes
        cut there), which is what the density applies to. Rolls: keys at or above
        `threshold` sound; with `count` > 0 the threshold is chosen instead so that about
        `count` notes sound. Notes: the first `count` notes (all with 0)."""
        if self.rolls:
            if beats is not None:
                block = block[: int(round(beats / self.grid))]
            notes = (
                self._roll_notes(block >= threshold) if count <= 0 else self._count(block, count)
            )
        else:
            notes = self._note_block(block)
            if beats is not None:
                notes = [n for n in notes if n.onset < beats - 1e-9]
            notes = notes[:count] if count > 0 else notes
        if beats is not None:
            notes = [Note(n.onset, n.pitch, min(n.end, beats) - n.onset, n.velocity) for n in notes]
        return notes

    def _count(self, block: np.ndarray, count: int) -> list[Note]:
        """The notes at the threshold whose note count is nearest `count` (bisection: the
        count falls, roughly, as the threshold rises)."""
        lo, hi = 0.0, 1.0
        best: list[Note] = []
        for _ in range(14):
            mid = (lo + hi) / 2
            got = self._roll_notes(block >= mid)
            if not best or abs(len(got) - count) < abs(len(best) - count):
                best = got
            if len(got) > count:
                lo = mid
            else:
                hi = mid
        return best

    def _roll_notes(self, on: np.ndarray) -> list[Note]:
        """Runs of a key's frames -> notes (same-pitch notes that touch are one)."""
        out = []
        padded = np.zeros((on.shape[0] + 2, on.shape[1]), dtype=np.int8)
        padded[1:-1] = on
        edges = np.diff(padded, axis=0)
        for key in np.flatnonzero(on.any(axis=0)):
            starts = np.flatnonzero(edges[:, key] == 1)
            ends = np.flatnonzero(edges[:, key] == -1)
            for s, e in zip(starts, ends):
                out.append(
                    Note(s * self.grid, int(key) + self.low, (e - s) * self.grid, self.velocity)
                )
        out.sort(key=lambda n: (n.onset, n.pitch))
        return out

    def _note_block(self, block: np.ndarray) -> list[Note]:
        out, onset = [], 0
        scale = (127.0, self.rep.params.max_step, self.rep.params.max_duration)
        for pitch, step, dur in block * np.asarray(scale, dtype=np.float64):
            onset += quantize(float(step), self.grid)
            steps = max(1, quantize(float(dur), self.grid))
            p = int(min(max(round(float(pitch)), 0), 127))
            out.append(Note(onset * self.grid, p, steps * self.grid, self.velocity))
        return out


# ---- keys --------------------------------------------------------------------------------
def key_of(notes) -> tuple[int, str] | None:
    """Krumhansl-Schmuckler key of `notes` (tonic, mode), None without notes."""
    if not notes:
        return None
    tonic, mode, r = key_from_profile(pitch_class_profile(notes))
    return None if math.isnan(r) else (tonic, mode)


def shift_between(source: tuple[int, str], target: tuple[int, str]) -> int:
    """Semitones (-6..+5) that take key `source` to `target`, by their relative majors (so
    a minor block goes to the relative minor of a major key: A minor -> C major is 0)."""

    def major(key: tuple[int, str]) -> int:
        return (key[0] + (3 if key[1] == "minor" else 0)) % 12

    d = (major(target) - major(source)) % 12
    return d - 12 if d >= 6 else d


def fit_key(notes: list[Note], key: tuple[int, str] | None, lock: bool = False) -> list[Note]:
    """`notes` transposed from their own key into `key` (unchanged when either is unknown);
    with `lock`, each note outside the key's scale then moves to the nearest one in it
    (down on a tie)."""
    own = key_of(notes)
    if key is None or own is None:
        return list(notes)
    k = shift_between(own, key)
    out = [Note(n.onset, n.pitch + k, n.duration, n.velocity) for n in notes]
    if lock:
        pcs = scale_pcs(*key)
        out = [Note(n.onset, _snap(n.pitch, pcs), n.duration, n.velocity) for n in out]
    return [n for n in out if 0 <= n.pitch <= 127]


def _snap(pitch: int, pcs: frozenset[int]) -> int:
    for d in (0, -1, 1, -2, 2):
        if (pitch + d) % 12 in pcs:
            return pitch + d
    return pitch


# ---- the report: what a generator plays, against real blocks and a Markov chain -----------
BAR = 4.0  # beats per bar of the measured blocks (4/4)
MARKOV_NOTES = {"resolution": 4, "max_step": 4, "max_duration": 4}  # the chain's tokens


def real_blocks(scores, beats: float, n: int, min_notes: int = 4) -> list[list[Note]]:
    """`n` windows of `beats` beats from bar lines of `scores`, spread over them (each
    with at least `min_notes` onsets; notes clipped to the window, onsets from 0)."""
    from midi_companion.quality import spread

    found = []
    for score in scores:
        notes = score.notes
        for k in range(int(score.end // beats)):
            lo, hi = k * beats, (k + 1) * beats
            block = [
                Note(x.onset - lo, x.pitch, min(x.end, hi) - x.onset, x.velocity)
                for x in notes
                if lo <= x.onset < hi
            ]
            if len(block) >= min_notes:
                found.append(block)
    return spread(found, n)


def model_blocks(gen: BlockGenerator, n: int, beats: float, threshold: float, count: int, seed):
    """`n` generated blocks cut to `beats` beats (as pattern mode plays them)."""
    rng = np.random.default_rng(seed)
    return [gen.notes(block, threshold, count, beats) for block in gen.sample(rng, n)]


def markov_blocks(train_scores, n: int, beats: float, seed) -> list[list[Note]]:
    """`n` blocks of a first-order Markov chain over `notes` tokens fitted on `train_scores`."""
    from midi_companion.markov import TokenMarkov
    from midi_companion.representations import REGISTRY

    rep = REGISTRY["notes"](**MARKOV_NOTES)
    seqs = [np.asarray(rep.encode(s)) for s in train_scores]
    chain = TokenMarkov.fit([s for s in seqs if len(s) > 1], rep.vocab_size)
    rng = np.random.default_rng(seed)
    return [[x for x in chain.generate([], rep, beats, rng) if x.onset < beats] for _ in range(n)]


def block_table(sets: dict[str, list[list[Note]]], beats: float) -> dict[str, dict]:
    """Per set of blocks: notes per bar, empty bars, pitch classes per bar (MuseGAN), the
    share of notes in the block's own key (Krumhansl-Schmuckler), onsets on the 16th grid,
    notes sounding at an onset (polyphony), pitch range, the pitch distribution's distance
    to the real blocks', and Yang & Lerch's overlapping areas with the real set (the real
    set: against itself, halves)."""
    from midi_companion import metrics

    real = sets["real"]
    pooled_real = [x for b in real for x in b]
    bars = int(round(beats / BAR))
    rows = {}
    for name, blocks in sets.items():
        full = [b for b in blocks if b]
        keys = [metrics.estimate_key(b) for b in full]
        row = {
            "blocks": len(blocks),
            "notes_per_bar": float(np.mean([len(b) for b in blocks])) / bars,
            "empty_bars": float(
                np.mean([metrics.empty_bars([b], BAR, n_bars=bars)[0] for b in blocks])
            ),
            "pitch_classes_per_bar": float(
                np.nanmean([metrics.used_pitch_classes([b], BAR)[0] for b in full])
            )
            if full
            else math.nan,
            "in_own_key": float(np.mean([metrics.in_key_share(b, k) for b, k in zip(full, keys)]))
            if full
            else math.nan,
            "grid_16th": float(np.nanmean([metrics.grid_share(b, 0.25) for b in full]))
            if full
            else math.nan,
            "polyphony": float(np.mean([_polyphony(b) for b in full])) if full else math.nan,
            "pitch_range": float(np.mean([metrics.features(b)["pitch_range"][0] for b in full]))
            if full
            else math.nan,
            "pitch_distance": metrics.pitch_distribution_distance(
                [x for b in blocks for x in b], pooled_real
            ),
        }
        if full:
            oa = metrics.self_overlap(real) if name == "real" else metrics.compare_sets(full, real)
            row["yang_lerch_oa"] = float(np.mean([v["oa"] for v in oa.values()]))
        rows[name] = row
    return rows


def _polyphony(block: list[Note]) -> float:
    """Mean number of notes sounding at each distinct onset."""
    onsets = sorted({x.onset for x in block})
    return float(np.mean([sum(x.onset <= t < x.end for x in block) for t in onsets]))


def main(argv=None) -> int:
    """``python -m midi_companion.pattern MODEL.onnx``: the report of docs/MODELS.md."""
    import argparse
    import json

    from midi_companion.modelfile import load
    from midi_companion.quality import split_scores

    ap = argparse.ArgumentParser(prog="python -m midi_companion.pattern", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--blocks", type=int, default=200, help="blocks per set (default 200)")
    ap.add_argument("--bars", type=int, default=4, help="bars of 4/4 a block (default 4)")
    ap.add_argument("--threshold", type=float, default=0.5, help="rolls: key on at >= this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    gen = BlockGenerator(load(args.model), provider="cpu")
    data = split_scores(gen.model)
    beats = args.bars * BAR
    real = real_blocks(data["test"], beats, args.blocks)
    median = int(np.median([len(b) for b in real]))
    sets = {
        "real": real,
        f"model (threshold {args.threshold})": model_blocks(
            gen, args.blocks, beats, args.threshold, 0, args.seed
        ),
        f"model ({median} notes, the real median)": model_blocks(
            gen, args.blocks, beats, args.threshold, median, args.seed
        ),
        "markov": markov_blocks(data["train"], args.blocks, beats, args.seed),
    }
    table = block_table(sets, beats)
    if args.json:
        print(json.dumps({"model": str(args.model), "bars": args.bars, "table": table}, indent=1))
        return 0
    cols = list(next(iter(table.values())))
    print(f"{args.model}: blocks of {args.bars} bars ({len(real)} real test blocks)")
    print("| set | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in table.items():
        cells = [
            f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in cols
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
