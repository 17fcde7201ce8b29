"""The report of `companion bench`: docs/benchmarks.json (the raw numbers) and
docs/BENCHMARKS.md (the targets and tables drawn from them, then a hand-written "## Analysis"
section that every run keeps).

A run of some sections (`--only`) is merged into the report already there: those sections
are replaced, the others kept as they were measured, the run is listed under "updates", and
the targets and tables are drawn again from the merged numbers. A run of every section, or
one with no report to merge into, writes the report anew.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from midi_companion.errors import CompanionError

# each section of a run and the key its numbers have in the JSON
KEYS = {
    "floor": "floor",
    "harmonize": "harmonize",
    "timing": "timing_continue",
    "jam": "timing_jam",
    "session": "session",
    "startup": "startup",
    "engine": "engine",
    "speculation": "speculation",
}
SECTIONS = tuple(KEYS)
OFFLINE_SECTIONS = ("engine", "speculation")  # measured without JACK
JACK_SECTIONS = tuple(s for s in SECTIONS if s not in OFFLINE_SECTIONS)
ANALYSIS = "## Analysis"  # from this heading on, docs/BENCHMARKS.md is hand-written and kept


# ---- the numbers -------------------------------------------------------------------------------


def read(path: Path) -> dict | None:
    """The report in the JSON file `path`; None when there is none."""
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CompanionError(
            f"{path}: not a report of companion bench ({err}); run every "
            f"section (no --only) to write it anew"
        ) from err
    if not isinstance(report, dict) or "date" not in report:
        raise CompanionError(
            f"{path}: not a report of companion bench; run every section "
            f"(no --only) to write it anew"
        )
    return report


def merge(old: dict | None, new: dict, sections: Iterable[str]) -> dict:
    """The report after a run that measured `sections` into `new` (see the module
    docstring), with its targets."""
    sections = set(sections)
    if old is None or sections >= set(SECTIONS):
        report = dict(new)
    else:
        report = {k: v for k, v in old.items() if k not in ("targets", *KEYS.values())}
        for name in SECTIONS:
            source = new if name in sections else old
            if KEYS[name] in source:
                report[KEYS[name]] = source[KEYS[name]]
        report["skipped"] = {
            **{k: v for k, v in old.get("skipped", {}).items() if k not in sections},
            **new["skipped"],
        }
        if "engine" in sections:  # the models measured
            report["zoo"] = new["zoo"]
        if sections & set(JACK_SECTIONS):  # the presets played
            report["presets"] = new["presets"]
        update = {k: new[k] for k in ("date", "mode", "machine", "provider", "jack") if k in new}
        report["updates"] = [
            *old.get("updates", []),
            {**update, "sections": [s for s in SECTIONS if s in sections]},
        ]
    report["targets"] = targets(report)
    return report


def write(report: dict, md: Path, js: Path) -> None:
    """`report` to the JSON file `js` and drawn in the markdown file `md`, keeping the
    latter's hand-written analysis."""
    analysis = (
        f"{ANALYSIS}\n\n(Hand-written: why each missed target is missed and what would close it.)\n"
    )
    heading = f"\n{ANALYSIS}\n"
    if md.is_file() and heading in (old := md.read_text(encoding="utf-8")):
        analysis = old[old.index(heading) + 1 :]
    md.parent.mkdir(parents=True, exist_ok=True)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md.write_text(markdown(report, analysis), encoding="utf-8")


def targets(r: dict) -> list[dict]:
    """Each target (issues 5 and 13): what was measured and by how much it is missed (0 =
    met)."""
    rows = []

    def add(
        name: str,
        goal: str,
        measured: float | None,
        limit: float,
        unit: str,
        above: bool = False,
        note: str = "",
    ) -> None:
        if measured is None:
            rows.append(
                {
                    "target": name,
                    "goal": goal,
                    "measured": None,
                    "met": None,
                    "miss": None,
                    "unit": unit,
                    "note": note or "not measured",
                }
            )
            return
        miss = (limit - measured) if above else (measured - limit)
        rows.append(
            {
                "target": name,
                "goal": goal,
                "measured": measured,
                "met": miss <= 0,
                "miss": max(miss, 0.0),
                "unit": unit,
                "note": note,
            }
        )

    floor, harm = r.get("floor"), r.get("harmonize")
    if floor and harm and harm["latency_ms"].get("n"):
        add(
            "harmonize p50 - floor p50",
            "<= 0.3 ms",
            harm["latency_ms"]["p50"] - floor["round_trip_ms"]["p50"],
            0.3,
            "ms",
        )
        spec = harm.get("speculation") or {}
        if spec.get("struck") is not None:
            add(
                "lead notes whose voices change, answered before the next grid line",
                ">= 99 %",
                100.0 * min(harm["answered"], spec["struck"]) / max(1, spec["struck"]),
                99.0,
                "%",
                above=True,
                note=f"{harm['answered']} answers heard for {spec['struck']} lead notes "
                f"under which the daemon struck a voice; under {spec['held']} every voice "
                f"held",
            )
        add(
            "harmonize p99 - floor p99",
            "<= 1 ms",
            harm["latency_ms"]["p99"] - floor["round_trip_ms"]["p99"],
            1.0,
            "ms",
            note=f"{harm['answered']} of {harm['notes']} lead notes answered before the next "
            f"grid line",
        )
        struck = (harm.get("speculation") or {}).get("struck") or harm["notes"]
        if harm["answered"] < struck / 2:  # a p99 of the few answered says little
            rows[-1].update(met=False, miss=None)
    else:
        add(
            "harmonize p99 - floor p99",
            "<= 1 ms",
            None,
            1.0,
            "ms",
            note=r["skipped"].get("harmonize", "no lead note was answered"),
        )
    for key, label in (
        ("timing_continue", "continue"),
        ("session", "accompany"),
        ("timing_jam", "jam's solo"),
    ):
        s = r.get(key, {}).get("error_ms", {})
        add(
            f"scheduled-output timing p99 ({label}), a python-rtmidi listener's stamps",
            "< 1.5 ms",
            s.get("p99"),
            1.5,
            "ms",
        )
    for key, label in (
        ("timing_continue", "continue"),
        ("session", "accompany"),
        ("timing_jam", "jam's solo"),
    ):  # where the daemon places each message at its JACK frame (companion/jack_frames.py)
        s = r.get(key, {}).get("frame_error_ms") or {}
        add(
            f"scheduled-output timing p99 in JACK frame time ({label})",
            "< 0.1 ms",
            s.get("p99"),
            0.1,
            "ms",
            note="" if s else "no frame-stamping listener (libjack not loaded)",
        )
    s = r.get("session")
    add(
        "late-dropped notes, 120 BPM, 16th-note accompaniment",
        "0 in 10 minutes",
        s["late_dropped"] if s else None,
        0,
        "notes",
        note=f"over {s['seconds']:g} s" if s else "",
    )
    st = r.get("startup") or {}
    worst = max(st.items(), key=lambda kv: kv[1]["median_s"]) if st else None
    add(
        "start-up (slowest preset, median)",
        "< 1.5 s",
        worst[1]["median_s"] if worst else None,
        1.5,
        "s",
        note=worst[0] if worst else "",
    )
    add("peak RSS of the daemon", "< 300 MB", s["peak_rss_mb"] if s else None, 300, "MB")
    eng = r.get("engine") or []
    slowest = min(eng, key=lambda e: e["real_time_factor"]) if eng else None
    add(
        "real-time factor (slowest model)",
        "> 50x",
        slowest["real_time_factor"] if slowest else None,
        50,
        "x",
        above=True,
        note=slowest["model"] if slowest else "",
    )
    return rows


def markdown(r: dict, analysis: str) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Generated by `companion bench{' --smoke' if r['mode'] == 'smoke' else ''}` on "
        f"{r['date']} ({r['mode']} run); the raw numbers are in `benchmarks.json` beside this "
        f'file. Everything above "{ANALYSIS}" is drawn from them by every run (a run of some '
        f"sections, `--only`, replaces those and keeps the others).",
        "",
        "## Setup",
        "",
        *_setup(r),
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        measured = (
            "-"
            if t["measured"] is None
            else (f"{t['measured']:.2f} {t['unit']}".replace(".00 notes", " notes"))
        )
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"| {t['target']} | {t['goal']} | {measured}{note} | {verdict(t)} |")
    out += ["", *_details(r), "", analysis.rstrip(), ""]
    return "\n".join(out)


def _setup(r: dict) -> list[str]:
    m, j = r["machine"], r.get("jack")
    load = ", ".join(f"{x:.1f}" for x in m["load_avg"]) if m["load_avg"] else "n/a"
    if m.get("load_avg_end"):
        load += " at the start, " + ", ".join(f"{x:.1f}" for x in m["load_avg_end"]) + " at the end"
    out = [f"- Machine: {_machine(m)}; load average (1, 5, 15 min) {load}."]
    if j:
        out += [
            f"- JACK: {_jack(j)}, started by the bench.",
            "- The daemon runs as a user starts it (`companion run PRESET --backend jack "
            "--quiet --log-json --seed 1`) in its own process; the keyboard and the "
            "listener are two python-rtmidi JACK clients in the bench's process, stamping "
            "with perf_counter_ns.",
        ]
    out.append(
        f"- Shipped models: {', '.join(r['zoo']) or 'none'}; playable presets: "
        f"{', '.join(r['presets']) or 'none'}."
    )
    for u in r.get("updates", []):  # runs of some sections since (merge)
        where = ""
        if (u["machine"]["cpu"], u["machine"]["cores"]) != (m["cpu"], m["cores"]):
            where += f" on {_machine(u['machine'])}"
        if u.get("jack") and u["jack"] != j:
            where += f" through {_jack(u['jack'])}"
        smoke = "--smoke " if u["mode"] == "smoke" else ""
        out.append(
            f"- Measured again since: {', '.join(u['sections'])} on {u['date']} "
            f"(`companion bench {smoke}--only {' '.join(u['sections'])}`{where})."
        )
    return out


def _machine(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} CPU cores, {m['platform']}, Python {m['python']}"


def _jack(j: dict) -> str:
    # reports from before the real-time choice ran --no-realtime
    rt = j.get("realtime") or "--no-realtime"
    return (
        f"a private `jackd {rt}{' -S' if j['mode'].startswith('sync') else ''} "
        f"-d {j['driver']}` server ({j['mode']}), period {j['period']} frames at "
        f"{j['rate']} Hz ({j['period_ms']:.2f} ms per period)"
    )


def verdict(t: dict) -> str:
    """A target's verdict in words: met, missed (by how much), not measured."""
    if t["met"] is None:
        return "not measured"
    if t["met"]:
        return "met"
    return "missed" if t["miss"] is None else f"missed by {t['miss']:.2f} {t['unit']}"


def _row(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "- | - | - | -"
    return f"{s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {s['n']}"


def _details(r: dict) -> list[str]:
    out = [
        "## Latency and timing",
        "",
        "| measurement | p50 ms | p99 ms | max ms | n |",
        "|---|---|---|---|---|",
    ]
    measured = []  # (what, its summary_ms)
    if f := r.get("floor"):
        measured.append(("floor: echo round trip (python-rtmidi, no model)", f["round_trip_ms"]))
    if h := r.get("harmonize"):
        measured.append(
            (
                f"harmonize: lead note-on -> first harmony note-on ({h['answered']} "
                f"of {h['notes']} answered, {h['bpm']:g} BPM)",
                h["latency_ms"],
            )
        )
    if t := r.get("timing_continue"):
        measured.append(
            (
                f"continue ({t['preset']}): \\|arrival - grid\\|, {t['cycles']} responses",
                t["error_ms"],
            )
        )
    if s := r.get("session"):
        measured.append(
            (f"accompany ({s['preset']}, harmonize off): \\|arrival - grid\\|", s["error_ms"])
        )
    if t := r.get("timing_jam"):
        measured.append(
            (f"jam: the solo's \\|arrival - grid\\|, {t['cycles']} solos", t["error_ms"])
        )
    for key, label in (
        ("timing_continue", "continue"),
        ("session", "accompany"),
        ("timing_jam", "jam's solo"),
    ):
        if (r.get(key) or {}).get("frame_error_ms"):
            measured.append(
                (
                    f"{label}: \\|arrival - grid\\| in JACK frame time (a frame-stamping listener)",
                    r[key]["frame_error_ms"],
                )
            )
    out += [f"| {what} | {_row(summary)} |" for what, summary in measured]
    for key, label in (
        ("timing_continue", "continue"),
        ("session", "accompany"),
        ("timing_jam", "jam"),
    ):
        if r.get(key):
            d = r[key]["dispatch_ms"]
            out.append(
                f"| {label}: the daemon's own \\|send - due\\| (before JACK; last 4096) | "
                f"{d['p50']:.2f} | {d['p99']:.2f} | {d['max']:.2f} | - |"
            )
    cpu = [
        (f"{label}: the daemon's CPU {when} (its port process included), % of one core", c)
        for key, label in (("harmonize", "harmonize"), ("session", "accompany"))
        for when, c in (r.get(key, {}).get("cpu") or {}).items()
        if c is not None
    ]
    out += [f"| {what} | {100 * c:.1f} | - | - | - |" for what, c in cpu]
    if r.get("harmonize") and r["harmonize"].get("inference_ms"):
        i = r["harmonize"]["inference_ms"]
        out.append(
            f"| harmonize: inference per engine step (daemon's status line) | "
            f"{i['p50']:.2f} | {i['p99']:.2f} | - | - |"
        )
    if r.get("engine"):
        out += [
            "",
            "## Engine",
            "",
            "Per engine step on one thread, generating for real (sampling, grammar masks, "
            "decoding); torch eager replays the very same step inputs through the same "
            "architecture (rebuilt from the metadata: weights do not change the cost). "
            "Real-time factor = musical time generated / wall time, at the tempo of the "
            "model's preset.",
            "",
            "| model | family (protocol) | parameters | ORT p50 / p99 ms | torch eager p50 / "
            "p99 ms | torch / ORT (p50) | real-time factor |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["engine"]:
            o, t = e["ort_ms"], e["torch_ms"]
            torch_cell = f"{t['p50']:.3f} / {t['p99']:.3f}" if t else "n/a (no torch)"
            ratio = f"{t['p50'] / o['p50']:.1f}x" if t and o.get("p50") else "-"
            out.append(
                f"| {e['model']} | {e['family']} ({e['protocol']}) | "
                f"{e['parameters']:,} | {o['p50']:.3f} / {o['p99']:.3f} | {torch_cell} | "
                f"{ratio} | {e['real_time_factor']:.0f}x ({e['beats']:.1f} beats at "
                f"{e['bpm']:g} BPM in {e['seconds']:.2f} s) |"
            )
    if r.get("speculation"):
        out += [
            "",
            "## Speculation (harmonize)",
            "",
            "Melodies the chorale model never saw, played offline as live (`--only "
            "speculation`): a lead note-on is a hit when its step was computed ahead for its "
            "pitch (answered by a lookup, no model call between the note and its voices). "
            "Computing a step ahead (every likely lead pitch in one batch per token) costs "
            "the CPU time below; live, a worker thread spends it while the daemon waits for "
            "input, and onnxruntime releases the GIL while it runs.",
            "",
            "| melodies | pieces | lead notes | hits | hit rate | a step computed ahead, "
            "CPU p50 / p99 / max ms | CPU ms per grid step |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, sp in r["speculation"].items():
            w = sp["job_cpu_ms"]
            out.append(
                f"| {name} | {sp['pieces']} | {sp['lead_notes']} | {sp['hits']} | "
                f"{sp['hit_rate']:.1%} | {w.get('p50', 0):.2f} / {w.get('p99', 0):.2f} / "
                f"{w.get('max', 0):.2f} | {sp['cpu_ms_per_grid_step']:.2f} |"
            )
    if r.get("startup"):
        out += [
            "",
            "## Start-up",
            "",
            'Process start -> ports open and model warm (the daemon\'s "preset" event).',
            "",
            "| preset | median s | max s | runs |",
            "|---|---|---|---|",
        ]
        for name, s in sorted(r["startup"].items()):
            out.append(
                f"| {name} | {s['median_s']:.2f} | {s['max_s']:.2f} | "
                f"{', '.join(f'{x:.2f}' for x in s['runs'])} |"
            )
    if r.get("session"):
        s = r["session"]
        out += [
            "",
            "## Session: memory and late drops",
            "",
            f"{s['seconds']:g} s of continuous play at {s['bpm']:g} BPM, recorded "
            f"(`--record`): {s['lead_notes']} "
            f"lead eighth notes, accompanied by `{s['preset']}` (harmonize off) on the "
            f"{s['grid']:g}-beat grid. The daemon sent {s['sent']} messages and dropped "
            f"{s['late_dropped']} late note-ons; its peak RSS (VmHWM) was "
            f"{s['peak_rss_mb']:.0f} MB.",
        ]
    if r["skipped"]:
        out += [
            "",
            "Not measured: " + "; ".join(f"{k} ({v})" for k, v in r["skipped"].items()) + ".",
        ]
    return out
