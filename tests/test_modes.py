"""The modes through the offline path (virtual clock, same Performer as live), with a small
real model trained and exported by the project's own commands."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from midi_companion import presets
from midi_companion.offline import perform
from midi_companion.score import Note, Score, Track

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

PRESET = """
model = "{model}"
mode = "continue"
on_input = "{on_input}"
[[tracks]]
name = "answer"
channel = 3
program = 73
[timing]
bars = {bars}
silence_beats = 1.0
start_on = "{start_on}"
"""


def companion(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "midi_companion", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    """tiny-lstm (events over a few Bach chorales), trained and exported for real."""
    d = tmp_path_factory.mktemp("tiny")
    companion("train", ROOT / "models/configs/tiny-lstm.toml", cwd=d)
    companion("export", d / "runs/tiny-lstm/best.pt", "-o", d / "tiny.onnx", cwd=d)
    return d / "tiny.onnx"


def make_preset(tmp_path, model, **kw):
    values = dict(model=model, on_input="interrupt", bars=2, start_on="beat") | kw
    path = tmp_path / "p.toml"
    path.write_text(PRESET.format(**values))
    return presets.load(str(path))


def phrase(start=0.0, n=8):
    return [Note(start + i * 0.5, 60 + (i * 2) % 12, 0.5, 90) for i in range(n)]


def pairs_ok(score):
    """Every note has positive length (the reader pairs note-ons with note-offs)."""
    return all(n.duration > 0 for t in score.tracks for n in t.notes)


def test_continue_answers_after_the_phrase_on_the_next_beat(tmp_path, token_model):
    preset = make_preset(tmp_path, token_model)
    score = Score.from_notes(phrase())
    out = perform(preset, score, seed=1)
    player, answer = out.tracks
    assert [n.pitch for n in player.notes] == [n.pitch for n in score.notes]
    assert answer.channel == 2 and answer.program == 73
    assert answer.notes, "the model answered nothing"
    # The phrase ends right on beat 4: the response starts there (no beat of silence that
    # would put the answer off the phrase's bar) and lasts 2 bars.
    assert score.end == 4.0
    assert all(4.0 - 1e-6 <= n.onset and n.end <= 4.0 + 8 + 1e-6 for n in answer.notes)
    assert pairs_ok(out)
    # A phrase that ends between beats is answered from the next beat.
    late = Score.from_notes(phrase() + [Note(4.0, 72, 0.3, 90)])
    answer = perform(preset, late, seed=1).tracks[1]
    assert answer.notes and all(5.0 - 1e-6 <= n.onset for n in answer.notes)


def test_answer_start_is_the_next_beat_or_bar_or_now_when_on_one():
    from midi_companion.modes.continuation import answer_start
    from midi_companion.presets import Timing

    assert answer_start(4.0, Timing(start_on="beat")) == 4.0
    assert answer_start(4.3, Timing(start_on="beat")) == 5.0
    assert answer_start(4.3, Timing(start_on="bar", beats_per_bar=4)) == 8.0
    assert answer_start(8.0, Timing(start_on="bar", beats_per_bar=4)) == 8.0


def test_continue_is_deterministic_for_a_seed(tmp_path, token_model):
    preset = make_preset(tmp_path, token_model)
    score = Score.from_notes(phrase())
    a = perform(preset, score, seed=7).tracks[1].notes
    b = perform(preset, score, seed=7).tracks[1].notes
    c = perform(preset, score, seed=8).tracks[1].notes
    assert a == b
    assert a != c


def test_start_on_bar_and_bars_override(tmp_path, token_model):
    preset = make_preset(tmp_path, token_model, start_on="bar")
    out = perform(preset, Score.from_notes(phrase(n=5)), seed=2, bars=1)
    answer = out.tracks[1].notes
    assert answer and min(n.onset for n in answer) >= 4.0 - 1e-6
    assert max(n.end for n in answer) <= 8.0 + 1e-6


def test_new_input_interrupts_or_overlaps_the_response(tmp_path, token_model):
    # With the default silence the first phrase gets answered; the second phrase starts
    # during the answer (beat 6), so with "interrupt" nothing of the answer sounds after it.
    first = phrase(0.0)
    second = phrase(6.0, n=2)
    score = Score.from_notes(first + second)
    for on_input in ("interrupt", "overlap"):
        preset = make_preset(tmp_path, token_model, on_input=on_input, bars=4)
        preset = replace(preset, timing=replace(preset.timing, silence_beats=1.0))
        out = perform(preset, score, seed=3)
        answer = out.tracks[1].notes
        assert any(n.onset < 6.0 for n in answer), on_input  # answered before the 2nd phrase
        sounding_on = [n for n in answer if n.onset < 8.0 and n.end > 6.0 + 1e-6]
        if on_input == "interrupt":  # cut at the second phrase: nothing sounds in [6, 8)
            assert sounding_on == []
        else:  # the answer plays on under the second phrase
            assert sounding_on
        assert pairs_ok(out)


def test_cli_continue_writes_input_plus_answer(tmp_path, token_model):
    preset = make_preset(tmp_path, token_model)
    Score.from_notes(phrase()).to_midi(tmp_path / "in.mid")
    companion(
        "continue",
        preset.path,
        tmp_path / "in.mid",
        "-o",
        tmp_path / "out.mid",
        "--bars",
        1,
        "--seed",
        4,
        cwd=tmp_path,
    )
    out = Score.from_midi(tmp_path / "out.mid")
    assert len(out.tracks) == 2 and out.tracks[1].notes


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, token_model):
    preset = make_preset(tmp_path, token_model)
    (tmp_path / "notmidi.mid").write_text("hello")
    cases = [
        ["continue", preset.path, tmp_path / "notmidi.mid", "-o", tmp_path / "o.mid"],
        ["continue", preset.path, tmp_path / "missing.mid", "-o", tmp_path / "o.mid"],
    ]
    good = tmp_path / "good.mid"
    Score.from_notes(phrase()).to_midi(good)
    kept = good.read_bytes()
    cases += [
        ["continue", preset.path, good, "-o", good],  # would overwrite the input
        ["continue", preset.path, good, "-o", tmp_path / "no-such-dir" / "o.mid"],
        ["continue", preset.path, good, "-o", tmp_path / "o.mid", "--seed", "-1"],
        ["continue", preset.path, good, "-o", tmp_path / "o.mid", "--bars", "0"],
        ["continue", preset.path, good, "-o", tmp_path / "o.mid", "--bars", "65"],
        ["run", preset.path, "--bpm", "nan"],
        ["run", preset.path, "--record", tmp_path / "no-such-dir" / "take.mid"],
        ["demo", preset.path, "-o", good / "take.mid"],  # its folder is a file
    ]
    (tmp_path / "trunc.onnx").write_bytes(token_model.read_bytes()[:1000])
    cases.append(
        [
            "continue",
            make_preset(tmp_path, tmp_path / "trunc.onnx").path,
            tmp_path / "notmidi.mid",
            "-o",
            tmp_path / "o.mid",
        ]
    )
    for args in cases:
        r = subprocess.run(
            [sys.executable, "-m", "midi_companion", *map(str, args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("companion"), r.stderr
        if args[0] not in ("run",) and "--seed" not in args and "--bars" not in args:
            assert r.stderr.count("\n") == 1, r.stderr  # not argparse's usage + error
    assert good.read_bytes() == kept, "a refused command touched the input"
    assert not (tmp_path / "no-such-dir").exists()


def test_offline_output_keeps_the_players_parts_and_channels(tmp_path, token_model):
    """Each played part comes back as it was (name, program, drums, channel); only a part on
    a channel that a generated part takes moves, to the lowest free one."""
    preset = make_preset(tmp_path, token_model)  # answers on channel 3 (index 2)
    melody = Track(name="melody", program=40, channel=2, notes=phrase())
    drums = Track(
        name="kit", is_drum=True, channel=9, notes=[Note(i * 1.0, 36, 0.25, 100) for i in range(4)]
    )
    bass = Track(name="bass", program=33, channel=5, notes=[Note(0.0, 40, 2.0, 80)])
    Score(tracks=[melody, drums, bass]).to_midi(tmp_path / "in.mid")
    companion(
        "continue",
        preset.path,
        tmp_path / "in.mid",
        "-o",
        tmp_path / "out.mid",
        "--bars",
        1,
        cwd=tmp_path,
    )
    out = Score.from_midi(tmp_path / "out.mid")
    by_ch = {t.channel: t for t in out.tracks}
    assert set(by_ch) == {0, 2, 5, 9}, by_ch
    assert by_ch[0].name == "melody" and by_ch[0].program == 40
    assert [(n.onset, n.pitch) for n in by_ch[0].notes] == [(n.onset, n.pitch) for n in phrase()]
    assert by_ch[9].is_drum and len(by_ch[9].notes) == 4
    assert by_ch[5].name == "bass" and by_ch[5].program == 33
    assert by_ch[2].name == "answer" and by_ch[2].notes


def test_a_phrase_released_a_hair_after_the_beat_is_encoded_up_to_that_beat():
    """Float time: a release at 4.0000000003 snaps the answer to beat 4 (answer_start), and
    the phrase's encoding reads the release at the beat (an encoder's times never go back:
    it raised 'stream times must not decrease' when the report cut prompts at bar lines)."""
    from midi_companion.modes.continuation import answer_start, encode_phrase
    from midi_companion.presets import Timing
    from midi_companion.representations import REGISTRY

    rep = REGISTRY["events"](resolution=12, max_shift=24, velocity_bins=1)
    notes = [Note(3.5, 67, 0.5 + 3e-10, 90)]
    start = answer_start(notes[0].end, Timing(start_on="beat"))
    assert start == 4.0
    clean = [Note(3.5, 67, 0.5, 90)]
    assert encode_phrase(rep, notes, 0.0, start) == encode_phrase(rep, clean, 0.0, start)


def test_an_answer_keeps_the_players_beat_after_a_phrase_that_ends_on_a_triplet():
    """The context can end short of the answer's start (a partial time shift is written
    only before an event); the answer must not be moved by that remainder, or every onset
    lands a third of a beat off the player's grid (the beat-loss the quality report found)."""
    from midi_companion import metrics, presets

    notes = (
        [Note(i * 0.5, p, 0.5, 90) for i, p in enumerate([67, 69, 71, 72, 74, 72, 71, 69])]
        + [Note(4 + i / 3, p, 1 / 3, 90) for i, p in enumerate([67, 71, 74])]
        + [Note(5.0, 72, 2 / 3, 90)]
    )
    for seed in range(3):
        answer = perform(presets.load("folk"), Score.from_notes(notes), seed=seed).tracks[-1]
        assert answer.notes
        assert min(n.onset for n in answer.notes) >= 6.0 - 1e-9  # the next beat after 5.67
        assert metrics.grid_share(answer.notes, (0.25, 1 / 3)) == 1.0
