"""`companion restyle IN.mid --to STYLE -o OUT.mid`: seed 000's restyling by gradient ascent
on the input towards a target class of the classifier (models/classifier.py). Offline, torch.

What is relaxed. The classifier reads `events` tokens, which are discrete; the seed relaxed a
piano roll. Here each voice (a track of the file; the classifier judges one voice) keeps its
rhythm (its time shifts, onsets and lengths) and each of its notes gets a soft pitch: a
distribution pi_i over the pitches (logits theta_i, started sharp at the note's pitch), and
the embedding the classifier reads at the note's NoteOn and NoteOff tokens is the pi_i
mixture of the NoteOn_p and NoteOff_p embeddings. Gradient ascent (Adam) on

    mean over the voice's phrases of log p(target | phrase)
    - l2 * mean_i ||pi_i - onehot(original pitch_i)||^2          (stay near the original)
    - continuity * mean_i ((E[pitch_i+1] - E[pitch_i]) / 12)^2    (no wild leaps)

with the candidate pitches limited to the voice's range widened by `spread` semitones. Back to
notes: each note takes its most probable pitch; then the notes-per-beat threshold: in each
beat at most `notes_per_beat` notes stay, the least certain (lowest max pi_i) dropped, as
the seed's threshold on the relaxed roll.

The classifier's weights come from its ONNX file: the named initializers, and the linear
layers' (the exporter stores them transposed, unnamed) in graph order, checked against
onnxruntime before use (a ModelError when they do not agree).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from midi_companion.classifier import StyleClassifier
from midi_companion.errors import CompanionError, ModelError
from midi_companion.score import Note, Score, Track


class RestyleError(CompanionError):
    """A restyle request that cannot be carried out (no notes, unknown style)."""


def torch_classifier(path) -> tuple[torch.nn.Module, StyleClassifier]:
    """The classifier file as a torch model (eval mode) and as the runtime sees it."""
    import onnx
    from onnx import numpy_helper

    from midi_companion.models.classifier import Classifier

    rt = StyleClassifier(path)
    args = json.loads(rt.model.metadata["model_args"])
    model = Classifier(rt.rep.vocab_size, **args).eval()
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    sd = model.state_dict()
    named = {k.removeprefix("model."): v for k, v in inits.items() if k.startswith("model.")}
    named = {k: v for k, v in named.items() if k in sd}  # not the buffers (inv_freq)
    missing = [k for k in sd if k not in named]
    unnamed = []
    for node in graph.node:  # the transposed linear weights, in the order the graph uses them
        for name in node.input:
            if name in inits and not name.startswith("model.") and inits[name].ndim == 2:
                if name not in unnamed:
                    unnamed.append(name)
    if len(unnamed) != len(missing):
        raise ModelError(f"{path}: cannot map its weights back to torch ({len(missing)} unnamed)")
    for key, name in zip(missing, unnamed):
        w = inits[name]
        named[key] = w.T if w.T.shape == tuple(sd[key].shape) else w
    try:
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v, np.float32)) for k, v in named.items()}
        )
    except RuntimeError as err:
        raise ModelError(f"{path}: its weights do not fit the classifier: {err}") from err
    rng = np.random.default_rng(0)
    probe = [rng.integers(0, rt.rep.vocab_size, n) for n in (5, rt.phrase)]
    with torch.no_grad():
        want = torch.cat([model(torch.tensor(p)[None], torch.tensor([len(p)])) for p in probe])
    if np.abs(rt.logits(probe) - want.numpy()).max() > 1e-3:
        raise ModelError(f"{path}: its weights, read back into torch, do not reproduce it")
    return model, rt


def voice_notes(rep, tokens) -> tuple[list[Note], list[int], list[int]]:
    """A voice's events tokens -> (its notes, each note's NoteOn position, NoteOff position)."""
    res = rep.steps_per_beat
    steps = rep.token_steps()
    table = getattr(rep, "velocities", None)
    step, vel = 0, 100
    notes, ons, offs, start, open_ = [], [], [], [], {}
    for i, t in enumerate(tokens):
        kind, value = rep.split(int(t))
        if kind == "TimeShift":
            step += int(steps[t])
        elif kind == "Velocity" and table:
            vel = int(table[value])
        elif kind == "NoteOn":
            open_[value] = len(notes)
            notes.append(Note(step / res, value, 0.0, vel))
            ons.append(i)
            offs.append(-1)
            start.append(step)
        elif kind == "NoteOff" and value in open_:
            k = open_.pop(value)
            notes[k] = replace(notes[k], duration=max(step - start[k], 1) / res)
            offs[k] = i
    for k in open_.values():  # never released: one step long
        notes[k] = replace(notes[k], duration=1 / res)
    return notes, ons, offs


def restyle_voice(
    model,
    rt: StyleClassifier,
    notes: list[Note],
    target: int,
    steps: int = 200,
    lr: float = 0.1,
    l2: float = 1.0,
    continuity: float = 0.5,
    spread: int = 5,
    notes_per_beat: float | None = 4,
    seed: int = 0,
) -> tuple[list[Note], dict]:
    """One voice restyled (see the module doc): (its new notes, what the ascent did)."""
    rep = rt.rep
    tokens = np.asarray(rep.encode(Score.from_notes(notes)), dtype=np.int64)
    qnotes, ons, offs = voice_notes(rep, tokens)
    if not qnotes:
        return [], {"notes": 0}
    torch.manual_seed(seed)
    N = len(qnotes)
    pitches = torch.tensor([n.pitch for n in qnotes])
    lo = max(0, int(pitches.min()) - spread)
    hi = min(127, int(pitches.max()) + spread)
    cand = torch.arange(lo, hi + 1)
    orig = F.one_hot(pitches - lo, len(cand)).float()
    theta = (orig * 6.0).clone().requires_grad_(True)  # sharp: ~0.99 on the original pitch
    E = model.encoder.emb.weight.detach()
    base = E[torch.from_numpy(tokens)]  # [T, d]
    on_idx, off_idx = torch.tensor(ons), torch.tensor(offs)
    has_off = off_idx >= 0
    E_on, E_off = E[rep.note_on_offset + cand], E[rep.note_off_offset + cand]
    n = rt.phrase
    cuts = [(s, min(s + n, len(tokens))) for s in range(0, len(tokens), n)]
    cuts = [c for i, c in enumerate(cuts) if i == 0 or c[1] - c[0] >= 16]
    opt = torch.optim.Adam([theta], lr=lr)

    def embedded(pi):
        x = base.clone()
        x[on_idx] = pi @ E_on
        x[off_idx[has_off]] = pi[has_off] @ E_off
        return x

    starts = torch.tensor([a for a, _ in cuts])
    lengths = torch.tensor([b - a for a, b in cuts])
    width = int(lengths.max())
    gather = (starts[:, None] + torch.arange(width)[None, :]).clamp(max=len(tokens) - 1)

    def target_logp(x):  # every phrase at once: [phrases, width, d], padding masked
        logits = model.head(model.encoder.embedded(x[gather], lengths))
        return F.log_softmax(logits, -1)[:, target].mean()

    with torch.no_grad():
        before = float(target_logp(base).exp())
    for _ in range(steps):
        pi = theta.softmax(-1)
        expected = pi @ cand.float()
        loss = -target_logp(embedded(pi))
        loss = loss + l2 * ((pi - orig) ** 2).sum(-1).mean()
        if N > 1:
            loss = loss + continuity * (((expected[1:] - expected[:-1]) / 12.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pi = theta.softmax(-1)
        relaxed = float(target_logp(embedded(pi)).exp())
        conf, best = pi.max(-1)
    new = [replace(q, pitch=int(cand[b])) for q, b in zip(qnotes, best.tolist())]
    keep = _threshold(new, conf.tolist(), notes_per_beat)
    out = [nt for nt, k in zip(new, keep) if k]
    return out, {
        "notes": N,
        "changed": int(sum(a.pitch != b.pitch for a, b in zip(qnotes, new))),
        "dropped": int(N - sum(keep)),
        "p_relaxed_start": before,
        "p_relaxed_end": relaxed,
    }


def _threshold(notes: list[Note], conf: list[float], per_beat: float | None) -> list[bool]:
    """At most `per_beat` notes with onsets in each beat: the least certain dropped."""
    keep = [True] * len(notes)
    if not per_beat:
        return keep
    beats: dict[int, list[int]] = {}
    for i, nt in enumerate(notes):
        beats.setdefault(int(np.floor(nt.onset + 1e-9)), []).append(i)
    for idx in beats.values():
        for i in sorted(idx, key=lambda i: conf[i])[: max(0, len(idx) - int(per_beat))]:
            keep[i] = False
    return keep


def quality(notes: list[Note]) -> dict:
    """The quality measures of one voice (companion/metrics.py)."""
    from midi_companion import metrics

    if not notes:
        return {}
    f = metrics.features(notes)
    key = metrics.estimate_key(notes)
    return {
        "in_key": metrics.in_key_share(notes, key),
        "grid_16th": metrics.grid_share(notes, 0.25),
        "pitch_count": float(f["pitch_count"][0]),
        "pitch_range": float(f["pitch_range"][0]),
        "avg_pitch_interval": float(f["avg_pitch_interval"][0]),
        "note_count": float(f["note_count"][0]),
    }


def restyle(
    in_path,
    style: str,
    out_path,
    classifier,
    **knobs,
) -> dict:
    """Restyle every voice of a MIDI file towards `style`; write it; return the report:
    per voice the target class's probability before and after (the classifier file on
    onnxruntime, mean over the voice's phrases) and the quality measures before and after."""
    model, rt = torch_classifier(classifier)
    try:
        target = rt.class_index(style)
    except ValueError as err:
        raise RestyleError(f"--to: {err}") from err
    score = Score.from_midi(in_path)
    voices = [t for t in score.tracks if t.notes and not t.is_drum]
    if not voices:
        raise RestyleError(f"{in_path}: has no notes to restyle")
    tracks, report = [], []
    for track in voices:
        new, info = restyle_voice(model, rt, track.notes, target, **knobs)
        p0 = float(rt.probs_of_notes(track.notes)[target])
        p1 = float(rt.probs_of_notes(new)[target])
        report.append(
            {
                "track": track.name,
                **info,
                "p_target_before": p0,
                "p_target_after": p1,
                "quality_before": quality(track.notes),
                "quality_after": quality(new),
            }
        )
        tracks.append(Track(track.name, track.program, track.is_drum, new, track.channel))
    Score(tracks, score.tempos, score.time_signatures).to_midi(out_path)
    return {
        "input": str(in_path),
        "output": str(out_path),
        "style": rt.classes[target],
        "voices": report,
    }


def main(args) -> int:
    """`companion restyle IN.mid --to STYLE -o OUT.mid`."""
    from midi_companion.outfiles import check_output
    from midi_companion.presets import zoo_dir

    torch.set_num_threads(1)
    out = check_output(args.output, "-o", inputs=[args.input])
    r = restyle(
        args.input,
        args.to,
        out,
        classifier=args.classifier or zoo_dir() / "classifier.onnx",
        steps=args.steps,
        l2=args.l2,
        continuity=args.continuity,
        notes_per_beat=args.notes_per_beat or None,
        seed=args.seed,
    )
    for v in r["voices"]:
        print(
            f"{v['track']}: p({r['style']}) {v['p_target_before']:.3f} -> "
            f"{v['p_target_after']:.3f}; {v['changed']}/{v['notes']} pitches changed, "
            f"{v['dropped']} dropped"
        )
    print(f"wrote {r['output']}")
    return 0


def held_out_report(
    classifier, per_class: int = 2, max_voices: int = 4, beats: float = 32.0, **knobs
) -> dict:
    """Restyle held-out pieces of the classifier's own test split: `per_class` pieces of each
    class (evenly spaced in the split), each towards the next class in the list, at most
    `max_voices` voices a piece, each voice's first `beats` beats. Per piece: the target's
    probability and the quality measures before and after, averaged over its voices."""
    from midi_companion.evaluate import held_out_scores
    from midi_companion.quality import spread

    model, rt = torch_classifier(classifier)
    ids = rt.model.corpus["ids"]["test"]
    scores = held_out_scores(rt.model.corpus, "test")
    col = {m: i for i, ms in enumerate(rt.members) for m in ms}
    by_class: dict[int, list] = {}
    for pid, score in zip(ids, scores):
        if pid.split("/", 1)[0] in col:
            by_class.setdefault(col[pid.split("/", 1)[0]], []).append((pid, score))
    rows = []
    for c, items in sorted(by_class.items()):
        target = (c + 1) % len(rt.classes)
        for pid, score in spread(items, per_class):
            voices = [t for t in score.tracks if t.notes and not t.is_drum][:max_voices]
            per = []
            for t in voices:
                t = replace(t, notes=[n for n in t.notes if n.onset < beats])
                if not t.notes:
                    continue
                new, info = restyle_voice(model, rt, t.notes, target, **knobs)
                per.append(
                    {
                        "p_before": float(rt.probs_of_notes(t.notes)[target]),
                        "p_after": float(rt.probs_of_notes(new)[target]),
                        "changed": info["changed"] / max(info["notes"], 1),
                        "before": quality(t.notes),
                        "after": quality(new),
                    }
                )
            mean = lambda f, per=per: float(np.mean([f(v) for v in per]))  # noqa: E731
            rows.append(
                {
                    "piece": pid,
                    "from": rt.classes[c],
                    "to": rt.classes[target],
                    "voices": len(per),
                    "p_before": mean(lambda v: v["p_before"]),
                    "p_after": mean(lambda v: v["p_after"]),
                    "changed": mean(lambda v: v["changed"]),
                    **{
                        f"{k}_{when}": mean(lambda v, k=k, when=when: v[when][k])
                        for k in ("in_key", "avg_pitch_interval", "pitch_range", "pitch_count")
                        for when in ("before", "after")
                    },
                }
            )
    return {"classifier": str(classifier), "knobs": knobs, "pieces": rows}


if __name__ == "__main__":  # python -m midi_companion.models.restyle CLASSIFIER [--per-class N]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m midi_companion.models.restyle")
    ap.add_argument("classifier")
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = held_out_report(args.classifier, args.per_class, steps=args.steps)
    print(
        "| piece | from -> to | voices | p(to) before | p(to) after | pitches changed | "
        "in key before / after | mean interval before / after | range before / after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for x in r["pieces"]:
        print(
            f"| {x['piece']} | {x['from']} -> {x['to']} | {x['voices']} | {x['p_before']:.3f} | "
            f"{x['p_after']:.3f} | {x['changed']:.0%} | {x['in_key_before']:.2f} / "
            f"{x['in_key_after']:.2f} | {x['avg_pitch_interval_before']:.2f} / "
            f"{x['avg_pitch_interval_after']:.2f} | {x['pitch_range_before']:.0f} / "
            f"{x['pitch_range_after']:.0f} |"
        )
