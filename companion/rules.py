"""What a generated part may play: its range, its key, its grid and, between voices, the
voice leading. Applied where tokens are sampled (a mask forbids, a bias discourages), never
by editing what the model played.

- Range: each part has [low, high] (a preset's `range`, else by voice name from Bach's 382
  chorales, else by General MIDI program); a note outside it is never sampled.
- Key: the key of what the player played (Krumhansl-Schmuckler on its duration-weighted
  pitch classes) gives out-of-key pitches a bias of `-key_strength` nats on top of the
  model's logits, after temperature; `scale_lock` forbids them instead.
- Grid (continuations): an answer starts on a beat and every time shift lands on the 16th
  grid, or on the triplet grid where the player's phrase uses triplets; so every onset of
  the answer is on the player's grid, whatever the model's resolution.
- Voice leading (several voices): a voice may not move in parallel fifths or octaves
  (unisons included) with a voice already decided at the same step, nor cross above the
  voice above it.

When the rules together forbid everything the grammar allows (a range no note of the
chord fits), the grammar alone decides that one token: the answer goes on.
"""

from __future__ import annotations

import math

import numpy as np

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor (aeolian)

# Sounding ranges: SATB from the JSB chorales (all 382, by voice); instruments by GM
# program (orchestration handbooks' practical ranges).
VOICE_RANGES = {"soprano": (60, 81), "alto": (52, 74), "tenor": (46, 69), "bass": (36, 66)}
GM_RANGES = (  # (first program, last program, low, high)
    (0, 7, 21, 108),  # pianos
    (8, 15, 48, 96),  # chromatic percussion
    (16, 23, 36, 96),  # organs, accordion, harmonica
    (24, 31, 40, 88),  # guitars
    (32, 39, 28, 67),  # basses
    (40, 40, 55, 103),  # violin
    (41, 41, 48, 91),  # viola
    (42, 42, 36, 76),  # cello
    (43, 43, 28, 67),  # contrabass
    (44, 51, 28, 103),  # string sections, harp, timpani
    (52, 54, 40, 81),  # choir, voice
    (55, 55, 36, 96),  # orchestra hit
    (56, 56, 54, 82),  # trumpet
    (57, 57, 40, 72),  # trombone
    (58, 58, 28, 58),  # tuba
    (59, 63, 36, 84),  # muted trumpet, horn, brass sections
    (64, 64, 56, 87),  # soprano sax
    (65, 65, 49, 81),  # alto sax
    (66, 66, 44, 76),  # tenor sax
    (67, 67, 36, 69),  # baritone sax
    (68, 69, 58, 93),  # oboe, english horn (written range, sounding approx.)
    (70, 70, 34, 75),  # bassoon
    (71, 71, 50, 94),  # clarinet
    (72, 72, 74, 108),  # piccolo
    (73, 73, 60, 96),  # flute
    (74, 79, 60, 96),  # recorder, pan flute, whistle, ocarina
    (80, 103, 36, 96),  # synth leads, pads, effects
    (104, 111, 48, 84),  # ethnic
    (112, 127, 36, 84),  # percussive, sound effects
)


def default_range(name: str, program: int) -> tuple[int, int]:
    """A part's range when its preset does not give one: by voice name, else by program."""
    for voice, rng in VOICE_RANGES.items():
        if voice in name.lower():
            return rng
    for first, last, low, high in GM_RANGES:
        if first <= program <= last:
            return low, high
    return 21, 108


# ---- key ---------------------------------------------------------------------------------
def _zscored(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


# the 24 keys' profiles, z-scored, major keys first, tonic 0..11 (one matmul per estimate)
_KEYS = [(t, m) for m in ("major", "minor") for t in range(12)]
_KEY_PROFILES = _zscored(
    np.stack([np.roll(ref, t) for ref in (MAJOR_PROFILE, MINOR_PROFILE) for t in range(12)])
)


def key_from_profile(profile) -> tuple[int, str, float]:
    """(tonic pitch class, "major" | "minor", r) of a 12-bin pitch-class profile: the best
    Pearson r with the 24 rotations of the Krumhansl-Kessler profiles (ties: major before
    minor, lower tonic first). A flat profile (no notes) is (0, "major", nan)."""
    x = np.asarray(profile, dtype=np.float64)
    if np.ptp(x) == 0:
        return 0, "major", math.nan
    r = _KEY_PROFILES @ _zscored(x)
    best = int(np.argmax(r))
    return _KEYS[best][0], _KEYS[best][1], float(r[best])


def pitch_class_profile(notes) -> np.ndarray:
    """Total duration (beats) of each pitch class of `Note`s; counts if every duration
    is 0."""
    prof = np.zeros(12)
    for n in notes:
        prof[n.pitch % 12] += n.duration
    if prof.sum() <= 0:
        for n in notes:
            prof[n.pitch % 12] += 1.0
    return prof


def scale_pcs(tonic: int, mode: str) -> frozenset[int]:
    """The 7 pitch classes of the key (major: ionian, minor: natural minor, aeolian)."""
    if mode not in ("major", "minor"):
        raise ValueError(f"mode must be 'major' or 'minor' (received {mode!r})")
    steps = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    return frozenset((tonic + s) % 12 for s in steps)


def key_bias(pitches: np.ndarray, key: tuple[int, str] | None, strength: float) -> np.ndarray:
    """Per pitch: 0 in the key, -strength outside it (-inf for a scale lock)."""
    if key is None or strength == 0:
        return np.zeros(len(pitches))
    inside = np.isin(np.asarray(pitches) % 12, sorted(scale_pcs(*key)))
    return np.where(inside, 0.0, -strength)


# ---- continuations over events -----------------------------------------------------------
def phrase_grid(notes, steps_per_beat: int) -> frozenset[int]:
    """Positions in the beat (in steps of 1/steps_per_beat) an answer may land on: the 16th
    grid, plus the eighth-triplet grid when at least a tenth of the phrase's onsets are on
    it and off the 16th grid. A grid the resolution cannot hold leaves every position."""
    r = steps_per_beat
    if r % 4:
        return frozenset(range(r))
    allowed = set(range(0, r, r // 4))
    if r % 3 == 0 and notes:
        phases = [round((n.onset % 1.0) * r) % r for n in notes]
        triplets = sum(p % (r // 3) == 0 and p not in allowed for p in phases)
        if triplets >= 0.1 * len(phases):
            allowed |= set(range(0, r, r // 3))
    return frozenset(allowed)


class EventsRules:
    """Masks and biases over an `events` vocabulary for one answer (see the module doc).

    `apply(decoder)` -> (mask, bias) for the next token: the decoder's grammar and the
    part's range, key and grid."""

    def __init__(
        self,
        rep,
        low: int,
        high: int,
        key: tuple[int, str] | None = None,
        key_strength: float = 0.0,
        scale_lock: bool = False,
        grid: frozenset[int] | None = None,
    ):
        self.rep = rep
        v = rep.vocab_size
        pitches = np.arange(128)
        on = slice(rep.note_on_offset, rep.note_on_offset + 128)
        self.static = np.ones(v, dtype=bool)
        self.static[on] = (pitches >= low) & (pitches <= high)
        self.bias = np.zeros(v)
        strength = math.inf if scale_lock else key_strength
        kb = key_bias(pitches, key, strength)
        self.static[on] &= np.isfinite(kb)
        self.bias[on] = np.where(np.isfinite(kb), kb, 0.0)
        self.grid = grid
        r = rep.params.resolution
        self.shift_steps = np.arange(1, rep.params.max_shift + 1)
        self.shifts = slice(rep.shift_offset, rep.shift_offset + rep.params.max_shift)
        self.velocities = slice(rep.velocity_offset, v)
        self.on = on
        self.r = r

    def apply(self, decoder) -> tuple[np.ndarray, np.ndarray]:
        grammar = decoder.allowed()
        mask = grammar & self.static
        if self.grid is not None:
            land = (decoder.step + self.shift_steps) % self.r
            mask[self.shifts] &= np.isin(land, sorted(self.grid))
        if not mask[self.on].any():  # a velocity change would only lead to a forbidden note
            mask[self.velocities] = False
        if not mask.any():
            mask = grammar
        return mask, self.bias


# ---- voices ------------------------------------------------------------------------------
def voice_leading_mask(
    candidates: np.ndarray,
    prev_self: int | None,
    decided: list[tuple[int | None, int | None]],
    above: int | None,
) -> np.ndarray:
    """Which candidate pitches a voice may take at this step.

    `prev_self`: its pitch at the step before (None = silent); `decided`: (before, now) of
    each voice already decided at this step (soprano, then the voices above this one);
    `above`: the pitch of the voice just above now (None = silent). Forbidden: parallel
    fifths and octaves/unisons (both voices move, the same way, the same interval class 0
    or 7 before and now) with any decided voice, and sounding above the voice above."""
    c = np.asarray(candidates)
    ok = np.ones(len(c), dtype=bool)
    if above is not None:
        ok &= c <= above
    if prev_self is None:
        return ok
    for before, now in decided:
        if before is None or now is None or before == now:
            continue
        interval = (before - prev_self) % 12
        if interval not in (0, 7):
            continue
        same_way = np.sign(c - prev_self) == np.sign(now - before)
        ok &= ~(same_way & (c != prev_self) & ((now - c) % 12 == interval))
    return ok
