"""Shared test setup: a Hypothesis profile for a small shared machine, and the benchmark
data fixture (tests that need ../shared/data/benchmarks skip where it is absent)."""

from __future__ import annotations

import pytest
from hypothesis import settings

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
