"""Checkpoint -> ONNX step model + metadata + parity check against torch (imports torch)."""

from export.onnx_export import (
    CHECKPOINT_FORMAT,
    FORMAT,
    ExportSpec,
    ParityError,
    build_model,
    check_parity,
    export_checkpoint,
    load_checkpoint,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FORMAT",
    "ExportSpec",
    "ParityError",
    "build_model",
    "check_parity",
    "export_checkpoint",
    "load_checkpoint",
]
