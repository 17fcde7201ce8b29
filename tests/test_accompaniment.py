"""Accompany, harmonize and jam turn-taking on a virtual clock (no sleeps, no ports): the same
Performer as the live daemon, fed stamped messages, its scheduler drained at virtual times.
Models: the shipped chorale (multitrack-step) and folk (token-step) from models/zoo."""

from dataclasses import replace

import pytest

from midi_companion import presets
from midi_companion.clock import InternalClock
from midi_companion.offline import VirtualTime, next_time, perform
from midi_companion.performer import Performer
from midi_companion.scheduler import Scheduler
from midi_companion.score import Note, Score

TICK_NS = 2_000_000
SOPRANO = [67, 69, 71, 72, 74, 72, 71, 69, 67, 66, 67]

pytestmark = pytest.mark.skipif(
    not (presets.zoo_dir() / "chorale.onnx").is_file()
    or not (presets.zoo_dir() / "folk.onnx").is_file(),
    reason="the shipped models are not in models/zoo",
)


class Stage:
    """A Performer on a virtual clock; `play_until(ns)` advances time tick by tick."""

    def __init__(self, preset, seed=1, tolerance_ns=10**15, speculate="thread"):
        self.now = VirtualTime()
        self.clock = InternalClock(bpm=preset.timing.bpm, beats_per_bar=4, now_ns=self.now)
        self.clock.start(at_ns=0)
        self.sent: list[tuple[int, tuple[int, ...]]] = []
        self.scheduler = Scheduler(
            lambda m: self.sent.append((self.now.ns, tuple(m))),
            now_ns=self.now,
            tolerance_ns=tolerance_ns,
        )
        self.performer = Performer(
            preset, self.scheduler, self.clock, seed=seed, provider="cpu", speculate=speculate
        )
        self.inputs: list[tuple[int, tuple[int, ...]]] = []

    def at(self, beat: float) -> int:
        return self.clock.time_at(beat)

    def note(self, onset: float, pitch: int, length: float) -> None:
        self.inputs += [
            (self.at(onset), (0x90, pitch, 90)),
            (self.at(onset + length), (0x80, pitch, 0)),
        ]
        self.inputs.sort(key=lambda m: (m[0], m[1][0] == 0x90))

    def play_until(self, beat: float, handle=None) -> None:
        """Play on to `beat`; `handle(t, msg)` in place of the performer's, if given."""
        end = self.at(beat)
        while self.now.ns < end:
            while self.inputs and self.inputs[0][0] <= self.now.ns:
                (handle or self.performer.handle)(*self.inputs.pop(0))
            self.performer.tick(self.now.ns)
            self.scheduler.run_pending(self.now.ns)
            self.now.ns = next_time(
                self.now.ns, self.scheduler, self.inputs[0][0] if self.inputs else None
            )

    def ons(self, channels, since=0, until=None):
        return [
            (t, m)
            for t, m in self.sent
            if m[0] & 0xF0 == 0x90
            and m[2] > 0
            and m[0] & 0x0F in channels
            and t >= since
            and (until is None or t < until)
        ]

    def finish(self) -> None:
        self.performer.stop_sound(self.now.ns)
        self.scheduler.stop()


def _preset(name, **changes):
    p = presets.load(name)
    timing = changes.pop("timing", {})
    return replace(p, timing=replace(p.timing, **timing), **changes)


def _voices(preset):
    return {t.channel - 1 for t in preset.tracks}


def _balanced(sent):
    """Every note-on has its note-off: nothing is left sounding."""
    sounding = set()
    for _, m in sent:
        key = (m[0] & 0x0F, m[1])
        if m[0] & 0xF0 == 0x90 and m[2] > 0:
            assert key not in sounding, f"note-on while sounding: {key}"
            sounding.add(key)
        elif m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0):
            sounding.discard(key)
    return not sounding


def _harmonize(offset: float):
    """The soprano in quarter notes, each `offset` grid steps from its grid line."""
    preset = _preset("chorale")
    stage = Stage(preset)
    start = 2.0 + offset * preset.timing.grid
    for i, pitch in enumerate(SOPRANO):
        stage.note(start + i, pitch, 0.9)
    stage.play_until(start + len(SOPRANO) + 1)
    stage.finish()
    return stage, preset, [stage.at(start + i) for i in range(len(SOPRANO))]


def test_harmonize_answers_every_lead_note_at_once_on_or_off_the_grid():
    """Lead notes on, a fifth of a grid step after, or 0.3 of one before their grid line:
    the voices that change sound with the note (not on a later grid line), and the same
    harmony comes out whichever way the player leaned."""
    answers = []
    for offset in (0.0, 0.2, -0.3):
        stage, preset, leads = _harmonize(offset)
        voices = _voices(preset)
        half_step = (stage.at(preset.timing.grid) - stage.at(0)) // 2
        answered = 0
        for t in leads:
            ons = stage.ons(voices, t, t + half_step)
            assert all(u - t < TICK_NS for u, _ in ons), f"offset {offset}: late answer"
            answered += bool(ons)
        assert answered >= len(leads) // 2, f"offset {offset}: {answered} answers"
        assert {m[0] & 0x0F for _, m in stage.ons(voices)} == voices
        assert _balanced(stage.sent)
        answers.append([m for _, m in stage.ons(voices)])
    assert answers[0] == answers[1] == answers[2]


def test_harmonize_sounds_every_voice_under_every_lead_note():
    preset = _preset("chorale")
    voices = _voices(preset)
    stage = Stage(preset)
    for i, pitch in enumerate(SOPRANO):
        stage.note(1.0 + i, pitch, 0.95)
    for i in range(len(SOPRANO)):
        stage.play_until(1.0 + i + 0.5)  # the middle of lead note i
        sounding = set()
        for _, m in stage.sent:
            key = (m[0] & 0x0F, m[1])
            if m[0] & 0xF0 == 0x90 and m[2] > 0:
                sounding.add(key)
            elif m[0] & 0xF0 == 0x80:
                sounding.discard(key)
        assert {ch for ch, _ in sounding} == voices, f"lead note {i}: {sorted(sounding)}"
    stage.finish()
    assert _balanced(stage.sent)


def test_a_second_lead_note_in_the_same_step_is_harmonized_again():
    """A chord played as two note-ons in one grid step: the step is generated again with
    both, and nothing from the first answer is left hanging."""
    preset = _preset("chorale")
    stage = Stage(preset)
    stage.note(2.0, 67, 1.0)
    stage.note(2.02, 74, 1.0)
    mode = stage.performer.mode
    step = round(2.0 / preset.timing.grid)
    stage.play_until(2.1)
    assert stage.ons(_voices(preset), stage.at(2.0), stage.at(2.0) + TICK_NS + 1)
    assert next(c.lead for c in mode.history if c.step == step) == {67, 74}
    stage.play_until(4.0)
    stage.finish()
    assert _balanced(stage.sent)


def test_plain_accompaniment_plays_on_the_grid_and_is_deterministic():
    preset = _preset("chorale", harmonize=False)
    score = Score.from_notes(
        [Note(i * 1.0, p, 1.0, 90) for i, p in enumerate(SOPRANO)], bpm=preset.timing.bpm
    )
    a, b = perform(preset, score, seed=3), perform(preset, score, seed=3)
    assert [[(n.onset, n.pitch) for n in t.notes] for t in a.tracks] == [
        [(n.onset, n.pitch) for n in t.notes] for t in b.tracks
    ]
    generated = a.tracks[1:]
    assert [t.channel for t in generated] == sorted(_voices(preset))
    grid = preset.timing.grid
    for t in generated:
        assert t.notes, f"{t.name} is silent"
        for n in t.notes:
            assert abs(n.onset / grid - round(n.onset / grid)) < 1e-6, (t.name, n.onset)
            assert n.duration > 0


def test_jam_accompanies_then_solos_then_hands_back():
    preset = _preset("jam", timing={"bars": 1, "silence_beats": 2.0})
    voices = _voices(preset)
    solo = preset.solo_tracks[0].channel - 1
    stage = Stage(preset)
    for i, pitch in enumerate(SOPRANO[:6]):
        stage.note(1.0 + i * 0.5, pitch, 0.45)
    last_off = 1.0 + 5 * 0.5 + 0.45
    resume = 12.0
    stage.note(resume, 67, 0.5)
    stage.note(resume + 0.5, 69, 0.5)
    stage.play_until(resume + 3)
    stage.finish()
    assert stage.ons(voices, stage.at(1.0), stage.at(last_off)), "no accompaniment"
    solo_ons = stage.ons({solo})
    assert solo_ons, "no solo after the player stopped"
    assert all(stage.at(last_off + 2.0) - TICK_NS <= t < stage.at(resume) for t, _ in solo_ons)
    # while the solo plays the accompaniment is silent; after the hand-back it returns
    assert not stage.ons(voices, stage.at(last_off + 2.0) + TICK_NS, stage.at(resume))
    assert stage.ons(voices, stage.at(resume))
    assert _balanced(stage.sent)


def test_a_harmony_generated_late_is_played_late_not_dropped():
    """The player's note was stamped 30 ms before the performer got to it (a loaded
    machine): the voices still sound, at once, and the late policy drops nothing."""
    preset = _preset("chorale")
    stage = Stage(preset, tolerance_ns=10_000_000)
    stage.play_until(2.0)
    stamp = stage.now.ns
    stage.now.ns += 30_000_000
    stage.performer.handle(stamp, (0x90, 67, 90))
    stage.scheduler.run_pending(stage.now.ns)
    assert stage.ons(_voices(preset), stage.now.ns), "no voice answered the note"
    assert stage.scheduler.summary()["late_dropped"] == 0
    stage.finish()


MISMATCHES = {
    # an accompany preset playing a continuation model
    "accompany-folk": ('model = "folk"\nmode = "accompany"\n', "needs a multitrack-step model"),
    # a continue preset playing the accompanist
    "continue-chorale": ('model = "chorale"\nmode = "continue"\n', "cannot continue a phrase"),
    # the chorale has three voices; this preset gives it two tracks
    "two-tracks": (
        'model = "chorale"\nmode = "accompany"\n'
        '[[tracks]]\nname = "a"\nchannel = 2\n[[tracks]]\nname = "b"\nchannel = 3\n',
        "lists 2 track(s) but chorale.onnx generates 3 (alto, tenor, bass)",
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_model_that_does_not_fit_the_preset_is_one_line_exit_2(tmp_path, case):
    import subprocess
    import sys

    text, fragment = MISMATCHES[case]
    preset = tmp_path / f"{case}.toml"
    preset.write_text(text)
    Score.from_notes([Note(0.0, 67, 1.0, 90), Note(1.0, 69, 1.0, 90)]).to_midi(tmp_path / "in.mid")
    command = "accompany" if "accompany" in text else "continue"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "midi_companion",
            command,
            str(preset),
            str(tmp_path / "in.mid"),
            "-o",
            str(tmp_path / "out.mid"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert fragment in r.stderr and "onnx" in r.stderr, r.stderr


def test_harmonize_holds_the_voices_when_the_lead_stops_exactly_on_a_grid_line():
    """A lead note-off on a step's start takes back the step committed ahead while the note
    still sounded: in the rest the voices hold (nothing is struck), and the model is told
    the soprano rests, not that it still sounds."""
    preset = _preset("chorale")
    voices = _voices(preset)
    struck_in_rests = 0
    for seed in range(3):
        stage = Stage(preset, seed=seed)
        rests = []
        for i, pitch in enumerate(SOPRANO):
            stage.note(2.0 + 1.5 * i, pitch, 1.0)  # each note ends on a grid line ...
            rests.append(2.0 + 1.5 * i + 1.0)  # ... and half a beat of rest follows
        stage.play_until(2.0 + 1.5 * len(SOPRANO) + 2)
        stage.finish()
        assert _balanced(stage.sent)
        for r in rests:
            struck_in_rests += len(stage.ons(voices, stage.at(r), stage.at(r + 0.5)))
    assert struck_in_rests == 0


# ---- speculation (harmonize answers from steps computed ahead) -----------------------------


def test_a_speculated_step_is_the_step_itself_for_every_candidate():
    """Accompanist.speculate over many leads in one batch: each member's rows, model state,
    key profile and voices equal what step() plays from the same state and generator."""
    import numpy as np

    from midi_companion.modes import build

    preset = _preset("chorale")
    now = VirtualTime()
    clock = InternalClock(bpm=preset.timing.bpm, beats_per_bar=4, now_ns=now)
    sched = Scheduler(lambda m: None, now_ns=now)
    acc = build(preset, sched, clock, np.random.default_rng(0), "cpu").mode.acc
    for pitch in (67, 69, 71):  # some history: a key profile, voices to lead from
        acc.step({pitch}, np.random.default_rng(pitch))
    snap = acc.snapshot()
    leads = [frozenset({p}) for p in range(64, 77)] + [frozenset({71, 74})]
    spec = acc.speculate(snap, leads, np.random.default_rng(7))
    for i, lead in enumerate(leads):
        acc.restore(snap)
        rows = acc.step(lead, np.random.default_rng(7))
        after = acc.snapshot()
        assert rows == spec.rows[i]
        acc.restore(snap)
        assert acc.adopt(spec, i) == rows
        for name, value in after[0].items():
            np.testing.assert_allclose(acc.engine.state[name], value, atol=1e-5)
        np.testing.assert_allclose(acc.logits, after[1], atol=1e-4)
        assert (acc.profile == after[2]).all() and acc.prev == after[3]
    sched.stop()


def test_harmonize_answers_from_speculation_and_plays_the_same_notes(monkeypatch):
    """Live (speculating) and offline (not) play the same harmony; live, nearly every lead
    note of a melody it never saw is answered by a lookup."""
    lead = Score.from_notes([Note(2.0 + i, p, 0.9, 80) for i, p in enumerate(SOPRANO)], bpm=100.0)
    preset = _preset("chorale")
    performers, init = [], Performer.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        performers.append(self)

    monkeypatch.setattr(Performer, "__init__", keep)
    played = {}
    for speculate in (True, False):
        out = perform(preset, lead, seed=3, speculate=speculate)
        played[speculate] = [sorted(t.notes) for t in out.tracks[1:]]
        mode = performers[-1].mode
        if speculate:
            assert mode.hits >= len(SOPRANO) - 2 and mode.misses <= 2, (mode.hits, mode.misses)
        else:
            assert mode.hits == 0
    assert played[True] == played[False]


def test_the_answers_armed_for_a_lead_note_are_the_very_messages_its_hit_sends():
    """Accompaniment.armed, as the port process sends it the moment a lead note comes in
    (companion/armed.py): byte for byte what the daemon's hit then sends, for notes before
    their grid line (the step not committed yet) and after it (committed ahead: taken
    back), legato or not; a note it does not answer gets no armed answer."""
    preset = _preset("chorale")
    stage = Stage(preset, speculate="inline")
    grid = preset.timing.grid
    for i, pitch in enumerate(SOPRANO):
        onset = 2.0 + i + (0.4 if i % 2 else -0.3) * grid
        stage.note(onset, pitch, 1.0 if i % 3 == 0 else 0.8)  # some legato
    compared = []

    def handle(t, msg):
        got = stage.performer.armed(t) if msg[0] == 0x90 else None
        mark = len(stage.sent)
        stage.performer.handle(t, msg)
        stage.scheduler.run_pending(t)
        if got is None:
            return
        until, channel, voices, answers = got
        assert until > t and channel is None and set(voices) == _voices(preset)
        sent = [tuple(m) for tt, m in stage.sent[mark:] if tt == t]
        armed = answers.get(msg[1], b"")
        armed = [tuple(armed[i : i + 3]) for i in range(0, len(armed), 3)]
        # live, each voice is sent as it is scheduled (its release, then its new note), as
        # armed; on this virtual clock they share one due time, where releases go first
        compared.append((sorted(armed, key=lambda m: m[0] & 0xF0 != 0x80), sent))

    stage.play_until(2.0 + len(SOPRANO) + 1, handle)
    stage.finish()
    assert len(compared) >= len(SOPRANO) - 2
    assert all(armed == sent for armed, sent in compared), compared
    assert sum(bool(sent) for _, sent in compared) >= len(SOPRANO) // 2  # voices did move
