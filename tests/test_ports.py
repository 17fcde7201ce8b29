"""Ports: name matching and the loopback without MIDI; real virtual ports on a private JACK
server (tests marked e2e, fixture in tests/jack_server.py)."""

import os
import sys
import time
import uuid

import pytest

from midi_companion.errors import CompanionError, MidiPortError
from midi_companion.ports import (
    VIRTUAL_INPUT,
    VIRTUAL_OUTPUT,
    InputPort,
    list_ports,
    loopback_pair,
    match_port,
    open_input,
    open_output,
    unreachable_hint,
)

NAMES = ["Midi Through:Midi Through Port-0", "USB Keyboard:USB Keyboard MIDI 1", "Synth", "Synth 2"]


# ---- name matching (no MIDI) -----------------------------------------------------------------


def test_match_is_a_case_insensitive_substring():
    assert match_port(NAMES, "keyboard", "input") == 1
    assert match_port(NAMES, "THROUGH", "input") == 0


def test_a_whole_name_wins_over_names_that_contain_it():
    assert match_port(NAMES, "synth", "output") == 2
    assert match_port(NAMES, "synth 2", "output") == 3


def test_no_match_lists_what_is_available():
    with pytest.raises(MidiPortError) as err:
        match_port(NAMES, "loopMIDI", "output")
    text = str(err.value)
    assert "no MIDI output port matches 'loopMIDI'" in text
    assert all(repr(name) in text for name in NAMES)
    with pytest.raises(MidiPortError, match=r"available: none"):
        match_port([], "x", "input")


def test_several_matches_list_the_candidates():
    names = ["Synth A", "Synth B", "Drums"]
    with pytest.raises(
        MidiPortError,
        match=r"2 MIDI input ports match 'synth' \('Synth A', "
        r"'Synth B'\); pass more of the name",
    ):
        match_port(names, "synth", "input")


def test_errors_are_companion_errors_and_os_errors():
    with pytest.raises(CompanionError):
        match_port([], "x", "input")
    with pytest.raises(OSError):
        match_port([], "x", "input")


def test_unknown_backend():
    with pytest.raises(MidiPortError, match="unknown MIDI backend 'coreaudio'"):
        open_output(backend="coreaudio")


def test_hints_say_what_to_do():
    assert "JACK" in unreachable_hint("jack", "linux")
    assert "--backend jack" in unreachable_hint("native", "linux")
    windows = unreachable_hint("native", "win32")
    assert "loopMIDI" in windows and "--in/--out" in windows
    for backend, platform in [
        ("jack", "linux"),
        ("native", "linux"),
        ("native", "win32"),
        ("native", "darwin"),
    ]:
        assert "companion demo" in unreachable_hint(backend, platform)


# ---- loopback (no MIDI) ------------------------------------------------------------------------


class FakeNow:
    def __init__(self):
        self.t = 1_000

    def __call__(self):
        self.t += 10
        return self.t


def test_loopback_records_and_delivers_stamped_messages():
    now = FakeNow()
    out, inp = loopback_pair("demo", now_ns=now)
    out.send((0x90, 60, 100))
    out.send([0xF8])
    assert out.sent == [(1_010, (0x90, 60, 100)), (1_030, (0xF8,))]
    assert inp.receive(timeout=0) == (1_020, [0x90, 60, 100])
    assert inp.receive(timeout=0) == (1_040, [0xF8])
    assert inp.receive(timeout=0) is None


def test_loopback_to_a_callback_and_without_recording():
    got = []
    out, inp = loopback_pair(callback=got.append, record=False, now_ns=lambda: 7)
    out.send((0x80, 60, 0))
    assert got == [(7, [0x80, 60, 0])] and out.sent == [] and inp.receive(timeout=0) is None


def test_loopback_close():
    out, inp = loopback_pair(now_ns=lambda: 0)
    inp.close()
    out.send((0x90, 60, 1))  # nobody listening any more: recorded, not delivered
    assert inp.receive(timeout=0) is None and len(out.sent) == 1
    with out:
        pass
    with pytest.raises(MidiPortError, match="closed"):
        out.send((0x90, 60, 1))
    out.close()  # idempotent


def test_input_stamps_rtmidi_events_on_arrival():
    inp = InputPort("x", now_ns=lambda: 42)
    inp._on_midi(([0xB0, 1, 2], 0.25), None)  # what rtmidi passes its callback
    assert inp.receive(timeout=0) == (42, [0xB0, 1, 2])


# ---- no MIDI system -----------------------------------------------------------------------------


def test_no_jack_server_is_one_actionable_error(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"companion-absent-{uuid.uuid4().hex}")
    for opener in (
        lambda: open_input(backend="jack"),
        lambda: open_output(backend="jack"),
        lambda: list_ports("jack"),
    ):
        with pytest.raises(MidiPortError, match="no JACK server is reachable") as err:
            opener()
        assert "start a JACK server" in str(err.value) and "companion demo" in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.path.exists("/dev/snd/seq"),
    reason="needs Linux without an ALSA sequencer",
)
def test_no_alsa_sequencer_is_one_actionable_error():
    with pytest.raises(MidiPortError, match="no ALSA sequencer is reachable") as err:
        open_output()
    assert "--backend jack" in str(err.value)


# ---- real JACK ports -----------------------------------------------------------------------------


def receive(port, timeout=5.0):
    """The next message on `port`, waiting for JACK's process cycle to carry it over."""
    got = port.receive(timeout=timeout)
    assert got is not None, f"nothing reached {port!r} within {timeout} s"
    return got


@pytest.mark.e2e
def test_virtual_ports_appear_and_go(jack_server):
    inp, out = open_input(backend="jack"), open_output(backend="jack")
    assert (inp.name, out.name) == (VIRTUAL_INPUT, VIRTUAL_OUTPUT)
    ports = list_ports("jack")
    assert any(name.endswith(":" + VIRTUAL_INPUT) for name in ports["outputs"])
    assert any(name.endswith(":" + VIRTUAL_OUTPUT) for name in ports["inputs"])
    inp.close()
    out.close()
    ports = list_ports("jack")
    assert not any(VIRTUAL_INPUT in name for name in ports["outputs"])
    assert not any(VIRTUAL_OUTPUT in name for name in ports["inputs"])


@pytest.mark.e2e
def test_a_message_sent_to_our_input_arrives_stamped(jack_server):
    with (
        open_input(backend="jack") as inp,
        open_output(VIRTUAL_INPUT.upper(), backend="jack", client_name="keyboard") as kb,
    ):
        assert kb.name.endswith(":" + VIRTUAL_INPUT)
        before = time.perf_counter_ns()
        kb.send((0x90, 60, 100))
        kb.send((0xF8,))  # MIDI clock must not be filtered out
        t1, msg1 = receive(inp)
        t2, msg2 = receive(inp)
        after = time.perf_counter_ns()
    assert (msg1, msg2) == ([0x90, 60, 100], [0xF8])
    assert before <= t1 <= t2 <= after


@pytest.mark.e2e
def test_our_output_reaches_a_connected_port(jack_server):
    with (
        open_output(backend="jack") as out,
        open_input("companion out", backend="jack", client_name="synth") as synth,
    ):
        out.send((0x91, 64, 90))
        out.send((0xB1, 123, 0))
        assert receive(synth)[1] == [0x91, 64, 90]
        assert receive(synth)[1] == [0xB1, 123, 0]


@pytest.mark.e2e
def test_a_name_matching_no_jack_port_lists_the_ports(jack_server):
    with open_input(backend="jack"):
        with pytest.raises(MidiPortError, match="no MIDI output port matches 'nonesuch'") as err:
            open_output("nonesuch", backend="jack", client_name="keyboard")
        assert VIRTUAL_INPUT in str(err.value)


SIGNALS_DURING_WAITS = """
import os, queue, signal, threading, time
from midi_companion.ports import loopback_pair

_, inp = loopback_pair()
def slow_handler(*_):  # runs past the waiting get's deadline, as SIGTERM's may
    t = time.perf_counter()
    while time.perf_counter() - t < 0.003:
        pass
signal.signal(signal.SIGUSR1, slow_handler)
done = threading.Event()
def signals():
    for _ in range(1000):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.001)
    done.set()  # nothing is ever put: a wait that lost its deadline never returns
threading.Thread(target=signals, daemon=True).start()
while not done.is_set():
    try:
        inp.queue.get(timeout=0.002)
    except queue.Empty:
        pass
"""


def test_the_input_queue_wait_survives_signal_handlers():
    """The daemon waits on its input queue with a 2 ms timeout; a signal handler that runs
    past that deadline must not turn the wait into a wait forever (SimpleQueue does, in
    CPython 3.11: the daemon then ignored SIGTERM)."""
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", SIGNALS_DURING_WAITS], timeout=20, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
