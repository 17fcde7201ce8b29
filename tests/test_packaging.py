"""The wheel installs one namespace of ours and works outside the source tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_top_level_is_ours_alone_and_carries_the_data(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("midi_companion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"midi_companion"}
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["midi_companion"]
    shipped = {Path(n).name for n in names}
    for preset in (ROOT / "presets").glob("*.toml"):
        assert f"midi_companion/shipped_presets/{preset.name}" in names
    for model in (ROOT / "models" / "zoo").glob("*.onnx"):
        assert f"midi_companion/models/zoo/{model.name}" in names
    assert any(
        n.startswith("midi_companion/data/benchmarks/") and n.endswith(".json.xz") for n in names
    )
    assert "folk.toml" in shipped
