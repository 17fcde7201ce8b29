"""roll-nade-lstm: a frame-exact piano-roll model (protocol `nade-step`).

An LSTM runs over the past frames; for the frame it predicts, a small within-frame LSTM
emits the frame's keys one at a time in ascending order, then an end-of-frame token. Keys at
or below the last key emitted are masked, so each set of keys has exactly one token sequence
and the probability of a whole frame is exact: the product of its tokens' probabilities.

Tokens: 0..P-1 = key, P = END (end of frame). END doubles as the frame's start token: the
decoder of frame t reads [END, k1, ..., kn] and predicts [k1, ..., kn, END].

Per-key logits are the sum of
- a head on the within-frame LSTM (what the frame so far and the context make likely),
- a head on the frame context (the frame LSTM's output),
- optionally (`local_kernel > 0`) a 1-D convolution over the pitch axis of the previous
  frame and the keys emitted so far (linear when `local_channels` = 0, else one hidden
  layer of that many channels): a translation-equivariant term ("the held key again",
  "a third above the last emitted key") that every key shares, which the absolute heads
  would each have to learn on their own.

Step protocol (one ONNX graph, batch dynamic): input `token` [B, 1]; state `h`, `c` (frame
LSTM, [L, B, H]), `dh`, `dc` (within-frame LSTM, [B, Hd]), `acc` (keys of the frame so far,
[B, P]), `prev` (the last complete frame, [B, P]). A key token adds itself to `acc` and
steps the within-frame LSTM; END feeds `acc` to the frame LSTM, moves it to `prev`, clears
it, and restarts the within-frame LSTM from the new context. Both branches are computed
and selected with torch.where. From the zero state, feed END first: the frame LSTM then
reads an empty frame, exactly as training prepends one. The driver masks keys at or below
the last key of the frame (outside the graph: companion.sampling.ascending_mask); the
training loss applies the same mask (mask_logits, its torch twin).

Learned initial state (`learn_init`, default true; checkpoints from before it load without
it, as the zero-state models they were): the model keeps offsets `init_h`, `init_c` [L, 1, H],
the frame LSTM's state before the first frame (the full-sequence forward starts there). The
step protocol still starts every state at zeros: the graph reads its frame state as
(h + init_h, c + init_c) and writes (h_new - init_h, c_new - init_c), so the all-zero state
is the learned initial state and drivers need not know. Frame 0 is then predicted from a
trained state, not from zeros (it costs most where pieces are short).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAMILY = "roll-nade-lstm"
PROTOCOL = "nade-step"


def _lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step with nn.LSTM's weight layout (gates i, f, g, o)."""
    gates = x @ w_ih.t() + h @ w_hh.t() + b  # [B, 4H]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


class _FrameLoss:
    """The loss shared by the single model and the ensemble: masked token logits -> NLL."""

    def token_logits(
        self, frames: Tensor, tokens: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """raw_token_logits with the ascending-keys mask applied (the model's distribution)."""
        logits, targets, inputs = self.raw_token_logits(frames, tokens, valid)
        return mask_logits(logits, inputs), targets, inputs

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(summed NLL in nats over scored frames, number of scored frames)."""
        logits, targets, _ = self.token_logits(batch["frames"], batch["tokens"], batch["valid"])
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
        return nll, torch.tensor(float(targets.shape[0]))

    def per_frame_nll(self, batch: dict[str, Tensor]) -> Tensor:
        """NLL of each scored frame [F] (for ensembles: average probabilities, not NLLs)."""
        logits, targets, _ = self.token_logits(batch["frames"], batch["tokens"], batch["valid"])
        lp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return -torch.where(targets >= 0, lp, torch.zeros_like(lp)).sum(1)


class RollNade(_FrameLoss, nn.Module):
    family = FAMILY
    protocol = PROTOCOL

    def __init__(
        self,
        keys: int = 88,
        hidden: int = 256,
        layers: int = 2,
        dec_hidden: int = 128,
        dec_embed: int = 64,
        dropout: float = 0.3,
        local_kernel: int = 0,
        local_channels: int = 16,
        learn_init: bool = True,
    ):
        super().__init__()
        self.model_args = dict(
            keys=keys,
            hidden=hidden,
            layers=layers,
            dec_hidden=dec_hidden,
            dec_embed=dec_embed,
            dropout=dropout,
            local_kernel=local_kernel,
            local_channels=local_channels,
            learn_init=bool(learn_init),
        )
        self.P, self.H, self.L, self.Hd = keys, hidden, layers, dec_hidden
        self.learn_init = bool(learn_init)
        if self.learn_init:  # the frame LSTM's initial state (h, c) per layer; zeros at first
            # [L, 1, H]: the step graph adds them to its state [L, B, H] as they are, so
            # they stay named initializers of the ONNX file (export/recover_checkpoint.py)
            self.init_h = nn.Parameter(torch.zeros(layers, 1, hidden))
            self.init_c = nn.Parameter(torch.zeros(layers, 1, hidden))
        self.frame_lstm = nn.LSTM(
            keys, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(keys + 1, dec_embed)
        self.ctx_in = nn.Linear(hidden, dec_embed)
        self.ctx_init = nn.Linear(hidden, 2 * dec_hidden)
        self.dec = nn.LSTMCell(dec_embed, dec_hidden)
        self.dec_head = nn.Linear(dec_hidden, keys + 1)
        self.ctx_head = nn.Linear(hidden, keys + 1)
        self.local = None
        if local_kernel:
            if local_kernel % 2 == 0:
                raise ValueError(f"local_kernel must be odd (received {local_kernel})")
            pad = local_kernel // 2
            if local_channels:
                self.local = nn.Sequential(
                    nn.Conv1d(2, local_channels, local_kernel, padding=pad),
                    nn.Tanh(),
                    nn.Conv1d(local_channels, 1, 1),
                )
            else:  # linear: a learned bias per interval to each held and emitted key
                self.local = nn.Conv1d(2, 1, local_kernel, padding=pad)

    # ---- the learned initial state ----------------------------------------------------
    def initial_state(self, batch: int) -> tuple[Tensor, Tensor] | None:
        """The frame LSTM's initial (h, c) [L, batch, H]: the learned offsets, or None (zeros)
        without `learn_init`."""
        if not self.learn_init:
            return None
        return (
            self.init_h.expand(-1, batch, -1).contiguous(),
            self.init_c.expand(-1, batch, -1).contiguous(),
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before `learn_init` (no offsets in its weights, no key in its
        # model_args, so built here with the default) loads as the model it was: zero state.
        if (
            self.learn_init
            and prefix + "init_h" not in state_dict
            and prefix + "frame_lstm.weight_ih_l0" in state_dict
        ):
            del self.init_h, self.init_c
            self.learn_init = False
            self.model_args["learn_init"] = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- shared pieces -----------------------------------------------------------------
    def _logits(self, d: Tensor, ctx: Tensor, prev: Tensor, acc: Tensor) -> Tensor:
        """Next-token logits [N, P+1] from decoder output, context and the two rolls."""
        logits = self.dec_head(d) + self.ctx_head(ctx)
        if self.local is not None:
            bias = self.local(torch.stack([prev, acc], dim=1)).squeeze(1)  # [N, P]
            logits = logits + F.pad(bias, (0, 1))
        return logits

    def _init_dec(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        h0, c0 = torch.tanh(self.ctx_init(ctx)).chunk(2, dim=-1)
        return h0.contiguous(), c0.contiguous()

    # ---- training: teacher-forced over whole frames -----------------------------------
    def raw_token_logits(
        self, frames: Tensor, tokens: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced logits for the scored frames, before the mask.

        frames [B, T, P] float; tokens [B, T, N+1] int64: frame t's key indices ascending
        then END, padded with -1; valid [B, T] bool: frames that are scored.
        Returns (logits [F, N+1, P+1], targets [F, N+1], inputs [F, N+1]).
        """
        B, T, P = frames.shape
        prevs = torch.cat([frames.new_zeros(B, 1, P), frames[:, :-1]], dim=1)  # [B, T, P]
        ctx, _ = self.frame_lstm(prevs, self.initial_state(B))  # ctx[t]: read frames < t
        ctx = self.drop(ctx)
        ctx, prev, targets = ctx[valid], prevs[valid], tokens[valid]  # F rows
        inputs = torch.cat([targets.new_full((targets.shape[0], 1), P), targets[:, :-1]], 1)
        inputs = torch.where(inputs < 0, P, inputs)  # padding reads END; its loss is ignored
        return self._decode(ctx, prev, inputs), targets, inputs

    def _decode(self, ctx: Tensor, prev: Tensor, inputs: Tensor) -> Tensor:
        """Raw next-token logits [F, S, P+1] of F frames whose decoders read `inputs`
        [F, S] (END, then keys), given their contexts [F, H] and previous frames [F, P]."""
        P = self.P
        Fn, S = inputs.shape
        x = self.drop(self.embed(inputs)) + self.ctx_in(ctx)[:, None]  # [F, S, E]
        h, c = self._init_dec(ctx)
        outs = []
        for s in range(S):  # S <= max keys per frame + 1: a handful of steps
            h, c = self.dec(x[:, s], (h, c))
            outs.append(h)
        d = self.drop(torch.stack(outs, 1))  # [F, S, Hd]
        # keys read before position s+1: acc[s] = multi-hot of inputs[1..s]
        onehot = F.one_hot(inputs, P + 1)[..., :P].to(ctx.dtype)  # END adds no key
        acc = onehot.cumsum(1)  # [F, S, P]
        logits = self._logits(
            d.reshape(Fn * S, -1),
            ctx.repeat_interleave(S, 0),
            prev.repeat_interleave(S, 0),
            acc.reshape(Fn * S, P),
        )
        return logits.view(Fn, S, P + 1)

    def stream_logits(self, tokens: Tensor) -> Tensor:
        """The full-sequence forward of the step protocol: raw logits [B, T, P+1] after
        each token of `tokens` [B, T] (each row a `nade-step` stream starting with END),
        equal to what the step graph outputs token by token."""
        P = self.P
        B, T = tokens.shape
        out = torch.zeros(B, T, P + 1)
        for b in range(B):
            row = tokens[b]
            starts = torch.nonzero(row == P)[:, 0].tolist()
            if not starts or starts[0] != 0:
                raise ValueError("a nade-step stream starts with END")
            bounds = starts + [T]
            segs = [row[a + 1 : e] for a, e in zip(bounds[:-1], bounds[1:])]  # keys
            frames = torch.zeros(len(segs), P)
            for j, keys in enumerate(segs):
                frames[j, keys] = 1
            prevs = torch.cat([torch.zeros(1, P), frames[:-1]])  # what segment j follows
            ctx, _ = self.frame_lstm(prevs[None], self.initial_state(1))  # j: frames < j
            width = max(len(k) for k in segs) + 1
            inputs = torch.full((len(segs), width), P, dtype=torch.int64)
            for j, keys in enumerate(segs):
                inputs[j, 1 : len(keys) + 1] = keys
            logits = self._decode(ctx[0], prevs, inputs)
            for j, (a, keys) in enumerate(zip(bounds[:-1], segs)):
                out[b, a : a + len(keys) + 1] = logits[j, : len(keys) + 1]
        return out

    # ---- export -------------------------------------------------------------------------
    def state_spec(self) -> list[dict]:
        return [
            {"name": "h", "shape": [self.L, "B", self.H]},
            {"name": "c", "shape": [self.L, "B", self.H]},
            {"name": "dh", "shape": ["B", self.Hd]},
            {"name": "dc", "shape": ["B", self.Hd]},
            {"name": "acc", "shape": ["B", self.P]},
            {"name": "prev", "shape": ["B", self.P]},
        ]

    def export_spec(self):
        return _export_spec(self, NadeStep(self))


def _dynamic_axes(state: list[dict]) -> dict[str, dict[int, str]]:
    axes = {"token": {0: "B"}, "logits": {0: "B"}}
    for s in state:
        i = s["shape"].index("B")
        axes[s["name"]] = {i: "B"}
        axes[s["name"] + "_out"] = {i: "B"}
    return axes


def random_stream(batch: int, steps: int, keys: int, gen: torch.Generator) -> Tensor:
    """Valid `nade-step` streams [batch, steps]: END, then frames of 0..6 ascending keys
    each followed by END (the last frame may be cut off)."""
    rows = []
    for _ in range(batch):
        row = [keys]
        while len(row) < steps:
            n = int(torch.randint(0, 7, (1,), generator=gen))
            ks = torch.randperm(keys, generator=gen)[:n].sort().values.tolist()
            row += ks + [keys]
        rows.append(row[:steps])
    return torch.tensor(rows, dtype=torch.int64)


def mask_logits(logits: Tensor, inputs: Tensor) -> Tensor:
    """Mask keys at or below the last key read (inputs < P); END (= P) or BEGIN masks
    nothing. The training side of the rule the drivers and `companion eval` apply with
    companion.sampling.ascending_mask (tests/test_roll_nade.py holds the two equal)."""
    P = logits.shape[-1] - 1
    last = torch.where(inputs >= P, torch.full_like(inputs, -1), inputs)
    below = torch.arange(P, device=logits.device) <= last[..., None]
    return torch.cat([logits[..., :P].masked_fill(below, float("-inf")), logits[..., P:]], -1)


class NadeStep(nn.Module):
    """The `nade-step` graph: one token in, next-token logits out, state in and out."""

    def __init__(self, model: RollNade):
        super().__init__()
        self.m = model

    def zero_state(self, batch: int) -> tuple[Tensor, ...]:
        m = self.m
        return (
            torch.zeros(m.L, batch, m.H),
            torch.zeros(m.L, batch, m.H),
            torch.zeros(batch, m.Hd),
            torch.zeros(batch, m.Hd),
            torch.zeros(batch, m.P),
            torch.zeros(batch, m.P),
        )

    def forward(
        self, token: Tensor, h: Tensor, c: Tensor, dh: Tensor, dc: Tensor, acc: Tensor, prev: Tensor
    ):
        m = self.m
        tok = token[:, 0]  # [B]
        end = (tok == m.P)[:, None]  # [B, 1]
        # END branch: the finished frame (acc) steps the frame LSTM
        x = acc
        # with learn_init the state tensors hold the offset from the learned initial state
        h_abs, c_abs = (h + m.init_h, c + m.init_c) if m.learn_init else (h, c)
        hs, cs = [], []
        for layer in range(m.L):
            w_ih = getattr(m.frame_lstm, f"weight_ih_l{layer}")
            w_hh = getattr(m.frame_lstm, f"weight_hh_l{layer}")
            b = getattr(m.frame_lstm, f"bias_ih_l{layer}") + getattr(
                m.frame_lstm, f"bias_hh_l{layer}"
            )
            hl, cl = _lstm_cell(x, h_abs[layer], c_abs[layer], w_ih, w_hh, b)
            hs.append(torch.where(end, hl, h_abs[layer]))
            cs.append(torch.where(end, cl, c_abs[layer]))
            x = hl
        h_new, c_new = torch.stack(hs), torch.stack(cs)
        ctx = h_new[-1]
        if m.learn_init:  # written back as the offset; a key token's state passes exactly
            h_new = torch.where(end, h_new - m.init_h, h)
            c_new = torch.where(end, c_new - m.init_c, c)
        prev_new = torch.where(end, acc, prev)
        onehot = F.one_hot(tok, m.P + 1)[:, : m.P].to(acc.dtype)
        acc_new = torch.where(end, torch.zeros_like(acc), acc + onehot)
        h0, c0 = m._init_dec(ctx)
        dh_in = torch.where(end, h0, dh)
        dc_in = torch.where(end, c0, dc)
        xin = m.embed(tok) + m.ctx_in(ctx)
        dh_new, dc_new = m.dec(xin, (dh_in, dc_in))
        logits = m._logits(dh_new, ctx, prev_new, acc_new)
        return logits, h_new, c_new, dh_new, dc_new, acc_new, prev_new


def _export_spec(model, step: nn.Module):
    """The nade-step graph of `model` (single or ensemble): one token in, logits and the
    state tensors out; parity against the model's full-sequence `stream_logits`."""
    from midi_companion.models.export_spec import ExportSpec

    example = (torch.tensor([[model.P], [3]], dtype=torch.int64),) + step.zero_state(2)
    names = [s["name"] for s in model.state_spec()]
    return ExportSpec(
        module=step,
        example_inputs=example,
        input_names=["token"] + names,
        output_names=["logits"] + [f"{n}_out" for n in names],
        dynamic_axes=_dynamic_axes(model.state_spec()),
        state=model.state_spec(),
        random_inputs=lambda b, t, g: {"token": random_stream(b, t, model.P, g)},
        sequence=lambda inputs: {"logits": model.stream_logits(inputs["token"])},
    )


def _mix(logits: list[Tensor]) -> Tensor:
    """Token-level ensemble: log of the members' mean next-token distribution."""
    lp = torch.stack([x.log_softmax(-1) for x in logits])
    return torch.logsumexp(lp, 0) - math.log(len(logits))


class RollNadeEnsemble(_FrameLoss, nn.Module):
    """Several roll-nade-lstm models whose next-token distributions are averaged at every
    token (before the ascending-keys mask, which then renormalizes): still one exact,
    normalized distribution over each frame, and still the `nade-step` protocol, with
    each member's state tensors suffixed `_<i>`."""

    family = FAMILY
    protocol = PROTOCOL

    def __init__(self, members: list[dict]):
        super().__init__()
        self.members = nn.ModuleList(RollNade(**m) for m in members)
        self.P = self.members[0].P
        if any(m.P != self.P for m in self.members):
            raise ValueError("ensemble members must have the same number of keys")

    @property
    def model_args(self) -> dict:  # read at save time: a member may have loaded old weights
        return {"members": [dict(m.model_args) for m in self.members]}

    def raw_token_logits(self, frames, tokens, valid):
        outs = [m.raw_token_logits(frames, tokens, valid) for m in self.members]
        return _mix([o[0] for o in outs]), outs[0][1], outs[0][2]

    def stream_logits(self, tokens: Tensor) -> Tensor:
        return _mix([m.stream_logits(tokens) for m in self.members])

    def state_spec(self) -> list[dict]:
        return [
            {"name": f"{s['name']}_{i}", "shape": s["shape"]}
            for i, m in enumerate(self.members)
            for s in m.state_spec()
        ]

    def export_spec(self):
        return _export_spec(self, EnsembleStep(self))


class EnsembleStep(nn.Module):
    def __init__(self, model: RollNadeEnsemble):
        super().__init__()
        self.steps = nn.ModuleList(NadeStep(m) for m in model.members)

    def zero_state(self, batch: int) -> tuple[Tensor, ...]:
        return tuple(x for s in self.steps for x in s.zero_state(batch))

    def forward(self, token: Tensor, *state: Tensor):
        logits, new, i = [], [], 0
        for s in self.steps:
            n = len(s.m.state_spec())
            out = s(token, *state[i : i + n])
            logits.append(out[0])
            new.extend(out[1:])
            i += n
        return (_mix(logits), *new)


# ---- family contract ---------------------------------------------------------------------
def build(family: str, rep, **model_args) -> RollNade | RollNadeEnsemble:
    """A roll-nade-lstm; `members = [{model args}, ...]` builds a token-level ensemble."""
    if family != FAMILY:
        raise ValueError(f"models.roll_nade builds {FAMILY!r} (received {family!r})")
    if "members" in model_args:
        model_args.pop("dropout", None)  # members carry their own
        return RollNadeEnsemble(**model_args)
    keys = model_args.pop("keys", None) or rep.vocab_size
    return RollNade(keys=keys, **model_args)


def ensemble(rep, checkpoints: list[dict]) -> RollNadeEnsemble:
    """The token-level ensemble of trained roll-nade-lstm checkpoints (same representation),
    in eval mode; `companion train` builds it for `[train] seeds`."""
    for ck in checkpoints:
        if ck["family"] != FAMILY or ck["representation"] != checkpoints[0]["representation"]:
            raise ValueError(f"an ensemble needs {FAMILY} members over one representation")
    model = build(FAMILY, rep, members=[{**ck["model_args"], "dropout": 0.0} for ck in checkpoints])
    for member, ck in zip(model.members, checkpoints):
        member.load_state_dict(ck["state_dict"])
    return model.eval()


def frame_tokens(frames: np.ndarray, width: int | None = None) -> np.ndarray:
    """[T, P] multi-hot -> [T, width] int64: each frame's keys ascending, END (= P), -1 pad."""
    T, P = frames.shape
    counts = frames.sum(1).astype(np.int64)
    width = int(counts.max(initial=0)) + 1 if width is None else width
    out = np.full((T, width), -1, dtype=np.int64)
    t_idx, k_idx = np.nonzero(frames)  # row-major: ascending keys within each frame
    pos = np.arange(len(t_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[t_idx, pos] = k_idx
    out[np.arange(T), counts] = P
    return out


def stream_tokens(frames: np.ndarray) -> np.ndarray:
    """The `nade-step` token stream of a piece: END (start), then each frame's keys and END."""
    P = frames.shape[1]
    toks = [np.array([P])]
    for f in frames:
        toks.append(np.concatenate([np.nonzero(f)[0], [P]]))
    return np.concatenate(toks).astype(np.int64)


def collate(rolls: list[np.ndarray]) -> dict[str, Tensor]:
    """Pad rolls into a batch; every frame but each piece's first is scored."""
    B, T = len(rolls), max(len(r) for r in rolls)
    P = rolls[0].shape[1]
    width = max(int(r.sum(1).max(initial=0)) for r in rolls) + 1
    frames = np.zeros((B, T, P), dtype=np.float32)
    tokens = np.full((B, T, width), -1, dtype=np.int64)
    valid = np.zeros((B, T), dtype=bool)
    for i, r in enumerate(rolls):
        frames[i, : len(r)] = r
        tokens[i, : len(r)] = frame_tokens(r, width)
        valid[i, 1 : len(r)] = True
    return {
        "frames": torch.from_numpy(frames),
        "tokens": torch.from_numpy(tokens),
        "valid": torch.from_numpy(valid),
    }


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Training: shuffled windows of `seq_len` frames (whole pieces when 0); transposition
    is the loop's (`[data] augment`). Evaluation: whole pieces (the metric needs each
    piece's full context), by length."""
    bs = int(cfg.get("batch_size", 32))
    if not train:
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        budget = 16384  # frames per eval batch
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
            # random phase so window boundaries move from epoch to epoch
            phase = int(rng.integers(0, seq_len))
            for s in range(-phase, len(p), seq_len):
                w = p[max(s, 0) : s + seq_len]
                if len(w) > 1:
                    windows.append(w)
        else:
            windows.append(p)
    for group in _buckets(windows, bs, rng):
        yield collate(list(group))


def _buckets(windows: list, bs: int, rng: np.random.Generator) -> list[list]:
    """Shuffled batches of windows of similar length (padding costs the frame LSTM as much
    as data): shuffle, sort within runs of 8 batches by length, shuffle the batches."""
    order = rng.permutation(len(windows))
    run = 8 * bs
    out = []
    for i in range(0, len(order), run):
        chunk = sorted(order[i : i + run], key=lambda j: len(windows[j]))
        out.extend([windows[j] for j in chunk[k : k + bs]] for k in range(0, len(chunk), bs))
    return [out[i] for i in rng.permutation(len(out))]
