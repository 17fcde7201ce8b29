"""classifier (models/classifier.py): trains a few steps from models/configs/tiny-classifier.toml
(pieces labelled by their ids through the loop's encode_pieces hook, class-balanced phrases,
accuracy reported), exports the one-shot graph with parity, and the torch-free runtime
(companion/classifier.py) scores phrases as torch does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from midi_companion.export import build_model, export_checkpoint, load_checkpoint
from midi_companion.models import classifier
from midi_companion.models.train import train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("classifier")
    text = (ROOT / "models/configs/tiny-classifier.toml").read_text()
    cfg = tmp / "tiny-classifier.toml"
    cfg.write_text(text.replace("[train]\n", f'[train]\nout = "{tmp / "run"}"\n'))
    ck = train(cfg, progress=False)
    report = export_checkpoint(tmp / "run/best.pt", tmp / "clf.onnx", batch_sizes=(1, 3), steps=8)
    return {
        "ckpt": tmp / "run/best.pt",
        "metrics": ck["metrics"],
        "path": tmp / "clf.onnx",
        "report": report,
    }


def test_trains_per_phrase_with_accuracy(clf):
    m = clf["metrics"]
    assert m["unit"] == "phrase"
    for split in ("valid", "test"):
        acc = m[f"{split}_terms"]["accuracy"]
        assert 0.0 <= acc <= 1.0
    assert math.isfinite(m["test_nll"]) and m["test_units"] > 0
    ck = load_checkpoint(clf["ckpt"])
    assert ck["family"] == "classifier" and ck["model_args"]["classes"][0].startswith("chorale=")


def test_exports_with_parity_and_the_runtime_scores_as_torch(clf):
    from midi_companion.classifier import StyleClassifier

    for batch in (1, 3):
        p = clf["report"]["parity"][batch]
        assert p["ort_vs_torch"] <= 1e-4 and p["step_vs_full"] <= 1e-4
    rt = StyleClassifier(clf["path"])
    assert rt.classes == ["chorale", "folk"] and rt.phrase == 24
    assert rt.class_index("folk") == 1 and rt.class_index("benchmark:jsb") == 0
    with pytest.raises(ValueError, match="not a class"):
        rt.class_index("music21:bach")
    model = build_model(load_checkpoint(clf["ckpt"])).eval()
    rng = np.random.default_rng(0)
    phrases = [rng.integers(0, rt.rep.vocab_size, n) for n in (3, 24, 11)]
    got = rt.logits(phrases)
    with torch.no_grad():
        want = torch.cat([model(torch.tensor(p)[None], torch.tensor([len(p)])) for p in phrases])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_held_out_report(clf):
    from midi_companion.classifier import held_out, markdown

    r = held_out(clf["path"], "test")
    cm = np.array(r["phrase"]["confusion"])
    assert cm.shape == (2, 2) and cm.sum() == r["phrase"]["count"] > 0
    assert np.array(r["voice"]["confusion"]).sum() == 20  # ten pieces of each, one voice each
    assert "| true \\ predicted | chorale | folk | recall |" in markdown(r)


def test_classes_are_checked():
    assert classifier.parse_classes(["bach", "irish=oneill+ryans"]) == [
        ("bach", ("bach",)),
        ("irish", ("oneill", "ryans")),
    ]
    with pytest.raises(ValueError, match="not a music21 collection"):
        classifier.parse_classes(["bach", "jazz"])
    with pytest.raises(ValueError, match="repeats"):
        classifier.parse_classes(["bach", "x=bach+essen"])
    with pytest.raises(ValueError, match="at least 2"):
        classifier.parse_classes(["bach"])


def test_balanced_training_batches():
    pieces = [(np.arange(300) % 7, 0)] + [(np.arange(40) % 5, 1)] * 30
    cfg = {"seq_len": 32, "batch_size": 64, "phrases_per_epoch": 64 * 20}
    labels = np.concatenate(
        [
            b["label"].numpy()
            for b in classifier.batches(pieces, None, cfg, np.random.default_rng(0), True)
        ]
    )
    assert len(labels) == 64 * 20 and 0.4 < labels.mean() < 0.6
    evals = list(classifier.batches(pieces, None, {**cfg, "min_len": 16}, None, False))
    # 300 tokens: windows of 32 (the last, 12 tokens, dropped); 40: 32 + 8 (dropped)
    assert sum(len(b["label"]) for b in evals) == 9 + 30


def test_restyle_recovers_the_weights_and_writes_a_file(clf, tmp_path):
    """`companion restyle`: the classifier's weights read back from its ONNX file, each voice
    restyled (rhythm kept, pitches moved), the report's probabilities from onnxruntime."""
    from midi_companion.models.restyle import restyle, torch_classifier
    from midi_companion.score import Note, Score, Track

    model, rt = torch_classifier(clf["path"])
    assert not model.training and rt.classes == ["chorale", "folk"]
    melody = [Note(i * 0.5, 60 + [0, 2, 4, 5, 7, 5, 4, 2][i % 8], 0.5, 90) for i in range(32)]
    bass = [Note(i * 2.0, 48 + [0, 5, 7, 0][i % 4], 2.0, 80) for i in range(8)]
    src = tmp_path / "in.mid"
    Score([Track("melody", 0, False, melody), Track("bass", 32, False, bass)]).to_midi(src)
    r = restyle(src, "chorale", tmp_path / "out.mid", clf["path"], steps=20, lr=0.5)
    assert r["style"] == "chorale" and len(r["voices"]) == 2
    out = Score.from_midi(tmp_path / "out.mid")
    for v, track, before in zip(r["voices"], out.tracks, (melody, bass)):
        assert 0 <= v["p_target_before"] <= 1 and 0 <= v["p_target_after"] <= 1
        assert v["notes"] == len(before) and len(track.notes) == len(before) - v["dropped"]
        # the rhythm is kept: the onsets are the original ones
        assert {n.onset for n in track.notes} <= {n.onset for n in before}
        assert set(v["quality_before"]) == set(v["quality_after"]) >= {"in_key", "note_count"}


def test_notes_per_beat_threshold_drops_the_least_certain():
    from midi_companion.models.restyle import _threshold
    from midi_companion.score import Note

    notes = [
        Note(0.0, 60, 0.25, 90),
        Note(0.25, 62, 0.25, 90),
        Note(0.5, 64, 0.25, 90),
        Note(1.0, 65, 0.25, 90),
    ]
    assert _threshold(notes, [0.9, 0.2, 0.8, 0.1], 2) == [True, False, True, True]
    assert _threshold(notes, [0.9, 0.2, 0.8, 0.1], None) == [True] * 4


def test_restyle_without_torch_is_one_sentence_and_exit_2(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from midi_companion.cli import main\n"
        "sys.exit(main(['restyle', 'in.mid', '--to', 'bach', '-o', 'out.mid']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "needs the training extra" in r.stderr
