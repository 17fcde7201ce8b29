"""The measurements of `companion bench` (companion/bench.py runs them, companion/bench_report.py
writes them up):

- floor: a plain python-rtmidi echo client in its own process (note in -> the same note
  out, no model): the best any Python companion can do on this JACK server;
- harmonize: lead note-on in -> first harmony note-on out (the `chorale` preset);
- timing: |arrival - intended time| of scheduled output (continue and accompany);
- session: peak RSS of the daemon over continuous play, and the notes dropped late at
  120 BPM with 16th-note accompaniment;
- startup: process start -> ports open and model warm;
- engine: per-step inference of a model, onnxruntime vs torch eager (when torch is
  importable), and the real-time factor on one thread; the only one without JACK.

Every JACK measurement plays the daemon as a user starts it, through the clients of
companion/jack_harness.py, on the server the caller started. Times in ms unless named.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from midi_companion import presets
from midi_companion.errors import CompanionError
from midi_companion.jack_harness import (
    DaemonProcess,
    FrameListener,
    Keyboard,
    Listener,
    is_note_on,
    model_grid,
    preset_toml,
    sleep_until,
)
from midi_companion.ports import close_client
from midi_companion.stats import percentiles

MS = 1_000_000
ECHO = "companion-echo"  # the floor's echo client


# ---- what is measured, on what ------------------------------------------------------------------


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def playable_presets(zoo: Path) -> dict[str, Path]:
    """Shipped preset name -> the model files it needs, for the presets whose models are all
    in `zoo`."""
    found = {}
    for path in presets.available():
        data = preset_toml(path)
        names = [data[k] for k in ("model", "solo_model") if k in data]
        files = [Path(zoo) / f"{n}.onnx" for n in names]
        if all(f.is_file() for f in files):
            found[path.stem] = files
    return found


# ---- statistics ---------------------------------------------------------------------------------


def summary_ms(values_ns: list[int]) -> dict:
    """n, p50, p99, max and mean in milliseconds (companion.stats.percentiles)."""
    if not values_ns:
        return {"n": 0}
    p50, p99 = percentiles(values_ns, 50, 99)
    return {
        "n": len(values_ns),
        "p50": p50 / MS,
        "p99": p99 / MS,
        "max": max(values_ns) / MS,
        "mean": sum(values_ns) / len(values_ns) / MS,
    }


def grid_errors(
    stamps: Iterable[int],
    beat_at: Callable[[int], float],
    time_at: Callable[[float], int],
    grid: float,
) -> list[int]:
    """|t - nearest grid line| for each stamp, with the grid in beats of the given clock."""
    return [abs(t - time_at(round(beat_at(t) / grid) * grid)) for t in stamps]


def melody(n: int, low: int = 62, high: int = 79, seed: int = 1) -> list[int]:
    """A stepwise random melody with no repeated note (a soprano line)."""
    rng = random.Random(seed)
    out, p = [], (low + high) // 2
    for _ in range(n):
        q = min(high, max(low, p + rng.choice((-3, -2, -1, 1, 2, 3))))
        p = q if q != p else (q - 1 if q > low else q + 1)
        out.append(p)
    return out


# ---- floor: a plain python-rtmidi echo -----------------------------------------------------------


def echo_client() -> None:
    """The floor's echo (its own process): every message in goes straight back out, from
    python-rtmidi's callback. Runs until its stdin closes."""
    import rtmidi

    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, ECHO)
    out.open_virtual_port("out")
    inp = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, ECHO)
    inp.set_callback(lambda event, data=None: out.send_message(event[0]))
    inp.open_virtual_port("in")
    print("ready", flush=True)
    sys.stdin.read()
    inp.cancel_callback()
    close_client(inp)
    close_client(out)


def measure_floor(notes: int) -> dict:
    """Round trip note-on out -> the echo's note-on back, over `notes` notes."""
    echo = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from midi_companion.bench_measure import echo_client; echo_client()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if echo.stdout.readline().strip() != "ready":
            raise CompanionError("the echo client did not start")
        keyboard = Keyboard("bench-keyboard", "in", owner=ECHO)
        listener = Listener("bench-listener", "out", owner=ECHO)
        rng = random.Random(0)
        rtts = []
        for i in range(notes):
            pitch = 36 + i % 60
            mark = len(listener.heard)
            t = keyboard.send((0x90, pitch, 64))
            got = listener.wait_for(lambda _, m, p=pitch: m == (0x90, p, 64), 1.0, mark)
            if got is not None:
                rtts.append(got[0] - t)
            keyboard.send((0x80, pitch, 0))
            time.sleep(rng.uniform(0.002, 0.006))  # off the JACK period's phase
        keyboard.close()
        listener.close()
    finally:
        echo.stdin.close()
        echo.wait(timeout=10)
    return {"notes": notes, "lost": notes - len(rtts), "round_trip_ms": summary_ms(rtts)}


# ---- the daemon as played -----------------------------------------------------------------------


def _session(preset: Path, *args: object):
    daemon = DaemonProcess(preset, "--seed", "1", *args)
    try:
        daemon.ready()
        keyboard, listener = Keyboard("bench-keyboard"), Listener("bench-listener")
    except BaseException:
        daemon.__exit__()
        raise
    return daemon, keyboard, listener


def _finish(daemon: DaemonProcess, keyboard: Keyboard, listener: Listener) -> dict:
    """Stop the daemon (SIGTERM); its last "stopped" event (scheduler counters)."""
    n = len(daemon.events)
    try:
        code = daemon.stop()
        if code != 0:
            raise CompanionError(f"the daemon exited with {code}: {daemon.error_text()}")
        return daemon.wait_event("stopped", 5.0, start=n)[1]
    finally:
        keyboard.close()
        listener.close()
        daemon.__exit__()


def measure_harmonize(preset: Path, notes: int, bpm: float, provider: str = "auto") -> dict:
    """Lead note-on sent -> first harmony note-on back. Each lead note falls 0.4 of a grid
    step after a grid line (still that step), so an answer is told apart from the step
    committed ahead for the grid line; an answer must come 10 ms before the next grid line."""
    p = presets.load(str(preset))
    voices = {t.channel - 1 for t in p.tracks}
    grid = p.timing.grid
    daemon, keyboard, listener = _session(preset, "--bpm", bpm, "--provider", provider)
    latencies, lead = [], melody(notes)
    try:
        idle = cpu_share(daemon, IDLE_S)
        playing = CpuShare(daemon)
        b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 500 * MS)) + 1
        for i, pitch in enumerate(lead):
            sleep_until(daemon.time_at(b0 + (i + 0.4) * grid))
            mark = len(listener.heard)
            t = keyboard.send((0x90, pitch, 90))
            # until 10 ms before the next grid line, whose step was committed ahead
            left = (daemon.time_at(b0 + (i + 1) * grid) - 10 * MS - time.perf_counter_ns()) / 1e9
            got = listener.wait_for(
                lambda tt, m, t=t: tt >= t and is_note_on(m) and m[0] & 0x0F in voices,
                max(left, 0.0),
                mark,
            )
            if got is not None:
                latencies.append(got[0] - t)
            sleep_until(daemon.time_at(b0 + (i + 0.9) * grid))
            keyboard.send((0x80, pitch, 0))
        busy = playing.share()
        status = [e for _, e in daemon.events if e.get("event") == "status"]
    finally:
        stopped = _finish(daemon, keyboard, listener)
    return {
        "notes": notes,
        "answered": len(latencies),
        "bpm": bpm,
        "grid": grid,
        "latency_ms": summary_ms(latencies),
        "late_dropped": stopped["late_dropped"],
        "cpu": {"idle": idle, "playing": busy},
        "speculation": {
            "hits": status[-1].get("speculation_hits", 0),
            "misses": status[-1].get("speculation_misses", 0),
            # the daemon's own meter (input stamp -> its send, last minute)
            "daemon_answer_p50_ms": status[-1].get("answer_p50_ms"),
            "daemon_answer_p99_ms": status[-1].get("answer_p99_ms"),
            # the lead notes under which a voice was struck at once, and every voice held
            "struck": status[-1].get("lead_struck"),
            "held": status[-1].get("lead_held"),
        }
        if status
        else None,
        "inference_ms": {"p50": status[-1]["infer_p50_ms"], "p99": status[-1]["infer_p99_ms"]}
        if status
        else None,
    }


IDLE_S = 3.0  # the daemon's CPU while nothing is played is measured over this long


class CpuShare:
    """The daemon's CPU use (its sending process included) from now on, as a share of one
    core; None where /proc cannot tell."""

    def __init__(self, daemon: DaemonProcess):
        self.daemon, self.cpu, self.t = daemon, daemon.cpu_s(), time.perf_counter()

    def share(self) -> float | None:
        cpu = self.daemon.cpu_s()
        if cpu is None or self.cpu is None:
            return None
        return round((cpu - self.cpu) / (time.perf_counter() - self.t), 3)


def cpu_share(daemon: DaemonProcess, seconds: float) -> float | None:
    """The daemon's CPU use over the next `seconds`, with nothing played to it."""
    share = CpuShare(daemon)
    time.sleep(seconds)
    return share.share()


def measure_continue_timing(preset: Path, cycles: int, provider: str = "auto") -> dict:
    """Phrase, silence, the whole response, `cycles` times; |arrival - grid| of every note
    message of the responses (the model's grid on the daemon's beats). For jam, the solo's
    (what it plays while the player rests; its harmonize answers are not on a grid)."""
    p = presets.load(str(preset))
    t = p.timing
    solo = {tr.channel - 1 for tr in p.solo_tracks}
    grid = model_grid(p.solo_model or p.model)
    daemon, keyboard, listener = _session(preset, "--provider", provider)
    frames = _frame_listener(daemon, keyboard, listener)
    try:
        for c in range(cycles):
            b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 300 * MS)) + 1
            events, last_off = [], b0
            for i, pitch in enumerate(melody(8, seed=c)):
                last_off = b0 + i / 2 + 0.45
                events += [
                    (daemon.time_at(b0 + i / 2), (0x90, pitch, 90)),
                    (daemon.time_at(last_off), (0x80, pitch, 0)),
                ]
            keyboard.play(events)
            unit = t.beats_per_bar if t.start_on == "bar" else 1
            start = (math.floor((last_off + t.silence_beats) / unit) + 1) * unit
            sleep_until(daemon.time_at(start + t.bars * t.beats_per_bar) + 300 * MS)

        def notes(heard):
            return [
                s
                for s, m in heard
                if len(m) == 3 and m[0] & 0xE0 == 0x80 and (not solo or m[0] & 0x0F in solo)
            ]

        stamps = notes(listener.heard)
        frame_stamps = notes(frames.stop()) if frames else None
        frames = None
    finally:
        if frames is not None:
            frames.stop()
        stopped = _finish(daemon, keyboard, listener)
    errors = grid_errors(stamps, daemon.beat_at, daemon.time_at, grid)
    return {
        "preset": p.name,
        "cycles": cycles,
        "grid": grid,
        "error_ms": summary_ms(errors),
        "frame_error_ms": _frame_errors(frame_stamps, daemon, grid),
        "late_dropped": stopped["late_dropped"],
        "dispatch_ms": _dispatch(stopped),
    }


def _frame_listener(daemon, keyboard, listener) -> FrameListener | None:
    """A FrameListener on the daemon's output where libjack loads (see its docstring)."""
    try:
        return FrameListener.open("bench-frame-listener")
    except BaseException:
        _finish(daemon, keyboard, listener)
        raise


def _frame_errors(stamps: list[int] | None, daemon, grid: float) -> dict | None:
    """|arrival - grid| in JACK frame time (FrameListener), None when not measured."""
    if stamps is None:
        return None
    return summary_ms(grid_errors(stamps, daemon.beat_at, daemon.time_at, grid))


def _dispatch(stopped: dict) -> dict:
    """The daemon's own |send - due| (before JACK), from its scheduler counters."""
    return {k: stopped[f"lateness_{k}_ms"] for k in ("p50", "p99", "max")}


def measure_session(
    preset: Path, seconds: float, bpm: float, record: Path, provider: str = "auto"
) -> dict:
    """Continuous play, recorded to `record`: eighth notes of a random melody for `seconds`,
    accompanied on the 16th-note grid (harmonize off, so every accompaniment message is
    scheduled on a grid line). Late drops, |arrival - grid| of the accompaniment and the
    daemon's peak RSS."""
    p = presets.load(str(preset))
    voices = {t.channel - 1 for t in p.tracks}
    grid = p.timing.grid
    daemon, keyboard, listener = _session(
        preset, "--bpm", bpm, "--record", record, "--provider", provider
    )
    frames = _frame_listener(daemon, keyboard, listener)
    try:
        playing = CpuShare(daemon)
        b0 = math.floor(daemon.beat_at(time.perf_counter_ns() + 500 * MS)) + 1
        n = int(seconds * bpm / 60 * 2)
        for i, pitch in enumerate(melody(n, seed=2)):
            sleep_until(daemon.time_at(b0 + i / 2))
            keyboard.send((0x90, pitch, 90))
            sleep_until(daemon.time_at(b0 + i / 2 + 0.45))
            keyboard.send((0x80, pitch, 0))
        end = time.perf_counter_ns()
        busy = playing.share()
        rss = daemon.peak_rss_mb()

        def notes(heard):
            return [
                s
                for s, m in heard
                if s < end and len(m) == 3 and m[0] & 0xE0 == 0x80 and m[0] & 0x0F in voices
            ]

        stamps = notes(listener.heard)
        frame_stamps = notes(frames.stop()) if frames else None
        frames = None
    finally:
        if frames is not None:
            frames.stop()
        stopped = _finish(daemon, keyboard, listener)
    errors = grid_errors(stamps, daemon.beat_at, daemon.time_at, grid)
    return {
        "preset": p.name,
        "seconds": seconds,
        "bpm": bpm,
        "grid": grid,
        "lead_notes": n,
        "messages": len(stamps),
        "late_dropped": stopped["late_dropped"],
        "sent": stopped["sent"],
        "error_ms": summary_ms(errors),
        "frame_error_ms": _frame_errors(frame_stamps, daemon, grid),
        "dispatch_ms": _dispatch(stopped),
        "peak_rss_mb": rss,
        "cpu": {"playing": busy},
    }


def measure_startup(preset: Path, runs: int, provider: str = "auto") -> dict:
    """Process start -> the "preset" event (ports open, model warm), `runs` times."""
    seconds = []
    for _ in range(runs):
        with DaemonProcess(preset, "--provider", provider) as daemon:
            t, _ = daemon.wait_event("preset", 120.0)
            seconds.append((t - daemon.started_ns) / 1e9)
            daemon.stop()
    seconds.sort()
    return {"runs": seconds, "median_s": percentiles(seconds, 50)[0], "max_s": seconds[-1]}


# ---- the engine, on its own ----------------------------------------------------------------------


def _bpm_of(model: Path) -> float:
    """The tempo of the first shipped preset that plays `model`, else 120."""
    for path in presets.available():
        data = preset_toml(path)
        if model.stem in (data.get("model"), data.get("solo_model")):
            return float(data.get("timing", {}).get("bpm", presets.Timing().bpm))
    return 120.0


def measure_speculation(pieces: int, provider: str = "auto") -> dict:
    """Harmonize's speculation on melodies the model never saw, played offline as live (the
    chorale preset, `speculate` on): of the lead note-ons, how many were answered by a
    lookup; and what computing ahead costs in CPU time, per step computed and in all per
    grid step (live, a worker thread spends it, the GIL free while the model runs). The
    sopranos of the JSB test split (SATB benchmark data) and the held-out test tunes of
    the folk model."""
    from midi_companion.benchmarks import load_satb
    from midi_companion.modelfile import load as load_model
    from midi_companion.offline import perform
    from midi_companion.quality import split_scores, spread
    from midi_companion.score import Score, Track

    preset = presets.load("chorale")
    melodies = {
        "JSB test sopranos": [s.tracks[0].notes for s in load_satb()["test"]],
        "folk test tunes": [
            s.tracks[0].notes
            for s in split_scores(load_model(presets.zoo_dir() / "folk.onnx"))["test"]
        ],
    }
    out = {}
    for name, leads in melodies.items():
        hits = misses = steps = 0
        jobs: list[int] = []
        for notes in spread([n for n in leads if n], pieces):
            lead = Score(tracks=[Track(name="lead", program=52, notes=list(notes))])
            done = []
            perform(preset, lead, seed=0, provider=provider, speculate=True, on_done=done.append)
            mode = done[0].mode
            hits, misses = hits + mode.hits, misses + mode.misses
            jobs += mode.speculator.jobs_ns
            steps += math.ceil(lead.end / preset.timing.grid)
        out[name] = {
            "pieces": min(pieces, len(leads)),
            "lead_notes": hits + misses,
            "hits": hits,
            "hit_rate": hits / max(1, hits + misses),
            "job_cpu_ms": summary_ms(jobs),
            "cpu_ms_per_grid_step": sum(jobs) / 1e6 / max(1, steps),
        }
    return out


def measure_engine(path: Path, steps: int, provider: str = "auto") -> dict | None:
    """Per-step inference (onnxruntime, one thread, as the daemon runs it) while generating
    for real (sampling, grammar masks, decoding), the real-time factor of that generation,
    and torch eager on the very same step inputs when torch is importable. None for a model
    that does not generate step by step (a GAN's generator, the band's block graphs, a
    classifier: one-shot graphs, timed by their own commands)."""
    import numpy as np

    from midi_companion.engine import Engine
    from midi_companion.modelfile import load
    from midi_companion.sampling import Sampling
    from midi_companion.score import Note, Score
    from midi_companion.voices import DRIVERS, Accompanist, voice_for

    model = load(path)
    if model.protocol not in {*DRIVERS, Accompanist.protocol}:
        return None
    rng = np.random.default_rng(0)
    sampling = Sampling(0.9, 0, 0.95)
    feeds: list[dict] = []
    bpm = _bpm_of(path)
    if model.protocol == Accompanist.protocol:
        gen = Accompanist(Engine(model, provider=provider), model.representation, sampling)
        gen.warm_up(rng)
        engine, lead = gen.engine, melody(steps)
        _record(engine, feeds, steps)
        t0, i = time.perf_counter_ns(), 0
        while len(engine.step_ms) < steps:
            gen.step({lead[i % len(lead)]}, rng)
            i += 1
        wall, beats = time.perf_counter_ns() - t0, i * gen.grid
    else:
        voice = voice_for(model, provider=provider)
        voice.warm_up(rng)
        engine, rep = voice.engine, model.representation
        decoder = rep.stream_decoder(0.0)
        primer = Score.from_notes([Note(i / 2, p, 0.45, 90) for i, p in enumerate(melody(8))])
        for tok in rep.encode(primer):
            voice.feed(tok)
            decoder.feed(tok)
        engine.step_ms.clear()
        start = decoder.position
        _record(engine, feeds, steps)
        t0 = time.perf_counter_ns()
        while len(engine.step_ms) < steps:
            decoder.feed(voice.next(rng, sampling, decoder.allowed()))
        wall, beats = time.perf_counter_ns() - t0, decoder.position - start
    ort_ms = [round(ms * MS) for ms in engine.step_ms]
    return {
        "model": path.stem,
        "family": model.family,
        "protocol": model.protocol,
        "parameters": model.parameters,
        "steps": len(ort_ms),
        "bpm": bpm,
        "ort_ms": summary_ms(ort_ms),
        "torch_ms": _torch_eager(model, feeds),
        "beats": beats,
        "seconds": wall / 1e9,
        "real_time_factor": beats * 60 / bpm / (wall / 1e9) if wall else None,
    }


def _record(engine, feeds: list, limit: int) -> None:
    """Keep the step inputs the engine gets (to replay them through torch)."""
    step = engine.step

    def recording(f):
        if len(feeds) < limit:
            feeds.append(f)
        return step(f)

    engine.step = recording


def _torch_eager(model, feeds: list[dict]) -> dict | None:
    """Per-step time of the same architecture in torch eager (one thread) on `feeds`, measured
    in a subprocess (export/eager_timing.py) so that this process stays torch-free; None
    when torch is not installed."""
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "feeds.npz"
        np.savez(
            path, **{f"{i}/{k}": np.asarray(v) for i, f in enumerate(feeds) for k, v in f.items()}
        )
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "midi_companion.export.eager_timing",
                str(model.path),
                str(path),
            ],
            capture_output=True,
            text=True,
        )
    if r.returncode != 0:
        if "No module named 'torch'" in r.stderr:
            return None
        raise RuntimeError(f"torch eager timing of {model.path} failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {**summary_ms(out["step_ns"]), "torch": out["torch"]}
