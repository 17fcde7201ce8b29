"""midi_companion.metrics on small hand-made cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midi_companion import metrics as m
from midi_companion.score import Note

C4, D4, E4, F4, Fs4, G4, A4, B4, C5, D5 = 60, 62, 64, 65, 66, 67, 69, 71, 72, 74


def seq(pitches, dur=1.0, start=0.0):
    """Consecutive notes of one length."""
    return [Note(start + i * dur, p, dur) for i, p in enumerate(pitches)]


EIGHTHS = seq([C4, D4, E4, F4, G4, A4, B4, C5], dur=0.5)  # one 4/4 bar of eighth notes


# ---- beat ---------------------------------------------------------------------------------
def test_straight_eighths_are_on_the_grid_and_on_even_sixteenths():
    assert m.grid_share(EIGHTHS) == 1.0
    assert m.odd_sixteenth_share(EIGHTHS) == 0.0
    np.testing.assert_allclose(m.beat_phase_histogram(EIGHTHS), [0.5, 0, 0.5, 0, 0])


def test_a_sixteenth_late_lands_on_odd_sixteenths():
    late = [Note(n.onset + 0.25, n.pitch, n.duration) for n in EIGHTHS]
    assert m.grid_share(late) == 1.0
    assert m.odd_sixteenth_share(late) == 1.0
    np.testing.assert_allclose(m.beat_phase_histogram(late), [0, 0.5, 0, 0.5, 0])


def test_triplets_are_off_the_sixteenth_grid():
    trip = seq([C4, D4, E4], dur=1 / 3)  # onsets 0, 1/3, 2/3
    assert m.grid_share(trip) == pytest.approx(1 / 3)
    assert m.grid_share(trip, grid=1 / 3) == 1.0
    np.testing.assert_allclose(m.beat_phase_histogram(trip), [1 / 3, 0, 0, 0, 2 / 3])
    np.testing.assert_allclose(m.beat_phase_histogram(trip, divisions=3), [1 / 3] * 3 + [0])


def test_tolerance_and_empty():
    assert m.grid_share([Note(0.2505, C4, 1)]) == 1.0
    assert m.grid_share([Note(0.26, C4, 1)]) == 0.0
    assert math.isnan(m.grid_share([]))
    assert math.isnan(m.odd_sixteenth_share([]))
    np.testing.assert_array_equal(m.beat_phase_histogram([]), np.zeros(5))


# ---- key ----------------------------------------------------------------------------------
def test_c_major_scale_is_c_major():
    tonic, mode, r = m.estimate_key(seq([C4, D4, E4, F4, G4, A4, B4, C5]))
    assert (tonic, mode) == (0, "major")
    assert 0.8 < r <= 1


def test_a_minor_melody_is_a_minor():
    # A natural minor, dwelling on A, C and E (long notes)
    pitches_durs = [
        (57, 2),
        (C4, 1),
        (E4, 1),
        (D4, 0.5),
        (C4, 0.5),
        (B4 - 12, 0.5),
        (57, 2),
        (E4, 1),
        (C4, 1),
        (G4, 0.5),
        (F4, 0.5),
        (57, 2),
    ]
    t, notes = 0.0, []
    for p, d in pitches_durs:
        notes.append(Note(t, p, d))
        t += d
    assert m.estimate_key(notes)[:2] == (9, "minor")


def test_key_follows_transposition():
    scale = seq([C4, D4, E4, F4, G4, A4, B4, C5])
    up = [Note(n.onset, n.pitch + 7, n.duration) for n in scale]
    assert m.estimate_key(up)[:2] == (7, "major")


def test_key_of_nothing_is_nan():
    tonic, mode, r = m.estimate_key([])
    assert (tonic, mode) == (0, "major") and math.isnan(r)


def test_scale_pcs_and_in_key_share():
    assert m.scale_pcs(0, "major") == {0, 2, 4, 5, 7, 9, 11}
    assert m.scale_pcs(9, "minor") == m.scale_pcs(0, "major")
    assert m.scale_pcs(2, "minor") == {2, 4, 5, 7, 9, 10, 0}
    notes = seq([C4, D4, E4, F4, G4, A4, B4, C5, Fs4])
    assert m.in_key_share(notes, (0, "major")) == pytest.approx(8 / 9)
    assert m.in_key_share(notes, (0, "major", 0.9)) == pytest.approx(8 / 9)  # estimate_key's
    # by count, not duration: a long F# weighs as one note
    assert m.in_key_share([Note(0, C4, 0.1), Note(1, Fs4, 8)], (0, "major")) == 0.5
    assert math.isnan(m.in_key_share([], (0, "major")))
    with pytest.raises(ValueError):
        m.scale_pcs(0, "dorian")


def test_out_of_range_is_inclusive():
    notes = seq([40, 48, 60, 72, 84, 90])
    assert m.out_of_range(notes, 48, 84) == 2
    assert m.out_of_range(notes, 0, 127) == 0


# ---- Yang & Lerch features ----------------------------------------------------------------
PIECE = [Note(0, C4, 1), Note(1, E4, 0.5), Note(1.5, G4, 0.5), Note(2, C5, 2)]


def test_features_by_hand():
    f = m.features(PIECE)
    assert set(f) == set(m.FEATURES)
    assert f["pitch_count"][0] == 4
    assert f["pitch_range"][0] == 12
    assert f["avg_pitch_interval"][0] == pytest.approx((4 + 3 + 5) / 3)
    assert f["note_count"][0] == 4
    assert f["avg_ioi"][0] == pytest.approx(2 / 3)
    pch = np.zeros(12)
    pch[[0, 4, 7]] = [0.5, 0.25, 0.25]
    np.testing.assert_allclose(f["pitch_class_histogram"], pch)
    pctm = np.zeros((12, 12))
    pctm[0, 4] = pctm[4, 7] = pctm[7, 0] = 1 / 3
    np.testing.assert_allclose(f["pitch_class_transition_matrix"], pctm.ravel())
    nlh = np.zeros(12)
    nlh[[4, 6, 2]] = [0.25, 0.5, 0.25]  # classes 1, 0.5 (twice), 2 beats
    np.testing.assert_allclose(f["note_length_histogram"], nlh)
    nltm = np.zeros((12, 12))
    nltm[4, 6] = nltm[6, 6] = nltm[6, 2] = 1 / 3
    np.testing.assert_allclose(f["note_length_transition_matrix"], nltm.ravel())


def test_features_chord_order_and_empty():
    chord = [Note(0, G4, 1), Note(0, C4, 1), Note(0, E4, 1)]  # consecutive by pitch: 60 64 67
    f = m.features(chord)
    assert f["avg_pitch_interval"][0] == pytest.approx(3.5)
    assert f["avg_ioi"][0] == 0.0  # one distinct onset
    empty = m.features([])
    assert all(np.all(v == 0) for v in empty.values())


def test_length_classes():
    assert m.LENGTH_CLASSES[m.length_class(0.3)] == pytest.approx(1 / 3)
    assert m.LENGTH_CLASSES[m.length_class(0.7)] == pytest.approx(2 / 3)
    assert m.length_class(6.0) == 0  # longer than a whole note: the whole note
    assert m.LENGTH_CLASSES[m.length_class(0.06)] == 0.125


# ---- KDE and set comparison ---------------------------------------------------------------
def test_scott_bandwidth_and_kde_integrates_to_one():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert m.kde_bandwidth(x) == pytest.approx(np.std(x, ddof=1) * 4**-0.2)
    assert m.kde_bandwidth(np.zeros(5)) == 1e-3  # zero variance: the floor
    grid = np.linspace(-10, 15, 5001)
    pdf = m.kde_pdf(np.array([0.0, 1.0, 2.0, 5.0]), grid)
    assert float(np.sum((pdf[1:] + pdf[:-1]) * np.diff(grid)) / 2) == pytest.approx(1, abs=1e-6)
    # one point: a normal density of the given bandwidth
    assert m.kde_pdf(np.array([0.0]), np.array([0.0]), 2.0)[0] == pytest.approx(
        1 / (2 * math.sqrt(2 * math.pi))
    )


def test_overlap_of_equal_and_of_far_samples():
    a = np.array([1.0, 2.0, 2.5, 3.0, 4.0])
    same = m.overlap_and_kl(a, a.copy())
    assert same["oa"] == pytest.approx(1, abs=1e-3)
    assert same["kl"] == pytest.approx(0, abs=1e-9)
    far = m.overlap_and_kl(a, a + 100)
    assert far["oa"] < 1e-6
    assert far["kl"] > 10
    const = m.overlap_and_kl(np.zeros(4), np.zeros(6))  # both zero-variance: equal bumps
    assert const["oa"] == pytest.approx(1, abs=1e-3)


def _pieces(rng, n_pieces, lo, hi):
    out = []
    for _ in range(n_pieces):
        t, notes = 0.0, []
        for _ in range(int(rng.integers(lo, hi))):
            d = float(rng.choice([0.25, 0.5, 1.0]))
            notes.append(Note(t, int(rng.integers(55, 75)), d))
            t += d
        out.append(notes)
    return out


def test_compare_identical_sets_overlap_almost_fully():
    real = _pieces(np.random.default_rng(1), 12, 8, 16)
    res = m.compare_sets(real, real)
    assert set(res) == set(m.FEATURES)
    # inter holds the 12 zero self-distances that intra lacks, so not exactly 1
    assert all(r["oa"] > 0.7 for r in res.values())
    assert res["note_count"]["oa"] > 0.9
    assert res["note_count"]["kl"] < 0.05


def test_compare_sets_with_different_note_counts_do_not_overlap():
    rng = np.random.default_rng(2)
    real = _pieces(rng, 10, 8, 16)
    generated = _pieces(rng, 10, 60, 80)
    res = m.compare_sets(generated, real)
    assert res["note_count"]["oa"] < 0.01
    assert res["note_count"]["kl"] > 5
    assert res["pitch_class_histogram"]["oa"] > res["note_count"]["oa"]


def test_compare_sets_distances_by_hand():
    real = [seq([C4]), seq([C4, D4]), seq([C4, D4, E4, F4])]  # note counts 1, 2, 4
    generated = [seq([G4] * 3)]  # note count 3
    res = m.compare_sets(generated, real)["note_count"]
    intra = np.array([1.0, 3.0, 2.0])  # distinct pairs only
    inter = np.array([2.0, 1.0, 1.0])
    assert res == m.overlap_and_kl(intra, inter)


def test_compare_sets_needs_pieces():
    with pytest.raises(ValueError):
        m.compare_sets([PIECE], [PIECE])


def test_self_overlap_is_seeded_and_needs_three():
    real = _pieces(np.random.default_rng(3), 9, 8, 16)
    a, b = m.self_overlap(real, rng_seed=0), m.self_overlap(real, rng_seed=0)
    assert a == b
    assert 0 < a["note_count"]["oa"] <= 1
    assert m.self_overlap(real, rng_seed=5) != a
    with pytest.raises(ValueError):
        m.self_overlap(real[:2])


# ---- pitch distributions ------------------------------------------------------------------
def test_pitch_distribution_distance():
    assert m.pitch_distribution_distance(seq([C4, C4]), seq([D4])) == 1.0
    assert m.pitch_distribution_distance(seq([C4, D4]), seq([D4, C4, C4, D4])) == 0.0
    assert m.pitch_distribution_distance(seq([C4, D4]), seq([C4, E4])) == pytest.approx(0.5)
    assert math.isnan(m.pitch_distribution_distance([], seq([C4])))


def test_histogram_l1():
    assert m.histogram_l1([1, 0], [0, 1]) == 2.0
    assert m.histogram_l1([2, 2], [1, 1]) == 0.0  # normalized first
    assert m.histogram_l1([3, 1], [1, 1]) == pytest.approx(0.5)
    assert math.isnan(m.histogram_l1([0, 0], [1, 1]))
    with pytest.raises(ValueError):
        m.histogram_l1([1, 0], [1, 0, 0])


# ---- voices -------------------------------------------------------------------------------
def test_voice_grid_by_hand():
    voices = [[Note(0, C5, 0.5)], [Note(0.25, C4, 0.25), Note(0.25, E4, 0.5)]]
    g = m.voice_grid(voices, 0.25)
    np.testing.assert_array_equal(g, [[C5, -1], [C5, E4], [-1, E4]])
    # a note shorter than a step still fills its step
    np.testing.assert_array_equal(m.voice_grid([[Note(0.1, C4, 0.05)]], 0.25), [[C4]])
    assert m.voice_grid([[], []]).shape == (0, 2)


def test_grid_to_voices_round_trip():
    g = np.array([[C5, 48], [C5, -1], [D5, 50], [-1, 50]])
    voices = m.grid_to_voices(g, 0.25)
    assert voices[0] == [Note(0, C5, 0.5), Note(0.5, D5, 0.25)]
    np.testing.assert_array_equal(m.voice_grid(voices, 0.25), g)


def test_parallel_fifth_by_hand():
    sop, alto = seq([C5, D5]), seq([F4, G4])  # a fifth moving up a step
    res = m.parallels([sop, alto])
    assert (res["fifths"], res["octaves"], res["steps"]) == (1, 0, 8)
    assert res["fifths_per_100"] == pytest.approx(12.5)


def test_contrary_oblique_and_repeated_fifths_are_not_parallels():
    # contrary motion from a fifth to a twelfth (still 7 mod 12)
    assert m.parallels([seq([C5, 79]), seq([F4, C4])])["fifths"] == 0
    # the same fifth re-struck: no voice changes pitch
    assert m.parallels([seq([C5, C5]), seq([F4, F4])])["fifths"] == 0
    # a rest in between breaks the succession
    alto = [Note(0, F4, 1), Note(1.25, G4, 0.75)]
    assert m.parallels([seq([C5, D5]), alto])["fifths"] == 0
    # fifth to diminished fifth
    assert m.parallels([seq([C5, D5]), seq([F4, Fs4 + 2])])["fifths"] == 0


def test_parallels_over_every_pair():
    sop, alto, bass = seq([C5, D5]), seq([F4, G4]), seq([53, 55])
    # S-A fifth, S-B twelfth (fifth), A-B octave
    res = m.parallels([sop, alto, bass])
    assert (res["fifths"], res["octaves"]) == (2, 1)
    assert m.parallels([seq([C4, D4]), seq([C4, D4])])["octaves"] == 1  # unison
    assert math.isnan(m.parallels([[], []])["fifths_per_100"])


def test_voice_crossing_ranges_and_changes():
    sop, alto = seq([C5, C4], dur=1), [Note(0, E4, 2)]
    assert m.voice_crossing([sop, alto]) == 0.5
    assert math.isnan(m.voice_crossing([sop, []]))
    assert m.voice_ranges([sop, alto, []]) == [(C4, C5), (E4, E4), None]
    whole = [Note(0, C4, 4), Note(4, D4, 4)]
    np.testing.assert_allclose(m.changes_per_bar([EIGHTHS, whole]), [4.0, 1.0])
    chord = [Note(0, C4, 4), Note(0, E4, 4)]  # one onset step
    np.testing.assert_allclose(m.changes_per_bar([chord]), [1.0])
    assert np.isnan(m.changes_per_bar([[]])).all()


def test_consonance_with_lead():
    lead = [Note(0, C5, 2)]
    other = [Note(0, E4, 1), Note(1, Fs4, 1)]  # minor sixth, then tritone
    assert m.consonance_with_lead(lead, [other]) == 0.5
    assert m.consonance_with_lead(lead, [other, [Note(0, G4, 2)]]) == 0.75  # + a fourth
    assert m.consonance_with_lead(lead, [other, []]) == 0.5  # a resting voice is ignored
    assert math.isnan(m.consonance_with_lead(lead, [[Note(4, C4, 1)]]))


# ---- MuseGAN ------------------------------------------------------------------------------
def test_empty_bars():
    a = [Note(0, C4, 1), Note(8, C4, 1)]  # bars 0 and 2
    held = [Note(0, E4, 8)]  # sounds through bars 0 and 1
    np.testing.assert_allclose(m.empty_bars([a, held], 4, n_bars=4), [0.5, 0.5])
    np.testing.assert_allclose(m.empty_bars([a, held]), [1 / 3, 1 / 3])  # 3 bars by default
    np.testing.assert_allclose(m.empty_bars([[Note(0, C4, 4)]], 4, n_bars=2), [0.5])
    assert np.isnan(m.empty_bars([[]])).all()


def test_used_pitch_classes():
    bar0 = [Note(0, C4, 1), Note(1, E4, 1), Note(2, G4, 1)]
    bar1 = [Note(4, C4, 1), Note(5, C5, 1)]
    out = m.used_pitch_classes([bar0 + bar1 + [Note(12, C4, 1)], []], 4)
    assert out[0] == pytest.approx((3 + 1 + 1) / 3)  # bar 2 is empty and skipped
    assert math.isnan(out[1])


def test_tonal_centroid_and_distance():
    assert np.linalg.norm(m.tonal_centroid(np.eye(12)[0])) == pytest.approx(1.5)
    c_then_c = [Note(0, C4, 4), Note(4, C4, 4)]
    c_then_g = [Note(0, C5, 4), Note(4, G4, 4)]
    # C vs G: fifths circle pi/6 apart, minor thirds pi/2, major thirds (r=0.5) 2pi/3
    cg = math.sqrt((2 * math.sin(math.pi / 12)) ** 2 + 2 + (0.5 * math.sqrt(3)) ** 2)
    assert m.tonal_distance(c_then_c, c_then_g) == pytest.approx(cg / 2)
    assert m.tonal_distance(c_then_c, c_then_c) == pytest.approx(0)
    assert math.isnan(m.tonal_distance([Note(0, C4, 4)], [Note(4, C4, 4)]))


def test_grid_share_on_16ths_or_triplets():
    triplets = [Note(i / 3, 60, 1 / 3) for i in range(6)]
    assert m.grid_share(triplets, 0.25) == pytest.approx(2 / 6)  # beats 0 and 1 only
    assert m.grid_share(triplets, (0.25, 1 / 3)) == 1.0
    mixed = triplets + [Note(2.25, 62, 0.25), Note(2.1, 64, 0.1)]
    assert m.grid_share(mixed, (0.25, 1 / 3)) == pytest.approx(7 / 8)
