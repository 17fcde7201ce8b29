"""The performer's input handling: the trigger CC, the sustain pedal, the input channel, the
temperature CC, a failed preset switch, and the demo. Driven on a virtual clock (as the
offline commands are) with the shipped folk model: what it sends is exact, no sleeps."""

from __future__ import annotations

import io
from dataclasses import replace

import mido
import pytest

from midi_companion import cli, presets
from midi_companion.clock import InternalClock
from midi_companion.daemon import Daemon
from midi_companion.offline import VirtualTime, next_time
from midi_companion.performer import Performer
from midi_companion.ports import loopback_pair
from midi_companion.scheduler import Scheduler

ZOO = presets.zoo_dir()
pytestmark = pytest.mark.skipif(
    not (ZOO / "folk.onnx").is_file(), reason="the shipped models are not in models/zoo"
)
BPM = 120.0
NS_PER_BEAT = int(60e9 / BPM)


class Stage:
    """A Performer on a virtual clock; `sent` is (t_ns, msg) of everything it played."""

    def __init__(self, preset, tolerance_ns: int = 10**15):
        self.now = VirtualTime()
        self.clock = InternalClock(bpm=BPM, beats_per_bar=4, now_ns=self.now)
        self.clock.start(at_ns=0)
        self.sent: list[tuple[int, tuple[int, ...]]] = []
        self.sched = Scheduler(
            lambda m: self.sent.append((self.now.ns, tuple(m))),
            now_ns=self.now,
            tolerance_ns=tolerance_ns,
        )
        self.performer = Performer(preset, self.sched, self.clock, seed=0, provider="cpu")
        self.answer_channels = {ch for o in self.performer.outputs for ch in o.channels}

    def send(self, beat: float, msg) -> None:
        self.until(beat)
        self.performer.handle(self.now.ns, msg)

    def phrase(self, start: float, channel: int = 0) -> None:
        for i, pitch in enumerate((67, 69, 71, 72)):
            self.send(start + i * 0.5, (0x90 | channel, pitch, 90))
            self.send(start + i * 0.5 + 0.45, (0x80 | channel, pitch, 0))

    def until(self, beat: float) -> None:
        end = int(beat * NS_PER_BEAT)
        while self.now.ns < end:
            self.performer.tick(self.now.ns)
            self.sched.run_pending(self.now.ns)
            self.now.ns = min(next_time(self.now.ns, self.sched, None), end)
        self.performer.tick(self.now.ns)
        self.sched.run_pending(self.now.ns)

    def answer_onsets(self) -> list[float]:
        """Beats of the note-ons the companion played on its channels."""
        return [
            t / NS_PER_BEAT
            for t, m in self.sent
            if m[0] & 0xF0 == 0x90 and m[2] > 0 and m[0] & 0x0F in self.answer_channels
        ]


def folk(silence_beats=8.0, **controls):
    p = presets.load("folk")
    return replace(
        p,
        timing=replace(p.timing, silence_beats=silence_beats, bpm=BPM),
        controls=replace(p.controls, **controls),
    )


@pytest.mark.parametrize("prime_ms, first", [(300, 4.0), (700, 5.0), (1200, 6.0)])
def test_priming_the_model_with_the_phrase_never_makes_the_answer_late(prime_ms, first):
    """Live, priming the model with the phrase takes time (~0.1 ms a token). A phrase whose
    silence ends just before a beat left the first notes of the answer due before they were
    generated, so dropped as late (the soak's late drops). Here priming costs `prime_ms` of
    the clock (a beat is 500 ms): the model is primed a beat before the silence ends, so the
    answer starts on its beat (4.0); when even that is too little, on the next beat still
    ahead. Nothing is dropped."""
    stage = Stage(folk(silence_beats=2.0), tolerance_ns=10_000_000)
    voice = stage.performer.mode.voice
    prime = voice.prime

    def slow_prime(tokens):
        stage.now.ns += prime_ms * 1_000_000
        prime(tokens)

    voice.prime = slow_prime
    stage.phrase(0.0)  # last release at 1.95: the answer would start at 4.0, 25 ms after
    stage.until(12.0)
    onsets = stage.answer_onsets()
    assert onsets and stage.sched.stats.late_dropped == 0
    assert min(onsets) >= first - 1e-6 and min(onsets) % 1.0 < 1e-6


def test_the_trigger_cc_ends_the_phrase_now():
    waiting, triggered = Stage(folk(trigger_cc=20)), Stage(folk(trigger_cc=20))
    for stage in (waiting, triggered):
        stage.phrase(0.0)
    triggered.send(2.0, (0xB0, 20, 127))
    for stage in (waiting, triggered):
        stage.until(6.0)
    assert waiting.answer_onsets() == []  # 8 beats of silence have not passed
    assert triggered.answer_onsets() and min(triggered.answer_onsets()) >= 2.0


def test_a_trigger_cc_below_64_or_while_off_does_nothing():
    low, off = Stage(folk(trigger_cc=20)), Stage(folk(trigger_cc=0))
    for stage, msg in ((low, (0xB0, 20, 10)), (off, (0xB0, 20, 127))):
        stage.phrase(0.0)
        stage.send(2.0, msg)
        stage.until(6.0)
        assert stage.answer_onsets() == []


@pytest.mark.parametrize("ends", [True, False])
def test_releasing_the_sustain_pedal_ends_the_phrase_when_the_preset_says_so(ends):
    stage = Stage(folk(sustain_release_ends_phrase=ends))
    stage.send(0.0, (0xB0, 64, 127))  # pedal down
    stage.phrase(0.0)
    stage.send(2.5, (0xB0, 64, 0))  # pedal up
    stage.until(6.0)
    assert bool(stage.answer_onsets()) is ends


def test_the_input_channel_filters_notes_and_controls():
    stage = Stage(replace(folk(trigger_cc=20), input_channel=2))
    stage.phrase(0.0, channel=0)  # channel 1: not ours
    stage.send(2.0, (0xB0, 20, 127))
    stage.until(3.0)
    assert stage.performer.notes_in == 0 and stage.answer_onsets() == []
    stage.phrase(3.0, channel=1)  # channel 2
    stage.send(5.0, (0xB0 | 1, 20, 127))
    stage.until(9.0)
    assert stage.performer.notes_in == 4 and stage.answer_onsets()


def test_the_temperature_cc_maps_onto_the_presets_range():
    stage = Stage(folk(temperature_cc=1, temperature_range=(0.4, 1.2)))
    for value, want in ((0, 0.4), (127, 1.2), (64, 0.4 + 0.8 * 64 / 127)):
        stage.send(0.0, (0xB0, 1, value))
        assert stage.performer.mode.sampling.temperature == pytest.approx(want)


def test_a_program_change_to_a_broken_preset_keeps_the_one_playing(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text('model = "no-such-model"\nmode = "continue"\n')
    monkeypatch.setattr(presets, "available", lambda: [presets.resolve("folk"), broken])
    err = io.StringIO()
    out, inp = loopback_pair("player")[0], loopback_pair("daemon in")[1]
    daemon = Daemon(presets.load("folk"), inp, out, quiet=True, status_stream=err, provider="cpu")
    try:
        playing = daemon.performer
        daemon.switch(1)
        assert daemon.performer is playing and daemon.preset.name == "folk"
        told = err.getvalue().strip().splitlines()
        assert len(told) == 1 and "Program Change 1 ignored" in told[0], told
        assert "no-such-model" in told[0] and "Traceback" not in err.getvalue()
        daemon.switch(7)  # beyond the list: ignored, nothing breaks
        assert daemon.performer is playing
    finally:
        daemon.stopping.set()
        daemon.close()


def test_the_demo_plays_a_phrase_and_records_both_sides(tmp_path, capsys):
    import sys

    take = tmp_path / "demo.mid"
    interval = sys.getswitchinterval()  # the demo makes this process's timing real-time
    try:
        assert cli.main(["demo", "folk", "-o", str(take), "--seed", "1"]) == 0
    finally:
        sys.setswitchinterval(interval)
    mid = mido.MidiFile(take)
    names = [t.name for t in mid.tracks]
    ons = {t.name: sum(1 for m in t if m.type == "note_on" and m.velocity > 0) for t in mid.tracks}
    assert "player" in names and ons["player"] > 0
    assert sum(n for name, n in ons.items() if name != "player") > 0, ons
    assert "wrote" in capsys.readouterr().out
