"""The performer: one preset being played. Takes stamped MIDI input, keeps the clock, runs
the preset's mode, and sends what the mode generates to the scheduler.

The live daemon and the offline commands (`companion continue/accompany`) both drive this
class; only the clock's time source and where the scheduler's messages go differ. That is
what makes the live path testable without sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midi_companion import modes
from midi_companion.clock import SONG_POSITION, SONG_START, SONG_STOP, InternalClock, MidiClock
from midi_companion.errors import ModelError
from midi_companion.ledger import well_formed
from midi_companion.presets import Preset
from midi_companion.stats import percentiles

SUSTAIN_CC = 64
# Note-ons heard from the player: at most NOTE_BURST at once, NOTE_RATE a second sustained
# (a fast pianist plays ~20). Beyond is a flood (a stuck controller, a feedback loop): those
# note-ons are dropped and counted (`notes_dropped`), so a phrase never holds thousands.
NOTE_RATE = 64.0
NOTE_BURST = 64.0
# The DAW's clock may jump with no Stop or Song Position Pointer: its first tick after Start
# (or after a stall) puts the position back to where the ticks say, and a burst of ticks
# (absurd tempo) throws it far ahead. Between two looks (ticks are ~2 ms apart) a jump back
# of more than JUMP_BACK or ahead of more than JUMP_AHEAD beats is a relocation: the mode
# stops, as on Stop, rather than answer a phrase whose beats are no longer the song's, or
# generate every step it skipped. And however fast the tempo estimate, the mode generates at
# most MAX_AHEAD beats ahead.
JUMP_BACK = 0.5
JUMP_AHEAD = 4.0
MAX_AHEAD = 1.0
RELOCATING = (SONG_STOP, SONG_START, SONG_POSITION)  # transport messages that end the music


@dataclass(frozen=True)
class SwitchPreset:
    """What `Performer.handle` returns for a Program Change: the player asks for the
    `index`-th preset (0-based); the daemon switches, an offline caller may ignore it."""

    index: int


class Performer:
    """Plays one preset. `handle(t_ns, msg)` for each incoming message, `tick(now_ns)` often."""

    def __init__(
        self,
        preset: Preset,
        scheduler,
        clock,
        seed: int | None = None,
        provider: str = "auto",
        speculate: str | None = "thread",
    ):
        """`speculate`: how harmonize computes ahead ("thread" live, "inline" offline, None
        not at all: it changes no note, only when each is known)."""
        self.preset = preset
        self.scheduler = scheduler
        self.clock = clock
        self.notes_in = 0
        self.notes_dropped = 0  # note-ons beyond NOTE_RATE / NOTE_BURST
        self._allowance, self._allowance_ns = NOTE_BURST, None
        self._last_beat: float | None = None  # where tick() last saw the clock
        try:
            built = modes.build(
                preset, scheduler, clock, np.random.default_rng(seed), provider, speculate
            )
        except ModelError as err:  # say which preset asked for the model
            if str(preset.path) in str(err):
                raise
            raise ModelError(f"{preset.path}: {err}") from err
        self.mode, self.outputs, self.engines = built.mode, built.outputs, built.engines
        self._sustain = False

    @property
    def providers(self) -> list[str]:
        """The execution providers the engines run on (Engine.provider), once each."""
        return sorted({e.provider for e in self.engines})

    @property
    def harmonized(self) -> dict[str, int]:
        """Harmonize's lead note-ons (modes/accompaniment.py): answered by a lookup
        (speculation hits) or computed when they came (misses); a voice struck with the
        note, or every voice held. Zeros in other modes."""
        acc = getattr(self.mode, "accompaniment", self.mode)  # jam's accompanying half
        names = ("hits", "misses", "struck_notes", "held_notes")
        return {name: getattr(acc, name, 0) for name in names}

    def start_messages(self) -> list[tuple[int, ...]]:
        """All notes off on the channels we use, then each track's Program Change."""
        msgs = [(0xB0 | ch, 123, 0) for o in self.outputs for ch in o.channels]
        return msgs + [m for o in self.outputs for m in o.program_changes()]

    # ---- input -------------------------------------------------------------------------
    def handle(self, t_ns: int, msg) -> SwitchPreset | None:
        """One message stamped on arrival: transport, notes, controls. A Program Change
        (when the preset's [controls] allow it) returns SwitchPreset for the caller to act
        on; everything else returns None.

        Program Change and the controls act whether the clock runs or not (a preset chosen,
        or panic pressed, before the DAW's play); notes and the controls that need a beat
        (trigger, sustain release ending a phrase) only while it runs."""
        if not well_formed(msg):  # noise on the wire, a message cut short: not music
            return None
        status = msg[0]
        if isinstance(self.clock, MidiClock) and MidiClock.handles(msg):
            if status in RELOCATING:
                # Stop the mode while the position still has a time: once the clock has
                # stopped or jumped, the mode could neither release nor forget what it was
                # generating, and would resume it (or wait for its old position) after Start.
                self.stop_sound(t_ns)
            self.clock.feed(msg, t_ns)
            return None
        if status >= 0xF0:
            return None
        ch = status & 0x0F
        if self.preset.input_channel and ch != self.preset.input_channel - 1:
            return None
        kind = status & 0xF0
        if kind == 0xC0:
            return SwitchPreset(msg[1]) if self.preset.controls.program_change else None
        if kind == 0xB0:
            self._control(t_ns, msg[1], msg[2])
            return None
        if not self.clock.running:
            return None
        beat = self.clock.beat_at(t_ns)
        if kind == 0x90 and msg[2] > 0:
            if not self._admit(t_ns):
                return None
            self.notes_in += 1
            self.mode.note_on(beat, msg[1], msg[2])
        elif kind == 0x80 or kind == 0x90:
            self.mode.note_off(beat, msg[1])

    def _admit(self, t_ns: int) -> bool:
        """Whether a note-on at `t_ns` is within NOTE_RATE / NOTE_BURST (a token bucket)."""
        if self._allowance_ns is not None:
            refill = max(0, t_ns - self._allowance_ns) * NOTE_RATE / 1e9
            self._allowance = min(NOTE_BURST, self._allowance + refill)
        self._allowance_ns = t_ns
        if self._allowance < 1.0:
            self.notes_dropped += 1
            return False
        self._allowance -= 1.0
        return True

    def _control(self, t_ns: int, cc: int, value: int) -> None:
        c = self.preset.controls
        if cc == c.panic_cc and cc:
            self.stop_sound(t_ns)
        elif cc == c.temperature_cc and cc:
            lo, hi = c.temperature_range
            self.mode.set_temperature(lo + (hi - lo) * value / 127.0)
        elif cc == c.scale_lock_cc and cc:
            self.mode.set_scale_lock(value >= 64)
        elif cc == c.trigger_cc and cc and value >= 64:
            self._end_phrase(t_ns)
        elif cc == c.bridge_cc and cc and self.preset.bridge is not None:
            self.mode.set_mix(value / 127.0)  # the bridge: like me (0) .. like the target
        elif cc == SUSTAIN_CC:
            was, self._sustain = self._sustain, value >= 64
            if was and not self._sustain and c.sustain_release_ends_phrase:
                self._end_phrase(t_ns)

    def _end_phrase(self, t_ns: int) -> None:
        """A trigger: the phrase ends now (nothing to end while the clock stands still)."""
        if self.clock.running:
            self.mode.end_phrase(self.clock.beat_at(t_ns))

    def end_input(self, beat: float) -> None:
        """The player is done (the end of an input file): answer now."""
        self.mode.end_phrase(beat)

    # ---- time --------------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Generate what is due within the lookahead (plus a little, so no step is late)."""
        if not self.clock.running:
            return
        now = self.clock.beat_at(now_ns)
        last, self._last_beat = self._last_beat, now
        if last is not None and not last - JUMP_BACK <= now <= last + JUMP_AHEAD:
            self.stop_sound(now_ns)  # the clock jumped: a relocation
            return
        ahead = min(self.preset.timing.lookahead_ms * self.clock.bpm / 60_000.0, MAX_AHEAD)
        self.mode.tick(now, now + ahead + self.preset.timing.grid)

    def armed(self, now_ns: int) -> tuple[int, int | None, tuple[int, ...], dict] | None:
        """Harmonize's answers for a lead note-on that comes from `now_ns` on, written out
        (Accompaniment.armed): (until_ns, the lead's channel or None for any, the voices'
        channels, {pitch: messages}); None when there are none, or when a note-on now would
        not be taken as played (the clock stopped, input near the flood limit)."""
        arm = getattr(self.mode, "armed", None)
        if arm is None or not self.clock.running or self._allowance < 2.0:
            return None
        got = arm(self.clock.beat_at(now_ns))
        if got is None:
            return None
        until_beat, answers = got
        channels = tuple(ch for o in self.outputs for ch in o.channels)
        until = self.clock.time_at(until_beat)
        change = self.scheduler.next_change(now_ns, channels)
        if change is not None:
            until = min(until, change)
        ch = self.preset.input_channel - 1 if self.preset.input_channel else None
        return until, ch, channels, answers

    def stop_sound(self, t_ns: int) -> None:
        """Stop, preset switch, panic: cancel everything pending and release every note."""
        if self.clock.running:
            self.mode.stop(self.clock.beat_at(t_ns))
        self.scheduler.panic()
        self._last_beat = None

    def drop_response(self, t_ns: int) -> None:
        """After an error while handling one event or generating ahead: what the mode had
        pending is cancelled and what it sounds released (its stop()), so nothing hangs;
        the mode waits for the player again. If even that fails, everything is silenced."""
        try:
            if self.clock.running:
                self.mode.stop(self.clock.beat_at(t_ns))
        except Exception:
            self.scheduler.panic()

    @property
    def provider_notes(self) -> list[str]:
        """Why CUDA is not used, once per reason (Engine.provider_note)."""
        return sorted({e.provider_note for e in self.engines if e.provider_note})

    def inference_ms(self) -> tuple[float, float]:
        """p50 and p99 of the engines' recent step times (ms); zeros before any step."""
        return percentiles([ms for e in self.engines for ms in e.step_ms], 50, 99, default=0.0)


def make_clock(kind: str, bpm: float, beats_per_bar: int, now_ns=None):
    """The internal tempo ("internal") or the DAW's MIDI clock ("midi")."""
    if kind == "midi":
        return MidiClock(bpm=bpm, beats_per_bar=beats_per_bar)
    return InternalClock(
        bpm=bpm, beats_per_bar=beats_per_bar, **({"now_ns": now_ns} if now_ns else {})
    )
