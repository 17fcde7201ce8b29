"""A style classifier's graph, torch-free (models/classifier.py; protocol `classify`).

`StyleClassifier(path)` opens a classifier file and scores phrases of tokens, or the notes of
one voice, as class probabilities; the bridge measurement, `companion restyle` and the
held-out report (`python -m midi_companion.classifier MODEL --split test`) use it.
"""

from __future__ import annotations

import json

import numpy as np

from midi_companion.errors import ModelError

MIN_LEN = 16  # a piece's last window shorter than this is not scored (unless the only one)


def class_names(classes: list[str]) -> list[str]:
    """`["bach", "irish=oneill+ryans"]` -> ["bach", "irish"]."""
    return [c.partition("=")[0].strip() for c in classes]


def class_members(classes: list[str]) -> list[tuple[str, ...]]:
    """`["bach", "irish=oneill+ryans"]` -> [("bach",), ("oneill", "ryans")]."""
    return [tuple(m.strip() for m in (c.partition("=")[2] or c).split("+")) for c in classes]


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


class StyleClassifier:
    """A classifier file: phrases of tokens -> class logits (onnxruntime)."""

    def __init__(self, path, threads: int = 1):
        from midi_companion.modelfile import load

        self.model = load(path, threads)
        if self.model.protocol != "classify":
            raise ModelError(
                f"{path}: not a classifier (protocol {self.model.protocol!r}, expected 'classify')"
            )
        args = json.loads(self.model.metadata.get("model_args", "{}"))
        if not isinstance(args.get("classes"), list):
            raise ModelError(f"{path}: its metadata 'model_args' names no classes")
        self.path = self.model.path
        self.rep = self.model.representation
        self.classes = class_names(args["classes"])
        self.members = class_members(args["classes"])
        self.split_tracks = bool(args.get("split_tracks", True))
        self.phrase = int(args.get("phrase", 128))  # its training windows ([train] seq_len)
        self.session = self.model.session

    def class_index(self, style: str) -> int:
        """A class by its name, one of its collections, or a corpus spec of some of them
        ("quartets", "haydn", "music21:haydn+music21:mozart"); ValueError listing the
        classes."""
        parts = {part.strip().removeprefix("music21:") for part in style.split("+")}
        for i, (cls, members) in enumerate(zip(self.classes, self.members)):
            if parts == {cls} or parts <= set(members):
                return i
        raise ValueError(
            f"{style!r} is not a class of {self.path.name} (classes: "
            + ", ".join(f"{c} ({'+'.join(m)})" for c, m in zip(self.classes, self.members))
            + ")"
        )

    def logits(self, phrases: list, batch: int = 64) -> np.ndarray:
        """Token phrases (each at least one token) -> logits [n, classes]."""
        out = []
        for i in range(0, len(phrases), batch):
            group = [np.asarray(p, dtype=np.int64) for p in phrases[i : i + batch]]
            toks = np.zeros((len(group), max(len(p) for p in group)), dtype=np.int64)
            for j, p in enumerate(group):
                toks[j, : len(p)] = p
            lengths = np.array([len(p) for p in group], dtype=np.int64)
            out.append(self.session.run(["logits"], {"tokens": toks, "lengths": lengths})[0])
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def phrases_of(self, tokens, length: int | None = None) -> list[np.ndarray]:
        """A voice's tokens cut as training evaluates them (consecutive windows)."""
        length = length or self.phrase
        x = np.asarray(tokens, dtype=np.int64)
        cut = [x[s : s + length] for s in range(0, len(x), length)]
        return [w for i, w in enumerate(cut) if len(w) and (i == 0 or len(w) >= MIN_LEN)]

    def probs_of_notes(self, notes, length: int | None = None) -> np.ndarray:
        """The mean class probabilities over the phrases of one voice's notes ([classes];
        uniform for no notes)."""
        from midi_companion.score import Score

        notes = sorted(notes)
        if not notes:
            return np.full(len(self.classes), 1.0 / len(self.classes))
        t0 = np.floor(notes[0].onset)
        from dataclasses import replace

        score = Score.from_notes([replace(n, onset=n.onset - t0) for n in notes])
        phrases = self.phrases_of(self.rep.encode(score), length)
        return softmax(self.logits(phrases)).mean(0)


def held_out(path, split: str = "test") -> dict:
    """Accuracy and confusion matrix of a classifier file on its own held-out split, per
    phrase (every window of every voice, as training evaluates) and per voice (the mean of
    its phrases' probabilities)."""
    from midi_companion.evaluate import held_out_scores
    from midi_companion.score import Score

    clf = StyleClassifier(path)
    corpus = clf.model.corpus
    ids = corpus["ids"][split]
    scores = held_out_scores(corpus, split)
    col = {m: i for i, ms in enumerate(clf.members) for m in ms}
    C = len(clf.classes)
    phrase_cm = np.zeros((C, C), dtype=int)
    voice_cm = np.zeros((C, C), dtype=int)
    for pid, score in zip(ids, scores):
        label = col.get(pid.split("/", 1)[0])
        if label is None:
            continue
        parts = (
            [Score([t], score.tempos, score.time_signatures) for t in score.tracks if t.notes]
            if clf.split_tracks
            else [score]
        )
        for part in parts:
            x = clf.rep.encode(part)
            if len(x) < 2:
                continue
            p = softmax(clf.logits(clf.phrases_of(x)))
            for guess in p.argmax(1):
                phrase_cm[label, guess] += 1
            voice_cm[label, p.mean(0).argmax()] += 1

    def summary(cm):
        per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
        return {
            "accuracy": float(cm.trace() / max(cm.sum(), 1)),
            "balanced_accuracy": float(per_class[cm.sum(1) > 0].mean()),
            "recall": dict(zip(clf.classes, per_class.round(4).tolist())),
            "confusion": cm.tolist(),
            "count": int(cm.sum()),
        }

    return {
        "model": str(path),
        "split": split,
        "classes": clf.classes,
        "phrase": summary(phrase_cm),
        "voice": summary(voice_cm),
    }


def markdown(r: dict) -> str:
    lines = []
    for unit in ("phrase", "voice"):
        s = r[unit]
        lines += [
            f"Per {unit} ({s['count']} {unit}s of the {r['split']} split): accuracy "
            f"{s['accuracy']:.3f}, balanced accuracy {s['balanced_accuracy']:.3f}.",
            "",
            "| true \\ predicted | " + " | ".join(r["classes"]) + " | recall |",
            "|---" * (len(r["classes"]) + 2) + "|",
        ]
        for name, row in zip(r["classes"], s["confusion"]):
            lines.append(
                f"| {name} | " + " | ".join(map(str, row)) + f" | {s['recall'][name]:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    """python -m midi_companion.classifier MODEL.onnx [--split test] [--json]"""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m midi_companion.classifier", description=held_out.__doc__
    )
    ap.add_argument("model")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = held_out(args.model, args.split)
    print(json.dumps(r) if args.json else markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
