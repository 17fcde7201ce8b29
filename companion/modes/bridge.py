"""The bridge (a `[bridge]` table on a continue preset): call and response whose answer
travels, in a latent model's space, from the player's phrase towards a target style (seed
000's style transition, live).

A continue answer of a latent model (LatentVoice) plays from z_me, the encoder's mean for
the player's phrase. The bridge moves z while the answer is generated: at beat b of the
answer (it starts at `start`), with f = (b - start) / (bars * beats_per_bar) clipped to
[0, 1],

    z(b) = z_me + mix * f * (z_target - z_me)

so after `bars` bars the decoder reads z_me + mix * (z_target - z_me): the target's latent at
mix 1, the player's at mix 0. z is set in the decoder's state before each token (its h, c
are offsets from the start state z gives, so a new z also moves that start: the decoder
glides rather than jumps). `mix` is read at every token, so `[controls] bridge_cc` turns the
answer towards or away from the target while it plays. z_target is a style latent: the mean
latent of a corpus that the model file carries in its metadata, or of a MIDI file
(companion/styles.py).
"""

from __future__ import annotations

import numpy as np

from midi_companion.errors import ModelError
from midi_companion.modes.continuation import Continuation


def bridge_latent(z_me, z_target, mix: float, fraction: float) -> np.ndarray:
    """The latent `fraction` (0..1) of the way through the bridge at `mix` (0..1)."""
    w = float(np.clip(mix, 0.0, 1.0)) * float(np.clip(fraction, 0.0, 1.0))
    z_me = np.asarray(z_me, dtype=np.float32)
    return z_me + np.float32(w) * (np.asarray(z_target, dtype=np.float32) - z_me)


class Bridge(Continuation):
    """The bridge mode: a Continuation whose LatentVoice's z moves towards `target`."""

    def __init__(self, voice, preset, output, rng, target, track: int = 0):
        if not hasattr(voice, "steer_latent"):
            raise ModelError(
                f"{preset.path}: [bridge] needs a latent model (one that names an "
                f"encoder graph, e.g. lstm-vae); {preset.model.name} has none"
            )
        super().__init__(voice, preset, output, rng, track)
        self.target = np.asarray(target, dtype=np.float32)
        if self.target.shape != (voice.encoder.latent,):
            raise ModelError(
                f"{preset.path}: the bridge target's latent has shape {self.target.shape}; "
                f"{preset.model.name} needs ({voice.encoder.latent},)"
            )
        self.bars = preset.bridge.bars or preset.timing.bars
        self.mix = preset.bridge.mix
        self.path: list[tuple[float, float]] = []  # (beat, weight on the target) this answer

    def set_mix(self, mix: float) -> None:
        """0 = like me, 1 = like the target; read at every token of the answer playing."""
        self.mix = float(np.clip(mix, 0.0, 1.0))

    def _steer(self, start: float, end: float):
        z_me = self.voice.latent
        if z_me is None:
            return None
        span = self.bars * self.timing.beats_per_bar
        self.path = []

        def steer(beat: float) -> None:
            fraction = (beat - start) / span
            z = bridge_latent(z_me, self.target, self.mix, fraction)
            self.voice.steer_latent(z)
            self.path.append((beat, self.mix * float(np.clip(fraction, 0.0, 1.0))))

        return steer


def build(preset, scheduler, clock, rng, provider: str = "auto"):
    """modes.build for a continue preset with [bridge]: its LatentVoice, the target's latent."""
    from midi_companion.modelfile import load as load_model
    from midi_companion.modes import BuiltMode, _default_tracks
    from midi_companion.output import Output
    from midi_companion.styles import target_latent
    from midi_companion.voices import voice_for

    model = load_model(preset.model)
    voice = voice_for(model, provider=provider)
    if not hasattr(voice, "encoder"):
        raise ModelError(
            f"{preset.path}: [bridge] needs a latent model (one that names an encoder "
            f"graph, e.g. lstm-vae); {model.path.name} is {model.family}"
        )
    target = target_latent(model, voice.encoder, preset.bridge.target, preset.path)
    voice.warm_up(rng)
    out = Output(scheduler, clock, preset.tracks or _default_tracks(model))
    return BuiltMode(Bridge(voice, preset, out, rng, target), [out], [voice.engine])


# ---- does it move? -------------------------------------------------------------------------
def _bar_latent(encoder, rep, notes, origin: float):
    """The encoder's mean for notes (times from `origin`), None when they give no phrase."""
    from dataclasses import replace as moved

    from midi_companion.score import Score

    if not notes:
        return None
    tokens = rep.encode(Score.from_notes([moved(n, onset=n.onset - origin) for n in notes]))
    return encoder.encode(tokens)[0] if len(tokens) >= 2 else None


def measure(preset="bridge", pieces: int = 20, seeds: int = 2, classifier=None) -> dict:
    """The bridge preset on `pieces` held-out prompts of its model's test split (quality.py's
    prompts: the first four bars) x `seeds`, at mix 0 (a plain latent continuation) and at
    mix 1. Per bar of the answer: the distance of the bar's encoder latent to the target's
    and to the prompt's, notes per beat, and with a classifier file the probability of the
    target's class (the target must name one of its classes). Means over the runs."""
    from dataclasses import replace as changed

    from midi_companion import presets, quality
    from midi_companion.latent import Encoder
    from midi_companion.modelfile import load as load_model
    from midi_companion.offline import NEVER
    from midi_companion.styles import target_latent

    p = presets.load(preset)
    if p.bridge is None:
        raise ModelError(f"{p.path}: has no [bridge] table; the measurement needs a bridge")
    model = load_model(p.model)
    encoder = Encoder(model)
    rep = model.representation
    z_t = target_latent(model, encoder, p.bridge.target, p.path)
    clf = target = None
    if classifier is not None:
        from midi_companion.classifier import StyleClassifier

        clf = StyleClassifier(classifier)
        target = clf.class_index(p.bridge.target)
    scores = quality.spread(quality.split_scores(model)["test"], pieces)
    bpb = p.timing.beats_per_bar
    bars = p.timing.bars
    out = {
        "preset": p.name,
        "target": p.bridge.target,
        "bars": bars,
        "bridge_bars": p.bridge.bars or bars,
        "pieces": pieces,
        "seeds": seeds,
        "mixes": {},
    }
    for mix in (0.0, 1.0):
        run_preset = changed(
            p,
            bridge=changed(p.bridge, mix=mix),
            timing=changed(p.timing, silence_beats=NEVER),
        )
        runs = quality.continuation_runs(run_preset, scores, list(range(seeds)))
        rows = {
            k: [[] for _ in range(bars)]
            for k in ("to_target", "to_prompt", "notes_per_beat", "p_target")
        }
        for run in runs:
            z_p = _bar_latent(encoder, rep, run.prompt, 0.0)
            for b in range(bars):
                a = run.start + b * bpb
                notes = [n for n in run.answer if a <= n.onset < a + bpb]
                rows["notes_per_beat"][b].append(len(notes) / bpb)
                z = _bar_latent(encoder, rep, notes, a)
                if z is not None:
                    rows["to_target"][b].append(float(np.linalg.norm(z - z_t)))
                    rows["to_prompt"][b].append(float(np.linalg.norm(z - z_p)))
                if clf is not None and notes:
                    rows["p_target"][b].append(float(clf.probs_of_notes(notes)[target]))
        out["runs"] = len(runs)
        out["mixes"][str(mix)] = {
            k: [float(np.mean(v)) if v else None for v in per_bar] for k, per_bar in rows.items()
        }
    return out


def markdown(r: dict) -> str:
    head = "| measure | mix | " + " | ".join(f"bar {b + 1}" for b in range(r["bars"])) + " |"
    lines = [head, "|---" * (r["bars"] + 2) + "|"]
    names = {
        "to_target": "latent distance to the target",
        "to_prompt": "latent distance to the prompt",
        "p_target": "classifier p(target class)",
        "notes_per_beat": "notes per beat",
    }
    for key, label in names.items():
        for mix, m in r["mixes"].items():
            vals = m[key]
            if all(v is None for v in vals):
                continue
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in vals)
            lines.append(f"| {label} | {float(mix):g} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """python -m midi_companion.modes.bridge [PRESET] [--pieces N] [--seeds N]
    [--classifier MODEL.onnx] [--json]"""
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m midi_companion.modes.bridge", description=measure.__doc__
    )
    ap.add_argument("preset", nargs="?", default="bridge")
    ap.add_argument("--pieces", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.preset, args.pieces, args.seeds, args.classifier)
    print(json.dumps(r) if args.json else markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
