"""Turn-taking: continue (call and response), accompany (incl. harmonize), jam.

`build(preset, ...)` makes a preset's mode with what it plays on and through; the Performer
plays whatever it returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BuiltMode:
    """A preset's mode, ready to play: the mode, every Output it sends on (the
    accompaniment's first in jam, then the solo's) and every Engine it runs."""

    mode: object  # Continuation, Accompaniment or Jam
    outputs: list  # [companion.output.Output]
    engines: list  # [companion.engine.Engine], warm


def build(
    preset, scheduler, clock, rng, provider: str = "auto", speculate: str | None = "thread"
) -> BuiltMode:
    """The mode `preset` asks for (continue, accompany or jam), its models loaded and warmed
    up on `provider`, sending through `scheduler` at `clock`'s times."""
    from midi_companion.modelfile import load as load_model
    from midi_companion.modes.accompaniment import Accompaniment, Jam
    from midi_companion.modes.continuation import Continuation
    from midi_companion.output import Output
    from midi_companion.voices import accompanist_for, voice_for

    if preset.mode == "continue" and preset.bridge is not None:
        from midi_companion.modes import bridge

        return bridge.build(preset, scheduler, clock, rng, provider)
    if preset.mode == "band":
        from midi_companion.modes import band

        return band.build(preset, scheduler, clock, rng, provider)
    if preset.mode == "pattern":
        from midi_companion.modes import pattern

        return pattern.build(preset, scheduler, clock, rng, provider)
    if preset.mode == "continue":
        model = load_model(preset.model)
        voice = voice_for(model, provider=provider)
        voice.warm_up(rng)
        out = Output(scheduler, clock, preset.tracks or _default_tracks(model))
        return BuiltMode(Continuation(voice, preset, out, rng), [out], [voice.engine])
    acc = accompanist_for(load_model(preset.model), preset, provider=provider)
    acc.warm_up(rng)
    out = Output(scheduler, clock, preset.tracks)
    mode = Accompaniment(acc, preset, out, rng, speculate=speculate)
    if preset.mode != "jam":
        return BuiltMode(mode, [out], [acc.engine])
    solo_voice = voice_for(load_model(preset.solo_model), provider=provider)
    solo_voice.warm_up(rng)
    solo_out = Output(scheduler, clock, preset.solo_tracks)
    solo = Continuation(solo_voice, preset, solo_out, rng)
    return BuiltMode(Jam(mode, solo), [out, solo_out], [acc.engine, solo_voice.engine])


def _default_tracks(model):
    """A continue preset without [[tracks]]: one track on channel 1, named for the model."""
    from midi_companion.presets import TrackOut

    return [TrackOut(name=model.family, channel=1, program=0)]
