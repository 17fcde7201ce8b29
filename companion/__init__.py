"""midi-companion: a DAW-facing real-time MIDI companion (torch-free runtime)."""

__version__ = "0.1.0"
