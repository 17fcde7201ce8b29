"""End-to-end through a real JACK server, part two: shutdown and recording, and the faults
of issue 12 (peers that go away and come back, a flood, signals, kill -9, the soak smoke).
The harness, fixtures and helpers are tests/test_e2e.py's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import mido
import pytest
from test_e2e import (  # noqa: F401 (fixtures, used by name)
    MS,
    RELEASE_NS,
    ROOT,
    SEED,
    TOL,
    _jack_log,
    _playable_preset,
    assert_on_grid,
    first_beat,
    folk_model,
    heard_ons,
    make_preset,
    off_grid_ns,
    phrase,
    playing,
    released_after,
    released_notes,
)

from midi_companion import presets
from midi_companion.jack_harness import (
    DaemonProcess,
    is_note_on,
    model_grid,
    pair_notes,
    sleep_until,
)
from midi_companion.recorder import FLUSH_EVERY_S

pytestmark = pytest.mark.e2e


# ---- shutdown and recording ---------------------------------------------------------------------


def test_sigterm_mid_response_releases_everything_and_keeps_the_recording(tmp_path, folk_model):
    path = make_preset(tmp_path, "folk", {"model": folk_model})
    p = presets.load(str(path))
    record = tmp_path / "take.mid"
    pitches = [67, 69, 71, 72, 74, 72]
    with playing(path, "--record", record) as (daemon, keyboard, listener):
        start = first_beat(daemon)
        events, _ = phrase(daemon.time_at, start, pitches, p.timing.silence_beats)
        keyboard.play(events)
        first = listener.wait_for(lambda _, m: is_note_on(m), timeout=10.0)
        assert first is not None, "the companion did not answer"
        sig = daemon.signal(signal.SIGTERM)
        assert daemon.stop() == 0, daemon.error_text()

    notes = released_notes(listener)
    at_sig = released_after(notes, sig)
    assert at_sig, "nothing was sounding at SIGTERM: the test proves nothing"
    late = [r for r in at_sig if r[1] > RELEASE_NS / MS]
    assert not late, f"notes still sounding {RELEASE_NS / MS} ms after SIGTERM: {late}"
    assert not heard_ons(listener, None, sig + RELEASE_NS), "notes began after SIGTERM"

    tracks = {tr.name: tr for tr in mido.MidiFile(record).tracks}
    assert [m.note for m in tracks["player"] if m.type == "note_on" and m.velocity] == pitches
    answer = [m for m in tracks[p.tracks[0].name] if m.type in ("note_on", "note_off")]
    ons = sum(m.type == "note_on" and m.velocity > 0 for m in answer)
    assert ons and 2 * ons == len(answer), "the recorded answer is not whole"


def test_kill_9_leaves_a_readable_recording_up_to_the_last_flush(tmp_path, folk_model):
    path = make_preset(tmp_path, "folk", {"model": folk_model})
    record = tmp_path / "take.mid"
    pitches = [67, 69, 71, 72, 74, 72]
    with playing(path, "--record", record) as (daemon, keyboard, _):
        start = first_beat(daemon)
        events, _ = phrase(daemon.time_at, start, pitches, 1.0)
        played = keyboard.play(events)
        sleep_until(played[-1] + round((FLUSH_EVERY_S + 1.0) * 1e9))  # a flush since
        daemon.signal(signal.SIGKILL)
        assert daemon.proc.wait(timeout=10) == -signal.SIGKILL

    tracks = {tr.name: tr for tr in mido.MidiFile(record).tracks}
    assert [m.note for m in tracks["player"] if m.type == "note_on" and m.velocity] == pitches


# ---- faults (issue 12): peers that go away, a flood, signals, kill -9 ---------------------------


class Synth:
    """A JACK client with a port of its own that the daemon connects to by name (`--out
    e2e-synth:in`), as to a synth; what arrives is stamped in `heard`. `Synth.gone()` closes
    the client (the synth quit), a new Synth of the same name is it restarted."""

    def __init__(self, client: str = "e2e-synth", port: str = "in"):
        import rtmidi

        self.name = f"{client}:{port}"
        self.heard: list[tuple[int, tuple[int, ...]]] = []
        self._in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, client)
        self._in.ignore_types(sysex=True, timing=True, active_sense=True)
        self._in.set_callback(
            lambda ev, _=None: self.heard.append((time.perf_counter_ns(), tuple(ev[0])))
        )
        self._in.open_virtual_port(port)

    def wait_for(self, pred, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next(((t, m) for t, m in list(self.heard) if pred(t, m)), None)
            if hit is not None:
                return hit
            time.sleep(0.01)
        return None

    def close(self) -> None:
        from midi_companion.ports import close_client

        self._in.cancel_callback()
        close_client(self._in)


class PlayerPort:
    """A keyboard with a port of its own that the daemon connects to by name (`--in
    e2e-player:out`)."""

    def __init__(self, client: str = "e2e-player", port: str = "out"):
        import rtmidi

        self.name = f"{client}:{port}"
        self._out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, client)
        self._out.open_virtual_port(port)

    def send(self, msg) -> int:
        t = time.perf_counter_ns()
        self._out.send_message(list(msg))
        return t

    def play(self, events) -> list[int]:
        stamps = []
        for due, msg in sorted(events, key=lambda e: e[0]):
            sleep_until(due)
            stamps.append(self.send(msg))
        return stamps

    def close(self) -> None:
        from midi_companion.ports import close_client

        close_client(self._out)


def answered(daemon, port, synth, preset, timeout: float = 15.0):
    """Play a phrase through `port` (now) and wait for the companion's first note on `synth`."""
    start = first_beat(daemon)
    t = time.perf_counter_ns()
    events, _ = phrase(daemon.time_at, start, [67, 69, 71, 72], preset.timing.silence_beats)
    port.play(events)
    return synth.wait_for(lambda u, m: u > t and is_note_on(m), timeout)


def test_output_and_input_peers_go_away_and_come_back_by_name(tmp_path, folk_model):
    path = make_preset(tmp_path, "folk", {"model": folk_model}, timing={"bars": 1})
    p = presets.load(str(path))
    synth, player = Synth(), PlayerPort()
    try:
        with DaemonProcess(path, "--seed", SEED, "--in", player.name, "--out", synth.name) as d:
            d.ready()
            assert answered(d, player, synth, p), "no answer before the peers went away"
            n = len(d.events)
            synth.close()
            player.close()
            d.wait_event("peer_lost", timeout=10, start=n, side="output")
            d.wait_event("peer_lost", timeout=10, start=n, side="input")
            time.sleep(1.0)  # the daemon plays on, alone
            assert d.proc.poll() is None, d.error_text()
            n = len(d.events)
            synth, player = Synth(), PlayerPort()  # restarted, same names
            d.wait_event("peer_back", timeout=10, start=n, side="output")
            d.wait_event("peer_back", timeout=10, start=n, side="input")
            assert answered(d, player, synth, p), "no answer after the peers came back"
            assert d.stop() == 0, d.error_text()
        assert not pair_notes(synth.heard)[1], "notes left hanging"
    finally:
        synth.close()
        player.close()


FLOOD_S = float(os.environ.get("FLOOD_S", "2"))  # 10 for the full flood
FLOOD_PER_S = 10_000


def test_a_flood_of_input_is_bounded_counted_and_answers_resume(tmp_path, folk_model):
    """10,000 messages a second (note-ons and offs, every pitch) for FLOOD_S seconds: the
    daemon drops what no player could play, says so, and answers on time once it ends."""
    path = make_preset(tmp_path, "folk", {"model": folk_model}, timing={"bars": 1})
    t = presets.load(str(path)).timing
    grid = model_grid(folk_model)
    with playing(path) as (daemon, keyboard, listener):
        beat_ns = daemon.time_at(1) - daemon.time_at(0)
        t0 = time.perf_counter_ns()
        sent, batch = 0, FLOOD_PER_S // 1000  # 10 every millisecond
        while time.perf_counter_ns() < t0 + FLOOD_S * 1e9:
            for i in range(batch):
                pitch = 36 + (sent + i) % 48
                keyboard.send((0x90, pitch, 80) if (sent + i) % 2 == 0 else (0x80, pitch - 1, 0))
            sent += batch
            sleep_until(t0 + sent * 1_000_000_000 // FLOOD_PER_S)
        last = keyboard.send((0x80, 36 + (sent - 1) % 48, 0))
        flood_end = daemon.beat_at(last)
        dropped = daemon.wait_event("input_dropped", timeout=5)[1]
        response = math.floor(flood_end + t.silence_beats) + 1
        first = listener.wait_for(
            lambda u, m: u > last and is_note_on(m),
            timeout=(daemon.time_at(response + 1) - time.perf_counter_ns()) / 1e9 + 1,
        )
        sleep_until(daemon.time_at(response + t.bars * t.beats_per_bar) + 300 * MS)
        status = [e for _, e in daemon.events if e.get("event") == "status"]
        assert daemon.stop() == 0, daemon.error_text()
    print(
        f"flood: {sent} messages in {FLOOD_S:g} s, {status[-1]['in_dropped'] if status else '?'}"
        f" dropped, answer {(first[0] - daemon.time_at(response)) / MS:.1f} ms after its beat"
        if first
        else "flood: no answer"
    )
    assert sent >= FLOOD_PER_S * FLOOD_S * 0.9, f"the test sent only {sent} messages"
    assert dropped["in_dropped"] > 0
    assert status and status[-1]["in_dropped"] >= dropped["in_dropped"]
    assert first is not None, "no answer after the flood"
    # the answer to the flood's phrase: on the beat after its end, within one beat
    assert first[0] <= daemon.time_at(response) + beat_ns + TOL, (
        f"the answer came {(first[0] - daemon.time_at(response)) / MS:.0f} ms after its beat"
    )
    notes = released_notes(listener)
    ons = [on for on, *_ in notes if on > last]
    assert_on_grid(
        [(daemon.beat_at(on), off_grid_ns(on, daemon.beat_at, daemon.time_at, grid)) for on in ons],
        "the answer after the flood",
    )


def _clean_exit(daemon, code) -> None:
    err = daemon.error_text()
    assert code == 0, f"exit code {code}: {err}"
    assert "Traceback" not in err, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_start_up_exits_cleanly(tmp_path, folk_model, sig):
    """The signal arrives while the models load (the "clock" event is printed then): the
    daemon ends at once, exit code 0, no port left open."""
    from midi_companion import ports

    path = make_preset(tmp_path, "folk", {"model": folk_model})
    with DaemonProcess(path, "--seed", SEED) as daemon:
        daemon.wait_event("clock", timeout=60)
        daemon.signal(sig)
        code = daemon.proc.wait(timeout=30)
        _clean_exit(daemon, code)
    found = ports.list_ports("jack")
    ours = [n for n in found["inputs"] + found["outputs"] if "midi-companion" in n]
    assert not ours, f"ports left open: {ours}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_mid_response_releases_everything(tmp_path, folk_model, sig):
    """As SIGTERM (test_sigterm_mid_response_...): every note released, exit code 0."""
    path = make_preset(tmp_path, "folk", {"model": folk_model})
    p = presets.load(str(path))
    with playing(path) as (daemon, keyboard, listener):
        events, _ = phrase(
            daemon.time_at, first_beat(daemon), [67, 69, 71, 72], p.timing.silence_beats
        )
        keyboard.play(events)
        assert listener.wait_for(lambda _, m: is_note_on(m), timeout=10.0), "no answer"
        at = daemon.signal(sig)
        _clean_exit(daemon, daemon.proc.wait(timeout=30))
    notes = released_notes(listener)
    late = [r for r in released_after(notes, at) if r[1] > RELEASE_NS / MS]
    assert not late, f"notes still sounding {RELEASE_NS / MS} ms after the signal: {late}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_a_program_change_exits_cleanly(tmp_path, folk_model, sig):
    target = _playable_preset()
    if target is None:
        pytest.skip("no shipped preset has its model in models/zoo yet")
    index, _ = target
    path = make_preset(tmp_path, "folk", {"model": folk_model})
    p = presets.load(str(path))
    with playing(path) as (daemon, keyboard, listener):
        events, _ = phrase(
            daemon.time_at, first_beat(daemon), [67, 69, 71, 72], p.timing.silence_beats
        )
        keyboard.play(events)
        assert listener.wait_for(lambda _, m: is_note_on(m), timeout=10.0), "no answer"
        keyboard.send((0xC0, index))
        time.sleep(0.05)  # the new preset's models are loading
        daemon.signal(sig)
        _clean_exit(daemon, daemon.proc.wait(timeout=60))
    released_notes(listener)  # fails on any note left hanging


def test_after_kill_9_the_next_start_sends_all_notes_off_on_its_channels(tmp_path, folk_model):
    """kill -9 mid-answer leaves the synth holding notes (the sending process, which outlives
    the daemon, releases them when its pipe closes, but a JACK server in synchronous mode
    stalls for seconds over a killed client first); the next start's first messages are
    all-notes-off (CC 123) on every channel the preset plays, which ends them."""
    path = make_preset(tmp_path, "folk", {"model": folk_model})
    p = presets.load(str(path))
    channels = {tr.channel - 1 for tr in p.tracks}
    synth, player = Synth(), PlayerPort()
    try:
        with DaemonProcess(path, "--seed", SEED, "--in", player.name, "--out", synth.name) as d:
            d.ready()
            hit = answered(d, player, synth, p)
            assert hit is not None, "no answer"
            d.signal(signal.SIGKILL)
            killed = time.perf_counter_ns()
            assert d.proc.wait(timeout=10) == -signal.SIGKILL
        held = pair_notes([(t, m) for t, m in synth.heard if t < killed])[1]
        killed = time.perf_counter_ns()
        with DaemonProcess(path, "--seed", SEED, "--in", player.name, "--out", synth.name) as d:
            d.ready()
            assert d.stop() == 0, d.error_text()
    finally:
        synth.close()
        player.close()
    offs = {
        m[0] & 0x0F for t, m in synth.heard if t > killed and m[0] & 0xF0 == 0xB0 and m[1] == 123
    }
    assert channels <= offs, f"all-notes-off on {sorted(offs)}, the preset plays {sorted(channels)}"
    assert held, "nothing was sounding at kill -9: the test proves nothing"


def test_soak_smoke(tmp_path):
    """benchmarks/soak.py for one minute: jam through JACK with the DAW's clock starting and
    stopping, every CPU saturated by other processes for 5 s of it: nothing hangs, the daemon
    exits 0 (timing targets are the 30-minute run's; saturation's, the 30 s burn's)."""
    out = tmp_path / "soak.json"
    soak = ROOT / "benchmarks" / "soak.py"
    r = subprocess.run(
        [sys.executable, str(soak), "--minutes", "1", "--burn-s", "5", "--json", out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.is_file(), r.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["exit_code"] == 0, r.stderr[-3000:]
    assert figures["hanging_at_stop"] == 0 and figures["hanging_after_sigterm"] == 0, figures
    assert figures["note_ons_after_sigterm"] == 0, figures
    assert figures["errors"] == 0 and figures["companion_note_ons"] > 0, figures
    assert figures["saturation"]["burn_s"] == 5, figures
