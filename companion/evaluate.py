"""`companion eval`: a model's likelihood, computed by the runtime from the ONNX file alone.

- `--benchmark {jsb,nottingham,musedata,piano-midi}`: test NLL per frame in nats, as
  ../shared/data/benchmarks/README.md defines it: the sum over all test pieces and frames
  t >= 1 of -log p(frame_t | frames < t), over the number of those frames. Protocols:
  `nade-step` (exact frame probability: the product of the frame's key tokens in ascending
  order and its end token, under the mask the Engine applies) and `frame-step` (per-key
  Bernoulli: the sum of the keys' log-probabilities).
- `--split valid|test`: NLL on the model's own held-out split, rebuilt from the `corpus`
  metadata (the corpus spec and the ids of the held-out pieces) and encoded with the
  model's representation, per unit as its training loss counts them: per token for
  `token-step` (tokens 1.. given the ones before), per note for `note-step` (the three
  heads' NLLs summed), per frame for `frame-step`/`nade-step` (frames 1..), per step for
  `multitrack-step` (the accompaniment rows of every step given the lead up to it).

Pieces are rolled out side by side along the batch axis, each at its own position; a piece
that has ended keeps being fed padding whose outputs are ignored.
"""

from __future__ import annotations

import json
import math

import numpy as np

from companion.errors import DataError, ModelError

BENCHMARKS = ("jsb", "nottingham", "musedata", "piano-midi")
BENCHMARK_PREFIX = "benchmark:"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _mask_keys(logits: np.ndarray, fed: np.ndarray, keys: int) -> np.ndarray:
    """The Engine's nade mask: keys at or below the key just fed (if it was a key)."""
    last = np.where(fed < keys, fed, -1)
    logits = logits.copy()
    logits[:, :keys][np.arange(keys)[None, :] <= last[:, None]] = -np.inf
    return logits


def _pad_streams(streams: list[np.ndarray], pad: int) -> np.ndarray:
    out = np.full((len(streams), max(len(s) for s in streams)), pad, dtype=np.int64)
    for i, s in enumerate(streams):
        out[i, :len(s)] = s
    return out


def _token_rollout(model, streams: list[np.ndarray], scored: list[np.ndarray], pad: int,
                   mask_keys: int | None = None) -> float:
    """Summed NLL of stream[i + 1] after feeding stream[..i], where scored[i] is true.

    streams: int token streams; scored[j] a bool array of len(streams[j]) - 1."""
    toks = _pad_streams(streams, pad)
    B, n = toks.shape
    score = np.zeros((B, max(n - 1, 0)), dtype=bool)
    for i, s in enumerate(scored):
        score[i, :len(s)] = s
    state = model.initial_state(B)
    name = model.inputs[0]
    total = 0.0
    for i in range(n - 1):
        outs, state = model.step({name: toks[:, i:i + 1]}, state)
        logits = outs[model.outputs[0]]
        if mask_keys is not None:
            logits = _mask_keys(logits, toks[:, i], mask_keys)
        rows = np.nonzero(score[:, i])[0]
        if len(rows):
            lp = log_softmax(logits[rows])[np.arange(len(rows)), toks[rows, i + 1]]
            total -= float(lp.sum())
    return total


# ---- per protocol: (summed NLL, units) of a batch of encoded pieces -----------------------
def nade_stream(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A roll's `nade-step` token stream (END, then each frame's keys ascending and END) and,
    per token but the last, whether the token after it belongs to a frame t >= 1."""
    P = roll.shape[1]
    counts = roll.sum(1).astype(np.int64)
    toks = np.full(1 + int(counts.sum()) + len(roll), P, dtype=np.int64)
    first = np.cumsum(counts + 1) - counts  # stream index of each frame's first key
    t_idx, k_idx = np.nonzero(roll)
    within = np.arange(len(t_idx)) - (np.cumsum(counts) - counts)[t_idx]
    toks[first[t_idx] + within] = k_idx
    frame_of_next = np.cumsum(toks == P) - 1
    return toks, frame_of_next[:-1] >= 1


def _nade(model, rolls):
    P = rolls[0].shape[1]
    pairs = [nade_stream(r) for r in rolls]
    nll = _token_rollout(model, [t for t, _ in pairs], [s for _, s in pairs], P, P)
    return nll, sum(len(r) - 1 for r in rolls)


def _frame(model, rolls):
    B, T = len(rolls), max(len(r) for r in rolls)
    x = np.zeros((B, T, rolls[0].shape[1]), dtype=np.float32)
    for i, r in enumerate(rolls):
        x[i, :len(r)] = r
    lengths = np.array([len(r) for r in rolls])
    state = model.initial_state(B)
    name = model.inputs[0]
    total = 0.0
    for t in range(T - 1):
        outs, state = model.step({name: x[:, t]}, state)
        z = outs[model.outputs[0]].astype(np.float64)
        s = np.where(x[:, t + 1] > 0, z, -z)  # log sigmoid(s) = log p(observed state)
        ll = -np.logaddexp(0.0, -s).sum(1)
        total -= float(ll[lengths > t + 1].sum())
    return total, int((lengths - 1).sum())


def multitrack_stream(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A roll [T, K, P] as a `multitrack-step` stream (per step: BEGIN, then each row's keys
    ascending and END) and, per token but the last, whether the token after it is scored
    (a key or END of an accompaniment row, rows 1..K-1)."""
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


def _multitrack(model, rolls):
    P = rolls[0].shape[2]
    pairs = [multitrack_stream(r) for r in rolls]
    nll = _token_rollout(model, [t for t, _ in pairs], [s for _, s in pairs], P + 1, P)
    return nll, sum(len(r) for r in rolls)


def _token(model, pieces):
    streams = [np.asarray(p, dtype=np.int64) for p in pieces]
    nll = _token_rollout(model, streams, [np.ones(len(s) - 1, bool) for s in streams], 0)
    return nll, sum(len(s) - 1 for s in streams)


def _note(model, pieces):
    B, T = len(pieces), max(len(p) for p in pieces)
    x = np.zeros((B, T, 3), dtype=np.int64)
    for i, p in enumerate(pieces):
        x[i, :len(p)] = p
    lengths = np.array([len(p) for p in pieces])
    state = model.initial_state(B)
    total = 0.0
    for t in range(T - 1):
        outs, state = model.step({model.inputs[0]: x[:, t:t + 1]}, state)
        rows = np.nonzero(lengths > t + 1)[0]
        for head, name in enumerate(model.outputs):
            lp = log_softmax(outs[name][rows])
            total -= float(lp[np.arange(len(rows)), x[rows, t + 1, head]].sum())
    return total, int((lengths - 1).sum())


_PROTOCOLS = {  # protocol -> (batch function, unit)
    "nade-step": (_nade, "frame"),
    "frame-step": (_frame, "frame"),
    "multitrack-step": (_multitrack, "frame"),
    "token-step": (_token, "token"),
    "note-step": (_note, "token"),
}


def nll(model, pieces: list, batch: int = 64) -> tuple[float, int]:
    """(summed NLL in nats, units) of encoded pieces under a loaded model file."""
    if model.protocol not in _PROTOCOLS:
        raise ModelError(f"{model.path}: protocol {model.protocol!r} has no likelihood here; "
                         f"known: {sorted(_PROTOCOLS)}")
    if batch < 1:
        raise DataError(f"--batch must be >= 1 (received {batch})")
    fn = _PROTOCOLS[model.protocol][0]
    pieces = [np.asarray(p) for p in pieces if len(p)]
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    total, units = 0.0, 0
    for s in range(0, len(order), batch):
        n, u = fn(model, [pieces[i] for i in order[s:s + batch]])
        total += n
        units += u
    return total, units


def _check_width(model, rolls) -> None:
    rep = model.representation
    if rep.kind != "frames" or model.protocol not in ("nade-step", "frame-step"):
        raise ModelError(f"{model.path}: a {model.protocol} model over {rep.name!r} gives no "
                         "benchmark frame likelihood (nade-step or frame-step over an 88-key "
                         "pianoroll does)")
    if rolls and rep.vocab_size != rolls[0].shape[1]:
        raise ModelError(f"{model.path}: its frames are {rep.vocab_size} keys wide, the "
                         f"benchmark's {rolls[0].shape[1]} (pianoroll pitches = 88)")


def evaluate_benchmark(path, benchmark: str, batch: int = 64, threads: int = 1) -> dict:
    """Test NLL per frame of a benchmark (the published metric)."""
    from companion import benchmarks, modelfile

    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; known: {list(BENCHMARKS)}")
    model = modelfile.load(path, threads)
    rolls = benchmarks.load(benchmark)["test"]
    _check_width(model, rolls)
    total, frames = nll(model, rolls, batch)
    return {"nll_per_frame": total / frames, "frames": frames, "set": f"{benchmark}/test",
            "model": str(path), "protocol": model.protocol}


def held_out_scores(corpus: dict, split: str) -> list:
    """The Scores of a model's held-out split, from its `corpus` metadata (spec and ids)."""
    ids = (corpus.get("ids") or {}).get(split)
    spec = corpus.get("name")
    if not spec or ids is None:
        raise DataError(f"the model's corpus metadata names no {split} pieces (it needs "
                        f"'name' and 'ids'; received keys {sorted(corpus)})")
    found: dict[str, object] = {}
    parts = [p.strip() for p in spec.split("+")]
    wanted = set(ids)
    for part in parts:
        if not part.startswith(BENCHMARK_PREFIX):
            continue
        name = part[len(BENCHMARK_PREFIX):]
        from companion import benchmarks

        pieces = (benchmarks.load_satb()[split] if name == "jsb-satb"
                  else benchmarks.as_scores(name, split))
        for i, score in enumerate(pieces):
            key = f"{part}/{split}/{i}"
            if key in wanted:
                found[key] = score
    other = "+".join(p for p in parts if not p.startswith(BENCHMARK_PREFIX))
    if other and len(found) < len(wanted):
        try:
            from models.corpora import load_corpus
        except ImportError as err:
            raise DataError(f"corpus {other!r} needs the training extras "
                            f"(pip install 'midi-companion[train]'): {err}") from err
        for piece in load_corpus(other, progress=False):
            if piece.id in wanted:
                found[piece.id] = piece.score
    missing = [i for i in ids if i not in found]
    if missing:
        raise DataError(f"corpus {spec!r}: {len(missing)} of the {len(ids)} {split} pieces "
                        f"are not there any more (first: {missing[0]!r})")
    return [found[i] for i in ids]


def evaluate_split(path, split: str = "test", batch: int = 64, threads: int = 1) -> dict:
    """NLL on the model's own held-out split, per unit of its training loss."""
    from companion import modelfile

    model = modelfile.load(path, threads)
    if model.protocol not in _PROTOCOLS:
        raise ModelError(f"{path}: protocol {model.protocol!r} has no likelihood here")
    rep = model.representation
    pieces = []
    for score in held_out_scores(model.corpus, split):
        x = np.asarray(rep.encode(score))
        if len(x) >= 2:  # as training encodes them: nothing to predict in shorter pieces
            pieces.append(x)
    if not pieces:
        raise DataError(f"{path}: the {split} split holds no piece of two steps or more")
    total, units = nll(model, pieces, batch)
    unit = _PROTOCOLS[model.protocol][1]
    return {f"nll_per_{unit}": total / units, f"{unit}s": units,
            "set": f"{model.corpus.get('name')}/{split}", "model": str(path),
            "protocol": model.protocol}


# ---- command line ------------------------------------------------------------------------
def main(args) -> int:
    if args.benchmark:
        result = evaluate_benchmark(args.model, args.benchmark, args.batch, args.threads)
    else:
        result = evaluate_split(args.model, args.split, args.batch, args.threads)
    value_key = next(k for k in result if k.startswith("nll_per_"))
    units_key = value_key.replace("nll_per_", "") + "s"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['set']}: {result[value_key]:.4f} nats per "
              f"{value_key.replace('nll_per_', '')} over {result[units_key]} "
              f"{units_key}")
    return 0 if math.isfinite(result[value_key]) else 1
