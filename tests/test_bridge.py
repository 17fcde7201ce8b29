"""The bridge mode (companion/modes/bridge.py): the answer's latent moves from the player's
phrase towards a target style's; the mix (preset, or `[controls] bridge_cc` live) sets how
far. On the shipped lstm-vae, torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from midi_companion import presets
from midi_companion.errors import PresetError
from midi_companion.modelfile import load as load_model
from midi_companion.modes.bridge import Bridge, bridge_latent
from midi_companion.score import Note, Score
from midi_companion.styles import read_styles

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "models" / "zoo"
PHRASE = [Note(i * 0.5, 60 + (i * 2) % 12, 0.5, 90) for i in range(8)]


def test_latent_path_is_monotone_in_the_mix():
    rng = np.random.default_rng(0)
    z_me, z_t = rng.standard_normal(20), rng.standard_normal(20)
    np.testing.assert_allclose(bridge_latent(z_me, z_t, 0.0, 1.0), z_me, atol=1e-6)
    np.testing.assert_allclose(bridge_latent(z_me, z_t, 1.0, 1.0), z_t, atol=1e-6)
    np.testing.assert_allclose(bridge_latent(z_me, z_t, 1.0, 0.0), z_me, atol=1e-6)
    mixes = np.linspace(0, 1, 11)
    for fraction in (0.25, 0.5, 1.0, 2.0):  # past the last bar it stays at the end
        zs = [bridge_latent(z_me, z_t, m, fraction) for m in mixes]
        to_t = [np.linalg.norm(z - z_t) for z in zs]
        from_me = [np.linalg.norm(z - z_me) for z in zs]
        assert all(np.diff(to_t) < 0) and all(np.diff(from_me) > 0)
    # and along the bridge at a fixed mix
    along = [np.linalg.norm(bridge_latent(z_me, z_t, 0.7, f) - z_t) for f in np.linspace(0, 1, 9)]
    assert all(np.diff(along) < 0)


def test_the_shipped_model_carries_the_styles_the_preset_names():
    styles = read_styles(load_model(ZOO / "lstm-vae.onnx"))
    assert {"music21:essen", "music21:oneill", "music21:bach"} <= set(styles)
    assert all(z.shape == (20,) and np.isfinite(z).all() for z in styles.values())
    p = presets.load("bridge")
    assert p.mode == "continue" and p.bridge.target in styles
    assert p.bridge.bars == 4 and p.controls.bridge_cc == 2


def _preset(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "b.toml"
    path.write_text(
        f'model = "{ZOO / "lstm-vae.onnx"}"\n{body}\n[[tracks]]\nname = "a"\nchannel = 1\n'
    )
    return path


def test_preset_validation(tmp_path):
    assert presets.load(_preset(tmp_path, 'mode = "continue"')).bridge is None
    with pytest.raises(PresetError, match=r"\[bridge\] needs mode = \"continue\""):
        presets.load(_preset(tmp_path, 'mode = "accompany"\n[bridge]\ntarget = "x.mid"'))
    with pytest.raises(PresetError, match=r"\[bridge\] target must name"):
        presets.load(_preset(tmp_path, 'mode = "continue"\n[bridge]\nbars = 2'))
    with pytest.raises(PresetError, match=r"\[bridge\] mix must be <= 1"):
        presets.load(_preset(tmp_path, 'mode = "continue"\n[bridge]\ntarget = "a"\nmix = 2'))
    with pytest.raises(PresetError, match="bridge_cc and .* are both CC 1|are both CC 1"):
        presets.load(
            _preset(
                tmp_path, 'mode = "continue"\n[bridge]\ntarget = "a"\n[controls]\nbridge_cc = 1'
            )
        )
    p = presets.load(_preset(tmp_path, 'mode = "continue"\n[bridge]\ntarget = "music21:nope"'))
    from midi_companion.offline import perform

    with pytest.raises(PresetError, match="neither a style of lstm-vae.onnx"):
        perform(p, Score.from_notes(PHRASE), seed=0)


def _perform(preset, seed=0):
    """The bridge preset played offline on PHRASE: (answer notes, the Bridge mode)."""
    from midi_companion import modes as modes_pkg
    from midi_companion.offline import perform

    built = []
    real = modes_pkg.build

    def keep(*a, **k):
        b = real(*a, **k)
        built.append(b.mode)
        return b

    modes_pkg.build = keep
    try:
        out = perform(preset, Score.from_notes(PHRASE), seed=seed)
    finally:
        modes_pkg.build = real
    return sorted(out.tracks[-1].notes), built[0]


def test_answers_at_mix_0_and_1_differ_and_the_path_follows_the_mix():
    p = presets.load("bridge")
    notes0, mode0 = _perform(replace(p, bridge=replace(p.bridge, mix=0.0)))
    notes1, mode1 = _perform(replace(p, bridge=replace(p.bridge, mix=1.0)))
    half, mode_h = _perform(replace(p, bridge=replace(p.bridge, mix=0.5)))
    assert isinstance(mode1, Bridge) and notes0 and notes1
    assert [(n.onset, n.pitch) for n in notes0] != [(n.onset, n.pitch) for n in notes1]
    w0 = [w for _, w in mode0.path]
    w1 = [w for b, w in mode1.path if b >= 4.0]  # the answer starts on beat 4
    wh = [w for b, w in mode_h.path if b >= 4.0]
    assert max(w0) == 0.0
    assert all(np.diff(w1) >= 0) and w1[-1] > 0.9  # four bars: nearly all the way at the end
    assert max(wh) <= 0.5 + 1e-9 and wh[-1] > 0.45
    # the z the decoder read last: on the way from the player's latent to the target's
    z_me, z_t = mode1.voice.latent, mode1.target
    z_end = mode1.voice.engine.state["z"][0]
    assert np.linalg.norm(z_end - z_t) < 0.15 * np.linalg.norm(z_me - z_t)


def test_the_cc_sets_the_mix_live():
    """`[controls] bridge_cc` into the Performer (as the daemon hands it every message)."""
    from midi_companion.clock import InternalClock
    from midi_companion.offline import VirtualTime
    from midi_companion.performer import Performer
    from midi_companion.scheduler import Scheduler

    p = presets.load("bridge")
    now = VirtualTime()
    clock = InternalClock(bpm=p.timing.bpm, beats_per_bar=4, now_ns=now)
    sched = Scheduler(lambda m: None, now_ns=now)
    performer = Performer(p, sched, clock, seed=0, provider="cpu")
    mode = performer.mode
    cc = p.controls.bridge_cc
    for value, mix in ((0, 0.0), (127, 1.0), (64, 64 / 127)):
        performer.handle(1, (0xB0, cc, value))
        assert mode.mix == pytest.approx(mix)
    performer.handle(2, (0xB0, p.controls.temperature_cc, 5))
    assert mode.mix == pytest.approx(64 / 127)
    sched.stop()
    # turned while the answer plays: the weight on the target follows from the next token
    _, mode = _perform(p)
    steer = mode._steer(0.0, 16.0)
    mode.set_mix(1.0)
    steer(8.0)
    mode.set_mix(0.0)
    steer(9.0)
    assert [w for _, w in mode.path] == [pytest.approx(0.5), 0.0]


def test_a_midi_file_target_and_no_torch(tmp_path):
    """A .mid target's style is computed at load by the encoder on onnxruntime."""
    target = tmp_path / "tune.mid"
    Score.from_notes([Note(i * 0.25, 72 + (i * 5) % 12, 0.25, 90) for i in range(64)]).to_midi(
        target
    )
    preset = tmp_path / "bridge.toml"
    text = (ROOT / "presets" / "bridge.toml").read_text()
    text = text.replace('model = "lstm-vae"', f'model = "{ZOO / "lstm-vae.onnx"}"')
    preset.write_text(text.replace('target = "music21:oneill"', 'target = "tune.mid"'))
    code = r"""
import sys
sys.modules["torch"] = None  # the runtime must not need torch
from midi_companion import presets
from midi_companion.offline import perform
from midi_companion.score import Note, Score
p = presets.load(sys.argv[1])
out = perform(p, Score.from_notes([Note(i * 0.5, 60 + i % 5, 0.5, 90) for i in range(8)]))
print(len(out.tracks[-1].notes))
"""
    r = subprocess.run(
        [sys.executable, "-c", code, str(preset)], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) > 0


@pytest.mark.slow
def test_write_styles_round_trip(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("music21")
    from midi_companion.styles import write_styles

    model = tmp_path / "m.onnx"
    shutil.copy(ZOO / "lstm-vae.onnx", model)
    shutil.copy(ZOO / "lstm-vae.encoder.onnx", tmp_path / "lstm-vae.encoder.onnx")
    written = write_styles(model, ["music21:bach"], split="all", limit=12)
    loaded = read_styles(load_model(model))
    assert written["music21:bach"]["pieces"] == 12
    np.testing.assert_allclose(loaded["music21:bach"], written["music21:bach"]["latent"])
    assert set(loaded) >= {"music21:oneill"}  # the styles it carried are kept
    meta = load_model(model).metadata
    assert json.loads(meta["styles"])["music21:bach"]["phrases"] > 12


@pytest.mark.slow
def test_the_measurement_sees_the_answer_move_towards_the_target():
    """python -m midi_companion.modes.bridge: per bar of the answer, on held-out prompts."""
    pytest.importorskip("music21")
    from midi_companion.modes.bridge import markdown, measure

    r = measure("bridge", pieces=4, seeds=1)
    assert r["runs"] >= 2 and r["bars"] == 4  # a prompt too short for its answer is skipped
    m0, m1 = r["mixes"]["0.0"], r["mixes"]["1.0"]
    assert len(m1["to_target"]) == 4 and all(v is None for v in m1["p_target"])
    # the last bar of the bridge is closer to the target's latent at mix 1 than at mix 0
    assert m1["to_target"][-1] < m0["to_target"][-1]
    assert "| latent distance to the target | 1 |" in markdown(r)
