"""Piano-roll LSTM (seeds 000 and 003): a sigmoid per key, protocol `frame-step`.

Frames (multi-hot [P], e.g. `pianoroll`; with onsets the onset plane is P's second half)
go through a linear projection and an LSTM; the head gives one logit per frame value for
the NEXT frame. Loss: binary cross-entropy summed over the values of a frame, in nats per
frame: the frame's probability under independent Bernoulli keys, so it is a valid (if
weak) benchmark number. Sampling draws each key independently (sampling.sample_bernoulli).

Step: input `frame` [B, P] float32 (the frame just played), state `h`, `c` [layers, B,
hidden]; output `logits` [B, P] for the next frame.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.data import sequence_batches

FAMILY = "roll-lstm"


class RollLSTM(nn.Module):
    family = FAMILY
    protocol = "frame-step"
    unit = "frame"

    def __init__(
        self, keys: int, embed: int = 256, hidden: int = 256, layers: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.model_args = dict(embed=embed, hidden=hidden, layers=layers, dropout=dropout)
        self.keys, self.hidden, self.layers = keys, hidden, layers
        self.inp = nn.Linear(keys, embed)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden, keys)

    def forward(self, frames: Tensor) -> Tensor:
        """frames [B, T, P] -> logits [B, T, P] of frames 1..T."""
        y, _ = self.lstm(self.drop(F.relu(self.inp(frames))))
        return self.head(self.drop(y))

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        frames, mask = batch["frames"], batch["mask"]
        logits = self(frames[:, :-1])
        bce = F.binary_cross_entropy_with_logits(logits, frames[:, 1:], reduction="none")
        target = mask[:, 1:]
        return (bce.sum(-1) * target).sum(), target.sum()

    def step(self, frame: Tensor, h: Tensor, c: Tensor):
        y, (h, c) = self.lstm(F.relu(self.inp(frame))[:, None], (h, c))
        return self.head(y[:, -1]), h, c

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec, StepModule

        shape = [self.layers, "B", self.hidden]
        zeros = torch.zeros(self.layers, 2, self.hidden)
        return ExportSpec(
            module=StepModule(self),
            example_inputs=(torch.zeros(2, self.keys), zeros, zeros.clone()),
            input_names=["frame", "h", "c"],
            output_names=["logits", "h_out", "c_out"],
            state=[{"name": "h", "shape": shape}, {"name": "c", "shape": shape}],
            random_inputs=lambda b, t, g: {
                "frame": (torch.rand(b, t, self.keys, generator=g) < 0.1).float()
            },
            sequence=lambda seq: {"logits": self(seq["frame"])},
        )


def build(family: str, rep, **model_args) -> RollLSTM:
    if family != FAMILY:
        raise ValueError(f"models.roll_lstm builds {FAMILY!r} (received {family!r})")
    if rep.kind != "frames":
        raise ValueError(
            f"roll-lstm needs a frame representation such as pianoroll "
            f"(received {rep.name!r}, which gives {rep.kind})"
        )
    return RollLSTM(rep.vocab_size, **model_args)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    return sequence_batches(pieces, cfg, rng, train, key="frames")
