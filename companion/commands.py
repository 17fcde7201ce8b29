"""The small subcommands: ports, presets, and the offline continue/accompany."""

from __future__ import annotations

import json
from pathlib import Path

from midi_companion import presets
from midi_companion.errors import PresetError


def ports(args) -> int:
    from midi_companion.ports import list_ports

    found = list_ports(args.backend)
    for key in ("inputs", "outputs"):
        print(f"{key}:")
        for name in found[key] or ["(none)"]:
            print(f"  {name}")
    return 0


def presets_cmd(args) -> int:
    if args.action == "show":
        if not args.name:
            raise PresetError("presets show needs a preset name or path")
        print(json.dumps(presets.load(args.name).to_dict(), indent=2))
        return 0
    rows = []
    for path in presets.available():
        p = presets.load(str(path))
        model = p.model.stem + (f" + {p.solo_model.stem}" if p.solo_model else "")
        default = " (default)" if path.stem == presets.DEFAULT_PRESET else ""
        rows.append((path.stem + default, p.mode, model, p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def _offline(args, mode: str, bars=None) -> int:
    from midi_companion.offline import input_parts, perform
    from midi_companion.outfiles import check_output
    from midi_companion.score import Score

    preset = presets.load(args.preset)
    check_output(args.output, "-o", inputs=[args.input])
    if preset.mode != mode and not (
        mode == "accompany" and preset.mode in ("jam", "pattern", "band")
    ):
        raise PresetError(
            f"{preset.path}: mode is {preset.mode!r}; `companion {mode}` needs "
            f"a preset whose mode is {mode!r}"
        )
    score = Score.from_midi(args.input)
    if not score.notes:
        raise PresetError(f"{args.input}: has no notes to {mode}")
    result = perform(preset, score, seed=args.seed, bars=bars, source=str(args.input))
    result.to_midi(args.output)
    generated = result.tracks[len(input_parts(score)) :]  # the input's parts come first
    print(
        f"wrote {Path(args.output)}: {len(score.notes)} input notes, "
        f"{sum(len(t.notes) for t in generated)} generated on {len(generated)} track(s)"
    )
    return 0


def continue_cmd(args) -> int:
    return _offline(args, "continue", bars=args.bars)


def accompany_cmd(args) -> int:
    return _offline(args, "accompany")
