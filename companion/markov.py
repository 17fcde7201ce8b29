"""First-order Markov baselines (numpy only): the floor under every quality number.

Fit them on the same training data as a model, generate through the same sampler, grammar
mask and decoder, and measure them with ``companion.metrics``: a model that does not beat
its Markov chain has learned nothing the counts did not know.

- ``TokenMarkov``: p(token_t | token_{t-1}) over a token representation's vocabulary, with
  add-alpha smoothing and a start distribution; ``generate`` samples it through
  ``companion.sampling.sample`` under ``rep.stream_decoder(0).allowed()``, like a model.
- ``VoiceMarkov``: per voice, p(state_t | state_{t-1}) over grid steps (state = MIDI pitch
  0..127 or rest), fitted from ``metrics.voice_grid`` arrays; ``generate`` ignores the lead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from midi_companion.sampling import Sampling, sample
from midi_companion.score import Note

REST = 128  # VoiceMarkov's state index for a rest (grid value -1)
N_STATES = 129


def _log_rows(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Log of (counts + alpha) normalized along the last axis."""
    smoothed = counts + alpha
    return np.log(smoothed / smoothed.sum(axis=-1, keepdims=True))


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (received {alpha!r})")


class TokenMarkov:
    """First-order chain over token ids: ``log_start`` [V] and ``log_trans`` [V, V]."""

    def __init__(self, log_start: np.ndarray, log_trans: np.ndarray):
        self.log_start = log_start
        self.log_trans = log_trans

    @property
    def vocab_size(self) -> int:
        return self.log_start.size

    @classmethod
    def fit(
        cls, sequences: Sequence[np.ndarray], vocab_size: int, alpha: float = 0.01
    ) -> TokenMarkov:
        """Count transitions of consecutive tokens within each sequence and each sequence's
        first token; add `alpha` to every count (so every token stays possible) and
        normalize."""
        _check_alpha(alpha)
        start = np.zeros(vocab_size)
        trans = np.zeros((vocab_size, vocab_size))
        for seq in sequences:
            s = np.asarray(seq, dtype=np.int64).ravel()
            if s.size == 0:
                continue
            if s.min() < 0 or s.max() >= vocab_size:
                raise ValueError(f"tokens must be in 0..{vocab_size - 1}")
            start[s[0]] += 1
            np.add.at(trans, (s[:-1], s[1:]), 1.0)
        return cls(_log_rows(start, alpha), _log_rows(trans, alpha))

    def logits(self, prev_token: int | None) -> np.ndarray:
        """Log probabilities [V] of the next token after `prev_token` (None: the first)."""
        if prev_token is None:
            return self.log_start.copy()
        return self.log_trans[int(prev_token)].copy()

    def nll(self, sequences: Sequence[np.ndarray]) -> float:
        """Mean negative log-likelihood in nats per predicted token, without grammar mask; a
        sequence's first token is context only (as the models' NLL)."""
        total, count = 0.0, 0
        for seq in sequences:
            s = np.asarray(seq, dtype=np.int64).ravel()
            total -= float(self.log_trans[s[:-1], s[1:]].sum())
            count += max(s.size - 1, 0)
        return total / count if count else float("nan")

    def generate(
        self,
        prompt_tokens: Sequence[int],
        rep,
        n_beats: float,
        rng: np.random.Generator,
        temperature: float = 1.0,
        max_tokens: int = 100_000,
        params: Sampling | None = None,
    ) -> list[Note]:
        """Continue a prompt for `n_beats` beats, as a model would.

        The prompt goes through ``rep.stream_decoder(0)``; then tokens are drawn with
        ``sampling.sample(self.logits(prev), rng, Sampling(temperature), decoder.allowed())``
        (or `params`, e.g. the top-k / top-p a model is sampled with) and fed back until
        the decoder's position is `n_beats` past the prompt's end (or `max_tokens` were
        drawn). Returns the generated notes (note-on paired with the
        first following note-off of its pitch and track; notes still open at the end are
        closed by ``decoder.flush()``), onsets relative to the prompt's end, sorted. Notes
        started by the prompt are left out.
        """
        if rep.kind != "tokens":
            raise ValueError(f"{rep.name}: TokenMarkov needs a token representation")
        dec = rep.stream_decoder(0.0)
        notes = _NotePairer()
        prev = None
        for tok in prompt_tokens:
            notes.add(dec.feed(int(tok)), generated=False)
            prev = int(tok)
        end = dec.position
        params = Sampling(temperature=temperature) if params is None else params
        for _ in range(max_tokens):
            if dec.position >= end + n_beats - 1e-9:
                break
            tok = sample(self.logits(prev), rng, params, dec.allowed())
            notes.add(dec.feed(tok), generated=True)
            prev = tok
        notes.add(dec.flush(), generated=True)
        return notes.result(end)


class _NotePairer:
    """Pairs NoteEvents into notes: each off closes the oldest open on of its (track,
    pitch); only notes whose on came from generated tokens are kept."""

    def __init__(self):
        self.open: dict[tuple[int, int], list[tuple[float, int, bool]]] = defaultdict(list)
        self.notes: list[tuple[float, int, float, int]] = []

    def add(self, events, generated: bool) -> None:
        for ev in events:
            key = (ev.track, ev.pitch)
            if ev.velocity > 0:
                self.open[key].append((ev.beat, ev.velocity, generated))
            elif self.open[key]:
                on, vel, gen = self.open[key].pop(0)
                if gen:
                    self.notes.append((on, ev.pitch, ev.beat - on, vel))

    def result(self, origin: float) -> list[Note]:
        return sorted(Note(on - origin, p, d, v) for on, p, d, v in self.notes)


class VoiceMarkov:
    """Per voice, a first-order chain over grid-step states (pitch 0..127, REST = 128):
    ``log_start`` [V, 129] and ``log_trans`` [V, 129, 129]."""

    def __init__(self, log_start: np.ndarray, log_trans: np.ndarray):
        self.log_start = log_start
        self.log_trans = log_trans

    @property
    def n_voices(self) -> int:
        return self.log_start.shape[0]

    @classmethod
    def fit(cls, grids: Sequence[np.ndarray], alpha: float = 0.01) -> VoiceMarkov:
        """Fit from voice grids (``metrics.voice_grid`` arrays [T, V], -1 = rest; every grid
        has the same V): per voice, counts of consecutive states and of the first state,
        plus `alpha`, normalized."""
        _check_alpha(alpha)
        if not grids:
            raise ValueError("VoiceMarkov.fit needs at least one grid")
        n_voices = np.asarray(grids[0]).shape[1]
        start = np.zeros((n_voices, N_STATES))
        trans = np.zeros((n_voices, N_STATES, N_STATES))
        for g in grids:
            s = np.asarray(g, dtype=np.int64)
            if s.ndim != 2 or s.shape[1] != n_voices:
                raise ValueError(f"every grid must be [T, {n_voices}] (received {s.shape})")
            if s.shape[0] == 0:
                continue
            s = np.where(s < 0, REST, s)
            for v in range(n_voices):
                start[v, s[0, v]] += 1
                np.add.at(trans[v], (s[:-1, v], s[1:, v]), 1.0)
        return cls(_log_rows(start, alpha), _log_rows(trans, alpha))

    def generate(
        self,
        lead_grid: np.ndarray,
        n_voices: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
    ) -> np.ndarray:
        """Voice grids [T, n_voices] (-1 = rest) for T = len(lead_grid) steps, voices
        0..n_voices-1 each drawn from its own chain. The lead's content is ignored: this
        is the floor an accompanist must beat."""
        if not 0 < n_voices <= self.n_voices:
            raise ValueError(f"n_voices must be 1..{self.n_voices} (received {n_voices})")
        steps = len(lead_grid)
        out = np.full((steps, n_voices), -1, dtype=np.int64)
        params = Sampling(temperature=temperature)
        for v in range(n_voices):
            state = None
            for t in range(steps):
                logits = self.log_start[v] if state is None else self.log_trans[v, state]
                state = sample(logits, rng, params)
                out[t, v] = -1 if state == REST else state
        return out
