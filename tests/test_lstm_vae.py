"""lstm-vae (models/lstm_vae.py): trains a few steps from models/configs/tiny-lstm-vae.toml
with the KL and reconstruction terms reported apart, exports the decoder step and the
encoder with parity, and the exported pair continues a player's phrase from its latent
without torch, through the offline path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
import torch

from midi_companion import modelfile
from midi_companion.errors import ModelError
from midi_companion.export import build_model, export_checkpoint, load_checkpoint
from midi_companion.models.lstm_vae import LSTMVAE
from midi_companion.models.train import train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> dict:
    """The tiny config trained (the steps the loop announced recorded) and exported."""
    tmp = tmp_path_factory.mktemp("lstm-vae")
    text = (ROOT / "models/configs/tiny-lstm-vae.toml").read_text()
    cfg = tmp / "tiny-lstm-vae.toml"
    cfg.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp / "run"}"\n'))
    steps: list[int] = []
    real = LSTMVAE.set_step

    def record(self, step):
        steps.append(step)
        real(self, step)

    with mock.patch.object(LSTMVAE, "set_step", record):
        ck = train(cfg, progress=False)
    report = export_checkpoint(tmp / "run/best.pt", tmp / "vae.onnx", batch_sizes=(1, 3))
    return {
        "dir": tmp,
        "ckpt": tmp / "run/best.pt",
        "metrics": ck["metrics"],
        "path": tmp / "vae.onnx",
        "report": report,
        "steps": steps,
    }


def test_trains_with_the_kl_and_reconstruction_reported_apart(vae):
    m = vae["metrics"]
    assert vae["steps"] == list(range(6))  # the loop told the model every step
    for split in ("valid", "test"):
        terms = m[f"{split}_terms"]
        assert set(terms) == {"recon_nll", "kl"}
        assert math.isfinite(terms["recon_nll"]) and terms["kl"] >= 0
        # the score is the negative ELBO: reconstruction plus the KL spread over the tokens
        assert m[f"{split}_nll"] >= terms["recon_nll"] - 1e-9
    ck = load_checkpoint(vae["ckpt"])
    assert ck["family"] == "lstm-vae" and ck["model_args"]["enc_layers"] == 3
    assert ck["metrics"]["test_terms"] == m["test_terms"]


def test_kl_warm_up_and_free_bits():
    model = LSTMVAE(
        vocab=10,
        embed=4,
        enc_hidden=4,
        enc_layers=1,
        hidden=4,
        layers=1,
        latent=3,
        beta=0.5,
        kl_warmup=10,
    )
    model.set_step(0)
    assert model.beta_now() == pytest.approx(0.05)
    model.set_step(4)
    assert model.beta_now() == pytest.approx(0.25)
    model.set_step(50)
    assert model.beta_now() == 0.5
    batch = {"tokens": torch.randint(0, 10, (3, 9)), "mask": torch.ones(3, 9, dtype=torch.bool)}
    model.set_step(50)
    model.eval()  # the evaluation score: recon + the whole KL, terms kept apart
    with torch.no_grad():
        score, n = model.loss(batch)
    terms = model.extra_metrics()
    assert n == 24 and terms["recon_nll"][1] == 24 and terms["kl"][1] == 3
    assert float(score) == pytest.approx(terms["recon_nll"][0] + terms["kl"][0], rel=1e-5)
    assert model.extra_metrics()["kl"] == (0.0, 0.0)  # read once, then cleared
    free = LSTMVAE(
        vocab=10,
        embed=4,
        enc_hidden=4,
        enc_layers=1,
        hidden=4,
        layers=1,
        latent=3,
        free_bits=100.0,
        dropout=0.0,
    )
    free.train()
    torch.manual_seed(0)
    loss, _ = free.loss(batch)
    assert float(loss.detach()) > 3 * 3 * 100.0  # each dimension's KL counts >= 100 nats
    with pytest.raises(ValueError, match="latent"):
        LSTMVAE(vocab=10, latent=0)


def test_exports_decoder_step_and_encoder_with_parity(vae):
    report, path = vae["report"], vae["path"]
    for batch in (1, 3):
        assert report["parity"][batch]["ort_vs_torch"] <= 1e-4
        assert report["parity"][batch]["step_vs_full"] <= 1e-4
        enc = report["graphs"]["encoder"]["parity"][batch]
        assert enc["ort_vs_torch"] <= 1e-4 and enc["reference"] <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["family"] == "lstm-vae" and props["protocol"] == "token-step"
    assert props["encoder"] == "vae.encoder.onnx"
    enc_path = path.with_name("vae.encoder.onnx")
    assert Path(report["graphs"]["encoder"]["path"]) == enc_path and enc_path.is_file()
    enc_props = {p.key: p.value for p in onnx.load(str(enc_path)).metadata_props}
    assert enc_props["graph"] == "encoder" and enc_props["family"] == "lstm-vae"
    assert json.loads(props["metrics"])["test_terms"] == vae["metrics"]["test_terms"]
    m = modelfile.load(path)
    names = [s.name for s in m.state]
    assert names[:3] == ["h", "c", "z"] and m.state[2].shape == ("B", 6)


def test_runtime_primes_from_the_phrase_latent_as_torch_does(vae):
    """LatentVoice on onnxruntime: z = the encoder's mean of the phrase, and the logits
    after the phrase equal torch's teacher-forced decoder given that z."""
    from midi_companion.voices import LatentVoice, voice_for

    model = build_model(load_checkpoint(vae["ckpt"]))
    voice = voice_for(modelfile.load(vae["path"]), provider="cpu")
    assert isinstance(voice, LatentVoice)
    rep = voice.rep
    tokens = [
        rep.velocity_offset + 2,
        60,
        rep.shift_offset + 3,
        128 + 60,
        64,
        rep.shift_offset + 1,
        62,
        rep.shift_offset + 5,
        128 + 64,
        128 + 62,
    ]
    voice.prime(tokens)
    with torch.no_grad():
        x = torch.tensor([tokens])
        mean, _ = model.encode(x, torch.tensor([len(tokens)]))
        logits = model(x, mean)[0, -1]
    assert np.abs(voice.latent - mean[0].numpy()).max() < 1e-4
    assert np.abs(voice.logits - logits.numpy()).max() < 1e-4
    other = [60, rep.shift_offset + 11, 128 + 60, 48, rep.shift_offset + 11, 128 + 48]
    voice.prime(other)
    assert np.abs(voice.latent - mean[0].numpy()).max() > 1e-4  # another phrase, another z
    voice.reset()  # no phrase: the prior's mean
    assert not voice.engine.state["z"].any()


def test_a_missing_encoder_file_is_a_clear_error(vae, tmp_path):
    from midi_companion.voices import voice_for

    lone = tmp_path / "lone.onnx"
    lone.write_bytes(vae["path"].read_bytes())  # names vae.encoder.onnx, not beside it
    with pytest.raises(ModelError, match="encoder graph .* is missing"):
        voice_for(modelfile.load(lone), provider="cpu")


CONTINUE = r"""
import sys
sys.modules["torch"] = None  # the runtime must not need torch
from midi_companion import presets, voices
from midi_companion.offline import perform
from midi_companion.score import Note, Score

latents = []
prime = voices.LatentVoice.prime
def recording(self, tokens):
    prime(self, tokens)
    latents.append(self.latent)
voices.LatentVoice.prime = recording
preset = presets.load(sys.argv[1])
phrase = [Note(i * 0.5, 60 + (i * 2) % 12, 0.5, 90) for i in range(8)]
out = perform(preset, Score.from_notes(phrase), seed=1)
player, answer = out.tracks
onsets = [n.onset for n in answer.notes]
print(len(player.notes), len(answer.notes), min(onsets), max(n.end for n in answer.notes),
      len(latents), float(abs(latents[0]).sum()))
"""

PRESET = """
model = "vae.onnx"
mode = "continue"
[[tracks]]
name = "answer"
channel = 1
program = 73
[timing]
bars = 2
"""


def test_exported_pair_continues_a_phrase_without_torch(vae):
    preset = vae["dir"] / "vae-preset.toml"
    preset.write_text(PRESET)
    r = subprocess.run(
        [sys.executable, "-c", CONTINUE, str(preset)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    played, answered, first, last, primed, norm = r.stdout.split()
    assert int(played) == 8 and int(answered) > 0
    # the phrase ends on beat 4: the answer starts there and lasts two bars
    assert 4.0 - 1e-6 <= float(first) and float(last) <= 12.0 + 1e-6
    assert int(primed) == 1 and float(norm) > 0  # one answer, from the phrase's latent


def test_held_out_reconstruction_from_the_files_equals_torch(vae):
    """midi_companion.latent.reconstruction (onnxruntime, torch-free) scores the held-out phrases
    as the training loop cuts them: with z = the encoder's mean it equals torch's decoder."""
    import torch.nn.functional as F

    from midi_companion.evaluate import held_out_scores
    from midi_companion.latent import reconstruction
    from midi_companion.models import lstm_vae

    r = reconstruction(vae["path"], "test", length=25, batch=3)
    ck = load_checkpoint(vae["ckpt"])
    model = build_model(ck)
    rep = modelfile.load(vae["path"]).representation
    pieces = [np.asarray(rep.encode(s)) for s in held_out_scores(ck["corpus"], "test")]
    total, n, phrases = 0.0, 0, 0
    with torch.no_grad():
        for b in lstm_vae.batches(pieces, rep, {"seq_len": 24, "batch_size": 4}, None, False):
            mean, _ = model.encode(b["tokens"], b["mask"].sum(1))
            logits = model(b["tokens"][:, :-1], mean, b["phase"][:, :-1])
            nll = F.cross_entropy(
                logits.flatten(0, 1), b["tokens"][:, 1:].flatten(), reduction="none"
            )
            total += float((nll * b["mask"][:, 1:].flatten()).sum())
            n += int(b["mask"][:, 1:].sum())
            phrases += len(mean)
    assert (r["phrases"], r["tokens"]) == (phrases, n)
    assert r["recon_nll_mean"] == pytest.approx(total / n, abs=1e-4)
    assert r["kl"] >= 0 and 0 <= r["active_units"] <= 6


def test_held_out_continuation_from_the_phrase_latent(vae):
    from midi_companion.latent import continuation

    r = continuation(vae["path"], "test", length=10, following=8)
    assert r["pieces"] > 0 and set(r) >= {"nll_mean", "nll_prior"}
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("nll_mean", "nll_prior"))
