"""companion/ never imports torch: start-up stays fast and players install no torch."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_torch_import_in_runtime_sources():
    pattern = re.compile(r"^\s*(import torch|from torch)", re.M)
    offenders = [
        str(p) for p in (ROOT / "companion").rglob("*.py") if pattern.search(p.read_text())
    ]
    assert offenders == []


def test_runtime_modules_import_with_torch_blocked():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import midi_companion.cli, midi_companion.daemon, midi_companion.performer\n"
        "import midi_companion.offline, midi_companion.representations\n"
        "import midi_companion.engine, midi_companion.voices\n"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_a_training_command_without_the_training_extra_is_one_sentence_exit_2():
    """Without torch, `companion train` says which extra to install (no traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from midi_companion.cli import main\n"
        "sys.exit(main(['train', 'models/configs/tiny-lstm.toml']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "needs the training extra (torch is not installed)" in r.stderr
