"""Sampling from logits: temperature, top-k, top-p (nucleus), grammar masks, a seeded RNG.

Masks stay outside the ONNX graph (the representation's decoder knows what can come next);
they are applied here before anything else, so a masked token is never sampled whatever the
temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sampling:
    """How to draw the next token. temperature > 0; top_k 0 = off; 0 < top_p <= 1."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def log_softmax(logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Log-probabilities over the last axis; masked-out entries get -inf."""
    x = np.asarray(logits, dtype=np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def ascending_mask(fed, width: int) -> np.ndarray:
    """The nade mask (nade-step, multitrack-step): which of the `width` next tokens (keys
    0 .. width - 2, then END) may follow the token(s) `fed` [...] -> bool [..., width]. After
    a key only the keys above it and END (a frame's keys come in ascending order, so each set
    of keys has exactly one sequence); after END or any other non-key token, everything.
    models.roll_nade.mask_logits is the same rule in torch, for the training loss (a test
    holds the two equal)."""
    fed = np.asarray(fed)
    last = np.where(fed < width - 1, fed, -1)  # -1: no key fed, nothing masked
    return np.arange(width) > last[..., None]


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    params: Sampling,
    mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> int:
    """Draw one index from 1-D `logits` under `params`, never one that `mask` forbids;
    `bias` (nats, e.g. a key prior) is added after the temperature, so its strength does
    not depend on it."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if mask is not None:
        if not mask.any():
            raise ValueError("grammar mask forbids every token")
        x = np.where(mask, x, -np.inf)
    x = x / params.temperature
    if bias is not None:
        x = x + bias
    if 0 < params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - np.max(x))
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    # inverse CDF (rng.choice validates p on every call: 10x slower on this hot path); a
    # zero-probability index is never the first whose cumulative sum exceeds the draw
    c = np.cumsum(p)
    return int(np.searchsorted(c, rng.random() * c[-1], side="right"))


def sample_bernoulli(
    logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0
) -> np.ndarray:
    """Independent per-key draws from sigmoid(logits / temperature) (piano-roll models)."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))
    return (rng.random(p.shape) < p).astype(np.uint8)
