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
ensemble on valid and test, and writes it as ``out/best.pt`` (models/train_ensemble.py).

Data parallel: the same command under torchrun (gloo on CPU, NCCL on GPU), e.g.
``torchrun --standalone --nproc_per_node=2 -m midi_companion.models.train CONFIG.toml``.
Every rank draws the same batch stream and takes its own share of it (``data.shard``);
validation and test pieces are divided among the ranks and the sums reduced.
"""

from __future__ import annotations

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
from midi_companion.models.train_config import load_config
from midi_companion.models.train_ensemble import train_ensemble


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
        run = train_ensemble if tr["seeds"] else _run
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
    """One model: set up, train until a limit or patience ends it, test the best weights."""
    r = _Run(cfg, Path(config_path), resume, dev, rank, world, progress)
    r.announce()
    while not r.done:
        for i, batch in r.epoch():
            r.step(i, batch)
            if r.step_ends_run():
                break
    return r.finish()


class _Run:
    """The state of one training run, in the order the loop uses it (nanoGPT's shape: set
    up, then a flat loop of step / evaluate / checkpoint)."""

    def __init__(self, cfg, config_path: Path, resume: bool, dev, rank: int, world: int, progress):
        self.cfg, self.config_path, self.dev = cfg, config_path, dev
        self.rank, self.world, self.progress = rank, world, progress
        self.tr = tr = cfg["train"]
        out = Path(tr["out"])
        self.last_path, self.best_path = out / "last.pt", out / "best.pt"
        try:  # before any training: a run must not fail at its first checkpoint
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"{config_path}: [train] out = {str(out)!r}: cannot create that "
                f"folder ({err.strerror or err})"
            ) from err
        state = self._resumed() if resume else None
        self.corpus = data.load_data(cfg["data"], progress=progress)
        self.shifts = tuple(cfg["data"]["augment"])
        self.rep = self._representation(state)
        torch.manual_seed(tr["seed"])
        self.model, self.module = make_model(cfg, self.rep, config_path)
        self.model.to(dev)
        if state is not None:
            self.model.load_state_dict(state["state_dict"])
        self.valid, self.test = self.encode("valid"), self.encode("test")
        self.fixed_train = None if self.shifts[1] > self.shifts[0] else self.encode("train")
        self.adversarial = hasattr(self.model, "train_step")  # a GAN owns its optimizers
        self.opt = self._optimizer()
        self.run = dict(step=0, epoch=0, batch=0, seconds=0.0, train_seconds=0.0, units=0)
        self.run.update(best_valid=float("inf"), best_step=0, bad_evals=0)
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.run.update(state["resume"])
            torch.set_rng_state(state["torch_rng"])
        self.best_state = None if state is None else state.get("best_state_dict")
        self.net = _LossOf(self.model)
        if world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        self.unit = unit_of(self.model, self.rep)
        self.corpus_record = {**self.corpus.record(), "augment": list(self.shifts)}
        self.max_s = tr["max_minutes"] * 60
        self.t_start = time.perf_counter() - self.run["seconds"]
        self.data_hash, self.seen_units = hashlib.sha256(), 0
        self.ema, self.done = None, False

    # ---- setting up ---------------------------------------------------------------------
    def _resumed(self) -> dict:
        """last.pt, checked to be this config's run."""
        if not self.last_path.is_file():
            raise ConfigError(f"{self.config_path}: --resume but there is no {self.last_path}")
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        for table in ("model", "representation", "data"):
            if state["config"][table] != self.cfg[table]:
                raise ConfigError(
                    f"{self.config_path}: [{table}] differs from {self.last_path}'s; "
                    "resume needs the same model, representation and data"
                )
        return state

    def _representation(self, state):
        if state is not None:
            from midi_companion.representations import from_dict

            return from_dict(state["representation"])
        rep = make_representation(self.cfg, self.config_path)
        if hasattr(rep, "fit"):  # a data-derived vocabulary, from every training key
            lo, hi = self.shifts
            train = self.corpus.scores["train"]
            rep.fit([s.transposed(k) for s in train for k in range(lo, hi + 1)])
        return rep

    def encode(self, split: str, rng=None) -> list:
        """A split's pieces as the family reads them (training: transposed by `shifts`, at
        random with `rng`); a classifier labels each piece by its id."""
        aug = (self.shifts, rng) if split == "train" else ()
        scores = self.corpus.scores[split]
        if hasattr(self.model, "encode_pieces"):
            return self.model.encode_pieces(scores, self.corpus.ids[split], self.rep, *aug)
        return data.encode(scores, self.rep, *aug)

    def _optimizer(self):
        """AdamW, decay on the matrices only; an adversarial family's own optimizers."""
        if self.adversarial:
            if self.world > 1:
                family = self.cfg["model"]["family"]
                raise ConfigError(f"{self.config_path}: {family} trains on one process")
            return self.model.configure_optimizers(self.tr)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.tr["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.tr["lr"], fused=self.dev.type == "cuda")

    def announce(self) -> None:
        from tqdm import tqdm

        if self.progress:
            n_params = sum(p.numel() for p in self.model.parameters())
            ranks = f" x {self.world} ranks" if self.world > 1 else ""
            print(
                f"{self.cfg['model']['family']} ({n_params:,} parameters) on {self.rep.name}, "
                f"vocab {self.rep.vocab_size}; {self.corpus.name}: "
                f"{self.corpus_record['split']} pieces; device {self.dev}{ranks}",
                flush=True,
            )
        self.bar = tqdm(
            total=self.tr["max_steps"] or None,
            initial=self.run["step"],
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            mininterval=1 if sys.stderr.isatty() else 30,
        )
        self.model.train()

    # ---- the loop -----------------------------------------------------------------------
    def epoch(self):
        """(index, batch) of this rank's share of one epoch, from where a resumed run was."""
        rng = np.random.default_rng([self.tr["seed"], self.run["epoch"]])
        pieces = self.fixed_train if self.fixed_train is not None else self.encode("train", rng)
        stream = data.shard(
            self.module.batches(pieces, self.rep, self.tr, rng, True), self.rank, self.world
        )
        for i, batch in enumerate(stream):
            if i >= self.run["batch"]:  # resuming mid-epoch: replayed up to where it was
                yield i, batch
        self.run.update(epoch=self.run["epoch"] + 1, batch=0)

    def step(self, i: int, batch: dict) -> None:
        tr, run, t0 = self.tr, self.run, time.perf_counter()
        frac = max(
            run["step"] / tr["max_steps"] if tr["max_steps"] else 0.0,
            (t0 - self.t_start) / self.max_s if self.max_s else 0.0,
        )
        for g in self.opt.param_groups:
            g["lr"] = lr_at(run["step"], frac, tr)
        batch = _to(batch, self.dev)
        if hasattr(self.model, "set_step"):
            self.model.set_step(run["step"])
        if self.adversarial:
            logs = self.model.train_step(batch, self.opt)
            loss, n = torch.tensor(logs["loss"]), logs["count"]
        else:
            nll, n = self.net(batch)
            loss = nll / n
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if tr["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), tr["grad_clip"])
            self.opt.step()
        if self.world > 1:  # what this rank trained on, for the summary line
            self.data_hash.update(next(iter(batch.values())).cpu().numpy().tobytes())
        self.seen_units += int(n)
        now = time.perf_counter()
        run.update(step=run["step"] + 1, batch=i + 1, units=run["units"] + int(n) * self.world)
        run.update(train_seconds=run["train_seconds"] + now - t0, seconds=now - self.t_start)
        self.ema = loss.item() if self.ema is None else 0.98 * self.ema + 0.02 * loss.item()
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{self.ema:.3f}",
            tok_s=f"{run['units'] / run['train_seconds']:.0f}",
            refresh=False,
        )

    def step_ends_run(self) -> bool:
        """After a step: evaluate and checkpoint when due; whether the run is over (a limit
        reached, or `patience` evaluations without improvement)."""
        tr, run = self.tr, self.run
        done = bool(tr["max_steps"] and run["step"] >= tr["max_steps"])
        if self.max_s:
            done = done or _agree(run["seconds"] >= self.max_s, self.dev, self.world)
        if run["step"] % tr["eval_every"] == 0 or done:
            self.evaluate_and_save()
            if tr["patience"] and run["bad_evals"] >= tr["patience"]:
                if self.progress:
                    self.bar.write(f"early stop: no improvement in {tr['patience']} evaluations")
                done = True
        self.done = done
        return done

    def evaluate_and_save(self) -> None:
        run, terms = self.run, {}
        v, _ = evaluate(
            self.model,
            self.module,
            self.valid,
            self.rep,
            self.tr,
            self.dev,
            self.rank,
            self.world,
            terms,
        )
        improved = self.adversarial or v < run["best_valid"]  # a GAN keeps its last
        if improved:
            run.update(best_valid=v, best_step=run["step"], bad_evals=0)
            if terms:
                run["best_terms"] = terms
            self.best_state = _cpu(self.model.state_dict())
        else:
            run["bad_evals"] += 1
        if self.progress:
            self.bar.write(
                f"step {run['step']}: train {self.ema:.4f} valid {v:.4f} nats/{self.unit}"
                f"{' (best)' if improved else ''}; lr {self.opt.param_groups[0]['lr']:.2e}"
                f"; {run['units'] / run['train_seconds']:.0f} {self.unit}s/s"
                + "".join(f"; {k} {x:.4f}" for k, x in terms.items())
            )
        metrics = self._metrics()
        if self.rank == 0:
            if improved:
                self._save(self._checkpoint(metrics, False), self.best_path)
            self._save(self._checkpoint(metrics, True), self.last_path)

    # ---- the end ------------------------------------------------------------------------
    def finish(self) -> dict:
        """The test split, once, with the best weights; best.pt with every metric."""
        self.bar.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        terms: dict = {}
        t, n_test = (
            evaluate(
                self.model,
                self.module,
                self.test,
                self.rep,
                self.tr,
                self.dev,
                self.rank,
                self.world,
                terms,
            )
            if self.test
            else (None, 0)
        )
        if self.world > 1:
            # one write per line, so the ranks' lines do not interleave on a shared stdout
            sys.stdout.write(
                f"rank {self.rank}/{self.world}: {self.run['step']} steps, {self.seen_units} "
                f"{self.unit}s, data {self.data_hash.hexdigest()[:16]}, weights "
                f"{_digest(self.model.parameters())}\n"
            )
            sys.stdout.flush()
        if self.rank != 0:
            return {}
        ck = self._checkpoint(self._metrics(t, n_test, terms, final=True), False)
        self._save(ck, self.best_path)
        if self.progress:
            run = self.run
            test_txt = (
                "no test split"
                if t is None
                else f"test {t:.4f}" + "".join(f" {k} {x:.4f}" for k, x in terms.items())
            )
            print(
                f"best valid {run['best_valid']:.4f} nats/{self.unit} (step {run['best_step']}), "
                f"{test_txt}; {run['step']} steps in {run['seconds'] / 60:.1f} min, "
                f"{ck['train']['tokens_per_s']:.0f} {self.unit}s/s; wrote {self.best_path}",
                flush=True,
            )
        return ck

    def _metrics(self, test_nll=None, test_units: int = 0, test_terms=None, final=False) -> dict:
        """The checkpoint's metrics: at an evaluation (valid only), or final (with test)."""
        run = self.run
        metrics = {
            "valid_nll": run["best_valid"],
            "test_nll": test_nll,
            "unit": self.unit,
            "train_nll": self.ema,
            **({"valid_terms": run["best_terms"]} if "best_terms" in run else {}),
        }
        if final:
            metrics.update(best_step=run["best_step"], test_units=test_units)
        if test_terms:
            metrics["test_terms"] = test_terms
        return metrics

    def _checkpoint(self, metrics: dict, with_optimizer: bool) -> dict:
        run = self.run
        ck = {
            "format": CHECKPOINT_FORMAT,
            "family": self.cfg["model"]["family"],
            "model_args": dict(self.model.model_args),
            "state_dict": _cpu(self.model.state_dict()),
            "representation": self.rep.to_dict(),
            "config": self.cfg,
            "corpus": self.corpus_record,
            "metrics": metrics,
            "train": {
                "step": run["step"],
                "seconds": round(run["seconds"], 1),
                "tokens_per_s": round(run["units"] / max(run["train_seconds"], 1e-9), 1),
                "world_size": self.world,
                "device": self.dev.type,
            },
        }
        if with_optimizer:
            ck.update(
                optimizer=self.opt.state_dict(),
                resume=dict(run),
                torch_rng=torch.get_rng_state(),
                best_state_dict=self.best_state,
            )
        return ck

    @staticmethod
    def _save(ck: dict, path: Path) -> None:  # into `out`, made before training
        tmp = path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, path)


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


if __name__ == "__main__":  # torchrun ... -m midi_companion.models.train CFG
    from midi_companion.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
