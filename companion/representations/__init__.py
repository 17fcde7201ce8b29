"""Representations: how a Score becomes model tokens and back (torch-free).

``REGISTRY`` maps each representation's name to its class; ``from_dict`` rebuilds one from
the JSON that rides inside a model file.
"""

from __future__ import annotations

from typing import Any

from midi_companion.errors import RepresentationError
from midi_companion.representations.base import Representation
from midi_companion.representations.chord import Chord
from midi_companion.representations.events import Events
from midi_companion.representations.multitrack import MultiTrack
from midi_companion.representations.notes import Notes
from midi_companion.representations.pianoroll import PianoRoll
from midi_companion.representations.remi import Remi

REGISTRY: dict[str, type[Representation]] = {}
REGISTRY[PianoRoll.name] = PianoRoll
REGISTRY[Chord.name] = Chord
REGISTRY[MultiTrack.name] = MultiTrack
REGISTRY[Events.name] = Events
REGISTRY[Notes.name] = Notes
REGISTRY[Remi.name] = Remi


def from_dict(data: dict[str, Any]) -> Representation:
    """Rebuild a representation (params and vocabulary) from ``rep.to_dict()``."""
    name = data.get("name") if isinstance(data, dict) else None
    if name not in REGISTRY:
        raise RepresentationError(f"unknown representation {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name].from_dict(data)
