"""Style latents of a latent model (torch-free): the mean encoder latent of a corpus or of a
MIDI file, what the `bridge` mode moves an answer towards (companion/modes/bridge.py).

A style is the mean, over every phrase of every voice of every piece, of the encoder's mean
of q(z | phrase) (phrases cut as training evaluates them: companion/latent.py `phrases`;
each track of a piece is a voice of its own, as the answer the bridge moves is one voice:
a chorale's four parts are four lines, not one chordal texture). Corpus styles are
computed offline once and written into the step file's metadata (`styles`: JSON, name ->
{"latent", "source", "pieces", "phrases"}), so they travel with the model and need no corpus
at run time:

    python -m midi_companion.styles models/zoo/lstm-vae.onnx music21:bach music21:essen ...

(this rewrites the file's metadata; it needs the training extra for `onnx` and music21). A
preset may instead name a MIDI file, whose style is computed when the preset loads (the
encoder on onnxruntime, a fraction of a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from midi_companion.errors import ModelError, PresetError

MIDI_SUFFIXES = (".mid", ".midi")
PHRASE = 129  # tokens per phrase: the lstm-vae's training windows (seq_len + 1)


def voices(scores) -> list:
    """Each track of each score as a one-track Score (drums left out)."""
    from midi_companion.score import Score

    return [
        Score([t], s.tempos, s.time_signatures)
        for s in scores
        for t in s.tracks
        if t.notes and not t.is_drum
    ]


def phrase_latents(encoder, rep, scores, length: int = PHRASE, batch: int = 64) -> np.ndarray:
    """The encoder's means [n, latent] of every phrase of every voice of `scores`."""
    from midi_companion.latent import phrases

    steps = rep.token_steps()
    beat = rep.steps_per_beat if steps is not None else 1
    cut = []
    for score in voices(scores):
        x = np.asarray(rep.encode(score), dtype=np.int64)
        if len(x) >= 2:
            cut += [w for w, _ in phrases(x, length, steps, beat)]
    means = []
    for i in range(0, len(cut), batch):
        group = cut[i : i + batch]
        toks = np.zeros((len(group), max(map(len, group))), dtype=np.int64)
        for j, w in enumerate(group):
            toks[j, : len(w)] = w
        means.append(encoder.encode_batch(toks, np.array([len(w) for w in group]))[0])
    if not means:
        return np.zeros((0, encoder.latent), dtype=np.float32)
    return np.concatenate(means)


def style_latent(encoder, rep, scores, length: int = PHRASE) -> tuple[np.ndarray, int]:
    """(the mean latent of every phrase of `scores`, how many phrases)."""
    z = phrase_latents(encoder, rep, scores, length)
    if not len(z):
        raise ModelError("no phrase of at least two tokens to take a style from")
    return z.mean(0), len(z)


def read_styles(model) -> dict[str, np.ndarray]:
    """The style latents a model file carries in its metadata (name -> latent)."""
    raw = model.metadata.get("styles")
    if not raw:
        return {}
    try:
        return {k: np.asarray(v["latent"], dtype=np.float32) for k, v in json.loads(raw).items()}
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{model.path}: metadata 'styles' is not readable JSON ({err})") from err


def target_latent(model, encoder, target: str, where: Path) -> np.ndarray:
    """The latent of a preset's bridge `target`: a style in the model's metadata (e.g.
    "music21:bach"), or a MIDI file (a path relative to the preset file `where`)."""
    styles = read_styles(model)
    if target in styles:
        return styles[target]
    if Path(target).suffix.lower() in MIDI_SUFFIXES:
        from midi_companion.score import Score

        path = Path(target).expanduser()
        path = path if path.is_absolute() else where.parent / path
        if not path.is_file():
            raise PresetError(
                f"{where}: [bridge] target names a MIDI file that does not exist: {path}"
            )
        score = Score.from_midi(path)
        try:
            return style_latent(encoder, model.representation, [score])[0]
        except ModelError as err:
            raise PresetError(f"{where}: [bridge] target {path}: {err}") from err
    known = ", ".join(sorted(styles)) or "none"
    raise PresetError(
        f"{where}: [bridge] target {target!r} is neither a style of {model.path.name} "
        f"(it carries: {known}) nor a .mid file"
    )


def write_styles(path, specs: list[str], split: str = "train", limit: int | None = None) -> dict:
    """Compute the style latent of each corpus spec (its pieces of `split` by the corpus
    seed-0 split, so a model's held-out prompts are not in its own corpus's style; "all" for
    every piece) and write them into the model file's metadata. Offline: music21, onnx."""
    import onnx

    from midi_companion.latent import Encoder
    from midi_companion.modelfile import load
    from midi_companion.models.corpora import load_corpus, split_pieces

    model = load(path)
    encoder = Encoder(model)
    styles = {k: v for k, v in json.loads(model.metadata.get("styles") or "{}").items()}
    for spec in specs:
        pieces = load_corpus(spec, progress=False, limit=limit)
        if split != "all":
            pieces = split_pieces(pieces, valid=0.05, test=0.05, seed=0)[split]
        z, n = style_latent(encoder, model.representation, [p.score for p in pieces])
        styles[spec] = {
            "latent": [round(float(x), 6) for x in z],
            "source": f"{spec} ({split} split)",
            "pieces": len(pieces),
            "phrases": n,
        }
    proto = onnx.load(str(path))
    for p in list(proto.metadata_props):
        if p.key == "styles":
            proto.metadata_props.remove(p)
    proto.metadata_props.add(key="styles", value=json.dumps(styles))
    onnx.save(proto, str(path))
    return styles


def main(argv=None) -> int:
    """python -m midi_companion.styles MODEL.onnx SPEC [SPEC ...] [--split train|all]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m midi_companion.styles", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("specs", nargs="+", metavar="SPEC", help="corpus specs (models/corpora.py)")
    ap.add_argument("--split", default="train", choices=("train", "all"))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    styles = write_styles(args.model, args.specs, args.split, args.limit)
    for name, s in styles.items():
        print(
            f"{name}: {s['pieces']} pieces, {s['phrases']} phrases, "
            f"|z| {np.linalg.norm(s['latent']):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
