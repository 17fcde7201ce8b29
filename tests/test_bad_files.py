"""Bad files, table-driven (issue 12): every bad preset, model and MIDI file a user may hand
the companion is answered through the real command line with one sentence naming the file
and the fault, exit code 2, and no traceback unless --debug.

Each row makes its file in a temporary folder and runs `python -m midi_companion ...` on it:
presets and models through `companion continue` (which loads the preset, then its models,
as `companion run` does before any port opens), MIDI files as the input of `companion
continue`. Models: the shipped folk and chorale (models/zoo).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from midi_companion import presets

ROOT = Path(__file__).resolve().parents[1]
ZOO = presets.zoo_dir()
FOLK, CHORALE = ZOO / "folk.onnx", ZOO / "chorale.onnx"

pytestmark = pytest.mark.skipif(
    not FOLK.is_file() or not CHORALE.is_file(), reason="the shipped models are not in models/zoo"
)


def companion(*args, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


# ---- files -------------------------------------------------------------------------------------


def smf(*tracks: bytes, fmt: int = 1, tpb: int = 480) -> bytes:
    """A Standard MIDI File with these track bodies (each ends with End of Track)."""
    head = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks), tpb)
    return head + b"".join(
        b"MTrk" + struct.pack(">I", len(t) + 4) + t + b"\x00\xff\x2f\x00" for t in tracks
    )


def melody() -> bytes:
    """Six quarter notes (C D E F G A), delta times of 480 ticks."""
    out = b""
    for p in (60, 62, 64, 65, 67, 69):
        out += b"\x00" + bytes([0x90, p, 90]) + b"\x83\x60" + bytes([0x80, p, 0])
    return out


def tempo(us_per_beat: int) -> bytes:
    return b"\x00\xff\x51\x03" + us_per_beat.to_bytes(3, "big")


def preset_file(d: Path, text: str) -> Path:
    p = d / "bad.toml"
    p.write_text(text)
    return p


def foreign_onnx(path: Path) -> None:
    """A valid ONNX model that is not ours: y = x + x, no metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def with_metadata(src: Path, path: Path, **changes: str) -> None:
    """A copy of the model `src` with metadata entries replaced."""
    import onnx

    model = onnx.load(src)
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, path)


def model_preset(d: Path, model: Path) -> Path:
    return preset_file(d, f'model = "{model}"\nmode = "continue"\n')


# ---- the table: (id, make(d) -> args, what the one sentence must say) -----------------------


def _preset(text: str, command: str = "continue"):
    return lambda d: [command, preset_file(d, text), _good_midi(d), "-o", d / "out.mid"]


def _model(make):
    def args(d):
        model = d / "bad.onnx"
        make(model)
        return ["continue", model_preset(d, model), _good_midi(d), "-o", d / "out.mid"]

    return args


def _midi(data: bytes):
    def args(d):
        (d / "bad.mid").write_bytes(data)
        return ["continue", "folk", d / "bad.mid", "-o", d / "out.mid"]

    return args


def _good_midi(d: Path) -> Path:
    p = d / "in.mid"
    p.write_bytes(smf(tempo(500_000) + melody()))
    return p


def _truncate(src: Path, keep: float):
    return lambda path: path.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])


def _corrupt(path: Path) -> None:
    data = bytearray(FOLK.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 4096] = bytes(range(256)) * 16  # a stretch of garbage in the weights
    data[10:40] = b"\xff" * 30  # and in the header
    path.write_bytes(bytes(data))


def _wrong_width(path: Path) -> None:
    """folk.onnx whose metadata says a smaller event vocabulary than its logits have."""
    rep = '{"name":"events","params":{"resolution":12,"max_shift":12,"velocity_bins":1}}'
    with_metadata(FOLK, path, representation=rep)


def _wrong_state(path: Path) -> None:
    state = '[{"name":"h","shape":[2,"B",128]},{"name":"c","shape":[2,"B",256]}]'
    with_metadata(FOLK, path, state=state)


ROWS = [
    # presets
    ("preset: TOML typo", _preset('model = "folk\nmode = "continue"\n'), "bad.toml"),
    (
        "preset: wrong type",
        _preset('model = "folk"\nmode = "continue"\n[timing]\nbpm = "fast"\n'),
        "bpm",
    ),
    ("preset: unknown key", _preset('model = "folk"\nmode = "continue"\ncolour = 1\n'), "colour"),
    (
        "preset: key misspelt",
        _preset('model = "folk"\nmode = "continue"\n[sampling]\ntempratur = 1.0\n'),
        "tempratur",
    ),
    ("preset: unknown model", _preset('model = "no-such-model"\nmode = "continue"\n'), "no-such"),
    ("preset: unknown mode", _preset('model = "folk"\nmode = "karaoke"\n'), "karaoke"),
    (
        "preset: model does not fit the mode",
        _preset('model = "folk"\nmode = "accompany"\n', "accompany"),
        "multitrack",
    ),
    (
        "preset: model does not fit the tracks",
        _preset(
            'model = "chorale"\nmode = "accompany"\n'
            '[[tracks]]\nname = "alto"\nchannel = 2\nprogram = 52\n',
            "accompany",
        ),
        "tracks",
    ),
    ("preset: not TOML at all", _preset("\x00\x01 binary \xff"), "bad.toml"),
    # models
    ("model: truncated", _model(_truncate(FOLK, 0.5)), "bad.onnx"),
    ("model: empty", _model(lambda p: p.write_bytes(b"")), "bad.onnx"),
    ("model: corrupt", _model(_corrupt), "bad.onnx"),
    ("model: foreign .onnx", _model(foreign_onnx), "not a midi-companion model"),
    ("model: not ONNX (a MIDI file)", _model(lambda p: p.write_bytes(smf(melody()))), "bad.onnx"),
    ("model: logits width != vocabulary", _model(_wrong_width), "bad.onnx"),
    ("model: state shape != graph", _model(_wrong_state), "bad.onnx"),
    # MIDI files
    ("midi: not MIDI", _midi(b"this is a text file, not MIDI\n"), "bad.mid"),
    ("midi: empty", _midi(b""), "empty"),
    ("midi: truncated", _midi(smf(tempo(500_000) + melody())[:40]), "truncated"),
    ("midi: type 2", _midi(smf(melody(), melody(), fmt=2)), "type 2"),
    ("midi: 0 ticks per beat", _midi(smf(melody(), tpb=0)), "ticks per beat"),
    ("midi: tempo 60,000,000 bpm", _midi(smf(tempo(1) + melody())), "tempo"),
    ("midi: tempo 3.6 bpm", _midi(smf(tempo(0xFFFFFF) + melody())), "tempo"),
    ("midi: no notes", _midi(smf(tempo(500_000))), "bad.mid"),
    ("midi: SMPTE time division", _midi(smf(melody(), tpb=0xE728)), "SMPTE"),
]


@pytest.mark.parametrize(("make", "fragment"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_a_bad_file_is_one_sentence_naming_it_exit_2(make, fragment, tmp_path):
    r = companion(*make(tmp_path), cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, f"exit code {r.returncode}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("companion: error: "), r.stderr
    assert fragment in lines[0], lines[0]
    bad = sorted(p.name for p in tmp_path.glob("bad.*"))
    assert any(name in lines[0] for name in bad), f"the bad file is not named: {lines[0]}"
    assert not (tmp_path / "out.mid").exists(), "an output was written from a bad file"


def test_debug_shows_the_traceback(tmp_path):
    args = _midi(b"not MIDI")(tmp_path)
    r = companion("--debug", *args, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "MidiFileError" in r.stderr


def test_the_table_covers_every_class_the_issue_names():
    ids = " ".join(r[0] for r in ROWS)
    for what in (
        "typo",
        "wrong type",
        "unknown key",
        "unknown model",
        "fit the mode",
        "fit the tracks",
        "model: truncated",
        "corrupt",
        "foreign",
        "width",
        "not MIDI",
        "midi: empty",
        "midi: truncated",
        "type 2",
        "0 ticks",
        "tempo",
    ):
        assert what in ids, what


def test_a_shipped_preset_and_midi_file_pass(tmp_path):
    """The table's control: the same command on good files succeeds."""
    assert shutil.which(sys.executable)
    r = companion(
        "continue", "folk", _good_midi(tmp_path), "-o", tmp_path / "out.mid", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr


def test_a_tempo_of_0_us_per_beat_is_no_tempo_and_the_file_plays_at_120(tmp_path):
    """Not a fault: a Set Tempo of 0 is read as no tempo at all (MIDI's default, 120 bpm,
    holds), as score.py documents; the file is otherwise fine."""
    (tmp_path / "zero.mid").write_bytes(smf(tempo(0) + melody()))
    r = companion("continue", "folk", "zero.mid", "-o", "out.mid", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
