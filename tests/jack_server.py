"""A private JACK server for end-to-end tests (no sound hardware: the dummy driver).

Any test module in tests/ can use it (the fixture is registered in tests/conftest.py):

    @pytest.mark.e2e
    def test_something(jack_server):
        out = open_output(backend="jack")  # talks to the private server

The fixture starts `jackd -S --no-realtime -d dummy -r 48000 -p 64` (companion.jack_harness's
JackServer: with -S a late client on a loaded machine delays a cycle instead of losing its
MIDI) under a unique JACK_DEFAULT_SERVER name, points this process and its children at it,
waits until a client can connect, yields a JackServer, then stops it and restores the
environment. Without jackd the tests are skipped, except under CI=true, where a missing
jackd is a failure. One server serves the whole session.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from midi_companion.errors import CompanionError
from midi_companion.jack_harness import JackServer as _Jackd


@dataclass
class JackServer:
    name: str  # the JACK_DEFAULT_SERVER value this process now uses
    pid: int
    log: Path  # jackd's stdout and stderr


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """A running private JACK server (see the module docstring)."""
    if shutil.which("jackd") is None:
        reason = "jackd is not installed (apt install jackd2)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the JACK end-to-end tests")
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("jackd") / "jackd.log"
    server = _Jackd(log=log, prefix="companion-test")
    try:
        server.__enter__()
    except CompanionError as err:
        pytest.fail(str(err))
    try:
        yield JackServer(server.name, server.proc.pid, log)
    finally:
        server.__exit__()
