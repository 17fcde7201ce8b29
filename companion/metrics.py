"""Measures of the musical quality of generated MIDI (numpy only, torch-free).

Every function takes lists of ``companion.score.Note`` (times in beats, quarter notes) or
per-voice note lists (highest voice first) and returns plain floats, dicts or numpy arrays.
An undefined share (nothing to count) is ``nan``, never a silent 0 or 1.

Metrics, by family:

- Beat: ``grid_share``, ``beat_phase_histogram``, ``odd_sixteenth_share``.
- Key: ``estimate_key`` (Krumhansl-Schmuckler with the Krumhansl-Kessler profiles;
  Krumhansl 1990, "Cognitive Foundations of Musical Pitch"), ``in_key_share``; the key
  functions themselves live in companion.rules, which the live answers use.
- Range: ``out_of_range``.
- Set-level comparison (Yang & Lerch 2020, "On the evaluation of generative models in
  music", Neural Computing and Applications 32; their mgeval toolbox): ``features``,
  ``compare_sets`` (overlapping area and KL divergence of the intra-set and inter-set
  distance distributions), ``self_overlap`` (the real set against itself),
  ``overlap_and_kl``, ``kde_bandwidth`` and ``kde_pdf`` (the Gaussian KDE they use, in
  numpy), ``length_class``.
- Pitch distribution (seed 001: distance between the generated notes' pitch distribution
  and the dataset's): ``pitch_distribution_distance``, ``pitch_histogram``, ``histogram_l1``.
- Voices / accompaniment: ``voice_grid``, ``grid_to_voices``, ``parallels``,
  ``voice_crossing``, ``voice_ranges``, ``changes_per_bar``, ``consonance_with_lead``.
- MuseGAN's multitrack metrics (Dong, Hsiao, Yang & Yang 2018, "MuseGAN: multi-track
  sequential generative adversarial networks for symbolic music generation and
  accompaniment", AAAI): ``empty_bars``, ``used_pitch_classes``, ``tonal_distance`` (with the
  6-d tonal centroid of Harte, Sandler & Gasser 2006, "Detecting harmonic change in musical
  audio": ``tonal_centroid``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from midi_companion.representations.base import quantize
from midi_companion.rules import key_from_profile, pitch_class_profile, scale_pcs
from midi_companion.score import Note

Notes = Sequence[Note]
Voices = Sequence[Sequence[Note]]
_EPS_TIME = 1e-9  # beats: boundaries closer than this count as equal


# ---- beat ---------------------------------------------------------------------------------
def _on_grid(onsets: np.ndarray, grid: float, tol: float) -> np.ndarray:
    """Which onsets lie within `tol` beats of a multiple of `grid`."""
    k = np.round(onsets / grid)
    return np.abs(onsets - k * grid) <= tol


def _onsets(notes: Notes) -> np.ndarray:
    return np.array([n.onset for n in notes], dtype=np.float64)


def grid_share(notes: Notes, grid: float | Sequence[float] = 0.25, tol: float = 1e-3) -> float:
    """Share of onsets within `tol` beats of a multiple of `grid` beats (of any of several
    grids, e.g. (0.25, 1/3): 16ths or eighth triplets); nan for no notes."""
    onsets = _onsets(notes)
    if onsets.size == 0:
        return math.nan
    grids = [grid] if isinstance(grid, (int, float)) else list(grid)
    on = np.zeros(onsets.shape, dtype=bool)
    for g in grids:
        on |= _on_grid(onsets, g, tol)
    return float(np.mean(on))


def beat_phase_histogram(notes: Notes, divisions: int = 4, tol: float = 1e-3) -> np.ndarray:
    """Normalized histogram of where onsets fall inside the beat: ``divisions + 1`` bins.

    Bin k (0..divisions-1) counts onsets within `tol` beats of ``beat + k / divisions``; the
    last bin ("off") counts every other onset. Sums to 1; all zeros for no notes.
    """
    out = np.zeros(divisions + 1)
    onsets = _onsets(notes)
    if onsets.size == 0:
        return out
    on = _on_grid(onsets, 1.0 / divisions, tol)
    k = np.round(onsets * divisions).astype(np.int64) % divisions
    np.add.at(out, np.where(on, k, divisions), 1.0)
    return out / onsets.size


def odd_sixteenth_share(notes: Notes, tol: float = 1e-3) -> float:
    """Share of all onsets on the 2nd or 4th sixteenth of the beat (``beat + 1/4`` or
    ``beat + 3/4``, i.e. sixteenths 1 and 3 counting from 0); nan for no notes. A part
    locked one sixteenth late scores about 1.0, a straight eighth-note part 0."""
    hist = beat_phase_histogram(notes, 4, tol)
    if len(notes) == 0:
        return math.nan
    return float(hist[1] + hist[3])


# ---- key ----------------------------------------------------------------------------------
#: Krumhansl-Kessler probe-tone profiles, index 0 = tonic (Krumhansl 1990).
def estimate_key(notes: Notes) -> tuple[int, str, float]:
    """Krumhansl-Schmuckler key of `notes`: (tonic pitch class, "major" | "minor", r), from
    the duration-weighted pitch-class profile (companion.rules, which the live answers use
    too). No notes, or every pitch class equally weighted: ``(0, "major", nan)``."""
    return key_from_profile(pitch_class_profile(notes))


def in_key_share(notes: Notes, key: tuple) -> float:
    """Share of notes (by count, not duration) whose pitch class is in ``scale_pcs(key[0],
    key[1])``; `key` may be ``estimate_key``'s triple. nan for no notes."""
    if len(notes) == 0:
        return math.nan
    pcs = scale_pcs(key[0], key[1])
    return sum(n.pitch % 12 in pcs for n in notes) / len(notes)


# ---- range --------------------------------------------------------------------------------
def out_of_range(notes: Notes, low: int, high: int) -> int:
    """Number of notes with pitch below `low` or above `high` (the range is inclusive)."""
    return sum(1 for n in notes if n.pitch < low or n.pitch > high)


# ---- Yang & Lerch features and set comparison ---------------------------------------------
#: Note-length classes in beats (mgeval's 12: whole, dotted half, half, dotted quarter,
#: quarter, dotted eighth, eighth, dotted sixteenth, sixteenth, quarter triplet, eighth
#: triplet, thirty-second).
LENGTH_CLASSES = np.array([4, 3, 2, 1.5, 1, 0.75, 0.5, 0.375, 0.25, 2 / 3, 1 / 3, 0.125])

FEATURES = (
    "pitch_count",
    "pitch_class_histogram",
    "pitch_class_transition_matrix",
    "pitch_range",
    "avg_pitch_interval",
    "note_count",
    "avg_ioi",
    "note_length_histogram",
    "note_length_transition_matrix",
)


def length_class(duration: float) -> int:
    """Index in LENGTH_CLASSES of the class nearest `duration` (ties: the earlier class)."""
    return int(np.argmin(np.abs(LENGTH_CLASSES - duration)))


def _normalized(x: np.ndarray) -> np.ndarray:
    s = x.sum()
    return x / s if s > 0 else x


def _transitions(states: list[int], n: int) -> np.ndarray:
    """n x n counts of consecutive (a, b) pairs, normalized to sum 1 and flattened."""
    m = np.zeros((n, n))
    for a, b in zip(states, states[1:]):
        m[a, b] += 1.0
    return _normalized(m).ravel()


def features(notes: Notes) -> dict[str, np.ndarray]:
    """Yang & Lerch's per-piece features, each a float array (scalars have shape (1,)).

    Notes are taken in (onset, pitch) order, so "consecutive" includes the notes of a chord.
    - pitch_count: number of distinct MIDI pitches.
    - pitch_class_histogram: 12 bins, note counts, normalized to sum 1.
    - pitch_class_transition_matrix: 12x12 counts of consecutive pitch-class pairs,
      normalized to sum 1 (over the whole matrix), flattened (144).
    - pitch_range: max pitch - min pitch.
    - avg_pitch_interval: mean |pitch difference| of consecutive notes.
    - note_count: number of notes.
    - avg_ioi: mean gap in beats between consecutive distinct onsets.
    - note_length_histogram: counts per LENGTH_CLASSES class (nearest), normalized (12).
    - note_length_transition_matrix: 12x12 consecutive length-class pairs, normalized,
      flattened (144).
    What is undefined for a piece (no notes, one note, one onset) is 0.
    """
    ns = sorted(notes, key=lambda n: (n.onset, n.pitch))
    pitches = np.array([n.pitch for n in ns], dtype=np.float64)
    pcs = [n.pitch % 12 for n in ns]
    lengths = [length_class(n.duration) for n in ns]
    onsets = np.unique(_onsets(ns))
    pch = np.bincount(pcs, minlength=12).astype(np.float64)
    nlh = np.bincount(lengths, minlength=len(LENGTH_CLASSES)).astype(np.float64)
    return {
        "pitch_count": np.array([float(np.unique(pitches).size)]),
        "pitch_class_histogram": _normalized(pch),
        "pitch_class_transition_matrix": _transitions(pcs, 12),
        "pitch_range": np.array([float(np.ptp(pitches)) if ns else 0.0]),
        "avg_pitch_interval": np.array(
            [float(np.mean(np.abs(np.diff(pitches)))) if len(ns) > 1 else 0.0]
        ),
        "note_count": np.array([float(len(ns))]),
        "avg_ioi": np.array([float(np.mean(np.diff(onsets))) if onsets.size > 1 else 0.0]),
        "note_length_histogram": _normalized(nlh),
        "note_length_transition_matrix": _transitions(lengths, len(LENGTH_CLASSES)),
    }


def kde_bandwidth(sample: np.ndarray, floor: float = 1e-3) -> float:
    """Scott's rule for a 1-D Gaussian KDE: ``std(sample, ddof=1) * n ** (-1/5)`` (as scipy's
    gaussian_kde), at least `floor` (so a zero-variance sample is a narrow bump)."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return max(std * x.size ** (-0.2), floor)


def kde_pdf(sample: np.ndarray, points: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """Gaussian kernel density of `sample` at `points` (default bandwidth: kde_bandwidth)."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    pts = np.asarray(points, dtype=np.float64).ravel()
    h = kde_bandwidth(x) if bandwidth is None else bandwidth
    out = np.zeros(pts.size)
    chunk = max(1, 2**22 // max(pts.size, 1))  # bounded memory for large samples
    for i in range(0, x.size, chunk):
        z = (pts[:, None] - x[None, i : i + chunk]) / h
        out += np.exp(-0.5 * z * z).sum(axis=1)
    return out / (x.size * h * math.sqrt(2 * math.pi))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule integral (np.trapezoid is numpy >= 2 only)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between every row of a and every row of b: [len(a), len(b)]."""
    return np.stack([np.sqrt(((b - row) ** 2).sum(axis=-1)) for row in a])


def overlap_and_kl(
    intra: np.ndarray, inter: np.ndarray, grid_points: int = 1000, eps: float = 1e-12
) -> dict[str, float]:
    """Overlapping area and KL(intra || inter) of the KDEs of two distance samples.

    Both KDEs (kde_pdf; bandwidth floor 1% of the pooled samples' spread, else 1e-3) are
    evaluated on one grid of `grid_points` from the pooled minimum to the pooled maximum,
    widened by 4 of the larger bandwidth on each side. OA = trapezoid integral of
    min(pdf_intra, pdf_inter) (0..1). KL: both pdfs on the grid as discrete distributions
    (normalized to sum 1), `eps` added to each and renormalized, sum p log(p / q).
    """
    pooled = np.concatenate([intra, inter])
    floor = max(0.01 * float(np.ptp(pooled)), 1e-3)
    h_a, h_b = kde_bandwidth(intra, floor), kde_bandwidth(inter, floor)
    margin = 4 * max(h_a, h_b)
    grid = np.linspace(pooled.min() - margin, pooled.max() + margin, grid_points)
    p, q = kde_pdf(intra, grid, h_a), kde_pdf(inter, grid, h_b)
    oa = _trapezoid(np.minimum(p, q), grid)
    p = _normalized(p) + eps
    q = _normalized(q) + eps
    p, q = p / p.sum(), q / q.sum()
    return {"oa": oa, "kl": float(np.sum(p * np.log(p / q)))}


def compare_sets(
    generated: Sequence[Notes], real: Sequence[Notes], grid_points: int = 1000
) -> dict[str, dict[str, float]]:
    """Yang & Lerch's set comparison: per feature, {"oa": overlapping area, "kl": KL}.

    intra = Euclidean distances between the feature vectors of every pair of distinct real
    pieces (i < j); inter = every generated piece against every real piece. Each sample is
    smoothed by a Gaussian KDE and compared by ``overlap_and_kl``: OA near 1 and KL near 0
    mean the generated pieces sit among the real ones as the real ones sit among
    themselves. Needs at least 2 real pieces and 1 generated one. Note that comparing a set
    with itself does not give exactly OA 1: inter then holds the zero self-distances.
    """
    if len(real) < 2 or len(generated) < 1:
        raise ValueError(
            f"compare_sets needs >= 2 real and >= 1 generated pieces "
            f"(received {len(real)} and {len(generated)})"
        )
    f_gen = [features(p) for p in generated]
    f_real = [features(p) for p in real]
    iu = np.triu_indices(len(real), k=1)
    out = {}
    for name in FEATURES:
        g = np.stack([f[name] for f in f_gen])
        r = np.stack([f[name] for f in f_real])
        intra = _pairwise(r, r)[iu]
        inter = _pairwise(g, r).ravel()
        out[name] = overlap_and_kl(intra, inter, grid_points)
    return out


def self_overlap(
    real: Sequence[Notes], rng_seed: int = 0, grid_points: int = 1000
) -> dict[str, dict[str, float]]:
    """What real music scores against itself: the real set shuffled (numpy Generator seeded
    with `rng_seed`) and split into halves, ``compare_sets(first half, second half)`` (the
    second half, the larger when the count is odd, plays the real set). Needs >= 3 pieces."""
    if len(real) < 3:
        raise ValueError(f"self_overlap needs >= 3 pieces (received {len(real)})")
    order = np.random.default_rng(rng_seed).permutation(len(real))
    half = len(real) // 2
    return compare_sets(
        [real[i] for i in order[:half]], [real[i] for i in order[half:]], grid_points
    )


# ---- pitch distributions ------------------------------------------------------------------
def pitch_histogram(notes: Notes) -> np.ndarray:
    """128-bin MIDI pitch histogram of note counts, normalized to sum 1 (zeros if empty)."""
    h = np.bincount([n.pitch for n in notes], minlength=128).astype(np.float64)
    return _normalized(h)


def histogram_l1(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of |a - b| after normalizing each histogram to sum 1: 0 (equal) .. 2 (disjoint).
    nan when either histogram is all zeros."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in size ({a.size} and {b.size})")
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    return float(np.abs(a / a.sum() - b / b.sum()).sum())


def pitch_distribution_distance(generated_notes: Notes, real_notes: Notes) -> float:
    """Total variation between the MIDI pitch distributions (note counts, 128 bins) of the
    generated and the real notes: half the L1 distance, 0 (same) .. 1 (disjoint); nan if
    either is empty."""
    return 0.5 * histogram_l1(pitch_histogram(generated_notes), pitch_histogram(real_notes))


# ---- voices -------------------------------------------------------------------------------
def _span(n: Note, grid: float) -> tuple[int, int]:
    """Grid steps [on, off) a note sounds: quantized onset and end, at least one step."""
    on = quantize(n.onset, grid)
    return on, max(quantize(n.end, grid), on + 1)


def voice_grid(voices: Voices, grid: float = 0.25) -> np.ndarray:
    """Sounding pitch of each voice at each grid step: int array [T, V], -1 = rest.

    A note sounds from its quantized onset to its quantized end (nearest step, at least one
    step). Where a voice has several notes at once the highest pitch wins. T is the last
    quantized end over all voices (0 for no notes).
    """
    spans = [[(*_span(n, grid), n.pitch) for n in v] for v in voices]
    steps = max((off for v in spans for _, off, _ in v), default=0)
    out = np.full((steps, len(voices)), -1, dtype=np.int64)
    for j, v in enumerate(spans):
        for on, off, pitch in v:
            out[on:off, j] = np.maximum(out[on:off, j], pitch)
    return out


def grid_to_voices(
    voice_grid_array: np.ndarray, grid: float = 0.25, velocity: int = 80
) -> list[list[Note]]:
    """Inverse of voice_grid up to re-articulation: each run of one pitch in a column is one
    note (so a re-struck note of the same pitch merges with the one before)."""
    g = np.asarray(voice_grid_array)
    voices = []
    for col in g.T:
        notes, start = [], 0
        for t in range(1, len(col) + 1):
            if t == len(col) or col[t] != col[start]:
                if col[start] >= 0:
                    notes.append(Note(start * grid, int(col[start]), (t - start) * grid, velocity))
                start = t
        voices.append(notes)
    return voices


def _parallel_counts(g: np.ndarray, i: int, j: int) -> tuple[int, int]:
    """(fifths, octaves) between columns i and j of a voice grid."""
    a0, a1, b0, b1 = g[:-1, i], g[1:, i], g[:-1, j], g[1:, j]
    moving = (a0 >= 0) & (a1 >= 0) & (b0 >= 0) & (b1 >= 0) & (a0 != a1) & (b0 != b1)
    moving &= np.sign(a1 - a0) == np.sign(b1 - b0)
    before, after = np.abs(a0 - b0) % 12, np.abs(a1 - b1) % 12
    fifths = int(np.sum(moving & (before == 7) & (after == 7)))
    octaves = int(np.sum(moving & (before == 0) & (after == 0)))
    return fifths, octaves


def parallels(voices: Voices, grid: float = 0.25) -> dict[str, float]:
    """Parallel fifths and octaves over every pair of voices, on voice_grid.

    A parallel is a step t-1 -> t where both voices sound at both steps, both change pitch,
    in the same direction, and their interval (|difference| mod 12) is 7 at both steps
    (fifths, compound included) or 0 at both (octaves and unisons). Returns {"fifths",
    "octaves", "steps" (T), "fifths_per_100", "octaves_per_100"} (per 100 grid steps of the
    piece; nan when T = 0).
    """
    g = voice_grid(voices, grid)
    fifths = octaves = 0
    for i in range(g.shape[1]):
        for j in range(i + 1, g.shape[1]):
            f, o = _parallel_counts(g, i, j)
            fifths, octaves = fifths + f, octaves + o
    steps = g.shape[0]
    per = 100.0 / steps if steps else math.nan
    return {
        "fifths": fifths,
        "octaves": octaves,
        "steps": steps,
        "fifths_per_100": fifths * per,
        "octaves_per_100": octaves * per,
    }


def voice_crossing(voices: Voices, grid: float = 0.25) -> float:
    """Share of (step, adjacent pair) cases, both voices sounding, in which the lower voice
    (later in the list) is strictly above the upper one; pooled over all adjacent pairs;
    nan when no such case exists."""
    g = voice_grid(voices, grid)
    crossed = total = 0
    for i in range(g.shape[1] - 1):
        up, low = g[:, i], g[:, i + 1]
        both = (up >= 0) & (low >= 0)
        total += int(both.sum())
        crossed += int(np.sum(both & (low > up)))
    return crossed / total if total else math.nan


def voice_ranges(voices: Voices) -> list[tuple[int, int] | None]:
    """(lowest, highest) pitch of each voice; None for a voice without notes."""
    return [(min(n.pitch for n in v), max(n.pitch for n in v)) if v else None for v in voices]


def _n_bars(steps: int, grid: float, beats_per_bar: float) -> int:
    return math.ceil(steps * grid / beats_per_bar - _EPS_TIME)


def changes_per_bar(voices: Voices, grid: float = 0.25, beats_per_bar: float = 4) -> np.ndarray:
    """Per voice: distinct quantized onset steps (a new or re-struck note; a chord counts
    once) divided by the number of bars of the piece (ceil of the last quantized end over
    all voices / beats_per_bar). nan for every voice when there are no notes."""
    steps = voice_grid(voices, grid).shape[0]
    bars = _n_bars(steps, grid, beats_per_bar)
    if bars == 0:
        return np.full(len(voices), math.nan)
    return np.array([len({_span(n, grid)[0] for n in v}) / bars for v in voices])


#: Interval classes (semitones mod 12) counted as consonant against the lead.
CONSONANT = (0, 3, 4, 5, 7, 8, 9)


def consonance_with_lead(lead: Notes, others: Voices, grid: float = 0.25) -> float:
    """Share of (grid step, voice) pairs, with the lead and that voice both sounding, whose
    interval (|difference| mod 12) is in CONSONANT = {0, 3, 4, 5, 7, 8, 9} (the fourth
    counts as consonant); nan when no such pair exists."""
    g = voice_grid([lead, *others], grid)
    if g.shape[1] < 2:
        return math.nan
    lead_col, rest = g[:, :1], g[:, 1:]
    both = (lead_col >= 0) & (rest >= 0)
    if not both.any():
        return math.nan
    good = np.isin(np.abs(rest - lead_col) % 12, CONSONANT)
    return float(np.sum(good & both) / np.sum(both))


# ---- MuseGAN multitrack metrics -----------------------------------------------------------
def _bar_count(tracks: Voices, beats_per_bar: float) -> int:
    end = max((n.end for t in tracks for n in t), default=0.0)
    return math.ceil(end / beats_per_bar - _EPS_TIME)


def _in_bar(n: Note, bar: int, beats_per_bar: float) -> float:
    """Beats of note `n` sounding inside bar `bar` (0 if none)."""
    lo, hi = bar * beats_per_bar, (bar + 1) * beats_per_bar
    return max(0.0, min(n.end, hi) - max(n.onset, lo))


def _sounds_in(n: Note, bar: int, beats_per_bar: float) -> bool:
    """Whether a note sounds in a bar: it starts in it, or overlaps it by more than 1e-9 (a
    zero-length note counts in the bar of its onset)."""
    if math.floor(n.onset / beats_per_bar + _EPS_TIME) == bar:
        return True
    return _in_bar(n, bar, beats_per_bar) > _EPS_TIME


def empty_bars(tracks: Voices, beats_per_bar: float = 4, n_bars: int | None = None) -> np.ndarray:
    """Per track, the share of bars in which no note sounds (a note held over from the bar
    before counts as sounding, as in MuseGAN's piano rolls). `n_bars` defaults to the bars
    up to the last note end over all tracks; nan for every track when it is 0."""
    bars = _bar_count(tracks, beats_per_bar) if n_bars is None else n_bars
    if bars == 0:
        return np.full(len(tracks), math.nan)
    out = []
    for t in tracks:
        used = {b for n in t for b in range(bars) if _sounds_in(n, b, beats_per_bar)}
        out.append(1.0 - len(used) / bars)
    return np.array(out)


def used_pitch_classes(tracks: Voices, beats_per_bar: float = 4) -> np.ndarray:
    """Per track, the mean over its non-empty bars of the number of distinct pitch classes
    sounding in the bar (0..12; held-over notes count); nan for a track without notes."""
    bars = _bar_count(tracks, beats_per_bar)
    out = []
    for t in tracks:
        per_bar = [
            {n.pitch % 12 for n in t if _sounds_in(n, b, beats_per_bar)} for b in range(bars)
        ]
        counts = [len(s) for s in per_bar if s]
        out.append(float(np.mean(counts)) if counts else math.nan)
    return np.array(out)


def _tonnetz_matrix(r1: float = 1.0, r2: float = 1.0, r3: float = 0.5) -> np.ndarray:
    """Harte et al.'s 6x12 projection: circles of fifths (r1), minor thirds (r2), major
    thirds (r3), each as (sin, cos)."""
    pc = np.arange(12)
    rows = []
    for r, angle in ((r1, 7 * np.pi / 6), (r2, 3 * np.pi / 2), (r3, 2 * np.pi / 3)):
        rows += [r * np.sin(pc * angle), r * np.cos(pc * angle)]
    return np.array(rows)


TONNETZ = _tonnetz_matrix()


def tonal_centroid(chroma: np.ndarray) -> np.ndarray:
    """6-d tonal centroid of a 12-bin chroma: TONNETZ @ (chroma / sum(chroma))."""
    c = np.asarray(chroma, dtype=np.float64)
    return TONNETZ @ (c / c.sum())


def _bar_chroma(track: Notes, bar: int, beats_per_bar: float) -> np.ndarray:
    chroma = np.zeros(12)
    for n in track:
        chroma[n.pitch % 12] += _in_bar(n, bar, beats_per_bar)
    return chroma


def tonal_distance(track_a: Notes, track_b: Notes, beats_per_bar: float = 4) -> float:
    """Mean, over the bars where both tracks sound, of the Euclidean distance between their
    tonal centroids (chroma weighted by the beats each note sounds in the bar, normalized to
    sum 1). nan when no bar has both."""
    dists = []
    for bar in range(_bar_count([track_a, track_b], beats_per_bar)):
        ca, cb = _bar_chroma(track_a, bar, beats_per_bar), _bar_chroma(track_b, bar, beats_per_bar)
        if ca.sum() > 0 and cb.sum() > 0:
            dists.append(float(np.linalg.norm(tonal_centroid(ca) - tonal_centroid(cb))))
    return float(np.mean(dists)) if dists else math.nan
