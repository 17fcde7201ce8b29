"""benchmarks: finding the data, published splits, frame counts, rolls, Scores, SATB."""

from __future__ import annotations

import json

import numpy as np
import pytest

from midi_companion import benchmarks
from midi_companion.errors import DataError


@pytest.mark.parametrize("name", list(benchmarks.FILES))
def test_splits_are_the_published_ones(bench_dir, name):
    splits = benchmarks.load(name)
    assert list(splits) == ["train", "valid", "test"]
    assert tuple(len(splits[s]) for s in benchmarks.SPLITS) == benchmarks.SIZES[name]
    roll = splits["train"][0]
    assert roll.dtype == np.uint8 and roll.shape[1] == 88 and not roll.flags.writeable


def test_jsb_frame_counts(bench_dir):
    quarter = [sum(len(p) for p in benchmarks.load("jsb")[s]) for s in benchmarks.SPLITS]
    assert quarter == [13807, 4602, 4725]
    sixteenth = [sum(len(p) for p in benchmarks.load("jsb-16th")[s]) for s in benchmarks.SPLITS]
    assert sixteenth == [4 * n for n in quarter]
    nottingham = [sum(len(p) for p in benchmarks.load("nottingham")[s]) for s in benchmarks.SPLITS]
    assert nottingham == [176561, 45513, 44463]


def test_rolls_hold_the_listed_pitches(bench_dir):
    first = benchmarks.load("jsb")["train"][0]
    assert (np.flatnonzero(first[0]) + 21).tolist() == [60, 72, 79, 88]
    assert benchmarks.GRID == {
        "jsb": 1.0,
        "jsb-16th": 0.25,
        "nottingham": 0.5,
        "musedata": 0.5,
        "piano-midi": 0.5,
    }


def test_loads_are_cached_and_callers_cannot_spoil_the_cache(bench_dir):
    first = benchmarks.load("jsb")
    first["train"].clear()
    assert len(benchmarks.load("jsb")["train"]) == 229
    assert benchmarks.load("jsb")["valid"][0] is first["valid"][0]


def test_as_scores_decodes_through_the_pianoroll(bench_dir):
    [score] = benchmarks.as_scores("jsb", "test")[:1]
    roll = benchmarks.load("jsb")["test"][0]
    assert len(score.tracks) == 1 and score.notes[0].onset == 0.0
    frames = benchmarks.representation("jsb").encode(score)
    assert np.array_equal(frames, roll[: len(frames)])
    with pytest.raises(DataError, match=r"split must be one of .*received 'dev'"):
        benchmarks.as_scores("jsb", "dev")


def test_satb_arrays_and_scores(bench_dir):
    arrays = benchmarks.load_satb_arrays()
    assert tuple(len(arrays[s]) for s in benchmarks.SPLITS) == benchmarks.SIZES["satb"]
    steps = arrays["train"][0]
    assert steps.shape[1] == 4 and steps.dtype == np.int16 and steps.min() >= -1
    score = benchmarks.load_satb()["train"][0]
    assert [t.name for t in score.tracks] == ["soprano", "alto", "tenor", "bass"]
    soprano = score.tracks[0].notes
    # Consecutive equal pitches are one held note: the first note lasts its whole run.
    run = int(np.argmax(steps[:, 0] != steps[0, 0]))
    assert (soprano[0].onset, soprano[0].pitch) == (0.0, int(steps[0, 0]))
    assert soprano[0].duration == run * benchmarks.SATB_GRID


def test_env_var_names_the_data_folder_or_the_benchmarks_folder(bench_dir, monkeypatch):
    monkeypatch.setenv(benchmarks.ENV, str(bench_dir.parent))
    assert benchmarks.data_dir() == bench_dir
    monkeypatch.setenv(benchmarks.ENV, str(bench_dir))
    assert benchmarks.data_dir() == bench_dir


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(benchmarks.ENV, str(tmp_path))
    with pytest.raises(DataError, match=rf"{benchmarks.ENV}={tmp_path}: holds neither"):
        benchmarks.load("jsb")


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(DataError, match=r"unknown benchmark 'jsb8'; known: \['jsb', 'jsb-16th'"):
        benchmarks.load("jsb8")


def test_a_file_with_other_splits_is_refused(tmp_path, monkeypatch):
    (tmp_path / "jsb-chorales-quarter.json").write_text('{"train": [], "valid": [], "test": []}')
    monkeypatch.setenv(benchmarks.ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"split 'train' must list the 229 .*received 0\)"):
        benchmarks.load("jsb")


def test_bad_pitches_are_refused(tmp_path, monkeypatch):
    data = {"train": [[[60, 12]]] + [[[60]]] * 228, "valid": [[]] * 76, "test": [[]] * 77}
    (tmp_path / "jsb-chorales-quarter.json").write_text(json.dumps(data))
    monkeypatch.setenv(benchmarks.ENV, str(tmp_path))
    with pytest.raises(
        DataError, match=r"train\[0\]: pitches must be whole numbers 21..108 \(received 12\)"
    ):
        benchmarks.load("jsb")
