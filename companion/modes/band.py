"""Band: a vae-nn model (companion/band.py) accompanies the player block by block, one block
ahead, each accompanying track on its own channel and General MIDI program.

The player's first note starts block 0 at the bar line at or before it; a block is the
model's 32 grid steps (2 bars of 4/4 on a 16th grid) and every block starts on a bar line
([timing] beats_per_bar must divide it). While the player plays block t, the notes are
written into a roll; when block t closes (`tick`, a lookahead before its end, with the notes
still held drawn to its end), the band computes block t+1 from it (the lead's latent, the
MelodyNN's next, each ConditionalNN's, with [band] noise; the cells at or above [band]
threshold) and schedules it whole: every note of a block ends at the block's end at the
latest, so a block that replaces the last never leaves a note hanging (a pitch held across
the boundary is struck again). The player's block 0 has no accompaniment: the band answers
what it has heard. A block in which the player plays nothing ends the band (it starts again,
on a bar line, with the player's next note); so do the end of the input and stop().
"""

from __future__ import annotations

import math

import numpy as np

from midi_companion.band import Band, roll_events
from midi_companion.errors import PresetError
from midi_companion.modes import BuiltMode

_EPS = 1e-9


class BandMode:
    """Turn-taking for mode = "band"."""

    def __init__(self, band: Band, preset, output, rng):
        self.band = band
        self.output = output
        self.rng = rng
        self.noise = preset.band.noise
        self.threshold = preset.band.threshold
        self.scale = 1.0  # the temperature CC's value scales the noise
        self.bar = preset.timing.beats_per_bar
        self.length = band.block_beats
        self.start: float | None = None  # beat where block 0 begins
        self.closed = 0  # blocks closed so far (block `closed` is the one being played)
        self.sounding: dict[int, float] = {}  # lead pitch -> onset beat
        self.roll = np.zeros((band.block, band.P), dtype=np.uint8)  # the open block's lead
        self.blocks_played = 0

    # ---- input -------------------------------------------------------------------------
    def note_on(self, beat: float, pitch: int, velocity: int) -> None:
        if self.start is None:
            self.start = math.floor(beat / self.bar + _EPS) * self.bar
            self.closed = 0
            self.roll[:] = 0
            self.band.reset()
        self._close_until(beat)  # a note after a closed block's end belongs to a later one
        self.sounding[pitch] = beat

    def note_off(self, beat: float, pitch: int) -> None:
        onset = self.sounding.pop(pitch, None)
        if onset is not None and self.start is not None:
            self._paint(pitch, onset, beat)

    def end_phrase(self, beat: float) -> None:
        """The input has ended (or a trigger): what is scheduled plays out, nothing more."""
        self._finish()

    def set_temperature(self, t: float) -> None:
        self.scale = t

    def set_scale_lock(self, on: bool) -> None:
        """The band's notes come from its decoder; there is no key to lock them to."""

    # ---- time --------------------------------------------------------------------------
    def tick(self, now: float, horizon: float) -> None:
        if self.start is not None:
            self._close_until(horizon)

    def stop(self, beat: float) -> None:
        self.output.cancel_after(beat)
        self._finish()

    @property
    def idle(self) -> bool:
        return self.start is None

    # ---- blocks ------------------------------------------------------------------------
    def _block_start(self, t: int) -> float:
        return self.start + t * self.length

    def _paint(self, pitch: int, onset: float, end: float) -> None:
        """Mark the open block's cells a lead note covers (nearest grid lines; at least one
        cell for a note that starts in it)."""
        key = pitch - self.band.low
        if not 0 <= key < self.band.P:
            return
        g = self.band.grid
        a = round((onset - self._block_start(self.closed)) / g)
        b = max(round((end - self._block_start(self.closed)) / g), a + 1)
        a, b = max(a, 0), min(b, self.band.block)
        if a < b:
            self.roll[a:b, key] = 1

    def _close_until(self, beat: float) -> None:
        """Close every open block that ends at or before `beat` and answer it."""
        while self.start is not None and self._block_start(self.closed + 1) <= beat + _EPS:
            end = self._block_start(self.closed + 1)
            for pitch, onset in self.sounding.items():
                self._paint(pitch, onset, end)
            if not self.roll.any():
                self._finish()  # the player rested a whole block: the band stops with them
                return
            self._answer(self.closed + 1)
            self.closed += 1
            self.roll[:] = 0
            self.sounding = {p: end for p in self.sounding}  # held notes go on in the next

    def _answer(self, t: int) -> None:
        """Compute block t from the closed block t - 1 and schedule it."""
        out = self.band.next_block(self.roll, self.noise * self.scale, self.threshold, self.rng)
        start = self._block_start(t)
        events = []
        for k in range(1, self.band.K):
            events += roll_events(
                out[k], start, self.band.grid, self.band.low, self.band.velocity, k - 1
            )
        events.sort(key=lambda e: (e.beat, e.velocity > 0))
        self.output.play(events)
        self.blocks_played += 1

    def _finish(self) -> None:
        self.start = None
        self.sounding = {}
        self.roll[:] = 0


def build(preset, scheduler, clock, rng, provider: str = "auto") -> BuiltMode:
    """mode = "band": the preset's vae-nn model and its [[tracks]], one per accompanying
    track of the model, in the model's order."""
    from midi_companion.modelfile import load as load_model
    from midi_companion.output import Output

    band = Band(load_model(preset.model), provider=provider)
    parts = band.tracks[1:]
    if len(preset.tracks) != len(parts):
        raise PresetError(
            f"{preset.path}: [[tracks]] must list the model's {len(parts)} accompanying "
            f"tracks in order ({', '.join(parts)}; {band.tracks[0]} is the player's), one "
            f"channel each (received {len(preset.tracks)})"
        )
    bar = preset.timing.beats_per_bar
    if abs(band.block_beats / bar - round(band.block_beats / bar)) > _EPS:
        raise PresetError(
            f"{preset.path}: [timing] beats_per_bar must divide the model's block of "
            f"{band.block_beats:g} beats, so that every block starts on a bar line "
            f"(received {bar})"
        )
    band.next_block(np.zeros((band.block, band.P)), 0.0, 1.0, rng)  # warm up the sessions
    band.reset()
    out = Output(scheduler, clock, preset.tracks)
    return BuiltMode(BandMode(band, preset, out, rng), [out], [band.engine])
