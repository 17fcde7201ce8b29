"""mode = "band" (companion/modes/band.py) over a vae-nn model (companion/band.py), through
the offline path that drives the live Performer on a virtual clock: the band answers the
player block by block, one block ahead, every block on a bar line and closed within itself,
each part on its own channel and program; a rest of a block stops it; presets that do not
fit the model are refused. A tiny model trained here (a synthetic quartet folder) tests the
plumbing; the shipped preset (presets/band.toml, models/zoo) is tested under a melody it
never saw."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mido
import numpy as np
import pytest

from midi_companion import modelfile, presets
from midi_companion.band import Band, roll_events
from midi_companion.errors import ModelError, PresetError
from midi_companion.offline import perform
from midi_companion.score import Note, Score, Track

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SHIPPED = presets.presets_dir() / "band.toml"

CONFIG = """
[model]
family = "vae-nn"
latent = 8
channels = [4, 8, 16]
hidden = 16

[representation]
name = "multitrack"
scheme = "quartet"
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
max_steps = 4
eval_every = 4
out = "{out}"
"""

PRESET = """
name = "tiny band"
model = "{model}"
mode = "band"

[[tracks]]
name = "violin 2"
channel = 2
program = 40

[[tracks]]
name = "viola"
channel = 3
program = 41

[[tracks]]
name = "cello"
channel = 4
program = 42

[band]
noise = 0.5
threshold = {threshold}

[timing]
bpm = 120
"""


def quartet(seed: int, bars: int = 8) -> Score:
    rng = np.random.default_rng(seed)
    lines = [
        [Note(b * 0.5, 76 + int(rng.integers(-5, 5)), 0.5, 80) for b in range(bars * 8)],
        [Note(b * 1.0, 67 + int(rng.integers(-3, 3)), 1.0, 80) for b in range(bars * 4)],
        [Note(b * 2.0, 60, 2.0, 80) for b in range(bars * 2)],
        [Note(b * 4.0, 48 - (b % 2) * 5, 4.0, 80) for b in range(bars)],
    ]
    names = ("Violin I", "Violin II", "Viola", "Cello")
    return Score(
        tracks=[
            Track(name=n, program=40 + min(i, 2) - (i == 1), channel=i, notes=notes)
            for i, (n, notes) in enumerate(zip(names, lines))
        ],
        tempos=[(0.0, 120.0)],
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny vae-nn over a synthetic quartet folder, exported (three files)."""
    tmp = tmp_path_factory.mktemp("band")
    with pytest.MonkeyPatch.context() as mp:  # the folder's parse is cached in tmp, not ~
        mp.setenv("MIDI_COMPANION_CACHE", str(tmp / "cache"))
        return _train_and_export(tmp)


def _train_and_export(tmp: Path) -> Path:
    from midi_companion.export import export_checkpoint
    from midi_companion.models.train import train

    folder = tmp / "quartets"
    folder.mkdir()
    for i in range(8):
        quartet(i).to_midi(folder / f"q{i}.mid")
    cfg = tmp / "tiny.toml"
    cfg.write_text(CONFIG.format(folder=folder, out=tmp / "run"))
    train(cfg, progress=False)
    export_checkpoint(tmp / "run/best.pt", tmp / "tiny.onnx", batch_sizes=(1, 3))
    return tmp / "tiny.onnx"


def tiny_preset(tmp_path: Path, model: Path, threshold: float = 0.001) -> Path:
    """A band preset on the tiny model; its decoder is barely trained, so a low threshold
    makes it play (every cell, at 0.001: what tests the plumbing hardest)."""
    path = tmp_path / "band.toml"
    path.write_text(PRESET.format(model=model, threshold=threshold))
    return path


def melody(beats: float, start: float = 0.0, pitches=(72, 74, 76, 77, 79, 77, 76, 74)):
    notes = [
        Note(start + i * 0.5, pitches[i % len(pitches)], 0.5, 90) for i in range(int(beats * 2))
    ]
    return Score(tracks=[Track(name="lead", notes=notes)], tempos=[(0.0, 120.0)])


def generated(result: Score, score: Score) -> list[Track]:
    return result.tracks[len([t for t in score.tracks if t.notes]) :]


# ---- pieces --------------------------------------------------------------------------------
def test_roll_events_close_every_note_within_the_block():
    roll = np.zeros((32, 4), dtype=bool)
    roll[2:5, 1] = True  # one note of 3 steps
    roll[8, 1] = True  # a second, one step
    roll[30:, 3] = True  # runs to the block's end
    ev = roll_events(roll, 8.0, 0.25, 60, 70, 2)
    assert [(e.beat, e.pitch, e.velocity, e.track) for e in ev] == [
        (8.5, 61, 70, 2),
        (9.25, 61, 0, 2),
        (10.0, 61, 70, 2),
        (10.25, 61, 0, 2),
        (15.5, 63, 70, 2),
        (16.0, 63, 0, 2),
    ]


def test_the_quartet_scheme_keeps_the_parts_in_score_order_with_double_stops():
    from midi_companion.representations import REGISTRY

    rep = REGISTRY["multitrack"](scheme="quartet", low=0, high=127)
    score = quartet(0, bars=1)
    score.tracks[2].notes.append(Note(0.0, 67, 2.0, 80))  # a double stop in the viola
    frames = rep.encode(score)
    assert rep.track_names() == ["violin1", "violin2", "viola", "cello"]
    assert frames.shape[1:] == (4, 128) and frames[0, 2, [60, 67]].tolist() == [1, 1]
    assert [t.program for t in rep.decode(frames).tracks] == [40, 40, 41, 42]


def test_the_band_opens_and_checks_its_three_files(tiny, tmp_path):
    band = Band(modelfile.load(tiny), provider="cpu")
    assert band.tracks == ["violin1", "violin2", "viola", "cello"]
    assert (band.block, band.block_beats, band.latent) == (32, 8.0, 8)
    out = band.next_block(np.zeros((32, 128)), 0.5, 0.3, np.random.default_rng(0))
    assert out.shape == (4, 32, 128) and out.dtype == bool
    for name in ("tiny.onnx", "tiny.encoder.onnx"):
        shutil.copy(tiny.parent / name, tmp_path / name)
    with pytest.raises(ModelError, match="decoder graph .* is missing"):
        Band(modelfile.load(tmp_path / "tiny.onnx"))
    shutil.copy(tiny.parent / "tiny.encoder.onnx", tmp_path / "tiny.decoder.onnx")
    with pytest.raises(ModelError, match="not the decoder"):
        Band(modelfile.load(tmp_path / "tiny.onnx"))


# ---- the mode ------------------------------------------------------------------------------
def test_one_block_ahead_on_bar_lines_each_part_on_its_channel(tiny, tmp_path):
    preset = presets.load(tiny_preset(tmp_path, tiny))
    score = melody(beats=30, start=1.5)  # starts mid-bar: block 0 begins on the bar line, 0
    result = perform(preset, score, seed=3)  # raises if a note were left open
    parts = generated(result, score)
    assert [(t.name, t.channel, t.program) for t in parts] == [
        ("violin 2", 1, 40),
        ("viola", 2, 41),
        ("cello", 3, 42),
    ]
    for t in parts:
        assert t.notes, t.name
        for n in t.notes:
            block = int(n.onset // 8)
            assert 1 <= block <= 3  # nothing under the first block; at most one past the last
            assert n.onset >= 8 * block and n.end <= 8 * (block + 1) + 1e-9  # within its block


def test_a_rest_of_a_whole_block_stops_the_band_and_the_next_note_restarts_it(tiny, tmp_path):
    preset = presets.load(tiny_preset(tmp_path, tiny))
    first, second = melody(beats=12), melody(beats=10, start=29.0)  # rest: beats 12-29
    score = replace(first, tracks=[Track(name="lead", notes=first.notes + second.notes)])
    onsets = sorted({n.onset for t in generated(perform(preset, score), score) for n in t.notes})
    assert onsets and min(onsets) >= 8
    # block 1 (8-16) answers block 0; block 2 (16-24) answers the lead's 8-16, which had
    # notes; block 2 of the lead (16-24) is silent: no block 3. The lead comes back at 29:
    # block 0 again at the bar line, 28, so the band answers from 36.
    assert not [b for b in onsets if 24 <= b < 36]
    assert any(b >= 36 for b in onsets)


def test_the_end_of_the_input_ends_the_band(tiny, tmp_path):
    preset = presets.load(tiny_preset(tmp_path, tiny))
    score = melody(beats=14)  # ends inside block 1, which never closes
    onsets = [n.onset for t in generated(perform(preset, score), score) for n in t.notes]
    assert 8 <= min(onsets) and max(onsets) < 16  # block 0 answered with block 1, no more


@pytest.mark.parametrize(
    "change, match",
    [
        ({"threshold": 0}, r"\[band\] threshold must be > 0"),
        ({"noise": -1}, r"\[band\] noise must be >= 0"),
    ],
)
def test_band_settings_are_checked(tiny, tmp_path, change, match):
    text = PRESET.format(model=tiny, threshold=0.3)
    for key, value in change.items():
        text = text.replace(f"{key} = 0.5", f"{key} = {value}").replace(
            f"{key} = 0.3", f"{key} = {value}"
        )
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=match):
        presets.load(path)


def test_a_preset_that_does_not_fit_the_model_is_refused(tiny, tmp_path):
    from midi_companion.modes import band

    ok = presets.load(tiny_preset(tmp_path, tiny))
    few = replace(ok, tracks=ok.tracks[:2])
    with pytest.raises(PresetError, match="must list the model's 3 accompanying tracks"):
        band.build(few, None, None, np.random.default_rng(0), "cpu")
    waltz = replace(ok, timing=replace(ok.timing, beats_per_bar=3))
    with pytest.raises(PresetError, match="beats_per_bar must divide the model's block of 8"):
        band.build(waltz, None, None, np.random.default_rng(0), "cpu")
    other = tmp_path / "other.toml"
    other.write_text(
        PRESET.format(model=tiny, threshold=0.3).replace('mode = "band"', 'mode = "accompany"')
    )
    with pytest.raises(PresetError, match=r'\[band\] is read only when mode = "band"'):
        presets.load(other)


# ---- the shipped preset --------------------------------------------------------------------
@pytest.mark.skipif(not SHIPPED.is_file(), reason="presets/band.toml is not there")
def test_the_shipped_band_fills_three_channels_under_an_unseen_melody(tmp_path):
    """`companion accompany band IN.mid -o OUT.mid` on a tune of our own (no corpus has it)."""
    tune = [67, 72, 74, 76, 74, 72, 71, 72, 76, 79, 77, 76, 74, 72, 74, 76]
    notes = [Note(i * 1.0, p, 1.0, 90) for i, p in enumerate(tune * 3)]
    src = tmp_path / "tune.mid"
    Score(tracks=[Track(name="melody", notes=notes)], tempos=[(0.0, 100.0)]).to_midi(src)
    out = tmp_path / "band.mid"
    cmd = [sys.executable, "-m", "midi_companion", "accompany", "band", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    channels = {
        m.channel
        for tr in mido.MidiFile(out).tracks
        for m in tr
        if m.type == "note_on" and m.velocity > 0
    }
    preset = presets.load("band")
    band_channels = {t.channel - 1 for t in preset.tracks}
    assert len(channels & band_channels) >= 3
