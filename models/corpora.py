"""Training corpora: music21's bundled collections and folders of MIDI files, as cached Scores.

A corpus spec names one or more sources joined with '+':

    music21:<collection>   a collection shipped inside the music21 package (COLLECTIONS)
    folder:<path>          every .mid/.midi file under a folder, recursively
    <path>                 a folder, same as folder:<path>

Parsing music21 sources is slow (tens of milliseconds a piece), so each source is parsed
once and cached as one compressed .npz under cache_dir(): a note table (columns piece, track,
onset, duration, pitch, velocity) plus a JSON string of piece ids, tracks, tempos, time
signatures and the items that could not be read. The cache key is the collection, music21's
version and FORMAT_VERSION; for a folder, its path and every file's name, size and mtime.
A later load takes a fraction of a second and never imports music21. Large parses run in a
pool of POOL_SIZE forked processes when the machine has idle cores (pool_size()).

Conversion from music21: models/music21_scores.py.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from midi_companion.errors import ConfigError, DataError, MidiFileError
from midi_companion.models.music21_scores import abc_meters, no_beaming, score_from_music21
from midi_companion.score import Note, Score, Track

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the cache layout, the conversion or a collection's files change
MIDI_SUFFIXES = (".mid", ".midi")
POOL_SIZE = 2
POOL_MIN_UNITS = 64  # below this a pool's start-up costs more than it saves


class Piece(NamedTuple):
    """One training piece: a stable id (used for splits) and its Score."""

    id: str
    score: Score


@dataclass(frozen=True)
class Collection:
    """A collection inside music21's corpus: its folder there and the file kinds to read."""

    folder: str
    extensions: tuple[str, ...]  # as corpus.getComposer takes them ("xml" covers .mxl)
    description: str
    exclude: tuple[str, ...] = ()  # path parts of files that are not part of the collection


COLLECTIONS = {
    "bach": Collection("bach", ("xml", "krn"), "J. S. Bach, four-part chorales"),
    "essen": Collection("essenFolksong", ("abc",), "Essen folk song collection (ABC)"),
    "oneill": Collection("oneills1850", ("abc",), "O'Neill's Music of Ireland, 1850 (ABC)"),
    "ryans": Collection("ryansMammoth", ("abc",), "Ryan's Mammoth Collection, 1883 (ABC)"),
    "palestrina": Collection("palestrina", ("krn",), "Palestrina, mass movements"),
    "beethoven": Collection("beethoven", ("xml", "krn"), "Beethoven, string quartets"),
    # k545 is a piano sonata, not a quartet.
    "mozart": Collection("mozart", ("xml",), "Mozart, string quartets", exclude=("k545",)),
    "haydn": Collection("haydn", ("xml",), "Haydn, string quartets"),
}


class _Unit(NamedTuple):
    """One parse job: a file, or one tune of a multi-tune ABC file (text = header + tune)."""

    id: str
    path: str
    text: str | None = None


class _Parsed(NamedTuple):
    pieces: list[Piece]
    failures: list[tuple[str, str]]  # (id or file, reason)


# ---- public API ----------------------------------------------------------------------------


def load_corpus(spec: str, *, progress: bool = True, limit: int | None = None) -> list[Piece]:
    """The pieces of a corpus spec ('music21:essen+music21:oneill', 'folder:~/midi', a path),
    in a stable order, at most `limit` of them; parsed once, then loaded from the cache."""
    if limit is not None and limit < 1:
        raise DataError(f"corpus {spec!r}: limit must be >= 1 (received {limit})")
    pieces: list[Piece] = []
    for source in _sources(spec):
        left = None if limit is None else limit - len(pieces)
        if left == 0:
            break
        pieces.extend(_load_source(source, progress=progress, limit=left))
    return pieces


def split_pieces(
    pieces: Iterable[Piece], valid: float = 0.1, test: float = 0.1, seed: int = 0
) -> dict[str, list[Piece]]:
    """Split into {"train", "valid", "test"} by a stable hash of each piece id and the seed.

    A piece's split depends only on its id, so adding pieces never moves the others; the
    order within each split is the input order. The counts (len of each list) are what a
    checkpoint records."""
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ConfigError(
            f"split fractions must be >= 0 with valid + test < 1 (received valid={valid}, "
            f"test={test})"
        )
    splits: dict[str, list[Piece]] = {"train": [], "valid": [], "test": []}
    for piece in pieces:
        u = _unit_hash(f"{seed}:{piece[0]}")
        name = "test" if u < test else "valid" if u < test + valid else "train"
        splits[name].append(piece)
    log.info("split %s", {k: len(v) for k, v in splits.items()})
    return splits


def describe(spec: str) -> dict:
    """Size of a corpus: {"spec", "pieces", "notes", "tracks", "beats"} (beats = total length)."""
    pieces = load_corpus(spec, progress=False)
    return {
        "spec": spec,
        "pieces": len(pieces),
        "notes": sum(len(t.notes) for p in pieces for t in p.score.tracks),
        "tracks": sum(len(p.score.tracks) for p in pieces),
        "beats": round(sum(p.score.end for p in pieces), 3),
    }


def cache_dir() -> Path:
    """Where parsed corpora are cached: $MIDI_COMPANION_CACHE/corpora, else
    $XDG_CACHE_HOME/midi-companion/corpora, else ~/.cache/midi-companion/corpora."""
    root = os.environ.get("MIDI_COMPANION_CACHE")
    if root:
        return Path(root).expanduser() / "corpora"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "midi-companion" / "corpora"


# ---- specs and sources ---------------------------------------------------------------------


class _Source(NamedTuple):
    kind: str  # "music21" | "folder"
    name: str  # collection name or folder path


def _sources(spec: str) -> list[_Source]:
    """Split on '+', except inside a folder name: at each point the longest run of '+'-joined
    pieces that names a source wins."""
    tokens, sources, i = spec.split("+"), [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            part = "+".join(tokens[i:j]).strip()
            if j == i + 1 or _names_source(part):
                sources.append(_source(part, spec))
                i = j
                break
    return sources


def _names_source(part: str) -> bool:
    if part.startswith("music21:"):
        return part.removeprefix("music21:") in COLLECTIONS
    return Path(part.removeprefix("folder:")).expanduser().is_dir()


def _source(part: str, spec: str) -> _Source:
    if part.startswith("music21:"):
        name = part.removeprefix("music21:")
        if name not in COLLECTIONS:
            raise DataError(
                f"corpus {spec!r}: unknown music21 collection {name!r} "
                f"(expected one of {', '.join(COLLECTIONS)})"
            )
        return _Source("music21", name)
    folder = Path(part.removeprefix("folder:")).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"corpus {spec!r}: {part!r} is not a folder (expected music21:<collection>, "
            f"folder:<path> or the path of a folder of .mid files)"
        )
    return _Source("folder", str(folder.resolve()))


def _load_source(source: _Source, *, progress: bool, limit: int | None) -> list[Piece]:
    if source.kind == "music21":
        key, label = _music21_key(source.name), f"music21:{source.name}"
        units = partial(_music21_units, source.name)
        worker = _parse_music21_unit
    else:
        files = _midi_files(Path(source.name))
        key, label = _folder_key(Path(source.name), files), source.name
        units = partial(_folder_units, Path(source.name), files)
        worker = _parse_midi_unit
    pieces = _cached(key, label, units, worker, progress=progress, limit=limit)
    if not pieces:
        raise DataError(f"corpus {label}: no readable pieces (expected at least one)")
    return pieces


def _cached(key, label, make_units, worker, *, progress, limit) -> list[Piece]:
    """Pieces from the full cache, else a cache of the first `limit`, else parsed and cached."""
    folder = cache_dir()
    candidates = [folder / f"{key}.npz"]
    if limit is not None:
        candidates.append(folder / f"{key}-first{limit}.npz")
    for path in candidates:
        loaded = _read_cache(path)
        if loaded is not None:
            _report(label, loaded.failures)
            return loaded.pieces[:limit]
    start = time.perf_counter()
    parsed = _parse_all(make_units(), worker, label, progress=progress, limit=limit)
    seconds = time.perf_counter() - start
    log.info("%s: parsed %d pieces in %.1f s", label, len(parsed.pieces), seconds)
    _report(label, parsed.failures)
    if parsed.pieces:
        _write_cache(candidates[-1], parsed, {"source": label, "parse_seconds": seconds})
    return parsed.pieces


def _report(label: str, failures: list[tuple[str, str]]) -> None:
    if failures:
        shown = "; ".join(f"{name}: {reason}" for name, reason in failures[:3])
        log.warning(
            "%s: skipped %d unreadable item(s) (%s%s)",
            label,
            len(failures),
            shown,
            "; ..." if len(failures) > 3 else "",
        )


# ---- music21 collections -------------------------------------------------------------------


def _music21_version() -> str:
    from importlib.metadata import version

    return version("music21")


def _music21_key(name: str) -> str:
    return f"music21-{name}-m21_{_music21_version()}-f{FORMAT_VERSION}"


def _collection_files(name: str) -> list[Path]:
    """The collection's files, sorted; one file per work (MusicXML over Humdrum when both)."""
    from music21 import corpus

    spec = COLLECTIONS[name]
    paths = [Path(p) for p in corpus.getComposer(spec.folder, fileExtensions=spec.extensions)]
    paths = [p for p in paths if not set(spec.exclude) & set(p.parts)]
    xml_stems = {p.with_suffix("") for p in paths if p.suffix in (".mxl", ".xml", ".musicxml")}
    paths = [p for p in paths if p.suffix != ".krn" or p.with_suffix("") not in xml_stems]
    if not paths:
        raise DataError(
            f"music21:{name}: no files found in music21's corpus "
            f"(expected {spec.folder}/*.{spec.extensions[0]}; is the corpus installed?)"
        )
    return sorted(paths)


def _music21_units(name: str) -> list[_Unit]:
    units = []
    for path in _collection_files(name):
        rel = _relative_to_folder(path, COLLECTIONS[name].folder)
        if path.suffix == ".abc":
            units.extend(_abc_units(path, f"{name}/{rel}"))
        else:
            units.append(_Unit(f"{name}/{rel}", str(path)))
    return units


def _relative_to_folder(path: Path, folder: str) -> str:
    parts = path.parts
    return "/".join(parts[len(parts) - parts[::-1].index(folder) :])


_TUNE_START = re.compile(r"^X:\s*(\S*)", re.MULTILINE)


def _abc_units(path: Path, id_prefix: str) -> list[_Unit]:
    """One unit per tune (X: field), each with the file header before the first tune, as
    music21 gives it to every tune of an opus. Ids use the X: number, made unique."""
    text = path.read_text(encoding="utf-8", errors="replace")
    starts = list(_TUNE_START.finditer(text))
    if not starts:
        return [_Unit(id_prefix, str(path))]
    header = text[: starts[0].start()]
    units, seen = [], set()
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        tune_id = f"{id_prefix}#{match.group(1) or i + 1}"
        while tune_id in seen:
            tune_id += "'"
        seen.add(tune_id)
        units.append(_Unit(tune_id, str(path), header + text[match.start() : end]))
    return units


def _parse_music21_unit(unit: _Unit) -> _Parsed:
    from music21 import converter, stream

    try:
        if unit.text is None:
            parsed, meters = converter.parse(unit.path, forceSource=True), None
        else:
            with no_beaming():
                parsed = converter.parse(unit.text, format="abc")
            meters = abc_meters(unit.text)
        scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
        ids = [unit.id] if len(scores) == 1 else [f"{unit.id}#{i + 1}" for i in range(len(scores))]
        pieces = [
            Piece(i, score_from_music21(s, in_place=True, meters=meters))
            for i, s in zip(ids, scores)
        ]
    except Exception as err:  # music21 raises many kinds on odd files; one bad tune is skipped
        return _Parsed([], [(unit.id, f"{type(err).__name__}: {err}")])
    return _Parsed(pieces, [])


# ---- folders of MIDI files -----------------------------------------------------------------


def _midi_files(folder: Path) -> list[Path]:
    files = [
        Path(root, f)
        for root, _, names in os.walk(folder)
        for f in names
        if f.lower().endswith(MIDI_SUFFIXES)
    ]
    return sorted(files)


def _folder_key(folder: Path, files: list[Path]) -> str:
    """Changes when any file is added, removed, resized or touched."""
    digest = hashlib.sha256(str(folder).encode())
    for f in files:
        st = f.stat()
        digest.update(f"\0{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name)[:40] or "root"
    return f"folder-{safe}-{digest.hexdigest()[:16]}-f{FORMAT_VERSION}"


def _folder_units(folder: Path, files: list[Path]) -> list[_Unit]:
    return [_Unit(f"{folder.name}/{f.relative_to(folder).as_posix()}", str(f)) for f in files]


def _parse_midi_unit(unit: _Unit) -> _Parsed:
    try:
        return _Parsed([Piece(unit.id, Score.from_midi(unit.path))], [])
    except MidiFileError as err:
        return _Parsed([], [(unit.id, str(err))])


# ---- parsing (optionally in a pool) --------------------------------------------------------


def _parse_all(units, worker, label, *, progress, limit) -> _Parsed:
    """Run `worker` over the units in order until `limit` pieces; a pool when there are many."""
    from tqdm import tqdm

    pieces: list[Piece] = []
    failures: list[tuple[str, str]] = []
    total = len(units) if limit is None else min(len(units), limit)
    workers = pool_size() if total >= POOL_MIN_UNITS else 1
    with (
        _Results(units, worker, workers) as results,
        tqdm(total=total, desc=f"parsing {label}", unit="piece", disable=not progress) as bar,
    ):
        for parsed in results:
            pieces.extend(parsed.pieces)
            failures.extend(parsed.failures)
            bar.update(len(parsed.pieces) + len(parsed.failures))
            if limit is not None and len(pieces) >= limit:
                break
    return _Parsed(pieces[:limit], failures)


def pool_size() -> int:
    """Processes for a large parse: POOL_SIZE, fewer when the cores are already busy. On a
    saturated machine a pool only adds start-up and pickling (measured: 300 Essen tunes took
    16.8 s in a pool of 2 and 15.9 s in one process at a load of 10 on 2 cores)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    return max(1, min(POOL_SIZE, round((cpus or 1) - load)))


class _Results:
    """Context manager over worker results in unit order: a process pool when workers > 1."""

    def __init__(self, units, worker, workers: int):
        self.units, self.worker, self.workers, self.pool = units, worker, workers, None
        if workers > 1:
            # fork where there is one: the children inherit music21 already imported.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ctx.Pool(workers)

    def __enter__(self) -> Iterator[_Parsed]:
        if self.pool is None:
            return map(self.worker, self.units)
        chunk = max(1, min(16, len(self.units) // (8 * self.workers)))
        return self.pool.imap(self.worker, self.units, chunksize=chunk)

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ---- the cache -----------------------------------------------------------------------------


def _write_cache(path: Path, parsed: _Parsed, extra: dict) -> None:
    """One .npz per source: a note table (one row per note, grouped by piece then track) and a
    JSON string of everything else. Written to a temporary name, then renamed, so a reader
    never sees half a file."""
    columns: dict[str, list] = {
        k: [] for k in ("piece", "track", "onset", "duration", "pitch", "velocity")
    }
    meta_pieces = []
    for pi, (pid, score) in enumerate(parsed.pieces):
        for ti, track in enumerate(score.tracks):
            n = len(track.notes)
            columns["piece"] += [pi] * n
            columns["track"] += [ti] * n
            columns["onset"] += [x.onset for x in track.notes]
            columns["duration"] += [x.duration for x in track.notes]
            columns["pitch"] += [x.pitch for x in track.notes]
            columns["velocity"] += [x.velocity for x in track.notes]
        meta_pieces.append(
            {
                "id": pid,
                "tracks": [[t.name, t.program, t.is_drum, t.channel] for t in score.tracks],
                "tempos": score.tempos,
                "time_signatures": score.time_signatures,
            }
        )
    meta = {"format": FORMAT_VERSION, **extra, "pieces": meta_pieces, "failures": parsed.failures}
    arrays = {
        "piece": np.asarray(columns["piece"], np.int32),
        "track": np.asarray(columns["track"], np.int16),
        "onset": np.asarray(columns["onset"], np.float64),
        "duration": np.asarray(columns["duration"], np.float64),
        "pitch": np.asarray(columns["pitch"], np.uint8),
        "velocity": np.asarray(columns["velocity"], np.uint8),
        "meta": np.asarray(json.dumps(meta)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _read_cache(path: Path) -> _Parsed | None:
    """The cached pieces, or None when absent, stale or damaged (then it is parsed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                return None
            cols = {k: z[k] for k in ("piece", "track", "onset", "duration", "pitch", "velocity")}
        return _Parsed(
            _pieces_from_table(cols, meta["pieces"]), [tuple(f) for f in meta["failures"]]
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as err:
        log.warning("%s: damaged cache, parsing again (%s: %s)", path, type(err).__name__, err)
        return None


def _pieces_from_table(cols: dict[str, np.ndarray], meta_pieces: list[dict]) -> list[Piece]:
    # Hundreds of thousands of Notes at once set off the cyclic garbage collector again and
    # again (a third of the load time); Notes hold no cycles, so it can wait.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _build_pieces(cols, meta_pieces)
    finally:
        if paused:
            gc.enable()


def _build_pieces(cols: dict[str, np.ndarray], meta_pieces: list[dict]) -> list[Piece]:
    first_track = np.cumsum([0] + [len(p["tracks"]) for p in meta_pieces])
    track_of_note = first_track[cols["piece"]] + cols["track"]
    if np.any(np.diff(track_of_note) < 0):
        raise ValueError("note table is not grouped by piece and track")
    bounds = np.searchsorted(track_of_note, np.arange(first_track[-1] + 1))
    onset, pitch = cols["onset"].tolist(), cols["pitch"].tolist()
    duration, velocity = cols["duration"].tolist(), cols["velocity"].tolist()
    pieces = []
    for pi, p in enumerate(meta_pieces):
        tracks = []
        for ti, (name, program, is_drum, channel) in enumerate(p["tracks"]):
            lo, hi = bounds[first_track[pi] + ti], bounds[first_track[pi] + ti + 1]
            notes = list(map(Note, onset[lo:hi], pitch[lo:hi], duration[lo:hi], velocity[lo:hi]))
            tracks.append(Track(name, program, is_drum, notes, channel))
        score = Score(
            tracks=tracks,
            tempos=[tuple(t) for t in p["tempos"]],
            time_signatures=[tuple(t) for t in p["time_signatures"]],
        )
        pieces.append(Piece(p["id"], score))
    return pieces


def _unit_hash(text: str) -> float:
    """A stable hash of text in [0, 1) (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64
