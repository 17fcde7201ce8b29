"""REMI (seed 003; Huang and Yang's Pop Music Transformer): Bar, Position, Pitch, Velocity,
Duration, and optionally Tempo tokens.

Vocabulary, fixed, laid out by offset: ``Bar``; ``Position_i`` i = 0..``max_bar_beats *
positions_per_beat - 1``; ``Pitch_p`` for p in ``pitch_range``; ``Velocity_v`` for the
``velocity_bins`` values of ``events.velocity_table``; ``Duration_d`` d = 1..``max_duration
* positions_per_beat`` positions; with ``tempos``, ``Tempo_t`` for ``tempo_bins`` values
spread evenly over ``tempo_range`` (rounded to 0.01 bpm).

A bar is as long as the score's first time signature says (4/4 -> 4 beats -> 16 positions
at 4 per beat; 6/8 -> 3 beats); later time-signature changes are ignored, and a bar must
hold a whole number of positions. Every bar up to the last note's gets a ``Bar`` token,
empty ones included; trailing empty bars get none. Each occupied position is ``Position``,
then (with tempos) a ``Tempo`` token, then its notes in ascending pitch, each as Pitch,
Velocity, Duration.

Quantization, as MidiTok's REMI does it (and tests/test_remi_miditok.py checks, token for
token, on Bach chorales): onsets to the nearest position, durations on their own to the
nearest whole number of positions (at least 1, at most ``max_duration``), velocities to the
nearest bin value (halves up); notes outside ``pitch_range`` are dropped; all tracks merge
into one stream, and of notes with the same position and pitch only the first in (duration,
velocity) order is kept. With tempos: a Tempo token at position 0 (the score's tempo there,
else 120 bpm) and one at each change whose bin differs from the last one written; of changes
on one position the last wins. Intended differences from MidiTok: tempo values are binned
by nearest bpm (MidiTok: nearest microseconds per quarter), positions always count quarter
notes (MidiTok counts the time signature's beat unit when it writes TimeSig tokens, which
this representation does not have), and a time-signature change does not move bar lines.

Live, REMI is duration-based like ``notes``: a note is only known once it ends. The stream
encoder writes a position's tokens once every note starting there or earlier has ended and
time has left the position's rounding window (half a position), so no note can still join
it; a sustained note holds back everything played after it. A Bar token is written with the
next note's position, never for trailing empty bars. The bar length comes from the
``time_signature`` given to ``stream_encoder`` / ``stream_decoder`` / ``decode`` (default 4/4).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from midi_companion.errors import RepresentationError
from midi_companion.representations.base import (
    NoteEvent,
    Params,
    Representation,
    StreamDecoder,
    StreamEncoder,
    events_to_score,
    quantize,
)
from midi_companion.representations.events import (
    check_int,
    check_pitch,
    nearest,
    velocity_table,
)
from midi_companion.score import DEFAULT_BPM, Score

TimeSignature = tuple[int, int]


@dataclass(frozen=True)
class RemiParams(Params):
    """positions_per_beat: grid per quarter note; max_bar_beats: longest bar (sets the
    number of Position tokens); pitch_range: lowest and highest pitch held; velocity_bins;
    max_duration: longest duration in beats; tempos: write Tempo tokens; tempo_bins and
    tempo_range (bpm): their values."""

    positions_per_beat: int = 4
    max_bar_beats: int = 8
    pitch_range: tuple[int, int] = (21, 108)
    velocity_bins: int = 32
    max_duration: int = 8
    tempos: bool = False
    tempo_bins: int = 32
    tempo_range: tuple[float, float] = (40.0, 250.0)

    def validate(self) -> None:
        check_int("remi", "positions_per_beat", self.positions_per_beat, 1, 96)
        check_int("remi", "max_bar_beats", self.max_bar_beats, 1, 32)
        check_int("remi", "velocity_bins", self.velocity_bins, 1, 127)
        check_int("remi", "max_duration", self.max_duration, 1, 64)
        check_int("remi", "tempo_bins", self.tempo_bins, 1, 256)
        lo_hi = self.pitch_range
        if (
            not isinstance(lo_hi, tuple)
            or len(lo_hi) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in lo_hi)
            or not 0 <= lo_hi[0] <= lo_hi[1] <= 127
        ):
            raise RepresentationError(
                f"remi: pitch_range must be (lowest, highest) MIDI pitches with "
                f"0 <= lowest <= highest <= 127 (received {lo_hi!r})"
            )
        if not isinstance(self.tempos, bool):
            raise RepresentationError(
                f"remi: tempos must be true or false (received {self.tempos!r})"
            )
        t = self.tempo_range
        if (
            not isinstance(t, tuple)
            or len(t) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t)
            or not 0 < t[0] < t[1] <= 1000
        ):
            raise RepresentationError(
                f"remi: tempo_range must be (slowest, fastest) bpm with "
                f"0 < slowest < fastest <= 1000 (received {t!r})"
            )


class Remi(Representation):
    """REMI tokens (see the module doc)."""

    name = "remi"
    params_cls = RemiParams
    kind = "tokens"

    def __init__(self, params: RemiParams | None = None, **overrides):
        super().__init__(params, **overrides)
        p = self.params
        self.grid = 1.0 / p.positions_per_beat
        self.n_positions = p.max_bar_beats * p.positions_per_beat
        self.n_durations = p.max_duration * p.positions_per_beat
        self.low, self.high = p.pitch_range
        self.velocities = velocity_table(p.velocity_bins)
        self.tempo_values = (
            tuple(float(v) for v in np.linspace(*p.tempo_range, p.tempo_bins).round(2))
            if p.tempos
            else ()
        )
        self.bar = 0
        self.position_offset = 1
        self.pitch_offset = self.position_offset + self.n_positions
        self.velocity_offset = self.pitch_offset + self.high - self.low + 1
        self.duration_offset = self.velocity_offset + p.velocity_bins
        self.tempo_offset = self.duration_offset + self.n_durations

    @property
    def vocab_size(self) -> int:
        return self.tempo_offset + len(self.tempo_values)

    # ---- token ids and names -----------------------------------------------------------
    def split(self, token: int) -> tuple[str, int]:
        """(kind, value) of a token: Bar 0, Position index, Pitch MIDI pitch, Velocity bin,
        Duration positions, Tempo bin."""
        if not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
            raise RepresentationError(
                f"remi: token must be an integer 0..{self.vocab_size - 1} (received {token!r})"
            )
        t = int(token)
        if t == self.bar:
            return "Bar", 0
        if t < self.pitch_offset:
            return "Position", t - self.position_offset
        if t < self.velocity_offset:
            return "Pitch", t - self.pitch_offset + self.low
        if t < self.duration_offset:
            return "Velocity", t - self.velocity_offset
        if t < self.tempo_offset:
            return "Duration", t - self.duration_offset + 1
        return "Tempo", t - self.tempo_offset

    def token_name(self, token: int) -> str:
        """Readable name: ``Bar``, ``Position_4``, ``Pitch_60``, ``Velocity_63`` (the
        velocity), ``Duration_2`` (positions), ``Tempo_120.5`` (bpm)."""
        kind, value = self.split(token)
        if kind == "Bar":
            return "Bar"
        if kind == "Velocity":
            value = self.velocities[value]
        elif kind == "Tempo":
            return f"Tempo_{self.tempo_values[value]:g}"
        return f"{kind}_{value}"

    def bar_positions(self, time_signature: TimeSignature) -> int:
        """Positions in a bar of `time_signature` (num, den); raise RepresentationError if
        it is not a whole number or more than the vocabulary has."""
        ok = (
            isinstance(time_signature, tuple)
            and len(time_signature) == 2
            and all(isinstance(v, int) and v > 0 for v in time_signature)
        )
        positions = (
            (time_signature[0] * 4 * self.params.positions_per_beat / time_signature[1])
            if ok
            else 0
        )
        if not ok or positions != int(positions) or not 1 <= positions <= self.n_positions:
            raise RepresentationError(
                f"remi: time signature {time_signature!r} must give a bar of a whole number "
                f"of positions, 1..{self.n_positions} (max_bar_beats={self.params.max_bar_beats}"
                f", {self.params.positions_per_beat} per beat)"
            )
        return int(positions)

    def velocity_bin(self, velocity: int) -> int:
        return nearest(self.velocities, velocity)

    def tempo_bin(self, bpm: float) -> int:
        return nearest(self.tempo_values, bpm)

    def duration_positions(self, beats: float) -> int:
        """A duration in beats -> positions, at least 1, at most ``max_duration``."""
        return min(max(quantize(beats, self.grid), 1), self.n_durations)

    # ---- whole pieces ------------------------------------------------------------------
    def encode(self, score: Score) -> list[int]:
        """All notes of all tracks -> REMI tokens; bars from the first time signature."""
        sig = tuple(score.time_signatures[0][1:]) if score.time_signatures else (4, 4)
        writer = _Writer(self, self.bar_positions(sig))
        groups: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
        for n in score.notes:
            if self.low <= n.pitch <= self.high:
                on = quantize(n.onset, self.grid)
                note = (self.duration_positions(n.duration), self.velocity_bin(n.velocity))
                groups[on][n.pitch] = min(groups[on].get(n.pitch, note), note)
        tempos = self._tempo_changes(score) if self.params.tempos else {}
        for on in sorted(set(groups) | set(tempos)):
            writer.position(on, tempos.get(on), sorted(groups.get(on, {}).items()))
        return writer.take()

    def _tempo_changes(self, score: Score) -> dict[int, int]:
        """position -> tempo bin: the last change on each position, always one at 0."""
        at = {0: self.tempo_bin(DEFAULT_BPM)}
        for beat, bpm in sorted(score.tempos):
            at[quantize(beat, self.grid)] = self.tempo_bin(bpm)
        return at

    def decode(self, tokens, start: float = 0.0, time_signature: TimeSignature = (4, 4)) -> Score:
        """Tokens -> Score through the stream decoder, bars of `time_signature`; the score
        carries that time signature and the decoded tempos."""
        dec = self.stream_decoder(start, time_signature)
        events: list[NoteEvent] = []
        for tok in tokens:
            events.extend(dec.feed(tok))
        events.extend(dec.flush())
        score = events_to_score(events, self.track_names())
        score.time_signatures = [(0.0, *time_signature)]
        if dec.tempos:
            score.tempos = list(dec.tempos)
        return score

    # ---- live --------------------------------------------------------------------------
    def stream_encoder(self, time_signature: TimeSignature = (4, 4)) -> RemiEncoder:
        return RemiEncoder(self, time_signature)

    def stream_decoder(
        self, start: float = 0.0, time_signature: TimeSignature = (4, 4)
    ) -> RemiDecoder:
        return RemiDecoder(self, start, time_signature)


class _Writer:
    """Writes occupied positions, in order, as Bar/Position/Tempo/Pitch/Velocity/Duration."""

    def __init__(self, rep: Remi, bar_positions: int):
        self.rep = rep
        self.bar_positions = bar_positions
        self.bar = -1
        self.tempo: int | None = None
        self.out: list[int] = []

    def position(self, on: int, tempo: int | None, notes) -> None:
        """One position: `tempo` bin or None, `notes` [(pitch, (duration, velocity bin))]
        in ascending pitch. A tempo equal to the last one written is not repeated."""
        rep = self.rep
        if tempo == self.tempo:
            tempo = None
        if tempo is None and not notes:
            return
        bar, pos = divmod(on, self.bar_positions)
        self.out += [rep.bar] * (bar - self.bar)
        self.bar = bar
        self.out.append(rep.position_offset + pos)
        if tempo is not None:
            self.out.append(rep.tempo_offset + tempo)
            self.tempo = tempo
        for pitch, (duration, vbin) in notes:
            self.out += [
                rep.pitch_offset + pitch - rep.low,
                rep.velocity_offset + vbin,
                rep.duration_offset + duration - 1,
            ]

    def take(self) -> list[int]:
        out, self.out = self.out, []
        return out


class RemiEncoder(StreamEncoder):
    """Live notes (and, with tempos, ``tempo()`` changes) -> REMI tokens; concatenated
    output equals ``Remi.encode`` of the same notes. A position is written once every note
    starting there or earlier has ended and no new note can land on it. Note-offs pair with
    note-ons per (track, pitch), first in first out, as MIDI files do.

    ``base.feed_score`` sends no tempos: with ``tempos`` on, call ``tempo(beat, bpm)`` for
    each change in time order (before notes on the same beat) to match ``encode``.
    """

    def __init__(self, rep: Remi, time_signature: TimeSignature = (4, 4)):
        self.rep = rep
        self.writer = _Writer(rep, rep.bar_positions(time_signature))
        self.beat = 0.0
        self.now = 0
        # position -> {pitch: [records [onset beat, duration or None, velocity bin]]}
        self.groups: dict[int, dict[int, list]] = defaultdict(dict)
        self.tempos: dict[int, int] = {0: rep.tempo_bin(DEFAULT_BPM)} if rep.params.tempos else {}
        self.open: dict[tuple[int, int], deque] = defaultdict(deque)

    def note_on(self, beat: float, pitch: int, velocity: int, track: int = 0) -> list[int]:
        check_pitch("remi", pitch)
        self._time(beat)
        if self.rep.low <= pitch <= self.rep.high:
            record = [beat, None, self.rep.velocity_bin(velocity)]
            self.groups[self.now].setdefault(pitch, []).append(record)
            self.open[(track, pitch)].append(record)
        return self._emit()

    def note_off(self, beat: float, pitch: int, track: int = 0) -> list[int]:
        self._time(beat)
        queue = self.open.get((track, pitch))
        if queue:  # an off for a note never seen (out of range, held before start) is ignored
            record = queue.popleft()
            record[1] = self.rep.duration_positions(beat - record[0])
        return self._emit()

    def tempo(self, beat: float, bpm: float) -> list[int]:
        """A tempo change at `beat` (only with ``tempos`` on)."""
        if not self.rep.params.tempos:
            raise RepresentationError(
                "remi: tempo() needs params tempos=true (received a "
                f"tempo of {bpm} bpm at beat {beat})"
            )
        self._time(beat)
        self.tempos[self.now] = self.rep.tempo_bin(bpm)
        return self._emit()

    def advance(self, beat: float) -> list[int]:
        self._time(beat)
        return self._emit()

    def flush(self) -> list[int]:
        """End every sounding note at the latest time seen, then write everything."""
        for queue in self.open.values():
            for record in queue:
                record[1] = self.rep.duration_positions(self.beat - record[0])
        self.open.clear()
        self.now = max([*self.groups, *self.tempos], default=0) + 1
        return self._emit()

    def _time(self, beat: float) -> None:
        if beat < self.beat:
            raise RepresentationError(
                f"remi: stream times must not decrease (received beat {beat} after {self.beat})"
            )
        self.beat = beat
        self.now = quantize(beat, self.rep.grid)

    def _emit(self) -> list[int]:
        for on in sorted(set(self.groups) | set(self.tempos)):
            group = self.groups.get(on, {})
            if on >= self.now or any(r[1] is None for rs in group.values() for r in rs):
                break
            notes = [
                (pitch, min((r[1], r[2]) for r in records))
                for pitch, records in sorted(group.items())
            ]
            self.writer.position(on, self.tempos.pop(on, None), notes)
            self.groups.pop(on, None)
        return self.writer.take()


class RemiDecoder(StreamDecoder):
    """REMI tokens -> NoteEvents: each Duration token yields its note's note-on and
    note-off. Decoded tempo changes collect in ``tempos`` [(beat, bpm)].

    ``allowed()`` is the grammar the encoder writes: Bar first; after Bar, Bar or a
    Position; after Position, (Tempo, then) a Pitch; Pitch, Velocity, Duration in turn;
    after a note, a higher Pitch, a later Position in the bar, or Bar; a Tempo only when it
    changes the tempo, and with tempos on the first position is 0 with a Tempo. ``feed``
    raises RepresentationError for any token the mask forbids.
    """

    def __init__(self, rep: Remi, start: float = 0.0, time_signature: TimeSignature = (4, 4)):
        self.rep = rep
        self.start = start
        self.bar_positions = rep.bar_positions(time_signature)
        self.bar = -1
        self.pos = -1  # position in the bar; -1 = none yet
        self.phase = "start"
        self.pitch = -1
        self.vbin = 0
        self.tempo: int | None = None
        self.tempos: list[tuple[float, float]] = []
        self.last: int | None = None

    @property
    def position(self) -> float:
        return self._beat(0)

    def _beat(self, later: int) -> float:
        """Beat `later` positions after the current position."""
        steps = max(self.bar, 0) * self.bar_positions + max(self.pos, 0) + later
        return self.start + steps / self.rep.params.positions_per_beat

    def allowed(self) -> np.ndarray:
        rep = self.rep
        mask = np.zeros(rep.vocab_size, dtype=bool)
        need_tempo = rep.params.tempos and self.tempo is None
        phase = self.phase
        if phase in ("start", "bar", "tempo", "note") and not (need_tempo and phase == "bar"):
            mask[rep.bar] = True
        if phase == "bar" and need_tempo:
            mask[rep.position_offset] = True
        elif phase in ("bar", "tempo", "note"):
            mask[rep.position_offset + self.pos + 1 : rep.position_offset + self.bar_positions] = (
                True
            )
        if phase == "position" and rep.params.tempos:
            mask[rep.tempo_offset : rep.vocab_size] = True
            if self.tempo is not None:
                mask[rep.tempo_offset + self.tempo] = False
        if phase in ("position", "tempo", "note") and not (need_tempo and phase == "position"):
            lowest = self.pitch + 1 if phase == "note" else rep.low
            mask[rep.pitch_offset + max(lowest - rep.low, 0) : rep.velocity_offset] = True
        if phase == "pitch":
            mask[rep.velocity_offset : rep.duration_offset] = True
        if phase == "velocity":
            mask[rep.duration_offset : rep.tempo_offset] = True
        return mask

    def feed(self, token) -> list[NoteEvent]:
        rep = self.rep
        kind, value = rep.split(token)
        if not self.allowed()[int(token)]:
            after = "the start" if self.last is None else rep.token_name(self.last)
            kinds = sorted({rep.split(t)[0] for t in np.flatnonzero(self.allowed())})
            raise RepresentationError(
                f"remi: token {token} ({rep.token_name(token)}) cannot follow {after} "
                f"at beat {self.position:g}; allowed here: {', '.join(kinds)}"
            )
        self.last = int(token)
        self.phase = {
            "Bar": "bar",
            "Position": "position",
            "Tempo": "tempo",
            "Pitch": "pitch",
            "Velocity": "velocity",
            "Duration": "note",
        }[kind]
        if kind == "Bar":
            self.bar += 1
            self.pos = -1
        elif kind == "Position":
            self.pos = value
        elif kind == "Tempo":
            self.tempo = value
            self.tempos.append((self.position, rep.tempo_values[value]))
        elif kind == "Pitch":
            self.pitch = value
        elif kind == "Velocity":
            self.vbin = value
        elif kind == "Duration":
            return [
                NoteEvent(self.position, self.pitch, rep.velocities[self.vbin]),
                NoteEvent(self._beat(value), self.pitch, 0),
            ]
        if kind in ("Bar", "Position"):
            self.pitch = -1
        return []

    def flush(self) -> list[NoteEvent]:
        """Every complete note's note-off was already yielded; a partial note is dropped."""
        return []
