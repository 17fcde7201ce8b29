"""`companion continue` / `accompany` with the shipped presets and models (models/zoo): every
part of the written file has its own channel, and the summary line counts what was generated.
Each run is a bar or two of music on a virtual clock: seconds."""

from __future__ import annotations

from pathlib import Path

import mido
import pytest

from midi_companion import cli, presets
from midi_companion.score import DRUM_CHANNEL, Note, Score, Track

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (ROOT / "models/zoo/piano.onnx").exists(), reason="the shipped models are not there"
)
QUARTET = ("violin 1", "violin 2", "viola", "cello")


def write_parts(
    path: Path, channels, *, names=None, drums: int | None = None, beats: int = 4
) -> Path:
    """One part per channel (a few quarter notes each), plus a drum part on `drums`."""
    names = names or [f"part {i}" for i in range(len(channels))]
    tracks = [
        Track(
            name=name,
            program=40 + i % 3,
            channel=ch,
            notes=[Note(float(b), 84 - 3 * i + b % 3, 1.0, 80) for b in range(beats)],
        )
        for i, (name, ch) in enumerate(zip(names, channels))
    ]
    if drums is not None:
        tracks.append(
            Track(
                name="kit",
                is_drum=True,
                channel=drums,
                notes=[Note(float(b), 36, 0.25, 100) for b in range(beats)],
            )
        )
    Score(tracks=tracks, tempos=[(0.0, 100.0)]).to_midi(path)
    return path


def channels_by_track(path: Path) -> list[tuple[str, set[int], int]]:
    """(name, channels of its note messages, note-ons) of each MIDI track with notes."""
    out = []
    for track in mido.MidiFile(path).tracks:
        name = next((m.name for m in track if m.type == "track_name"), "")
        notes = [m for m in track if m.type in ("note_on", "note_off")]
        if notes:
            out.append(
                (
                    name,
                    {m.channel for m in notes},
                    sum(m.type == "note_on" and m.velocity > 0 for m in notes),
                )
            )
    return out


def run(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.mark.parametrize(
    "preset, command, channels",
    [
        ("piano", "continue", (0, 1, 2, 3)),  # the string quartet on MIDI channels 1-4
        ("piano", "continue", (1, 2, 3, 0)),
        ("chorale", "accompany", (0, 1, 2, 3)),
        ("chorale", "accompany", (1, 2, 3, 4)),  # the quartet on MIDI channels 2-5
        ("chorale", "accompany", (4, 3, 2, 1)),
    ],
)
def test_every_part_gets_its_own_channel(tmp_path, preset, command, channels):
    src = write_parts(tmp_path / "quartet.mid", channels, names=QUARTET, drums=DRUM_CHANNEL)
    out = tmp_path / "out.mid"
    assert (
        run(
            command,
            preset,
            src,
            "-o",
            out,
            "--seed",
            3,
            *(["--bars", 1] if command == "continue" else []),
        )
        == 0
    )
    tracks = channels_by_track(out)
    assert all(len(chs) == 1 for _, chs, _ in tracks), tracks
    used = [next(iter(chs)) for _, chs, _ in tracks]
    assert len(used) == len(set(used)), tracks
    by_name = dict(zip([name for name, _, _ in tracks], used))
    assert set(by_name) >= set(QUARTET) | {"kit"}, tracks
    played = {t.channel - 1 for t in presets.load(preset).tracks}
    generated = [ch for name, ch in by_name.items() if name not in (*QUARTET, "kit")]
    assert generated and set(generated) <= played, tracks  # the preset's channels
    assert by_name["kit"] == DRUM_CHANNEL  # drums stay drums
    for name, ch in zip(QUARTET, channels):  # a part moves only when it has to
        assert (by_name[name] == ch) == (ch not in played), (name, tracks)
    assert DRUM_CHANNEL not in [by_name[n] for n in QUARTET]


def test_a_moved_part_takes_the_lowest_channel_nobody_uses(tmp_path):
    # piano plays MIDI channel 1; the part there moves to 5 (1-4 are the others' or piano's),
    # not to 2, where the next part sits
    src = write_parts(tmp_path / "in.mid", (0, 1, 2, 3), names=QUARTET)
    out = tmp_path / "out.mid"
    assert run("continue", "piano", src, "-o", out, "--bars", 1) == 0
    by_name = {name: next(iter(chs)) for name, chs, _ in channels_by_track(out)}
    assert [by_name[n] for n in QUARTET] == [4, 1, 2, 3]


def test_two_input_parts_on_one_channel_are_split(tmp_path):
    src = write_parts(tmp_path / "in.mid", (5, 5, 6), names=["right", "left", "pedal"])
    out = tmp_path / "out.mid"
    assert run("continue", "piano", src, "-o", out, "--bars", 1) == 0
    used = [next(iter(chs)) for _, chs, _ in channels_by_track(out)]
    assert sorted(used) == [0, 1, 5, 6], used  # piano on 0; "left" to 1, the lowest free


def test_no_free_channel_is_one_clear_error(tmp_path, capsys):
    melodic = [c for c in range(16) if c != DRUM_CHANNEL]  # 15 parts, piano wants channel 1
    src = write_parts(tmp_path / "full.mid", melodic)
    out = tmp_path / "out.mid"
    assert run("continue", "piano", src, "-o", out, "--bars", 1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "15 parts" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "preset, command, input_parts",
    [("piano", "continue", 4), ("chorale", "accompany", 4), ("piano", "continue", 1)],
)
def test_the_summary_counts_the_generated_tracks_only(
    tmp_path, capsys, preset, command, input_parts
):
    src = write_parts(tmp_path / "in.mid", range(input_parts), names=QUARTET[:input_parts])
    out = tmp_path / "out.mid"
    assert (
        run(
            command,
            preset,
            src,
            "-o",
            out,
            "--seed",
            1,
            *(["--bars", 1] if command == "continue" else []),
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    generated = [n for name, _, n in channels_by_track(out) if name not in QUARTET]
    n_tracks = len(presets.load(preset).tracks)
    assert sum(generated) > 0
    assert line == (
        f"wrote {out}: {4 * input_parts} input notes, {sum(generated)} generated "
        f"on {n_tracks} track(s)"
    )


def test_continue_answers_every_phrase_as_live_does(tmp_path):
    """Two phrases with a long rest between: the first is answered in the rest (and that
    answer stops where the second phrase comes in), the second at the file's end."""
    first = [Note(float(b), 67 + b % 3, 1.0, 80) for b in range(4)]
    second = [Note(16.0 + b, 72 - b % 3, 1.0, 80) for b in range(4)]
    path = tmp_path / "two.mid"
    Score(tracks=[Track(name="me", program=73, channel=0, notes=first + second)]).to_midi(path)
    out = tmp_path / "answers.mid"
    assert cli.main(["continue", "folk", str(path), "-o", str(out), "--seed", "1"]) == 0
    answer = Score.from_midi(out).tracks[-1].notes
    in_the_rest = [n for n in answer if 4.0 < n.onset < 16.0]
    after = [n for n in answer if n.onset >= 20.0]
    assert in_the_rest and after
    assert all(n.onset + n.duration <= 16.0 + 1e-6 for n in in_the_rest)
