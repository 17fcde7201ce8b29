"""transformer-vae: seed 000's Transformer variational autoencoder, the lstm-vae's interface
(models/lstm_vae.py) with Transformers on both sides (protocol `token-step` with a latent `z`
in the state, plus an encoder graph).

- encoder: models/classifier.py's PhraseEncoder (token embedding, `enc_layers` pre-norm
  bidirectional self-attention blocks with rotary positions, padding masked, the mean over
  the phrase) and a linear layer to the mean and log-variance of a `latent`-d Gaussian;
- decoder: models/transformer.py's causal blocks (`layers`, rotary positions, attention over
  the last `context` tokens) reading each token's embedding plus a projection of z (the
  decoder sees z at every step), plus with `meter` the embedding of the position in the
  beat (as lstm-vae); a linear head gives the next token's logits.

The loss, its KL warm-up, free bits, word dropout and the terms it reports are lstm-vae's
(the same methods); so are the phrases (`batches`).

Step graph ("latent token-step", docs/ARCHITECTURE.md): the transformer family's ring-buffer
KV cache (`past_k`, `past_v` [layers, B, heads, context, head_dim], `pos` [B]) plus `z`
[B, latent] (read every step, written back unchanged) and, with `meter`, `time` [B, 1]. The
zero state with a given z is the decoder's start for that latent, as for lstm-vae, so
LatentVoice (companion/voices.py) and companion/latent.py drive it unchanged. The encoder is
`<name>.encoder.onnx`: `tokens` [B, T], `lengths` [B] -> `mean`, `logvar` [B, latent].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from midi_companion.models import lstm_vae
from midi_companion.models.classifier import PhraseEncoder
from midi_companion.models.lstm_vae import LSTMVAE, check_vae_args, vae_args
from midi_companion.models.transformer import Block
from midi_companion.models.transformer import _init as init_weights

FAMILY = "transformer-vae"
PROTOCOL = "token-step"


class TransformerVAE(nn.Module):
    family = FAMILY
    protocol = PROTOCOL
    unit = "token"

    # lstm-vae's loss, schedule and reported terms, and its beat embedding, read the same
    # attributes here (encode, forward, beta, kl_warmup, free_bits, word_dropout, emb, ...)
    set_step = LSTMVAE.set_step
    beta_now = LSTMVAE.beta_now
    extra_metrics = LSTMVAE.extra_metrics
    loss = LSTMVAE.loss
    phases = LSTMVAE.phases
    _embed = LSTMVAE._embed

    def __init__(
        self,
        vocab: int,
        d_model: int = 256,
        heads: int = 4,
        enc_layers: int = 4,
        layers: int = 4,
        context: int = 256,
        latent: int = 20,
        dropout: float = 0.1,
        word_dropout: float = 0.0,
        beta: float = 1.0,
        kl_warmup: int = 0,
        free_bits: float = 0.0,
        rope_base: float = 10000.0,
        meter: bool = False,
        token_steps=None,
        steps_per_beat: int = 0,
    ):
        super().__init__()
        sizes = dict(latent=(latent, 1), layers=(layers, 1), enc_layers=(enc_layers, 1))
        sizes["context"] = (context, 2)
        check_vae_args(FAMILY, sizes, kl_warmup, word_dropout, beta, free_bits)
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(
                f"{FAMILY}: d_model / heads must be an even integer "
                f"(received d_model={d_model}, heads={heads})"
            )
        self.model_args = dict(
            d_model=d_model,
            heads=heads,
            enc_layers=enc_layers,
            layers=layers,
            context=context,
            latent=latent,
            dropout=dropout,
            word_dropout=word_dropout,
            beta=beta,
            kl_warmup=kl_warmup,
            free_bits=free_bits,
            rope_base=rope_base,
            meter=bool(meter),
        )
        self.vocab, self.d, self.heads, self.layers = vocab, d_model, heads, layers
        self.context, self.latent, self.hd = context, latent, d_model // heads
        self.beta, self.kl_warmup, self.free_bits = float(beta), kl_warmup, float(free_bits)
        self.word_dropout = float(word_dropout)
        self.drop = nn.Dropout(dropout)
        self.encoder = PhraseEncoder(vocab, d_model, heads, enc_layers, dropout, rope_base)
        self.to_latent = nn.Linear(d_model, 2 * latent)
        self.emb = nn.Embedding(vocab, d_model)
        self.z_in = nn.Linear(latent, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        inv = rope_base ** (-torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.beat = 0
        if meter:
            self.beat = int(steps_per_beat)
            self.register_buffer("steps", torch.as_tensor(token_steps, dtype=torch.float32))
            self.phase_emb = nn.Embedding(self.beat, d_model)
        self.apply(init_weights)
        self.step_now = 0
        self._terms = torch.zeros(4, dtype=torch.float64)  # recon, kl, tokens, phrases

    def encode(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, T] (right-padded), lengths [B] -> (mean, logvar) [B, latent]."""
        out = self.to_latent(self.drop(self.encoder(tokens, lengths)))
        return out[:, : self.latent], out[:, self.latent :]

    def forward(self, tokens: Tensor, z: Tensor, phase: Tensor | None = None) -> Tensor:
        """Teacher-forced decoder: logits [B, T, V] after each token of tokens [B, T]."""
        x = self.drop(self._embed(tokens, phase) + self.z_in(z)[:, None])
        for block in self.blocks:
            x = block(x, self.inv_freq, self.context)
        return self.head(self.ln_f(x))

    def step(self, token: Tensor, past_k: Tensor, past_v: Tensor, pos: Tensor, z: Tensor, *time):
        """One decoder step over the ring-buffer cache (models/transformer.py)."""
        x = self.emb(token[:, 0])  # [B, d]
        if self.beat:
            t = time[0] + self.steps[token[:, 0]][:, None]  # [B, 1]
            t = t - torch.floor(t / self.beat) * self.beat
            x = x + self.phase_emb(t[:, 0].long())
        x = x + self.z_in(z)
        C = self.context
        slots = torch.arange(C, device=x.device, dtype=pos.dtype)
        slot = slots[None, :] == (pos - C * torch.floor(pos / C))[:, None]  # [B, C]
        filled = slots[None, :] <= pos[:, None]
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, pos, slot, filled, past_k[i], past_v[i], self.inv_freq)
            ks.append(k)
            vs.append(v)
        out = (self.head(self.ln_f(x)), torch.stack(ks), torch.stack(vs), pos + 1, z.clone())
        return (*out, t) if self.beat else out

    # ---- export -------------------------------------------------------------------------
    def state_spec(self) -> list[dict]:
        cache = [self.layers, "B", self.heads, self.context, self.hd]
        spec = [
            {"name": "past_k", "shape": cache},
            {"name": "past_v", "shape": cache},
            {"name": "pos", "shape": ["B"]},
            {"name": "z", "shape": ["B", self.latent]},
        ]
        return spec + ([{"name": "time", "shape": ["B", 1]}] if self.beat else [])

    # lstm-vae's export: the same step inputs, encoder graph (_Encoder calls `encode`) and
    # parity checks, over this model's state_spec, step and forward
    export_spec = LSTMVAE.export_spec


def build(family: str, rep, **model_args) -> TransformerVAE:
    args = vae_args(FAMILY, "transformer_vae", family, rep, model_args)
    return TransformerVAE(rep.vocab_size, **args)


batches = lstm_vae.batches
