"""The one training loop: ``companion train CONFIG.toml [--resume] [--device auto|cpu|cuda]``.

A config names a model family and its args ([model]), a representation ([representation]), a
corpus ([data]) and how to train ([train]); every key is checked before anything runs
(models/train_config.py: ConfigError naming the file and the key). The loop: AdamW, linear
warm-up then cosine decay (over max_steps or max_minutes, whichever ends first), gradient
clipping, evaluation on the whole validation split every ``eval_every`` steps, early
stopping after ``patience`` evaluations without improvement, and the test split evaluated
once at the end with the best weights. It talks to the family only through its module's
``build`` and ``batches`` and the model's ``loss`` (docs/ARCHITECTURE.md, "Family modules"),
and two optional hooks: it calls ``model.set_step(step)`` before each training step (a
schedule inside the loss, e.g. lstm-vae's KL warm-up), and after each evaluation reads
``model.extra_metrics()`` (name -> (sum, count) of the loss's terms since the last call,
e.g. a VAE's reconstruction NLL and KL), logs the means and records them in the metrics
(``valid_terms``, ``test_terms``).

Writes to ``[train] out`` (default runs/<config name>): ``best.pt``, the self-describing
checkpoint that ``companion export`` takes, and ``last.pt`` (the same plus the optimizer
and the data position) that ``--resume`` continues from.

Ensembles: ``[train] seeds = [0, 1, 2]`` trains one member per seed (into ``out/seed<N>/``;
a member may also change keys of [model]: ``{seed = 0, model = {dec_hidden = 512}}`` trains
into ``out/seed0-dec_hidden512/``;
``--resume`` skips finished members and resumes the one that was cut off), then combines
them with the family's ``ensemble`` (families that have one: roll-nade-lstm averages the
members' next-token distributions, still one exact distribution per frame), evaluates the
ensemble on valid and test, and writes it as ``out/best.pt``.

Data parallel: the same command under torchrun (gloo on CPU, NCCL on GPU), e.g.
``torchrun --standalone --nproc_per_node=2 -m models.train CONFIG.toml``. Every rank draws
the same batch stream and takes its own share of it (``data.shard``); validation and test
pieces are divided among the ranks and the sums reduced.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sys
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from midi_companion.errors import ConfigError, RepresentationError
from midi_companion.models import FAMILY_MODULES, data
from midi_companion.models.checkpoint import CHECKPOINT_FORMAT
from midi_companion.models.train_config import load_config, member, member_dir


def make_representation(cfg: dict, path: Path):
    from midi_companion.representations import REGISTRY

    params = {k: v for k, v in cfg["representation"].items() if k != "name"}
    name = cfg["representation"]["name"]
    try:
        return REGISTRY[name](**params)
    except (RepresentationError, TypeError) as err:
        raise ConfigError(f"{path}: [representation] {err}") from err


def make_model(cfg: dict, rep, path: Path) -> tuple[nn.Module, Any]:
    family = cfg["model"]["family"]
    module = import_module(FAMILY_MODULES[family])
    args = {k: v for k, v in cfg["model"].items() if k != "family"}
    try:
        model = module.build(family, rep, dropout=cfg["train"]["dropout"], **args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: [model] {err}") from err
    return model, module


# ---- the loop -------------------------------------------------------------------------------
class _LossOf(nn.Module):
    """DDP syncs gradients of what runs through forward(), so the loss runs there."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def lr_at(step: int, progress: float, tr: dict) -> float:
    """Linear warm-up over `warmup` steps, times a cosine from lr to min_lr over progress."""
    lr = tr["lr"]
    if tr["decay"] == "cosine":
        p = min(max(progress, 0.0), 1.0)
        lr = tr["min_lr"] + (tr["lr"] - tr["min_lr"]) * 0.5 * (1 + math.cos(math.pi * p))
    if step < tr["warmup"]:
        lr *= (step + 1) / tr["warmup"]
    return lr


def unit_of(model: nn.Module, rep) -> str:
    return getattr(model, "unit", "frame" if rep.kind == "frames" else "token")


@torch.no_grad()
def evaluate(
    model, module, pieces, rep, tr, device, rank=0, world=1, terms: dict | None = None
) -> tuple[float, int]:
    """(mean NLL in nats per unit, units) over whole pieces, shared among the ranks; the
    means of the model's `extra_metrics` (if it has them) go into `terms`."""
    was = model.training
    model.eval()
    extra = getattr(model, "extra_metrics", None)
    if extra is not None:
        extra()  # clears what an earlier evaluation left
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in module.batches(pieces[rank::world], rep, tr, None, False):
        nll, n = model.loss(_to(batch, device))
        total += torch.stack([nll.double(), torch.as_tensor(n, device=device).double()])
    if world > 1:
        dist.all_reduce(total)
    if extra is not None and terms is not None:
        got = extra()
        sums = torch.tensor(
            [x for pair in got.values() for x in pair], dtype=torch.float64, device=device
        )
        if world > 1:
            dist.all_reduce(sums)
        terms.update(
            {k: s / c if c else float("nan") for k, (s, c) in zip(got, sums.view(-1, 2).tolist())}
        )
    model.train(was)
    nll, n = total.tolist()
    return (nll / n if n else float("nan")), int(n)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train(
    config_path: str | os.PathLike,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
) -> dict:
    """Run a config; return the best checkpoint's dict (rank 0) or {} (other ranks).
    `max_minutes` overrides `[train] max_minutes` (recorded so in the checkpoint's config)."""
    config_path = Path(config_path)
    cfg = load_config(config_path)
    tr = cfg["train"]
    if max_minutes is not None:
        if not max_minutes > 0:
            raise ConfigError(f"--max-minutes: expected a number of minutes > 0, got {max_minutes}")
        tr["max_minutes"] = float(max_minutes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device or tr["device"], local_rank)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        run = _ensemble if tr["seeds"] else _run
        result = run(cfg, config_path, resume, dev, rank, world, progress and rank == 0)
        if world > 1:
            # every rank done (rank 0 writes best.pt alone) before any tears down: a gloo
            # rank whose peer was still busy died at teardown with SIGABRT ("terminate
            # called without an active exception"), seen once in a clean-clone run
            dist.barrier()
        return result
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(cfg, config_path, resume, dev, rank, world, progress) -> dict:
    from tqdm import tqdm

    tr, dcfg = cfg["train"], cfg["data"]
    out = Path(tr["out"])
    last_path, best_path = out / "last.pt", out / "best.pt"
    try:  # before any training: a run must not fail at its first checkpoint
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{config_path}: [train] out = {str(out)!r}: cannot create that "
            f"folder ({err.strerror or err})"
        ) from err
    state = None
    if resume:
        if not last_path.is_file():
            raise ConfigError(f"{config_path}: --resume but there is no {last_path}")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        for table in ("model", "representation", "data"):
            if state["config"][table] != cfg[table]:
                raise ConfigError(
                    f"{config_path}: [{table}] differs from {last_path}'s; "
                    "resume needs the same model, representation and data"
                )

    corpus = data.load_data(dcfg, progress=progress)
    shifts = tuple(dcfg["augment"])
    if state is None:
        rep = make_representation(cfg, config_path)
        if hasattr(rep, "fit"):  # a data-derived vocabulary, from every training key
            lo, hi = shifts
            rep.fit([s.transposed(k) for s in corpus.scores["train"] for k in range(lo, hi + 1)])
    else:
        from midi_companion.representations import from_dict

        rep = from_dict(state["representation"])
    torch.manual_seed(tr["seed"])
    model, module = make_model(cfg, rep, config_path)
    model.to(dev)
    if state is not None:
        model.load_state_dict(state["state_dict"])

    def encode(split: str, *aug) -> list:  # a classifier labels each piece by its id
        if hasattr(model, "encode_pieces"):
            return model.encode_pieces(corpus.scores[split], corpus.ids[split], rep, *aug)
        return data.encode(corpus.scores[split], rep, *aug)

    valid, test = encode("valid"), encode("test")
    fixed_train = None if shifts[1] > shifts[0] else encode("train", shifts)

    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    # adversarial families (GANs) own their optimizer and step (docs/ARCHITECTURE.md)
    adversarial = hasattr(model, "train_step")
    if adversarial:
        if world > 1:
            raise ConfigError(f"{config_path}: {cfg['model']['family']} trains on one process")
        opt = model.configure_optimizers(tr)
    else:
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": tr["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=tr["lr"],
            fused=dev.type == "cuda",
        )
    run = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "seconds": 0.0,
        "train_seconds": 0.0,
        "units": 0,
        "best_valid": float("inf"),
        "best_step": 0,
        "bad_evals": 0,
    }
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        run.update(state["resume"])
        torch.set_rng_state(state["torch_rng"])
    best_state = None if state is None else state.get("best_state_dict")
    net = _LossOf(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    unit = unit_of(model, rep)
    n_params = sum(p.numel() for p in model.parameters())
    corpus_record = {**corpus.record(), "augment": list(shifts)}
    if progress:
        print(
            f"{cfg['model']['family']} ({n_params:,} parameters) on {rep.name}, vocab "
            f"{rep.vocab_size}; {corpus.name}: {corpus_record['split']} pieces; device "
            f"{dev}{f' x {world} ranks' if world > 1 else ''}",
            flush=True,
        )

    def checkpoint(metrics: dict, with_optimizer: bool) -> dict:
        ck = {
            "format": CHECKPOINT_FORMAT,
            "family": cfg["model"]["family"],
            "model_args": dict(model.model_args),
            "state_dict": _cpu(model.state_dict()),
            "representation": rep.to_dict(),
            "config": cfg,
            "corpus": corpus_record,
            "metrics": metrics,
            "train": {
                "step": run["step"],
                "seconds": round(run["seconds"], 1),
                "tokens_per_s": round(run["units"] / max(run["train_seconds"], 1e-9), 1),
                "world_size": world,
                "device": dev.type,
            },
        }
        if with_optimizer:
            ck.update(
                optimizer=opt.state_dict(),
                resume=dict(run),
                torch_rng=torch.get_rng_state(),
                best_state_dict=best_state,
            )
        return ck

    def save(ck: dict, path: Path) -> None:  # into `out`, made before training
        tmp = path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, path)

    max_s = tr["max_minutes"] * 60
    t_start = time.perf_counter() - run["seconds"]
    data_hash = hashlib.sha256()
    seen_units = 0
    bar = tqdm(
        total=tr["max_steps"] or None,
        initial=run["step"],
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        mininterval=1 if sys.stderr.isatty() else 30,
    )
    ema, stop = None, False
    model.train()
    while not stop:
        rng = np.random.default_rng([tr["seed"], run["epoch"]])
        pieces = fixed_train if fixed_train is not None else encode("train", shifts, rng)
        stream = data.shard(module.batches(pieces, rep, tr, rng, True), rank, world)
        for i, batch in enumerate(stream):
            if i < run["batch"]:
                continue  # resuming mid-epoch: the stream is replayed up to where it was
            t0 = time.perf_counter()
            elapsed = t0 - t_start
            progress_frac = max(
                run["step"] / tr["max_steps"] if tr["max_steps"] else 0.0,
                elapsed / max_s if max_s else 0.0,
            )
            for g in opt.param_groups:
                g["lr"] = lr_at(run["step"], progress_frac, tr)
            batch = _to(batch, dev)
            if hasattr(model, "set_step"):
                model.set_step(run["step"])
            if adversarial:
                logs = model.train_step(batch, opt)
                loss, n = torch.tensor(logs["loss"]), logs["count"]
            else:
                nll, n = net(batch)
                loss = nll / n
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tr["grad_clip"]:
                    nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
                opt.step()
            if world > 1:  # what this rank trained on, for the summary line
                data_hash.update(next(iter(batch.values())).cpu().numpy().tobytes())
            units = int(n)
            seen_units += units
            run["step"] += 1
            run["batch"] = i + 1
            run["units"] += units * world
            now = time.perf_counter()
            run["train_seconds"] += now - t0
            run["seconds"] = now - t_start
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(
                loss=f"{ema:.3f}", tok_s=f"{run['units'] / run['train_seconds']:.0f}", refresh=False
            )
            done = bool(tr["max_steps"] and run["step"] >= tr["max_steps"])
            if max_s:
                done = done or _agree(run["seconds"] >= max_s, dev, world)
            if run["step"] % tr["eval_every"] == 0 or done:
                terms: dict = {}
                v, _ = evaluate(model, module, valid, rep, tr, dev, rank, world, terms)
                improved = adversarial or v < run["best_valid"]  # a GAN keeps its last
                if improved:
                    run.update(best_valid=v, best_step=run["step"], bad_evals=0)
                    if terms:
                        run["best_terms"] = terms
                    best_state = _cpu(model.state_dict())
                else:
                    run["bad_evals"] += 1
                if progress:
                    bar.write(
                        f"step {run['step']}: train {ema:.4f} valid {v:.4f} nats/{unit}"
                        f"{' (best)' if improved else ''}; lr {opt.param_groups[0]['lr']:.2e}"
                        f"; {run['units'] / run['train_seconds']:.0f} {unit}s/s"
                        + "".join(f"; {k} {x:.4f}" for k, x in terms.items())
                    )
                metrics = {
                    "valid_nll": run["best_valid"],
                    "test_nll": None,
                    "unit": unit,
                    "train_nll": ema,
                    **({"valid_terms": run["best_terms"]} if "best_terms" in run else {}),
                }
                if rank == 0:
                    if improved:
                        save(checkpoint(metrics, False), best_path)
                    save(checkpoint(metrics, True), last_path)
                if tr["patience"] and run["bad_evals"] >= tr["patience"]:
                    if progress:
                        bar.write(f"early stop: no improvement in {tr['patience']} evaluations")
                    done = True
            if done:
                stop = True
                break
        else:
            run["epoch"] += 1
            run["batch"] = 0
    bar.close()

    # the test split, once, with the best weights
    if best_state is not None:
        model.load_state_dict(best_state)
    test_terms: dict = {}
    t, n_test = (
        evaluate(model, module, test, rep, tr, dev, rank, world, test_terms) if test else (None, 0)
    )
    metrics = {
        "valid_nll": run["best_valid"],
        "test_nll": t,
        "unit": unit,
        "train_nll": ema,
        "best_step": run["best_step"],
        "test_units": n_test,
        **({"valid_terms": run["best_terms"]} if "best_terms" in run else {}),
        **({"test_terms": test_terms} if test_terms else {}),
    }
    if world > 1:
        # one write per line, so the ranks' lines do not interleave on a shared stdout
        sys.stdout.write(
            f"rank {rank}/{world}: {run['step']} steps, {seen_units} {unit}s, "
            f"data {data_hash.hexdigest()[:16]}, weights "
            f"{_digest(model.parameters())}\n"
        )
        sys.stdout.flush()
    if rank != 0:
        return {}
    ck = checkpoint(metrics, False)
    save(ck, best_path)
    if progress:
        test_txt = (
            "no test split"
            if t is None
            else f"test {t:.4f}" + "".join(f" {k} {x:.4f}" for k, x in test_terms.items())
        )
        print(
            f"best valid {run['best_valid']:.4f} nats/{unit} (step {run['best_step']}), "
            f"{test_txt}; {run['step']} steps in {run['seconds'] / 60:.1f} min, "
            f"{ck['train']['tokens_per_s']:.0f} {unit}s/s; wrote {best_path}",
            flush=True,
        )
    return ck


def _ensemble(cfg, config_path, resume, dev, rank, world, progress) -> dict:
    """Train a member per seed, then combine, evaluate and save the ensemble as best.pt."""
    from midi_companion.models.checkpoint import load_checkpoint

    tr = cfg["train"]
    out = Path(tr["out"])
    paths = []
    for entry in tr["seeds"]:
        seed, changes = member(entry)
        where = out / member_dir(entry)
        one = copy.deepcopy(cfg)
        one["model"].update(dict(changes))
        one["train"].update(seed=seed, seeds=None, out=str(where))
        best, last = where / "best.pt", where / "last.pt"
        finished = best.is_file() and (
            not last.is_file() or best.stat().st_mtime >= last.stat().st_mtime
        )
        if not (resume and finished):
            if progress:
                print(f"ensemble member {member_dir(entry)} -> {best}", flush=True)
            _run(one, config_path, resume and last.is_file(), dev, rank, world, progress)
        paths.append(best)
    if rank != 0:
        return {}
    t0 = time.perf_counter()
    members = [load_checkpoint(p) for p in paths]
    module = import_module(FAMILY_MODULES[cfg["model"]["family"]])
    from midi_companion.representations import from_dict

    rep = from_dict(members[0]["representation"])
    model = module.ensemble(rep, members).to(dev)
    corpus = data.load_data(cfg["data"], progress=False)
    metrics = {
        "unit": members[0]["metrics"]["unit"],
        "best_step": None,
        "members": [{"seed": s, **m["metrics"]} for s, m in zip(tr["seeds"], members)],
    }
    for split in ("valid", "test"):
        pieces = data.encode(corpus.scores[split], rep)
        nll, n = evaluate(model, module, pieces, rep, tr, dev) if pieces else (None, 0)
        metrics[f"{split}_nll"] = nll
        metrics[f"{split}_units"] = n
    seconds = sum(m["train"]["seconds"] for m in members) + time.perf_counter() - t0
    ck = {
        "format": CHECKPOINT_FORMAT,
        "family": cfg["model"]["family"],
        "model_args": dict(model.model_args),
        "state_dict": _cpu(model.state_dict()),
        "representation": members[0]["representation"],
        "config": cfg,
        "corpus": members[0]["corpus"],
        "metrics": metrics,
        "train": {
            "step": sum(m["train"]["step"] for m in members),
            "seconds": round(seconds, 1),
            "members": len(members),
            "world_size": world,
            "device": dev.type,
        },
    }
    tmp = out / "best.tmp"  # `out` holds the members' folders: it exists
    torch.save(ck, tmp)
    os.replace(tmp, out / "best.pt")
    if progress:
        print(
            f"ensemble of {len(members)}: valid {metrics['valid_nll']:.4f} test "
            f"{metrics['test_nll']:.4f} nats/{metrics['unit']} (members' test "
            f"{[round(m['metrics']['test_nll'], 4) for m in members]}); wrote "
            f"{out / 'best.pt'}",
            flush=True,
        )
    return ck


def _agree(flag: bool, dev, world: int) -> bool:
    """Every rank stops when any rank says so (time budgets differ by a few ms)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _cpu(sd: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


def main(args) -> int:
    """`companion train` (args: config, resume, device, max_minutes)."""
    train(args.config, resume=args.resume, device=args.device, max_minutes=args.max_minutes)
    return 0


if __name__ == "__main__":  # torchrun --standalone --nproc_per_node=2 -m models.train CFG
    from midi_companion.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
