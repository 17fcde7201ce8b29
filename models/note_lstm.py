"""Three-head note LSTM (seed 002's MidiRNN) over `notes`: protocol `note-step`.

A note is (pitch, step class, duration class) (companion/representations/notes.py: the
flat tokens are field offset + class). Three embeddings, concatenated, feed an LSTM; three
heads give the next note's pitch, step and duration. The heads are independent given the
past, as in the seed, so a note's NLL is the sum of the three and the unit is the note.

Step: input `note` int64 [B, 1, 3] (class indices, no offsets), state `h`, `c` [layers, B,
hidden]; outputs `pitch_logits` [B, 128], `step_logits` [B, n_step], `duration_logits`
[B, n_duration].
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.data import sequence_batches

FAMILY = "note-lstm"
HEADS = ("pitch_logits", "step_logits", "duration_logits")


class NoteLSTM(nn.Module):
    family = FAMILY
    protocol = "note-step"
    unit = "note"

    def __init__(
        self,
        fields: tuple[int, int, int],
        embed: int = 64,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.model_args = dict(embed=embed, hidden=hidden, layers=layers, dropout=dropout)
        self.fields, self.hidden, self.layers = tuple(fields), hidden, layers
        self.embs = nn.ModuleList(nn.Embedding(n, embed) for n in self.fields)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            3 * embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.fields)

    def _embed(self, notes: Tensor) -> Tensor:
        """notes [B, T, 3] -> [B, T, 3 * embed]"""
        return torch.cat([e(notes[..., i]) for i, e in enumerate(self.embs)], dim=-1)

    def forward(self, notes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, _ = self.lstm(self.drop(self._embed(notes)))
        y = self.drop(y)
        return tuple(head(y) for head in self.heads)  # each [B, T, n_field]

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        notes, mask = batch["notes"], batch["mask"]
        target = mask[:, 1:]
        nll = 0
        for i, logits in enumerate(self(notes[:, :-1])):
            ce = F.cross_entropy(logits.flatten(0, 1), notes[:, 1:, i].flatten(), reduction="none")
            nll = nll + (ce * target.flatten()).sum()
        return nll, target.sum()

    def step(self, note: Tensor, h: Tensor, c: Tensor):
        y, (h, c) = self.lstm(self._embed(note), (h, c))
        y = y[:, -1]
        return (*(head(y) for head in self.heads), h, c)

    def export_spec(self):
        from export.onnx_export import ExportSpec

        shape = [self.layers, "B", self.hidden]
        zeros = torch.zeros(self.layers, 2, self.hidden)

        def random_inputs(b, t, g):
            cols = [torch.randint(0, n, (b, t), generator=g) for n in self.fields]
            return {"note": torch.stack(cols, dim=-1)}

        return ExportSpec(
            module=_Step(self),
            example_inputs=(
                torch.tensor([[[60, 0, 11]], [[62, 12, 5]]]) % torch.tensor(self.fields),
                zeros,
                zeros.clone(),
            ),
            input_names=["note", "h", "c"],
            output_names=[*HEADS, "h_out", "c_out"],
            state=[{"name": "h", "shape": shape}, {"name": "c", "shape": shape}],
            random_inputs=random_inputs,
            sequence=lambda seq: dict(zip(HEADS, self(seq["note"]))),
        )


class _Step(nn.Module):
    def __init__(self, model: NoteLSTM):
        super().__init__()
        self.model = model

    def forward(self, note, h, c):
        return self.model.step(note, h, c)


def build(family: str, rep, **model_args) -> NoteLSTM:
    if family != FAMILY:
        raise ValueError(f"models.note_lstm builds {FAMILY!r} (received {family!r})")
    if not hasattr(rep, "fields") or not hasattr(rep, "offsets"):
        raise ValueError(f"note-lstm needs the notes representation (received {rep.name!r})")
    return NoteLSTM(rep.fields, **model_args)


def to_triples(tokens: np.ndarray, rep) -> np.ndarray:
    """Flat `notes` tokens [3N] -> class triples [N, 3]."""
    return tokens.reshape(-1, 3) - np.asarray(rep.offsets, dtype=tokens.dtype)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    return sequence_batches([to_triples(p, rep) for p in pieces], cfg, rng, train, key="notes")
