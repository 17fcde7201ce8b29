"""`companion demo`: the live pipeline with no DAW and no MIDI hardware.

A built-in phrase is played in real time into the daemon through an in-process port pair;
what the daemon sends back arrives on another in-process input. The demo prints the answer
(notes, channels, timing against the beat) and records both parts to a .mid file.
"""

from __future__ import annotations

import threading
import time

from midi_companion import presets
from midi_companion.daemon import Daemon
from midi_companion.outfiles import check_output
from midi_companion.ports import loopback_pair
from midi_companion.scheduler import configure_realtime

# "Mary had a little lamb", two bars and a half (beat, pitch, beats)
PHRASE = [
    (0, 64, 0.75),
    (0.75, 62, 0.25),
    (1, 60, 0.5),
    (1.5, 62, 0.5),
    (2, 64, 0.5),
    (2.5, 64, 0.5),
    (3, 64, 1),
    (4, 62, 0.5),
    (4.5, 62, 0.5),
    (5, 62, 1),
    (6, 64, 0.5),
    (6.5, 67, 0.5),
    (7, 67, 1),
    (8, 64, 0.75),
    (8.75, 62, 0.25),
    (9, 60, 0.5),
    (9.5, 62, 0.5),
    (10, 64, 2),
]
NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]


def note_name(p: int) -> str:
    return f"{NAMES[p % 12]}{p // 12 - 1}"


def main(args) -> int:
    preset = presets.load(args.preset)
    check_output(args.output, "-o")
    configure_realtime()
    to_daemon, daemon_in = loopback_pair("demo player")
    daemon_out, heard = loopback_pair("demo listener")
    daemon = Daemon(preset, daemon_in, daemon_out, seed=args.seed, record=args.output, quiet=True)
    runner = threading.Thread(target=daemon.run, name="daemon")
    runner.start()
    clock = daemon.clock
    beat0 = float(int(clock.beat_at(time.perf_counter_ns())) + 1)
    print(
        f"demo: preset {preset.name} ({preset.mode}) at {clock.bpm:g} bpm; playing "
        f"{len(PHRASE)} notes ..."
    )
    for onset, is_on, pitch in sorted(_events(PHRASE)):
        _sleep_until(clock.time_at(beat0 + onset))
        to_daemon.send((0x90, pitch, 90) if is_on else (0x80, pitch, 0))
    tail = preset.timing.silence_beats + 2 + preset.timing.bars * preset.timing.beats_per_bar
    _sleep_until(clock.time_at(beat0 + PHRASE[-1][0] + PHRASE[-1][2] + tail))
    daemon.stopping.set()
    runner.join()
    _report(heard, clock, beat0)
    print(f"demo: wrote {args.output} (player and companion tracks)")
    return 0


def _events(phrase):
    for onset, pitch, dur in phrase:
        yield (onset, 1, pitch)
        yield (onset + dur, 0, pitch)


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _report(heard, clock, beat0: float) -> None:
    notes = []
    while (item := heard.receive(timeout=0)) is not None:
        t_ns, msg = item
        if msg[0] & 0xF0 == 0x90 and msg[2] > 0:
            notes.append((clock.beat_at(t_ns) - beat0, msg[0] & 0x0F, msg[1], msg[2]))
    if not notes:
        print("demo: the companion played nothing")
        return
    print(
        f"demo: the companion answered with {len(notes)} notes "
        f"(beat from the phrase start, channel, note, velocity, off-grid ms):"
    )
    period_ms = 60_000.0 / clock.bpm
    for beat, ch, pitch, vel in notes:
        off = (beat - round(beat * 4) / 4) * period_ms
        print(
            f"  beat {beat:7.3f}  ch {ch + 1:2d}  {note_name(pitch):>4}  vel {vel:3d}  "
            f"{off:+6.2f} ms"
        )
