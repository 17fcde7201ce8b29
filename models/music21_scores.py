"""music21 -> Score: how a music21 Score or Part becomes ours (models/corpora.py reads the
collections with it). Ties are stripped, each part becomes a Track, times are quarter
lengths (= beats), grace notes are dropped, chords become their notes, and repeats are NOT
expanded (a piece is as written once, which keeps the data free of the duplicated passages
that expanding repeats would add). music21 is imported only when a function runs.
"""

from __future__ import annotations

import contextlib
import re

from midi_companion.score import DEFAULT_BPM, Note, Score, Track

DEFAULT_VELOCITY = 80  # a note without volume information


def score_from_music21(
    stream, *, in_place: bool = False, meters: set[tuple[int, int]] | None = None
) -> Score:
    """A Score from a music21 Score or Part: ties stripped (on a copy unless in_place), one
    Track per part, grace notes dropped, chords expanded, repeats left as written, tempo from
    the first MetronomeMark (else 120), velocity from the note's volume (else 80), time
    signatures of the first part (only those in `meters` when given)."""
    from music21 import stream as m21stream
    from music21 import tempo

    if in_place:
        stream.stripTies(inPlace=True)
    else:
        stream = stream.stripTies()
    parts = list(stream.getElementsByClass(m21stream.Part)) or [stream]
    mark = next(iter(stream.recurse().getElementsByClass(tempo.MetronomeMark)), None)
    bpm = mark.getQuarterBPM() if mark is not None else None
    return Score(
        tracks=[_track_from_part(part, i) for i, part in enumerate(parts)],
        tempos=[(0.0, float(bpm) if bpm and bpm > 0 else DEFAULT_BPM)],
        time_signatures=_time_signatures(parts[0], meters),
    )


@contextlib.contextmanager
def no_beaming():
    """music21's ABC reader spends over half its time beaming eighth notes, which is notation
    only (no onset, duration or pitch changes); skip it while parsing."""
    from music21 import stream

    original = stream.Stream.makeBeams
    stream.Stream.makeBeams = _skip_beams
    try:
        yield
    finally:
        stream.Stream.makeBeams = original


def _skip_beams(self, *args, inPlace=False, **kwargs):
    return None if inPlace else self


def _track_from_part(part, index: int) -> Track:
    from music21 import instrument

    inst = part.getInstrument(returnDefault=False)
    program = getattr(inst, "midiProgram", None)
    is_drum = isinstance(inst, instrument.UnpitchedPercussion) or (
        getattr(inst, "midiChannel", None) == 9
    )
    name = part.partName or (part.id if isinstance(part.id, str) else "") or f"part {index + 1}"
    notes = []
    for el in part.flatten().notes:
        length = float(el.quarterLength)
        if el.duration.isGrace or length <= 0:
            continue
        onset, velocity = float(el.offset), _velocity(el)
        notes.extend(
            Note(onset, p.midi, length, velocity)
            for p in getattr(el, "pitches", ())
            if 0 <= p.midi <= 127
        )
    notes.sort()
    return Track(name=str(name), program=int(program or 0), is_drum=is_drum, notes=notes)


def _velocity(el) -> int:
    if not el.hasVolumeInformation():
        return DEFAULT_VELOCITY
    velocity = el.volume.velocity
    return DEFAULT_VELOCITY if velocity is None else min(max(int(velocity), 1), 127)


def _time_signatures(part, meters) -> list[tuple[float, int, int]]:
    out: list[tuple[float, int, int]] = []
    for offset, ts in _signatures_in(part):
        den = ts.denominator
        # MIDI can only store power-of-two denominators; other meters (rare) are dropped.
        if den < 1 or den & (den - 1) or (meters is not None and (ts.numerator, den) not in meters):
            continue
        entry = (offset, int(ts.numerator), int(den))
        if out and out[-1][0] == entry[0]:
            out[-1] = entry
        elif not out or out[-1][1:] != entry[1:]:
            out.append(entry)
    if not out or out[0][0] > 0:
        out.insert(0, (0.0, 4, 4))
    return out


def _signatures_in(part):
    """(beat, TimeSignature) pairs, read bar by bar: music21's ABC reader shares one
    TimeSignature object between bars, which flatten() then places at one of them only."""
    from music21 import meter, stream

    measures = list(part.getElementsByClass(stream.Measure))
    if not measures:
        return [
            (float(ts.offset), ts) for ts in part.flatten().getElementsByClass(meter.TimeSignature)
        ]
    return [(float(m.offset), m.timeSignature) for m in measures if m.timeSignature is not None]


_ABC_METER = re.compile(r"(?:^|\[)M:\s*([^\]\n]*)", re.MULTILINE)


def abc_meters(text: str) -> set[tuple[int, int]]:
    """The meters an ABC tune declares (M: fields). music21 adds a time signature for every
    incomplete bar (a pickup after a repeat becomes a 1/16 bar); only declared ones are kept.
    M:none declares none, so such a tune is read as 4/4."""
    meters = set()
    for value in _ABC_METER.findall(text):
        value = value.strip()
        if value.startswith("C|"):
            meters.add((2, 2))
        elif value.startswith("C"):
            meters.add((4, 4))
        meters.update((int(n), int(d)) for n, d in re.findall(r"(\d+)/(\d+)", value))
    return meters
