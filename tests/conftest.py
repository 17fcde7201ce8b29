"""Shared test setup: a Hypothesis profile for a small shared machine, the benchmark data
fixture (the data ships in companion/data/benchmarks; a test that needs it skips where it
is absent, and fails instead under CI) and the JACK
server fixture (tests/jack_server.py), defined here once so the session starts one server."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from jack_server import jack_server  # noqa: F401  (one private JACK server per session)

from midi_companion import benchmarks
from midi_companion.errors import DataError

# No deadline: timings on a busy shared machine are noise, not failures.
settings.register_profile("companion", deadline=None, max_examples=50)
settings.load_profile("companion")


@pytest.fixture(scope="session")
def bench_dir():
    """The benchmarks folder; skips the test where the data is not installed."""
    try:
        return benchmarks.data_dir()
    except DataError as err:
        if os.environ.get("CI"):  # the data ships with the package: under CI, absent = broken
            pytest.fail(str(err))
        pytest.skip(str(err))
