"""Bad input, fuzzed (issue 12): whatever arrives on the MIDI input, the daemon plays on, its
note ledger matches what the synth was sent, and after panic nothing sounds.

The real Daemon (its loop turn `step`, Program Change handling and recording included) runs
on virtual time with a capturing output; its scheduler is dispatched by hand, so a case takes
a few milliseconds. One daemon per configuration plays every case, one after another (loading
models per case would cost 100x more), so a case also meets whatever state the ones before it
left: a failure's shrunk example may need them, and Hypothesis may then call it flaky; the
message still shows what failed. Hypothesis draws streams of stamped messages: random
bytes, SysEx of any length, running status (data bytes with no status), orphan note-offs,
velocity-0 note-ons, repeated note-ons, MIDI clock at absurd rates, Start/Stop/Continue
mid-song, Song Position Pointer jumps, controls (panic, sustain, the mod wheel) and Program
Changes to presets that are missing or broken.

After each case:
- no error was caught by the daemon's safety net (`Daemon.errors == 0`: bad input is
  ignored by design, not by accident);
- the ledger is balanced: the notes it says are sounding are exactly those a synth fed
  everything sent so far holds;
- after panic (CC 123 from the player) the synth holds nothing, and a stretch of silence
  after it starts nothing new.

Cases per CI run: FUZZ_CASES (default 10,000, split over the configurations below); more with
`FUZZ_CASES=100000 python -m pytest tests/test_fuzz.py` (docs/RELIABILITY.md has the figures).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import mido
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from midi_companion import presets
from midi_companion.daemon import Daemon
from midi_companion.ledger import note_kind
from midi_companion.offline import VirtualTime
from midi_companion.ports import LoopbackInput, OutputPort

ZOO = presets.zoo_dir()
CASES = int(os.environ.get("FUZZ_CASES", "10000"))
MS = 1_000_000
TICK_NS = 5 * MS  # the live loop turns at least this often
needs_zoo = pytest.mark.skipif(
    not all((ZOO / f"{m}.onnx").is_file() for m in ("folk", "chorale")),
    reason="the shipped models are not in models/zoo",
)

# (preset, clock, share of the cases)
# The accompanying modes run a model step per grid step while the player plays, so most of
# the cases go to the continuation, whose input path is the same.
CONFIGS = [
    ("folk", "internal", 0.5),
    ("folk", "midi", 0.45),
    ("chorale", "midi", 0.02),
    ("jam", "internal", 0.03),
]

# ---- what arrives: a byte string decoded into stamped messages ---------------------------------
# Hypothesis draws one byte string per case (cheap to draw, shrinks well) and `decode` turns it
# into (gap before, message) events, so a case costs milliseconds and 10,000 fit in CI.

PITCHES = (60, 62, 64, 67)  # few pitches: repeated note-ons and orphan note-offs are common
# time before a message: a burst, a tick at absurd rates (1 ns, 1 us, 1 ms), at 120 bpm, a
# sixteenth; None: a long one (a beat and a half, or a phrase gap), from the next byte
GAPS = (0, 1, 1000, MS, 20_833_333, 20_833_333, 125 * MS, None)
LONG_GAPS = (750 * MS, 2000 * MS)
TRANSPORT = (0xFA, 0xFB, 0xFC)  # Start, Continue, Stop
CONTROLS = (1, 64, 123, 7)  # mod wheel (temperature), sustain, panic, volume
OTHER = ([0xE0, 0, 64], [0xD0, 40], [0xA0, 60, 10], [0xFE], [0xFF], [0xF6], [0xF4], [0xF9])


class Bytes:
    """A cursor over the drawn bytes; zeros once they run out."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def __call__(self) -> int:
        self.i += 1
        return self.data[self.i - 1] if self.i <= len(self.data) else 0

    @property
    def left(self) -> bool:
        return self.i < len(self.data)

    def pitch(self) -> int:
        b = self()
        return PITCHES[b % 4] if b & 0x80 else b


def decode(data: bytes) -> list[tuple[int, list[int]]]:
    """(gap_ns, message) events from `data`: two bytes choose the gap and the kind, the
    next ones fill the message."""
    take, events = Bytes(data), []
    while take.left:
        head = take()
        gap, kind = GAPS[head >> 5], head & 0x1F
        if gap is None:
            gap = LONG_GAPS[take() % 2]
        if kind < 6:  # note-on, velocity from the byte (0: a note-off)
            msg = [0x90 | take() & 0x0F, take.pitch(), take() & 0x7F]
        elif kind < 8:  # note-off, often for a note never played
            msg = [0x80 | take() & 0x0F, take.pitch(), 0]
        elif kind < 14:  # MIDI clock, at the gap's rate
            msg = [0xF8]
        elif kind == 14:
            msg = [TRANSPORT[take() % 3]]
        elif kind == 15:  # Song Position Pointer, sometimes cut short
            msg = [0xF2, take() & 0x7F, take() & 0x7F][: 1 + take() % 4]
        elif kind == 16:  # SysEx of any length, ended or not
            n = take() * 3
            msg = [0xF0, *(take() & 0x7F for _ in range(n))] + [0xF7] * (take() % 2)
        elif kind == 17:  # random bytes, any length (0 to 6)
            msg = [take() for _ in range(take() % 7)]
        elif kind == 18:  # running status: data bytes with no status byte
            msg = [take() & 0x7F for _ in range(1 + take() % 3)]
        elif kind < 23:  # a control: panic, sustain, the mod wheel, any other
            b = take()
            cc = CONTROLS[b % 4] if b & 0x80 else b & 0x7F
            msg = [0xB0 | take() & 0x0F, cc, take() & 0x7F][: 3 - (take() % 8 == 0)]
        elif kind < 25:  # Program Change, to presets missing, broken or out of range
            msg = [0xC0 | take() & 0x0F, take() & 0x7F][: 2 - (take() % 8 == 0)]
        elif kind < 28:
            msg = list(OTHER[take() % len(OTHER)])
        else:  # a note-on then at once its repeat
            msg = [0x90 | take() & 0x0F, take.pitch(), 1 + take() % 127]
            events.append((gap, msg))
            gap = 0
        events.append((gap, msg))
    return events


stream = st.binary(min_size=1, max_size=64).map(decode)


# ---- the rig -----------------------------------------------------------------------------------


class Capture(OutputPort):
    """An output that keeps what it is sent, and a synth's view of it: the keys held."""

    def __init__(self):
        super().__init__("capture")
        self.sent: list[tuple[int, ...]] = []
        self.held: set[tuple[int, int]] = set()

    def _send(self, msg) -> None:
        msg = tuple(msg)
        self.sent.append(msg)
        kind = note_kind(msg)
        if kind == "on":
            self.held.add((msg[0] & 0x0F, msg[1]))
        elif kind == "off":
            self.held.discard((msg[0] & 0x0F, msg[1]))
        elif msg[0] & 0xF0 == 0xB0 and msg[1] == 123:
            self.held = {k for k in self.held if k[0] != msg[0] & 0x0F}


class Rig:
    """One Daemon on virtual time: `play(stream)` feeds it, turning its loop and dispatching
    its scheduler at least every TICK_NS of virtual time, as the live loop does."""

    def __init__(self, preset, clock_kind: str, record: Path):
        self.now = VirtualTime()
        self.now.ns = 1_000 * MS
        self.out = Capture()
        self.daemon = Daemon(
            preset,
            clock_kind=clock_kind,
            seed=0,
            quiet=True,
            status_stream=io.StringIO(),
            now_ns=self.now,
            provider="cpu",
            record=record,
        )
        self.daemon.attach(LoopbackInput("fuzz"), self.out, thread=False)
        self.scheduler = self.daemon.scheduler
        self.cases = 0

    def advance(self, ns: int, tick_ns: int = TICK_NS) -> None:
        end = self.now.ns + ns
        while self.now.ns < end:
            self.now.ns = min(end, self.now.ns + tick_ns)
            self.turn()

    def turn(self) -> None:
        self.daemon.step(0)
        self.scheduler.run_pending(self.now.ns)

    def play(self, events) -> None:
        for gap_ns, msg in events:
            self.advance(gap_ns)
            self.daemon.inp.queue.put((self.now.ns, list(msg)))
            self.turn()

    def panic(self) -> None:
        """The player's panic (CC 123 on channel 1), as any case might send it."""
        self.play([(0, [0xB0, 123, 0])])


def check_case(rig: Rig, events) -> None:
    rig.play(events)
    d = rig.daemon
    assert d.errors == 0, f"the daemon caught an error: {d.status_stream.getvalue()}"
    assert set(rig.scheduler.ledger.sounding()) == rig.out.held, "the ledger is not balanced"
    rig.panic()
    assert not rig.out.held, f"sounding after panic: {sorted(rig.out.held)}"
    assert not rig.scheduler.ledger.sounding()
    sent, late = len(rig.out.sent), rig.scheduler.stats.late_dropped
    # silence after panic: nothing starts by itself (turns 100 ms apart: a note-on generated
    # meanwhile is either sent, or dropped as late and counted; either shows)
    rig.advance(2000 * MS, tick_ns=100 * MS)
    started = [m for m in rig.out.sent[sent:] if note_kind(m) == "on"]
    assert not started, f"notes began after panic with no input: {started}"
    assert rig.scheduler.stats.late_dropped == late, "notes were generated after panic"
    assert not rig.out.held
    rig.cases += 1


@pytest.fixture(autouse=True)
def program_changes_to_missing_presets(tmp_path_factory, monkeypatch):
    """Program Change N picks the Nth preset: here one whose model is missing, one whose file
    is gone and one with a typo; any other number is out of range."""
    d = tmp_path_factory.mktemp("presets")
    (d / "a-missing-model.toml").write_text('model = "no-such-model"\nmode = "continue"\n')
    (d / "c-typo.toml").write_text('model = "folk"\nmode = "continue"\ntempratur = 1\n')
    listed = [d / "a-missing-model.toml", d / "b-gone.toml", d / "c-typo.toml"]
    monkeypatch.setattr(presets, "available", lambda: listed)


@needs_zoo
@pytest.mark.parametrize(("name", "clock_kind", "share"), CONFIGS)
def test_any_input_leaves_the_ledger_balanced_and_panic_silent(name, clock_kind, share, tmp_path):
    record = tmp_path / "take.mid"
    rig = Rig(presets.load(name), clock_kind, record)
    n = max(1, round(CASES * share))

    @settings(
        max_examples=n,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(stream)
    def case(events):
        check_case(rig, events)

    try:
        case()
    finally:
        rig.daemon.shutdown()
    assert rig.cases >= n
    assert not rig.out.held
    mido.MidiFile(record)  # the recording of all that is a readable MIDI file
