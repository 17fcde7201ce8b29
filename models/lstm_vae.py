"""lstm-vae: seed 000's LSTM variational autoencoder over phrases of a token representation
(protocol `token-step` with a latent `z` in the state, plus an encoder graph).

A phrase is a window of the training loop's windows (`[train] seq_len + 1` tokens of
`events`, as the folk and piano models read). The model:

- encoder: an embedding and an LSTM of `enc_layers` layers (3 in the seed) read the phrase;
  the top layer's output after the phrase's last token goes through a linear layer to the
  mean and log-variance of a `latent`-dimensional Gaussian (20 in the seed);
- decoder: an LSTM of `layers` layers (3 in the seed) whose initial state is
  tanh(linear(z)) and which reads, at every step, the token's embedding (plus, with `meter`,
  the embedding of the position in the beat, as models/lstm.py) concatenated with z; a
  linear head gives the next token's logits.

Loss (nats per predicted token, the loop's contract): the reconstruction NLL of the phrase
given z ~ q(z | phrase) (reparameterized), each phrase's first token context only, plus
beta times the KL divergence from the standard normal prior, summed over the phrases. Against
posterior collapse: beta rises linearly from 0 to `beta` over the first `kl_warmup` training
steps (the loop says which step it is through `set_step`), `free_bits` (nats per latent
dimension, batch-averaged) are not penalized, and `word_dropout` blanks a fraction of the
decoder's input tokens (their embeddings zeroed) so the decoder has to read z. Evaluation
(model.eval()) scores the true negative ELBO, beta = 1 and no free bits, with z drawn from
q by a generator seeded from the batch (repeatable), and keeps the reconstruction and KL
sums apart: `extra_metrics()` returns them to the loop, which logs them at each evaluation
and records them in the checkpoint's metrics (`valid_terms`, `test_terms`).

Sampling: the seed's decoder emitted a piano roll, one sigmoid per key, so its notes were
Bernoulli draws. Over `events` tokens a step is one categorical draw from the softmax (the
Engine's usual sampler, with the representation's grammar mask and the preset's rules); the
seed's "randomness keeps the decoder out of loops" is the same here.

Step graph ("latent token-step", docs/ARCHITECTURE.md): inputs `token` [B, 1] and the state
`h`, `c` [layers, B, hidden], `z` [B, latent] (read every step, written back unchanged) and,
with `meter`, `time` [B, 1]; outputs `logits` [B, V] and the state. `h` and `c` are offsets
from the initial state z gives (the graph reads h + init_h(z) and writes h_new - init_h(z), as
roll-nade-lstm's learned initial state): zero `h`, `c` with a given `z` is the decoder's start
for that latent, and the all-zero state is the prior's mean (z = 0). The encoder is a second
graph, `<name>.encoder.onnx`: `tokens` int64 [B, T] and `lengths` int64 [B] (right padding
ignored) -> `mean`, `logvar` [B, latent]; the step file names it in its metadata (`encoder`).
A driver encodes the player's phrase, sets `z` to the mean (or a sample), feeds the phrase
and samples on (companion/voices.py, LatentVoice).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.models import lstm
from midi_companion.models.data import collate

FAMILY = "lstm-vae"
PROTOCOL = "token-step"


def check_vae_args(family, sizes, kl_warmup, word_dropout, beta, free_bits) -> None:
    """A VAE family's arguments (lstm-vae, transformer-vae): `sizes` {name: (value, lowest)}
    integers, the KL schedule and the decoder's word dropout; ValueError naming the key."""
    for name, (v, lo) in {**sizes, "kl_warmup": (kl_warmup, 0)}.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{family}: {name} must be an integer >= {lo} (received {v!r})")
    if not 0 <= word_dropout < 1:
        raise ValueError(f"{family}: word_dropout must be in [0, 1) (received {word_dropout})")
    if beta < 0 or free_bits < 0:
        raise ValueError(f"{family}: beta and free_bits must be >= 0")


class LSTMVAE(nn.Module):
    family = FAMILY
    protocol = PROTOCOL
    unit = "token"

    def __init__(
        self,
        vocab: int,
        embed: int = 128,
        enc_hidden: int = 256,
        enc_layers: int = 3,
        hidden: int = 256,
        layers: int = 3,
        latent: int = 20,
        dropout: float = 0.1,
        word_dropout: float = 0.0,
        beta: float = 1.0,
        kl_warmup: int = 0,
        free_bits: float = 0.0,
        meter: bool = False,
        token_steps=None,
        steps_per_beat: int = 0,
    ):
        super().__init__()
        check_vae_args(
            FAMILY,
            dict(latent=(latent, 1), layers=(layers, 1), enc_layers=(enc_layers, 1)),
            kl_warmup,
            word_dropout,
            beta,
            free_bits,
        )
        self.model_args = dict(
            embed=embed,
            enc_hidden=enc_hidden,
            enc_layers=enc_layers,
            hidden=hidden,
            layers=layers,
            latent=latent,
            dropout=dropout,
            word_dropout=word_dropout,
            beta=beta,
            kl_warmup=kl_warmup,
            free_bits=free_bits,
            meter=bool(meter),
        )
        self.vocab, self.hidden, self.layers, self.latent = vocab, hidden, layers, latent
        self.beta, self.kl_warmup, self.free_bits = float(beta), kl_warmup, float(free_bits)
        self.word_dropout = float(word_dropout)
        self.drop = nn.Dropout(dropout)
        # encoder
        self.enc_emb = nn.Embedding(vocab, embed)
        self.enc = nn.LSTM(
            embed,
            enc_hidden,
            enc_layers,
            batch_first=True,
            dropout=dropout if enc_layers > 1 else 0.0,
        )
        self.to_latent = nn.Linear(enc_hidden, 2 * latent)
        # decoder
        self.emb = nn.Embedding(vocab, embed)
        self.z_init = nn.Linear(latent, 2 * layers * hidden)
        self.dec = nn.LSTM(
            embed + latent, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden, vocab)
        self.beat = 0
        if meter:
            self.beat = int(steps_per_beat)
            self.register_buffer("steps", torch.as_tensor(token_steps, dtype=torch.float32))
            self.phase_emb = nn.Embedding(self.beat, embed)
        self.step_now = 0
        self._terms = torch.zeros(4, dtype=torch.float64)  # recon, kl, tokens, phrases

    # ---- the loop's hooks ---------------------------------------------------------------
    def set_step(self, step: int) -> None:
        """The training step about to run (the KL warm-up reads it)."""
        self.step_now = int(step)

    def beta_now(self) -> float:
        if not self.kl_warmup:
            return self.beta
        return self.beta * min(1.0, (self.step_now + 1) / self.kl_warmup)

    def extra_metrics(self) -> dict[str, tuple[float, float]]:
        """The terms of the evaluation losses since the last call (then cleared), as
        (sum, count): `recon_nll` per token and `kl` per phrase, in nats."""
        recon, kl, tokens, phrases = self._terms.tolist()
        self._terms.zero_()
        return {"recon_nll": (recon, tokens), "kl": (kl, phrases)}

    # ---- encoder ------------------------------------------------------------------------
    def encode(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, T] (right-padded), lengths [B] -> (mean, logvar) [B, latent]."""
        y, _ = self.enc(self.drop(self.enc_emb(tokens)))  # [B, T, He]
        idx = (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, y.shape[-1])
        out = self.to_latent(self.drop(y.gather(1, idx)[:, 0]))
        return out[:, : self.latent], out[:, self.latent :]

    # ---- decoder ------------------------------------------------------------------------
    def init_state(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's initial (h, c) [layers, B, hidden] for latents z [B, latent]."""
        B = z.shape[0]
        hc = torch.tanh(self.z_init(z)).view(B, 2, self.layers, self.hidden)
        return hc[:, 0].transpose(0, 1).contiguous(), hc[:, 1].transpose(0, 1).contiguous()

    def phases(self, tokens: Tensor) -> Tensor:
        """Position in the beat after each token of sequences that start on a beat."""
        return (self.steps[tokens].cumsum(1) % self.beat).long()

    def _embed(self, tokens: Tensor, phase: Tensor | None) -> Tensor:
        x = self.emb(tokens)
        if self.training and self.word_dropout:
            keep = torch.rand(tokens.shape, device=tokens.device) >= self.word_dropout
            x = x * keep[..., None].to(x.dtype)
        if self.beat:
            x = x + self.phase_emb(self.phases(tokens) if phase is None else phase)
        return x

    def forward(self, tokens: Tensor, z: Tensor, phase: Tensor | None = None) -> Tensor:
        """Teacher-forced decoder: logits [B, T, V] after each token of tokens [B, T]."""
        x = self.drop(self._embed(tokens, phase))
        x = torch.cat([x, z[:, None].expand(-1, x.shape[1], -1)], dim=-1)
        y, _ = self.dec(x, self.init_state(z))
        return self.head(self.drop(y))

    def step(self, token: Tensor, h: Tensor, c: Tensor, z: Tensor, *time: Tensor):
        """One decoder step; h, c are offsets from init_state(z) (see the module doc)."""
        h0, c0 = self.init_state(z)
        x = self.emb(token)
        if self.beat:
            t = time[0] + self.steps[token[:, 0]][:, None]  # [B, 1]
            t = t - torch.floor(t / self.beat) * self.beat
            x = x + self.phase_emb(t.long())
        x = torch.cat([x, z[:, None]], dim=-1)
        y, (h1, c1) = self.dec(x, (h + h0, c + c0))
        out = (self.head(y[:, -1]), h1 - h0, c1 - c0, z.clone())
        return (*out, t) if self.beat else out

    # ---- loss ---------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens, mask = batch["tokens"], batch["mask"]
        phase = batch.get("phase")
        lengths = mask.sum(1)
        mean, logvar = self.encode(tokens, lengths)
        if self.training:
            eps = torch.randn_like(mean)
        else:  # repeatable: the same batch draws the same noise
            g = torch.Generator().manual_seed(int(tokens.sum()) * 7919 + tokens.numel())
            eps = torch.randn(mean.shape, generator=g).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        logits = self(tokens[:, :-1], z, None if phase is None else phase[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        target = mask[:, 1:].flatten()
        recon = (nll * target).sum()
        n = target.sum()
        kl = 0.5 * (logvar.exp() + mean**2 - 1.0 - logvar)  # [B, latent]
        if not self.training:
            self._terms += torch.tensor(
                [float(recon.detach()), float(kl.detach().sum()), float(n), float(mean.shape[0])],
                dtype=torch.float64,
            )
            return recon + kl.sum(), n
        if self.free_bits:
            penalty = kl.mean(0).clamp(min=self.free_bits).sum() * kl.shape[0]
        else:
            penalty = kl.sum()
        return recon + self.beta_now() * penalty, n

    # ---- export -------------------------------------------------------------------------
    def state_spec(self) -> list[dict]:
        shape = [self.layers, "B", self.hidden]
        spec = [
            {"name": "h", "shape": shape},
            {"name": "c", "shape": shape},
            {"name": "z", "shape": ["B", self.latent]},
        ]
        return spec + ([{"name": "time", "shape": ["B", 1]}] if self.beat else [])

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec, GraphSpec, StepModule

        state = self.state_spec()
        zeros = [torch.zeros([2 if d == "B" else d for d in s["shape"]]) for s in state]
        names = [s["name"] for s in state]
        vocab = self.vocab

        def random_inputs(b, t, g):  # a random latent: the rollout starts from it
            return {
                "token": torch.randint(0, vocab, (b, t), generator=g),
                "z": torch.randn(b, self.latent, generator=g),
            }

        def random_phrases(b, g):
            t = int(torch.randint(2, 80, (1,), generator=g))
            lengths = torch.randint(1, t + 1, (b,), generator=g)
            lengths[0] = t
            return {"tokens": torch.randint(0, vocab, (b, t), generator=g), "lengths": lengths}

        def each_alone(inputs):  # every phrase encoded unpadded: padding must not count
            outs = [
                self.encode(tok[None, :n], n[None])
                for tok, n in zip(inputs["tokens"], inputs["lengths"])
            ]
            return {
                "mean": torch.cat([m for m, _ in outs]),
                "logvar": torch.cat([v for _, v in outs]),
            }

        encoder = GraphSpec(
            name="encoder",
            module=_Encoder(self),
            example_inputs=(torch.randint(0, vocab, (2, 7)), torch.tensor([7, 5])),
            input_names=["tokens", "lengths"],
            output_names=["mean", "logvar"],
            dynamic_axes={"tokens": {0: "B", 1: "T"}, "lengths": {0: "B"}},
            random_inputs=random_phrases,
            reference=each_alone,
        )
        return ExportSpec(
            module=StepModule(self),
            example_inputs=(torch.tensor([[1], [2]]) % vocab, *zeros),
            input_names=["token", *names],
            output_names=["logits", *(n + "_out" for n in names)],
            state=state,
            random_inputs=random_inputs,
            sequence=lambda seq: {"logits": self(seq["token"], seq["z"])},
            graphs=[encoder],
        )


class _Encoder(nn.Module):
    def __init__(self, model: LSTMVAE):
        super().__init__()
        self.model = model

    def forward(self, tokens, lengths):
        return self.model.encode(tokens, lengths)


# ---- family contract ---------------------------------------------------------------------
def build(family: str, rep, **model_args) -> LSTMVAE:
    return LSTMVAE(rep.vocab_size, **vae_args(FAMILY, "lstm_vae", family, rep, model_args))


def vae_args(own: str, module: str, family: str, rep, model_args: dict) -> dict:
    """A latent token family's build arguments (lstm-vae, transformer-vae): checked to be
    this family on a token representation, with the meter inputs where it counts time."""
    if family != own:
        raise ValueError(f"models.{module} builds {own!r} (received {family!r})")
    if rep.kind != "tokens":
        raise ValueError(
            f"{own} needs a token representation (received {rep.name!r}, which gives {rep.kind})"
        )
    if model_args.pop("meter", True) and rep.token_steps() is not None:
        model_args.update(
            meter=True, token_steps=rep.token_steps(), steps_per_beat=rep.steps_per_beat
        )
    return model_args


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator | None, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Phrases: windows of `seq_len + 1` tokens overlapping by one (each token predicted
    once an epoch), with their positions in the beat where the tokens carry time.
    Training: models/lstm.py's shuffled windows at a random phase. Evaluation: each piece cut
    from its start in a fixed order (a VAE is scored phrase by phrase, each from its own
    latent), `batch_size` phrases a batch."""
    if train:
        yield from lstm.batches(pieces, rep, cfg, rng, train)
        return
    steps = rep.token_steps()
    n = cfg["seq_len"] + 1
    windows = []
    for p in pieces:
        x = p if steps is None else np.stack([p, np.cumsum(steps[p]) % rep.steps_per_beat], 1)
        windows += [x[s : s + n] for s in range(0, len(p) - 1, n - 1) if len(x[s : s + n]) >= 2]
    for i in range(0, len(windows), cfg["batch_size"]):
        b = collate(windows[i : i + cfg["batch_size"]], "tokens")
        if steps is not None:
            both = b.pop("tokens")
            b = {"tokens": both[..., 0], "phase": both[..., 1], **b}
        yield b
