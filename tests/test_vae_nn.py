"""vae-nn (models/vae_nn.py): the thesis band trains from one config on a user's folder of
multitrack MIDI mapped to the LPD-5 families by General MIDI program (a folder written here
with mido), reports each track's reconstruction apart, and exports the band step, the
encoder and the decoder with parity; the three files open torch-free (companion/band.py)."""

from __future__ import annotations

import math
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

from midi_companion import modelfile
from midi_companion.band import Band, blocks
from midi_companion.errors import ConfigError
from midi_companion.export import export_checkpoint, load_checkpoint
from midi_companion.models.train import load_config, train
from midi_companion.models.vae_nn import BLOCK, VAENN, batches, block_pairs

torch.set_num_threads(1)
pytestmark = pytest.mark.slow

LPD5_ROWS = ["lead", "piano", "guitar", "bass", "strings", "drums"]
TPB = 96


def write_band_midi(path: Path, seed: int, bars: int = 8) -> None:
    """A small pop-band file: a flute melody (program 73: strings by LPD-5's rule, but the
    highest part, so the lead), piano chords (0), a guitar (25), a bass (33) and drums
    (channel 10), each on its own track."""
    rng = np.random.default_rng(seed)
    root = 60 + int(rng.integers(-3, 4))
    parts = {  # name: (program, channel, [(onset beats, pitch, beats)])
        "Flute": (
            73,
            0,
            [(b * 0.5, root + 12 + int(rng.choice([0, 2, 4, 7])), 0.5) for b in range(bars * 8)],
        ),
        "Piano": (0, 1, [(b * 2.0, root + d, 2.0) for b in range(bars * 2) for d in (0, 4, 7)]),
        "Guitar": (25, 2, [(b * 1.0, root + 7, 0.5) for b in range(bars * 4)]),
        "Bass": (
            33,
            3,
            [(b * 1.0, root - 24 + (5 if b % 8 >= 4 else 0), 1.0) for b in range(bars * 4)],
        ),
        "Drums": (0, 9, [(b * 0.5, 36 if b % 4 == 0 else 42, 0.25) for b in range(bars * 8)]),
    }
    mid = mido.MidiFile(ticks_per_beat=TPB)
    for name, (program, ch, notes) in parts.items():
        tr = mido.MidiTrack()
        tr.append(mido.MetaMessage("track_name", name=name, time=0))
        if ch != 9:
            tr.append(mido.Message("program_change", program=program, channel=ch, time=0))
        events = []
        for onset, pitch, dur in notes:
            events.append((round(onset * TPB), 1, pitch))
            events.append((round((onset + dur) * TPB), 0, pitch))
        now = 0
        for t, on, pitch in sorted(events):
            kind = "note_on" if on else "note_off"
            tr.append(
                mido.Message(kind, note=pitch, velocity=90 if on else 0, channel=ch, time=t - now)
            )
            now = t
        mid.tracks.append(tr)
    mid.save(path)


CONFIG = """
[model]
family = "vae-nn"
latent = 16
channels = [4, 8, 16]
hidden = 16

[representation]
name = "multitrack"
scheme = "lpd5"
grid = 0.25
low = 0
high = 127

[data]
corpus = "folder:{folder}"
valid = 0.25
test = 0.25

[train]
batch_size = 8
lr = 3e-3
warmup = 2
max_steps = 6
eval_every = 3
out = "{out}"
"""


@pytest.fixture(scope="module")
def band_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("vae-nn")
    with pytest.MonkeyPatch.context() as mp:  # the folder's parse is cached in tmp, not ~
        mp.setenv("MIDI_COMPANION_CACHE", str(tmp / "cache"))
        return _train_and_export(tmp)


def _train_and_export(tmp: Path) -> dict:
    folder = tmp / "my band"
    folder.mkdir()
    for i in range(8):
        write_band_midi(folder / f"song{i}.mid", seed=i)
    cfg = tmp / "band.toml"
    cfg.write_text(CONFIG.format(folder=folder, out=tmp / "run"))
    ck = train(cfg, progress=False)
    report = export_checkpoint(tmp / "run/best.pt", tmp / "band.onnx", batch_sizes=(1, 3))
    return {"dir": tmp, "ckpt": ck, "report": report, "path": tmp / "band.onnx"}


def test_a_folder_of_band_midi_trains_by_lpd5_family(band_run):
    ck = band_run["ckpt"]
    assert ck["family"] == "vae-nn" and ck["model_args"]["tracks"] == LPD5_ROWS
    assert ck["metrics"]["unit"] == "block"
    for split in ("valid", "test"):
        terms = ck["metrics"][f"{split}_terms"]
        assert set(terms) == {f"recon_{t}" for t in LPD5_ROWS} | {"kl", "melody", "conditional"}
        assert all(math.isfinite(v) and v >= 0 for v in terms.values())
        # the block's loss is every row's reconstruction plus the KL and the latent losses
        recon = sum(terms[f"recon_{t}"] for t in LPD5_ROWS)
        assert ck["metrics"][f"{split}_nll"] >= recon


def test_exports_three_graphs_with_parity(band_run):
    r = band_run["report"]
    assert r["metadata"]["protocol"] == "band-step"
    assert set(r["graphs"]) == {"encoder", "decoder"}
    for parity in [r["parity"], *(g["parity"] for g in r["graphs"].values())]:
        assert set(parity) == {1, 3}  # batch sizes
        assert all(max(p.values()) <= 1e-4 for p in parity.values())
    model = modelfile.load(band_run["path"])
    assert model.tracks == LPD5_ROWS and model.inputs == ("lead", "noise")
    band = Band(model, provider="cpu")
    assert (band.K, band.P, band.block, band.latent) == (6, 128, BLOCK, 16)


def test_the_files_reconstruct_what_torch_does(band_run):
    """The encoder and decoder files against the checkpoint's model on real blocks."""
    from midi_companion.export import build_model
    from midi_companion.representations import from_dict
    from midi_companion.score import Score

    ck = load_checkpoint(band_run["dir"] / "run/best.pt")
    model = build_model(ck)
    rep = from_dict(ck["representation"])
    score = Score.from_midi(next((band_run["dir"] / "my band").glob("*.mid")))
    b = blocks(np.asarray(rep.encode(score)), BLOCK)
    assert b[:, LPD5_ROWS.index("drums")].any() and b[:, LPD5_ROWS.index("bass")].any()
    band = Band(modelfile.load(band_run["path"]), provider="cpu")
    mean, _ = band.encode(b)
    with torch.no_grad():
        want, _ = model.encode(torch.from_numpy(b.astype(np.float32)))
        probs = torch.sigmoid(model.decode(want)).numpy()
    assert np.abs(mean - want.numpy()).max() < 1e-4
    assert np.abs(band.decode(mean) - probs).max() < 1e-4


def test_blocks_and_pairs():
    piece = np.zeros((70, 2, 5), dtype=np.uint8)
    piece[0, 0, 1] = piece[40, 1, 2] = 1  # blocks 0 and 1 sound, block 2 is silent
    b = blocks(piece, BLOCK)
    assert b.shape == (3, 2, BLOCK, 5) and b[1, 1, 8, 2] == 1
    stacked, items = block_pairs([piece, piece[:10]])
    assert len(stacked) == 4
    assert items.tolist() == [[0, 1], [1, 1], [3, 0]]  # silent blocks are not scored
    out = list(batches([piece], None, {"batch_size": 4}, None, False))
    assert out[0]["cur"].shape == (2, 2, BLOCK, 5) and out[0]["pair"].tolist() == [1.0, 1.0]
    assert torch.equal(out[0]["next"][0], out[0]["cur"][1])


def test_the_latent_losses_never_move_the_vaes():
    """The MelodyNN and ConditionalNN losses read detached latents: the VAEs' gradients are
    the same with them and without them (same noise draws), while the MLPs learn."""
    model = VAENN(keys=16, tracks=["a", "b", "c"], latent=4, channels=[2, 2, 2], hidden=8)
    x = (torch.rand(3, 3, BLOCK, 16, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    batch = {"cur": x, "next": x.roll(1, 0), "pair": torch.ones(3)}
    grads = []
    for weight in (1.0, 0.0):
        model.nn_weight = weight
        model.zero_grad()
        torch.manual_seed(1)
        model.loss(batch)[0].backward()
        grads.append([p.grad.clone() for p in model.vaes.parameters()])
        if weight:
            assert model.melody[0].weight.grad.abs().sum() > 0
            assert all(net[0].weight.grad.abs().sum() > 0 for net in model.conditional)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_needs_the_multitrack_representation(tmp_path):
    from midi_companion.models.train import make_model, make_representation

    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        CONFIG.format(folder=tmp_path, out=tmp_path / "run").replace(
            'name = "multitrack"\nscheme = "lpd5"', 'name = "pianoroll"'
        )
    )
    c = load_config(cfg)
    with pytest.raises(ConfigError, match="multitrack"):
        make_model(c, make_representation(c, cfg), cfg)
