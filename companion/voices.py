"""Voices: one driver per ONNX step protocol, all with the same face to the modes.

A voice turns an Engine (raw tensors) into "feed this token" (priming with what the player
played) and "sample and feed the next token" (generation). Tokens are ints for token
representations and uint8 frames for rolls. The protocol name in the model's metadata picks
the driver; the representation's decoder supplies the grammar mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from midi_companion import rules
from midi_companion.engine import Engine
from midi_companion.errors import ModelError
from midi_companion.sampling import Sampling, ascending_mask, sample, sample_bernoulli


class Voice:
    """Base: subclasses implement `feed` and `next`."""

    protocol = ""

    def __init__(self, engine: Engine, rep):
        self.engine = engine
        self.rep = rep

    def reset(self) -> None:
        self.engine.reset()

    def feed(self, token) -> None:
        raise NotImplementedError

    def prime(self, tokens) -> None:
        """Start a piece from the player's phrase: reset, then feed each of its tokens (a
        latent voice encodes the phrase first)."""
        self.reset()
        for tok in tokens:
            self.feed(tok)

    def next(self, rng: np.random.Generator, params: Sampling, mask=None):
        raise NotImplementedError

    def warm_up(self, rng: np.random.Generator, steps: int = 8) -> None:
        """A few real steps so the first step the player hears is not the slow one."""
        self.reset()
        self.feed(self._neutral_token())
        for _ in range(steps):
            self.next(rng, Sampling())
        self.reset()
        self.engine.step_ms.clear()

    def _neutral_token(self):
        return 0


class TokenVoice(Voice):
    """token-step: token in, logits over the vocabulary out."""

    protocol = "token-step"

    def reset(self) -> None:
        super().reset()
        self.logits = None

    def feed(self, token) -> None:
        out = self.engine.step({"token": np.array([[int(token)]], dtype=np.int64)})
        self.logits = out["logits"][0]

    def next(self, rng, params, mask=None, bias=None):
        if self.logits is None:
            raise ModelError("a token model needs at least one token of context to continue")
        tok = sample(self.logits, rng, params, mask, bias)
        self.feed(tok)
        return tok


class LatentVoice(TokenVoice):
    """latent token-step (lstm-vae, models/lstm_vae.py): a token-step graph whose state
    holds a latent `z`, and an encoder graph beside it (companion/latent.py).

    `prime(phrase)` encodes the phrase, sets `z` to the mean of q(z | phrase) (a draw from
    it when `sample_latent` is set, with `rng`), then feeds the phrase from the decoder's
    initial state for that z and samples on as a TokenVoice. `reset()` alone leaves z = 0,
    the prior's mean.
    """

    def __init__(
        self,
        engine,
        rep,
        encoder,
        sample_latent: bool = False,
        rng: np.random.Generator | None = None,
    ):
        super().__init__(engine, rep)
        self.encoder = encoder
        self.sample_latent = sample_latent
        self.rng = rng if rng is not None else np.random.default_rng()
        self.latent: np.ndarray | None = None  # the z of the phrase last primed

    def set_latent(self, z) -> None:
        """Set z (for every row of the batch); the decoder starts from it at zero h, c."""
        z = np.asarray(z, dtype=np.float32).reshape(1, -1)
        self.engine.state["z"] = np.repeat(z, self.engine.batch, axis=0)
        self.latent = z[0]

    def steer_latent(self, z) -> None:
        """Set the z the decoder reads from the next step on, keeping `latent` (the phrase's):
        the bridge mode moves it while the answer plays (companion/modes/bridge.py)."""
        z = np.asarray(z, dtype=np.float32).reshape(1, -1)
        self.engine.state["z"] = np.repeat(z, self.engine.batch, axis=0)

    def prime(self, tokens) -> None:
        tokens = [int(t) for t in tokens]
        self.reset()
        self.latent = None
        if tokens:
            mean, logvar = self.encoder.encode(tokens)
            if self.sample_latent:
                mean = mean + np.exp(0.5 * logvar) * self.rng.standard_normal(mean.shape)
            self.set_latent(mean)
        for tok in tokens:
            self.feed(tok)

    def warm_up(self, rng: np.random.Generator, steps: int = 8) -> None:
        self.encoder.encode([self._neutral_token()] * 4)  # the encoder's first run too
        super().warm_up(rng, steps)


class NoteVoice(Voice):
    """note-step: a (pitch, step, duration) triple in, three heads out (seed 002 MidiRNN).

    The `notes` representation flattens each note to three tokens with offsets; this voice
    gathers a triple before it steps the model, and samples the field that comes next.
    """

    protocol = "note-step"

    def __init__(self, engine, rep):
        super().__init__(engine, rep)
        self.offsets = list(rep.offsets)
        self.sizes = list(rep.fields)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.pending: list[int] = []
        self.heads = None

    def feed(self, token) -> None:
        i = len(self.pending)
        self.pending.append(int(token) - self.offsets[i])
        if len(self.pending) == 3:
            out = self.engine.step({"note": np.array([[self.pending]], dtype=np.int64)})
            self.heads = (out["pitch_logits"][0], out["step_logits"][0], out["duration_logits"][0])
            self.pending = []

    def next(self, rng, params, mask=None):
        if self.heads is None:
            raise ModelError("a note model needs at least one note of context to continue")
        i = len(self.pending)
        full = np.full(self.rep.vocab_size, -np.inf, dtype=np.float64)
        full[self.offsets[i] : self.offsets[i] + self.sizes[i]] = self.heads[i]
        field_mask = np.isfinite(full) if mask is None else (mask & np.isfinite(full))
        tok = sample(full, rng, params, field_mask)
        self.feed(tok)
        return tok


class FrameVoice(Voice):
    """frame-step: a multi-hot frame in, per-key Bernoulli logits of the next frame out."""

    protocol = "frame-step"

    def reset(self) -> None:
        super().reset()
        self.logits = None

    def feed(self, frame) -> None:
        x = np.asarray(frame, dtype=np.float32).reshape(1, -1)
        self.logits = self.engine.step({"frame": x})["logits"][0]

    def next(self, rng, params, mask=None):
        if self.logits is None:
            raise ModelError("a frame model needs at least one frame of context to continue")
        frame = sample_bernoulli(self.logits, rng, params.temperature)
        self.feed(frame)
        return frame

    def _neutral_token(self):
        return np.zeros(self.rep.vocab_size, dtype=np.uint8)


class NadeVoice(Voice):
    """nade-step: a frame is its keys in ascending order then an end-of-frame token.

    Keys at or below the last key of the frame are masked (sampling.ascending_mask), so each
    set of keys has exactly one sequence and sampling draws from the exact frame distribution.
    """

    protocol = "nade-step"

    def __init__(self, engine, rep):
        super().__init__(engine, rep)
        self.keys = rep.vocab_size
        self.end = self.keys
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.logits = None

    def _step(self, token: int) -> None:
        self.logits = self.engine.step({"token": np.array([[token]], dtype=np.int64)})["logits"][0]

    def feed(self, frame) -> None:
        for k in np.flatnonzero(np.asarray(frame)):
            self._step(int(k))
        self._step(self.end)

    def next(self, rng, params, mask=None):
        if self.logits is None:
            raise ModelError("a frame model needs at least one frame of context to continue")
        frame = np.zeros(self.keys, dtype=np.uint8)
        tok = self.end  # a frame starts after an END
        while True:
            tok = sample(self.logits, rng, params, ascending_mask(tok, self.keys + 1))
            self._step(tok)
            if tok == self.end:
                return frame
            frame[tok] = 1

    def _neutral_token(self):
        return np.zeros(self.keys, dtype=np.uint8)


SLICE_MEMBERS = 8  # speculation yields after this many members' sampling (and each model call)


@dataclass
class Speculation:
    """A step computed ahead for several candidate leads (Accompanist.speculate): from
    `base` (the snapshot it started from), member i played `rows[i]` under `leads[i]`."""

    base: tuple
    leads: list[frozenset[int]]
    rows: list[list[set[int]]]
    state: dict  # batched engine state after the step
    logits: list
    results: list  # (rows, profile, voices) per member

    def find(self, lead: frozenset[int]) -> int | None:
        return next((i for i, c in enumerate(self.leads) if c == lead), None)


class Accompanist(Voice):
    """multitrack-step: each grid step is BEGIN, the lead's keys, END, then every
    accompaniment row's keys ascending, each row closed by END (models/multitrack_lstm.py).

    `step(lead, rng)` reads the lead's pitches for one step and samples the other rows. The
    ascending mask makes each row's set exact; a SATB row holds one voice, so after its key
    only END is allowed. Each row keeps to its part's range, leans to the key of the lead
    so far, and (one voice per row) moves without parallel fifths or octaves against the
    voices above it and without crossing them (companion.rules).
    """

    protocol = "multitrack-step"

    def __init__(
        self,
        engine,
        rep,
        sampling: Sampling,
        ranges=None,
        key_strength: float = 0.0,
        scale_lock: bool = False,
    ):
        super().__init__(engine, rep)
        self.low = rep.params.low
        self.keys = rep.params.high - rep.params.low + 1
        self.rows = len(rep.track_names())
        self.end, self.begin = self.keys, self.keys + 1
        self.one_per_row = rep.params.scheme == "satb"
        self.grid = rep.params.grid
        self.velocity = rep.params.velocity
        self.sampling = sampling
        self.pitches = np.arange(self.low, self.low + self.keys)
        ranges = ranges or [(0, 127)] * (self.rows - 1)
        self.in_range = [(self.pitches >= lo) & (self.pitches <= hi) for lo, hi in ranges]
        self.key_strength = key_strength
        self.scale_lock = scale_lock
        self.reset()

    def reset(self, step: int = 0) -> None:
        """The zero state, for a performance whose first grid step is `step` (a model that
        counts the beat in its `beat_pos` state learns where in the beat that step is)."""
        super().reset()
        self.logits = None
        self.profile = np.zeros(12)  # the lead's pitch classes so far, one count per step
        self.prev: list[int | None] = [None] * self.rows  # each voice's pitch a step ago
        if "beat_pos" in self.engine.state:
            per_beat = max(1, round(1 / self.grid))
            self.engine.state["beat_pos"] = np.full(
                (self.engine.batch, 1), step % per_beat, dtype=np.float32
            )

    def _step(self, token: int) -> None:
        self.logits = self.engine.step({"token": np.array([[token]], dtype=np.int64)})["logits"][0]

    def step(self, lead, rng, rows: list[set[int]] | None = None, on_row=None) -> list[set[int]]:
        """One grid step: the lead's pitches in, the accompaniment rows' pitches out; or,
        given `rows`, those rows fed in instead of sampled (the voices held or silenced by
        the mode), so the model knows what sounds. `on_row(k, pitches)` is called as each
        row is done, before the next is generated."""
        program = self._program(lead, rng, rows, self.profile, self.prev)
        msg = next(program)
        try:
            while True:
                if msg[0] == "feed":
                    self._step(msg[1])
                    msg = program.send(self.logits)
                else:
                    if on_row is not None:
                        on_row(msg[1], msg[2])
                    msg = program.send(None)
        except StopIteration as done:
            played, self.profile, self.prev = done.value
        return played

    def speculate(self, snap, leads: list[frozenset[int]], rng) -> Speculation:
        """`speculation(...)` run to its end."""
        job = self.speculation(snap, leads, rng)
        while True:
            try:
                next(job)
            except StopIteration as done:
                return done.value

    def speculation(self, snap, leads: list[frozenset[int]], rng):
        """The step `step(lead, rng)` would play from the state `snap` (a `snapshot()`), for
        every lead in `leads` at once: one batched model call per token position, so a
        note-on whose lead is among them is answered by a lookup (`adopt`). Members that
        have finished are fed END and keep their state. A generator that yields after each
        model call and after every SLICE_MEMBERS members' sampling (the caller spreads the
        work over idle moments), and returns the Speculation."""
        state0, _, profile, prev = snap
        n = len(leads)
        # every member draws from its own copy of `rng`: what it samples is what step()
        # would with that generator
        programs = [self._program(lead, copy.deepcopy(rng), None, profile, prev) for lead in leads]
        pending = [next(p) for p in programs]
        results: list = [None] * n
        logits = [None] * n
        state = self.engine.tile(state0, n)

        def advance(i, value):
            try:
                pending[i] = programs[i].send(value)
            except StopIteration as done:
                results[i] = done.value

        while True:
            for i in range(n):  # past the "row" notices: only feeds need the model
                while results[i] is None and pending[i][0] == "row":
                    advance(i, None)
            active = np.array([r is None for r in results])
            if not active.any():
                break
            tokens = [pending[i][1] if active[i] else self.end for i in range(n)]
            out, new = self.engine.run({"token": np.array(tokens, np.int64)[:, None]}, state)
            state = self.engine.where(active, new, state)
            yield
            for j, i in enumerate(np.flatnonzero(active)):
                logits[i] = out["logits"][i]
                advance(i, logits[i])  # a member's sampling: Python work, so a few at a time
                if j % SLICE_MEMBERS == SLICE_MEMBERS - 1:
                    yield
        return Speculation(snap, list(leads), [r[0] for r in results], state, logits, results)

    def adopt(self, spec: Speculation, i: int) -> list[set[int]]:
        """Take member `i` of a speculation as this step: the model's state, the key
        profile and the voices become what `step` would have left; returns its rows."""
        self.engine.restore(self.engine.take(spec.state, i))
        self.logits = spec.logits[i]
        rows, self.profile, self.prev = spec.results[i]
        return rows

    def lead_candidates(self, snap, k: int) -> list[int]:
        """The `k` lead pitches the model finds likeliest after the state `snap` (its lead
        keys' logits after BEGIN): what speculation computes ahead."""
        out, _ = self.engine.run({"token": np.array([[self.begin]], np.int64)}, snap[0])
        keys = out["logits"][0][: self.keys]
        return [int(x) + self.low for x in np.argsort(-keys)[:k]]

    def _program(self, lead, rng, rows, profile, prev):
        """The step as a coroutine: yields ("feed", token) and is sent the logits after it,
        yields ("row", k, pitches) when row k is decided (is sent None), and returns
        (rows, profile, voices) as they are after the step. `step` drives one; `speculate`
        drives many side by side."""
        logits = yield ("feed", self.begin)
        for k in self._keys(lead):
            logits = yield ("feed", k)
        logits = yield ("feed", self.end)
        top = max(lead) if lead else None
        if top is not None:
            profile = profile.copy()
            for p in set(lead):
                profile[p % 12] += 1
        if rows is not None:
            played = []
            for i, row in enumerate(rows):
                keys = self._keys(row)
                for k in keys:
                    logits = yield ("feed", k)
                logits = yield ("feed", self.end)
                played.append({k + self.low for k in keys})
                yield ("row", i, played[-1])
            return played, profile, self._voices(top, played)
        key = rules.key_from_profile(profile)[:2] if profile.any() else None
        strength = np.inf if self.scale_lock else self.key_strength
        kb = rules.key_bias(self.pitches, key, strength)
        bias = np.append(np.where(np.isfinite(kb), kb, 0.0), 0.0)  # END: no bias
        in_key = np.append(np.isfinite(kb), True)
        sampled: list[set[int]] = []
        for i in range(self.rows - 1):
            row: set[int] = set()
            tok = self.end  # a row starts after the END of the row before it
            fits = np.append(self.in_range[i], True) & in_key
            if self.one_per_row:
                fits &= self._voice_leading(i, top, sampled, prev)
            while True:
                allowed = ascending_mask(tok, self.keys + 1)
                mask = allowed & fits
                tok = sample(
                    logits[: self.keys + 1],
                    rng,
                    self.sampling,
                    mask if mask.any() else allowed,
                    bias,
                )
                if tok != self.end:
                    row.add(tok + self.low)
                if self.one_per_row:
                    yield ("row", i, row)  # one voice per row: decided by its first token
                logits = yield ("feed", tok)
                if tok == self.end:
                    break
                if self.one_per_row:
                    logits = yield ("feed", self.end)  # the only token after a voice's key
                    break
            sampled.append(row)
            if not self.one_per_row:
                yield ("row", i, row)
        return sampled, profile, self._voices(top, sampled)

    def _voice_leading(self, i: int, top: int | None, sampled: list[set[int]], prev) -> np.ndarray:
        """Keys (and END) row i may take given the voices above it at this step."""
        now = [top] + [max(r) if r else None for r in sampled]  # soprano, rows above i
        decided = list(zip(prev[: i + 1], now))
        above = next((p for p in reversed(now) if p is not None), None)
        ok = rules.voice_leading_mask(self.pitches, prev[i + 1], decided, above)
        return np.append(ok, True)

    @staticmethod
    def _voices(top: int | None, rows: list[set[int]]) -> list[int | None]:
        """Each voice's pitch after a step (soprano first): the next step's voice leading."""
        return [top] + [max(r) if r else None for r in rows]

    def _keys(self, pitches) -> list[int]:
        """Key indices of `pitches` in range, ascending (a SATB row keeps its highest, as the
        representation does)."""
        keys = sorted(p - self.low for p in pitches if 0 <= p - self.low < self.keys)
        return keys[-1:] if self.one_per_row else keys

    def snapshot(self):
        return self.engine.snapshot(), self.logits, self.profile, list(self.prev)

    def state_key(self, snap=None) -> tuple:
        """Which state this is (`snap`'s, else the state now): the identities of its
        arrays, which a step replaces and restore() puts back as they were."""
        state, logits = (self.engine.state, self.logits) if snap is None else snap[:2]
        return tuple(id(v) for v in state.values()) + (id(logits),)

    def restore(self, snap) -> None:
        state, self.logits, self.profile, prev = snap
        self.prev = list(prev)
        self.engine.restore(state)

    def warm_up(self, rng, steps: int = 4) -> None:
        self.reset()
        for i in range(steps):
            self.step({self.low + self.keys // 2 + i}, rng)
        self.reset()
        self.engine.step_ms.clear()


DRIVERS = {v.protocol: v for v in (TokenVoice, NoteVoice, FrameVoice, NadeVoice)}


def voice_for(model, provider: str = "auto") -> Voice:
    """The driver for a loaded model file (its protocol picks it; a model file that names an
    encoder graph gets a LatentVoice)."""
    from midi_companion.latent import Encoder, has_encoder

    if model.protocol == LatentVoice.protocol and has_encoder(model):
        return LatentVoice(Engine(model, provider=provider), model.representation, Encoder(model))
    cls = DRIVERS.get(model.protocol)
    if cls is None:
        raise ModelError(
            f"{model.path}: protocol {model.protocol!r} cannot continue a phrase; "
            f"continuation protocols: {sorted(DRIVERS)}"
        )
    engine = Engine(model, provider=provider)
    return cls(engine, model.representation)


def accompanist_for(model, preset, provider: str = "auto") -> Accompanist:
    """The accompanist for a multitrack-step model, checked against the preset's tracks."""
    if model.protocol != Accompanist.protocol:
        raise ModelError(
            f"{model.path}: mode {preset.mode!r} needs a multitrack-step model "
            f"(this one is {model.family}, {model.protocol})"
        )
    rows = len(model.representation.track_names()) - 1
    if len(preset.tracks) != rows:
        raise ModelError(
            f"{preset.path}: [[tracks]] lists {len(preset.tracks)} track(s) but "
            f"{model.path.name} generates {rows} "
            f"({', '.join(model.representation.track_names()[1:])})"
        )
    s = preset.sampling
    return Accompanist(
        Engine(model, provider=provider),
        model.representation,
        Sampling(s.temperature, s.top_k, s.top_p),
        ranges=[t.range for t in preset.tracks],
        key_strength=s.key_strength,
        scale_lock=s.scale_lock,
    )
