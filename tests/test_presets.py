"""Preset validation: every error names the file, the key, what was received and allowed."""

import subprocess
import sys

import pytest

from midi_companion import presets
from midi_companion.errors import PresetError

BASE = """
model = "m.onnx"
mode = "continue"
[[tracks]]
name = "answer"
channel = 1
"""


def write(tmp_path, text):
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_minimal_preset_gets_defaults(tmp_path):
    p = presets.load(str(write(tmp_path, BASE)))
    assert p.mode == "continue" and p.name == "p"
    assert p.model == (tmp_path / "m.onnx").resolve()
    assert p.timing.bars == 2 and p.sampling.temperature == 1.0
    assert p.channels == [1]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("[sampling]\ntemperature = -1", "[sampling] temperature must be > 0 (received -1)"),
        ("[sampling]\ntemprature = 1.0", "[sampling] has unknown key 'temprature'"),
        ('[timing]\nbpm = "fast"', "[timing] bpm must be float (received 'fast')"),
        ('[timing]\nstart_on = "now"', "[timing] start_on must be one of beat, bar"),
        ("colour = 3", "has unknown key 'colour'"),
        ("[controls]\ntemperature_range = [2, 1]", "temperature_range must be [low, high]"),
        ("[controls]\npanic_cc = 1", "temperature_cc and panic_cc are both CC 1"),
        # mode_cc was validated and did nothing; it is gone, so a preset that sets it is told
        ("[controls]\nmode_cc = 20", "[controls] has unknown key 'mode_cc'"),
    ],
)
def test_bad_values_are_named(tmp_path, extra, fragment):
    path = write(tmp_path, BASE + "\n" + extra + "\n")
    with pytest.raises(PresetError) as err:
        presets.load(str(path))
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_bad_mode_and_missing_model(tmp_path):
    with pytest.raises(PresetError, match="mode must be one of continue, accompany, jam"):
        presets.load(str(write(tmp_path, BASE.replace('"continue"', '"solo"'))))
    with pytest.raises(PresetError, match="model names a model file that does not exist"):
        presets.load(str(write(tmp_path, BASE.replace("m.onnx", "nope.onnx"))))


def test_duplicate_channels_and_jam_needs_solo(tmp_path):
    text = BASE + '[[tracks]]\nname = "b"\nchannel = 1\n'
    with pytest.raises(PresetError, match="distinct channel per track"):
        presets.load(str(write(tmp_path, text)))
    with pytest.raises(PresetError, match="solo_model is required"):
        presets.load(str(write(tmp_path, BASE.replace('"continue"', '"jam"'))))


def test_not_toml_and_unknown_name(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("model = \n")
    with pytest.raises(PresetError, match="not valid TOML"):
        presets.load(str(path))
    with pytest.raises(PresetError, match="unknown preset 'nosuch'; known presets:"):
        presets.load("nosuch")


def test_cli_preset_error_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, BASE + "[sampling]\ntemperature = 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "midi_companion", "presets", "show", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "temperature must be > 0 (received 0)" in r.stderr
