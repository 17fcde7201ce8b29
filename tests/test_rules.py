"""midi_companion.rules: range, key, grid and voice-leading constraints, on cases known by hand;
and that the live answers obey them (the shipped models through the offline path)."""

import numpy as np
import pytest

from midi_companion import presets, rules
from midi_companion.representations import REGISTRY
from midi_companion.score import Note


def _events(resolution=12, max_shift=24):
    return REGISTRY["events"](resolution=resolution, max_shift=max_shift, velocity_bins=1)


def test_key_of_a_c_major_scale_and_of_an_a_minor_tune():
    c_major = [Note(i, p, 1.0) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    assert rules.key_from_profile(rules.pitch_class_profile(c_major))[:2] == (0, "major")
    a_minor = [
        Note(i, p, 2.0 if p % 12 in (9, 0, 4) else 0.5)
        for i, p in enumerate([69, 72, 76, 74, 72, 71, 69, 64, 69])
    ]
    assert rules.key_from_profile(rules.pitch_class_profile(a_minor))[:2] == (9, "minor")
    assert rules.scale_pcs(7, "major") == {7, 9, 11, 0, 2, 4, 6}


def test_key_bias_is_zero_inside_the_key_and_minus_strength_outside():
    b = rules.key_bias(np.array([60, 61, 66, 67]), (0, "major"), 2.5)
    assert b.tolist() == [0.0, -2.5, -2.5, 0.0]
    assert np.isinf(rules.key_bias(np.array([61]), (0, "major"), np.inf)[0])


@pytest.mark.parametrize(
    "name,program,expected",
    [
        ("alto", 52, (52, 74)),
        ("Bass voice", 0, (36, 66)),
        ("answer", 73, (60, 96)),
        ("answer", 0, (21, 108)),
        ("cello", 42, (36, 76)),
    ],
)
def test_default_ranges_by_voice_name_then_program(name, program, expected):
    assert rules.default_range(name, program) == expected


def test_phrase_grid_is_sixteenths_unless_the_phrase_plays_triplets():
    straight = [Note(i * 0.25, 60, 0.25) for i in range(8)]
    assert rules.phrase_grid(straight, 12) == {0, 3, 6, 9}
    triplets = [Note(i / 3, 60, 1 / 3) for i in range(9)]
    assert rules.phrase_grid(triplets, 12) == {0, 3, 4, 6, 8, 9}
    assert rules.phrase_grid(straight, 4) == {0, 1, 2, 3}
    assert rules.phrase_grid(straight, 6) == set(range(6))  # no 16th grid at 6 per beat


def test_events_rules_mask_notes_out_of_range_and_shifts_off_the_grid():
    rep = _events()
    dec = rep.stream_decoder(0)
    for tok in (rep.velocity_offset, 60):  # velocity, NoteOn 60 at step 0
        dec.feed(tok)
    r = rules.EventsRules(rep, 55, 80, grid=frozenset({0, 3, 6, 9}))
    mask, bias = r.apply(dec)
    assert mask[rep.note_on_offset + 62] and not mask[rep.note_on_offset + 50]
    assert not mask[rep.note_on_offset + 90]
    shifts = [k for k in range(1, 25) if mask[rep.shift_offset + k - 1]]
    assert shifts == [3, 6, 9, 12, 15, 18, 21, 24]
    assert not bias.any()


def test_events_rules_key_bias_and_scale_lock():
    rep = _events()
    dec = rep.stream_decoder(0)
    dec.feed(rep.velocity_offset)
    soft = rules.EventsRules(rep, 0, 127, key=(0, "major"), key_strength=3.0)
    mask, bias = soft.apply(dec)
    assert bias[rep.note_on_offset + 61] == -3.0 and bias[rep.note_on_offset + 62] == 0
    assert mask[rep.note_on_offset + 61]
    lock = rules.EventsRules(rep, 0, 127, key=(0, "major"), key_strength=3.0, scale_lock=True)
    mask, _ = lock.apply(dec)
    assert not mask[rep.note_on_offset + 61] and mask[rep.note_on_offset + 62]


def test_events_rules_fall_back_to_the_grammar_rather_than_forbid_everything():
    rep = _events()
    dec = rep.stream_decoder(0)
    dec.feed(rep.velocity_offset)  # only note-ons may follow a velocity
    r = rules.EventsRules(rep, 200, 200)  # a range no note fits
    mask, _ = r.apply(dec)
    assert mask.any() and (mask == dec.allowed()).all()


def test_voice_leading_forbids_parallel_fifths_and_octaves_and_crossing():
    cands = np.array([50, 52, 53, 55, 60, 62, 65, 67])
    # soprano G4 -> A4 (67 -> 69); the alto was C4 (60), a fifth below: D4 (62) is parallel
    ok = rules.voice_leading_mask(cands, 60, [(67, 69)], above=69)
    assert not ok[cands == 62][0]
    assert ok[cands == 60][0]  # holding is no parallel
    assert ok[cands == 55][0]  # contrary motion
    # octaves: soprano 72 -> 74, alto 60 -> 62 is parallel octaves
    ok = rules.voice_leading_mask(cands, 60, [(72, 74)], above=74)
    assert not ok[cands == 62][0]
    # crossing: nothing above the voice above
    ok = rules.voice_leading_mask(cands, None, [], above=58)
    assert ok.tolist() == [True, True, True, True, False, False, False, False]


def test_presets_give_each_part_a_range_and_check_it(tmp_path):
    chorale = presets.load("chorale")
    assert [t.range for t in chorale.tracks] == [(52, 74), (46, 69), (36, 66)]
    assert presets.load("folk").tracks[0].range == (60, 96)
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "folk"\nmode = "continue"\n[[tracks]]\nchannel = 1\nrange = [80, 60]\n')
    with pytest.raises(presets.PresetError, match=r"range must be \[low, high\]"):
        presets.load(str(bad))
