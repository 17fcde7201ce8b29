"""classifier: seed 000's composer classifier, a Transformer encoder that tells corpora apart
from a phrase of tokens (protocol `classify`: a one-shot graph, no state).

A phrase is up to `phrase` tokens (`[model] phrase`, which `[train] seq_len` must equal: the
runtime cuts what it scores by it) of a token representation (`events`, as the lstm-vae
reads, so it can score the companion's answers). The model: token embedding, `layers` (6 in
the seed) pre-norm bidirectional self-attention blocks with rotary positions
(models/transformer.py's `rotate`), padding masked out of attention and of the pool, the
mean over the phrase's tokens, a layer norm and a linear head to one logit per class.

Classes: `[model] classes`, each `"name=coll+coll"` or a collection alone (`"bach"`): the
music21 collections (models/corpora.py COLLECTIONS, or `benchmark:<name>` sources) whose
pieces belong to it, e.g.
`["bach", "essen", "irish=oneill+ryans", "palestrina", "quartets=beethoven+haydn+mozart"]`.
A piece's class comes from its id (`<collection>/...`); the loop hands the ids through the
model's `encode_pieces` hook (models/train.py). With `split_tracks` (default) each track of
a piece is a piece of its own: a chorale's alto, a quartet's viola, a folk tune's line are
each one voice, as a companion's answer is, so the classifier judges the style of a line and
not the texture of a score.

Batches: training draws `batch_size` phrases a step, the class uniformly (the corpora differ
by a factor of 20 in size), then a piece of it and a random window (`phrases_per_epoch`
phrases make an epoch). Evaluation: every piece cut into consecutive windows of `seq_len`
tokens (a last window shorter than `min_len` dropped unless it is the piece's only one).
Loss (the loop's contract): the cross-entropy summed over the phrases, count = phrases, unit
"phrase"; `extra_metrics` adds the accuracy (correct, phrases) of each evaluation.

Graph (`classify`): inputs `tokens` int64 [B, T] (right-padded) and `lengths` int64 [B];
output `logits` float32 [B, classes]. The metadata's `model_args` carry the class names;
companion/classifier.py reads them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.transformer import _init, rotate

FAMILY = "classifier"
PROTOCOL = "classify"
TRAIN_KEYS = {
    "phrases_per_epoch": ((int,), 8192),  # training phrases drawn per epoch (balanced)
    "min_len": ((int,), 16),  # evaluation windows shorter than this are dropped
}


def parse_classes(classes) -> list[tuple[str, tuple[str, ...]]]:
    """`["bach", "irish=oneill+ryans"]` -> [("bach", ("bach",)), ("irish", ("oneill",
    "ryans"))]; ValueError naming what is wrong."""
    from midi_companion.models.corpora import COLLECTIONS

    if not isinstance(classes, list) or len(classes) < 2:
        raise ValueError(f"{FAMILY}: classes must list at least 2 classes (received {classes!r})")
    out, seen = [], set()
    for c in classes:
        if not isinstance(c, str) or not c:
            raise ValueError(f"{FAMILY}: each class is a string (received {c!r})")
        name, _, members = c.partition("=")
        cols = tuple(m.strip() for m in (members or name).split("+"))
        bad = [m for m in cols if m not in COLLECTIONS and not m.startswith("benchmark:")]
        if bad:
            raise ValueError(
                f"{FAMILY}: class {c!r} names {bad[0]!r}, not a music21 collection "
                f"({', '.join(COLLECTIONS)})"
            )
        if seen & set(cols) or name in {n for n, _ in out}:
            raise ValueError(f"{FAMILY}: class {c!r} repeats a name or a collection")
        seen |= set(cols)
        out.append((name.strip(), cols))
    return out


class Block(nn.Module):
    """Pre-norm bidirectional self-attention + GELU MLP; padding keys masked."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def forward(self, x: Tensor, keep: Tensor, inv_freq: Tensor) -> Tensor:
        """x [B, T, d]; keep bool [B, T] (real tokens)."""
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device, dtype=x.dtype)
        q, k = rotate(q, pos, inv_freq), rotate(k, pos, inv_freq)
        mask = keep[:, None, None, :]  # [B, 1, 1, T]: every query sees the real keys
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class PhraseEncoder(nn.Module):
    """Tokens [B, T] + lengths [B] -> the mean of the top block's outputs [B, d] (also the
    transformer-vae's encoder)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, dropout: float, base: float):
        super().__init__()
        if d % heads or (d // heads) % 2:
            raise ValueError(
                f"d_model / heads must be an even integer (received d_model={d}, heads={heads})"
            )
        hd = d // heads
        self.emb = nn.Embedding(vocab, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.embedded(self.emb(tokens), lengths)

    def embedded(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The same from the token embeddings x [B, T, d] (restyle relaxes them)."""
        T = x.shape[1]
        keep = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, keep, self.inv_freq)
        w = keep.to(x.dtype)[..., None]
        return self.ln((x * w).sum(1) / w.sum(1).clamp(min=1.0))


class Classifier(nn.Module):
    family = FAMILY
    protocol = PROTOCOL
    unit = "phrase"

    def __init__(
        self,
        vocab: int,
        classes: list,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 6,
        phrase: int = 128,
        dropout: float = 0.1,
        split_tracks: bool = True,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        parsed = parse_classes(classes)
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"{FAMILY}: layers must be an integer >= 1 (received {layers!r})")
        self.model_args = dict(
            classes=list(classes),
            d_model=d_model,
            heads=heads,
            layers=layers,
            phrase=phrase,
            dropout=dropout,
            split_tracks=bool(split_tracks),
            rope_base=rope_base,
        )
        self.class_names = [n for n, _ in parsed]
        self.class_of = {col: i for i, (_, cols) in enumerate(parsed) for col in cols}
        self.split_tracks = bool(split_tracks)
        self.vocab, self.phrase = vocab, phrase
        self.encoder = PhraseEncoder(vocab, d_model, heads, layers, dropout, rope_base)
        self.head = nn.Linear(d_model, len(parsed))
        self.apply(_init)
        self._terms = torch.zeros(2, dtype=torch.float64)  # correct, phrases

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens [B, T] (right-padded), lengths [B] -> class logits [B, C]."""
        return self.head(self.encoder(tokens, lengths))

    # ---- the loop's hooks ---------------------------------------------------------------
    def encode_pieces(self, scores, ids, rep, shifts=(0, 0), rng=None) -> list:
        """Each piece (each of its tracks with `split_tracks`) encoded, with its class:
        [(tokens, class)], pieces of collections no class names left out."""
        from midi_companion.models import data
        from midi_companion.score import Score

        out = []
        for score, pid in zip(scores, ids):
            label = self.class_of.get(pid.split("/", 1)[0])
            if label is None:
                continue
            parts = (
                [
                    Score([t], score.tempos, score.time_signatures)
                    for t in score.tracks
                    if t.notes and not t.is_drum
                ]
                if self.split_tracks
                else [score]
            )
            for x in data.encode(parts, rep, shifts, rng):
                out.append((x, label))
        return out

    def extra_metrics(self) -> dict[str, tuple[float, float]]:
        correct, n = self._terms.tolist()
        self._terms.zero_()
        return {"accuracy": (correct, n)}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if batch["tokens"].shape[1] > self.phrase:
            raise ValueError(
                f"{FAMILY}: a phrase of {batch['tokens'].shape[1]} tokens, but [model] phrase "
                f"is {self.phrase} (set [train] seq_len to it)"
            )
        logits = self(batch["tokens"], batch["lengths"])
        nll = F.cross_entropy(logits, batch["label"], reduction="sum")
        n = torch.tensor(float(len(logits)), device=logits.device)
        if not self.training:
            correct = float((logits.argmax(1) == batch["label"]).sum())
            self._terms += torch.tensor([correct, float(len(logits))], dtype=torch.float64)
        return nll, n

    # ---- export -------------------------------------------------------------------------
    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec

        vocab = self.vocab

        def random_inputs(b, steps, g):  # `steps` phrases per row, each a graph call
            t = int(torch.randint(8, 96, (1,), generator=g))
            lengths = torch.randint(1, t + 1, (b, steps), generator=g)
            lengths[0] = t
            return {
                "tokens": torch.randint(0, vocab, (b, steps, t), generator=g),
                "lengths": lengths,
            }

        def each_alone(seq):  # every phrase scored unpadded: padding must not count
            tokens, lengths = seq["tokens"], seq["lengths"]
            rows = [
                torch.stack(
                    [
                        self(tokens[i, s, : lengths[i, s]][None], lengths[i, s][None])[0]
                        for s in range(tokens.shape[1])
                    ]
                )
                for i in range(tokens.shape[0])
            ]
            return {"logits": torch.stack(rows)}

        return ExportSpec(
            module=_Graph(self),
            example_inputs=(torch.randint(0, vocab, (2, 7)), torch.tensor([7, 5])),
            input_names=["tokens", "lengths"],
            output_names=["logits"],
            state=[],
            dynamic_axes={"tokens": {0: "B", 1: "T"}, "lengths": {0: "B"}},
            random_inputs=random_inputs,
            sequence=each_alone,
        )


class _Graph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, lengths):
        return (self.model(tokens, lengths),)  # the exporter's outputs are a tuple


# ---- family contract ---------------------------------------------------------------------
def build(family: str, rep, **model_args) -> Classifier:
    if family != FAMILY:
        raise ValueError(f"models.classifier builds {FAMILY!r} (received {family!r})")
    if rep.kind != "tokens":
        raise ValueError(
            f"{FAMILY} needs a token representation (received {rep.name!r}, which gives {rep.kind})"
        )
    if "classes" not in model_args:
        raise ValueError(f'{FAMILY}: classes is required, e.g. ["bach", "irish=oneill+ryans"]')
    return Classifier(rep.vocab_size, **model_args)


def _collate(items: list[tuple[np.ndarray, int]]) -> dict[str, Tensor]:
    T = max(len(x) for x, _ in items)
    tokens = np.zeros((len(items), T), dtype=np.int64)
    for i, (x, _) in enumerate(items):
        tokens[i, : len(x)] = x
    return {
        "tokens": torch.from_numpy(tokens),
        "lengths": torch.tensor([len(x) for x, _ in items]),
        "label": torch.tensor([c for _, c in items]),
    }


def windows(x: np.ndarray, n: int, min_len: int) -> list[np.ndarray]:
    """Consecutive windows of `n` tokens; a short last one dropped unless it is the only one."""
    out = [x[s : s + n] for s in range(0, len(x), n)]
    return [w for i, w in enumerate(out) if i == 0 or len(w) >= min_len]


def batches(
    pieces: list, rep, cfg: dict, rng: np.random.Generator | None, train: bool
) -> Iterator[dict[str, Tensor]]:
    """See the module doc: class-balanced random windows (training), every window in order
    (evaluation). `pieces` are encode_pieces' (tokens, class) pairs."""
    n, bs = cfg["seq_len"], cfg["batch_size"]
    if not train:
        items = [(w, c) for x, c in pieces for w in windows(x, n, cfg.get("min_len", 16))]
        for i in range(0, len(items), bs):
            yield _collate(items[i : i + bs])
        return
    by_class: dict[int, list[np.ndarray]] = {}
    for x, c in pieces:
        by_class.setdefault(c, []).append(x)
    classes = sorted(by_class)
    # a piece's chance within its class grows with its length (each window as likely)
    weights = {c: np.array([len(x) for x in by_class[c]], float) for c in classes}
    weights = {c: w / w.sum() for c, w in weights.items()}
    for _ in range(max(1, cfg.get("phrases_per_epoch", 8192) // bs)):
        items = []
        for c in rng.choice(classes, size=bs):
            x = by_class[c][rng.choice(len(by_class[c]), p=weights[c])]
            s = int(rng.integers(0, max(1, len(x) - n + 1)))
            items.append((x[s : s + n], int(c)))
        yield _collate(items)
