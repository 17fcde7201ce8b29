"""End to end, the way a musician uses it: the daemon runs as its own process, started as a
user starts it (`python -m companion run PRESET --backend jack --quiet ...`), on a private JACK
server (tests/jack_server.py); this process plays into the daemon's input port and listens to
its output port as two python-rtmidi JACK clients (companion.jack_harness.Keyboard / Listener).

Times are perf_counter_ns stamps (the system's monotonic clock, shared with the daemon): the
keyboard stamps what it sends, the listener what arrives. With the internal clock the
daemon's "clock" event says where its beat 0 fell, so the test plays on the daemon's beats
and checks the answer against them; with --clock midi this process is the DAW.

The faults of issue 12 are here too (the last section): peers that go away and come back,
a flood of input, signals during start-up, a response and a Program Change, kill -9 and the
next start, and the soak's one-minute smoke run (benchmarks/soak.py).

The only timed assertions are the protocol's: the response begins within one beat (plus
TOL) of the phrase end, notes land on the grid within TOL, SIGTERM/Stop/hand-back release
everything within RELEASE_NS. Models: the shipped ones (models/zoo/folk.onnx,
chorale.onnx) when present, else tiny ones trained here by the project's own commands.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from midi_companion import presets
from midi_companion.jack_harness import (
    DaemonProcess,
    Keyboard,
    Listener,
    is_note_on,
    model_grid,
    pair_notes,
    preset_copy,
    sleep_until,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MS = 1_000_000
TOL = 20 * MS  # on time: the scheduler's 10 ms late tolerance, JACK's period, a loaded CPU
RELEASE_NS = 50 * MS  # SIGTERM, Stop, hand-back: everything released within this
SEED = "1"

# A multitrack (SATB) accompanist small enough to train in seconds, for when the zoo has no
# chorale model yet.
TINY_CHORALE = """
[model]
family = "multitrack-lstm"
hidden = 32
layers = 1
dec_hidden = 16
dec_embed = 8

[representation]
name = "multitrack"
grid = 0.25
low = 28
high = 92
scheme = "satb"

[data]
corpus = "music21:bach"
limit = 12
valid = 0.2
test = 0.2

[train]
batch_size = 4
seq_len = 32
lr = 3e-3
warmup = 1
max_steps = 4
eval_every = 4
seed = 1
"""


# ---- models and presets ------------------------------------------------------------------------


def _companion(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _model(name: str, config: Path, tmp_path_factory) -> Path:
    shipped = presets.zoo_dir() / f"{name}.onnx"
    if shipped.is_file():
        return shipped
    d = tmp_path_factory.mktemp(f"tiny-{name}")
    _companion("train", config, cwd=d)
    _companion("export", d / "runs" / config.stem / "best.pt", "-o", d / f"{name}.onnx", cwd=d)
    return d / f"{name}.onnx"


@pytest.fixture(scope="session")
def folk_model(jack_server, tmp_path_factory):
    """models/zoo/folk.onnx, or tiny-lstm trained and exported here."""
    return _model("folk", ROOT / "models/configs/tiny-lstm.toml", tmp_path_factory)


@pytest.fixture(scope="session")
def chorale_model(jack_server, tmp_path_factory):
    """models/zoo/chorale.onnx (multitrack-step), or a tiny one trained and exported here."""
    config = tmp_path_factory.mktemp("tiny-config") / "tiny-chorale.toml"
    config.write_text(TINY_CHORALE)
    return _model("chorale", config, tmp_path_factory)


def make_preset(tmp_path: Path, base: str, models: dict[str, Path], **changes) -> Path:
    """The shipped preset `base` with these models and changes (see jack_harness.preset_copy)."""
    return preset_copy(base, tmp_path / f"{base}-e2e.toml", models=models, **changes)


# ---- playing -----------------------------------------------------------------------------------


@contextmanager
def playing(preset: Path, *args):
    """The daemon started as a user starts it, ready, with a keyboard and a listener on its
    ports; stopped (SIGTERM) at the end if the test has not stopped it."""
    with DaemonProcess(preset, "--seed", SEED, *args) as daemon:
        daemon.ready()
        keyboard, listener = Keyboard("e2e-keyboard"), Listener("e2e-listener")
        try:
            yield daemon, keyboard, listener
            if daemon.proc.poll() is None:
                assert daemon.stop() == 0, daemon.error_text()
        finally:
            keyboard.close()
            listener.close()


def phrase(time_at, first: float, pitches, silence: float, step: float = 0.5, channel=0):
    """Notes every `step` beats from beat `first`; the last one is held so that the phrase
    end (its release + `silence`) falls half-way between two beats, far from both.
    Returns ([(due_ns, msg)], last release beat)."""
    events, beat = [], first
    for i, p in enumerate(pitches):
        end = beat + step * 0.8
        if i == len(pitches) - 1:
            end += (0.5 - (end + silence)) % 1.0
        events += [(time_at(beat), (0x90 | channel, p, 90)), (time_at(end), (0x80 | channel, p, 0))]
        beat += step
    return events, end


def first_beat(daemon, lead_ms: float = 300) -> int:
    """The first whole beat of the daemon's clock at least `lead_ms` from now."""
    return math.floor(daemon.beat_at(time.perf_counter_ns() + int(lead_ms * MS))) + 1


def off_grid_ns(t: int, beat_at, time_at, grid: float) -> int:
    """How far `t` is from the nearest grid line (beats -> time through the given clock)."""
    return abs(t - time_at(round(beat_at(t) / grid) * grid))


def assert_on_grid(errors: list[tuple[float, int]], what: str, tol: int = TOL) -> None:
    """(beat, |arrival - grid line| ns) of scheduled note-ons: all within TOL, except that a
    shared machine may stall a process or a JACK cycle now and then (with -S a late client
    delays the graph rather than losing MIDI; a clean-clone run on an idle VM once saw every
    voice of one grid line 40 ms late), so one grid line in 20, and at least one, may arrive
    up to 4 x TOL late (a stall delays every voice due then, so lines are counted, not
    notes). How close to the grid the notes land is `companion bench`'s measurement, not a
    pass/fail here."""
    off = [(round(b, 3), round(e / MS, 1)) for b, e in errors if e > tol]
    lines = {round(b, 2) for b, _ in errors}
    late_lines = {round(b, 2) for b, _ in off}
    assert len(late_lines) <= max(1, len(lines) // 20) and all(e <= 4 * tol / MS for _, e in off), (
        f"{what}: note-ons off the grid (beat, ms): {off} of {len(errors)}"
    )


def released_notes(listener):
    """Every note heard, (on, off, channel, pitch, velocity); fails on a note-on that has no
    note-off after it, showing what the listener heard on its channel around it."""
    notes, hanging = pair_notes(listener.heard)
    if hanging:
        t, ch, pitch, _ = hanging[0]
        around = [
            (round((u - t) / MS, 1), m)
            for u, m in listener.heard
            if 0x80 <= m[0] < 0xF0 and m[0] & 0x0F == ch and abs(u - t) < 2000 * MS
        ]
        pytest.fail(
            f"note-ons without their note-off (t_on, channel, pitch, velocity): "
            f"{hanging}; on channel {ch + 1} around the first (ms, message): {around}"
            f"{jack_trouble()}"
        )
    return notes


JACK_LOG: list[Path] = []


@pytest.fixture(autouse=True)
def _jack_log(jack_server):
    JACK_LOG[:] = [jack_server.log]


def jack_trouble() -> str:
    """A hint when jackd skipped clients: in its default (asynchronous) mode a client that
    misses a cycle (a loaded CPU, no realtime priority) loses that cycle's MIDI."""
    try:
        skipped = JACK_LOG[0].read_text(errors="replace").count("Process error")
    except (IndexError, OSError):
        return ""
    return (
        f" -- jackd skipped a late client {skipped} times (see {JACK_LOG[0]}): in "
        f"asynchronous mode that loses MIDI; run jackd with -S"
        if skipped
        else ""
    )


def sounding(notes, channel: int, t: int) -> bool:
    return any(ch == channel and on <= t < off for on, off, ch, _, _ in notes)


def channel_notes(notes, channels):
    return [n for n in notes if n[2] in channels]


def heard_ons(listener, channels, after: int = 0, before: int | None = None):
    """Arrival times of note-ons on `channels` (None: any) in [after, before)."""
    return [
        t
        for t, m in listener.heard
        if is_note_on(m)
        and (channels is None or m[0] & 0x0F in channels)
        and t >= after
        and (before is None or t < before)
    ]


# ---- continue -----------------------------------------------------------------------------------


def test_continue_answers_on_the_next_beat_for_its_bars_on_its_channel(tmp_path, folk_model):
    path = make_preset(tmp_path, "folk", {"model": folk_model}, timing={"bars": 1})
    p = presets.load(str(path))
    t = p.timing
    channel = p.tracks[0].channel - 1
    grid = model_grid(folk_model)
    with playing(path) as (daemon, keyboard, listener):
        beat_ns = daemon.time_at(1) - daemon.time_at(0)
        start = first_beat(daemon)
        events, last_off = phrase(daemon.time_at, start, [67, 69, 71, 72, 74, 72], t.silence_beats)
        keyboard.play(events)
        phrase_end = last_off + t.silence_beats
        response = math.floor(phrase_end) + 1  # start_on = "beat"
        end = response + t.bars * t.beats_per_bar
        sleep_until(daemon.time_at(end) + 300 * MS)
        assert daemon.stop() == 0, daemon.error_text()

    notes = released_notes(listener)
    assert notes, "the companion did not answer"
    channels = {m[0] & 0x0F for _, m in listener.heard if 0x80 <= m[0] < 0xF0}
    assert channels == {channel}, f"answered on channels {channels}, configured {channel}"
    ons = sorted(n[0] for n in notes)
    # The response begins on the beat after the phrase end, so within one beat of it ...
    assert daemon.time_at(response) - TOL <= ons[0] <= daemon.time_at(phrase_end) + beat_ns + TOL
    # ... and lasts the configured bars: into their second half, and not past their end.
    assert ons[-1] >= daemon.time_at(response + t.bars * t.beats_per_bar / 2)
    assert max(n[1] for n in notes) <= daemon.time_at(end) + TOL
    assert_on_grid(
        [(daemon.beat_at(on), off_grid_ns(on, daemon.beat_at, daemon.time_at, grid)) for on in ons],
        f"the {grid:g}-beat grid",
    )


# ---- accompany / harmonize ----------------------------------------------------------------------

SOPRANO = [72, 71, 69, 67, 69, 71, 72, 74]


def _voices(chorale_path: Path) -> list[int]:
    return [t.channel - 1 for t in presets.load(str(chorale_path)).tracks]


def test_harmonize_sounds_every_voice_under_every_lead_note_on_the_grid(tmp_path, chorale_model):
    path = make_preset(tmp_path, "chorale", {"model": chorale_model})
    voices = _voices(path)
    grid = presets.load(str(path)).timing.grid
    with playing(path) as (daemon, keyboard, listener):
        start = first_beat(daemon)
        events = []
        for i, pitch in enumerate(SOPRANO):  # eighth notes on the daemon's grid
            events += [
                (daemon.time_at(start + i / 2), (0x90, pitch, 90)),
                (daemon.time_at(start + i / 2 + 0.45), (0x80, pitch, 0)),
            ]
        leads = keyboard.play(events)[::2]
        sleep_until(leads[-1] + 500 * MS)
        assert daemon.stop() == 0, daemon.error_text()

    notes = released_notes(listener)
    for i, t in enumerate(leads):
        silent = [v + 1 for v in voices if not sounding(notes, v, t + 60 * MS)]
        assert not silent, f"lead note {i} ({SOPRANO[i]}): no voice on channel(s) {silent}"
    ons = heard_ons(listener, voices)
    assert {m[0] & 0x0F for _, m in listener.heard if is_note_on(m)} == set(voices)
    assert_on_grid(
        [(daemon.beat_at(t), off_grid_ns(t, daemon.beat_at, daemon.time_at, grid)) for t in ons],
        f"accompaniment on the {grid:g}-beat grid",
    )


def test_harmonize_answers_each_lead_note_at_once(tmp_path, chorale_model):
    """Lead notes a fifth of a grid step late (still their step): the changed voices must
    sound with each note, not on the next grid line."""
    path = make_preset(tmp_path, "chorale", {"model": chorale_model})
    voices = _voices(path)
    grid = presets.load(str(path)).timing.grid
    with playing(path) as (daemon, keyboard, listener):
        start = first_beat(daemon) + 0.2 * grid
        events = []
        for i, pitch in enumerate(SOPRANO):
            events += [
                (daemon.time_at(start + i / 2), (0x90, pitch, 90)),
                (daemon.time_at(start + i / 2 + 0.45), (0x80, pitch, 0)),
            ]
        leads = keyboard.play(events)[::2]
        sleep_until(leads[-1] + 300 * MS)
    # All three voices may hold through a lead note (a musical choice), so not every note has
    # an answer; but most do, at once, where a harmonizer that waited for the next grid line
    # (0.8 of a step after these notes) would answer only the first within TOL.
    answered = [bool(heard_ons(listener, voices, t, t + TOL)) for t in leads]
    assert sum(answered) >= len(answered) // 2, f"answered at once: {answered}"


# ---- jam ----------------------------------------------------------------------------------------


def test_jam_accompanies_then_solos_then_hands_back(tmp_path, chorale_model, folk_model):
    path = make_preset(
        tmp_path, "jam", {"model": chorale_model, "solo_model": folk_model}, timing={"bars": 1}
    )
    p = presets.load(str(path))
    voices, solo = [t.channel - 1 for t in p.tracks], p.solo_tracks[0].channel - 1
    t = p.timing
    with playing(path) as (daemon, keyboard, listener):
        beat_ns = daemon.time_at(1) - daemon.time_at(0)
        start = first_beat(daemon)
        events, last_off = phrase(daemon.time_at, start, SOPRANO[:6], t.silence_beats)
        sent = keyboard.play(events)
        phrase_end = daemon.time_at(last_off + t.silence_beats)
        end = daemon.time_at(math.floor(last_off + t.silence_beats) + 1 + t.bars * t.beats_per_bar)
        first_solo = listener.wait_for(
            lambda _, m: is_note_on(m, solo), (end - time.perf_counter_ns()) / 1e9 + 1.0
        )
        assert first_solo is not None, "no solo after the player stopped"
        resume = keyboard.play(
            [
                (time.perf_counter_ns() + 20 * MS, (0x90, 67, 90)),
                (time.perf_counter_ns() + 300 * MS, (0x80, 67, 0)),
                (time.perf_counter_ns() + 320 * MS, (0x90, 69, 90)),
                (time.perf_counter_ns() + 600 * MS, (0x80, 69, 0)),
            ]
        )[0]
        sleep_until(resume + 1000 * MS)
        assert daemon.stop() == 0, daemon.error_text()

    notes = released_notes(listener)
    for v in voices:  # accompaniment while the player plays ...
        assert heard_ons(listener, {v}, sent[0], sent[-1]), f"no accompaniment on channel {v + 1}"
    # ... a solo when they stop, with the accompaniment released ...
    assert phrase_end - TOL <= first_solo[0] <= end + TOL
    assert not heard_ons(listener, voices, phrase_end + beat_ns, resume)
    assert all(
        off <= first_solo[0] for _, off, _, _, _ in channel_notes(notes, voices) if off < resume
    )
    # ... and the solo yields when they play again, the accompaniment comes back.
    assert not heard_ons(listener, {solo}, resume + TOL), "the solo went on after the hand-back"
    assert all(off <= resume + RELEASE_NS for on, off, _, _, _ in channel_notes(notes, {solo}))
    for v in voices:
        assert heard_ons(listener, {v}, resume), (
            f"no accompaniment on channel {v + 1} after the hand-back"
        )


# ---- following the DAW's clock ----------------------------------------------------------------


class DawClock:
    """This process as the DAW: 24 ppqn MIDI clock at `bpm`, ticking from now until close();
    Start and Stop between ticks when told. Tick k is due at first + k * tick_ns."""

    def __init__(self, keyboard: Keyboard, bpm: float):
        self.keyboard = keyboard
        self.tick_ns = 60e9 / bpm / 24
        self.beat_ns = 60e9 / bpm
        self.first = time.perf_counter_ns() + 50 * MS
        self.t0 = None  # when DAW beat 0 falls (after start())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _due(self, k: int) -> int:
        return self.first + round(k * self.tick_ns)

    def _tick(self) -> None:
        k = 0
        while not self._stop.is_set():
            sleep_until(self._due(k))
            self.keyboard.send((0xF8,))
            k += 1

    def start(self, after_ns: int) -> int:
        """Start, so that beat 0 is the first tick due at least `after_ns` from now."""
        k = math.ceil((time.perf_counter_ns() + after_ns - self.first) / self.tick_ns)
        self.t0 = self._due(k)
        sleep_until(self.t0 - round(self.tick_ns / 2))
        self.keyboard.send((0xFA,))
        return self.t0

    def stop(self) -> int:
        return self.keyboard.send((0xFC,))

    def time_at(self, beat: float) -> int:
        return self.t0 + round(beat * self.beat_ns)

    def beat_at(self, t: int) -> float:
        return (t - self.t0) / self.beat_ns

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def released_after(notes, t: int, channels=None):
    """Notes sounding at `t` (on `channels`) as (pitch, off - t in ms)."""
    return [
        (p, (off - t) / MS)
        for on, off, ch, p, _ in notes
        if on <= t < off and (channels is None or ch in channels)
    ]


def test_clock_follow_answers_on_the_daws_beats_and_stop_silences(tmp_path, folk_model):
    path = make_preset(tmp_path, "folk", {"model": folk_model}, timing={"bars": 1})
    t = presets.load(str(path)).timing
    grid = model_grid(folk_model)
    # --bpm 120 against a DAW at 100: a daemon that ignored the clock would drift off its beats
    with playing(path, "--clock", "midi", "--bpm", "120") as (daemon, keyboard, listener):
        daw = DawClock(keyboard, bpm=100)
        try:
            daw.start(after_ns=1200 * MS)  # a beat of ticks first: the tempo estimate settles
            events, last_off = phrase(daw.time_at, 1, [67, 69, 71, 72, 74, 72], t.silence_beats)
            keyboard.play(events)
            phrase_end = last_off + t.silence_beats
            response = math.floor(phrase_end) + 1
            first = listener.wait_for(
                lambda _, m: is_note_on(m),
                timeout=(daw.time_at(response + t.bars * t.beats_per_bar) - time.perf_counter_ns())
                / 1e9,
            )
            assert first is not None, "the companion did not answer"
            sleep_until(first[0] + 100 * MS)
            stop = daw.stop()
            sleep_until(stop + 1000 * MS)  # the DAW's clock keeps ticking while stopped
        finally:
            daw.close()

    notes = released_notes(listener)
    ons = [on for on, *_ in notes]
    assert daw.time_at(response) - TOL <= min(ons) <= daw.time_at(response + 1) + TOL
    assert_on_grid(
        [(daw.beat_at(on), off_grid_ns(on, daw.beat_at, daw.time_at, grid)) for on in ons],
        f"the DAW's {grid:g}-beat grid",
    )
    assert not [on for on in ons if on > stop + TOL], "notes began after Stop"
    late = [r for r in released_after(notes, stop) if r[1] > RELEASE_NS / MS]
    assert not late, f"notes still sounding {RELEASE_NS / MS} ms after Stop: {late}"
    assert any(m[1] == 123 and m[0] & 0xF0 == 0xB0 for _, m in listener.since(stop))


def test_clock_follow_accompanies_on_the_daws_grid_through_stop_and_start(tmp_path, chorale_model):
    path = make_preset(tmp_path, "chorale", {"model": chorale_model})
    voices = _voices(path)
    grid = presets.load(str(path)).timing.grid
    with playing(path, "--clock", "midi", "--bpm", "120") as (daemon, keyboard, listener):
        daw = DawClock(keyboard, bpm=100)
        try:
            takes = []
            for take in range(2):  # Start, play, Stop; then the same again from the top
                t0 = daw.start(after_ns=(1200 if take == 0 else 300) * MS)
                events = []
                for i, pitch in enumerate(SOPRANO[:6]):
                    events += [
                        (daw.time_at(1 + i / 2), (0x90, pitch, 90)),
                        (daw.time_at(1 + i / 2 + 0.45), (0x80, pitch, 0)),
                    ]
                leads = keyboard.play(events)[::2]
                sleep_until(daw.time_at(4.1))
                stop = daw.stop()
                takes.append((t0, leads, stop))
                sleep_until(stop + 500 * MS)
        finally:
            daw.close()

    notes = released_notes(listener)
    for take, (t0, leads, stop) in enumerate(takes):
        ons = heard_ons(listener, voices, t0, stop + 500 * MS)
        for v in voices:
            assert heard_ons(listener, {v}, leads[0], leads[-1] + 100 * MS), (
                f"take {take + 1}: no accompaniment on channel {v + 1}"
            )
        assert_on_grid(
            [
                (
                    (on - t0) / daw.beat_ns,
                    off_grid_ns(
                        on,
                        lambda t, t0=t0: (t - t0) / daw.beat_ns,
                        lambda b, t0=t0: t0 + round(b * daw.beat_ns),
                        grid,
                    ),
                )
                for on in ons
            ],
            f"take {take + 1}, the DAW's grid",
            # the lead notes fall on the DAW's grid lines and the voices answer each at
            # once: the behaviour is an answer within the lead note's grid step (half of
            # it here, 75 ms); how soon is companion bench's figure (under load in CI an
            # answer came ~20 ms after its lead note and failed the 20 ms tolerance)
            tol=round(grid * daw.beat_ns / 2),
        )
        assert not [on for on in ons if on > stop + TOL], f"take {take + 1}: notes after Stop"
        late = [r for r in released_after(notes, stop) if r[1] > RELEASE_NS / MS]
        assert not late, f"take {take + 1}: still sounding after Stop: {late}"


# ---- Program Change -----------------------------------------------------------------------------


def _playable_preset() -> tuple[int, presets.Preset] | None:
    """The shipped preset (index for Program Change, preset) to switch to: one that
    accompanies every note at once (accompany, jam), else any, whose models are all in the
    zoo; None when none is. (A band or pattern preset answers only a block later.)"""
    found = []
    for i, path in enumerate(presets.available()):
        try:
            found.append((i, presets.load(str(path))))
        except presets.PresetError:  # its model has not landed in models/zoo yet
            continue
    found.sort(key=lambda item: item[1].mode not in ("accompany", "jam"))
    return found[0] if found else None


def test_program_change_switches_preset_mid_response_with_no_stuck_notes(tmp_path, folk_model):
    target = _playable_preset()
    if target is None:
        pytest.skip("no shipped preset has its model in models/zoo yet")
    index, new = target
    old_channel = 6  # a channel none of the shipped presets plays on
    path = make_preset(
        tmp_path,
        "folk",
        {"model": folk_model},
        tracks=[{"name": "answer", "channel": old_channel + 1, "program": 73}],
    )
    new_channels = {t.channel - 1 for t in new.tracks + new.solo_tracks}
    t = new.timing
    with playing(path) as (daemon, keyboard, listener):
        start = first_beat(daemon)
        events, _ = phrase(
            daemon.time_at,
            start,
            [67, 69, 71, 72, 74, 72],
            presets.load(str(path)).timing.silence_beats,
        )
        keyboard.play(events)
        first = listener.wait_for(lambda _, m: is_note_on(m, old_channel), timeout=10.0)
        assert first is not None, "the first preset did not answer"
        n_events = len(daemon.events)
        switch = keyboard.send((0xC0, index))
        daemon.wait_event("preset", timeout=60.0, start=n_events, name=new.name)
        again = time.perf_counter_ns() + 200 * MS
        keyboard.play(
            [
                (again + i * 300 * MS + d, msg)
                for i, p in enumerate(SOPRANO[:4])
                for d, msg in ((0, (0x90, p, 90)), (250 * MS, (0x80, p, 0)))
            ]
        )
        if new.mode == "continue":  # wait for its answer
            wait_s = (t.silence_beats + 1 + t.beats_per_bar * t.bars) * 60 / t.bpm + 1.0
            assert listener.wait_for(
                lambda _, m: is_note_on(m) and m[0] & 0x0F in new_channels, wait_s, start=0
            ), "the new preset did not answer"
        sleep_until(time.perf_counter_ns() + 500 * MS)
        assert daemon.stop() == 0, daemon.error_text()

    notes = released_notes(listener)
    old = channel_notes(notes, {old_channel})
    assert all(off <= switch + RELEASE_NS for _, off, *_ in old), "the old preset kept sounding"
    assert not heard_ons(listener, {old_channel}, switch + TOL)
    assert heard_ons(listener, new_channels, again), f"{new.name} did not play after the switch"
    programs = {(m[0] & 0x0F, m[1]) for _, m in listener.since(switch) if m[0] & 0xF0 == 0xC0}
    assert programs == {(tr.channel - 1, tr.program) for tr in new.tracks + new.solo_tracks}
