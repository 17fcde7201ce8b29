"""Train only the learned initial state of a roll-nade-lstm checkpoint on a benchmark.

A model trained from the zero state (or without `learn_init`) predicts each piece's first
frame from nothing; the benchmark metric counts that frame. This gives every member
`learn_init` offsets (zeros to start: the same model) and trains them alone, every other
weight frozen, on the benchmark's train split: the loss is over each piece's first
``--frames`` frames (frame 0 from the learned state; 0 = whole pieces), full batch, Adam.
Every ``--eval-every`` steps the valid split is scored over every frame of whole pieces and
the best offsets are kept; the test split is scored once at the end. The checkpoint written
exports as usual (`companion export CKPT -o MODEL.onnx --float16`).

    python -m midi_companion.models.finetune_init /tmp/bench-jsb.pt --benchmark jsb \
        -o /tmp/bench-jsb-init.pt
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from midi_companion.models import roll_nade as rn
from midi_companion.models.checkpoint import build_model, load_checkpoint


def with_learned_init(ckpt: dict) -> dict:
    """A copy of a roll-nade-lstm checkpoint whose members all have `learn_init` (missing
    offsets start at zero, so the model is unchanged)."""
    if ckpt["family"] != rn.FAMILY:
        raise ValueError(f"a {rn.FAMILY} checkpoint is needed (received {ckpt['family']!r})")
    ck = copy.deepcopy(ckpt)
    ensemble = "members" in ck["model_args"]
    members = ck["model_args"]["members"] if ensemble else [ck["model_args"]]
    sd = dict(ck["state_dict"])
    for i, m in enumerate(members):
        m["learn_init"] = True
        for k in ("init_h", "init_c"):
            sd.setdefault(
                f"members.{i}.{k}" if ensemble else k, torch.zeros(m["layers"], 1, m["hidden"])
            )
    ck["state_dict"] = sd
    return ck


def every_frame_nll(model, rolls: list[np.ndarray], budget: int = 6000) -> tuple[float, float]:
    """(mean NLL per frame over every frame, over frames t >= 1) of whole pieces."""
    model.eval()
    total = {"all": 0.0, "after": 0.0, "n": 0, "n_after": 0}

    def run(group):
        batch = rn.collate(group)
        batch["valid"][:, 0] = True
        with torch.no_grad():
            per = model.per_frame_nll(batch)  # scored frames, row-major
        first = torch.zeros_like(batch["valid"])
        first[:, 0] = True
        first = first[batch["valid"]]
        total["all"] += float(per.sum())
        total["n"] += len(per)
        total["after"] += float(per[~first].sum())
        total["n_after"] += int((~first).sum())

    group: list[np.ndarray] = []
    for r in sorted(rolls, key=len):
        if group and len(r) * (len(group) + 1) > budget:
            run(group)
            group = []
        group.append(np.asarray(r))
    if group:
        run(group)
    return total["all"] / total["n"], total["after"] / total["n_after"]


def finetune(
    ckpt: dict,
    rolls: dict[str, list[np.ndarray]],
    frames: int = 16,
    lr: float = 0.03,
    steps: int = 150,
    eval_every: int = 10,
    log=print,
) -> dict:
    """The checkpoint with its members' offsets trained (see the module doc)."""
    ck = with_learned_init(ckpt)
    model = build_model(ck)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in ("init_h", "init_c"))
        if p.requires_grad:
            params.append(p)
    batch = rn.collate(
        [np.asarray(r)[:frames] if frames else np.asarray(r) for r in rolls["train"]]
    )
    batch["valid"][:, 0] = True
    opt = torch.optim.Adam(params, lr=lr)
    best, best_step = every_frame_nll(model, rolls["valid"]), 0
    best_sd = copy.deepcopy(model.state_dict())
    log(
        f"{sum(p.numel() for p in params)} offsets; step 0: valid {best[0]:.6f} "
        f"(t >= 1 {best[1]:.6f})"
    )
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        model.eval()  # the frozen model as it plays: no dropout
        nll, n = model.loss(batch)
        opt.zero_grad()
        (nll / n).backward()
        opt.step()
        train_nll = float(nll.detach() / n)
        if step % eval_every == 0 or step == steps:
            v = every_frame_nll(model, rolls["valid"])
            better = v[0] < best[0]
            if better:
                best, best_step, best_sd = v, step, copy.deepcopy(model.state_dict())
            log(
                f"step {step}: train {train_nll:.4f} (first {frames or 'all'} frames) "
                f"valid {v[0]:.6f} (t >= 1 {v[1]:.6f}){' best' if better else ''}; "
                f"{time.perf_counter() - t0:.0f} s"
            )
    model.load_state_dict(best_sd)
    test = every_frame_nll(model, rolls["test"]) if rolls.get("test") else (None, None)
    log(
        f"best step {best_step}: valid {best[0]:.6f} (t >= 1 {best[1]:.6f}), test "
        f"{test[0]:.6f} (t >= 1 {test[1]:.6f}) nats/frame over every frame"
    )
    ck["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ck["model_args"] = dict(model.model_args)
    ck["metrics"] = {
        "unit": "frame",
        "counts": "every frame, frame 0 from the initial state",
        "valid_nll": best[0],
        "valid_nll_after_first": best[1],
        "test_nll": test[0],
        "test_nll_after_first": test[1],
        "before_init": ckpt.get("metrics"),
    }
    ck["train"] = {
        **ck.get("train", {}),
        "init": {
            "steps": best_step,
            "lr": lr,
            "frames": frames,
            "seconds": round(time.perf_counter() - t0, 1),
            "split": "train",
            "selected_on": "valid",
        },
    }
    return ck


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--benchmark", default="jsb")
    ap.add_argument("--frames", type=int, default=16, help="first frames scored; 0 = all")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=10)
    args = ap.parse_args(argv)
    from midi_companion import benchmarks

    torch.set_num_threads(1)
    ck = finetune(
        load_checkpoint(args.checkpoint),
        benchmarks.load(args.benchmark),
        frames=args.frames,
        lr=args.lr,
        steps=args.steps,
        eval_every=args.eval_every,
        log=lambda s: print(s, flush=True),
    )
    torch.save(ck, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
