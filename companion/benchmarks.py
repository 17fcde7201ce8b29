"""The four polyphonic benchmarks (Boulanger-Lewandowski et al. 2012) and JSB SATB, with
their published train/valid/test splits intact.

The data ships inside the package, xz-compressed, in ``companion/data/benchmarks`` (its
README gives sources, grids and the metric). ``$MIDI_COMPANION_DATA`` overrides it: the
data folder (holding ``benchmarks/``) or the benchmarks folder itself, with the same files
as plain ``.json`` or ``.json.xz``.

Rolls are uint8 arrays [T, 88], key index = MIDI pitch - 21, read-only because they are
cached per process (copy before changing one in place).
"""

from __future__ import annotations

import json
import lzma
import os
from functools import cache
from itertools import chain
from pathlib import Path

import numpy as np

from midi_companion.errors import DataError
from midi_companion.representations.multitrack import CHOIR, SATB
from midi_companion.representations.pianoroll import PianoRoll
from midi_companion.score import Note, Score, Track

ENV = "MIDI_COMPANION_DATA"
PREFIX = "benchmark:"  # a corpus spec names a benchmark source as "benchmark:<name>"
FILES = {
    "jsb": "jsb-chorales-quarter.json",
    "jsb-16th": "jsb-chorales-16th.json",
    "nottingham": "nottingham.json",
    "musedata": "musedata.json",
    "piano-midi": "piano-midi.json",
}
#: beats per frame of each benchmark
GRID = {"jsb": 1.0, "jsb-16th": 0.25, "nottingham": 0.5, "musedata": 0.5, "piano-midi": 0.5}
SATB_FILE = "Jsb16thSeparated.json"
SATB_GRID = 0.25
SPLITS = ("train", "valid", "test")
#: pieces per split, as published
SIZES = {
    "jsb": (229, 76, 77),
    "jsb-16th": (229, 76, 77),
    "nottingham": (694, 173, 170),
    "musedata": (524, 135, 124),
    "piano-midi": (87, 12, 25),
    "satb": (229, 76, 77),
}
LOW, KEYS = 21, 88


def data_dir() -> Path:
    """The benchmarks folder; DataError naming where it looked when there is none."""
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
        for folder in (root / "benchmarks", root):
            if _data_file(folder / FILES["jsb"]) is not None:
                return folder
        raise DataError(
            f"{ENV}={env}: holds neither benchmarks/{FILES['jsb']} nor "
            f"{FILES['jsb']} (plain or .xz)"
        )
    if _data_file(SHIPPED / FILES["jsb"]) is None:
        raise DataError(
            f"benchmark data not found in {SHIPPED} (an incomplete install?); "
            f"set {ENV} to a folder holding it"
        )
    return SHIPPED


SHIPPED = Path(__file__).resolve().parent / "data" / "benchmarks"


def _data_file(path: Path) -> Path | None:
    """`path` or its .xz twin, whichever exists."""
    for p in (path, path.with_name(path.name + ".xz")):
        if p.is_file():
            return p
    return None


def representation(name: str) -> PianoRoll:
    """The 88-key piano roll a benchmark is written in."""
    return PianoRoll(grid=GRID[_checked(name)], pitches=KEYS)


def load(name: str) -> dict[str, list[np.ndarray]]:
    """{"train", "valid", "test"}: lists of uint8 rolls [T, 88] of benchmark `name`."""
    name = _checked(name)  # an unknown name is the error, wherever the data is
    cached = _load_rolls(str(data_dir()), name)
    return {split: list(cached[split]) for split in SPLITS}


def as_scores(name: str, split: str) -> list[Score]:
    """One split of a benchmark as Scores (one track; velocity 80; repeated notes merged)."""
    _checked_split(split)
    rep = representation(name)
    return [rep.decode(roll) for roll in load(name)[split]]


def parse_corpus(spec: str) -> tuple[list[str], str]:
    """A corpus spec (sources joined by '+') -> the names of its benchmark sources
    (``benchmark:<name>``, in order) and its other sources joined by '+' again (for
    models.corpora; '' when there are none)."""
    parts = [p.strip() for p in spec.split("+")]
    names = [p[len(PREFIX) :] for p in parts if p.startswith(PREFIX)]
    return names, "+".join(p for p in parts if not p.startswith(PREFIX))


def source_pieces(name: str, split: str) -> list[tuple[str, Score]]:
    """One published split of the corpus source ``benchmark:<name>`` as (piece id, Score):
    ``jsb-satb`` is the four-voice JSB (load_satb), any other name a benchmark (as_scores);
    ids are ``benchmark:<name>/<split>/<index>``, as checkpoints and model files record them."""
    if name == "jsb-satb":
        _checked_split(split)
        scores = [_satb_score(steps) for steps in load_satb_arrays()[split]]
    else:
        scores = as_scores(name, split)
    return [(f"{PREFIX}{name}/{split}/{i}", score) for i, score in enumerate(scores)]


def load_satb_arrays() -> dict[str, list[np.ndarray]]:
    """JSB chorales by voice at the 16th grid: int16 arrays [T, 4] of MIDI pitches
    (soprano, alto, tenor, bass), -1 = silent."""
    cached = _load_satb(str(data_dir()))
    return {split: list(cached[split]) for split in SPLITS}


def load_satb() -> dict[str, list[Score]]:
    """JSB chorales as four-track Scores (soprano, alto, tenor, bass; choir); a voice's
    consecutive equal pitches are one held note."""
    return {
        split: [_satb_score(steps) for steps in pieces]
        for split, pieces in load_satb_arrays().items()
    }


def _checked_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"benchmarks: split must be one of {list(SPLITS)} (received {split!r})")


def _checked(name: str) -> str:
    if name not in FILES:
        raise DataError(f"benchmarks: unknown benchmark {name!r}; known: {list(FILES)}")
    return name


@cache
def _load_rolls(folder: str, name: str) -> dict[str, tuple[np.ndarray, ...]]:
    path = Path(folder) / FILES[name]
    data = _read_splits(path, name)
    return {
        split: tuple(_roll(p, f"{path}: {split}[{i}]") for i, p in enumerate(data[split]))
        for split in SPLITS
    }


@cache
def _load_satb(folder: str) -> dict[str, tuple[np.ndarray, ...]]:
    path = Path(folder) / SATB_FILE
    data = _read_splits(path, "satb")
    return {
        split: tuple(_voices(p, f"{path}: {split}[{i}]") for i, p in enumerate(data[split]))
        for split in SPLITS
    }


def _read_splits(path: Path, name: str) -> dict[str, list]:
    """The JSON of a benchmark file, checked to hold the published splits."""
    found = _data_file(path)
    if found is None:
        raise DataError(f"{path}: no such file (nor {path.name}.xz)")
    path = found
    try:
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, lzma.LZMAError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with keys {list(SPLITS)}")
    for split, size in zip(SPLITS, SIZES[name]):
        pieces = data.get(split)
        if not isinstance(pieces, list) or len(pieces) != size:
            received = len(pieces) if isinstance(pieces, list) else repr(pieces)[:40]
            raise DataError(
                f"{path}: split {split!r} must list the {size} published pieces "
                f"(received {received})"
            )
    return data


def _roll(piece: list, where: str) -> np.ndarray:
    """A piece as lists of sounding pitches -> read-only uint8 roll [T, 88]."""
    try:
        counts = [len(frame) for frame in piece]
        pitches = np.fromiter(chain.from_iterable(piece), dtype=float, count=sum(counts))
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: a piece must be a list of lists of pitches ({err})") from err
    keys = pitches.astype(np.int64) - LOW
    bad = pitches[(keys + LOW != pitches) | (keys < 0) | (keys >= KEYS)]
    if bad.size:
        raise DataError(f"{where}: pitches must be whole numbers 21..108 (received {bad[0]:g})")
    roll = np.zeros((len(piece), KEYS), dtype=np.uint8)
    roll[np.repeat(np.arange(len(piece)), counts), keys] = 1
    roll.flags.writeable = False
    return roll


def _voices(piece: list, where: str) -> np.ndarray:
    """A piece as [soprano, alto, tenor, bass] steps -> read-only int16 array [T, 4]."""
    try:
        steps = np.array(piece, dtype=np.int16).reshape(len(piece), 4)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: each step must list 4 pitches ({err})") from err
    bad = steps[(steps < -1) | (steps > 127)]
    if bad.size:
        raise DataError(f"{where}: pitches must be -1 (silent) or 0..127 (received {bad[0]})")
    steps.flags.writeable = False
    return steps


def _satb_score(steps: np.ndarray) -> Score:
    tracks = []
    for voice, column in zip(SATB, steps.T):
        # Run boundaries: where the pitch changes (the -2 sentinels close both ends).
        edges = np.flatnonzero(np.diff(column, prepend=-2, append=-2))
        notes = [
            Note(a * SATB_GRID, int(column[a]), b * SATB_GRID - a * SATB_GRID)
            for a, b in zip(edges[:-1], edges[1:])
            if column[a] >= 0
        ]
        tracks.append(Track(name=voice, program=CHOIR, notes=notes))
    return Score(tracks=tracks)
