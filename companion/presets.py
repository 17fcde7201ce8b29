"""Presets: TOML files that pick a model and say how the companion behaves.

A preset is validated completely at load: an error names the file, the key, what was
received and what is allowed, e.g.
``presets/folk.toml: [sampling] temperature must be > 0 (received -1)``.
Defaults fill every key a preset leaves out, so `companion presets show NAME` prints the
whole behaviour.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midi_companion.errors import PresetError
from midi_companion.rules import default_range
from midi_companion.tomlcheck import TableChecker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODES = ("continue", "accompany", "jam", "pattern", "band")
START_ON = ("beat", "bar")
ON_INPUT = ("interrupt", "overlap")
DEFAULT_PRESET = "chorale"


@dataclass
class TrackOut:
    """One generated part: its name, MIDI channel (1..16), GM program (0..127), velocity
    scale, and the range [low, high] of pitches it may play (default: by voice name from
    Bach's chorales, else by General MIDI program; companion.rules)."""

    name: str
    channel: int
    program: int = 0
    velocity_scale: float = 1.0
    range: tuple[int, int] = (0, 127)


@dataclass
class Timing:
    bpm: float = 100.0
    beats_per_bar: int = 4
    grid: float = 0.25
    lookahead_ms: float = 25.0
    tolerance_ms: float = 10.0
    bars: int = 2
    silence_beats: float = 1.5
    start_on: str = "beat"


@dataclass
class SamplingCfg:
    """temperature, top_k, top_p: how tokens are drawn. key_strength: nats against a note
    outside the key of what the player played (0 = off); scale_lock: never such a note."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    key_strength: float = 2.0
    scale_lock: bool = False


@dataclass
class Controls:
    temperature_cc: int = 1  # mod wheel
    temperature_range: tuple[float, float] = (0.5, 1.5)
    panic_cc: int = 123
    scale_lock_cc: int = 0  # 0 = off; a CC >= 64 locks answers to the key, < 64 unlocks
    trigger_cc: int = 0  # 0 = off; a CC >= 64 ends the phrase now
    bridge_cc: int = 0  # 0 = off; with [bridge]: the mix, 0 (like me) .. 127 (like the target)
    sustain_release_ends_phrase: bool = True
    program_change: bool = True


@dataclass
class BridgeCfg:
    """[bridge] on a continue preset (companion/modes/bridge.py): the answer's latent moves
    from the player's phrase's towards `target`'s (a style the model carries, e.g.
    "music21:bach", or a .mid file relative to the preset) over `bars` bars (0 = the whole
    answer); `mix` (0..1, `[controls] bridge_cc` sets it live) is how far: 0 = like me, 1 =
    like the target."""

    target: str = ""
    bars: int = 0
    mix: float = 1.0


@dataclass
class PatternCfg:
    """mode = "pattern" (companion/modes/pattern.py): a generated block every `[timing]
    bars` bars. Density: a roll's keys sound at or above `threshold` (0..1), or, with
    `notes` > 0, the threshold that gives about that many notes a block (a note-gan block:
    its first `notes` notes); `transpose`: into the key the player is in."""

    threshold: float = 0.5
    notes: int = 0
    transpose: bool = True


@dataclass
class BandCfg:
    """mode = "band" (companion/modes/band.py, a vae-nn model): the band answers each block
    of the player's a block later. `noise`: standard deviation of the Gaussian noise added
    to every predicted latent (the thesis' variation; scaled live by the temperature CC's
    value); `threshold`: a decoded cell sounds at this probability or more (0.3 in the
    thesis)."""

    noise: float = 0.5
    threshold: float = 0.3


@dataclass
class Preset:
    name: str
    path: Path
    description: str
    model: Path
    mode: str
    input_channel: int = 0  # 0 = omni
    tracks: list[TrackOut] = field(default_factory=list)
    harmonize: bool = False
    on_input: str = "interrupt"
    solo_model: Path | None = None
    solo_tracks: list[TrackOut] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    sampling: SamplingCfg = field(default_factory=SamplingCfg)
    controls: Controls = field(default_factory=Controls)
    bridge: BridgeCfg | None = None
    pattern: PatternCfg | None = None
    band: BandCfg | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["model"] = str(self.model)
        d["solo_model"] = str(self.solo_model) if self.solo_model else None
        return d

    @property
    def channels(self) -> list[int]:
        """MIDI channels (1..16) this preset plays on."""
        return sorted({t.channel for t in self.tracks + self.solo_tracks})


# ---- locating ----------------------------------------------------------------------------
# In a source tree (and an editable install) presets/ and models/zoo/ sit beside companion/;
# an installed wheel puts them inside the package as midi_companion/shipped_presets and
# midi_companion/models/zoo (pyproject's package-dir).
_HERE = Path(__file__).resolve().parent
_INSTALLED = (_HERE / "shipped_presets").is_dir()


def presets_dir() -> Path:
    """The shipped presets (TOML data)."""
    return _HERE / "shipped_presets" if _INSTALLED else _HERE.parent / "presets"


def zoo_dir() -> Path:
    """The shipped models."""
    return (_HERE if _INSTALLED else _HERE.parent) / "models" / "zoo"


def zoo_models(zoo: Path | None = None) -> list[Path]:
    """The model files in the zoo: `NAME.onnx`, not the graphs a model keeps beside it
    (`NAME.encoder.onnx`, named in its metadata)."""
    return sorted(p for p in (zoo or zoo_dir()).glob("*.onnx") if len(p.suffixes) == 1)


def available() -> list[Path]:
    return sorted(presets_dir().glob("*.toml"))


def resolve(name_or_path: str | None) -> Path:
    """A preset name from presets/ or a path to a user's own .toml."""
    name = name_or_path or DEFAULT_PRESET
    p = Path(name)
    if p.suffix == ".toml" or p.exists():
        if p.is_dir():
            raise PresetError(
                f"{p}: is a folder; expected a preset .toml file or a name from {presets_dir()}"
            )
        if not p.is_file():
            raise PresetError(f"{p}: no such preset file")
        return p
    candidate = presets_dir() / f"{name}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(x.stem for x in available())
    raise PresetError(f"unknown preset {name!r}; known presets: {known}")


def load(name_or_path: str | None) -> Preset:
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PresetError(f"{path}: not valid TOML ({err})") from err
    return parse(data, path)


# ---- validation --------------------------------------------------------------------------
class _Checker(TableChecker):
    def __init__(self, path: Path):
        super().__init__(path, PresetError, "the preset")


_TOP = {
    "name",
    "description",
    "model",
    "mode",
    "input_channel",
    "tracks",
    "harmonize",
    "on_input",
    "solo_model",
    "solo_tracks",
    "timing",
    "sampling",
    "controls",
    "bridge",
    "pattern",
    "band",
}


def parse(data: dict, path: Path) -> Preset:
    c = _Checker(path)
    c.table(data, "", _TOP)
    for key in ("model", "mode"):
        if key not in data:
            c.fail(key, "is required")
    mode = c.value(data, "mode", "", str, None, choices=MODES)
    model = _model_path(c, data, "model", path)
    solo_model = _model_path(c, data, "solo_model", path) if "solo_model" in data else None
    if mode == "jam" and solo_model is None:
        c.fail("solo_model", 'is required when mode = "jam"')
    return Preset(
        name=c.value(data, "name", "", str, path.stem),
        path=path,
        description=c.value(data, "description", "", str, ""),
        model=model,
        mode=mode,
        input_channel=c.value(data, "input_channel", "", int, 0, lo=0, hi=16),
        tracks=_tracks(c, data.get("tracks", []), "tracks"),
        harmonize=c.value(data, "harmonize", "", bool, False),
        on_input=c.value(data, "on_input", "", str, "interrupt", choices=ON_INPUT),
        solo_model=solo_model,
        solo_tracks=_tracks(c, data.get("solo_tracks", []), "solo_tracks"),
        timing=_timing(c, data.get("timing", {})),
        sampling=_sampling(c, data.get("sampling", {})),
        controls=_controls(c, data.get("controls", {})),
        bridge=_bridge(c, data, mode),
        pattern=_pattern(c, data, mode),
        band=_band(c, data, mode),
    )


def _model_path(c: _Checker, data: dict, key: str, path: Path) -> Path:
    """A model is a zoo name ("folk") or a path relative to the preset file."""
    v = c.value(data, key, "", str, None)
    if not v:
        c.fail(key, "must name a model (a name from models/zoo or a path to an .onnx file)")
    p = Path(v)
    if p.suffix == ".onnx" or len(p.parts) > 1:  # a path (relative to the preset file)
        p = p if p.is_absolute() else (path.parent / p).resolve()
    else:
        p = zoo_dir() / f"{v}.onnx"
    if not p.is_file():
        c.fail(
            key,
            f"names a model file that does not exist: {p} (expected a name from "
            f"{zoo_dir()} or a path to an .onnx file)",
        )
    if p.suffix != ".onnx":
        c.fail(key, f"must be an .onnx model file (received {p})")
    return p


def _tracks(c: _Checker, items, where: str) -> list[TrackOut]:
    if not isinstance(items, list):
        c.fail(where, f"must be an array of tables (received {type(items).__name__})")
    out = []
    for i, t in enumerate(items):
        w = f"[[{where}]] #{i + 1}"
        c.table(t, w, {"name", "channel", "program", "velocity_scale", "range"})
        if "channel" not in t:
            c.fail(w, "channel is required (1..16)")
        name = c.value(t, "name", w, str, f"track {i + 1}")
        program = c.value(t, "program", w, int, 0, lo=0, hi=127)
        rng = t.get("range", list(default_range(name, program)))
        if (
            not isinstance(rng, list)
            or len(rng) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng)
            or not 0 <= rng[0] <= rng[1] <= 127
        ):
            c.fail(
                f"{w} range",
                f"must be [low, high] MIDI pitches with 0 <= low <= high <= 127 (received {rng!r})",
            )
        out.append(
            TrackOut(
                name=name,
                channel=c.value(t, "channel", w, int, 1, lo=1, hi=16),
                program=program,
                velocity_scale=c.value(
                    t, "velocity_scale", w, float, 1.0, lo=0, lo_open=True, hi=4
                ),
                range=(rng[0], rng[1]),
            )
        )
    channels = [t.channel for t in out]
    if len(set(channels)) != len(channels):
        c.fail(where, f"must use a distinct channel per track (received {channels})")
    return out


def _timing(c: _Checker, t) -> Timing:
    w = "[timing]"
    d = Timing()
    c.table(t, w, set(asdict(d)))
    return Timing(
        bpm=c.value(t, "bpm", w, float, d.bpm, lo=20, hi=300),
        beats_per_bar=c.value(t, "beats_per_bar", w, int, d.beats_per_bar, lo=1, hi=16),
        grid=c.value(t, "grid", w, float, d.grid, lo=0, lo_open=True, hi=4),
        lookahead_ms=c.value(t, "lookahead_ms", w, float, d.lookahead_ms, lo=0, hi=500),
        tolerance_ms=c.value(t, "tolerance_ms", w, float, d.tolerance_ms, lo=0, hi=500),
        bars=c.value(t, "bars", w, int, d.bars, lo=1, hi=64),
        silence_beats=c.value(
            t, "silence_beats", w, float, d.silence_beats, lo=0, lo_open=True, hi=32
        ),
        start_on=c.value(t, "start_on", w, str, d.start_on, choices=START_ON),
    )


def _sampling(c: _Checker, s) -> SamplingCfg:
    w = "[sampling]"
    d = SamplingCfg()
    c.table(s, w, set(asdict(d)))
    return SamplingCfg(
        temperature=c.value(s, "temperature", w, float, d.temperature, lo=0, lo_open=True, hi=5),
        top_k=c.value(s, "top_k", w, int, d.top_k, lo=0),
        top_p=c.value(s, "top_p", w, float, d.top_p, lo=0, lo_open=True, hi=1),
        key_strength=c.value(s, "key_strength", w, float, d.key_strength, lo=0, hi=20),
        scale_lock=c.value(s, "scale_lock", w, bool, d.scale_lock),
    )


def _controls(c: _Checker, s) -> Controls:
    w = "[controls]"
    d = Controls()
    c.table(s, w, set(asdict(d)))
    rng = s.get("temperature_range", list(d.temperature_range))
    if (
        not isinstance(rng, list)
        or len(rng) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng)
        or not 0 < rng[0] <= rng[1]
    ):
        c.fail(
            f"{w} temperature_range", f"must be [low, high] with 0 < low <= high (received {rng!r})"
        )
    ccs = {
        k: c.value(s, k, w, int, getattr(d, k), lo=0, hi=127)
        for k in ("temperature_cc", "panic_cc", "trigger_cc", "scale_lock_cc", "bridge_cc")
    }
    used = [(k, v) for k, v in ccs.items() if v]  # 0 = off
    for i, (k, v) in enumerate(used):
        clash = next((k2 for k2, v2 in used[i + 1 :] if v2 == v), None)
        if clash:
            c.fail(f"{w} {k}", f"and {clash} are both CC {v}; one controller can do one thing")
    return Controls(
        **ccs,
        temperature_range=(float(rng[0]), float(rng[1])),
        sustain_release_ends_phrase=c.value(
            s, "sustain_release_ends_phrase", w, bool, d.sustain_release_ends_phrase
        ),
        program_change=c.value(s, "program_change", w, bool, d.program_change),
    )


def _bridge(c: _Checker, data: dict, mode: str) -> BridgeCfg | None:
    w = "[bridge]"
    if "bridge" not in data:
        return None
    if mode != "continue":
        c.fail(w, f'needs mode = "continue" (a bridge is an answer; mode is {mode!r})')
    t = c.table(data["bridge"], w, set(asdict(BridgeCfg())))
    target = c.value(t, "target", w, str, "")
    if not target:
        c.fail(
            f"{w} target",
            'must name a style of the model (e.g. "music21:bach") or a .mid file',
        )
    return BridgeCfg(
        target=target,
        bars=c.value(t, "bars", w, int, 0, lo=0, hi=64),
        mix=c.value(t, "mix", w, float, 1.0, lo=0, hi=1),
    )


def _pattern(c: _Checker, data: dict, mode: str) -> PatternCfg | None:
    w = "[pattern]"
    if mode != "pattern":
        if "pattern" in data:
            c.fail(w, f'is read only when mode = "pattern" (mode is {mode!r})')
        return None
    t = c.table(data.get("pattern", {}), w, set(asdict(PatternCfg())))
    d = PatternCfg()
    return PatternCfg(
        threshold=c.value(t, "threshold", w, float, d.threshold, lo=0, lo_open=True, hi=1),
        notes=c.value(t, "notes", w, int, d.notes, lo=0, hi=4096),
        transpose=c.value(t, "transpose", w, bool, d.transpose),
    )


def _band(c: _Checker, data: dict, mode: str) -> BandCfg | None:
    w = "[band]"
    if mode != "band":
        if "band" in data:
            c.fail(w, f'is read only when mode = "band" (mode is {mode!r})')
        return None
    t = c.table(data.get("band", {}), w, set(asdict(BandCfg())))
    d = BandCfg()
    return BandCfg(
        noise=c.value(t, "noise", w, float, d.noise, lo=0, hi=10),
        threshold=c.value(t, "threshold", w, float, d.threshold, lo=0, lo_open=True, hi=1),
    )
