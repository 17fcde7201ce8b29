"""A vae-nn band, torch-free (docs/ARCHITECTURE.md, "band-step"): the step file and the
encoder and decoder graphs beside it, and what the band mode and the evaluation do with them.

A `vae-nn` model file (models/vae_nn.py) is three graphs: the step (`<stem>.onnx`, protocol
`band-step`: the MelodyNN and one ConditionalNN per accompanying track, stepped by an Engine
whose state `parts` holds the accompaniment's latents), `<stem>.encoder.onnx` (blocks of
BLOCK grid steps, one row per track -> each track's latent) and `<stem>.decoder.onnx`
(latents -> each track's note probabilities). `Band(model)` opens and checks the other two;
`Band.next_block(lead_roll, ...)` is one turn of the thesis' generation loop: encode the
lead's block, predict its next latent and the accompaniment's (with Gaussian noise of the
preset's size on each), decode, keep the cells at or above the threshold.

`python -m midi_companion.band MODEL.onnx --split test`: held-out blocks of the model's own
split: per track reconstruction (from the encoder's mean; BCE nats per block, and precision
/ recall / F1 of the sounding cells at the threshold), and the accompaniment the band plays
under each held-out lead (one block ahead, from the zero state, as live) against the real
parts of the same blocks with MuseGAN's multitrack metrics (companion.metrics: empty bars,
used pitch classes per bar, tonal distance to the lead), and, as chance, the real parts of
another held-out piece under the same lead.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from midi_companion.errors import ModelError
from midi_companion.representations.base import NoteEvent

PROTOCOL = "band-step"
GRAPHS = {"encoder": (("rolls",), ("mean", "logvar")), "decoder": (("z",), ("probs",))}


def blocks(frames: np.ndarray, block: int) -> np.ndarray:
    """A piece's frames [T, K, P] -> its blocks [N, K, block, P] from its start (the last one
    padded with silence). Training cuts pieces the same way (models/vae_nn.py)."""
    T, K, P = frames.shape
    n = -(-T // block)
    x = np.zeros((n * block, K, P), dtype=np.uint8)
    x[:T] = frames
    return x.reshape(n, block, K, P).transpose(0, 2, 1, 3)


def roll_events(
    roll: np.ndarray, start: float, grid: float, low: int, velocity: int, track: int
) -> list[NoteEvent]:
    """A binary block [steps, P] -> note-ons and note-offs in beats from `start`: each run of
    sounding cells of a key is one note (as the roll representations decode), ended at the
    block's end at the latest, so a block never leaves a note open."""
    events = []
    steps = roll.shape[0]
    padded = np.zeros((steps + 2, roll.shape[1]), dtype=np.int8)
    padded[1:-1] = roll > 0
    edges = np.diff(padded, axis=0)  # +1 where a run starts, -1 one past where it ends
    for key in np.nonzero(roll.any(0))[0]:
        ons = np.nonzero(edges[:, key] == 1)[0]
        offs = np.nonzero(edges[:, key] == -1)[0]
        for a, b in zip(ons, offs):
            pitch = int(key) + low
            events.append(NoteEvent(start + a * grid, pitch, velocity, track))
            events.append(NoteEvent(start + b * grid, pitch, 0, track))
    return sorted(events, key=lambda e: (e.beat, e.velocity > 0, e.pitch))


class Band:
    """A `band-step` model file with its encoder and decoder graphs, and the latent state of
    the accompaniment (in its Engine)."""

    def __init__(self, model, provider: str = "auto", threads: int = 1):
        from midi_companion.engine import Engine

        if model.protocol != PROTOCOL:
            raise ModelError(
                f"{model.path}: a band needs a {PROTOCOL} model (a vae-nn file); this one is "
                f"{model.family}, {model.protocol}"
            )
        self.model = model
        rep = model.representation
        self.tracks = list(model.tracks)
        self.K = len(self.tracks)
        self.P = rep.keys
        self.low = rep.params.low
        self.grid = rep.params.grid
        self.velocity = rep.params.velocity
        parts = next((s for s in model.state if s.name == "parts"), None)
        if parts is None or len(parts.shape) != 3 or parts.shape[1] != self.K - 1:
            raise ModelError(
                f"{model.path}: a band-step model carries a state 'parts' [B, {self.K - 1}, "
                f"latent] (one row per accompanying track)"
            )
        self.latent = int(parts.shape[2])
        self.encoder = _open_graph(model, "encoder", threads)
        self.decoder = _open_graph(model, "decoder", threads)
        shape = self.encoder.get_inputs()[0].shape  # [B, K, block, P]
        if len(shape) != 4 or shape[1] != self.K or shape[3] != self.P:
            raise ModelError(
                f"{self.encoder_path}: its rolls are {shape}; {model.path.name} needs "
                f"[B, {self.K}, block, {self.P}]"
            )
        self.block = int(shape[2])
        self.engine = Engine(model, batch=1, provider=provider, threads=threads)
        self.reset()

    @property
    def encoder_path(self):
        return self.model.path.parent / self.model.metadata["encoder"]

    @property
    def block_beats(self) -> float:
        return self.block * self.grid

    # ---- the graphs ---------------------------------------------------------------------
    def encode(self, rolls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rolls [N, K, block, P] -> mean, logvar [N, K, latent]."""
        return tuple(self.encoder.run(["mean", "logvar"], {"rolls": rolls.astype(np.float32)}))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """z [N, K, latent] -> note probabilities [N, K, block, P]."""
        return self.decoder.run(["probs"], {"z": np.asarray(z, dtype=np.float32)})[0]

    # ---- one turn -------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero state: the accompaniment starts from the prior's mean latent."""
        self.engine.reset(1)
        self.played: np.ndarray | None = None  # the accompaniment's last block, as played

    def next_block(
        self,
        lead_roll: np.ndarray,
        noise: float,
        threshold: float,
        rng: np.random.Generator,
        reencode: bool = True,
    ) -> np.ndarray:
        """The lead's block t [block, P] -> the band's block t+1: binary [K, block, P] (row 0
        is the lead's predicted block, rows 1.. the accompaniment). Noise of standard
        deviation `noise` is added to every predicted latent; cells with probability >=
        `threshold` sound. `reencode` (the thesis' loop): the accompaniment's latents at t
        are encoded from the block it played (after the first block, which starts from the
        prior's mean); else the latents it predicted for t are carried (the step's state)."""
        rolls = np.zeros((1, self.K, self.block, self.P), dtype=np.float32)
        rolls[0, 0] = lead_roll
        if reencode and self.played is not None:
            rolls[0, 1:] = self.played
        mean, _ = self.encode(rolls)
        if reencode and self.played is not None:
            self.engine.state["parts"] = mean[:, 1:]
        eps = rng.standard_normal((1, self.K, self.latent)).astype(np.float32) * noise
        out = self.engine.step({"lead": mean[:, 0], "noise": eps})
        z = np.concatenate([out["lead_next"][:, None], out["parts_out"]], 1)
        block = self.decode(z)[0] >= threshold
        self.played = block[1:]
        return block


def _open_graph(model, name: str, threads: int):
    import onnxruntime as ort

    from midi_companion.modelfile import FORMAT, session_options

    file = model.metadata.get(name)
    if not file:
        raise ModelError(f"{model.path}: names no {name} graph (metadata {name!r})")
    path = model.path.parent / file
    if not path.is_file():
        raise ModelError(
            f"{model.path}: its {name} graph {path} is missing (a vae-nn model is three "
            f"files: keep {file} beside it)"
        )
    try:
        sess = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime's own kinds
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelError(f"{path}: not a readable ONNX model: {first}") from err
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if (
        meta.get("format") != FORMAT
        or meta.get("graph") != name
        or meta.get("family") != (model.family)
    ):
        raise ModelError(
            f"{path}: not the {name} of {model.path.name} (its metadata says format "
            f"{meta.get('format')!r}, graph {meta.get('graph')!r}, family {meta.get('family')!r})"
        )
    ins = {i.name for i in sess.get_inputs()}
    outs = {o.name for o in sess.get_outputs()}
    want_in, want_out = GRAPHS[name]
    if set(want_in) - ins or set(want_out) - outs:
        raise ModelError(
            f"{path}: a {name} graph needs inputs {list(want_in)} and outputs "
            f"{list(want_out)} (it has {sorted(ins)}, {sorted(outs)})"
        )
    return sess


# ---- held-out evaluation ------------------------------------------------------------------
def _bce(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(x * np.log(p) + (1 - x) * np.log(1 - p))


def _notes(roll: np.ndarray, band: Band, start: float) -> list:
    """A binary block [block, P] -> Notes from `start` (beats)."""
    from midi_companion.score import Note

    ev = roll_events(roll, start, band.grid, band.low, band.velocity, 0)
    ons = [e for e in ev if e.is_on]
    offs = [e for e in ev if not e.is_on]
    out = []
    for on in ons:  # each on's off: the first off of its pitch after it
        off = next(e for e in offs if e.pitch == on.pitch and e.beat > on.beat)
        offs.remove(off)
        out.append(Note(on.beat, on.pitch, off.beat - on.beat, on.velocity))
    return out


def evaluate(
    path,
    split: str = "test",
    noise: float = 0.0,
    threshold: float = 0.3,
    beats_per_bar: float = 4,
    seed: int = 0,
    reencode: bool = True,
) -> dict:
    """Held-out reconstruction per track and the band's accompaniment vs the real parts (see
    the module docstring). Blocks without a note in any track are left out, as in training."""
    from midi_companion.evaluate import held_out_scores
    from midi_companion.modelfile import load
    from midi_companion.stats import percentiles

    model = load(path)
    band = Band(model, provider="cpu")
    rep = model.representation
    rng = np.random.default_rng(seed)
    K = band.K
    recon = np.zeros(K)
    hits = np.zeros((K, 3))  # true positives, predicted, real
    n_blocks = 0
    gen_tracks: dict[str, list[list]] = {"band": [], "real": [], "other": []}
    kept: list[np.ndarray] = []
    answer_ns: list[int] = []
    for score in held_out_scores(model.corpus, split):
        b = blocks(np.asarray(rep.encode(score), dtype=np.uint8), band.block)
        b = b[b.reshape(len(b), -1).any(1)] if len(b) else b
        if not len(b):
            continue
        mean, _ = band.encode(b)
        probs = band.decode(mean)
        x = b.astype(np.float64)
        recon += _bce(probs, x).sum((2, 3)).sum(0)
        on = probs >= threshold
        hits[:, 0] += (on & (b > 0)).sum((0, 2, 3))
        hits[:, 1] += on.sum((0, 2, 3))
        hits[:, 2] += (b > 0).sum((0, 2, 3))
        n_blocks += len(b)
        # the band under the real lead, one block ahead, from the zero state
        band.reset()
        played = {"band": [[] for _ in range(K)], "real": [[] for _ in range(K)]}
        for t in range(len(b) - 1):
            t0 = time.perf_counter_ns()
            nxt = band.next_block(b[t, 0], noise, threshold, rng, reencode)
            answer_ns.append(time.perf_counter_ns() - t0)
            start = (t + 1) * band.block_beats
            for k in range(K):
                played["real"][k] += _notes(b[t + 1, k], band, start)
                played["band"][k] += _notes(b[t + 1, 0] if k == 0 else nxt[k], band, start)
        if len(b) > 1:
            kept.append(b)
            for which in played:
                gen_tracks[which].append(played[which])
    # chance: the real parts of the next held-out piece (same block index) under this lead
    for i, b in enumerate(kept):
        other = kept[(i + 1) % len(kept)]
        tracks = [[] for _ in range(K)]
        for t in range(1, len(b)):
            for k in range(K):
                roll = b[t, 0] if k == 0 else other[t % len(other), k]
                tracks[k] += _notes(roll, band, t * band.block_beats)
        gen_tracks["other"].append(tracks)
    out = {
        "model": str(path),
        "split": split,
        "blocks": n_blocks,
        "pieces": len(gen_tracks["real"]),
        "noise": noise,
        "threshold": threshold,
        "reencode": reencode,
        "tracks": band.tracks,
        "recon_nll": (recon / max(n_blocks, 1)).tolist(),
        "answer_ms": {q: ns / 1e6 for q, ns in zip(("p50", "p99"), percentiles(answer_ns, 50, 99))},
    }
    tp, pred, real = hits.T
    precision = np.divide(tp, pred, out=np.full(K, math.nan), where=pred > 0)
    recall = np.divide(tp, real, out=np.full(K, math.nan), where=real > 0)
    out["precision"], out["recall"] = precision.tolist(), recall.tolist()
    out["f1"] = (2 * precision * recall / (precision + recall)).tolist()
    for which, pieces in gen_tracks.items():
        with warnings.catch_warnings():  # a track silent in every piece: its mean is nan
            warnings.simplefilter("ignore", RuntimeWarning)
            out[which] = _multitrack(pieces, K, beats_per_bar)
    return out


def _multitrack(pieces: list[list[list]], K: int, beats_per_bar: float) -> dict:
    """MuseGAN's metrics per track, averaged over the pieces (nan where none has notes)."""
    from midi_companion.metrics import empty_bars, tonal_distance, used_pitch_classes

    eb = np.array([empty_bars(tr, beats_per_bar) for tr in pieces])
    upc = np.array([used_pitch_classes(tr, beats_per_bar) for tr in pieces])
    td = np.array(
        [[tonal_distance(tr[0], tr[k], beats_per_bar) for k in range(1, K)] for tr in pieces]
    )
    return {
        "empty_bars": np.nanmean(eb, 0).tolist(),
        "used_pitch_classes": np.nanmean(upc, 0).tolist(),
        "tonal_distance_to_lead": np.nanmean(td, 0).tolist(),
    }


def main(argv=None) -> int:
    """python -m midi_companion.band MODEL.onnx [--split test] [--noise 0] [--threshold 0.3]
    [--json]"""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m midi_companion.band", description=evaluate.__doc__)
    ap.add_argument("model")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--noise", type=float, default=0.0, help="latent noise (standard deviation)")
    ap.add_argument("--threshold", type=float, default=0.3, help="a cell sounds at this or more")
    ap.add_argument("--beats-per-bar", type=float, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--carry",
        action="store_true",
        help="carry the accompaniment's predicted latents instead of re-encoding what it played",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = evaluate(
        args.model,
        args.split,
        args.noise,
        args.threshold,
        args.beats_per_bar,
        args.seed,
        reencode=not args.carry,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['model']} {r['split']}: {r['blocks']} blocks of {r['pieces']} pieces; noise "
        f"{r['noise']}, threshold {r['threshold']}, "
        f"{'re-encoded' if r['reencode'] else 'carried'} latents"
    )
    print(f"{'track':<10} {'recon nats':>10} {'precision':>9} {'recall':>7} {'F1':>6}")
    for k, name in enumerate(r["tracks"]):
        print(
            f"{name:<10} {r['recon_nll'][k]:>10.1f} {r['precision'][k]:>9.3f} "
            f"{r['recall'][k]:>7.3f} {r['f1'][k]:>6.3f}"
        )
    print(f"{'':<10} {'empty bars':>21} {'pitch classes/bar':>21} {'tonal dist. to lead':>21}")
    for k, name in enumerate(r["tracks"]):
        cells = []
        for key in ("empty_bars", "used_pitch_classes"):
            cells.append(f"{r['band'][key][k]:>10.3f} {r['real'][key][k]:>10.3f}")
        td = (
            f"{r['band']['tonal_distance_to_lead'][k - 1]:>10.3f} "
            f"{r['real']['tonal_distance_to_lead'][k - 1]:>10.3f}"
            if k
            else f"{'':>21}"
        )
        print(f"{name:<10} {cells[0]} {cells[1]} {td}")
    print("(each metric: the band's, then the real parts'; the lead row is the real lead)")
    other = r["other"]["tonal_distance_to_lead"]
    a = r["answer_ms"]
    print(
        f"one block's answer (encode, step, decode): p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms"
    )
    print(
        "chance (the real parts of another held-out piece under this lead): tonal distance "
        + ", ".join(f"{name} {d:.3f}" for name, d in zip(r["tracks"][1:], other))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
