"""Decoder-only Transformer over token representations (seed 003): protocol `token-step`.

Pre-norm blocks (causal self-attention + GELU MLP), rotary position embeddings (RoPE: only
relative offsets reach the attention scores; seed 000 found absolute positions hurt music),
the output head tied to the token embedding.

Attention sees at most `context` tokens: the token itself and the `context - 1` before it.
Training windows are at most `context` long, so there this is plain causal attention; on
longer sequences (whole pieces at evaluation, endless generation) it is a sliding window.
The step graph keeps a fixed-size KV cache as a ring buffer: state `past_k`, `past_v`
[layers, B, heads, context, head_dim] and `pos` [B] (tokens seen, float32: exact up to
2^24). Step p writes its key and value into slot p mod context and attends to the filled
slots. Keys are stored rotated at their absolute position, so overwriting the oldest slot
gives exactly the sliding window the full-sequence forward computes: the step graph equals
the full forward at any length, and its cost per step is constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models.data import sequence_batches
from midi_companion.models.lstm import TokenModel

FAMILY = "transformer"


def rotate(x: Tensor, pos: Tensor, inv_freq: Tensor) -> Tensor:
    """RoPE: x [..., T, D] rotated by angle pos * inv_freq; pos broadcasts to [..., T]."""
    ang = pos[..., None] * inv_freq  # [..., T, D/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def _qkv(self, x: Tensor, pos: Tensor, inv_freq: Tensor):
        """x [B, T, d], pos [B, T] or [T] -> q, k, v [B, H, T, hd] (q and k rotated)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        pos = pos[:, None] if pos.dim() == 2 else pos  # broadcast over heads
        return rotate(q, pos, inv_freq), rotate(k, pos, inv_freq), v

    def forward(self, x: Tensor, inv_freq: Tensor, context: int) -> Tensor:
        B, T, d = x.shape
        q, k, v = self._qkv(x, torch.arange(T, device=x.device, dtype=x.dtype), inv_freq)
        y = windowed_attention(q, k, v, context, self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.mlp(self.ln2(x)))

    def step(
        self,
        x: Tensor,
        pos: Tensor,
        slot: Tensor,
        filled: Tensor,
        past_k: Tensor,
        past_v: Tensor,
        inv_freq: Tensor,
    ):
        """x [B, d]; pos [B]; slot, filled bool [B, C]; past_* [B, H, C, hd]."""
        B, d = x.shape
        q, k, v = self._qkv(x[:, None], pos[:, None], inv_freq)  # [B, H, 1, hd]
        here = slot[:, None, :, None]  # [B, 1, C, 1]
        past_k = torch.where(here, k, past_k)
        past_v = torch.where(here, v, past_v)
        att = (q @ past_k.transpose(-1, -2)) / math.sqrt(self.hd)  # [B, H, 1, C]
        att = att.masked_fill(~filled[:, None, None, :], float("-inf")).softmax(-1)
        y = (att @ past_v).reshape(B, d)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x)), past_k, past_v


def windowed_attention(
    q: Tensor, k: Tensor, v: Tensor, context: int, dropout: float = 0.0
) -> Tensor:
    """Causal attention where each query sees itself and the `context - 1` keys before it.
    q, k, v [B, H, T, hd] -> [B, H, T, hd]; in blocks of `context` queries when T is longer."""
    T = q.shape[2]
    if T <= context:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    out = []
    for s in range(0, T, context):
        e = min(s + context, T)
        k0 = max(0, s - context + 1)
        qi = torch.arange(s, e, device=q.device)[:, None]
        kj = torch.arange(k0, e, device=q.device)[None, :]
        allowed = (kj <= qi) & (qi - kj < context)  # [Tq, Tk]
        out.append(
            F.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, k0:e], v[:, :, k0:e], attn_mask=allowed, dropout_p=dropout
            )
        )
    return torch.cat(out, dim=2)


class Transformer(TokenModel):
    family = FAMILY

    def __init__(
        self,
        vocab: int,
        d_model: int = 256,
        heads: int = 4,
        layers: int = 4,
        context: int = 256,
        dropout: float = 0.1,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(
                f"transformer: d_model / heads must be an even integer "
                f"(received d_model={d_model}, heads={heads})"
            )
        if context < 2:
            raise ValueError(f"transformer: context must be >= 2 (received {context})")
        self.model_args = dict(
            d_model=d_model,
            heads=heads,
            layers=layers,
            context=context,
            dropout=dropout,
            rope_base=rope_base,
        )
        self.vocab, self.d, self.heads, self.layers, self.context = (
            vocab,
            d_model,
            heads,
            layers,
            context,
        )
        self.hd = d_model // heads
        self.emb = nn.Embedding(vocab, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied
        inv = rope_base ** (-torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.apply(_init)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.drop(self.emb(tokens))  # [B, T, d]
        for block in self.blocks:
            x = block(x, self.inv_freq, self.context)
        return self.head(self.ln_f(x))  # [B, T, V]

    def step(self, token: Tensor, past_k: Tensor, past_v: Tensor, pos: Tensor):
        x = self.emb(token[:, 0])  # [B, d]
        C = self.context
        slots = torch.arange(C, device=x.device, dtype=pos.dtype)
        slot = slots[None, :] == (pos - C * torch.floor(pos / C))[:, None]  # [B, C]
        filled = slots[None, :] <= pos[:, None]
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, pos, slot, filled, past_k[i], past_v[i], self.inv_freq)
            ks.append(k)
            vs.append(v)
        return self.head(self.ln_f(x)), torch.stack(ks), torch.stack(vs), pos + 1

    def state_spec(self) -> list[dict]:
        cache = [self.layers, "B", self.heads, self.context, self.hd]
        return [
            {"name": "past_k", "shape": cache},
            {"name": "past_v", "shape": cache},
            {"name": "pos", "shape": ["B"]},
        ]


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def build(family: str, rep, **model_args) -> Transformer:
    if family != FAMILY:
        raise ValueError(f"models.transformer builds {FAMILY!r} (received {family!r})")
    if rep.kind != "tokens":
        raise ValueError(
            f"transformer needs a token representation (received {rep.name!r}, "
            f"which gives {rep.kind})"
        )
    return Transformer(rep.vocab_size, **model_args)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator, train: bool
) -> Iterator[dict[str, Tensor]]:
    return sequence_batches(pieces, cfg, rng, train, key="tokens")
