"""Sampling: masks are never violated, top-k / top-p restrict, the draw follows p."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from midi_companion.sampling import Sampling, sample


@given(st.lists(st.floats(-20, 20), min_size=2, max_size=40), st.data())
def test_a_masked_token_is_never_sampled(logits, data):
    x = np.array(logits)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=x.size, max_size=x.size)))
    mask[data.draw(st.integers(0, x.size - 1))] = True
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    params = Sampling(
        temperature=data.draw(st.floats(0.1, 3.0)),
        top_k=data.draw(st.integers(0, x.size)),
        top_p=data.draw(st.floats(0.05, 1.0)),
    )
    for _ in range(20):
        assert mask[sample(x, rng, params, mask)]


def test_top_k_and_top_p_keep_only_the_likeliest():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    assert {sample(x, rng, Sampling(top_k=2)) for _ in range(300)} == {0, 1}
    assert {sample(x, rng, Sampling(top_p=0.7)) for _ in range(300)} == {0, 1}


def test_draws_follow_the_distribution():
    p = np.array([0.1, 0.6, 0.0, 0.3])
    rng = np.random.default_rng(1)
    counts = np.bincount(
        [sample(np.log(p + 1e-300), rng, Sampling()) for _ in range(6000)], minlength=4
    )
    assert counts[2] == 0
    assert np.allclose(counts / 6000, p, atol=0.025)


def test_the_same_seed_draws_the_same():
    x = np.random.default_rng(5).normal(size=30)
    a = [sample(x, np.random.default_rng(7), Sampling(0.9, 5, 0.9)) for _ in range(3)]
    assert len(set(a)) == 1
