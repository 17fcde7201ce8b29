"""A latent model's encoder graph, torch-free (docs/ARCHITECTURE.md, "latent token-step").

An `lstm-vae` model file (models/lstm_vae.py) is a `token-step` graph whose state carries a
latent `z` [B, latent]; its metadata names a second file beside it (`encoder`, e.g.
`lstm-vae.encoder.onnx`) that maps a phrase of tokens to the mean and log-variance of
q(z | phrase). `Encoder(model)` opens and checks that file; LatentVoice (companion/voices.py)
encodes the player's phrase with it and sets `z` before it feeds the phrase.
"""

from __future__ import annotations

import numpy as np

from midi_companion.errors import ModelError

INPUTS = ("tokens", "lengths")
OUTPUTS = ("mean", "logvar")


def has_encoder(model) -> bool:
    """Whether a loaded model file names an encoder graph (a latent token-step model)."""
    return "encoder" in model.metadata


class Encoder:
    """The encoder graph of a latent model file: a phrase -> (mean, logvar) of its latent."""

    def __init__(self, model, threads: int = 1):
        import onnxruntime as ort

        from midi_companion.modelfile import FORMAT, session_options

        name = model.metadata.get("encoder")
        if not name:
            raise ModelError(f"{model.path}: names no encoder graph (metadata 'encoder')")
        self.path = model.path.parent / name
        if not self.path.is_file():
            raise ModelError(
                f"{model.path}: its encoder graph {self.path} is missing (a latent "
                f"model is two files: keep {name} beside it)"
            )
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own kinds
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelError(f"{self.path}: not a readable ONNX model: {first}") from err
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if (
            meta.get("format") != FORMAT
            or meta.get("graph") != "encoder"
            or meta.get("family") != model.family
        ):
            raise ModelError(
                f"{self.path}: not the encoder of {model.path.name} (its metadata "
                f"says format {meta.get('format')!r}, graph {meta.get('graph')!r}, "
                f"family {meta.get('family')!r})"
            )
        ins = {i.name for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        if set(INPUTS) - ins or set(OUTPUTS) - set(outs):
            raise ModelError(
                f"{self.path}: an encoder graph needs inputs {list(INPUTS)} and "
                f"outputs {list(OUTPUTS)} (it has {sorted(ins)}, {sorted(outs)})"
            )
        z = next((s for s in model.state if s.name == "z"), None)
        if z is None:
            raise ModelError(f"{model.path}: a latent model carries a state 'z' [B, latent]")
        self.latent = int(z.shape[-1])
        width = outs["mean"][-1]
        if isinstance(width, int) and width != self.latent:
            raise ModelError(
                f"{self.path}: encodes {width} latent dimensions but "
                f"{model.path.name}'s z has {self.latent}"
            )

    def encode_batch(
        self, tokens: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """tokens int [B, T] (right-padded), lengths [B] -> mean, logvar [B, latent]."""
        mean, logvar = self.session.run(
            list(OUTPUTS),
            {
                "tokens": np.asarray(tokens, dtype=np.int64),
                "lengths": np.asarray(lengths, dtype=np.int64),
            },
        )
        return mean, logvar

    def encode(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """One phrase (a sequence of token ids, at least one) -> mean, logvar [latent]."""
        x = np.asarray(list(tokens), dtype=np.int64)
        if not len(x):
            raise ModelError(f"{self.path}: an empty phrase has no latent")
        mean, logvar = self.encode_batch(x[None], np.array([len(x)]))
        return mean[0], logvar[0]


# ---- held-out reconstruction, from the two files alone --------------------------------------
def phrases(
    piece: np.ndarray, length: int, steps: np.ndarray | None, beat: int
) -> list[tuple[np.ndarray, int]]:
    """A piece cut as training evaluates it (models/lstm_vae.py `batches`): windows of
    `length` tokens from its start, overlapping by one, each with the position in the beat
    before its first token (0 where the tokens carry no time)."""
    phase = np.cumsum(steps[piece]) % beat if steps is not None else None
    out = []
    for s in range(0, len(piece) - 1, length - 1):
        w = piece[s : s + length]
        if len(w) >= 2:
            out.append((w, int(phase[s - 1]) if phase is not None and s else 0))
    return out


def reconstruction(
    path, split: str = "test", length: int = 129, batch: int = 64, provider: str = "cpu"
) -> dict:
    """Held-out phrases of a latent model's own split, scored by onnxruntime: the decoder's
    NLL per predicted token with z = the encoder's mean (`recon_nll_mean`) and with z = 0,
    the prior's mean (`recon_nll_prior`); the KL of q(z | phrase) from the prior, nats per
    phrase (`kl`); and the active latent dimensions (variance of the mean over the phrases
    above 0.01: `active_units`)."""
    from midi_companion.engine import Engine
    from midi_companion.evaluate import held_out_scores
    from midi_companion.modelfile import load

    model = load(path)
    encoder = Encoder(model)
    rep = model.representation
    steps = rep.token_steps()
    beat = rep.steps_per_beat if steps is not None else 1
    cut = []
    for score in held_out_scores(model.corpus, split):
        x = np.asarray(rep.encode(score), dtype=np.int64)
        if len(x) >= 2:
            cut += phrases(x, length, steps, beat)
    engine = Engine(model, batch=1, provider=provider)
    totals = {"mean": 0.0, "prior": 0.0}
    kl, tokens, means = 0.0, 0, []
    for i in range(0, len(cut), batch):
        group = cut[i : i + batch]
        B, T = len(group), max(len(w) for w, _ in group)
        toks = np.zeros((B, T), dtype=np.int64)
        for j, (w, _) in enumerate(group):
            toks[j, : len(w)] = w
        lengths = np.array([len(w) for w, _ in group])
        mean, logvar = encoder.encode_batch(toks, lengths)
        means.append(mean)
        kl += float((0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar)).sum())
        scored = np.arange(1, T)[None, :] < lengths[:, None]  # token t + 1 exists
        tokens += int(scored.sum())
        for which, z in (("mean", mean), ("prior", np.zeros_like(mean))):
            engine.reset(B)
            engine.state["z"] = z.astype(np.float32)
            if "time" in engine.state:
                engine.state["time"] = np.array([[p] for _, p in group], dtype=np.float32)
            for t in range(T - 1):
                logits = engine.step({"token": toks[:, t : t + 1]})["logits"].astype(np.float64)
                m = logits.max(1, keepdims=True)
                lp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
                nll = -lp[np.arange(B), toks[:, t + 1]]
                totals[which] += float(nll[scored[:, t]].sum())
    means_all = np.concatenate(means)
    return {
        "model": str(path),
        "split": split,
        "phrases": len(cut),
        "phrase_tokens": length,
        "tokens": tokens,
        "recon_nll_mean": totals["mean"] / tokens,
        "recon_nll_prior": totals["prior"] / tokens,
        "kl": kl / len(cut),
        "active_units": int((means_all.var(0) > 0.01).sum()),
        "latent": encoder.latent,
    }


def continuation(
    path, split: str = "test", length: int = 129, following: int = 128, provider: str = "cpu"
) -> dict:
    """Held-out continuation: each piece of the split with at least `length + following`
    tokens gives its first `length` tokens as the phrase; the NLL per token of the next
    `following`, the model reading the phrase first (as a continue preset primes it): for a
    latent model from the phrase's latent (`nll_mean`, z = the encoder's mean) and from the
    prior's mean (`nll_prior`); for any other token-step model, `nll`."""
    from midi_companion.engine import Engine
    from midi_companion.evaluate import held_out_scores
    from midi_companion.modelfile import load

    model = load(path)
    rep = model.representation
    pieces = [
        np.asarray(rep.encode(s), dtype=np.int64) for s in held_out_scores(model.corpus, split)
    ]
    toks = np.stack([p[: length + following] for p in pieces if len(p) >= length + following])
    B = len(toks)
    latents = {"nll": None}
    if has_encoder(model):
        mean, _ = Encoder(model).encode_batch(toks[:, :length], np.full(B, length))
        latents = {"nll_mean": mean, "nll_prior": np.zeros_like(mean)}
    engine = Engine(model, batch=B, provider=provider)
    out = {
        "model": str(path),
        "split": split,
        "pieces": B,
        "phrase_tokens": length,
        "following": following,
    }
    for key, z in latents.items():
        engine.reset(B)
        if z is not None:
            engine.state["z"] = z.astype(np.float32)
        total = 0.0
        for t in range(length + following - 1):
            logits = engine.step({"token": toks[:, t : t + 1]})["logits"].astype(np.float64)
            if t >= length - 1:
                m = logits.max(1, keepdims=True)
                lp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
                total -= float(lp[np.arange(B), toks[:, t + 1]].sum())
        out[key] = total / (B * following)
    return out


def main(argv=None) -> int:
    """python -m midi_companion.latent MODEL.onnx [--split test] [--phrase 129]
    [--continuation N] [--json]"""
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m midi_companion.latent", description=reconstruction.__doc__
    )
    ap.add_argument("model")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument(
        "--phrase",
        type=int,
        default=129,
        help="tokens per phrase (the training config's seq_len + 1)",
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--continuation",
        type=int,
        default=0,
        metavar="N",
        help="instead: the NLL of the N tokens after each piece's first phrase "
        "(any token-step model; a latent one from the phrase's latent and "
        "from the prior's mean)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.continuation:
        r = continuation(args.model, args.split, args.phrase, args.continuation)
        print(
            json.dumps(r)
            if args.json
            else f"{r['model']} {r['split']}: {r['pieces']} pieces, the {r['following']} tokens "
            f"after the first {r['phrase_tokens']}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("nll"))
            + " nats/token"
        )
        return 0
    r = reconstruction(args.model, args.split, args.phrase, args.batch)
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['model']} {r['split']}: {r['phrases']} phrases of {r['phrase_tokens']} "
            f"tokens; reconstruction NLL {r['recon_nll_mean']:.4f} nats/token from the "
            f"phrase's latent (mean), {r['recon_nll_prior']:.4f} from the prior's mean; KL "
            f"{r['kl']:.3f} nats/phrase; {r['active_units']}/{r['latent']} active units"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
