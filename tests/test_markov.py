"""midi_companion.markov: the first-order Markov baselines."""

from __future__ import annotations

import numpy as np
import pytest

from midi_companion import metrics
from midi_companion.markov import TokenMarkov, VoiceMarkov
from midi_companion.representations import REGISTRY
from midi_companion.representations.events import Events
from midi_companion.sampling import Sampling
from midi_companion.score import Note, Score


def test_token_markov_learns_the_cycle():
    mk = TokenMarkov.fit([np.array([1, 2, 3, 1, 2, 3])], vocab_size=5)
    assert int(np.argmax(mk.logits(1))) == 2
    assert int(np.argmax(mk.logits(3))) == 1
    assert int(np.argmax(mk.logits(None))) == 1  # start distribution
    for prev in (None, 0, 1, 4):
        assert np.exp(mk.logits(prev)).sum() == pytest.approx(1)
    np.testing.assert_allclose(mk.logits(4), np.log(np.full(5, 0.2)))  # unseen: uniform
    # add-alpha: 2 counts of 1 -> 2 plus 0.01 on each of 5 tokens
    assert np.exp(mk.logits(1)[2]) == pytest.approx(2.01 / 2.05)


def test_token_markov_nll():
    mk = TokenMarkov.fit([np.array([1, 2, 3, 1, 2, 3])], vocab_size=5, alpha=1e-9)
    assert mk.nll([np.array([1, 2, 3, 1])]) == pytest.approx(0, abs=1e-6)
    assert mk.nll([np.array([1, 3])]) > 10  # never seen
    with pytest.raises(ValueError):
        TokenMarkov.fit([np.array([7])], vocab_size=5)


def _cycle_tokens(rep: Events) -> list[int]:
    """On60, +1/2, Off60, On62, +1/4, Off62, On64, +1 beat, Off64: every token has one
    successor, so a tiny alpha makes the chain (almost) deterministic."""
    on, off = rep.note_on_offset, rep.note_off_offset

    def shift(k):
        return rep.shift_offset + k - 1

    body = [on + 60, shift(6), off + 60, on + 62, shift(3), off + 62, on + 64, shift(12), off + 64]
    return [rep.velocity_offset + rep.velocity_bin(80)] + body * 4


def test_generate_through_events_follows_the_chain():
    rep = Events()
    tokens = _cycle_tokens(rep)
    mk = TokenMarkov.fit([np.array(tokens)], rep.vocab_size, alpha=1e-6)
    notes = mk.generate(tokens[:2], rep, 4.0, np.random.default_rng(0))
    vel = rep.velocities[rep.velocity_bin(80)]
    # the prompt's C4 (onset 0) is left out; onsets are relative to the prompt end (beat 0)
    assert notes == [
        Note(0.5, 62, 0.25, vel),
        Note(0.75, 64, 1.0, vel),
        Note(1.75, 60, 0.5, vel),
        Note(2.25, 62, 0.25, vel),
        Note(2.5, 64, 1.0, vel),
        Note(3.5, 60, 0.5, vel),
    ]


def test_generate_relative_to_prompt_end_and_closes_open_notes():
    rep = Events()
    tokens = _cycle_tokens(rep)
    mk = TokenMarkov.fit([np.array(tokens)], rep.vocab_size, alpha=1e-6)
    prompt = tokens[:5]  # ... On62 at beat 0.5: prompt ends at 0.5
    notes = mk.generate(prompt, rep, 0.3, np.random.default_rng(0))
    # then +1/4 (to 0.75 < 0.8), Off62 (the prompt's note: left out), On64 at 0.75 (0.25
    # after the prompt end), +1 beat: position 1.75 >= 0.8, stop; flush closes On64 there.
    assert notes == [Note(0.25, 64, 1.0, rep.velocities[rep.velocity_bin(80)])]


def test_generate_from_a_smoothed_chain_gives_valid_notes():
    rep = Events()
    score = Score.from_notes(
        [Note(i * 0.5, p, 0.5, 70 + i) for i, p in enumerate([60, 62, 64, 65, 67, 65, 64, 62])]
        + [Note(0, 48, 4, 90)]
    )
    seqs = [np.array(rep.encode(score.transposed(k))) for k in range(-3, 4)]
    mk = TokenMarkov.fit(seqs, rep.vocab_size, alpha=0.05)
    rng = np.random.default_rng(7)
    for prompt in (seqs[0][:10], []):
        notes = mk.generate(prompt, rep, 8.0, rng, temperature=1.2)
        assert notes, "a smoothed chain over 8 beats makes notes"
        for n in notes:
            assert 0 <= n.pitch <= 127 and 1 <= n.velocity <= 127
            assert 0 <= n.onset < 8.0 and n.duration > 0
        assert notes == sorted(notes)


def test_generate_needs_a_token_representation():
    mk = TokenMarkov.fit([np.array([0, 1])], 2)
    with pytest.raises(ValueError):
        mk.generate([], REGISTRY["pianoroll"](), 4.0, np.random.default_rng(0))


def test_voice_markov_alternation_and_rests():
    soprano = [Note(i * 0.25, 60 if i % 2 == 0 else 62, 0.25) for i in range(16)]
    bass = [Note(1.0, 48, 3.0)]  # rests for the first beat
    g = metrics.voice_grid([soprano, bass], 0.25)
    vm = VoiceMarkov.fit([g], alpha=1e-6)
    out = vm.generate(np.zeros(10, dtype=np.int64), 2, np.random.default_rng(0))
    assert out.shape == (10, 2)
    np.testing.assert_array_equal(out[:, 0], [60, 62] * 5)
    assert out[0, 1] == -1  # the bass starts with a rest
    assert set(out[:, 1]) <= {-1, 48}
    assert vm.generate(np.zeros(3), 1, np.random.default_rng(0)).shape == (3, 1)
    with pytest.raises(ValueError):
        vm.generate(np.zeros(3), 3, np.random.default_rng(0))
    with pytest.raises(ValueError):
        VoiceMarkov.fit([g, g[:, :1]])


def test_generate_takes_the_models_sampling_params():
    rep = Events()
    tokens = _cycle_tokens(rep)
    mk = TokenMarkov.fit([np.array(tokens)], rep.vocab_size, alpha=0.5)
    greedy = Sampling(top_k=1)  # always the most likely allowed token: the cycle
    a = mk.generate(tokens[:2], rep, 4.0, np.random.default_rng(0), params=greedy)
    b = mk.generate(tokens[:2], rep, 4.0, np.random.default_rng(1), params=greedy)
    assert a == b and [n.pitch for n in a] == [62, 64, 60, 62, 64, 60]
