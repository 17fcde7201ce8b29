"""`companion bench` without measuring: which sections start a JACK server, and how a run of
some sections is merged into the report already there (docs/benchmarks.json and
docs/BENCHMARKS.md, whose hand-written analysis is kept)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from midi_companion import bench_measure, bench_report, cli

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.json"


def fake_engine(path, steps, provider="auto"):
    ms = {"n": steps, "p50": 0.1, "p99": 0.2, "max": 0.3, "mean": 0.1}
    return {
        "model": path.stem,
        "family": "lstm",
        "protocol": "token-step",
        "parameters": 7,
        "steps": steps,
        "bpm": 120.0,
        "ort_ms": ms,
        "torch_ms": None,
        "beats": 100.0,
        "seconds": 0.5,
        "real_time_factor": 400.0,
    }


@pytest.fixture
def no_jack(monkeypatch):
    """Starting a JACK server fails the test; the engine is measured by `fake_engine`."""

    def refuse(*args, **kwargs):
        raise AssertionError("a JACK server was started")

    monkeypatch.setattr("midi_companion.bench.JackServer", refuse)
    monkeypatch.setattr(bench_measure, "measure_engine", fake_engine)


def bench(tmp_path, *args) -> int:
    zoo = tmp_path / "zoo"
    zoo.mkdir(exist_ok=True)
    (zoo / "tiny.onnx").write_bytes(b"")  # measured by fake_engine only
    return cli.main(
        [
            "bench",
            "--smoke",
            "--zoo",
            str(zoo),
            "--markdown",
            str(tmp_path / "BENCHMARKS.md"),
            "--json",
            str(tmp_path / "bench.json"),
            *args,
        ]
    )


def test_only_engine_starts_no_jack_server_and_keeps_the_rest_of_the_report(tmp_path, no_jack):
    old = json.loads(SHIPPED.read_text(encoding="utf-8"))
    old.pop("updates", None)  # the shipped report may itself have been merged into
    (tmp_path / "bench.json").write_text(json.dumps(old), encoding="utf-8")
    (tmp_path / "BENCHMARKS.md").write_text(
        bench_report.markdown(old, "## Analysis\n\nWritten by hand.\n"), encoding="utf-8"
    )

    assert bench(tmp_path, "--only", "engine") == 0

    new = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    for key in (
        "floor",
        "harmonize",
        "timing_continue",
        "session",
        "startup",
        "jack",
        "date",
        "machine",
        "presets",
    ):
        assert new.get(key) == old.get(key), key
    assert [e["model"] for e in new["engine"]] == ["tiny"] and new["zoo"] == ["tiny.onnx"]
    assert [u["sections"] for u in new["updates"]] == [["engine"]]
    rtf = next(t for t in new["targets"] if t["target"].startswith("real-time factor"))
    assert rtf["measured"] == 400.0 and rtf["note"] == "tiny"
    md = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    floor = old["floor"]["round_trip_ms"]
    assert f"| {floor['p50']:.2f} | {floor['p99']:.2f} |" in md  # the floor row is kept
    assert "| tiny | lstm (token-step) |" in md
    assert "Measured again since: engine on" in md and "--only engine" in md
    assert md.endswith("## Analysis\n\nWritten by hand.\n")


def test_only_engine_with_no_report_writes_one_without_jack(tmp_path, no_jack):
    assert bench(tmp_path, "--only", "engine") == 0
    new = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert "jack" not in new and "updates" not in new and "floor" not in new
    md = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "JACK:" not in md and "| tiny |" in md


def test_a_run_of_every_section_replaces_the_report_and_its_updates():
    old = json.loads(SHIPPED.read_text(encoding="utf-8"))
    old["updates"] = [{"date": "then", "sections": ["engine"]}]
    new = {**copy.deepcopy(old), "date": "now", "skipped": {"session": "no chorale model"}}
    del new["updates"], new["session"], new["targets"]
    merged = bench_report.merge(old, new, bench_report.SECTIONS)
    assert merged["date"] == "now" and "updates" not in merged and "session" not in merged
    assert merged["skipped"] == {"session": "no chorale model"}


def test_a_section_skipped_now_drops_its_old_numbers_and_old_reasons_of_measured_go():
    old = json.loads(SHIPPED.read_text(encoding="utf-8"))
    old["skipped"] = {"harmonize": "no chorale model then"}
    new = {k: old[k] for k in ("mode", "date", "machine", "zoo", "presets")}
    new.update(
        provider="auto",
        skipped={"session": "no chorale model"},
        jack=old["jack"],
        harmonize=old["harmonize"],
    )
    merged = bench_report.merge(old, new, {"harmonize", "session"})
    assert "session" not in merged and merged["harmonize"] == old["harmonize"]
    assert merged["skipped"] == {"session": "no chorale model"}
    assert merged["floor"] == old["floor"] and merged["updates"][-1]["sections"] == [
        "harmonize",
        "session",
    ]


def test_a_broken_report_is_said_before_anything_is_measured(tmp_path, no_jack, capsys):
    (tmp_path / "bench.json").write_text("{not json", encoding="utf-8")
    assert bench(tmp_path, "--only", "engine") == 2
    err = capsys.readouterr()
    assert "not a report of companion bench" in err.err and "bench: engine" not in err.out
