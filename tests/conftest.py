"""Shared test setup: a Hypothesis profile for a small shared machine, the benchmark data
fixture (tests that need ../shared/data/benchmarks skip where it is absent) and the JACK
server fixture (tests/jack_server.py), defined here once so the session starts one server."""

from __future__ import annotations

import pytest
from hypothesis import settings
from jack_server import jack_server  # noqa: F401  (one private JACK server per session)

from companion import benchmarks
from companion.errors import DataError

# No deadline: timings on a busy shared machine are noise, not failures.
settings.register_profile("companion", deadline=None, max_examples=50)
settings.load_profile("companion")


@pytest.fixture(scope="session")
def bench_dir():
    """The benchmarks folder; skips the test where the data is not installed."""
    try:
        return benchmarks.data_dir()
    except DataError as err:
        pytest.skip(str(err))
