"""`companion report`: what the shipped presets play, measured against real music and a
first-order Markov floor, written to docs/QUALITY.md.

For each preset, prompts are pieces of its model's own held-out test split (the ids in the
model file's metadata; `--pieces` of them, evenly spaced over the split), played through
the same offline path as `companion continue` / `companion accompany`
(companion.offline.perform), several seeds each:

- continue presets: the prompt is the first `PROMPT_BARS` bars; the real continuation is
  what the piece plays over the same beats as the answer. Measured per answer: onsets on
  the 16th grid, notes in the prompt's key (Krumhansl-Schmuckler), notes outside the
  part's range; over the set: Yang & Lerch's features (overlapping area with the real
  continuations, beside what one half of the real set scores against the other), the
  note-length histogram's L1 to the real one, seed 001's pitch-distribution distance.
- accompany presets: the prompt is a held-out chorale's soprano; the real answer is Bach's
  alto, tenor and bass. Measured: parallel fifths and octaves per 100 steps, voice
  crossing, per-voice range, pitch changes (onsets) per bar per voice, notes in the
  soprano's key, onsets on the 16th grid and on its odd 16ths, consonance with the lead,
  MuseGAN's empty bars / used pitch classes / tonal distance.

The Markov floor is fitted on the model's training split (everything in its corpus that is
not a validation or test piece). Loading the corpora needs music21 (the `train` extra).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from midi_companion import metrics
from midi_companion.markov import TokenMarkov, VoiceMarkov
from midi_companion.modes.continuation import encode_phrase
from midi_companion.score import Note, Score, Track

PROMPT_BARS = 4
PLAYER_GRIDS = (0.25, 1 / 3)  # the grids an answer may use: 16ths, or eighth triplets
GRID = 0.25
SATB = ("soprano", "alto", "tenor", "bass")


# ---- held-out pieces ---------------------------------------------------------------------
def split_scores(model) -> dict[str, list[Score]]:
    """The model's corpus as {"train", "test"} Scores, by the piece ids in its metadata."""
    corpus = json.loads(model.metadata["corpus"])
    ids = corpus["ids"]
    held = set(ids["valid"]) | set(ids["test"])
    from midi_companion import benchmarks

    names, other = benchmarks.parse_corpus(corpus["name"])
    by_id: dict[str, Score] = {
        pid: sc
        for name in names
        for split in benchmarks.SPLITS
        for pid, sc in benchmarks.source_pieces(name, split)
    }
    if other:
        from midi_companion.models.corpora import load_corpus

        by_id.update((piece.id, piece.score) for piece in load_corpus(other, progress=False))
    out: dict[str, list[Score]] = {}
    out["test"] = [by_id[i] for i in ids["test"] if i in by_id]
    out["train"] = [sc for i, sc in by_id.items() if i not in held]
    return out


def spread(items: list, n: int) -> list:
    """`n` items evenly spaced over the list (a split is ordered by source: the first `n`
    would all come from one collection)."""
    if n >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _cut(notes, start: float, end: float) -> list[Note]:
    """Notes with onset in [start, end), clipped to end."""
    return [
        replace(n, duration=min(n.duration, end - n.onset)) for n in notes if start <= n.onset < end
    ]


# ---- one set of runs ---------------------------------------------------------------------
@dataclass
class Run:
    prompt: list[Note]
    answer: list[Note]
    real: list[Note]
    start: float
    key: tuple[int, str]


def continuation_runs(preset, scores: list[Score], seeds: list[int]) -> list[Run]:
    from midi_companion.modes.continuation import answer_start
    from midi_companion.offline import perform

    runs = []
    bars = preset.timing.bars
    for score in scores:
        bpb = score.beats_per_bar
        cut = PROMPT_BARS * bpb
        notes = score.notes
        prompt = _cut(notes, 0.0, cut)
        if len(prompt) < 4 or score.end < cut + bars * bpb:
            continue
        pscore = Score(
            tracks=[Track(name="prompt", notes=prompt)],
            tempos=score.tempos,
            time_signatures=score.time_signatures,
        )
        start = answer_start(pscore.end, preset.timing)
        real = _cut(notes, start, start + bars * preset.timing.beats_per_bar)
        key = metrics.estimate_key(prompt)[:2]
        for seed in seeds:
            out = perform(preset, pscore, seed=seed, one_phrase=True)
            runs.append(Run(prompt, sorted(out.tracks[-1].notes), real, start, key))
    return runs


def markov_continuations(
    runs: list[Run], rep, train: list[Score], preset, seed: int = 0
) -> list[list[Note]]:
    """The Markov floor's answers to the same prompts (one per run), placed as the model's."""
    seqs = [np.asarray(rep.encode(s)) for s in train]
    chain = TokenMarkov.fit([s for s in seqs if len(s) > 1], rep.vocab_size)
    rng = np.random.default_rng(seed)
    beats = preset.timing.bars * preset.timing.beats_per_bar
    answers = []
    for run in runs:
        toks = encode_phrase(rep, run.prompt, 0.0, run.start)
        dec = rep.stream_decoder(0.0)
        for tok in toks:
            dec.feed(tok)
        end = dec.position  # the context may end short of the start, as the model's does
        notes = chain.generate(toks, rep, run.start + beats - end, rng)
        answers.append(
            [replace(n, onset=n.onset + end) for n in notes if n.onset + end >= run.start - 1e-9]
        )
    return answers


def continuation_table(runs: list[Run], markov: list[list[Note]], low: int, high: int) -> dict:
    """The numbers of one continue preset (model, its Markov floor, the real music)."""
    real = [r.real for r in runs if r.real]
    model = [r.answer for r in runs]

    def per_run(answers, keys, ranged=True):
        done = [(a, k) for a, k in zip(answers, keys) if a]
        grid = [metrics.grid_share(a) for a, _ in done]
        player = [metrics.grid_share(a, PLAYER_GRIDS) for a, _ in done]
        return {
            "grid_min": float(np.min(grid)),
            "grid_mean": float(np.mean(grid)),
            "runs_under_99": int(sum(g < 0.99 for g in grid)),
            "player_grid_min": float(np.min(player)),
            "player_runs_under_99": int(sum(g < 0.99 for g in player)),
            "odd_16th": float(np.mean([metrics.odd_sixteenth_share(a) for a, _ in done])),
            "in_key": float(np.mean([metrics.in_key_share(a, k) for a, k in done])),
            "out_of_range": (
                int(sum(metrics.out_of_range(a, low, high) for a, _ in done)) if ranged else None
            ),
            "notes": int(sum(len(a) for a, _ in done)),
            "runs": len(done),
        }

    def pooled(sets):
        return [n for s in sets for n in s]

    def lengths(notes):
        return np.bincount(
            [metrics.length_class(n.duration) for n in notes], minlength=len(metrics.LENGTH_CLASSES)
        )

    real_len = lengths(pooled(real))
    rows = {}
    for name, answers in (("model", model), ("markov", markov), ("real", real)):
        row = per_run(
            answers if name != "real" else [r.real for r in runs],
            [r.key for r in runs],
            ranged=name != "real",
        )
        if name != "real":
            row["yang_lerch"] = {
                k: v["oa"] for k, v in metrics.compare_sets([a for a in answers if a], real).items()
            }
        row["length_l1"] = metrics.histogram_l1(lengths(pooled(answers)), real_len)
        row["pitch_distance"] = metrics.pitch_distribution_distance(pooled(answers), pooled(real))
        rows[name] = row
    rows["real"]["yang_lerch"] = {k: v["oa"] for k, v in metrics.self_overlap(real).items()}
    return rows


# ---- accompaniment -----------------------------------------------------------------------
def accompaniment_runs(preset, scores: list[Score], seeds: list[int]):
    """(soprano, generated voices, Bach's voices) per chorale and seed."""
    from midi_companion.offline import perform

    out = []
    for score in scores:
        soprano = score.tracks[0].notes
        lead = Score(
            tracks=[Track(name="soprano", program=52, notes=list(soprano))], tempos=score.tempos
        )
        real = [t.notes for t in score.tracks[1:]]
        for seed in seeds:
            result = perform(preset, lead, seed=seed)
            voices = [sorted(t.notes) for t in result.tracks[-(len(score.tracks) - 1) :]]
            out.append((soprano, voices, real))
    return out


def markov_voices(runs, train: list[Score], seed: int = 0):
    grids = [metrics.voice_grid([t.notes for t in s.tracks[1:]], GRID) for s in train]
    chain = VoiceMarkov.fit(grids)
    rng = np.random.default_rng(seed)
    out = []
    for soprano, _, _ in runs:
        lead = metrics.voice_grid([soprano], GRID)
        out.append(metrics.grid_to_voices(chain.generate(lead, 3, rng), GRID))
    return out


def accompaniment_table(runs, markov) -> dict:
    rows = {}
    for name, sets in (
        ("model", [(s, v) for s, v, _ in runs]),
        ("markov", [(s, v) for (s, _, _), v in zip(runs, markov)]),
        ("real", [(s, r) for s, _, r in runs]),
    ):
        par5 = par8 = steps = 0
        cross, changes, key, grid, odd, cons, empty, pcs, tonal = ([] for _ in range(9))
        ranges = [[128, -1] for _ in range(3)]
        for soprano, voices in sets:
            allv = [soprano] + list(voices)
            p = metrics.parallels(allv, GRID)
            par5, par8, steps = par5 + p["fifths"], par8 + p["octaves"], steps + p["steps"]
            cross.append(metrics.voice_crossing(allv, GRID))
            changes.append(metrics.changes_per_bar(list(voices), GRID, 4))
            k = metrics.estimate_key(soprano)[:2]
            notes = [n for v in voices for n in v]
            if notes:
                key.append(metrics.in_key_share(notes, k))
                grid.append(metrics.grid_share(notes))
                odd.append(metrics.odd_sixteenth_share(notes))
            cons.append(metrics.consonance_with_lead(soprano, list(voices), GRID))
            empty.append(metrics.empty_bars(list(voices), 4))
            pcs.append(metrics.used_pitch_classes(list(voices), 4))
            tonal.append(
                np.nanmean([metrics.tonal_distance(soprano, v, 4) for v in voices if v] or [np.nan])
            )
            for i, v in enumerate(voices):
                if v:
                    ranges[i][0] = min(ranges[i][0], min(n.pitch for n in v))
                    ranges[i][1] = max(ranges[i][1], max(n.pitch for n in v))
        rows[name] = {
            "fifths_per_100": 100 * par5 / max(steps, 1),
            "octaves_per_100": 100 * par8 / max(steps, 1),
            "crossing": float(np.nanmean(cross)),
            "changes_per_bar": np.nanmean(np.asarray(changes, dtype=float), 0).tolist(),
            "in_key": float(np.nanmean(key)),
            "grid_min": float(np.nanmin(grid)),
            "odd_16th": float(np.nanmean(odd)),
            "consonance": float(np.nanmean(cons)),
            "empty_bars": float(np.nanmean(empty)),
            "used_pcs": float(np.nanmean(np.asarray(pcs, dtype=float))),
            "tonal_distance": float(np.nanmean(tonal)),
            "ranges": ranges,
            "runs": len(sets),
        }
    return rows


# ---- the report --------------------------------------------------------------------------
def measure(preset_name: str, pieces: int, seeds: int, picture: Path | None = None) -> dict:
    from midi_companion import presets
    from midi_companion.modelfile import load

    preset = presets.load(preset_name)
    model = load(preset.model)
    data = split_scores(model)
    test = spread(data["test"], pieces)
    seed_list = list(range(seeds))
    if preset.mode == "continue":
        runs = continuation_runs(preset, test, seed_list)
        markov = markov_continuations(runs, model.representation, data["train"], preset)
        low, high = preset.tracks[0].range
        table = continuation_table(runs, markov, low, high)
        if picture is not None and runs:
            from midi_companion.render import render_score

            r = runs[0]
            render_score(
                Score(
                    tracks=[
                        Track(name="prompt", notes=r.prompt),
                        Track(name="answer", notes=r.answer),
                    ]
                ),
                picture,
                split=r.start,
            )
        return {"preset": preset_name, "mode": "continue", "table": table, "range": [low, high]}
    runs = accompaniment_runs(preset, test, seed_list)
    markov = markov_voices(runs, data["train"])
    table = accompaniment_table(runs, markov)
    if picture is not None and runs:
        from midi_companion.render import render_score

        soprano, voices, _ = runs[0]
        end = 16.0
        render_score(
            Score(
                tracks=[
                    Track(name=n, notes=_cut(v, 0, end))
                    for n, v in zip(SATB, [soprano] + list(voices))
                ]
            ),
            picture,
        )
    return {
        "preset": preset_name,
        "mode": "accompany",
        "table": table,
        "ranges": [list(t.range) for t in preset.tracks],
    }


# ---- markdown ----------------------------------------------------------------------------
def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def continuation_markdown(r: dict) -> list[str]:
    t = r["table"]
    lines = [
        "| | runs | notes | onsets on the 16th grid (min / mean) | runs under 99% | "
        "onsets on odd 16ths | in the prompt's key | outside the range | "
        "note-length L1 to real | pitch distance to real |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("model", "markov", "real"):
        row = t[name]
        lines.append(
            f"| {name} | {row['runs']} | {row['notes']} | {_f(row['grid_min'])} / "
            f"{_f(row['grid_mean'])} | {row['runs_under_99']} | {_f(row['odd_16th'])} | "
            f"{_f(row['in_key'])} | "
            f"{_f(row['out_of_range'])} | {_f(row['length_l1'])} | "
            f"{_f(row['pitch_distance'])} |"
        )
    feats = list(t["real"]["yang_lerch"])
    lines += [
        "",
        "Yang & Lerch overlapping area with the real continuations (real: one half "
        "of the real set against the other):",
        "",
        "| | " + " | ".join(f.replace("_", " ") for f in feats) + " |",
        "|---|" + "---|" * len(feats),
    ]
    for name in ("model", "markov", "real"):
        lines.append(
            f"| {name} | " + " | ".join(_f(t[name]["yang_lerch"][f], 2) for f in feats) + " |"
        )
    return lines


def accompaniment_markdown(r: dict) -> list[str]:
    t = r["table"]
    lines = [
        "| | runs | parallel 5ths / 100 steps | parallel 8ves / 100 steps | crossing | "
        "changes per bar (A / T / B) | in the soprano's key | odd-16th onsets | "
        "consonance with the lead | used pitch classes / bar | tonal distance to the "
        "lead | ranges (A / T / B) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("model", "markov", "real"):
        row = t[name]
        ch = " / ".join(f"{c:.2f}" for c in row["changes_per_bar"])
        rg = " / ".join(f"{lo}-{hi}" for lo, hi in row["ranges"])
        lines.append(
            f"| {name} | {row['runs']} | {_f(row['fifths_per_100'], 2)} | "
            f"{_f(row['octaves_per_100'], 2)} | {_f(row['crossing'])} | {ch} | "
            f"{_f(row['in_key'])} | {_f(row['odd_16th'])} | {_f(row['consonance'])} | "
            f"{_f(row['used_pcs'], 2)} | {_f(row['tonal_distance'])} | {rg} |"
        )
    return lines


NOTES_MARKER = "<!-- analysis: written by hand, kept when companion report regenerates -->"
KEY_TARGET = {"folk": 0.95, "piano": 0.90, "chorale": 0.90}


def targets(results: list[dict]) -> list[tuple[str, str, str, bool]]:
    """(preset, target, measured, met) for the musical-quality issue's targets."""
    rows = []
    for r in results:
        name, t = r["preset"], r["table"]
        m = t["model"]
        key_goal = KEY_TARGET.get(Path(name).stem, 0.90)
        rows.append(
            (
                name,
                f">= {key_goal:.0%} of notes in the prompt's key",
                f"{m['in_key']:.1%} (real {t['real']['in_key']:.1%})",
                m["in_key"] >= key_goal,
            )
        )
        if r["mode"] == "continue":
            real = t["real"]
            rows.append(
                (
                    name,
                    ">= 99% of onsets on the 16th grid in every run",
                    f"min {m['grid_min']:.1%}, {m['runs_under_99']} of {m['runs']} runs "
                    f"under (real: min {real['grid_min']:.1%}, {real['runs_under_99']} "
                    f"of {real['runs']} under: triplets)",
                    m["runs_under_99"] == 0,
                )
            )
            rows.append(
                (
                    name,
                    "... on the player's grid (16ths, or eighth triplets where the "
                    "prompt plays them), as real music",
                    f"min {m['player_grid_min']:.1%}, {m['player_runs_under_99']} runs "
                    f"under (real: min {real['player_grid_min']:.1%}, "
                    f"{real['player_runs_under_99']} under)",
                    m["player_runs_under_99"] == 0,
                )
            )
            rows.append(
                (
                    name,
                    "no note outside the part's range",
                    str(m["out_of_range"]),
                    m["out_of_range"] == 0,
                )
            )
            yl, real, markov = m["yang_lerch"], t["real"]["yang_lerch"], t["markov"]["yang_lerch"]
            low = [f for f in yl if yl[f] < real[f] - 0.05]
            under = [f for f in yl if yl[f] <= markov[f]]
            rows.append(
                (
                    name,
                    "Yang & Lerch OA >= real half-vs-half - 0.05, every feature",
                    "all" if not low else "missed: " + ", ".join(low),
                    not low,
                )
            )
            rows.append(
                (
                    name,
                    "Yang & Lerch OA above the Markov floor, every feature",
                    "all" if not under else "not above: " + ", ".join(under),
                    not under,
                )
            )
            if Path(name).stem == "piano":
                rows.append(
                    (
                        name,
                        "note-length histogram L1 to real <= 0.15",
                        f"{m['length_l1']:.3f} (Markov {t['markov']['length_l1']:.3f})",
                        m["length_l1"] <= 0.15,
                    )
                )
        else:
            bach = t["real"]
            rows.append(
                (
                    name,
                    ">= 99% of onsets on the 16th grid",
                    f"min {m['grid_min']:.1%}",
                    m["grid_min"] >= 0.99,
                )
            )
            rows.append(
                (
                    name,
                    "odd-16th onsets like Bach's",
                    f"{m['odd_16th']:.2%} (Bach {bach['odd_16th']:.2%})",
                    m["odd_16th"] <= max(2 * bach["odd_16th"], 0.01),
                )
            )
            ok = [lo >= a and hi <= b for (lo, hi), (a, b) in zip(m["ranges"], r["ranges"])]
            rows.append(
                (
                    name,
                    "no note outside each part's range",
                    " / ".join(f"{lo}-{hi}" for lo, hi in m["ranges"]),
                    all(ok),
                )
            )
            rows.append(
                (
                    name,
                    "<= 0.2 parallel fifths and <= 0.2 octaves per 100 steps",
                    f"{m['fifths_per_100']:.2f} / {m['octaves_per_100']:.2f}",
                    m["fifths_per_100"] <= 0.2 and m["octaves_per_100"] <= 0.2,
                )
            )
            dev = [abs(a / b - 1) for a, b in zip(m["changes_per_bar"], bach["changes_per_bar"])]
            rows.append(
                (
                    name,
                    "pitch changes per bar per voice within 15% of Bach's",
                    " / ".join(
                        f"{d:+.0%}".replace("+-", "-")
                        for d in [
                            a / b - 1 for a, b in zip(m["changes_per_bar"], bach["changes_per_bar"])
                        ]
                    ),
                    max(dev) <= 0.15,
                )
            )
            rows.append(
                (
                    name,
                    "voice crossing <= Bach's",
                    f"{m['crossing']:.2%} (Bach {bach['crossing']:.2%})",
                    m["crossing"] <= bach["crossing"],
                )
            )
    return rows


def markdown(results: list[dict], command: str) -> str:
    out = [
        "# Quality: what the presets play, measured",
        "",
        "Generated by `" + command + "` (companion/quality.py; the metrics are "
        "companion/metrics.py). Prompts come from each model's own held-out test split; "
        "`model` is the preset as shipped, `markov` a first-order Markov chain fitted on "
        "the same training split (the floor), `real` the music itself over the same "
        "beats. Every number is from that one run.",
        "",
        "## Targets",
        "",
        "| preset | target | measured | met |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {p} | {goal} | {got} | {'yes' if ok else '**no**'} |"
        for p, goal, got, ok in targets(results)
    ]
    out.append("")
    for r in results:
        out += [f"## `{r['preset']}` ({r['mode']})", ""]
        if r["mode"] == "continue":
            out += [f"Range of the part: {r['range'][0]}-{r['range'][1]}.", ""]
            out += continuation_markdown(r)
        else:
            out += [
                "Ranges of the parts: " + ", ".join(f"{lo}-{hi}" for lo, hi in r["ranges"]) + ".",
                "",
            ]
            out += accompaniment_markdown(r)
        if r.get("picture"):
            out += ["", f"![{r['preset']}: a held-out prompt and its answer]({r['picture']})"]
        out.append("")
    return "\n".join(out)


def main(args) -> int:
    """`companion report`: measure the presets and write the report (and its pictures)."""
    from midi_companion.outfiles import check_output

    out = check_output(args.output, "-o")  # before minutes of measuring, not after
    if args.json:
        check_output(args.json, "--json")
    results = []
    for name in args.presets:
        pic = out.parent / "quality" / f"{Path(name).stem}.png"
        pic.parent.mkdir(parents=True, exist_ok=True)
        r = measure(name, args.pieces, args.seeds, picture=pic)
        r["picture"] = str(pic.relative_to(out.parent))
        results.append(r)
        print(f"{name}: measured {r['table']['model']['runs']} runs", flush=True)
    command = (
        "companion report "
        + " ".join(args.presets)
        + f" --pieces {args.pieces} --seeds {args.seeds} -o {args.output}"
    )
    notes = ""
    if out.is_file():  # the hand-written analysis below the marker survives a regeneration
        old = out.read_text(encoding="utf-8")
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER) :]
    out.write_text(
        markdown(results, command) + "\n" + (notes or NOTES_MARKER + "\n"), encoding="utf-8"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0
