"""One percentile definition for every report: nearest rank."""

from midi_companion.stats import percentiles


def test_nearest_rank():
    assert percentiles(range(1, 101), 50, 99, 100) == (50, 99, 100)
    assert percentiles([3, 1, 2], 50) == (2,)  # any order; always a value that occurred
    assert percentiles([0.4, 0.1], 50, 99) == (0.1, 0.4)
    assert percentiles([7], 0, 50, 100) == (7, 7, 7)


def test_no_values_give_the_default():
    assert percentiles([], 50, 99) == (0, 0)
    assert percentiles([], 50, default=0.0) == (0.0,)
