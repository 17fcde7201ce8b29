"""The three GANs (models/gan.py): each tiny config trains a few steps through the loop's
adversarial hook and exports its generator with parity; the model file plays as a
`generator` (companion/pattern.py, torch-free)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from midi_companion import modelfile
from midi_companion.models import FAMILY_MODULES, gan
from midi_companion.pattern import BlockGenerator
from midi_companion.representations import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def companion(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_the_families_are_registered():
    assert {f: FAMILY_MODULES[f] for f in gan.FAMILIES} == dict.fromkeys(
        gan.FAMILIES, "midi_companion.models.gan"
    )


@pytest.mark.parametrize("family", gan.FAMILIES)
def test_train_step_moves_each_player_on_its_own(family):
    rep = REGISTRY["notes" if family == "note-gan" else "pianoroll"](
        **({"resolution": 4} if family == "note-gan" else {})
    )
    args = {
        "dcgan": dict(latent=4, steps=32, keys=32, low=40, channels=8, disc_channels=4, layers=2),
        "image-gan": dict(latent=4, steps=10, keys=14, low=50, hidden=8, channels=2),
        "note-gan": dict(latent=4, notes=5),
    }[family]
    torch.manual_seed(0)
    model = gan.build(family, rep, **args)
    opt = model.configure_optimizers(
        {"lr": 1e-3, "beta1": 0.5, "weight_decay": 0.0, "smooth": 0.9, "grad_clip": 1.0}
    )
    if family == "note-gan":
        batch = {"notes": torch.stack([torch.randint(0, n, (3, 5)) for n in rep.fields], -1)}
    else:
        batch = {"block": (torch.rand(3, args["steps"], 128) < 0.1).float()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = model.train_step(batch, opt)
    assert logs["count"] == 3 and np.isfinite(logs["loss"]) and np.isfinite(logs["d_loss"])
    moved = {
        k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])
    }
    assert moved == {"G", "D"}
    with torch.no_grad():  # the discriminator on reals and as many fakes
        nll, n = model.loss(batch)
    assert int(n) == 6 and float(nll) > 0
    terms = model.extra_metrics()
    assert 0 <= terms["d_acc_real"][0] <= terms["d_acc_real"][1] == 3
    assert model.extra_metrics() == {}  # cleared


def test_a_block_length_other_than_seq_len_is_a_config_error():
    from midi_companion.errors import ConfigError

    model = gan.build("note-gan", REGISTRY["notes"](), latent=4, notes=5)
    with pytest.raises(ConfigError, match="seq_len must equal the block length 5"):
        model.real({"notes": torch.zeros(2, 7, 3, dtype=torch.long)})


@pytest.mark.slow
@pytest.mark.parametrize("family", gan.FAMILIES)
def test_tiny_config_trains_keeps_the_last_and_exports_with_parity(tmp_path, family):
    name = f"tiny-{family}"
    r = companion("train", ROOT / f"models/configs/{name}.toml", cwd=tmp_path)
    assert "nats/block (step 6)" in r.stdout  # the last evaluation is the one kept
    ck = torch.load(tmp_path / f"runs/{name}/best.pt", weights_only=True)
    assert ck["family"] == family and ck["metrics"]["best_step"] == 6
    assert set(ck["metrics"]["valid_terms"]) >= {"d_acc_real", "d_acc_fake"}
    out = tmp_path / f"{name}.onnx"
    r = companion("export", tmp_path / f"runs/{name}/best.pt", "-o", out, cwd=tmp_path)
    assert "(generator)" in r.stdout and "parity at batch 1, 3" in r.stdout
    model = modelfile.load(out)
    assert model.protocol == "generator" and model.state == ()
    assert json.loads(model.metadata["model_args"])["latent"] == ck["model_args"]["latent"]
    gen = BlockGenerator(model, provider="cpu")
    rng = np.random.default_rng(0)
    blocks = gen.sample(rng, batch=3)
    if family == "note-gan":
        assert blocks.shape == (3, 8, 3)
        notes = gen.notes(blocks[0], count=5)
        assert len(notes) == 5 and all(0 <= n.pitch <= 127 and n.duration > 0 for n in notes)
    else:
        steps = ck["model_args"]["steps"]
        assert blocks.shape == (3, steps, 128) and 0 <= blocks.min() <= blocks.max() <= 1
        lo, hi = ck["model_args"]["low"], ck["model_args"]["low"] + ck["model_args"]["keys"]
        assert not blocks[:, :, :lo].any() and not blocks[:, :, hi:].any()
        grid = ck["representation"]["params"]["grid"]
        for n in gen.notes(blocks[0], threshold=float(np.median(blocks[0, :, lo:hi]))):
            assert lo <= n.pitch < hi and 0 <= n.onset < steps * grid and n.duration > 0
