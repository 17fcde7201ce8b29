"""Pattern: a freshly generated block every `[timing] bars` bars, on the bar, in the
player's key (a GAN's generator model file: companion/pattern.py).

The first block starts on the first bar line after the player's first note; a new one
follows every `bars` bars for as long as the player keeps playing (a note within the block
before). Each block is drawn from new noise (its standard deviation: the preset's
temperature, which the temperature CC moves), made as dense as `[pattern]` says (threshold
or number of notes), transposed from its own key (Krumhansl-Schmuckler) into the key of
what the player played in the last `KEY_BARS` bars when `transpose` is on (the scale lock
then moves every note into that key's scale), cut to its `bars` bars and to the track's
range, and played through the Output: each note's note-off is scheduled with its note-on,
no later than the block's end, so blocks never overlap and nothing is left hanging. A block
is generated once its start is within the lookahead. A phrase end (trigger, sustain
release, the end of an input file) lets the block that plays finish and starts no other
until the player plays again.
"""

from __future__ import annotations

import math
from collections import deque

from midi_companion.output import Output
from midi_companion.pattern import BlockGenerator, fit_key, key_of
from midi_companion.representations.base import NoteEvent
from midi_companion.score import Note

KEY_BARS = 8  # the player's key is that of their notes in this many bars before a block
EPS = 1e-9


class Pattern:
    """Turn-taking for mode = "pattern"; the Performer drives it like any mode."""

    def __init__(self, generator: BlockGenerator, preset, output: Output, rng):
        self.gen = generator
        self.cfg = preset.pattern
        self.output = output
        self.rng = rng
        self.bar = float(preset.timing.beats_per_bar)
        self.span = preset.timing.bars * self.bar  # beats per block
        self.temperature = preset.sampling.temperature
        self.scale_lock = preset.sampling.scale_lock
        self.range = output.tracks[0].range
        self.heard: deque[Note] = deque(maxlen=4096)  # the player's notes, for the key
        self.sounding: dict[int, tuple[float, int]] = {}  # pitch -> (onset, velocity)
        self.last_input: float | None = None
        self.next_start: float | None = None  # the next block's first beat
        self.blocks: list[tuple[float, int]] = []  # (start beat, notes) of every block played

    # ---- input -------------------------------------------------------------------------
    def note_on(self, beat: float, pitch: int, velocity: int) -> None:
        self.sounding[pitch] = (beat, velocity)
        self.last_input = beat
        if self.next_start is None:  # from the next bar line on
            self.next_start = (math.floor(beat / self.bar + EPS) + 1) * self.bar

    def note_off(self, beat: float, pitch: int) -> None:
        onset, velocity = self.sounding.pop(pitch, (None, 0))
        if onset is not None:
            self.heard.append(Note(onset, pitch, max(beat - onset, 0.0), velocity))
        self.last_input = beat

    def end_phrase(self, beat: float) -> None:
        """Let the block that plays finish; none after it until the player plays again."""
        self.next_start = None

    def set_temperature(self, t: float) -> None:
        self.temperature = t

    def set_scale_lock(self, on: bool) -> None:
        self.scale_lock = on

    # ---- time --------------------------------------------------------------------------
    def tick(self, now: float, horizon: float) -> None:
        while self.next_start is not None and self.next_start <= horizon:
            start = self.next_start
            if self.blocks and not self._playing_since(start - self.span):
                self.next_start = None  # the player stopped a block ago: so do we
                return
            self._play_block(start)
            self.next_start = start + self.span

    def _playing_since(self, beat: float) -> bool:
        return bool(self.sounding) or (self.last_input is not None and self.last_input >= beat)

    def _play_block(self, start: float) -> None:
        block = self.gen.sample(self.rng, 1, self.temperature)[0]
        notes = self.gen.notes(block, self.cfg.threshold, self.cfg.notes, beats=self.span)
        if self.cfg.transpose:
            notes = fit_key(notes, self.player_key(start), lock=self.scale_lock)
        lo, hi = self.range
        notes = _no_overlap([n for n in notes if lo <= n.pitch <= hi])
        events = []
        for n in notes:
            events.append(NoteEvent(start + n.onset, n.pitch, n.velocity, 0))
            events.append(NoteEvent(start + n.end, n.pitch, 0, 0))
        self.output.play(events)
        self.blocks.append((start, len(notes)))

    def player_key(self, beat: float) -> tuple[int, str] | None:
        """The key of what the player played in the `KEY_BARS` bars before `beat`."""
        since = beat - KEY_BARS * self.bar
        notes = [n for n in self.heard if n.end > since]
        notes += [Note(on, p, max(beat - on, 0.0), v) for p, (on, v) in self.sounding.items()]
        return key_of(notes)

    # ---- stopping ----------------------------------------------------------------------
    def stop(self, beat: float) -> None:
        """Cancel what is pending, end what sounds; wait for the player again."""
        self.output.cancel_after(beat)
        self.next_start = None

    release = stop

    @property
    def idle(self) -> bool:
        return self.next_start is None


def _no_overlap(notes: list[Note]) -> list[Note]:
    """A note ends where the next note of its pitch starts (one key, one note at a time)."""
    notes = sorted(notes, key=lambda n: (n.pitch, n.onset))
    out = []
    for i, n in enumerate(notes):
        nxt = notes[i + 1] if i + 1 < len(notes) else None
        end = n.end if nxt is None or nxt.pitch != n.pitch else min(n.end, nxt.onset)
        if end - n.onset > EPS:
            out.append(Note(n.onset, n.pitch, end - n.onset, n.velocity))
    return sorted(out, key=lambda n: (n.onset, n.pitch))


def build(preset, scheduler, clock, rng, provider: str = "auto"):
    """A pattern preset's mode, its generator loaded and warmed up (modes.build)."""
    from midi_companion.errors import PresetError
    from midi_companion.modelfile import load as load_model
    from midi_companion.modes import BuiltMode, _default_tracks

    model = load_model(preset.model)
    gen = BlockGenerator(model, provider=provider)
    gen.warm_up(rng)
    tracks = preset.tracks or _default_tracks(model)
    if len(tracks) != 1:
        raise PresetError(
            f'{preset.path}: mode = "pattern" plays one track (received {len(tracks)} [[tracks]])'
        )
    out = Output(scheduler, clock, tracks)
    return BuiltMode(Pattern(gen, preset, out, rng), [out], [gen.engine])
