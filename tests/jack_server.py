"""A private JACK server for end-to-end tests (no sound hardware: the dummy driver).

Use it from any test module in tests/:

    from jack_server import jack_server  # noqa: F401  (the fixture)

    @pytest.mark.e2e
    def test_something(jack_server):
        out = open_output(backend="jack")  # talks to the private server

The fixture starts `jackd --no-realtime -d dummy` under a unique JACK_DEFAULT_SERVER name,
points this process at it (libjack reads the variable when a client opens), waits until a
client can connect, yields a JackServer, then stops it and restores the variable. Without
jackd the tests are skipped, except under CI=true, where a missing jackd is a failure.
One server serves the whole session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 15.0


@dataclass
class JackServer:
    name: str  # the JACK_DEFAULT_SERVER value this process now uses
    pid: int
    log: Path  # jackd's stdout and stderr


def _can_connect() -> bool:
    import rtmidi

    try:
        client = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "jack-server-probe")
    except rtmidi.SystemError:
        return False
    client.delete()
    return True


def _wait_until_up(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jackd exited with {proc.returncode}:\n{log.read_text()}")
        if _can_connect():
            return
        time.sleep(0.1)  # polling a server start-up, not timing anything
    pytest.fail(f"jackd did not come up within {START_TIMEOUT_S} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """A running private JACK server (see the module docstring)."""
    jackd = shutil.which("jackd")
    if jackd is None:
        reason = "jackd is not installed (apt install jackd2)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the JACK end-to-end tests")
        pytest.skip(reason)
    name = f"companion-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    saved = os.environ.get("JACK_DEFAULT_SERVER")
    log = tmp_path_factory.mktemp("jackd") / "jackd.log"
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [jackd, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "64"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    os.environ["JACK_DEFAULT_SERVER"] = name
    try:
        _wait_until_up(proc, log)
        yield JackServer(name, proc.pid, log)
    finally:
        _stop(proc)
        if saved is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = saved
