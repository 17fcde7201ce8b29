"""Pattern mode (companion/modes/pattern.py) through the offline path (virtual clock, the
live Performer): a generated block every N bars, on the bar, in the player's key; plus the
key arithmetic and the preset's [pattern] table."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from midi_companion import presets
from midi_companion.errors import PresetError
from midi_companion.offline import perform
from midi_companion.pattern import fit_key, key_of, shift_between
from midi_companion.score import Note, Score

ROOT = Path(__file__).resolve().parents[1]

PRESET = """
model = "{model}"
mode = "pattern"
[[tracks]]
name = "pattern"
channel = 5
program = 0
[timing]
bpm = 120
bars = {bars}
[pattern]
{pattern}
"""


def companion(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny-dcgan and tiny-note-gan, trained and exported by the project's commands."""
    d = tmp_path_factory.mktemp("gans")
    out = {}
    for family in ("dcgan", "note-gan"):
        companion("train", ROOT / f"models/configs/tiny-{family}.toml", cwd=d)
        out[family] = d / f"{family}.onnx"
        companion("export", d / f"runs/tiny-{family}/best.pt", "-o", out[family], cwd=d)
    return out


def make_preset(tmp_path, model, bars=1, pattern="threshold = 0.5"):
    path = tmp_path / "pattern.toml"
    path.write_text(PRESET.format(model=model, bars=bars, pattern=pattern))
    return presets.load(str(path))


def melody(bars: int, start: float = 0.5, tonic: int = 62) -> Score:
    """A D major line (by default) from beat `start`, off the bar line, for `bars` bars."""
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    notes = [Note(start + i, tonic + scale[i % 8], 0.9, 90) for i in range(4 * bars)]
    return Score.from_notes(notes, bpm=120)


# ---- keys ----------------------------------------------------------------------------------
def test_shift_between_keys_goes_by_the_relative_major():
    assert shift_between((0, "major"), (2, "major")) == 2
    assert shift_between((0, "major"), (7, "major")) == -5
    assert shift_between((9, "minor"), (0, "major")) == 0  # A minor -> C major: relative
    assert shift_between((2, "minor"), (4, "minor")) == 2


def test_fit_key_moves_a_block_into_the_players_key_and_the_lock_into_its_scale():
    c_major = [Note(i * 0.5, p, 0.5) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    assert key_of(c_major) == (0, "major")
    moved = fit_key(c_major, (3, "major"))  # E flat major
    assert [n.pitch for n in moved] == [p + 3 for p in (60, 62, 64, 65, 67, 69, 71, 72)]
    locked = fit_key(c_major + [Note(4.0, 61, 0.5)], (0, "major"), lock=True)
    assert all(n.pitch % 12 in (0, 2, 4, 5, 7, 9, 11) for n in locked)
    assert fit_key(c_major, None) == c_major


# ---- the preset ----------------------------------------------------------------------------
def test_pattern_table_is_checked_and_only_read_in_pattern_mode(tmp_path):
    model = presets.zoo_models()[0]
    with pytest.raises(PresetError, match=r"\[pattern\] threshold must be <= 1"):
        make_preset(tmp_path, model, pattern="threshold = 2.0")
    with pytest.raises(PresetError, match=r"\[pattern\] has unknown key 'density'"):
        make_preset(tmp_path, model, pattern="density = 3")
    path = tmp_path / "c.toml"
    path.write_text(f'model = "{model}"\nmode = "continue"\n[pattern]\nnotes = 4\n')
    with pytest.raises(PresetError, match=r'read only when mode = "pattern"'):
        presets.load(str(path))
    p = make_preset(tmp_path, model, pattern="notes = 12\ntranspose = false")
    assert (p.mode, p.pattern.notes, p.pattern.transpose) == ("pattern", 12, False)


def test_the_shipped_pattern_preset_loads():
    p = presets.load("pattern")
    assert p.mode == "pattern" and p.pattern is not None and len(p.tracks) == 1


# ---- playing -------------------------------------------------------------------------------
def blocks_of(notes, span):
    """Notes grouped by the block (of `span` beats) they start in."""
    out: dict[int, list] = {}
    for n in notes:
        out.setdefault(int(n.onset // span), []).append(n)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dcgan", "note-gan"])
def test_pattern_plays_bar_aligned_blocks_while_the_player_plays(tmp_path, models, family):
    density = "threshold = 0.5" if family == "note-gan" else "notes = 16"
    preset = make_preset(tmp_path, models[family], bars=1, pattern=density)
    score = melody(bars=4)  # beats 0.5 .. 16.4
    out = perform(preset, score, seed=3)
    player, pattern = out.tracks
    assert pattern.channel == 4 and pattern.notes
    # the first block on the first bar line after the first note (beat 4), then one a bar,
    # while the player plays: bars 1, 2, 3 and the one that starts before the input ends
    starts = sorted(blocks_of(pattern.notes, 4.0))
    assert set(starts) <= {1, 2, 3, 4}
    if family == "dcgan":  # 16 notes a block: none is empty
        assert starts == [1, 2, 3, 4]
    for n in pattern.notes:  # every note inside its own block: none rings into the next
        bar = int(n.onset // 4.0)
        assert n.end <= (bar + 1) * 4.0 + 1e-6
        assert abs(n.onset * 4 - round(n.onset * 4)) < 1e-6  # on the sixteenth grid
    assert out.tracks[1].notes == perform(preset, score, seed=3).tracks[1].notes  # seeded


@pytest.mark.slow
def test_pattern_density_follows_the_number_of_notes(tmp_path, models):
    counts = []
    for n in (4, 40):
        preset = make_preset(tmp_path, models["dcgan"], bars=2, pattern=f"notes = {n}")
        out = perform(preset, melody(bars=8), seed=1)
        per_block = [len(v) for v in blocks_of(out.tracks[1].notes, 8.0).values()]
        counts.append(np.mean(per_block))
    assert counts[0] < counts[1]


@pytest.mark.slow
def test_pattern_is_transposed_into_the_players_key(tmp_path, models):
    preset = make_preset(tmp_path, models["note-gan"], bars=2, pattern="threshold = 0.5")
    for tonic in (60, 66):  # C major, F sharp major
        out = perform(preset, melody(bars=8, tonic=tonic), seed=5)
        for notes in blocks_of(out.tracks[1].notes, 8.0).values():
            key = key_of(notes)
            if len(notes) >= 8 and key is not None:
                assert shift_between(key, (tonic % 12, "major")) == 0


@pytest.mark.slow
def test_companion_accompany_plays_a_pattern_preset(tmp_path, models):
    preset = make_preset(tmp_path, models["dcgan"], bars=2, pattern="notes = 12")
    melody(bars=4).to_midi(tmp_path / "in.mid")
    r = companion("accompany", preset.path, "in.mid", "-o", "out.mid", cwd=tmp_path)
    assert "wrote out.mid" in r.stdout
    out = Score.from_midi(tmp_path / "out.mid")
    pattern = [t for t in out.tracks if t.channel == 4]
    assert len(pattern) == 1 and pattern[0].notes
    assert min(n.onset for n in pattern[0].notes) >= 4.0 - 1e-6  # from the first bar line on
