"""Training configs (`companion train CONFIG.toml`): read and checked with the same
TableChecker as presets (companion/tomlcheck.py), defaults filled in. Every failure is a
ConfigError naming the file, the table and the key.

Tables: [model] (`family` plus the family's build arguments, checked by its build),
[representation] (`name` plus its params, checked by the representation), [data] and
[train] (SCHEMA; a family module may add [train] keys its `batches` reads: TRAIN_KEYS =
{"key": ((type, ...), default)}).
"""

from __future__ import annotations

import copy
import os
import sys
from importlib import import_module
from pathlib import Path

from midi_companion.errors import ConfigError
from midi_companion.models import FAMILY_MODULES, data
from midi_companion.tomlcheck import TableChecker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REQUIRED = object()
# table -> key -> (kind, default, bounds for TableChecker.value)
SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {
        "corpus": (str, REQUIRED, {}),  # models.corpora spec, or "benchmark:<name>"
        "augment": (list, [0, 0], {}),  # transposition range [lo, hi] semitones, inclusive
        "valid": (float, 0.1, {"lo": 0, "hi": 1, "hi_open": True}),  # fractions of pieces
        "test": (float, 0.1, {"lo": 0, "hi": 1, "hi_open": True}),
        "seed": (int, 0, {}),  # split seed
        "limit": (int, None, {"lo": 3}),  # at most this many pieces
    },
    "train": {
        "batch_size": (int, 32, {"lo": 1}),
        "seq_len": (int, 128, {"lo": 1}),  # steps per training window (predicted units)
        "lr": (float, 2e-3, {"lo": 0, "lo_open": True}),
        "min_lr": (float, None, {"lo": 0}),  # end of the cosine; default lr / 10
        "weight_decay": (float, 0.01, {"lo": 0}),
        "warmup": (int, 100, {"lo": 0}),  # steps of linear warm-up
        "decay": (str, "cosine", {"choices": ("cosine", "none")}),
        "grad_clip": (float, 1.0, {"lo": 0}),  # max gradient norm; 0 = off
        "dropout": (float, 0.1, {"lo": 0, "hi": 1, "hi_open": True}),  # to the family's build
        "max_steps": (int, 0, {"lo": 0}),  # 0 = no limit (then max_minutes must be set)
        "max_minutes": (float, 0.0, {"lo": 0}),  # 0 = no limit
        "eval_every": (int, 200, {"lo": 1}),
        "patience": (int, 0, {"lo": 0}),  # evaluations without improvement; 0 = never stop
        "seed": (int, 0, {}),
        "seeds": (list, None, {}),  # an ensemble: one member per seed (models/train.py)
        "out": (str, None, {}),  # default runs/<config file stem>
        "device": (str, "auto", {"choices": ("auto", "cpu", "cuda")}),
    },
}
TABLES = ("model", "representation", "data", "train")


def load_config(path: str | os.PathLike) -> dict:
    """Read and check a training config; defaults filled in."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a readable TOML file ({err})") from err
    return check_config(raw, path)


def check_config(raw: dict, path: Path) -> dict:
    c = TableChecker(path, ConfigError, "the config")
    c.table(raw, "", set(TABLES))
    cfg = {}
    for t in ("model", "representation"):  # free arguments, checked by their builders
        if t not in raw:
            c.fail(f"[{t}]", "table is missing")
        cfg[t] = dict(c.table(raw[t], f"[{t}]", set(raw[t]) if isinstance(raw[t], dict) else set()))
    family = c.value(cfg["model"], "family", "[model]", str, None, required=True)
    c.value(cfg["model"], "family", "[model]", str, None, choices=sorted(FAMILY_MODULES))
    if "dropout" in cfg["model"]:
        c.fail("[model] dropout", "belongs in [train]")
    from midi_companion.representations import REGISTRY

    rep = c.value(cfg["representation"], "name", "[representation]", str, None, required=True)
    c.value(cfg["representation"], "name", "[representation]", str, rep, choices=sorted(REGISTRY))
    module = import_module(FAMILY_MODULES[family])
    for table, schema in SCHEMA.items():
        if table == "train":  # a family's own keys, in its TRAIN_KEYS form
            schema = {
                **schema,
                **{k: _kind(*v) for k, v in getattr(module, "TRAIN_KEYS", {}).items()},
            }
        where = f"[{table}]"
        t = c.table(raw.get(table, {}), where, set(schema))
        cfg[table] = {}
        for key, (kind, default, bounds) in schema.items():
            if key in t or default is REQUIRED:
                cfg[table][key] = c.value(t, key, where, kind, None, required=True, **bounds)
            else:
                cfg[table][key] = copy.copy(default)
    _check_relations(c, cfg, module)
    tr = cfg["train"]
    tr["out"] = tr["out"] or str(Path("runs") / path.stem)
    return cfg


def _kind(types: tuple, default) -> tuple:
    """A TRAIN_KEYS entry ((type, ...), default) as a SCHEMA entry."""
    kind = float if float in types else types[0]
    return kind, REQUIRED if default is REQUIRED else default, {}


def _check_relations(c: TableChecker, cfg: dict, module) -> None:
    """What one key alone cannot say."""
    d, tr = cfg["data"], cfg["train"]
    data.check_shifts(d["augment"], f"{c.path}: [data] augment")
    if d["valid"] + d["test"] >= 1:
        c.fail("[data] valid + test", f"must be < 1 (received {d['valid'] + d['test']!r})")
    if tr["min_lr"] is None:
        tr["min_lr"] = tr["lr"] / 10
    elif tr["min_lr"] > tr["lr"]:
        c.fail("[train] min_lr", f"must be in [0, lr] (received {tr['min_lr']!r})")
    if not tr["max_steps"] and not tr["max_minutes"]:
        c.fail("[train] max_steps", "or max_minutes must be set (> 0)")
    if tr["seeds"] is not None:
        _check_seeds(c, tr["seeds"], cfg["model"], module)


def _check_seeds(c: TableChecker, seeds: list, model: dict, module) -> None:
    members = [member(x) for x in seeds]
    if len(seeds) < 2 or None in members or len({repr(m) for m in members}) != len(members):
        c.fail(
            "[train] seeds",
            "must be a list of at least 2 distinct members, each a seed (an integer) or "
            f"{{seed = N, model = {{key = value, ...}}}} (received {seeds!r})",
        )
    for m in members:
        bad = [k for k, _ in m[1] if k == "family" or k not in model]
        if bad:
            c.fail(
                "[train] seeds",
                "a member may only change keys that [model] sets, family excepted "
                f"(received {bad[0]!r})",
            )
    if not hasattr(module, "ensemble"):
        c.fail("[train] seeds", f"needs a family that ensembles; {model['family']} does not")


def member(entry) -> tuple | None:
    """An ensemble member of `[train] seeds`: (seed, ((model key, value), ...)), or None
    when `entry` is neither an integer seed nor {seed = N, model = {...}}."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        return (entry, ())
    if (
        isinstance(entry, dict)
        and set(entry) <= {"seed", "model"}
        and isinstance(entry.get("seed"), int)
        and not isinstance(entry["seed"], bool)
        and isinstance(entry.get("model", {}), dict)
    ):
        return (entry["seed"], tuple(sorted(entry.get("model", {}).items())))
    return None


def member_dir(entry) -> str:
    """Where a member trains under the ensemble's out: seed<N>, plus its model changes."""
    seed, changes = member(entry)
    return "-".join([f"seed{seed}"] + [f"{k}{v}" for k, v in changes])
