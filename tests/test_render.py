"""companion/render.py: the piano roll picture, its hand-written PNG, and `companion render`."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from midi_companion import render
from midi_companion.cli import main
from midi_companion.errors import CompanionError
from midi_companion.render import (
    BACKGROUND,
    BAR_LINE,
    BEAT_LINE,
    DRUM,
    PALETTE,
    PX_PER_BEAT,
    PX_PER_SEMITONE,
    SPLIT_LINE,
    png_bytes,
    render_score,
    roll_image,
    write_png,
)
from midi_companion.score import Note, Score, Track

PPB, PPS = PX_PER_BEAT, PX_PER_SEMITONE


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader for what write_png makes: 8-bit RGB, no interlace, filter 0 rows.
    Checks the signature, every chunk's CRC and the chunk order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat, header = 8, [], b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        kinds.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert pos == len(data)
    width, height, depth, colour, compression, filt, interlace = header
    assert (depth, colour, compression, filt, interlace) == (8, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)
    assert (raw[:, 0] == 0).all()  # filter type 0 on every row
    return raw[:, 1:].reshape(height, width, 3)


def two_tracks(sig=(4, 4)) -> Score:
    lead = Track("lead", notes=[Note(0.0, 60, 1.0), Note(1.0, 60, 1.0), Note(4.0, 64, 2.0)])
    bass = Track("bass", program=32, notes=[Note(0.0, 48, 4.0), Note(4.0, 52, 4.0)])
    return Score(tracks=[lead, bass], time_signatures=[(0.0, *sig)])


def centre(score: Score, img: np.ndarray, note: Note, start: float = 0.0) -> tuple[int, int]:
    """(row, column) in the middle of `note`'s rectangle for a roll drawn at full scale."""
    high = max(n.pitch for n in score.notes) + 2
    y = (high - note.pitch) * PPS + PPS // 2
    x = int(round((note.onset + note.duration / 2 - start) * PPB))
    return y, x


def test_png_round_trip_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 13, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    write_png(path, img)
    data = path.read_bytes()
    assert struct.unpack(">II", data[16:24]) == (13, 7)  # IHDR width, height
    np.testing.assert_array_equal(decode_png(data), img)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left beside it


def test_png_decodes_with_pillow_too(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    img = roll_image(two_tracks())
    path = tmp_path / "roll.png"
    write_png(path, img)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (img.shape[1], img.shape[0])
        np.testing.assert_array_equal(np.asarray(im), img)


def test_png_refuses_a_wrong_array():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        png_bytes(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="float"):
        png_bytes(np.zeros((4, 4, 3), np.float32))


def test_size_and_pitch_range():
    score = two_tracks()
    img = roll_image(score)
    # beats 0..8 at 24 px per beat, plus the closing line; pitches 46..66 at 6 px each
    assert img.shape == ((66 - 46 + 1) * PPS, 8 * PPB + 1, 3)
    assert img.dtype == np.uint8


def test_note_has_its_track_colour_and_two_tracks_differ():
    score = two_tracks()
    img = roll_image(score)
    lead_note, bass_note = score.tracks[0].notes[2], score.tracks[1].notes[0]
    lead_px = tuple(img[centre(score, img, lead_note)])
    bass_px = tuple(img[centre(score, img, bass_note)])
    assert lead_px == PALETTE[0][1]
    assert bass_px == PALETTE[1][1]
    assert lead_px != bass_px
    # a pitch row no note plays is background away from the grid lines
    y = (66 - 58) * PPS + PPS // 2
    assert tuple(img[y, int(2.5 * PPB)]) == BACKGROUND


def test_drums_are_grey():
    score = two_tracks()
    score.tracks.insert(0, Track("drums", is_drum=True, channel=9, notes=[Note(2.0, 55, 1.0)]))
    img = roll_image(score)
    assert tuple(img[centre(score, img, score.tracks[0].notes[0])]) == DRUM[1]
    # the pitched tracks keep the palette in order: drums do not use up a colour
    assert tuple(img[centre(score, img, score.tracks[1].notes[2])]) == PALETTE[0][1]


def test_repeated_notes_are_told_apart_by_a_darker_border():
    score = two_tracks()
    img = roll_image(score)
    y, _ = centre(score, img, score.tracks[0].notes[0])
    fill = np.array(PALETTE[0][1])
    row = img[y, : 2 * PPB].astype(int)
    # C4 at beat 0 and again at beat 1: the columns where one ends and the next starts are
    # darker than the fill, and so is each rectangle's top and bottom
    assert (row[PPB - 1] < fill).all() and (row[PPB] < fill).all()
    assert (row[PPB // 2] == fill).all() and (row[PPB + PPB // 2] == fill).all()
    top = (y // PPS) * PPS
    assert (img[top, PPB // 2].astype(int) < fill).all()


def test_split_dims_the_notes_before_it():
    score = two_tracks()
    plain = roll_image(score)
    split = roll_image(score, split=4.0)
    before = centre(score, plain, score.tracks[0].notes[0])  # onset 0: the prompt
    after = centre(score, plain, score.tracks[0].notes[2])  # onset 4: the answer
    fill = np.array(PALETTE[0][1])
    assert tuple(split[before]) == tuple(np.round((fill + 255) / 2).astype(int))
    assert tuple(plain[before]) == tuple(fill)  # without --split nothing is dimmed
    assert tuple(split[after]) == tuple(plain[after]) == tuple(fill)
    # the dimmed note is paler (closer to white) than the same colour undimmed
    assert split[before].astype(int).sum() > plain[before].astype(int).sum()
    # and a marker line at the split
    assert (split[:, 4 * PPB] == SPLIT_LINE).all()
    assert not (plain[:, 4 * PPB] == SPLIT_LINE).all(axis=-1).any()


@pytest.mark.parametrize("sig, bar", [((4, 4), 4.0), ((3, 4), 3.0), ((6, 8), 3.0)])
def test_bar_lines_land_at_the_bars(sig, bar):
    score = Score(
        tracks=[Track("lead", notes=[Note(0.0, 72, 0.5), Note(11.5, 72, 0.5)])],
        time_signatures=[(0.0, *sig)],
    )
    img = roll_image(score)
    y = 2  # the top margin row: no notes there, no C line
    for b in range(0, 13):
        want = BAR_LINE if b % bar == 0 else BEAT_LINE
        assert tuple(img[y, b * PPB]) == want, (sig, b)
    assert tuple(img[y, int(1.5 * PPB)]) == BACKGROUND


def test_from_and_to_crop_and_keep_bars_absolute():
    score = two_tracks()
    img = roll_image(score, start=2.0, end=6.0)
    assert img.shape[1] == 4 * PPB + 1
    assert tuple(img[2, 2 * PPB]) == BAR_LINE  # beat 4 is a bar line, at x of 4 - 2
    assert tuple(img[2, PPB]) == BEAT_LINE
    lead_note = score.tracks[0].notes[2]  # beat 4..6
    assert tuple(img[centre(score, img, lead_note, start=2.0)]) == PALETTE[0][1]


def test_long_scores_are_scaled_to_the_maximum_width():
    score = Score.from_notes([Note(float(b), 60 + b % 5, 1.0) for b in range(0, 1000)])
    img = roll_image(score)
    assert img.shape[1] <= render.MAX_WIDTH
    assert img.shape[1] > render.MAX_WIDTH - 10


def test_errors_name_the_problem():
    with pytest.raises(CompanionError, match="x.mid: has no notes"):
        roll_image(Score(), source="x.mid")
    with pytest.raises(CompanionError, match="no notes between beat 20 and beat 30"):
        roll_image(two_tracks(), start=20.0, end=30.0)
    with pytest.raises(CompanionError, match="expected the end after the start"):
        roll_image(two_tracks(), start=5.0, end=5.0)


# ---- the command -----------------------------------------------------------------------
def test_cli_writes_a_png(tmp_path, capsys):
    mid, png = tmp_path / "in.mid", tmp_path / "out.png"
    two_tracks().to_midi(mid)
    assert main(["render", str(mid), "-o", str(png), "--split", "4"]) == 0
    img = decode_png(png.read_bytes())
    score = Score.from_midi(mid)
    np.testing.assert_array_equal(img, roll_image(score, split=4.0))
    out = capsys.readouterr().out
    assert "wrote" in out and "lead (blue)" in out and "bass (orange)" in out


def test_render_score_writes_the_picture(tmp_path):
    png = tmp_path / "r.png"
    # beats 0..4 hold pitches 48 and 60 only: rows 46..62
    assert render_score(two_tracks(), png, start=0.0, end=4.0) == (4 * PPB + 1, 17 * PPS)
    img = decode_png(png.read_bytes())
    np.testing.assert_array_equal(img, roll_image(two_tracks(), start=0.0, end=4.0))


def test_cli_no_notes_is_exit_2_naming_the_file(tmp_path, capsys):
    mid = tmp_path / "empty.mid"
    Score().to_midi(mid)
    assert main(["render", str(mid), "-o", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert f"{mid}: has no notes" in err and "Traceback" not in err
    assert not (tmp_path / "e.png").exists()


def test_cli_output_must_be_png(tmp_path, capsys):
    mid = tmp_path / "in.mid"
    two_tracks().to_midi(mid)
    assert main(["render", str(mid), "-o", str(tmp_path / "out.jpg")]) == 2
    err = capsys.readouterr().err
    assert "out.jpg" in err and "ending in .png" in err
    assert not (tmp_path / "out.jpg").exists()


def test_cli_missing_midi_is_exit_2(tmp_path, capsys):
    assert main(["render", str(tmp_path / "nope.mid"), "-o", str(tmp_path / "x.png")]) == 2
    assert "nope.mid: no such file" in capsys.readouterr().err


def test_cli_refuses_a_negative_beat(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "a.mid", "-o", str(tmp_path / "x.png"), "--from", "-1"])
    assert exc.value.code == 2
    assert "a beat number >= 0" in capsys.readouterr().err
