"""The status line's latency meter: lead note-on in -> first note-on out, last minute."""

import math

from midi_companion.latency_meter import LatencyMeter

MS = 1_000_000


def test_an_answer_is_the_first_note_on_after_a_lead_note_on():
    m = LatencyMeter()
    m.asked(0)
    m.sent(2 * MS)  # the alto
    m.sent(3 * MS)  # the tenor: the same answer, not a second one
    m.asked(100 * MS)
    m.sent(104 * MS)
    s = m.summary(200 * MS)
    assert (s["n"], s["p50_ms"], s["p99_ms"], s["held"]) == (2, 2.0, 4.0, 0)


def test_a_lead_note_under_held_voices_is_counted_apart():
    m = LatencyMeter(window_ns=20 * MS)
    m.asked(0)
    m.sent(125 * MS)  # the next grid line's step, not an answer to the note at 0
    s = m.summary(130 * MS)
    assert s["n"] == 0 and s["held"] == 1 and math.isnan(s["p50_ms"])


def test_only_the_last_minute_counts():
    m = LatencyMeter()
    m.asked(0)
    m.sent(9 * MS)
    m.asked(61_000 * MS)
    m.sent(61_001 * MS)
    s = m.summary(61_002 * MS)
    assert s["n"] == 1 and s["p50_ms"] == 1.0


def test_the_live_daemon_measures_harmonize_answers_and_speculates(capsys):
    """A melody into the real Daemon (chorale preset, in-process ports, the wall clock):
    the status event carries the answer latency and the speculation counts."""
    import json
    import threading
    import time

    import pytest

    from midi_companion import presets
    from midi_companion.daemon import Daemon
    from midi_companion.ports import loopback_pair

    if not (presets.zoo_dir() / "chorale.onnx").is_file():
        pytest.skip("the shipped models are not in models/zoo")
    to_daemon, daemon_in = loopback_pair("player")
    out = loopback_pair("listener")[0]
    daemon = Daemon(
        presets.load("chorale"),
        daemon_in,
        out,
        seed=1,
        quiet=True,
        log_json=True,
        provider="cpu",
    )
    # what counts as an answer is a timing matter: wide here, so a loaded machine passes
    daemon.meter = LatencyMeter(window_ns=500 * MS)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        beat_s = 60.0 / daemon.clock.bpm
        time.sleep(0.3)
        for pitch in (67, 69, 71, 72, 74, 72, 71, 69, 67, 65, 64, 62):
            to_daemon.send((0x90, pitch, 90))
            time.sleep(beat_s * 0.9)
            to_daemon.send((0x80, pitch, 0))
            time.sleep(beat_s * 0.1)
        capsys.readouterr()
        daemon.status()
        status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        daemon.stopping.set()
        runner.join(timeout=30)
    assert status["event"] == "status"
    assert status["answered"] + status["held"] >= 10
    assert status["answered"] >= 1 and status["answer_p50_ms"] <= status["answer_p99_ms"]
    assert status["speculation_hits"] + status["speculation_misses"] == 12
    assert status["speculation_hits"] >= 1  # the rate is the bench's to measure
    assert status["lead_struck"] + status["lead_held"] == 12
