"""Next-token LSTMs over token representations (seed 001): protocol `token-step`.

Families (all: embedding -> recurrent core -> linear head to the vocabulary):
- `lstm`: an LSTM of `layers` layers; `layers = 1` is the seed's baseline, more is its
  stacked LSTM (its best).
- `bilstm`: a bidirectional LSTM over a sliding window of the last `window` tokens; the head
  reads the forward direction at the window's end and the backward one at its start. The
  step state is the window itself (embeddings of the previous `window - 1` tokens).
- `conv-lstm`: the seed's hybrid: a causal Conv1D (`kernel` taps, `channels` filters, ReLU)
  over the embeddings, an LSTM, and a time-distributed head. The step state holds the
  conv's last `kernel - 1` inputs besides the LSTM's h and c.

Metrical position (`meter = true`, the default for `lstm` over a representation whose tokens
carry time, e.g. `events`): each token's embedding gets a learned embedding of the position
in the beat after it (grid steps since the last beat, 0..steps_per_beat - 1), so the model
knows where the beat is. Training reads the position from the piece's start; the step graph
counts it in a `time` state ([B, 1], grid steps mod steps_per_beat, float32) from the token
table, so the protocol and its drivers are unchanged: the zero state is "on a beat", and a
driver that starts elsewhere sets `time`.

Every sequence starts from the zero state (zero-padded window and conv history), in
training and in the step graph alike, so the step graph reproduces the full-sequence
forward exactly. Loss: cross-entropy of each token given the tokens before it, in nats per
token; a piece's first token is context only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.data import sequence_batches

FAMILIES = ("lstm", "bilstm", "conv-lstm")
PROTOCOL = "token-step"


class TokenModel(nn.Module):
    """What the three families share: the loss, batches' key and the export plumbing.

    Subclasses define ``forward(tokens [B, T]) -> logits [B, T, V]``,
    ``step(token [B, 1], *state) -> (logits [B, V], *state)`` and ``state_spec()``."""

    protocol = PROTOCOL

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens, mask = batch["tokens"], batch["mask"]
        phase = batch.get("phase")
        logits = (
            self(tokens[:, :-1]) if phase is None else self(tokens[:, :-1], phase[:, :-1])
        )  # [B, T-1, V]
        nll = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        target = mask[:, 1:].flatten()
        return (nll * target).sum(), target.sum()

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec, StepModule

        state = self.state_spec()
        zeros = [torch.zeros([2 if d == "B" else d for d in s["shape"]]) for s in state]
        names = [s["name"] for s in state]
        return ExportSpec(
            module=StepModule(self),
            example_inputs=(torch.tensor([[1], [2]]) % self.vocab, *zeros),
            input_names=["token", *names],
            output_names=["logits", *(n + "_out" for n in names)],
            state=state,
            random_inputs=lambda b, t, g: {
                "token": torch.randint(0, self.vocab, (b, t), generator=g)
            },
            sequence=lambda seq: {"logits": self(seq["token"])},
        )


class LSTM(TokenModel):
    family = "lstm"

    def __init__(
        self,
        vocab: int,
        embed: int = 128,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.1,
        meter: bool = False,
        token_steps=None,
        steps_per_beat: int = 0,
    ):
        super().__init__()
        self.model_args = dict(embed=embed, hidden=hidden, layers=layers, dropout=dropout)
        self.vocab, self.hidden, self.layers = vocab, hidden, layers
        self.emb = nn.Embedding(vocab, embed)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden, vocab)
        self.beat = 0
        self.model_args["meter"] = bool(meter)
        if meter:
            self.beat = int(steps_per_beat)
            self.register_buffer("steps", torch.as_tensor(token_steps, dtype=torch.float32))
            self.phase_emb = nn.Embedding(self.beat, embed)

    def phases(self, tokens: Tensor) -> Tensor:
        """Position in the beat after each token of sequences that start on a beat."""
        return (self.steps[tokens].cumsum(1) % self.beat).long()

    def _embed(self, tokens: Tensor, phase: Tensor | None) -> Tensor:
        x = self.emb(tokens)
        if self.beat:
            x = x + self.phase_emb(self.phases(tokens) if phase is None else phase)
        return x

    def forward(self, tokens: Tensor, phase: Tensor | None = None) -> Tensor:
        y, _ = self.lstm(self.drop(self._embed(tokens, phase)))  # [B, T, H]
        return self.head(self.drop(y))  # [B, T, V]

    def step(self, token: Tensor, h: Tensor, c: Tensor, *time: Tensor):
        x = self.emb(token)
        if self.beat:
            t = time[0] + self.steps[token[:, 0]][:, None]  # [B, 1]
            t = t - torch.floor(t / self.beat) * self.beat
            x = x + self.phase_emb(t.long())
        y, (h, c) = self.lstm(x, (h, c))  # y [B, 1, H]
        return (self.head(y[:, -1]), h, c, t) if self.beat else (self.head(y[:, -1]), h, c)

    def state_spec(self) -> list[dict]:
        shape = [self.layers, "B", self.hidden]
        spec = [{"name": "h", "shape": shape}, {"name": "c", "shape": shape}]
        return spec + ([{"name": "time", "shape": ["B", 1]}] if self.beat else [])


class ConvLSTM(LSTM):
    family = "conv-lstm"

    def __init__(
        self,
        vocab: int,
        embed: int = 128,
        channels: int = 128,
        kernel: int = 4,
        hidden: int = 256,
        layers: int = 1,
        dropout: float = 0.1,
    ):
        if kernel < 2:
            raise ValueError(f"conv-lstm: kernel must be >= 2 (received {kernel})")
        super().__init__(vocab, channels, hidden, layers, dropout)
        self.model_args = dict(
            embed=embed,
            channels=channels,
            kernel=kernel,
            hidden=hidden,
            layers=layers,
            dropout=dropout,
        )
        self.embed, self.kernel = embed, kernel
        self.emb = nn.Embedding(vocab, embed)
        self.conv = nn.Conv1d(embed, channels, kernel)

    def _conv(self, x: Tensor) -> Tensor:
        """[B, T + kernel - 1, E] (history first) -> [B, T, C]."""
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        x = F.pad(self.drop(self.emb(tokens)), (0, 0, self.kernel - 1, 0))  # zero history
        y, _ = self.lstm(self._conv(x))
        return self.head(self.drop(y))

    def step(self, token: Tensor, conv: Tensor, h: Tensor, c: Tensor):
        x = torch.cat([conv, self.emb(token)], dim=1)  # [B, kernel, E]
        y, (h, c) = self.lstm(self._conv(x), (h, c))
        return self.head(y[:, -1]), x[:, 1:], h, c

    def state_spec(self) -> list[dict]:
        conv = {"name": "conv", "shape": ["B", self.kernel - 1, self.embed]}
        return [conv, *super().state_spec()]


class BiLSTM(TokenModel):
    family = "bilstm"

    def __init__(
        self,
        vocab: int,
        embed: int = 128,
        hidden: int = 256,
        layers: int = 1,
        window: int = 32,
        dropout: float = 0.1,
    ):
        super().__init__()
        if window < 2:
            raise ValueError(f"bilstm: window must be >= 2 (received {window})")
        self.model_args = dict(
            embed=embed, hidden=hidden, layers=layers, window=window, dropout=dropout
        )
        self.vocab, self.embed, self.hidden, self.window = vocab, embed, hidden, window
        self.emb = nn.Embedding(vocab, embed)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            embed,
            hidden,
            layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(2 * hidden, vocab)

    def _read(self, windows: Tensor) -> Tensor:
        """[N, window, E] -> logits [N, V] for the token after each window."""
        y, _ = self.lstm(windows)  # [N, W, 2H]
        both = torch.cat([y[:, -1, : self.hidden], y[:, 0, self.hidden :]], dim=-1)
        return self.head(self.drop(both))

    def forward(self, tokens: Tensor, chunk: int = 256) -> Tensor:
        B, T = tokens.shape
        x = F.pad(self.drop(self.emb(tokens)), (0, 0, self.window - 1, 0))  # [B, W-1+T, E]
        out = []
        for s in range(0, T, chunk):  # bounded memory on whole pieces
            n = min(chunk, T - s)
            w = x[:, s : s + n + self.window - 1].unfold(1, self.window, 1)  # [B, n, E, W]
            out.append(
                self._read(w.permute(0, 1, 3, 2).reshape(B * n, self.window, -1)).view(B, n, -1)
            )
        return torch.cat(out, dim=1)

    def step(self, token: Tensor, window: Tensor):
        x = torch.cat([window, self.emb(token)], dim=1)  # [B, W, E]
        return self._read(x), x[:, 1:]

    def state_spec(self) -> list[dict]:
        return [{"name": "window", "shape": ["B", self.window - 1, self.embed]}]


def build(family: str, rep, **model_args) -> TokenModel:
    if family not in FAMILIES:
        raise ValueError(f"models.lstm builds {FAMILIES} (received {family!r})")
    if rep.kind != "tokens":
        raise ValueError(
            f"{family} needs a token representation (received {rep.name!r}, which gives {rep.kind})"
        )
    cls = {"lstm": LSTM, "bilstm": BiLSTM, "conv-lstm": ConvLSTM}[family]
    if family == "lstm" and model_args.pop("meter", True) and rep.token_steps() is not None:
        model_args.update(
            meter=True, token_steps=rep.token_steps(), steps_per_beat=rep.steps_per_beat
        )
    elif model_args.get("meter"):
        raise ValueError(
            f"{family}: meter needs the lstm family over a representation whose "
            f"tokens carry time (received {family!r} over {rep.name!r})"
        )
    else:
        model_args.pop("meter", None)
    return cls(rep.vocab_size, **model_args)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Windows of tokens; where the tokens carry time, each with its position in the beat
    counted from the piece's start (a window's first token is rarely on the beat)."""
    steps = rep.token_steps()
    if steps is None:
        yield from sequence_batches(pieces, cfg, rng, train, key="tokens")
        return
    beat = rep.steps_per_beat
    paired = [np.stack([p, np.cumsum(steps[p]) % beat], axis=1) for p in pieces]
    for b in sequence_batches(paired, cfg, rng, train, key="tokens"):
        both = b.pop("tokens")
        yield {"tokens": both[..., 0], "phase": both[..., 1], **b}
