"""companion report: the shipped chorale preset measured on held-out sopranos against Bach
and the Markov floor, written to Markdown with its picture; the hand-written analysis below
the marker survives a regeneration."""

from types import SimpleNamespace

import pytest

from midi_companion import presets, quality

pytestmark = pytest.mark.skipif(
    not (presets.zoo_dir() / "chorale.onnx").is_file(),
    reason="the shipped chorale model is not in models/zoo",
)


def test_report_measures_the_chorale_against_bach_and_keeps_the_notes(tmp_path, bench_dir):
    out = tmp_path / "QUALITY.md"
    out.write_text("old numbers\n" + quality.NOTES_MARKER + "\nWhy a target is missed.\n")
    args = SimpleNamespace(
        output=str(out), presets=["chorale"], pieces=2, seeds=1, json=str(tmp_path / "q.json")
    )
    assert quality.main(args) == 0
    text = out.read_text()
    assert "old numbers" not in text and text.endswith("Why a target is missed.\n")
    assert "| chorale | <= 0.2 parallel fifths" in text
    assert (tmp_path / "quality" / "chorale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    table = json.loads((tmp_path / "q.json").read_text())[0]["table"]
    assert table["model"]["runs"] == 2 and table["real"]["runs"] == 2
    # the rules hold whatever the model: no parallels, no crossing, every part in range
    m = table["model"]
    assert m["fifths_per_100"] == 0 and m["octaves_per_100"] == 0 and m["crossing"] == 0
    for (lo, hi), (a, b) in zip(m["ranges"], [t.range for t in presets.load("chorale").tracks]):
        assert a <= lo and hi <= b
    # Bach's own voices, scored the same way, are the reference
    assert table["real"]["in_key"] > 0.8 and table["markov"]["in_key"] < table["real"]["in_key"]


def test_targets_say_which_are_missed():
    row = {
        "in_key": 0.97,
        "grid_min": 1.0,
        "grid_mean": 1.0,
        "runs_under_99": 0,
        "player_grid_min": 1.0,
        "player_runs_under_99": 0,
        "runs": 3,
        "out_of_range": 1,
        "length_l1": 0.2,
        "yang_lerch": {"pitch_count": 0.9, "avg_ioi": 0.5},
    }
    markov = dict(row, yang_lerch={"pitch_count": 0.5, "avg_ioi": 0.6})
    real = dict(row, yang_lerch={"pitch_count": 0.9, "avg_ioi": 0.9})
    result = {
        "preset": "piano",
        "mode": "continue",
        "table": {"model": row, "markov": markov, "real": real},
    }
    met = {goal: ok for _, goal, _, ok in quality.targets([result])}
    assert met["no note outside the part's range"] is False
    assert met[">= 90% of notes in the prompt's key"] is True
    assert met["note-length histogram L1 to real <= 0.15"] is False
    assert met["Yang & Lerch OA above the Markov floor, every feature"] is False
