"""vae-nn: the thesis band (seed 004) -- a convolutional VAE per track over blocks, an MLP that
predicts the lead's next block latent, and one MLP per accompanying track that predicts its
next latent from its own previous one and the lead's next (protocol `band-step`).

Over the `multitrack` representation (frames [T, K, P]; row 0 is the lead). A piece is cut
into blocks of BLOCK (32) grid steps from its start; each block of each row is a binary image
[32, P] (P = 128 keys for the thesis' full range).

- ConvVAE (one per row): conv 4x4/4 -> conv 4x4/4 -> conv over what is left (the thesis'
  2x8 at 32 x 128) -> linear -> mean and log-variance of a `latent`-d Gaussian (16 in the
  thesis); the decoder mirrors it with transposed convolutions and gives per-cell Bernoulli
  logits. Loss: the cells' binary cross-entropy (nats) + `beta` x KL(q || N(0, I)).
- MelodyNN: MLP latent -> hidden -> hidden -> latent (dropout after the first layer):
  the lead's block t latent -> its block t+1 latent.
- ConditionalNN (one per accompanying row): MLP [own latent at t, lead's latent at t+1]
  -> hidden -> own latent at t+1.

One config trains all of it at once: the VAEs on every block; the two MLPs on consecutive
block pairs with the encoders' latents detached (inputs: a draw from q of block t, as the
thesis trained them; targets: q's mean at t+1), so their losses never move the VAEs. The
ConditionalNNs read the MelodyNN's prediction (detached), which is what they get when
playing (the player's next block is not known yet). Their losses are Gaussian NLLs with unit
variance and the constant dropped (half the squared error), weighted by `nn_weight`. The
loop's unit is the block: the NLL is the summed loss per block (all rows).

Export (docs/ARCHITECTURE.md, "band-step"): the step graph is the MelodyNN and the
ConditionalNNs (input `lead` [B, D], `noise` [B, K, D], state `parts` [B, K-1, D]; outputs
`lead_next` [B, D], `parts_out`), beside it the `encoder` graph (rolls [B, K, 32, P] ->
`mean`, `logvar` [B, K, D], each row through its own encoder) and the `decoder` graph
(`z` [B, K, D] -> `probs` [B, K, 32, P], each row through its own decoder).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midi_companion.band import blocks

FAMILY = "vae-nn"
PROTOCOL = "band-step"
BLOCK = 32  # grid steps per block (the thesis' 32 x 128 images)


class ConvVAE(nn.Module):
    """One track's VAE over [BLOCK, P] binary blocks (the pitch axis padded to a multiple of
    16 inside)."""

    def __init__(self, keys: int, latent: int, channels: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = channels
        self.P = keys
        self.Pp = -(-keys // 16) * 16
        rest = (BLOCK // 16, self.Pp // 16)  # what two 4x4/4 convolutions leave
        self.enc = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(c2, c3, rest, stride=rest),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c3, 2 * latent),
        )
        self.up = nn.Linear(latent, c3)
        self.dec = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(c3, c2, rest, stride=rest),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=4),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=4),
        )
        with torch.no_grad():  # start from sparse blocks (a few % of cells sound), not 50%
            self.dec[-1].bias.fill_(-4.0)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, BLOCK, P] -> mean, logvar [N, latent]."""
        x = F.pad(x, (0, self.Pp - self.P))[:, None]
        mean, logvar = self.enc(x).chunk(2, dim=-1)
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """z [N, latent] -> logits [N, BLOCK, P]."""
        h = self.up(z)[:, :, None, None]
        return self.dec(h)[:, 0, :, : self.P]


class VAENN(nn.Module):
    family = FAMILY
    protocol = PROTOCOL
    unit = "block"

    def __init__(
        self,
        keys: int,
        tracks: list[str],
        latent: int = 16,
        channels: list[int] = (64, 128, 256),
        hidden: int = 128,
        beta: float = 1.0,
        nn_weight: float = 1.0,
        dropout: float = 0.2,
    ):
        super().__init__()
        tracks = list(tracks)
        if len(tracks) < 2:
            raise ValueError(f"vae-nn needs a lead and >= 1 other track (received {tracks})")
        if len(channels) != 3 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be three positive integers (received {channels!r})")
        for name, value in (("latent", latent), ("hidden", hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1 (received {value!r})")
        self.model_args = dict(
            keys=keys,
            tracks=tracks,
            latent=latent,
            channels=list(channels),
            hidden=hidden,
            beta=beta,
            nn_weight=nn_weight,
            dropout=dropout,
        )
        self.P, self.K, self.D = keys, len(tracks), latent
        self.tracks = tracks
        self.beta, self.nn_weight = float(beta), float(nn_weight)
        self.vaes = nn.ModuleList(ConvVAE(keys, latent, tuple(channels)) for _ in tracks)
        self.melody = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, latent),
        )
        self.conditional = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * latent, hidden), nn.ReLU(), nn.Linear(hidden, latent))
            for _ in tracks[1:]
        )
        # recon per row, kl, melody, conditional, blocks, pairs (evaluation only)
        self._terms = torch.zeros(self.K + 5, dtype=torch.float64)

    # ---- the parts ------------------------------------------------------------------------
    def encode(self, rolls: Tensor) -> tuple[Tensor, Tensor]:
        """rolls [B, K, BLOCK, P] -> mean, logvar [B, K, D] (row k through VAE k)."""
        out = [vae.encode(rolls[:, k]) for k, vae in enumerate(self.vaes)]
        return torch.stack([m for m, _ in out], 1), torch.stack([v for _, v in out], 1)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, K, D] -> logits [B, K, BLOCK, P]."""
        return torch.stack([vae.decode(z[:, k]) for k, vae in enumerate(self.vaes)], 1)

    def band_step(self, lead: Tensor, noise: Tensor, parts: Tensor) -> tuple[Tensor, Tensor]:
        """The lead's latent at t [B, D], noise [B, K, D] (added to each prediction), the
        accompaniment's latents at t [B, K-1, D] -> the lead's predicted latent at t+1 [B, D]
        and the accompaniment's at t+1 [B, K-1, D]."""
        lead_next = self.melody(lead) + noise[:, 0]
        parts_next = [
            net(torch.cat([parts[:, k], lead_next], -1)) + noise[:, k + 1]
            for k, net in enumerate(self.conditional)
        ]
        return lead_next, torch.stack(parts_next, 1)

    # ---- training -------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(summed loss over the blocks, blocks): per row reconstruction BCE + beta KL, and
        for each block with a successor nn_weight x (melody + conditional) half squared
        errors in latent space."""
        cur, nxt, pair = batch["cur"], batch["next"], batch["pair"]
        mean, logvar = self.encode(cur)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, cur, reduction="none").sum((2, 3))
        kl = 0.5 * (logvar.exp() + mean.pow(2) - 1 - logvar).sum(-1)  # [B, K]
        with torch.no_grad():
            target, _ = self.encode(nxt)
        zin = z.detach()
        lead_next = self.melody(zin[:, 0])
        mel = 0.5 * (lead_next - target[:, 0]).pow(2).sum(-1) * pair
        cond = sum(
            0.5
            * (net(torch.cat([zin[:, k + 1], lead_next.detach()], -1)) - target[:, k + 1])
            .pow(2)
            .sum(-1)
            for k, net in enumerate(self.conditional)
        )
        cond = cond * pair
        total = recon.sum() + self.beta * kl.sum() + self.nn_weight * (mel.sum() + cond.sum())
        if not self.training:
            with torch.no_grad():
                t = torch.cat(
                    [
                        recon.sum(0).double().cpu(),
                        torch.stack([kl.sum(), mel.sum(), cond.sum()]).double().cpu(),
                        torch.tensor([float(cur.shape[0]), float(pair.sum())], dtype=torch.float64),
                    ]
                )
                self._terms += t
        return total, torch.tensor(float(cur.shape[0]), device=cur.device)

    def extra_metrics(self) -> dict[str, tuple[float, float]]:
        """The evaluation terms since the last call (then cleared), as (sum, count): each
        row's reconstruction NLL per block (`recon_<track>`, nats), the KL per block (all
        rows), and the melody and conditional losses per block pair (half squared error)."""
        t = self._terms.tolist()
        self._terms.zero_()
        blocks, pairs = t[-2], t[-1]
        out = {f"recon_{name}": (t[k], blocks) for k, name in enumerate(self.tracks)}
        out.update(kl=(t[self.K], blocks), melody=(t[self.K + 1], pairs))
        out["conditional"] = (t[self.K + 2], pairs)
        return out

    # ---- export ---------------------------------------------------------------------------
    def state_spec(self) -> list[dict]:
        return [{"name": "parts", "shape": ["B", self.K - 1, self.D]}]

    def export_spec(self):
        from midi_companion.models.export_spec import ExportSpec, GraphSpec

        K, D, P = self.K, self.D, self.P

        def random_inputs(b, t, g):
            return {
                "lead": torch.randn(b, t, D, generator=g),
                "noise": 0.5 * torch.randn(b, t, K, D, generator=g),
                "parts": torch.randn(b, K - 1, D, generator=g),
            }

        def sequence(seq):
            parts, outs = seq["parts"], []
            for t in range(seq["lead"].shape[1]):
                lead_next, parts = self.band_step(seq["lead"][:, t], seq["noise"][:, t], parts)
                outs.append(lead_next)
            return {"lead_next": torch.stack(outs, 1)}

        def random_rolls(b, g):
            return {"rolls": (torch.rand(b, K, BLOCK, P, generator=g) < 0.05).float()}

        def each_alone(x):
            m, v = zip(*(self.encode(r[None]) for r in x["rolls"]))
            return {"mean": torch.cat(m), "logvar": torch.cat(v)}

        def decoded_alone(x):
            return {"probs": torch.cat([torch.sigmoid(self.decode(z[None])) for z in x["z"]])}

        encoder = GraphSpec(
            name="encoder",
            module=_Encoder(self),
            example_inputs=(torch.zeros(2, K, BLOCK, P),),
            input_names=["rolls"],
            output_names=["mean", "logvar"],
            dynamic_axes={"rolls": {0: "B"}},
            random_inputs=random_rolls,
            reference=each_alone,
        )
        decoder = GraphSpec(
            name="decoder",
            module=_Decoder(self),
            example_inputs=(torch.zeros(2, K, D),),
            input_names=["z"],
            output_names=["probs"],
            dynamic_axes={"z": {0: "B"}},
            random_inputs=lambda b, g: {"z": torch.randn(b, K, D, generator=g)},
            reference=decoded_alone,
        )
        return ExportSpec(
            module=_Step(self),
            example_inputs=(torch.zeros(2, D), torch.zeros(2, K, D), torch.zeros(2, K - 1, D)),
            input_names=["lead", "noise", "parts"],
            output_names=["lead_next", "parts_out"],
            state=self.state_spec(),
            random_inputs=random_inputs,
            sequence=sequence,
            graphs=[encoder, decoder],
        )


class _Step(nn.Module):
    def __init__(self, model: VAENN):
        super().__init__()
        self.model = model

    def forward(self, lead, noise, parts):
        return self.model.band_step(lead, noise, parts)


class _Encoder(nn.Module):
    def __init__(self, model: VAENN):
        super().__init__()
        self.model = model

    def forward(self, rolls):
        return self.model.encode(rolls)


class _Decoder(nn.Module):
    def __init__(self, model: VAENN):
        super().__init__()
        self.model = model

    def forward(self, z):
        return torch.sigmoid(self.model.decode(z))


# ---- family contract ---------------------------------------------------------------------
def build(family: str, rep, **model_args) -> VAENN:
    if family != FAMILY:
        raise ValueError(f"models.vae_nn builds {FAMILY!r} (received {family!r})")
    if rep.name != "multitrack":
        raise ValueError(f"{FAMILY} needs the multitrack representation (received {rep.name!r})")
    K, P = rep.frame_shape
    model_args.setdefault("keys", P)
    model_args.setdefault("tracks", rep.track_names())
    return VAENN(**model_args)


def block_pairs(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every block that holds a note, with its index and whether a successor follows:
    (blocks [N, K, BLOCK, P] uint8 of all pieces, items [M, 2] = (block index, has next))."""
    all_blocks, items, base = [], [], 0
    for p in pieces:
        b = blocks(np.asarray(p), BLOCK)
        sounding = b.reshape(len(b), -1).any(1)
        items += [(base + i, int(i + 1 < len(b))) for i in range(len(b)) if sounding[i]]
        all_blocks.append(b)
        base += len(b)
    stacked = np.concatenate(all_blocks) if all_blocks else np.zeros((0,), np.uint8)
    return stacked, np.asarray(items, dtype=np.int64).reshape(-1, 2)


def batches(
    pieces: list[np.ndarray], rep, cfg: dict, rng: np.random.Generator | None, train: bool
) -> Iterator[dict[str, Tensor]]:
    """Blocks with their successors: ``{"cur", "next": float [B, K, BLOCK, P], "pair":
    float [B]}`` (pair = 0 for a piece's last block, whose `next` is silence). Training:
    shuffled; evaluation: in piece order. `batch_size` blocks a batch."""
    stacked, items = block_pairs(pieces)
    if not len(items):
        return
    if train:
        items = items[rng.permutation(len(items))]
    bs = int(cfg["batch_size"])
    for i in range(0, len(items), bs):
        chunk = items[i : i + bs]
        idx, has = chunk[:, 0], chunk[:, 1]
        nxt = np.where(
            has[:, None, None, None] > 0, stacked[np.minimum(idx + 1, len(stacked) - 1)], 0
        )
        yield {
            "cur": torch.from_numpy(stacked[idx].astype(np.float32)),
            "next": torch.from_numpy(nxt.astype(np.float32)),
            "pair": torch.from_numpy(has.astype(np.float32)),
        }
