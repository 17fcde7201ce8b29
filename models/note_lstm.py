"""Three-head note LSTM (seed 002's MidiRNN) over `notes`: protocol `note-step`.

A note is (pitch, step class, duration class) (companion/representations/notes.py: the
flat tokens are field offset + class). Three embeddings, concatenated, feed an LSTM; three
heads give the next note's pitch, step and duration. The heads are independent given the
past, as in the seed, so a note's NLL is the sum of the three and the unit is the note.

Step: input `note` int64 [B, 1, 3] (class indices, no offsets), state `h`, `c` [layers, B,
hidden]; outputs `pitch_logits` [B, 128], `step_logits` [B, n_step], `duration_logits`
[B, n_duration].

Metrical position (`meter`, on by default): the input gets a learned embedding of the note's
position in the beat (the onsets' running sum of steps, mod the representation's steps per
beat), counted from the piece's start in training and in a `time` state ([B, 1]) in the
step graph (the zero state = on a beat).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.data import sequence_batches

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
        meter: bool = False,
        steps_per_beat: int = 0,
    ):
        super().__init__()
        self.model_args = dict(
            embed=embed, hidden=hidden, layers=layers, dropout=dropout, meter=bool(meter)
        )
        self.beat = int(steps_per_beat) if meter else 0
        if self.beat:
            self.phase_emb = nn.Embedding(self.beat, 3 * embed)
        self.fields, self.hidden, self.layers = tuple(fields), hidden, layers
        self.embs = nn.ModuleList(nn.Embedding(n, embed) for n in self.fields)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            3 * embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.fields)

    def _embed(self, notes: Tensor, phase: Tensor | None = None) -> Tensor:
        """notes [B, T, 3] (and their positions in the beat [B, T]) -> [B, T, 3 * embed]"""
        x = torch.cat([e(notes[..., i]) for i, e in enumerate(self.embs)], dim=-1)
        if self.beat:
            x = x + self.phase_emb(notes[..., 1].cumsum(1) % self.beat if phase is None else phase)
        return x

    def forward(self, notes: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        y, _ = self.lstm(self.drop(self._embed(notes, phase)))
        y = self.drop(y)
        return tuple(head(y) for head in self.heads)  # each [B, T, n_field]

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        notes, mask = batch["notes"], batch["mask"]
        phase = batch.get("phase")
        target = mask[:, 1:]
        nll = 0
        heads = self(notes[:, :-1], None if phase is None else phase[:, :-1])
        for i, logits in enumerate(heads):
            ce = F.cross_entropy(logits.flatten(0, 1), notes[:, 1:, i].flatten(), reduction="none")
            nll = nll + (ce * target.flatten()).sum()
        return nll, target.sum()

    def step(self, note: Tensor, h: Tensor, c: Tensor, *time: Tensor):
        x = torch.cat([e(note[..., i]) for i, e in enumerate(self.embs)], dim=-1)
        if self.beat:
            t = time[0] + note[:, :, 1].to(time[0].dtype)  # [B, 1]
            t = t - torch.floor(t / self.beat) * self.beat
            x = x + self.phase_emb(t.long())
        y, (h, c) = self.lstm(x, (h, c))
        y = y[:, -1]
        return (*(head(y) for head in self.heads), h, c) + ((t,) if self.beat else ())

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec, StepModule

        shape = [self.layers, "B", self.hidden]
        zeros = torch.zeros(self.layers, 2, self.hidden)
        state = [{"name": "h", "shape": shape}, {"name": "c", "shape": shape}]
        time = (torch.zeros(2, 1),) if self.beat else ()
        if self.beat:
            state.append({"name": "time", "shape": ["B", 1]})

        def random_inputs(b, t, g):
            cols = [torch.randint(0, n, (b, t), generator=g) for n in self.fields]
            return {"note": torch.stack(cols, dim=-1)}

        return ExportSpec(
            module=StepModule(self),
            example_inputs=(
                torch.tensor([[[60, 0, 11]], [[62, 12, 5]]]) % torch.tensor(self.fields),
                zeros,
                zeros.clone(),
                *time,
            ),
            input_names=["note", *(s["name"] for s in state)],
            output_names=[*HEADS, *(s["name"] + "_out" for s in state)],
            state=state,
            random_inputs=random_inputs,
            sequence=lambda seq: dict(zip(HEADS, self(seq["note"]))),
        )


def build(family: str, rep, **model_args) -> NoteLSTM:
    if family != FAMILY:
        raise ValueError(f"models.note_lstm builds {FAMILY!r} (received {family!r})")
    if not hasattr(rep, "fields") or not hasattr(rep, "offsets"):
        raise ValueError(f"note-lstm needs the notes representation (received {rep.name!r})")
    meter = model_args.pop("meter", True)
    return NoteLSTM(rep.fields, meter=meter, steps_per_beat=rep.params.resolution, **model_args)


def to_triples(tokens: np.ndarray, rep) -> np.ndarray:
    """Flat `notes` tokens [3N] -> class triples [N, 3]."""
    return tokens.reshape(-1, 3) - np.asarray(rep.offsets, dtype=tokens.dtype)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Windows of note triples, each with its position in the beat counted from the piece's
    start (a window's first note is rarely on the beat)."""
    beat = rep.params.resolution
    with_phase = []
    for p in pieces:
        t = to_triples(p, rep)
        with_phase.append(np.concatenate([t, (np.cumsum(t[:, 1]) % beat)[:, None]], axis=1))
    for b in sequence_batches(with_phase, cfg, rng, train, key="notes"):
        both = b.pop("notes")
        yield {"notes": both[..., :3], "phase": both[..., 3], **b}
