"""Corpora: spec parsing, folders of MIDI files, music21 conversion, the cache, splits."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from midi_companion.errors import ConfigError, DataError
from midi_companion.models import corpora
from midi_companion.models.corpora import Piece, cache_dir, describe, load_corpus, split_pieces
from midi_companion.score import Note, Score, Track


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache."""
    monkeypatch.setenv("MIDI_COMPANION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "corpora"


def no_parsing(monkeypatch):
    """Make any parse fail, so a load that succeeds came from the cache."""

    def fail(*args, **kwargs):
        raise AssertionError("parsed again instead of loading the cache")

    monkeypatch.setattr(corpora, "_parse_all", fail)


def song(i: int) -> Score:
    return Score(
        tracks=[
            Track("lead", 73, False, [Note(0.0, 60 + i, 1.0, 90), Note(1.5, 62 + i, 0.5, 70)]),
            Track("kit", 0, True, [Note(0.0, 36, 0.25, 100)]),
        ],
        tempos=[(0.0, 100.0 + i), (4.0, 90.0)],
        time_signatures=[(0.0, 3, 4)],
    )


@pytest.fixture
def library(tmp_path):
    """A user's folder: nested, mixed-case suffixes, a non-MIDI file, an unreadable .mid."""
    root = tmp_path / "my songs"
    (root / "b" / "c").mkdir(parents=True)
    song(0).to_midi(root / "one.mid")
    song(1).to_midi(root / "b" / "two.MIDI")
    song(2).to_midi(root / "b" / "c" / "three.mid")
    (root / "notes.txt").write_text("not music")
    (root / "b" / "broken.mid").write_bytes(b"MThd garbage")
    return root


def test_folder_corpus_reads_recursively_and_reports_unreadable_files(library, caplog):
    with caplog.at_level(logging.WARNING, logger="midi_companion.models.corpora"):
        pieces = load_corpus(str(library), progress=False)
    assert [p.id for p in pieces] == [
        "my songs/b/c/three.mid",
        "my songs/b/two.MIDI",
        "my songs/one.mid",
    ]
    assert pieces[2].score.tracks == Score.from_midi(library / "one.mid").tracks
    assert "skipped 1 unreadable" in caplog.text and "broken.mid" in caplog.text


def test_second_load_comes_from_the_cache_and_still_reports_skips(library, monkeypatch, caplog):
    first = load_corpus(f"folder:{library}", progress=False)
    no_parsing(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="midi_companion.models.corpora"):
        again = load_corpus(f"folder:{library}", progress=False)
    assert again == first
    assert "skipped 1 unreadable" in caplog.text
    assert load_corpus(str(library), progress=False, limit=2) == first[:2]


def test_cache_holds_scores_exactly(library):
    first = load_corpus(str(library), progress=False)
    [npz] = cache_dir().glob("folder-*.npz")
    with np.load(npz) as z:
        assert sorted(z.files) == [
            "duration",
            "meta",
            "onset",
            "piece",
            "pitch",
            "track",
            "velocity",
        ]
        assert len(z["onset"]) == sum(len(t.notes) for p in first for t in p.score.tracks)
    cached = load_corpus(str(library), progress=False)
    for a, b in zip(first, cached):
        assert a.id == b.id
        assert a.score.tracks == b.score.tracks
        assert a.score.tempos == b.score.tempos
        assert a.score.time_signatures == b.score.time_signatures


def test_a_changed_folder_is_parsed_again(library):
    assert len(load_corpus(str(library), progress=False)) == 3
    song(3).to_midi(library / "four.mid")
    assert len(load_corpus(str(library), progress=False)) == 4
    os.utime(library / "one.mid", ns=(1, 1))
    assert len(list(cache_dir().glob("*.npz"))) == 2
    load_corpus(str(library), progress=False)
    assert len(list(cache_dir().glob("*.npz"))) == 3


def test_damaged_cache_is_parsed_again(library, caplog):
    first = load_corpus(str(library), progress=False)
    [npz] = cache_dir().glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="midi_companion.models.corpora"):
        assert load_corpus(str(library), progress=False) == first
    assert "damaged cache" in caplog.text


def test_limit_is_cached_on_its_own(library, monkeypatch):
    two = load_corpus(str(library), progress=False, limit=2)
    assert len(two) == 2 and len(list(cache_dir().glob("*-first2.npz"))) == 1
    no_parsing(monkeypatch)
    assert load_corpus(str(library), progress=False, limit=2) == two


def test_pool_gives_the_same_pieces_in_the_same_order(library, monkeypatch):
    monkeypatch.setattr(corpora, "POOL_MIN_UNITS", 2)
    monkeypatch.setattr(corpora, "pool_size", lambda: 2)
    pooled = load_corpus(str(library), progress=False)
    assert [p.id for p in pooled] == sorted(p.id for p in pooled)
    assert pooled == [Piece(p.id, Score.from_midi(library.parent / p.id)) for p in pooled]


def test_pool_size_is_one_or_two():
    assert corpora.pool_size() in (1, 2)


def test_plus_joins_specs_and_a_folder_name_may_contain_plus(tmp_path, library):
    other = tmp_path / "a+b"
    other.mkdir()
    song(5).to_midi(other / "x.mid")
    both = load_corpus(f"{library}+folder:{other}", progress=False)
    assert [p.id for p in both][-1] == "a+b/x.mid" and len(both) == 4
    assert [p.id for p in load_corpus(str(other), progress=False)] == ["a+b/x.mid"]
    assert len(load_corpus(f"{library}+{other}", progress=False, limit=3)) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("music21:nope", "unknown music21 collection 'nope'.*bach, essen"),
        ("folder:/no/such/folder", "is not a folder"),
        ("/no/such/folder", "is not a folder"),
    ],
)
def test_bad_specs_say_what_was_expected(spec, message):
    with pytest.raises(DataError, match=message):
        load_corpus(spec, progress=False)


def test_folder_without_readable_files_and_bad_limit(tmp_path, library):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable pieces"):
        load_corpus(str(tmp_path / "empty"), progress=False)
    with pytest.raises(DataError, match="limit must be >= 1"):
        load_corpus(str(library), limit=0)


def test_describe_counts_pieces_notes_tracks_beats(library):
    d = describe(str(library))
    assert d == {"spec": str(library), "pieces": 3, "notes": 9, "tracks": 6, "beats": 6.0}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIDI_COMPANION_CACHE", str(tmp_path / "mc"))
    assert cache_dir() == tmp_path / "mc" / "corpora"
    monkeypatch.delenv("MIDI_COMPANION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "midi-companion" / "corpora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "midi-companion" / "corpora"


# ---- splits ----------------------------------------------------------------------------------


def pieces(n: int, prefix: str = "p") -> list[Piece]:
    return [Piece(f"{prefix}{i}", Score()) for i in range(n)]


def test_split_is_deterministic_and_roughly_proportional():
    a = split_pieces(pieces(2000), valid=0.1, test=0.2, seed=3)
    b = split_pieces(pieces(2000), valid=0.1, test=0.2, seed=3)
    assert a == b
    assert sum(len(v) for v in a.values()) == 2000
    assert 150 < len(a["valid"]) < 250 and 330 < len(a["test"]) < 470
    ids = [p.id for p in a["train"]]
    assert ids == sorted(ids, key=lambda i: int(i[1:]))  # input order kept
    assert split_pieces(pieces(2000), valid=0.1, test=0.2, seed=4) != a


def test_adding_pieces_moves_no_other_piece():
    before = split_pieces(pieces(500))
    after = split_pieces(pieces(500) + pieces(300, prefix="new"))
    where = {p.id: name for name, ps in after.items() for p in ps}
    assert all(where[p.id] == name for name, ps in before.items() for p in ps)


@pytest.mark.parametrize("valid, test", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_split_fractions(valid, test):
    with pytest.raises(ConfigError, match="received valid="):
        split_pieces(pieces(3), valid=valid, test=test)


# ---- music21 -----------------------------------------------------------------------------------


def test_music21_conversion_ties_chords_graces_velocity_program_tempo_meter():
    from music21 import chord, instrument, meter, note, stream, tempo, tie

    part = stream.Part()
    part.partName = "Oboe part"
    part.insert(0, instrument.Oboe())
    part.insert(0, tempo.MetronomeMark(number=96))
    part.insert(0, meter.TimeSignature("3/4"))
    tied_a, tied_b = note.Note("C4", quarterLength=1.0), note.Note("C4", quarterLength=0.5)
    tied_a.tie, tied_b.tie = tie.Tie("start"), tie.Tie("stop")
    loud = note.Note("G4", quarterLength=0.5)
    loud.volume.velocity = 110
    grace = note.Note("A4").getGrace()
    part.append([tied_a, tied_b, grace, loud, chord.Chord(["E4", "G4"], quarterLength=2.0)])
    score = stream.Score([part])

    converted = corpora.score_from_music21(score)
    [track] = converted.tracks
    assert (track.name, track.program, track.is_drum) == ("Oboe part", 68, False)
    assert track.notes == [
        Note(0.0, 60, 1.5, 80),
        Note(1.5, 67, 0.5, 110),
        Note(2.0, 64, 2.0, 80),
        Note(2.0, 67, 2.0, 80),
    ]
    assert converted.tempos == [(0.0, 96.0)] and converted.time_signatures == [(0.0, 3, 4)]
    assert len(list(score.recurse().notes)) == 5  # not stripped in place
    assert corpora.score_from_music21(part).tracks == converted.tracks  # a bare Part works


def test_music21_collection_with_limit_is_cached(monkeypatch):
    bach = load_corpus("music21:bach", progress=False, limit=2)
    assert [p.id for p in bach] == ["bach/bwv1.6.mxl", "bach/bwv10.7.mxl"]
    assert [t.name for t in bach[0].score.tracks] == ["Horn 2", "Soprano", "Alto", "Tenor", "Bass"]
    assert bach[0].score.tempos == [(0.0, 76.0)]
    no_parsing(monkeypatch)
    assert load_corpus("music21:bach", progress=False, limit=2) == bach


def test_cached_load_does_not_import_music21():
    load_corpus("music21:bach", progress=False, limit=1)
    code = (
        "import sys; from midi_companion.models.corpora import load_corpus; "
        "assert len(load_corpus('music21:bach', progress=False, limit=1)) == 1; "
        "assert 'music21' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_abc_collections_give_one_piece_per_tune_with_declared_meters_only():
    essen = load_corpus("music21:essen", progress=False, limit=3)
    assert [p.id for p in essen] == [f"essen/altdeu10.abc#{i}" for i in (1, 2, 3)]
    # O'Neill's first tune is 2/4 with a one-sixteenth pickup bar after a double bar, which
    # music21 marks as a 1/16 time signature; only the declared M:2/4 is kept.
    [tune] = load_corpus("music21:oneill", progress=False, limit=1)
    assert tune.id == "oneill/0001-0050.abc#1"
    assert tune.score.time_signatures == [(0.0, 2, 4)]
    assert len(tune.score.tracks) == 1 and len(tune.score.tracks[0].notes) > 50


def test_collections_resolve_to_files_in_music21():
    mozart = corpora._collection_files("mozart")
    assert mozart and not any("k545" in p.parts for p in mozart)
    bach = corpora._collection_files("bach")
    assert not any(p.suffix == ".krn" for p in bach)  # the .mxl of the same chorale is kept
    stems = [p.with_suffix("") for p in bach]
    assert len(set(stems)) == len(stems)  # one file per chorale, whatever the music21 version
