"""Checking TOML tables, for presets (companion/presets.py) and training configs
(models/train_config.py) alike: one mechanism, one way of saying what is wrong. Every
failure is one sentence naming the file, the table and the key, what was received and what
was expected, raised as the caller's CompanionError kind."""

from __future__ import annotations

import math
from pathlib import Path

# what a value of each kind may be in TOML (an int is a fine float; a bool is never a number)
_ACCEPTS = {float: (int, float), int: (int,), bool: (bool,), str: (str,), list: (list,)}


class TableChecker:
    def __init__(self, path: Path, error: type[Exception], whole: str):
        """`error`: the exception raised; `whole`: what a top-level key belongs to ("the
        preset", "the config")."""
        self.path = path
        self.error = error
        self.whole = whole

    def fail(self, where: str, msg: str):
        raise self.error(f"{self.path}: {where or self.whole} {msg}")

    def table(self, data, where: str, allowed: set[str]) -> dict:
        """`data` must be a table whose keys are all in `allowed`."""
        if not isinstance(data, dict):
            self.fail(where, f"must be a table (received {type(data).__name__})")
        unknown = sorted(set(data) - allowed)
        if unknown:
            allowed_s = ", ".join(sorted(allowed))
            self.fail(where, f"has unknown key {unknown[0]!r}; allowed: {allowed_s}")
        return data

    def value(
        self,
        data: dict,
        key: str,
        where: str,
        kind,
        default,
        *,
        choices=None,
        lo=None,
        hi=None,
        lo_open=False,
        hi_open=False,
        required=False,
    ):
        """`data[key]` checked to be of `kind` (float, int, bool, str, list), among
        `choices`, within [lo, hi] (open ends with lo_open / hi_open); `default` when
        absent (a failure when `required`)."""
        label = f"{where} {key}".strip()
        if key not in data:
            if required:
                self.fail(label, "is required")
            return default
        v = data[key]
        if isinstance(v, bool) and kind is not bool or not isinstance(v, _ACCEPTS[kind]):
            self.fail(label, f"must be {kind.__name__} (received {v!r})")
        if kind is float and not math.isfinite(v):
            self.fail(label, f"must be a finite number (received {v!r})")
        if choices is not None and v not in choices:
            self.fail(label, f"must be one of {', '.join(map(str, choices))} (received {v!r})")
        if lo is not None and (v <= lo if lo_open else v < lo):
            self.fail(label, f"must be {'>' if lo_open else '>='} {lo} (received {v!r})")
        if hi is not None and (v >= hi if hi_open else v > hi):
            self.fail(label, f"must be {'<' if hi_open else '<='} {hi} (received {v!r})")
        return kind(v)
