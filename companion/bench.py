"""`companion bench`: how close to the physical limit the companion plays.

The JACK figures (floor, harmonize, timing, session, startup) come from one run on one
private JACK server (companion/jack_harness.py: dummy driver, so no sound card is needed
and nothing else shares it), with the daemon started exactly as a user starts it
(`companion run PRESET --backend jack`) and separate JACK clients playing into it and
listening to it; the engine figures need no JACK, and a run of them alone starts none. What
each measures is in companion/bench_measure.py.

The numbers go to docs/benchmarks.json and docs/BENCHMARKS.md (companion/bench_report.py);
a run of some sections (`--only`) replaces only those in the report already there. A
report, never a timed test.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from midi_companion import bench_measure as measure
from midi_companion import bench_report as report
from midi_companion import presets
from midi_companion.engine import check_provider
from midi_companion.jack_harness import JackServer, preset_copy
from midi_companion.port_process import wanted as realtime_granted

MEASURE_SWITCH_INTERVAL_S = 0.0001


def run(args, sections: set[str]) -> dict:
    """Every measurement of `sections`; the results as one dict (without targets). The JACK
    server is started only for the sections that need it."""
    # the listeners' callbacks (JACK's threads) take this process's GIL from a main thread
    # that spins to the next note: they get it within 0.1 ms, not CPython's 5
    sys.setswitchinterval(MEASURE_SWITCH_INTERVAL_S)
    zoo = Path(args.zoo) if args.zoo else presets.zoo_dir()
    provider = getattr(args, "provider", "auto")
    check_provider(provider)  # --provider cuda without CUDA: before the JACK server starts
    playable = measure.playable_presets(zoo)
    shipped = presets.zoo_models(zoo)
    r: dict = {
        "mode": "smoke" if args.smoke else "full",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": measure.machine(),
        "zoo": [m.name for m in shipped],
        "presets": sorted(playable),
        "skipped": {},
        "provider": provider,
    }

    def skip(section: str, why: str) -> None:
        r["skipped"][section] = why
        _log(f"{section}: skipped ({why})")

    if sections & set(report.JACK_SECTIONS):
        r["jack"] = {
            "driver": "dummy",
            "period": args.period,
            "rate": args.rate,
            "period_ms": args.period / args.rate * 1000,
            "mode": "asynchronous" if args.jack_async else "synchronous (-S)",
        }
        realtime = not getattr(args, "jack_no_realtime", False) and realtime_granted()
        r["jack"]["realtime"] = JackServer.realtime_flags(realtime)
        tmp = Path(tempfile.mkdtemp(prefix="companion-bench-"))
        try:
            with JackServer(args.period, args.rate, sync=not args.jack_async, realtime=realtime):
                _through_jack(r, sections, args, zoo, playable, provider, tmp, skip)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if "engine" in sections:
        r["engine"] = []
        for model in shipped:
            e = measure.measure_engine(model, 300 if args.smoke else 2000, provider)
            if e is None:  # a one-shot graph: timed by its own command
                _log(f"engine {model.stem}: not a step model")
                continue
            r["engine"].append(e)
            _log(
                f"engine {model.stem}: ORT {_fmt(e['ort_ms'])}, torch "
                f"{_fmt(e['torch_ms']) if e['torch_ms'] else 'n/a'}, "
                f"RTF {e['real_time_factor']:.0f}x"
            )
        if not shipped:
            skip("engine", f"no model in {zoo}")
    if "speculation" in sections:
        r["speculation"] = measure.measure_speculation(4 if args.smoke else 20, provider)
        for name, sp in r["speculation"].items():
            _log(
                f"speculation, {name}: {sp['hits']} of {sp['lead_notes']} lead notes "
                f"({sp['hit_rate']:.1%}); a step's CPU {_fmt(sp['job_cpu_ms'])}"
            )
    r["machine"]["load_avg_end"] = measure.machine()["load_avg"]
    return r


def _through_jack(
    r: dict, sections: set[str], args, zoo: Path, playable: dict, provider: str, tmp: Path, skip
) -> None:
    """The JACK sections of `sections` into `r`, on the running private server."""
    smoke = args.smoke
    if "floor" in sections:
        r["floor"] = measure.measure_floor(200 if smoke else 1000)
        _log(f"floor: {_fmt(r['floor']['round_trip_ms'])}")
    if "harmonize" in sections:
        if "chorale" in playable:
            path = preset_copy("chorale", tmp / "chorale.toml", zoo=zoo)
            r["harmonize"] = h = measure.measure_harmonize(
                path, 100 if smoke else 500, 120, provider
            )
            spec = h.get("speculation") or {}
            _log(
                f"harmonize: {_fmt(h['latency_ms'])}, answered {h['answered']}/{h['notes']}; "
                f"speculation {spec.get('hits', 0)} hits, {spec.get('misses', 0)} misses; "
                f"a voice struck under {spec.get('struck')} lead notes, all held under "
                f"{spec.get('held')}; the daemon's meter p50 {spec.get('daemon_answer_p50_ms')}"
                f" / p99 {spec.get('daemon_answer_p99_ms')} ms; CPU {h['cpu']}"
            )
        else:
            skip("harmonize", f"no chorale model in {zoo}")
    if "timing" in sections:
        continuing = [n for n in ("folk", "piano") if n in playable]
        if continuing:
            path = preset_copy(continuing[0], tmp / "continue.toml", zoo=zoo)
            r["timing_continue"] = measure.measure_continue_timing(
                path, 2 if smoke else 8, provider
            )
            _log(f"timing ({continuing[0]}): {_fmt(r['timing_continue']['error_ms'])}")
        else:
            skip("timing", f"no folk or piano model in {zoo}")
    if "jam" in sections:
        if "jam" in playable:  # the solo, on its grid, while the player rests
            path = preset_copy("jam", tmp / "jam.toml", zoo=zoo)
            r["timing_jam"] = measure.measure_continue_timing(path, 2 if smoke else 8, provider)
            _log(f"timing (jam's solo): {_fmt(r['timing_jam']['error_ms'])}")
        else:
            skip("jam", f"no chorale or folk model in {zoo}")
    if "session" in sections:
        if "chorale" in playable:
            path = preset_copy(
                "chorale",
                tmp / "session.toml",
                zoo=zoo,
                harmonize=False,
                timing={"bpm": 120, "grid": 0.25},
            )
            seconds = args.session_s or (30.0 if smoke else 600.0)
            r["session"] = s = measure.measure_session(
                path, seconds, 120, tmp / "session.mid", provider
            )
            _log(
                f"session {seconds:g} s: late dropped {s['late_dropped']}, timing "
                f"{_fmt(s['error_ms'])}, peak RSS {s['peak_rss_mb']:.0f} MB, CPU {s['cpu']}"
            )
        else:
            skip("session", f"no chorale model in {zoo}")
    if "startup" in sections:
        r["startup"] = {}
        for name in sorted(playable):
            path = preset_copy(name, tmp / f"{name}-startup.toml", zoo=zoo)
            r["startup"][name] = measure.measure_startup(path, 1 if smoke else 3, provider)
            _log(f"start-up {name}: {r['startup'][name]['runs']}")
        if not playable:
            skip("startup", f"no shipped preset has its models in {zoo}")


def _fmt(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return f"p50 {s['p50']:.2f} / p99 {s['p99']:.2f} / max {s['max']:.2f} ms (n={s['n']})"


def _log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def main(args) -> int:
    """Entry point of `companion bench`."""
    md, js = Path(args.markdown), Path(args.json)
    sections = set(args.only or report.SECTIONS)
    old = report.read(js) if sections < set(report.SECTIONS) else None  # before measuring
    results = report.merge(old, run(args, sections), sections)
    report.write(results, md, js)
    for t in results["targets"]:
        _log(f"target {t['target']} ({t['goal']}): {report.verdict(t)}")
    _log(f"wrote {md} and {js}")
    return 0
