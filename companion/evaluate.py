"""`companion eval`: a model's likelihood, computed by the runtime from the ONNX file alone.

- `--benchmark {jsb,nottingham,musedata,piano-midi}`: test NLL per frame in nats, as
  companion/data/benchmarks/README.md defines it (Boulanger-Lewandowski et al. 2012): the
  sum over all test pieces and every frame t = 0 .. T-1 of -log p(frame_t | frames < t),
  over the number of those frames. Frame 0 is predicted from the model's zero state after
  the empty frame the protocol starts with: `nade-step`, the first END of the stream (which
  then goes on as the model trains); `frame-step`, one step on an all-zero frame (frames
  t >= 1 come, as the model trains, from the zero state reading frame 0 first). The figure
  over frames t >= 1 only (TCN's code; our training loss) comes second, `nll_after_first`.
  Protocols: `nade-step` (exact frame probability: the product of the frame's key tokens
  in ascending order and its end token, under the mask the voices sample under,
  companion.sampling.ascending_mask) and
  `frame-step` (per-key Bernoulli: the sum of the keys' log-probabilities).
- `--split valid|test`: NLL on the model's own held-out split, rebuilt from the `corpus`
  metadata (the corpus spec and the ids of the held-out pieces) and encoded with the
  model's representation: per token for `token-step`, per note for `note-step` (the three
  heads' NLLs summed), per frame for `frame-step`/`nade-step`, per grid step for
  `multitrack-step` (the accompaniment rows of a step given the lead up to it). `nll`
  counts every unit the protocol can predict from the zero state (the first frame after
  the start END / empty frame, the first grid step after BEGIN; token and note streams have
  no start symbol, so their first unit is context only), `nll_after_first` units t >= 1:
  the training loss counts the latter, except for `multitrack-step`, whose loss counts
  every step.

Pieces are rolled out side by side along the batch axis of one Engine (the live path's), each
at its own position; a piece that has ended keeps being fed padding whose outputs are ignored.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np

from midi_companion.errors import DataError, ModelError
from midi_companion.sampling import ascending_mask, log_softmax

BENCHMARKS = ("jsb", "nottingham", "musedata", "piano-midi")


def _pad_streams(streams: list[np.ndarray], pad: int) -> np.ndarray:
    out = np.full((len(streams), max(len(s) for s in streams)), pad, dtype=np.int64)
    for i, s in enumerate(streams):
        out[i, : len(s)] = s
    return out


def _token_rollout(
    engine, streams: list[np.ndarray], groups: list[np.ndarray], pad: int, ascending: bool = False
) -> np.ndarray:
    """Summed NLL [2] of stream[i + 1] after feeding stream[..i], per group of the unit that
    token belongs to: 0 = the piece's first unit, 1 = a later one (-1: not scored); with
    `ascending`, under the keys-ascending mask (nade-step, multitrack-step).

    streams: int token streams; groups[j] an int array of len(streams[j]) - 1."""
    toks = _pad_streams(streams, pad)
    B, n = toks.shape
    group = np.full((B, max(n - 1, 0)), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        group[i, : len(g)] = g
    engine.reset(B)
    name, out = engine.model.inputs[0], engine.model.outputs[0]
    total = np.zeros(2)
    for i in range(n - 1):
        logits = engine.step({name: toks[:, i : i + 1]})[out]
        if ascending:
            logits = np.where(ascending_mask(toks[:, i], logits.shape[-1]), logits, -np.inf)
        rows = np.nonzero(group[:, i] >= 0)[0]
        if len(rows):
            lp = log_softmax(logits[rows])[np.arange(len(rows)), toks[rows, i + 1]]
            np.subtract.at(total, group[rows, i], lp)
    return total


def _first_and_rest(lengths) -> np.ndarray:
    """Units [2] of pieces whose units are all scored: their first units, the others."""
    lengths = np.asarray(list(lengths))
    return np.array([int((lengths > 0).sum()), int(np.maximum(lengths - 1, 0).sum())])


# ---- per protocol: (summed NLL [2], units [2]) of a batch of encoded pieces ---------------
# index 0: each piece's first unit, predicted from the zero state (none for token and note
# streams, whose first unit is context only); index 1: the units t >= 1
def nade_stream(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A roll's `nade-step` token stream (END, then each frame's keys ascending and END) and,
    per token but the last, the frame that the token after it belongs to."""
    P = roll.shape[1]
    counts = roll.sum(1).astype(np.int64)
    toks = np.full(1 + int(counts.sum()) + len(roll), P, dtype=np.int64)
    first = np.cumsum(counts + 1) - counts  # stream index of each frame's first key
    t_idx, k_idx = np.nonzero(roll)
    within = np.arange(len(t_idx)) - (np.cumsum(counts) - counts)[t_idx]
    toks[first[t_idx] + within] = k_idx
    frame_of_next = np.cumsum(toks == P) - 1
    return toks, frame_of_next[:-1]


def _nade(engine, rolls):
    P = rolls[0].shape[1]
    pairs = [nade_stream(r) for r in rolls]
    nll = _token_rollout(
        engine, [t for t, _ in pairs], [np.minimum(f, 1) for _, f in pairs], P, ascending=True
    )
    return nll, _first_and_rest(len(r) for r in rolls)


def _frame(engine, rolls):
    """Frame 0 from one step on the all-zero frame from the zero state; frames t >= 1 as the
    model trains, from the zero state reading frames 0 .. t-1."""
    B, T = len(rolls), max(len(r) for r in rolls)
    x = np.zeros((B, T, rolls[0].shape[1]), dtype=np.float32)
    for i, r in enumerate(rolls):
        x[i, : len(r)] = r
    lengths = np.array([len(r) for r in rolls])
    name = engine.model.inputs[0]
    total = np.zeros(2)

    def nll_of(outs, target):
        z = outs[engine.model.outputs[0]].astype(np.float64)
        s = np.where(target > 0, z, -z)  # log sigmoid(s) = log p(observed state)
        return np.logaddexp(0.0, -s).sum(1)

    engine.reset(B)
    total[0] = float(nll_of(engine.step({name: np.zeros_like(x[:, 0])}), x[:, 0]).sum())
    engine.reset(B)
    for t in range(T - 1):
        outs = engine.step({name: x[:, t]})
        total[1] += float(nll_of(outs, x[:, t + 1])[lengths > t + 1].sum())
    return total, _first_and_rest(lengths)


def multitrack_stream(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A roll [T, K, P] as a `multitrack-step` stream (per step: BEGIN, then each row's keys
    ascending and END) and, per token but the last, whether the token after it is scored
    (a key or END of an accompaniment row, rows 1..K-1). Every step is scored, the first
    after the BEGIN fed from the zero state."""
    T, K, P = roll.shape
    toks, scored = [], []
    for frame in roll:
        toks.append(P + 1)
        for r, row in enumerate(frame):
            keys = np.nonzero(row)[0].tolist() + [P]
            toks += keys
            scored.append([r >= 1] * len(keys))
    toks = np.asarray(toks, dtype=np.int64)
    # scored[i] says whether toks[i + 1] is scored: a BEGIN never is
    flags = np.zeros(len(toks), dtype=bool)
    flags[toks != P + 1] = np.concatenate(scored) if scored else []
    return toks, flags[1:]


def _multitrack(engine, rolls):
    P = rolls[0].shape[2]
    pairs = [multitrack_stream(r) for r in rolls]
    groups = []
    for toks, scored in pairs:
        step_of_next = np.cumsum(toks == P + 1)[1:] - 1
        groups.append(np.where(scored, np.minimum(step_of_next, 1), -1))
    nll = _token_rollout(engine, [t for t, _ in pairs], groups, P + 1, ascending=True)
    return nll, _first_and_rest(len(r) for r in rolls)


def _token(engine, pieces):
    streams = [np.asarray(p, dtype=np.int64) for p in pieces]
    nll = _token_rollout(engine, streams, [np.ones(len(s) - 1, np.int64) for s in streams], 0)
    return nll, np.array([0, sum(len(s) - 1 for s in streams)])


def _note(engine, pieces):
    """pieces: class triples [N, 3] (pitch, step, duration; `note_triples`)."""
    B, T = len(pieces), max(len(p) for p in pieces)
    x = np.zeros((B, T, 3), dtype=np.int64)
    for i, p in enumerate(pieces):
        x[i, : len(p)] = p
    lengths = np.array([len(p) for p in pieces])
    engine.reset(B)
    total = 0.0
    for t in range(T - 1):
        outs = engine.step({engine.model.inputs[0]: x[:, t : t + 1]})
        rows = np.nonzero(lengths > t + 1)[0]
        for head, name in enumerate(engine.model.outputs):
            lp = log_softmax(outs[name][rows])
            total -= float(lp[np.arange(len(rows)), x[rows, t + 1, head]].sum())
    return np.array([0.0, total]), np.array([0, int((lengths - 1).sum())])


def note_triples(tokens, rep) -> np.ndarray:
    """Flat `notes` tokens [3N] (field offset + class) -> the `note-step` input: class
    triples [N, 3] (as models/note_lstm.py trains on them)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return tokens.reshape(-1, 3) - np.asarray(rep.offsets, dtype=np.int64)


_PROTOCOLS = {  # protocol -> (batch function, unit)
    "nade-step": (_nade, "frame"),
    "frame-step": (_frame, "frame"),
    "multitrack-step": (_multitrack, "frame"),
    "token-step": (_token, "token"),
    "note-step": (_note, "note"),
}


class Totals(NamedTuple):
    """Summed NLL (nats) and units: over every unit the protocol predicts (each piece's
    first from the zero state, where the protocol has a start symbol), and over units
    t >= 1 only."""

    nll: float
    units: int
    nll_after_first: float
    units_after_first: int


def nll(engine, pieces: list, batch: int = 64) -> Totals:
    """The summed NLLs and units of encoded pieces under a model file's Engine (its batch is
    set to each group of pieces rolled out together)."""
    model = engine.model
    if model.protocol not in _PROTOCOLS:
        raise ModelError(
            f"{model.path}: protocol {model.protocol!r} has no likelihood here; "
            f"known: {sorted(_PROTOCOLS)}"
        )
    if batch < 1:
        raise DataError(f"--batch must be >= 1 (received {batch})")
    fn = _PROTOCOLS[model.protocol][0]
    pieces = [np.asarray(p) for p in pieces if len(p)]
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    total, units = np.zeros(2), np.zeros(2, dtype=np.int64)
    for s in range(0, len(order), batch):
        n, u = fn(engine, [pieces[i] for i in order[s : s + batch]])
        total += n
        units += u
    return Totals(float(total.sum()), int(units.sum()), float(total[1]), int(units[1]))


def _result(t: Totals, unit: str, **about) -> dict:
    """The figures `companion eval` prints: per unit over every unit, then over t >= 1."""

    def per(nll_sum, n):
        return nll_sum / n if n else math.nan

    return {
        "nll": per(t.nll, t.units),
        "nll_after_first": per(t.nll_after_first, t.units_after_first),
        "unit": unit,
        f"{unit}s": t.units,
        f"{unit}s_after_first": t.units_after_first,
        **about,
    }


def _check_width(model, rolls) -> None:
    rep = model.representation
    if rep.kind != "frames" or model.protocol not in ("nade-step", "frame-step"):
        raise ModelError(
            f"{model.path}: a {model.protocol} model over {rep.name!r} gives no "
            "benchmark frame likelihood (nade-step or frame-step over an 88-key "
            "pianoroll does)"
        )
    if rolls and rep.vocab_size != rolls[0].shape[1]:
        raise ModelError(
            f"{model.path}: its frames are {rep.vocab_size} keys wide, the "
            f"benchmark's {rolls[0].shape[1]} (pianoroll pitches = 88)"
        )


def _load(path, threads: int, provider: str):
    """The model file's Engine on `provider` (companion.engine.open_session)."""
    from midi_companion import modelfile
    from midi_companion.engine import Engine

    return Engine(modelfile.load(path, threads), provider=provider, threads=threads)


def evaluate_benchmark(
    path, benchmark: str, batch: int = 64, threads: int = 1, provider: str = "auto"
) -> dict:
    """Test NLL per frame of a benchmark (the published metric)."""
    from midi_companion import benchmarks

    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; known: {list(BENCHMARKS)}")
    engine = _load(path, threads, provider)
    rolls = benchmarks.load(benchmark)["test"]
    _check_width(engine.model, rolls)
    return _result(
        nll(engine, rolls, batch),
        "frame",
        set=f"{benchmark}/test",
        model=str(path),
        protocol=engine.model.protocol,
    )


def held_out_scores(corpus: dict, split: str) -> list:
    """The Scores of a model's held-out split, from its `corpus` metadata (spec and ids)."""
    ids = (corpus.get("ids") or {}).get(split)
    spec = corpus.get("name")
    if not spec or ids is None:
        raise DataError(
            f"the model's corpus metadata names no {split} pieces (it needs "
            f"'name' and 'ids'; received keys {sorted(corpus)})"
        )
    from midi_companion import benchmarks

    found: dict[str, object] = {}
    wanted = set(ids)
    names, other = benchmarks.parse_corpus(spec)
    for name in names:
        for key, score in benchmarks.source_pieces(name, split):
            if key in wanted:
                found[key] = score
    if other and len(found) < len(wanted):
        try:
            from midi_companion.models.corpora import load_corpus
        except ImportError as err:
            raise DataError(
                f"corpus {other!r} needs the training extras "
                f"(pip install 'midi-companion[train]'): {err}"
            ) from err
        for piece in load_corpus(other, progress=False):
            if piece.id in wanted:
                found[piece.id] = piece.score
    missing = [i for i in ids if i not in found]
    if missing:
        raise DataError(
            f"corpus {spec!r}: {len(missing)} of the {len(ids)} {split} pieces "
            f"are not there any more (first: {missing[0]!r})"
        )
    return [found[i] for i in ids]


def evaluate_split(
    path, split: str = "test", batch: int = 64, threads: int = 1, provider: str = "auto"
) -> dict:
    """NLL on the model's own held-out split, per unit of its training loss."""
    engine = _load(path, threads, provider)
    model = engine.model
    if model.protocol not in _PROTOCOLS:
        raise ModelError(f"{path}: protocol {model.protocol!r} has no likelihood here")
    rep = model.representation
    if model.protocol == "note-step" and not hasattr(rep, "offsets"):
        raise ModelError(
            f"{path}: a note-step model over {rep.name!r} (expected the 'notes' "
            "representation, whose tokens are (pitch, step, duration) triples)"
        )
    pieces = []
    for score in held_out_scores(model.corpus, split):
        x = np.asarray(rep.encode(score))
        if model.protocol == "note-step":
            x = note_triples(x, rep)
        if len(x) >= 2:  # as training encodes them: nothing to predict in shorter pieces
            pieces.append(x)
    if not pieces:
        raise DataError(f"{path}: the {split} split holds no piece of two steps or more")
    return _result(
        nll(engine, pieces, batch),
        _PROTOCOLS[model.protocol][1],
        set=f"{model.corpus.get('name')}/{split}",
        model=str(path),
        protocol=model.protocol,
    )


def summary(result: dict) -> str:
    """The one line `companion eval` prints (without --json)."""
    unit, n, n1 = (
        result["unit"],
        result[f"{result['unit']}s"],
        result[f"{result['unit']}s_after_first"],
    )
    head = f"{result['set']}: {result['nll']:.4f} nats per {unit} over {n} {unit}s"
    if n == n1:  # no first unit predicted: both figures are the same
        return f"{head} (each piece's first {unit} is context only)"
    return (
        f"{head} (every {unit}, each piece's first from the model's initial state); "
        f"{result['nll_after_first']:.4f} over the {n1} {unit}s t >= 1"
    )


# ---- command line ------------------------------------------------------------------------
def main(args) -> int:
    if args.benchmark:
        result = evaluate_benchmark(
            args.model, args.benchmark, args.batch, args.threads, args.provider
        )
    else:
        result = evaluate_split(args.model, args.split, args.batch, args.threads, args.provider)
    print(json.dumps(result) if args.json else summary(result))
    return 0 if math.isfinite(result["nll"]) else 1
