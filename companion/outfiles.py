"""Files we write (a generated .mid, a live recording): checked before any work starts, and
replaced atomically, so a failed write never leaves a half file or destroys the old one."""

from __future__ import annotations

import os
from pathlib import Path

from midi_companion.errors import MidiFileError


def check_output(path: str | os.PathLike, flag: str, inputs=()) -> Path:
    """`path` (given as `flag`) can be written: its folder exists, it is not a folder, not
    one of `inputs`, and a file can be created beside it. Nothing is left behind."""
    p = Path(path)
    if p.is_dir():
        raise MidiFileError(
            f"{flag} {p}: is a folder; expected a file name such as {p / 'take.mid'}"
        )
    if not p.parent.is_dir():
        why = "is not a folder" if p.parent.exists() else "does not exist"
        raise MidiFileError(f"{flag} {p}: its folder {p.parent} {why}")
    for other in inputs:
        if p.exists() and Path(other).exists() and p.samefile(other):
            raise MidiFileError(
                f"{flag} {p}: is the input file; write the result to another "
                "file so the input is kept"
            )
    probe = _tmp(p)
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise MidiFileError(f"{flag} {p}: cannot be written ({err.strerror or err})") from err
    return p


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, sync it, rename it over `path`."""
    p = Path(path)
    tmp = _tmp(p)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise MidiFileError(f"{p}: cannot write ({err.strerror or err})") from err


def _tmp(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")
