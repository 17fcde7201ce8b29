"""transformer-vae (models/transformer_vae.py): trains a few steps from
models/configs/tiny-transformer-vae.toml with lstm-vae's loss terms, exports the decoder step
(ring-buffer KV cache + z) and the encoder with parity, and the pair plays and scores through
the same torch-free drivers as lstm-vae (LatentVoice, companion/latent.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from midi_companion import modelfile
from midi_companion.export import build_model, export_checkpoint, load_checkpoint
from midi_companion.models.train import train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tvae(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("transformer-vae")
    text = (ROOT / "models/configs/tiny-transformer-vae.toml").read_text()
    cfg = tmp / "tiny.toml"
    cfg.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp / "run"}"\n'))
    ck = train(cfg, progress=False)
    report = export_checkpoint(tmp / "run/best.pt", tmp / "tvae.onnx", batch_sizes=(1, 3))
    return {
        "ckpt": tmp / "run/best.pt",
        "metrics": ck["metrics"],
        "path": tmp / "tvae.onnx",
        "report": report,
    }


def test_trains_with_the_vae_terms(tvae):
    m = tvae["metrics"]
    terms = m["test_terms"]
    assert set(terms) == {"recon_nll", "kl"} and terms["kl"] >= 0
    assert math.isfinite(terms["recon_nll"]) and m["test_nll"] >= terms["recon_nll"] - 1e-9
    ck = load_checkpoint(tvae["ckpt"])
    assert ck["family"] == "transformer-vae" and ck["model_args"]["context"] == 16


def test_exports_step_and_encoder_with_parity(tvae):
    report = tvae["report"]
    for batch in (1, 3):  # 64 steps through a context of 16: the ring buffer wraps
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
        enc = report["graphs"]["encoder"]["parity"][batch]
        assert enc["ort_vs_torch"] <= 1e-4 and enc["reference"] <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(tvae["path"])).metadata_props}
    assert props["family"] == "transformer-vae" and props["encoder"] == "tvae.encoder.onnx"
    m = modelfile.load(tvae["path"])
    assert [s.name for s in m.state] == ["past_k", "past_v", "pos", "z", "time"]


def test_latent_voice_primes_from_the_phrase_latent_as_torch_does(tvae):
    from midi_companion.voices import LatentVoice, voice_for

    model = build_model(load_checkpoint(tvae["ckpt"])).eval()
    voice = voice_for(modelfile.load(tvae["path"]), provider="cpu")
    assert isinstance(voice, LatentVoice)
    rep = voice.rep
    tokens = [
        60,
        rep.shift_offset + 3,
        128 + 60,
        64,
        rep.shift_offset + 1,
        62,
        rep.shift_offset + 5,
        128 + 64,
        128 + 62,
    ] * 3  # 27 tokens: past the context
    voice.prime(tokens)
    with torch.no_grad():
        x = torch.tensor([tokens])
        mean, _ = model.encode(x, torch.tensor([len(tokens)]))
        logits = model(x, mean)[0, -1]
    assert np.abs(voice.latent - mean[0].numpy()).max() < 1e-4
    assert np.abs(voice.logits - logits.numpy()).max() < 1e-4


def test_held_out_reconstruction_from_the_files(tvae):
    from midi_companion.latent import reconstruction

    r = reconstruction(tvae["path"], "test", length=25, batch=3)
    assert r["phrases"] > 0 and math.isfinite(r["recon_nll_mean"])
    # the loop scores the same phrases: its reconstruction term equals the files'
    assert r["recon_nll_mean"] == pytest.approx(
        tvae["metrics"]["test_terms"]["recon_nll"], abs=0.15
    )
