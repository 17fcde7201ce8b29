"""Reliability (issue 12): controls while the DAW's clock stands still, an error in one
response, failing sends, --provider, the MIDI system chosen by itself, a bad preset that
leaves nothing behind, and the JACK server dying mid-performance.

The live tests run the real Daemon in this process on in-process port pairs
(companion.ports.loopback_pair) at the wall clock; those marked e2e use the private JACK
server (tests/jack_server.py). Models: the shipped folk and chorale (models/zoo)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import mido
import pytest

from midi_companion import cli, daemon, engine, jack_watch, ports, presets
from midi_companion.clock import MidiClock
from midi_companion.daemon import Daemon
from midi_companion.errors import ModelError, ProviderError
from midi_companion.offline import VirtualTime
from midi_companion.performer import Performer, SwitchPreset
from midi_companion.ports import OutputPort, loopback_pair
from midi_companion.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]
ZOO = presets.zoo_dir()
MS = 1_000_000
needs_zoo = pytest.mark.skipif(
    not (ZOO / "folk.onnx").is_file() or not (ZOO / "chorale.onnx").is_file(),
    reason="the shipped models are not in models/zoo",
)


def companion(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def one_line_error(r, fragment: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert fragment in r.stderr, r.stderr


def sounding_after(sent, until_ns=None) -> set[tuple[int, int]]:
    """(channel, pitch) keys a synth fed `sent` ((t_ns, msg) pairs) holds at `until_ns`."""
    on: set[tuple[int, int]] = set()
    for t, m in sent:
        if until_ns is not None and t > until_ns:
            break
        kind, key = m[0] & 0xF0, (m[0] & 0x0F, m[1] if len(m) > 1 else None)
        if kind == 0x90 and m[2] > 0:
            on.add(key)
        elif kind == 0x80 or kind == 0x90:
            on.discard(key)
        elif kind == 0xB0 and m[1] == 123:
            on = {k for k in on if k[0] != m[0] & 0x0F}
    return on


def note_ons(sent, channels, after_ns=0, before_ns=None):
    return [
        t
        for t, m in sent
        if m[0] & 0xF0 == 0x90
        and m[2] > 0
        and m[0] & 0x0F in channels
        and t >= after_ns
        and (before_ns is None or t < before_ns)
    ]


# ---- 1. Program Change and controls while the DAW's clock is stopped --------------------------


@needs_zoo
def test_program_change_and_controls_act_while_the_daws_clock_is_stopped():
    now = VirtualTime()
    sent: list[tuple[int, ...]] = []
    sched = Scheduler(lambda m: sent.append(tuple(m)), now_ns=now)
    clock = MidiClock(bpm=120, beats_per_bar=4)
    performer = Performer(presets.load("folk"), sched, clock, seed=0, provider="cpu")
    assert not clock.running  # the DAW has not pressed play
    sched.schedule(0, (0x90, 60, 90))  # a note the synth holds (say, from before Stop)
    sched.run_pending(0)

    asked = performer.handle(1, (0xC0, 2))
    assert asked == SwitchPreset(2), "Program Change ignored while stopped"
    lo, hi = performer.preset.controls.temperature_range
    performer.handle(2, (0xB0, 1, 127))
    assert performer.mode.sampling.temperature == pytest.approx(hi), (
        "the mod wheel ignored while stopped"
    )
    sent.clear()
    performer.handle(3, (0xB0, 123, 0))  # panic
    assert (0x80, 60, 0) in sent and (0xB0, 123, 0) in sent, f"panic ignored: {sent}"
    performer.handle(4, (0x90, 64, 90))  # notes still wait for the DAW's Start
    performer.handle(5, (0xB0, 7))  # a control change cut short is ignored, not a crash
    assert performer.notes_in == 0
    sched.stop()


# ---- 2. an error in one response: dropped, told once, the performance goes on ----------------


class Live:
    """The Daemon in this process at the wall clock, on loopback ports; `sent` is what it
    played, as (t_ns, msg)."""

    def __init__(self, preset, out: OutputPort | None = None, quiet=True, **kw):
        self.to_daemon, daemon_in = loopback_pair("player")
        self.out = out or loopback_pair("listener")[0]
        self.err = io.StringIO()
        self.daemon = Daemon(
            preset,
            daemon_in,
            self.out,
            seed=1,
            quiet=quiet,
            status_stream=self.err,
            provider="cpu",
            **kw,
        )
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-daemon")
        self.thread.start()

    def _run(self):
        try:
            self.daemon.run()
        except BaseException as err:  # the test says so, instead of a thread warning
            self.failure = err

    def play(self, pitch: int, seconds: float) -> int:
        t = time.perf_counter_ns()
        self.to_daemon.send((0x90, pitch, 90))
        time.sleep(seconds)
        self.to_daemon.send((0x80, pitch, 0))
        return t

    def wait_for(self, pred, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, m in list(self.out.sent) if pred(t, m)), None)
            if hit is not None:
                return hit
            time.sleep(0.01)
        return None

    def stop(self):
        self.daemon.stopping.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the daemon did not stop"

    @property
    def sent(self):
        return self.out.sent


def fail_once(eng):
    """Make `eng.step` raise once, the next time it runs after `arm.set()`."""
    arm, fired = threading.Event(), []
    step = eng.step

    def failing(feeds):
        if arm.is_set() and not fired:
            fired.append(time.perf_counter_ns())
            raise RuntimeError("injected failure")
        return step(feeds)

    eng.step = failing
    return arm, fired


def assert_told_once(live: Live, fragment: str) -> None:
    lines = [ln for ln in live.err.getvalue().splitlines() if ln.strip()]
    told = [ln for ln in lines if fragment in ln]
    assert len(told) == 1 and "Traceback" not in live.err.getvalue(), lines


@needs_zoo
def test_an_error_while_harmonizing_drops_that_answer_and_the_set_goes_on():
    preset = presets.load("chorale")
    voices = {t.channel - 1 for t in preset.tracks}
    live = Live(preset)
    try:
        arm, fired = fail_once(live.daemon.performer.engines[0])
        first = live.play(67, 0.3)
        arm.set()
        live.play(69, 0.3)  # its harmony fails to generate
        time.sleep(0.2)
        again = live.play(71, 0.3)
        time.sleep(0.3)
    finally:
        live.stop()
    assert_survived_one_failure(live, fired)
    assert note_ons(live.sent, voices, first, fired[0]), "no harmony before the failure"
    assert not sounding_after(live.sent, fired[0] + 50 * MS), "the failed answer's notes hang"
    assert note_ons(live.sent, voices, again), "no harmony after the failure"
    assert not sounding_after(live.sent), "notes left sounding"


def assert_survived_one_failure(live, fired) -> None:
    """The injected failure happened once, was told once, and the daemon lived on."""
    assert live.failure is None, f"the daemon died: {live.failure!r}"
    assert fired, "the failure was not injected"
    assert live.daemon.errors == 1
    assert_told_once(live, "RuntimeError: injected failure")


@needs_zoo
def test_an_error_mid_response_drops_it_releases_its_notes_and_the_next_is_answered():
    p = presets.load("folk")
    preset = replace(p, timing=replace(p.timing, bars=1, silence_beats=0.5))
    channel = preset.tracks[0].channel - 1
    live = Live(preset, bpm=240)
    try:
        arm, fired = fail_once(live.daemon.performer.engines[0])
        for pitch in (67, 69, 71, 72):
            live.play(pitch, 0.12)
        answered = live.wait_for(lambda t, m: m[0] == 0x90 | channel and m[2] > 0, 10.0)
        assert answered is not None, "the first phrase was not answered"
        arm.set()  # the rest of this answer fails to generate
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        again = time.perf_counter_ns()
        for pitch in (72, 71, 69, 67):
            live.play(pitch, 0.12)
        second = live.wait_for(lambda t, m: t > again and m[0] == 0x90 | channel and m[2] > 0, 10.0)
        time.sleep(1.5)  # the second answer plays out (a bar at 240 bpm)
    finally:
        live.stop()
    assert_survived_one_failure(live, fired)
    # the dropped answer: released at once, and nothing more of it
    assert not sounding_after(live.sent, fired[0] + 50 * MS)
    assert not note_ons(live.sent, {channel}, fired[0] + 20 * MS, again)
    assert second is not None, "the phrase after the failure was not answered"
    assert not sounding_after(live.sent), "notes left sounding"


@needs_zoo
@pytest.mark.parametrize("debug", [False, True])
def test_an_error_is_told_once_in_one_line_and_its_traceback_only_with_debug(debug):
    _, daemon_in = loopback_pair("player")
    err = io.StringIO()
    d = Daemon(
        presets.load("chorale"),
        daemon_in,
        loopback_pair("listener")[0],
        quiet=True,
        status_stream=err,
        provider="cpu",
        debug=debug,
    )
    try:
        for _ in range(3):  # the same fault again and again: told once, counted each time
            try:
                raise ValueError("probabilities contain NaN")
            except ValueError as e:
                d._hiccup(e)
    finally:
        d.shutdown()
    text = err.getvalue()
    assert d.errors == 3
    assert text.count("ValueError: probabilities contain NaN") == 1 + debug, text
    assert ("Traceback" in text) == debug
    if not debug:
        assert len([ln for ln in text.splitlines() if ln.strip()]) == 1, text


# ---- 5. failing sends are shown -----------------------------------------------------------------


class FlakyOutput(OutputPort):
    """An output whose sends fail while `broken` (a synth that went away)."""

    def __init__(self):
        super().__init__("flaky out")
        self.broken = False
        self.sent: list[tuple[int, tuple[int, ...]]] = []

    def _send(self, msg):
        if self.broken:
            raise OSError("the synth went away")
        self.sent.append((time.perf_counter_ns(), tuple(msg)))


@needs_zoo
def test_sends_that_start_failing_are_told_once_and_so_is_their_recovery():
    out = FlakyOutput()
    live = Live(presets.load("chorale"), out=out, quiet=False)
    try:
        time.sleep(0.1)
        out.broken = True
        for pitch in (67, 69, 71):
            live.play(pitch, 0.3)  # the harmony is lost, and the status line drawn
        time.sleep(0.3)
        out.broken = False
        live.play(72, 0.3)
        time.sleep(1.2)  # after a beat of rest the voices end: their note-offs are sends
    finally:
        live.stop()
    assert live.failure is None, f"the daemon died: {live.failure!r}"
    text = live.err.getvalue()
    assert text.count("sending to 'flaky out' fails (OSError: the synth went away)") == 1, text
    assert text.count("sending to 'flaky out' works again") == 1, text
    assert "SEND FAILING" in text, "the status line does not show the failing sends"
    assert live.daemon.scheduler.stats.send_errors > 0


# ---- 4. a preset whose model does not fit: no port, no thread left ---------------------------


@pytest.mark.e2e
@needs_zoo
def test_a_preset_whose_model_does_not_fit_leaves_no_port_and_no_thread(jack_server, tmp_path):
    preset = tmp_path / "mismatch.toml"
    preset.write_text('model = "folk"\nmode = "accompany"\n')
    args = cli.build_parser().parse_args(["run", str(preset), "--backend", "jack", "--quiet"])
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s]
    saved = {s: signal.getsignal(s) for s in signals}
    interval = sys.getswitchinterval()
    try:
        with pytest.raises(ModelError, match="needs a multitrack-step model"):
            daemon.main(args)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        sys.setswitchinterval(interval)
    assert not [t.name for t in threading.enumerate() if t.name == "midi-scheduler"]
    found = ports.list_ports("jack")
    ours = [
        n
        for n in found["inputs"] + found["outputs"]
        if ports.VIRTUAL_INPUT in n or ports.VIRTUAL_OUTPUT in n
    ]
    assert not ours, f"ports left open: {ours}"


# ---- 7. --provider ------------------------------------------------------------------------------


@pytest.fixture
def folk_model():
    if not (ZOO / "folk.onnx").is_file():
        pytest.skip("no models/zoo/folk.onnx")
    from midi_companion import modelfile

    return modelfile.load(ZOO / "folk.onnx")


def test_provider_cpu_never_tries_cuda(folk_model, monkeypatch):
    import onnxruntime as ort

    def no(*a, **k):
        raise AssertionError("--provider cpu asked onnxruntime about CUDA")

    monkeypatch.setattr(ort, "get_available_providers", no)
    monkeypatch.setattr(ort, "InferenceSession", no)
    eng = engine.Engine(folk_model, provider="cpu")
    assert eng.provider == "CPUExecutionProvider" and "--provider cpu" in eng.provider_note


def test_provider_auto_keeps_the_cpu_and_says_why(folk_model, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: [engine.CUDA, "CPUExecutionProvider"]
    )
    eng = engine.Engine(folk_model)  # auto is the default
    assert eng.provider == "CPUExecutionProvider"
    assert "CUDA is available but not used" in eng.provider_note
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "no CUDA provider" in engine.Engine(folk_model, provider="auto").provider_note


def test_provider_cuda_that_cannot_load_says_why(folk_model, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: [engine.CUDA, "CPUExecutionProvider"]
    )

    def refused(*a, **k):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version\nmore")

    monkeypatch.setattr(ort, "InferenceSession", refused)
    with pytest.raises(ProviderError) as err:
        engine.Engine(folk_model, provider="cuda")
    assert "CUDA driver version is insufficient" in str(err.value)
    assert "\n" not in str(err.value)

    class FellBack:
        def __init__(self, *a, **k):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(ProviderError, match="fell back to CPUExecutionProvider"):
        engine.Engine(folk_model, provider="cuda")


@pytest.mark.skipif(
    engine.CUDA in __import__("onnxruntime").get_available_providers(),
    reason="this machine has CUDA",
)
@pytest.mark.parametrize(
    "command",
    [
        ["run", "folk"],
        ["eval", str(ZOO / "folk.onnx"), "--benchmark", "jsb"],
        ["bench", "--only", "engine", "--markdown", "unused.md", "--json", "unused.json"],
    ],
)
def test_provider_cuda_without_cuda_is_one_line_exit_2(command):
    r = companion(*command, "--provider", "cuda")
    one_line_error(r, "--provider cuda: this onnxruntime has no CUDA provider")


def test_help_says_auto_runs_on_the_cpu():
    for name in ("run", "eval", "bench"):
        text = " ".join(companion(name, "--help").stdout.split())
        assert "--provider {auto,cpu,cuda}" in text and "auto (default) runs on the CPU" in text


# ---- 8. the MIDI system there is chosen by itself --------------------------------------------


def test_choose_backend():
    absent = "/nonexistent/snd/seq"
    assert ports.choose_backend("auto", "linux", __file__, lambda: True)[0] == "native"
    backend, why = ports.choose_backend("auto", "linux", absent, lambda: True)
    assert backend == "jack" and "JACK server is running" in why
    assert ports.choose_backend("auto", "linux", absent, lambda: False)[0] == "native"
    assert ports.choose_backend("auto", "darwin", absent, lambda: True)[0] == "native"
    assert ports.choose_backend("jack", "linux", __file__)[0] == "jack"
    assert ports.choose_backend("native", "linux", absent, lambda: True)[0] == "native"


class Events:
    """A daemon subprocess's JSON events, read as they come."""

    def __init__(self, proc):
        self.proc, self.events = proc, []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def wait(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((e for e in self.events if e.get("event") == kind), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no {kind!r} event (exit code {self.proc.poll()}): "
            f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        )


@pytest.mark.e2e
@needs_zoo
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.path.exists(ports.ALSA_SEQUENCER),
    reason="needs Linux without an ALSA sequencer",
)
def test_without_alsa_a_running_jack_server_is_chosen_and_said(jack_server):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "midi_companion",
            "run",
            "chorale",
            "--quiet",
            "--log-json",
            "--provider",
            "cpu",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    events = Events(proc)
    try:
        chosen = events.wait("backend", 120)
        events.wait("preset", 120)
        found = ports.list_ports("jack")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert chosen["backend"] == "jack" and "JACK server is running" in chosen["why"]
    assert any(n.endswith(":" + ports.VIRTUAL_INPUT) for n in found["outputs"]), found
    assert code == 0, proc.stderr.read()


# ---- 9. the JACK server dies mid-performance -------------------------------------------------

KEYBOARD = """
import sys, time
from midi_companion.ports import VIRTUAL_INPUT, open_output
with open_output(VIRTUAL_INPUT, backend="jack", client_name="dying-keyboard") as kb:
    for p in map(int, sys.argv[1:]):
        kb.send((0x90, p, 90)); time.sleep(0.1); kb.send((0x80, p, 0)); time.sleep(0.05)
"""


def reclaim(name: str) -> None:
    """Clean up after a jackd killed with SIGKILL: its slot in JACK's server registry (8
    slots, in /dev/shm until reboot) stays taken, and after 8 such kills no server starts
    ("Too many servers already active"). A server started under the same name reclaims the
    slot; stopping it frees it. Then the files the dead clients left go too."""
    from midi_companion.errors import CompanionError
    from midi_companion.jack_harness import JackServer

    again = JackServer(prefix="reclaim")
    again.name = name
    try:
        again.__enter__()
    except CompanionError:
        pass
    finally:
        again.__exit__()
    for leftover in Path("/dev/shm").glob(f"jack*{name}*"):
        leftover.unlink(missing_ok=True)


@pytest.mark.e2e
@needs_zoo
def test_the_jack_server_dying_ends_the_daemon_within_2_s_with_its_recording(jack_server, tmp_path):
    from midi_companion.jack_harness import DaemonProcess, JackServer
    from midi_companion.recorder import FLUSH_EVERY_S

    record = tmp_path / "take.mid"
    pitches = [67, 69, 71, 72]
    server = JackServer(prefix="companion-dying")  # our own: this one is killed
    server.__enter__()
    try:
        with DaemonProcess("folk", "--record", record, "--provider", "cpu") as proc:
            proc.ready()
            subprocess.run(
                [sys.executable, "-c", KEYBOARD, *map(str, pitches)],
                cwd=ROOT,
                check=True,
                timeout=60,
            )
            time.sleep(FLUSH_EVERY_S + 0.5)
            t = time.perf_counter()
            os.kill(server.proc.pid, signal.SIGKILL)
            try:
                code = proc.proc.wait(timeout=10)
            finally:
                took = time.perf_counter() - t
            stderr = proc.error_text()
    finally:
        server.__exit__()
        reclaim(server.name)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert took < 2.0, f"the daemon took {took:.2f} s to exit"
    assert code not in (0, None) and code > 0, f"exit code {code}: {stderr}"
    assert len(lines) == 1 and "JACK server went away" in lines[0], stderr
    tracks = {tr.name: tr for tr in mido.MidiFile(record).tracks}
    assert [m.note for m in tracks["player"] if m.type == "note_on" and m.velocity] == pitches


# ---- 10. floods and clock jumps (found by tests/test_fuzz.py) ----------------------------------


def test_a_full_input_queue_drops_and_counts_instead_of_blocking_the_midi_thread():
    to_daemon, inp = loopback_pair("flood")
    for i in range(ports.INPUT_QUEUE + 500):
        to_daemon.send((0x90, 60 + i % 12, 90))  # returns at once even when full
    assert inp.queue.qsize() == ports.INPUT_QUEUE
    assert inp.dropped == 500


@needs_zoo
def test_note_ons_beyond_what_a_player_can_play_are_dropped_and_counted():
    from midi_companion import performer as perf

    now = VirtualTime()
    sched = Scheduler(lambda m: None, now_ns=now)
    clock = daemon.make_clock("internal", 120, 4, now)
    clock.start(at_ns=0)
    p = Performer(presets.load("folk"), sched, clock, seed=0, provider="cpu")
    for i in range(1000):  # 1000 note-ons in 100 ms
        p.handle(i * 100_000, (0x90, 40 + i % 40, 90))
    assert p.notes_in <= perf.NOTE_BURST + 0.1 * perf.NOTE_RATE + 1
    assert p.notes_in + p.notes_dropped == 1000
    p.notes_in = 0
    for i in range(16):  # then a player: 16ths at 120 bpm, all heard
        p.handle(10**9 + i * 125 * MS, (0x90, 60, 90))
    assert p.notes_in == 16
    sched.stop()


@needs_zoo
def test_a_flood_in_the_queue_is_handled_in_turns_and_generation_goes_on():
    _, daemon_in = loopback_pair("player")
    d = Daemon(
        presets.load("folk"),
        quiet=True,
        status_stream=io.StringIO(),
        provider="cpu",
    )
    d.attach(daemon_in, loopback_pair("listener")[0], thread=False)
    try:
        for i in range(3 * daemon.MAX_DRAIN):
            daemon_in.queue.put((time.perf_counter_ns(), [0xB0, 7, i % 128]))
        d.step(0)
        assert daemon_in.queue.qsize() == 2 * daemon.MAX_DRAIN  # one turn's worth handled
    finally:
        d.shutdown()


@needs_zoo
def test_the_daws_clock_jumping_back_without_a_stop_forgets_the_phrase():
    """Start, a phrase, then the first tick comes 2 s late: the position snaps back from
    beat 4 to 0. The phrase's beats are no longer the song's: it is forgotten (answering it
    failed: stream times must not decrease), nothing sounds, nothing fails."""
    now = VirtualTime()
    sent: list[tuple[int, ...]] = []
    sched = Scheduler(lambda m: sent.append(tuple(m)), now_ns=now)
    clock = MidiClock(bpm=120, beats_per_bar=4)
    p = Performer(presets.load("folk"), sched, clock, seed=0, provider="cpu")
    p.handle(0, (0xFA,))
    for i, pitch in enumerate((60, 62, 64, 65)):  # beats 2.0 .. 3.5 on the provisional line
        t = (1000 + i * 250) * MS
        p.handle(t, (0x90, pitch, 90))
        p.handle(t + 200 * MS, (0x80, pitch, 0))
        p.tick(t + 200 * MS)
    now.ns = 2000 * MS
    p.tick(now.ns)
    p.handle(now.ns, (0xF8,))  # the first tick: beat 0 now
    for k in range(1, 200):  # ticks on at 120 bpm for 4 s: no answer to a stale phrase
        now.ns = 2000 * MS + k * 20_833_333
        p.handle(now.ns, (0xF8,))
        p.tick(now.ns)
        sched.run_pending(now.ns)
    assert not [m for m in sent if m[0] & 0xF0 == 0x90 and m[2]], "a stale phrase was answered"
    sched.stop()


class FakeJack:
    """The three questions PeerLink asks a JackWatch, over a set of ports and connections."""

    def __init__(self, ports_, links):
        self.ports, self.links = set(ports_), set(links)

    def exists(self, port):
        return port in self.ports

    def connections(self, port):
        return [b for a, b in self.links if a == port] + [a for a, b in self.links if b == port]

    def connect(self, a, b):
        if a in self.ports and b in self.ports:
            self.links.add((a, b))
        return (a, b) in self.links


def test_a_peer_connected_by_name_is_told_lost_then_connected_again():
    ours, synth = "midi-companion:midi-companion out", "synth:in"
    jack = FakeJack({ours, synth}, {(ours, synth)})
    link = jack_watch.PeerLink.find(jack, synth, ports.VIRTUAL_OUTPUT, outgoing=True)
    assert link is not None and link.ours == ours
    assert link.check() is None  # connected, nothing changed
    jack.ports.discard(synth)  # the synth quits: its connections go with it
    jack.links.clear()
    assert link.check() == "lost"
    assert link.check() is None  # told once
    jack.ports.add(synth)  # restarted under the same name
    assert link.check() == "back" and (ours, synth) in jack.links
    assert link.check() is None


@needs_zoo
def test_a_program_change_frees_the_old_preset_its_models_and_threads(monkeypatch):
    """Found by the soak (RSS +14 MB in 32 Program Changes): harmonize's speculation worker
    and the heap freeze kept every switched-away preset alive, models and thread included."""
    import gc
    import weakref

    listed = [presets.presets_dir() / "jam.toml", presets.presets_dir() / "chorale.toml"]
    monkeypatch.setattr(presets, "available", lambda: listed)

    def workers():
        return sum(t.name == "speculation" and t.is_alive() for t in threading.enumerate())

    before = workers()  # other tests' modes may still be winding down
    d = Daemon(presets.load("jam"), quiet=True, status_stream=io.StringIO(), provider="cpu")
    d.attach(loopback_pair("player")[1], loopback_pair("listener")[0], thread=False)
    try:
        d.switch(1)
        gone = [weakref.ref(e) for e in d.performer.engines]
        for i in range(4):
            d.switch(i % 2)  # ends on the chorale: one speculation worker
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            any(r() is not None for r in gone) or workers() > before + 1
        ):
            time.sleep(0.1)  # a speculation worker notices its mode is gone within 0.5 s
            gc.collect()
        assert not [r for r in gone if r() is not None], "a switched-away preset's models live on"
        assert workers() <= before + 1, [t.name for t in threading.enumerate()]
    finally:
        d.shutdown()
