"""Errors a user can act on.

Every error that reaches the command line is a CompanionError: the CLI prints its one
sentence and exits with code 2 (no traceback unless --debug). Subclasses also derive from
the standard exception a caller would expect (ValueError, OSError), so library users can
catch either.
"""


class CompanionError(Exception):
    """Base of all errors the CLI reports as one sentence with exit code 2."""


class MidiFileError(CompanionError, ValueError):
    """A MIDI file that cannot be read: missing, truncated, or not MIDI at all."""


class RepresentationError(CompanionError, ValueError):
    """Representation params out of range, or tokens that cannot be decoded."""


class PresetError(CompanionError, ValueError):
    """A preset file with a typo, a wrong type, an unknown key, or a missing model."""


class ModelError(CompanionError, ValueError):
    """A missing, truncated or foreign .onnx, or metadata that does not fit its use."""


class ConfigError(CompanionError, ValueError):
    """A training config (TOML) that does not validate."""


class DataError(CompanionError, ValueError):
    """A corpus or benchmark that cannot be loaded."""


class MidiPortError(CompanionError, OSError):
    """No MIDI system reachable, or a port name that matches nothing."""


class ProviderError(CompanionError, RuntimeError):
    """An execution provider asked for (--provider cuda) that cannot run the model."""
