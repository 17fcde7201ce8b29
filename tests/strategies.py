"""Hypothesis strategies shared by the tests: grid-aligned single- and multi-track Scores.

``scores()`` draws notes whose onsets and durations are whole grid steps, so every
representation should hold them exactly; ``on_grid(score, grid)`` is the comparison key
"equal up to the grid" (velocity left out: rolls do not hold it).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from midi_companion.score import Note, Score, Track


@st.composite
def scores(
    draw,
    *,
    tracks: int | tuple[int, int] = (1, 3),
    grid: float = 0.25,
    low: int = 21,
    high: int = 108,
    max_steps: int = 48,
    max_length: int = 8,
    max_notes: int = 16,
    gap: int | None = 1,
    monophonic: bool = False,
    velocity: int | None = 80,
    names: Sequence[str] | None = None,
    programs: Sequence[int] | None = None,
    drums: Sequence[bool] | None = None,
) -> Score:
    """A Score of grid-aligned notes: onsets at steps 0..max_steps-1, 1..max_length steps long.

    tracks: a count or (min, max) (ignored when `names` is given: one track per name);
    gap: steps of silence required between same-pitch notes of a track (0 = they may touch,
    None = they may even overlap); monophonic: at most one note at a time per track;
    velocity: fixed, or None to draw 1..127; names/programs/drums: per-track settings.
    """
    if names is not None:
        count = len(names)
    elif isinstance(tracks, int):
        count = tracks
    else:
        count = draw(st.integers(*tracks))
    velocities = st.just(velocity) if velocity is not None else st.integers(1, 127)
    note = st.tuples(
        st.integers(0, max_steps - 1),
        st.integers(1, max_length),
        st.integers(low, high),
        velocities,
    )
    out = []
    for i in range(count):
        kept: list[tuple[int, int, int, int]] = []
        for cand in draw(st.lists(note, max_size=max_notes)):
            if all(_fits(cand, other, gap, monophonic) for other in kept):
                kept.append(cand)
        notes = [Note(s * grid, p, n * grid, v) for s, n, p, v in kept]
        out.append(
            Track(
                name=names[i] if names is not None else ("lead" if i == 0 else f"part {i}"),
                program=programs[i] if programs is not None else 0,
                is_drum=bool(drums[i]) if drums is not None else False,
                notes=sorted(notes),
            )
        )
    return Score(tracks=out)


def _fits(a, b, gap: int | None, monophonic: bool) -> bool:
    (start_a, len_a, pitch_a, _), (start_b, len_b, pitch_b, _) = a, b
    apart = 0 if monophonic or gap is None else gap
    if pitch_a == pitch_b and gap is not None:
        apart = max(apart, gap)
    elif not monophonic:
        return True
    return start_a >= start_b + len_b + apart or start_b >= start_a + len_a + apart


def on_grid(score: Score, grid: float) -> list[tuple[str, list[tuple[int, int, int]]]]:
    """Each track's name and its notes as sorted (onset step, pitch, length in steps)."""
    return [
        (
            t.name,
            sorted((round(n.onset / grid), n.pitch, round(n.duration / grid)) for n in t.notes),
        )
        for t in score.tracks
    ]
