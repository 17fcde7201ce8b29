"""multitrack-lstm: accompaniment one grid step at a time (protocol `multitrack-step`).

Over the `multitrack` representation (frames [T, K, P]: row 0 is the lead, rows 1..K-1 the
accompaniment). An LSTM runs over the past frames (all rows); within step t a small LSTM
reads the lead's row of step t and then emits the accompaniment rows in order, each row's
keys ascending followed by an end-of-row token, so the probability of a step's
accompaniment given the lead is exact (the nade-step construction, row by row).

Tokens: 0..P-1 = key of the current row, P = END (end of row), P+1 = BEGIN (start of a
step). One step is written BEGIN, lead keys, END, row-1 keys, END, ..., row-(K-1) keys, END.
The lead's tokens are read, not predicted (their loss is weighted by `lead_weight`, 0 by
default): the model learns p(rows 1..K-1 of step t | lead up to t, all rows before t).

Per-key logits: a head on the within-step LSTM (which gets a row embedding), a head on the
context, and optionally (`local_kernel > 0`) a 1-D convolution over the pitch axis of the
previous step's rows and this step's rows so far (linear when `local_channels` = 0, else
one hidden layer of that many channels), read out for the current row: voice
leading (the alto's last pitch) and vertical intervals (a sixth below the soprano) are
translation-equivariant, so every key shares them.

Metrical position (`meter`, on by default): the within-step LSTM's input gets a learned
embedding of the step's position in the beat (step index mod steps per beat, e.g. 4 on a
16th grid), counted from the piece's start in training; the step graph counts it in a
`beat_pos` state ([B, 1]: the position of the next step to begin; the zero state = on a
beat), which a driver that starts off the beat sets.

Step protocol (one ONNX graph, batch dynamic): input `token` [B, 1] int64; state `h`, `c`
(step LSTM, [L, B, H]), `dh`, `dc` (within-step LSTM, [B, Hd]), `acc` (this step's rows so
far, [B, K*P]), `prev` (the last complete step, [B, K*P]), `row` ([B, 1], the row the next
token belongs to); output `logits` [B, P+1] over the next token (a key of the current row,
or END). BEGIN feeds `acc` to the step LSTM (from the zero state, an empty step, as
training prepends one), moves it to `prev`, clears it and restarts the within-step LSTM
at row 0; a key adds itself to `acc` at the current row; END moves to the next row. After
the K-th END the outputs are not used: the driver feeds BEGIN for the next step. The driver
masks keys at or below the last key of the current row, as for nade-step (mask_logits).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.roll_nade import _dynamic_axes, _lstm_cell, mask_logits

FAMILY = "multitrack-lstm"
PROTOCOL = "multitrack-step"


class MultitrackLSTM(nn.Module):
    family = FAMILY
    protocol = PROTOCOL

    def __init__(
        self,
        keys: int,
        tracks: int,
        hidden: int = 256,
        layers: int = 2,
        dec_hidden: int = 192,
        dec_embed: int = 64,
        dropout: float = 0.3,
        local_kernel: int = 0,
        local_channels: int = 16,
        lead_weight: float = 0.0,
        meter: int = 0,
    ):
        super().__init__()
        if tracks < 2:
            raise ValueError(
                f"multitrack-lstm needs a lead and >= 1 other track (received {tracks} tracks)"
            )
        self.model_args = dict(
            keys=keys,
            tracks=tracks,
            hidden=hidden,
            layers=layers,
            dec_hidden=dec_hidden,
            dec_embed=dec_embed,
            dropout=dropout,
            local_kernel=local_kernel,
            local_channels=local_channels,
            lead_weight=lead_weight,
            meter=meter,
        )
        self.P, self.K, self.H, self.L, self.Hd = keys, tracks, hidden, layers, dec_hidden
        self.lead_weight = lead_weight
        self.frame_lstm = nn.LSTM(
            tracks * keys, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(keys + 2, dec_embed)
        self.row_embed = nn.Embedding(tracks + 1, dec_embed)  # row K: the step is complete
        self.ctx_in = nn.Linear(hidden, dec_embed)
        self.ctx_init = nn.Linear(hidden, 2 * dec_hidden)
        self.dec = nn.LSTMCell(dec_embed, dec_hidden)
        self.dec_head = nn.Linear(dec_hidden, keys + 1)
        self.ctx_head = nn.Linear(hidden, keys + 1)
        self.beat = int(meter)  # steps per beat; 0 = no metrical input
        if self.beat:
            self.phase_embed = nn.Embedding(self.beat, dec_embed)
        self.local = None
        if local_kernel:
            if local_kernel % 2 == 0:
                raise ValueError(f"local_kernel must be odd (received {local_kernel})")
            pad = local_kernel // 2
            if local_channels:
                self.local = nn.Sequential(
                    nn.Conv1d(2 * tracks, local_channels, local_kernel, padding=pad),
                    nn.Tanh(),
                    nn.Conv1d(local_channels, tracks + 1, 1),
                )
            else:  # linear: a learned bias per interval, row and source row
                self.local = nn.Conv1d(2 * tracks, tracks + 1, local_kernel, padding=pad)

    @property
    def BEGIN(self) -> int:
        return self.P + 1

    # ---- shared pieces -----------------------------------------------------------------
    def _init_dec(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        h0, c0 = torch.tanh(self.ctx_init(ctx)).chunk(2, dim=-1)
        return h0.contiguous(), c0.contiguous()

    def _logits(self, d: Tensor, ctx: Tensor, prev: Tensor, acc: Tensor, row: Tensor) -> Tensor:
        """Next-token logits [N, P+1]; prev, acc [N, K*P]; row [N] int64 in 0..K."""
        logits = self.dec_head(d) + self.ctx_head(ctx)
        if self.local is not None:
            N = d.shape[0]
            x = torch.cat([prev.view(N, self.K, self.P), acc.view(N, self.K, self.P)], 1)
            bias = self.local(x)  # [N, K+1, P]
            bias = bias.gather(1, row.view(N, 1, 1).expand(N, 1, self.P))[:, 0]
            logits = logits + F.pad(bias, (0, 1))
        return logits

    def _decode(
        self, ctx: Tensor, prev: Tensor, inputs: Tensor, phase: Tensor | None = None
    ) -> Tensor:
        """Raw next-token logits [F, S, P+1] for F steps whose within-step LSTMs read
        `inputs` [F, S] (BEGIN, then keys and ENDs), given contexts [F, H], the previous
        steps [F, K*P] and each step's position in the beat [F]."""
        P, K = self.P, self.K
        Fn, S = inputs.shape
        row = (inputs == P).long().cumsum(1).clamp(max=K)  # row of the token after each input
        x = (
            self.drop(self.embed(inputs)) + self.ctx_in(ctx)[:, None] + self.row_embed(row)
        )  # [F, S, E]
        if self.beat:
            x = x + self.phase_embed(phase)[:, None]
        h, c = self._init_dec(ctx)
        outs = []
        for s in range(S):
            h, c = self.dec(x[:, s], (h, c))
            outs.append(h)
        d = self.drop(torch.stack(outs, 1))
        # this step's rows so far: each key input lands at (its row, key)
        key_row = row - (inputs == P).long()  # a key's row: ENDs before it
        is_key = inputs < P
        slot = torch.where(
            is_key,
            key_row.clamp(max=K - 1) * P + inputs.clamp(max=P - 1),
            torch.full_like(inputs, K * P),
        )
        acc = F.one_hot(slot, K * P + 1)[..., : K * P].to(ctx.dtype).cumsum(1)  # [F, S, K*P]
        logits = self._logits(
            d.reshape(Fn * S, -1),
            ctx.repeat_interleave(S, 0),
            prev.repeat_interleave(S, 0),
            acc.reshape(Fn * S, K * P),
            row.reshape(-1),
        )
        return logits.view(Fn, S, P + 1)

    # ---- training ---------------------------------------------------------------------
    def _context(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        B, T, K, P = frames.shape
        flat = frames.reshape(B, T, K * P)
        prevs = torch.cat([flat.new_zeros(B, 1, K * P), flat[:, :-1]], 1)
        ctx, _ = self.frame_lstm(prevs)  # ctx[t] has read steps < t
        return self.drop(ctx), prevs

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(summed NLL in nats of the accompaniment rows over the scored steps, steps)."""
        ctx, prevs = self._context(batch["frames"])
        valid = batch["valid"]
        seq = batch["tokens"][valid]  # [F, S+1]: BEGIN, lead keys, END, ..., END, -1 pad
        inputs = seq[:, :-1].clamp(min=0)
        targets = seq[:, 1:]
        inputs = torch.where(seq[:, :-1] < 0, self.P, inputs)  # padding: its loss is ignored
        phase = batch["phase"][valid] % max(self.beat, 1)
        logits = mask_logits(self._decode(ctx[valid], prevs[valid], inputs, phase), inputs)
        nll = F.cross_entropy(
            logits.reshape(-1, self.P + 1), targets.reshape(-1).clamp(min=0), reduction="none"
        ).view(targets.shape)
        lead = (inputs == self.P).long().cumsum(1) == 0  # target still in the lead row
        weight = torch.where(lead, self.lead_weight, 1.0) * (targets >= 0)
        return (nll * weight).sum(), torch.tensor(float(seq.shape[0]))

    def stream_logits(self, tokens: Tensor) -> Tensor:
        """Full-sequence forward of the step protocol: raw logits [B, T, P+1] after each token
        of `tokens` [B, T] (each row a multitrack-step stream starting with BEGIN)."""
        P, K = self.P, self.K
        B, T = tokens.shape
        out = torch.zeros(B, T, P + 1)
        for b in range(B):
            row = tokens[b]
            starts = torch.nonzero(row == self.BEGIN)[:, 0].tolist()
            if not starts or starts[0] != 0:
                raise ValueError("a multitrack-step stream starts with BEGIN")
            bounds = starts + [T]
            segs = [row[a:e] for a, e in zip(bounds[:-1], bounds[1:])]
            frames = torch.zeros(len(segs), K * P)
            for j, seg in enumerate(segs):
                r = 0
                for tok in seg[1:].tolist():
                    if tok == P:
                        r += 1
                    elif r < K:
                        frames[j, r * P + tok] = 1
            prevs = torch.cat([torch.zeros(1, K * P), frames[:-1]])
            ctx, _ = self.frame_lstm(prevs[None])
            width = max(len(s) for s in segs)
            inputs = torch.full((len(segs), width), P, dtype=torch.int64)
            for j, seg in enumerate(segs):
                inputs[j, : len(seg)] = seg
            phase = torch.arange(len(segs)) % max(self.beat, 1)
            logits = self._decode(ctx[0], prevs, inputs, phase)
            for j, (a, seg) in enumerate(zip(bounds[:-1], segs)):
                out[b, a : a + len(seg)] = logits[j, : len(seg)]
        return out

    # ---- export -------------------------------------------------------------------------
    def state_spec(self) -> list[dict]:
        KP = self.K * self.P
        return [
            {"name": "h", "shape": [self.L, "B", self.H]},
            {"name": "c", "shape": [self.L, "B", self.H]},
            {"name": "dh", "shape": ["B", self.Hd]},
            {"name": "dc", "shape": ["B", self.Hd]},
            {"name": "acc", "shape": ["B", KP]},
            {"name": "prev", "shape": ["B", KP]},
            {"name": "row", "shape": ["B", 1]},
        ] + ([{"name": "beat_pos", "shape": ["B", 1]}] if self.beat else [])

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec

        step = MultitrackStep(self)
        example = (torch.tensor([[self.BEGIN], [3]], dtype=torch.int64),) + step.zero_state(2)
        names = [s["name"] for s in self.state_spec()]
        return ExportSpec(
            module=step,
            example_inputs=example,
            input_names=["token"] + names,
            output_names=["logits"] + [f"{n}_out" for n in names],
            dynamic_axes=_dynamic_axes(self.state_spec()),
            state=self.state_spec(),
            random_inputs=lambda b, t, g: {"token": random_stream(b, t, self.P, self.K, g)},
            sequence=lambda inputs: {"logits": self.stream_logits(inputs["token"])},
        )


def random_stream(batch: int, steps: int, keys: int, tracks: int, gen: torch.Generator) -> Tensor:
    """Valid multitrack-step streams [batch, steps]: BEGIN, then per row 0..2 ascending keys
    and END, K rows per step (the last step may be cut off)."""
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < steps:
            row.append(keys + 1)
            for _ in range(tracks):
                n = int(torch.randint(0, 3, (1,), generator=gen))
                row += torch.randperm(keys, generator=gen)[:n].sort().values.tolist() + [keys]
        rows.append(row[:steps])
    return torch.tensor(rows, dtype=torch.int64)


class MultitrackStep(nn.Module):
    """The `multitrack-step` graph: one token in, next-token logits out, state in and out."""

    def __init__(self, model: MultitrackLSTM):
        super().__init__()
        self.m = model

    def zero_state(self, batch: int) -> tuple[Tensor, ...]:
        m = self.m
        KP = m.K * m.P
        return (
            torch.zeros(m.L, batch, m.H),
            torch.zeros(m.L, batch, m.H),
            torch.zeros(batch, m.Hd),
            torch.zeros(batch, m.Hd),
            torch.zeros(batch, KP),
            torch.zeros(batch, KP),
            torch.zeros(batch, 1),
        ) + ((torch.zeros(batch, 1),) if m.beat else ())

    def forward(
        self,
        token: Tensor,
        h: Tensor,
        c: Tensor,
        dh: Tensor,
        dc: Tensor,
        acc: Tensor,
        prev: Tensor,
        row: Tensor,
        *beat_pos: Tensor,
    ):
        m = self.m
        P, K = m.P, m.K
        tok = token[:, 0]
        begin = (tok == P + 1)[:, None]
        end = (tok == P)[:, None]
        x = acc
        hs, cs = [], []
        for layer in range(m.L):
            w_ih = getattr(m.frame_lstm, f"weight_ih_l{layer}")
            w_hh = getattr(m.frame_lstm, f"weight_hh_l{layer}")
            b = getattr(m.frame_lstm, f"bias_ih_l{layer}") + getattr(
                m.frame_lstm, f"bias_hh_l{layer}"
            )
            hl, cl = _lstm_cell(x, h[layer], c[layer], w_ih, w_hh, b)
            hs.append(torch.where(begin, hl, h[layer]))
            cs.append(torch.where(begin, cl, c[layer]))
            x = hl
        h_new, c_new = torch.stack(hs), torch.stack(cs)
        ctx = h_new[-1]
        prev_new = torch.where(begin, acc, prev)
        row_i = row[:, 0].long()
        slot = row_i.clamp(max=K - 1) * P + tok.clamp(max=P - 1)
        onehot = F.one_hot(slot, K * P).to(acc.dtype)
        is_key = (tok < P)[:, None]
        acc_new = torch.where(begin, torch.zeros_like(acc), torch.where(is_key, acc + onehot, acc))
        row_new = torch.where(
            begin, torch.zeros_like(row), torch.where(end, (row + 1).clamp(max=K), row)
        )
        h0, c0 = m._init_dec(ctx)
        dh_in = torch.where(begin, h0, dh)
        dc_in = torch.where(begin, c0, dc)
        r = row_new[:, 0].long()
        xin = m.embed(tok) + m.ctx_in(ctx) + m.row_embed(r)
        extra = ()
        if m.beat:
            nxt = beat_pos[0]  # position of the next step to begin
            cur = torch.where(begin, nxt, nxt - 1)
            cur = cur - torch.floor(cur / m.beat) * m.beat
            nxt = torch.where(begin, nxt + 1, nxt)
            extra = (nxt - torch.floor(nxt / m.beat) * m.beat,)
            xin = xin + m.phase_embed(cur[:, 0].long())
        dh_new, dc_new = m.dec(xin, (dh_in, dc_in))
        logits = m._logits(dh_new, ctx, prev_new, acc_new, r)
        return (logits, h_new, c_new, dh_new, dc_new, acc_new, prev_new, row_new) + extra


# ---- family contract ---------------------------------------------------------------------
def build(family: str, rep, **model_args) -> MultitrackLSTM:
    if family != FAMILY:
        raise ValueError(f"models.multitrack_lstm builds {FAMILY!r} (received {family!r})")
    K, P = rep.frame_shape
    model_args.setdefault("keys", P)
    model_args.setdefault("tracks", K)
    meter = model_args.pop("meter", True)
    model_args["meter"] = max(1, round(1 / rep.params.grid)) if meter else 0
    return MultitrackLSTM(**model_args)


def step_tokens(frame: np.ndarray, P: int) -> list[int]:
    """One step [K, P] -> BEGIN, then each row's keys ascending and END."""
    out = [P + 1]
    for r in frame:
        out.extend(np.nonzero(r)[0].tolist())
        out.append(P)
    return out


def collate(rolls: list[np.ndarray], starts: list[int] | None = None) -> dict[str, Tensor]:
    """Pad rolls [T, K, P] into a batch; every step is scored. `starts`: each roll's first
    step's index in its piece (its metrical position), 0 by default."""
    B, T = len(rolls), max(len(r) for r in rolls)
    K, P = rolls[0].shape[1:]
    width = max(int(r.sum((1, 2)).max(initial=0)) for r in rolls) + K + 1
    frames = np.zeros((B, T, K, P), dtype=np.float32)
    tokens = np.full((B, T, width), -1, dtype=np.int64)
    valid = np.zeros((B, T), dtype=bool)
    for i, r in enumerate(rolls):
        frames[i, : len(r)] = r
        for t, f in enumerate(r):
            toks = step_tokens(f, P)
            tokens[i, t, : len(toks)] = toks
        valid[i, : len(r)] = True
    starts = starts or [0] * B
    phase = torch.as_tensor(starts)[:, None] + torch.arange(T)[None]
    return {
        "frames": torch.from_numpy(frames),
        "tokens": torch.from_numpy(tokens),
        "valid": torch.from_numpy(valid),
        "phase": phase,
    }


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Training: shuffled windows of `seq_len` steps (transposition is the loop's: `[data]
    augment`), each with its first step's index in its piece. Evaluation: whole pieces."""
    bs = int(cfg.get("batch_size", 16))
    if not train:
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        budget = 8192  # steps per eval batch
        group: list[np.ndarray] = []
        for i in order:
            if group and len(pieces[i]) * (len(group) + 1) > budget:
                yield collate(group)
                group = []
            group.append(np.asarray(pieces[i]))
        if group:
            yield collate(group)
        return
    seq_len = int(cfg.get("seq_len", 0))
    windows = []
    for p in pieces:
        p = np.asarray(p)
        if seq_len and len(p) > seq_len:
            phase = int(rng.integers(0, seq_len))
            windows.extend(
                (p[max(s, 0) : s + seq_len], max(s, 0))
                for s in range(-phase, len(p), seq_len)
                if len(p[max(s, 0) : s + seq_len])
            )
        else:
            windows.append((p, 0))
    order = rng.permutation(len(windows))
    windows = [windows[j] for j in order]
    for i in range(0, len(windows), bs):
        chunk = windows[i : i + bs]
        yield collate([w for w, _ in chunk], [start for _, start in chunk])
