"""Call and response: listen to a phrase, and when it ends, answer it.

The phrase ends after `silence_beats` with no key down, or on a trigger (a CC, sustain-pedal
release). The response starts on the next beat or bar, lasts `bars`, and is generated just
ahead of playback (a lookahead horizon), so it streams while it is generated and an
interruption wastes little work. New input interrupts the response or overlaps it (preset).
"""

from __future__ import annotations

import math

import numpy as np

from midi_companion import rules
from midi_companion.representations.base import NoteEvent
from midi_companion.sampling import Sampling
from midi_companion.score import Note

CONTEXT_BARS = 8  # the phrase context the model sees; bounds priming time
CONTEXT_NOTES = 256  # and at most this many notes of it (~1,000 tokens, ~0.1 s to prime)
PRIME_EARLY_BEATS = 1.0  # prime the model this long before the silence ends the phrase
MAX_TOKENS_PER_TICK = 512  # a model that never advances time cannot stall the loop


def answer_start(now: float, timing) -> float:
    """Where an answer to a phrase that ended at `now` starts: the next beat or bar (preset
    `start_on`), or `now` itself when the phrase ended right on one."""
    unit = timing.beats_per_bar if timing.start_on == "bar" else 1.0
    return math.ceil(now / unit - 1e-6) * unit


def encode_phrase(rep, notes: list[Note], origin: float, start: float, enc=None) -> list:
    """The tokens of a phrase, times from `origin`, then the silence up to `start`. An event
    past `start` (a release a hair after the beat the answer snapped to) is read at it.
    `enc`: the stream encoder to write with (to write more silence after, later)."""
    enc = rep.stream_encoder() if enc is None else enc
    events = sorted(
        [(min(n.onset, start) - origin, 1, n.pitch, n.velocity) for n in notes]
        + [(min(n.end, start) - origin, 0, n.pitch, 0) for n in notes]
    )
    tokens: list = []
    for beat, is_on, pitch, vel in events:
        tokens += enc.note_on(beat, pitch, vel) if is_on else enc.note_off(beat, pitch)
    return tokens + enc.advance(start - origin)


class Response:
    """One answer being generated: decoder state, its place in time, notes left open."""

    def __init__(
        self,
        voice,
        rep,
        start: float,
        end: float,
        shift: float,
        decoder,
        track: int,
        rules=None,
        steer=None,
    ):
        self.voice, self.rep, self.decoder, self.rules = voice, rep, decoder, rules
        self.start, self.end, self.shift, self.track = start, end, shift, track
        self.steer = steer  # called with the beat before each token (the bridge moves z)
        self.open: set[int] = set()
        self.done = False

    def generate(self, until: float, rng, sampling: Sampling) -> list[NoteEvent]:
        """Sample tokens until the decoder reaches `until` (beats) or the response ends."""
        out: list[NoteEvent] = []
        for _ in range(MAX_TOKENS_PER_TICK):
            if self.done or self.decoder.position + self.shift >= until:
                break
            if self.steer is not None:
                self.steer(self.decoder.position + self.shift)
            if self.rules is None:
                tok = self.voice.next(rng, sampling, self.decoder.allowed())
            else:
                tok = self.voice.next(rng, sampling, *self.rules.apply(self.decoder))
            for ev in self.decoder.feed(tok):
                self._place(ev, out)
            if self.decoder.position + self.shift >= self.end:
                self.finish(out)
        return out

    def _place(self, ev: NoteEvent, out: list[NoteEvent]) -> None:
        beat = ev.beat + self.shift
        if ev.velocity > 0:
            if not self.start <= beat < self.end or ev.pitch in self.open:
                return
            self.open.add(ev.pitch)
            out.append(NoteEvent(beat, ev.pitch, ev.velocity, self.track))
        elif ev.pitch in self.open:
            self.open.discard(ev.pitch)
            out.append(NoteEvent(min(beat, self.end), ev.pitch, 0, self.track))

    def finish(self, out: list[NoteEvent]) -> None:
        """End the response: a note-off at the end for every note still open."""
        for p in sorted(self.open):
            out.append(NoteEvent(self.end, p, 0, self.track))
        self.open.clear()
        self.done = True


class Continuation:
    """The continue mode's turn-taking; drives one voice and one output track."""

    def __init__(self, voice, preset, output, rng: np.random.Generator, track: int = 0):
        self.voice = voice
        self.rep = voice.rep
        self.preset = preset
        self.timing = preset.timing
        self.output = output
        self.rng = rng
        self.track = track
        self.sampling = Sampling(
            preset.sampling.temperature, preset.sampling.top_k, preset.sampling.top_p
        )
        self.scale_lock = preset.sampling.scale_lock
        self.phrase: list[Note] = []
        self.held: dict[int, tuple[float, int]] = {}
        self.last_input: float | None = None
        self.response: Response | None = None
        self.responses = 0
        self._primed: tuple | None = None  # (key, notes, origin, encoder, decoder): see tick

    # ---- input -------------------------------------------------------------------------
    def note_on(self, beat: float, pitch: int, velocity: int) -> None:
        self._primed = None  # the phrase goes on: a priming for it is stale
        if self.response is not None and self.preset.on_input == "interrupt":
            self.interrupt(beat)
        if pitch in self.held:  # a repeated key without its release: close the first
            self.note_off(beat, pitch)
        self.held[pitch] = (beat, velocity)
        self.last_input = beat

    def note_off(self, beat: float, pitch: int) -> None:
        if pitch not in self.held:
            return
        onset, vel = self.held.pop(pitch)
        self.phrase.append(Note(onset, pitch, max(beat - onset, 1e-3), vel))
        self.last_input = beat

    def end_phrase(self, beat: float) -> None:
        """A trigger (CC or pedal release): answer now, whatever the silence."""
        for pitch in list(self.held):
            self.note_off(beat, pitch)
        if self.phrase and self.response is None:
            self.respond(beat)

    def set_temperature(self, t: float) -> None:
        self.sampling.temperature = t

    def set_scale_lock(self, on: bool) -> None:
        self.scale_lock = on

    def interrupt(self, beat: float) -> None:
        self.output.cancel_after(beat)
        self.response = None

    # ---- time --------------------------------------------------------------------------
    def tick(self, now: float, horizon: float) -> None:
        """Called often (every few ms): start a response when the phrase has ended, and
        generate the running one up to `horizon` beats. A beat before the silence would end
        the phrase, the model is primed with it (tens of ms for a long phrase, which would
        otherwise fall between the phrase's end and the answer's first notes)."""
        if self.response is None and self.phrase and not self.held:
            ends = self.last_input + self.timing.silence_beats
            if self._primed is None and now >= ends - PRIME_EARLY_BEATS:
                start = answer_start(ends, self.timing)
                self._primed = (self._key(), start, *self._prepare(start))
            if now >= ends:
                self.respond(now)
        if self.response is not None:
            self.output.play(self.response.generate(horizon, self.rng, self.sampling))
            if self.response.done:
                self.response = None

    def _key(self) -> tuple:
        """What a priming is good for: the phrase as it is."""
        return (len(self.phrase), self.last_input)

    def _prepare(self, start: float) -> tuple:
        """The voice primed with the phrase (its last CONTEXT_BARS, at most CONTEXT_NOTES)
        and the silence up to `start`: (notes, origin, encoder, decoder)."""
        bpb = self.timing.beats_per_bar
        first = max(n.onset for n in self.phrase) - CONTEXT_BARS * bpb
        notes = [n for n in self.phrase if n.onset >= first][-CONTEXT_NOTES:]
        origin = math.floor(min(n.onset for n in notes) / bpb) * bpb
        enc = self.rep.stream_encoder()
        tokens = encode_phrase(self.rep, notes, origin, start, enc)
        decoder = self.rep.stream_decoder(0.0)
        self.voice.prime(tokens)  # reset and feed (a latent voice encodes the phrase first)
        for tok in tokens:
            decoder.feed(tok)
        return notes, origin, enc, decoder

    def _advance(self, enc, decoder, to: float) -> None:
        """More silence, up to `to` (beats from the phrase's origin), into the primed voice."""
        for tok in enc.advance(to):
            self.voice.feed(tok)
            decoder.feed(tok)

    def respond(self, now: float) -> None:
        start = answer_start(now, self.timing)
        primed, self._primed = self._primed, None
        if primed is not None and primed[0] == self._key() and primed[1] <= start:
            notes, origin, enc, decoder = primed[2:]  # primed a beat ago (tick)
            self._advance(enc, decoder, start - origin)  # a beat later than foreseen
        else:
            notes, origin, enc, decoder = self._prepare(start)
        # Priming here took time (live: ~0.1 ms a token). When it ran past `start`, the
        # first notes would be due before they are generated, so dropped: the answer starts
        # a beat (bar) later, after more silence. (Generating them takes a few ms, which the
        # scheduler's tolerance covers.) Offline the clock does not move while priming.
        bpb = self.timing.beats_per_bar
        after = self.output.beat_now()
        if after > start:
            start = answer_start(after, self.timing)
            self._advance(enc, decoder, start - origin)
        # The model's time is the player's, from the bar line `origin`: never shifted, or the
        # model would place its beat where the player's is not (the encoder writes a partial
        # time shift only before an event, so the context may end short of `start`; what the
        # model plays before `start` is not heard).
        shift = origin
        end = start + self.timing.bars * bpb
        self.response = Response(
            self.voice,
            self.rep,
            start,
            end,
            shift,
            decoder,
            self.track,
            self._rules(notes),
            self._steer(start, end),
        )
        self.responses += 1
        self.phrase = []

    def _steer(self, start: float, end: float):
        """What moves the voice while it answers from `start` to `end` (None: nothing; the
        bridge mode's latent path)."""
        return None

    def _rules(self, notes: list[Note]):
        """The answer's range, key and grid (companion.rules); events representations only."""
        if self.rep.name != "events":
            return None
        tracks = self.output.tracks
        low, high = tracks[min(self.track, len(tracks) - 1)].range
        key = rules.key_from_profile(rules.pitch_class_profile(notes))[:2]
        return rules.EventsRules(
            self.rep,
            low,
            high,
            key,
            self.preset.sampling.key_strength,
            self.scale_lock,
            rules.phrase_grid(notes, self.rep.steps_per_beat),
        )

    @property
    def idle(self) -> bool:
        """Nothing to answer and nothing being answered."""
        return self.response is None and not self.phrase and not self.held

    def stop(self, beat: float) -> None:
        """Stop, panic or an error: end the response and forget the phrase not answered yet
        (after a Stop its beats are stale; after an error answering it would fail again)."""
        if self.response is not None:
            self.interrupt(beat)
        self.phrase = []
        self.held.clear()
        self._primed = None
