"""The seeds' three GANs (seeds 000 and 002), protocol `generator`: noise in, a block out.

- ``dcgan`` (seed 000): a DCGAN over piano-roll blocks, ``steps`` x ``keys`` (128 x 128:
  eight 4/4 bars of sixteenths over every MIDI key). Generator: a linear projection of the
  noise to a small grid, then ``layers`` transposed convolutions (x2 each; batch norm,
  ReLU); discriminator: ``layers`` strided convolutions (leaky ReLU) and a linear read-out.
- ``image-gan`` (seed 002's ImageGAN): the same kind of roll image, 106 keys (MIDI 21..126)
  x 100 steps; generator: dense layers from a 10-d noise, a transposed convolution and a
  convolution (leaky ReLU); discriminator: two strided 16-channel convolutions with dropout
  and one dense read-out.
- ``note-gan`` (seed 002's MidiGAN): MLPs over notes as (pitch, step, duration). The seed
  drew one note per sample (so its notes had no order); here a sample is a block of
  ``notes`` consecutive notes, each field scaled to [-1, 1] (pitch / 127; step and duration
  as the square root of beats over the representation's largest class).

Training (models/train.py's adversarial hook, docs/ARCHITECTURE.md "Family modules"):
``configure_optimizers`` gives one Adam over two parameter groups (generator, discriminator;
betas (``beta1``, 0.999)); ``train_step`` takes one discriminator step (real blocks against
detached fakes) then one generator step (the non-saturating loss), each on its own group.
The discriminator's step runs at ``d_lr_ratio`` times the schedule's learning rate (a two
time-scale rule: note-gan's discriminator at the generator's rate stayed at chance while
the generator drifted). Real labels are ``smooth`` (one-sided label smoothing) for the
discriminator. The
convolutional discriminators are spectrally normalized where the seeds used batch norm:
with batch norm, the discriminator's verdict in eval mode (running statistics of separate
real and fake batches, mixed) was not the one it trained with, and held out it called every
real block fake.
The validation number (``loss``) is the discriminator's binary cross-entropy on held-out real
blocks and as many fresh fakes, nats per block, with hard labels (ln 2 = 0.693: it cannot
tell them apart); it is a diagnostic, not a likelihood, so the loop keeps the last weights.
``extra_metrics``: the discriminator's accuracy on real and on fake blocks, and the share of
cells (rolls) the fakes and the reals turn on.

Export (``export_spec``): the generator alone as a stateless step: input ``noise`` [B,
latent], output ``block``: rolls [B, steps, P] (probability that each key of the
representation's P sounds on each step; keys outside the model's window are 0), notes [B,
notes, 3] (pitch / 127, step / max_step and duration / max_duration, the representation's
largest classes in beats: each 0..1, unrounded; in MIDI numbers and beats the exporter's
1e-4 parity would be a test of float32 rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.errors import ConfigError

FAMILIES = ("dcgan", "image-gan", "note-gan")
# [train] keys of these families (models/train.py SCHEMA form): Adam's beta1, the real label
# the discriminator aims at, and the fewest sounding cells (rolls) or notes a real block needs
TRAIN_KEYS = {
    "beta1": ((float, int), 0.5),
    "d_lr_ratio": ((float, int), 1.0),  # the discriminator's learning rate / the generator's
    "smooth": ((float, int), 0.9),
    "min_fill": ((float, int), 0.01),
}


# a roll generator's last bias starts at the logit of 3% of cells on (about the corpus's
# density), not at 0 (half the keys on): the first steps then shape notes, not sparsity
SPARSE_LOGIT = math.log(0.03 / 0.97)


# ---- the players ----------------------------------------------------------------------------
class DCGenerator(nn.Module):
    """noise [B, latent] -> logits [B, 1, steps, keys] (DCGAN: project, then up x2 per layer)."""

    def __init__(self, latent: int, steps: int, keys: int, channels: int, layers: int):
        super().__init__()
        self.h, self.w = steps // 2**layers, keys // 2**layers
        self.c = channels
        self.proj = nn.Linear(latent, channels * self.h * self.w, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        ups: list[nn.Module] = []
        c = channels
        for i in range(layers):
            last = i == layers - 1
            out = 1 if last else max(c // 2, 8)
            ups.append(nn.ConvTranspose2d(c, out, 4, 2, 1, bias=last))
            if not last:
                ups += [nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.ups = nn.Sequential(*ups)
        nn.init.constant_(ups[-1].bias, SPARSE_LOGIT)

    def forward(self, z: Tensor) -> Tensor:
        x = self.proj(z).view(-1, self.c, self.h, self.w)
        return self.ups(F.relu(self.bn0(x)))


class DCDiscriminator(nn.Module):
    """block [B, 1, steps, keys] -> logit [B] (strided convolutions, then linear)."""

    def __init__(self, steps: int, keys: int, channels: int, layers: int, dropout: float):
        super().__init__()
        convs: list[nn.Module] = []
        c_in = 1
        for i in range(layers):
            c = min(channels * 2**i, 256)
            convs += [_sn(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            c_in = c
        self.convs = nn.Sequential(*convs)
        self.out = _sn(nn.Linear(c_in * (steps // 2**layers) * (keys // 2**layers), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.convs(x).flatten(1)).squeeze(1)


class ImageGenerator(nn.Module):
    """ImageGAN's generator: dense layers, then one transposed convolution (x2 twice here:
    the image is built at a quarter size) and a convolution; cropped to steps x keys."""

    def __init__(self, latent: int, steps: int, keys: int, hidden: int, channels: int):
        super().__init__()
        self.steps, self.keys, self.c = steps, keys, channels
        self.h, self.w = math.ceil(steps / 4), math.ceil(keys / 4)
        act = nn.LeakyReLU(0.2)
        self.dense = nn.Sequential(
            nn.Linear(latent, hidden // 2),
            act,
            nn.Linear(hidden // 2, hidden),
            act,
            nn.Linear(hidden, channels * self.h * self.w),
            act,
        )
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 4, 2, 1),
            act,
            nn.ConvTranspose2d(channels, channels, 4, 2, 1),
            act,
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        nn.init.constant_(self.convs[-1].bias, SPARSE_LOGIT)

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(z).view(-1, self.c, self.h, self.w)
        return self.convs(x)[:, :, : self.steps, : self.keys]


class ImageDiscriminator(nn.Module):
    """ImageGAN's discriminator: two strided 16-channel convolutions with dropout and leaky
    ReLU, then one dense read-out."""

    def __init__(self, steps: int, keys: int, channels: int, dropout: float):
        super().__init__()
        act, drop = nn.LeakyReLU(0.2), nn.Dropout(dropout)
        self.convs = nn.Sequential(
            _sn(nn.Conv2d(1, channels, 3, 2, 1)),
            drop,
            act,
            _sn(nn.Conv2d(channels, channels, 3, 2, 1)),
            drop,
            act,
        )
        n = channels * math.ceil(math.ceil(steps / 2) / 2) * math.ceil(math.ceil(keys / 2) / 2)
        self.out = _sn(nn.Linear(n, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.convs(x).flatten(1)).squeeze(1)


def _sn(layer: nn.Module) -> nn.Module:
    """Spectral normalization: the discriminators' stabilizer instead of the seeds' batch
    norm, whose held-out verdict (running statistics of real and fake batches mixed) was not
    the one it trained with (module doc)."""
    return nn.utils.parametrizations.spectral_norm(layer)


class NoteGenerator(nn.Module):
    """MidiGAN's generator: noise -> dense 128, 256, 512 (batch norm, leaky ReLU) -> tanh."""

    def __init__(self, latent: int, notes: int, widths: tuple[int, ...] = (128, 256, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        n = latent
        for w in widths:
            layers += [nn.Linear(n, w), nn.BatchNorm1d(w), nn.LeakyReLU(0.2)]
            n = w
        self.net = nn.Sequential(*layers, nn.Linear(n, notes * 3), nn.Tanh())
        self.notes = notes

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, self.notes, 3)


class NoteDiscriminator(nn.Module):
    """MidiGAN's discriminator: dense 512, 256, 128 (leaky ReLU, dropout) -> logit."""

    def __init__(self, notes: int, dropout: float, widths: tuple[int, ...] = (512, 256, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        n = notes * 3
        for w in widths:
            layers += [nn.Linear(n, w), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            n = w
        self.net = nn.Sequential(*layers, nn.Linear(n, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


# ---- the GAN --------------------------------------------------------------------------------
class GAN(nn.Module):
    """A generator, a discriminator, and how blocks look to them (see the module doc)."""

    protocol = "generator"
    unit = "block"

    def __init__(self, family: str, rep, model_args: dict):
        super().__init__()
        self.family = family
        self.model_args = dict(model_args)
        a = self.model_args
        self.latent = a["latent"]
        if family == "note-gan":
            self.length = a["notes"]
            self.G = NoteGenerator(self.latent, self.length)
            self.D = NoteDiscriminator(self.length, a["dropout"])
            res = rep.params.resolution
            # class index -> beats, and the scale of each field (sqrt of beats / largest)
            self.register_buffer("step_beats", torch.arange(rep.fields[1]) / res, False)
            self.register_buffer("dur_beats", (torch.arange(rep.fields[2]) + 1) / res, False)
            self.max_step, self.max_dur = (rep.fields[1] - 1) / res, rep.fields[2] / res
        else:
            self.length, self.keys, self.low = a["steps"], a["keys"], a["low"]
            self.width = rep.vocab_size  # the representation's keys
            if family == "dcgan":
                self.G = DCGenerator(
                    self.latent, self.length, self.keys, a["channels"], a["layers"]
                )
                self.D = DCDiscriminator(
                    self.length, self.keys, a["disc_channels"], a["layers"], a["dropout"]
                )
            else:
                self.G = ImageGenerator(
                    self.latent, self.length, self.keys, a["hidden"], a["channels"]
                )
                self.D = ImageDiscriminator(
                    self.length, self.keys, a["disc_channels"], a["dropout"]
                )
        self.tr: dict = {}
        self._terms = self._zero_terms()

    # -- blocks as the players see them: rolls in [0, 1], notes in [-1, 1] --
    def real(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["notes" if self.family == "note-gan" else "block"]
        if x.shape[1] != self.length:
            raise ConfigError(
                f"{self.family}: [train] seq_len must equal the block length "
                f"{self.length} (blocks of {x.shape[1]} came)"
            )
        if self.family == "note-gan":
            n = x  # class indices [B, N, 3]
            pitch = n[..., 0].float() / 127 * 2 - 1
            step = torch.sqrt(self.step_beats[n[..., 1]] / self.max_step) * 2 - 1
            dur = torch.sqrt(self.dur_beats[n[..., 2]] / self.max_dur) * 2 - 1
            return torch.stack([pitch, step, dur], dim=-1)
        roll = x[:, :, self.low : self.low + self.keys]  # [B, steps, keys]
        return roll[:, None].float()

    def fake(self, z: Tensor) -> Tensor:
        x = self.G(z)
        return x if self.family == "note-gan" else torch.sigmoid(x)

    def generate(self, noise: Tensor) -> Tensor:
        """The exported graph: noise [B, latent] -> block (see the module doc)."""
        x = self.fake(noise)
        if self.family == "note-gan":  # shares of 127, max_step, max_duration: 0..1
            u = ((x + 1) / 2).clamp(0, 1)  # pitch is scaled linearly, step and duration
            return torch.cat([u[..., :1], u[..., 1:] ** 2], dim=-1)  # by their square roots
        roll = x[:, 0]  # [B, steps, keys] -> the representation's width
        return F.pad(roll, (self.low, self.width - self.low - self.keys))

    # -- training (models/train.py's adversarial hook) --
    def configure_optimizers(self, tr: dict) -> torch.optim.Optimizer:
        """One Adam, two groups: generator (0) and discriminator (1); train_step steps one
        group at a time. The loop sets the learning rate of both from its schedule."""
        self.tr = tr
        return torch.optim.Adam(
            [{"params": list(self.G.parameters())}, {"params": list(self.D.parameters())}],
            lr=tr["lr"],
            betas=(tr["beta1"], 0.999),
            weight_decay=tr["weight_decay"],
        )

    def train_step(self, batch: dict[str, Tensor], opt: torch.optim.Optimizer) -> dict:
        """One discriminator step, then one generator step. Returns the generator's loss
        (``loss``, nats per block), the discriminator's, and ``count`` (real blocks)."""
        real = self.real(batch)
        b = real.shape[0]
        z = torch.randn(b, self.latent, device=real.device)
        fake = self.fake(z)
        ones = torch.full((b,), float(self.tr["smooth"]), device=real.device)
        zeros = torch.zeros(b, device=real.device)
        d_loss = F.binary_cross_entropy_with_logits(
            self.D(real), ones
        ) + F.binary_cross_entropy_with_logits(self.D(fake.detach()), zeros)
        self._player_step(opt, d_loss, group=1)
        g_loss = F.binary_cross_entropy_with_logits(self.D(fake), torch.ones_like(zeros))
        self._player_step(opt, g_loss, group=0)
        return {"loss": g_loss.item(), "d_loss": d_loss.item() / 2, "count": b}

    def _player_step(self, opt, loss: Tensor, group: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        other = opt.param_groups[1 - group]["params"]
        for p in other:  # only this player moves
            p.grad = None
        if self.tr.get("grad_clip"):
            nn.utils.clip_grad_norm_(opt.param_groups[group]["params"], self.tr["grad_clip"])
        g = opt.param_groups[group]
        lr = g["lr"]  # the loop's schedule; the discriminator's scaled by d_lr_ratio
        g["lr"] = lr * (self.tr.get("d_lr_ratio", 1.0) if group == 1 else 1.0)
        opt.step()
        g["lr"] = lr

    # -- validation: the discriminator on held-out reals and fresh fakes --
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        real = self.real(batch)
        b = real.shape[0]
        gen = torch.Generator(device=real.device).manual_seed(len(self._terms["real"]))
        z = torch.randn(b, self.latent, device=real.device, generator=gen)
        fake = self.fake(z)
        d_real, d_fake = self.D(real), self.D(fake)
        bce = F.binary_cross_entropy_with_logits(
            d_real, torch.ones_like(d_real), reduction="sum"
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake), reduction="sum")
        t = self._terms
        t["real"].append(((d_real > 0).sum().item(), b))
        t["fake"].append(((d_fake < 0).sum().item(), b))
        if self.family != "note-gan":
            cells = real[0].numel()
            t["fill_real"].append((real.sum().item() / cells, b))
            t["fill_fake"].append(((fake > 0.5).sum().item() / cells, b))
        return bce, torch.tensor(2 * b, device=real.device)

    @staticmethod
    def _zero_terms() -> dict:
        return {"real": [], "fake": [], "fill_real": [], "fill_fake": []}

    def extra_metrics(self) -> dict[str, tuple[float, float]]:
        """Discriminator accuracy on real / fake blocks; share of cells on (rolls)."""
        names = {
            "real": "d_acc_real",
            "fake": "d_acc_fake",
            "fill_real": "fill_real",
            "fill_fake": "fill_fake",
        }
        out = {
            names[k]: (float(sum(s for s, _ in v)), float(sum(n for _, n in v)))
            for k, v in self._terms.items()
            if v
        }
        self._terms = self._zero_terms()
        return out

    # -- export --
    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec

        latent = self.latent

        def random_inputs(b, t, g):
            return {"noise": torch.randn(b, t, latent, generator=g)}

        def sequence(seq):
            z = seq["noise"]
            out = self.generate(z.flatten(0, 1))
            return {"block": out.view(z.shape[0], z.shape[1], *out.shape[1:])}

        return ExportSpec(
            module=_Generate(self),
            example_inputs=(torch.randn(2, latent),),
            input_names=["noise"],
            output_names=["block"],
            state=[],
            random_inputs=random_inputs,
            sequence=sequence,
        )


class _Generate(nn.Module):
    def __init__(self, gan: GAN):
        super().__init__()
        self.gan = gan

    def forward(self, noise: Tensor) -> tuple[Tensor]:
        return (self.gan.generate(noise),)  # a step's outputs are a tuple


# ---- the family module's contract -----------------------------------------------------------
DEFAULTS = {
    "dcgan": dict(latent=128, steps=128, keys=128, low=0, channels=256, disc_channels=32, layers=5),
    "image-gan": dict(
        latent=10, steps=100, keys=106, low=21, hidden=256, channels=16, disc_channels=16
    ),
    "note-gan": dict(latent=100, notes=32),
}


def build(family: str, rep, **model_args) -> GAN:
    if family not in FAMILIES:
        raise ValueError(f"models.gan builds {list(FAMILIES)} (received {family!r})")
    args = dict(DEFAULTS[family])
    unknown = set(model_args) - set(args) - {"dropout"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} for {family}; allowed: {sorted(args)}")
    args.update(model_args)
    args.setdefault("dropout", 0.3)
    for k, v in args.items():
        if k != "dropout" and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{k} must be an integer >= 0 (received {v!r})")
    if family == "note-gan":
        if rep.name != "notes":
            raise ValueError(f"note-gan needs the notes representation (received {rep.name!r})")
    else:
        if rep.name != "pianoroll" or rep.params.onsets:
            raise ValueError(f"{family} needs a pianoroll representation without onsets")
        if args["low"] + args["keys"] > rep.vocab_size:
            raise ValueError(
                f"low + keys = {args['low'] + args['keys']} exceeds the "
                f"representation's {rep.vocab_size} keys"
            )
        if family == "dcgan":
            m = 2 ** args["layers"]
            if args["steps"] % m or args["keys"] % m:
                raise ValueError(f"steps and keys must be multiples of 2**layers = {m}")
    return GAN(family, rep, args)


def blocks(pieces: list[np.ndarray], length: int, phase: int, min_fill: float, rep) -> list:
    """Consecutive blocks of `length` frames (or notes) of each piece, from `phase`; blocks
    that are too empty (rolls: less than `min_fill` of their cells on; notes: shorter than
    `length`) are left out. Notes come as class triples [length, 3]."""
    out = []
    for p in pieces:
        if rep.kind != "frames":
            p = p.reshape(-1, 3) - np.asarray(rep.offsets, dtype=p.dtype)
        for s in range(phase % length if len(p) > length else 0, len(p) - length + 1, length):
            w = p[s : s + length]
            if rep.kind == "frames" and w.mean() < min_fill:
                continue
            out.append(w)
    return out


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator | None, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Blocks of ``[train] seq_len`` frames (rolls: ``{"block": [B, seq_len, P]}``) or notes
    (``{"notes": [B, seq_len, 3]}`` class indices); seq_len must equal the model's block
    length. Training: each epoch at a random phase, shuffled, whole batches only;
    evaluation: from each piece's start, in order."""
    n, bs = cfg["seq_len"], cfg["batch_size"]
    phase = int(rng.integers(0, n)) if train else 0
    found = blocks(pieces, n, phase, cfg.get("min_fill", 0.01), rep)
    key = "block" if rep.kind == "frames" else "notes"
    order = rng.permutation(len(found)) if train else np.arange(len(found))
    for i in range(0, len(order), bs):
        idx = order[i : i + bs]
        if train and len(idx) < bs:
            return  # batch norm wants whole batches
        x = np.stack([found[j] for j in idx])
        yield {key: torch.from_numpy(x.astype(np.float32 if key == "block" else np.int64))}
