"""Checkpoint -> ONNX step model + metadata + parity check against torch (imports torch)."""

from midi_companion.export.onnx_export import FORMAT, ParityError, check_parity, export_checkpoint
from midi_companion.models.checkpoint import CHECKPOINT_FORMAT, build_model, load_checkpoint
from midi_companion.models.export_spec import ExportSpec

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
