"""Engine: one model's onnxruntime session and the recurrent state (or KV cache) it carries
between steps.

Sessions run on one thread, sequentially, with every graph optimization
(companion.modelfile.session_options); voices warm them up at load so the first real step is
as fast as the rest. They run on the CPU unless `--provider cuda` asks for CUDA (and then
only if it really loads: otherwise a ProviderError says why); `engine.provider` says which
one runs and `engine.provider_note` why CUDA does not.
"""

from __future__ import annotations

import time
from importlib import metadata

import numpy as np


def _wheel_conflict() -> str | None:
    """onnxruntime and onnxruntime-gpu share a module name; with both installed, the one
    imported is whichever pip wrote last. Say so instead of silently running on the CPU."""
    try:
        metadata.version("onnxruntime")
        metadata.version("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed; keep one: "
        "pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu"
    )


PROVIDERS = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
#: what `--provider auto` does, for --help and the log
AUTO_CHOOSES = (
    "the CPU: a step of these small step graphs takes ~0.1 ms there, less than a CUDA launch costs"
)


def check_provider(provider: str) -> None:
    """ProviderError unless `provider` is one of PROVIDERS and, for "cuda", onnxruntime has a
    CUDA provider at all (whether it loads a model is only known when it tries)."""
    from midi_companion.errors import ProviderError

    if provider not in PROVIDERS:
        raise ProviderError(
            f"unknown execution provider {provider!r}; use one of {', '.join(PROVIDERS)}"
        )
    if provider != "cuda":
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        raise ProviderError(
            f"--provider cuda: this onnxruntime has no CUDA provider (it has "
            f"{', '.join(available)}); install onnxruntime-gpu alone (see README, GPU), or "
            f"use --provider cpu"
        )


def open_session(model, provider: str = "auto", threads: int = 1):
    """The onnxruntime session to step `model` with, and why CUDA is not used (None when it
    is): "cpu" never tries CUDA, "auto" keeps the CPU (AUTO_CHOOSES), "cuda" runs on CUDA or
    raises ProviderError saying why it cannot."""
    from midi_companion.errors import ProviderError

    check_provider(provider)
    if provider == "cpu":
        return model.session, "CPU chosen (--provider cpu)"
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        if CUDA in available:
            return model.session, (
                f"CUDA is available but not used: --provider auto chooses "
                f"{AUTO_CHOOSES}; --provider cuda to use it"
            )
        return model.session, (
            f"CPU: this onnxruntime has no CUDA provider (it has {', '.join(available)})"
        )
    from midi_companion.modelfile import session_options

    try:
        sess = ort.InferenceSession(
            str(model.path), session_options(threads), providers=[CUDA, "CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime's own kinds: say what it said, on one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ProviderError(
            f"--provider cuda: CUDA cannot run {model.path} ({first}); use --provider cpu"
        ) from err
    if sess.get_providers()[0] != CUDA:  # the CUDA libraries did not load: it fell back
        raise ProviderError(
            f"--provider cuda: onnxruntime fell back to {sess.get_providers()[0]} for "
            f"{model.path} (its CUDA libraries did not load: CUDA or cuDNN missing or of "
            f"another version); use --provider cpu"
        )
    return sess, None


class Engine:
    """Steps one ONNX step-protocol graph, keeping its state between calls: the one way a
    model file is stepped (the voices live, `companion eval` offline, B pieces side by side).

    The state is the model file's ``state`` (``StateSpec``: name, shape with "B" for the batch
    axis), zeros at the start of a piece. Output ``X_out`` feeds input ``X`` on the next step.
    """

    def __init__(self, model, batch: int = 1, provider: str = "auto", threads: int = 1):
        """`model` is a checked companion.modelfile.ModelFile (state names match the graph);
        `provider` and `threads` as open_session takes them."""
        self.model = model
        self.session, self.provider_note = open_session(model, provider, threads)
        self.provider = self.session.get_providers()[0]
        self.conflict = _wheel_conflict()
        self.batch = batch
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.state: dict[str, np.ndarray] = {}
        self._batch_axis = {st.name: list(st.shape).index("B") for st in model.state}
        self.step_ms: list[float] = []
        self.reset()

    def reset(self, batch: int | None = None) -> None:
        """Zero state (the start of a piece), for `batch` pieces side by side if given."""
        if batch is not None:
            self.batch = batch
        self.state = {s.name: s.zeros(self.batch) for s in self.model.state}

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one step with `feeds` (the step inputs) plus the current state; advance the
        state. Returns every output by name: the protocol's, then ``X_out`` per state."""
        t0 = time.perf_counter_ns()
        outs = self.session.run(self._outputs, {**feeds, **self.state})
        result = dict(zip(self._outputs, outs))
        for name in self.state:
            self.state[name] = result[f"{name}_out"]
        self.step_ms.append((time.perf_counter_ns() - t0) / 1e6)
        if len(self.step_ms) > 4096:
            del self.step_ms[:2048]
        return result

    def run(
        self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One step from a given `state` (any batch size), leaving the engine's own alone:
        (every output by name, the state after it). Speculation runs on this."""
        outs = self.session.run(self._outputs, {**feeds, **state})
        result = dict(zip(self._outputs, outs))
        return result, {name: result[f"{name}_out"] for name in state}

    def tile(self, snap: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """A batch-1 state repeated `n` times along each tensor's batch axis."""
        return {k: np.repeat(v, n, axis=self._batch_axis[k]) for k, v in snap.items()}

    def take(self, state: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Member `i` of a batched state, as a batch-1 state."""
        return {k: np.take(v, [i], axis=self._batch_axis[k]) for k, v in state.items()}

    def where(self, keep: np.ndarray, new: dict, old: dict) -> dict[str, np.ndarray]:
        """Per batch member: `new` where `keep` (bool [B]) is true, else `old`."""
        out = {}
        for k, v in new.items():
            shape = [1] * v.ndim
            shape[self._batch_axis[k]] = -1
            out[k] = np.where(keep.reshape(shape), v, old[k])
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """The state now (arrays are replaced, never mutated, so no copy is needed)."""
        return dict(self.state)

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self.state = dict(snap)
