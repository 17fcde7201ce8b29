"""`companion render`: a Score drawn as a piano roll picture (PNG), for looking at what a
model played.

x is time in beats (a fixed number of pixels per beat, scaled down to fit a maximum width),
y is pitch (only the range used, plus a margin). Each track has its own colour (drums grey),
each note is a filled rectangle with a darker border, so repeated notes stay apart. Light
lines mark the beats, darker ones the bars (`Score.beats_per_bar`), faint ones each C. With
`split`, a marker line is drawn there and the notes that start before it (the prompt) are
drawn paler than those after it (the answer).

The PNG is written by hand (numpy + zlib + struct): no imaging library at run time.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from midi_companion.errors import CompanionError
from midi_companion.outfiles import check_output, write_atomic
from midi_companion.score import Score

PX_PER_BEAT = 24
PX_PER_SEMITONE = 6
MAX_WIDTH = 4000
PITCH_MARGIN = 2

# (name, RGB): clearly distinct colours for pitched tracks, in track order; drums are grey.
PALETTE: list[tuple[str, tuple[int, int, int]]] = [
    ("blue", (31, 119, 180)),
    ("orange", (255, 127, 14)),
    ("green", (44, 160, 44)),
    ("red", (214, 39, 40)),
    ("purple", (148, 103, 189)),
    ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)),
    ("olive", (188, 189, 34)),
    ("cyan", (23, 190, 207)),
]
DRUM = ("grey", (127, 127, 127))
BACKGROUND = (255, 255, 255)
C_LINE = (228, 228, 240)  # faint: the boundary under each C
BEAT_LINE = (225, 225, 225)  # light
BAR_LINE = (140, 140, 140)  # darker
SPLIT_LINE = (0, 0, 0)  # the prompt/answer marker, 2 px wide
BORDER_SHADE = 0.6  # a note's border is its colour times this
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RenderError(CompanionError, ValueError):
    """A score or range that gives nothing to draw, or an output that is not a .png."""


def track_colours(score: Score) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, RGB) of each track of `score`, in order: the palette in turn for pitched tracks
    (cycling past its end), grey for drums."""
    out, k = [], 0
    for t in score.tracks:
        if t.is_drum:
            out.append(DRUM)
        else:
            out.append(PALETTE[k % len(PALETTE)])
            k += 1
    return out


def layout(
    score: Score,
    start: float | None = None,
    end: float | None = None,
    px_per_beat: float = PX_PER_BEAT,
    px_per_semitone: int = PX_PER_SEMITONE,
    max_width: int = MAX_WIDTH,
    source: str = "score",
) -> dict:
    """Geometry of the picture: the beat range, pixels per beat (scaled so the width is at
    most `max_width`), the pitch range drawn (low, high inclusive), width and height. Raises
    RenderError, naming `source`, when the range is empty or holds no notes."""
    if not any(t.notes for t in score.tracks):
        raise RenderError(f"{source}: has no notes to draw (expected at least one note)")
    start = 0.0 if start is None else float(start)
    end = score.end if end is None else float(end)
    if not end > start:
        raise RenderError(
            f"{source}: nothing to draw from beat {start:g} to beat {end:g} "
            "(expected the end after the start; the last note ends at beat "
            f"{score.end:g})"
        )
    pitches = [n.pitch for t in score.tracks for n in t.notes if n.end > start and n.onset < end]
    if not pitches:
        raise RenderError(f"{source}: has no notes between beat {start:g} and beat {end:g}")
    span = end - start
    ppb = min(float(px_per_beat), (max_width - 1) / span)
    low = max(0, min(pitches) - PITCH_MARGIN)
    high = min(127, max(pitches) + PITCH_MARGIN)
    return {
        "start": start,
        "end": end,
        "px_per_beat": ppb,
        "px_per_semitone": px_per_semitone,
        "low": low,
        "high": high,
        "width": int(round(span * ppb)) + 1,
        "height": (high - low + 1) * px_per_semitone,
    }


def roll_image(
    score: Score,
    split: float | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    px_per_beat: float = PX_PER_BEAT,
    px_per_semitone: int = PX_PER_SEMITONE,
    max_width: int = MAX_WIDTH,
    source: str = "score",
) -> np.ndarray:
    """The piano roll of `score` between beats `start` (default 0) and `end` (default the
    last note's end) as an RGB array [H, W, 3] uint8. With `split`, a black marker at that
    beat and the notes starting before it blended 50% with white."""
    g = layout(score, start, end, px_per_beat, px_per_semitone, max_width, source)
    start, end, ppb, pps = g["start"], g["end"], g["px_per_beat"], g["px_per_semitone"]
    low, high, width, height = g["low"], g["high"], g["width"], g["height"]
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND

    def x_of(beat: float) -> int:
        return int(round((beat - start) * ppb))

    # faint line on the bottom pixel row of each C's band (the B/C boundary)
    for p in range(low, high + 1):
        if p % 12 == 0:
            img[(high - p) * pps + pps - 1, :] = C_LINE
    # beat lines (when there is room for them), then bar lines, counted from beat 0
    if ppb >= 4:
        for b in range(math.ceil(start), math.floor(end) + 1):
            img[:, x_of(b)] = BEAT_LINE
    bar = score.beats_per_bar
    if bar > 0 and bar * ppb >= 3:
        for k in range(math.ceil(start / bar - 1e-9), math.floor(end / bar + 1e-9) + 1):
            x = x_of(k * bar)
            if 0 <= x < width:
                img[:, x] = BAR_LINE

    for track, (_, rgb) in zip(score.tracks, track_colours(score)):
        fill = np.array(rgb, np.float64)
        border = fill * BORDER_SHADE
        for n in track.sorted_notes():
            if n.end <= start or n.onset >= end:
                continue
            f, b = fill, border
            if split is not None and n.onset < split:
                f, b = (f + 255) / 2, (b + 255) / 2
            x0 = max(0, x_of(max(n.onset, start)))
            x1 = min(width, max(x_of(min(n.end, end)), x0 + 1))
            y0 = (high - n.pitch) * pps
            y1 = y0 + pps
            img[y0:y1, x0:x1] = np.round(b).astype(np.uint8)
            if x1 - x0 > 2 and pps > 2:
                img[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = np.round(f).astype(np.uint8)

    if split is not None and start <= split <= end:
        x = x_of(split)
        img[:, max(0, x) : min(width, x + 2)] = SPLIT_LINE
    return img


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB array [H, W, 3] uint8 as the bytes of a PNG file (8-bit RGB, filter 0 on every
    row, one IDAT chunk)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(
            f"expected an RGB image array [H, W, 3] of uint8, received shape "
            f"{rgb.shape} of {rgb.dtype}"
        )
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(np.ascontiguousarray(rows).tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB array [H, W, 3] uint8 to `path` as a PNG, atomically."""
    write_atomic(path, png_bytes(rgb))


def render_score(
    score: Score,
    path: str | os.PathLike,
    split: float | None = None,
    start: float | None = None,
    end: float | None = None,
    source: str = "score",
) -> tuple[int, int]:
    """Draw `score` (see roll_image) and write it to `path` as a PNG; returns (width, height)."""
    img = roll_image(score, split=split, start=start, end=end, source=source)
    write_png(path, img)
    return img.shape[1], img.shape[0]


def main(args) -> int:
    """`companion render FILE.mid -o FILE.png [--from BEAT] [--to BEAT] [--split BEAT]`."""
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise RenderError(
            f"-o {out}: expected a file name ending in .png, such as {out.with_suffix('.png')}"
        )
    check_output(out, "-o", inputs=[args.input])
    score = Score.from_midi(args.input)
    width, height = render_score(
        score, out, split=args.split, start=args.start, end=args.end, source=str(args.input)
    )
    tracks = ", ".join(
        f"{t.name or f'track {i + 1}'} ({name})"
        for i, (t, (name, _)) in enumerate(zip(score.tracks, track_colours(score)))
    )
    print(f"wrote {out}: {width}x{height} px; {tracks}")
    return 0
