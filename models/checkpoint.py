"""Training checkpoints: their format, loading one, rebuilding its model. Shared by the
training loop (which writes them) and the exporter (which reads them), so neither imports the
other."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path

import torch
from torch import nn

from midi_companion.errors import ModelError

CHECKPOINT_FORMAT = "midi-companion-checkpoint/1"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint as a dict; ModelError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a foreign or truncated file
        raise ModelError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(
            f"{path}: not a midi-companion checkpoint (format "
            f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    return ckpt


def build_model(ckpt: dict) -> nn.Module:
    """Rebuild the family's model from a checkpoint (weights loaded, eval mode, CPU)."""
    from midi_companion import representations
    from midi_companion.models import FAMILY_MODULES

    family = ckpt["family"]
    if family not in FAMILY_MODULES:
        raise ModelError(f"unknown family {family!r}; known: {sorted(FAMILY_MODULES)}")
    rep = representations.from_dict(ckpt["representation"])
    model = import_module(FAMILY_MODULES[family]).build(family, rep, **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- export ---------------------------------------------------------------------------------
