"""The export contract a family fills in: `Model.export_spec() -> ExportSpec` (one step of
its protocol, its state, and the rollout the parity check compares; docs/ARCHITECTURE.md,
"Family modules"). export/ consumes it; models/ never imports export/."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ExportSpec:
    """What the exporter needs from a family (see docs/ARCHITECTURE.md, "Family modules").

    ``module(*inputs) -> outputs``: ONE step; inputs are the step input(s) (``token``,
    ``note``, ``frame``...) followed by the state tensors, outputs the protocol's outputs
    followed by ``X_out`` for each state tensor ``X``, in ``state`` order.
    ``example_inputs``: tensors at batch 2 (never 0 or 1: the exporter specializes those).
    ``dynamic_axes``: input name -> {axis: "B"}; None = step inputs on axis 0, state on the
    axis its shape marks "B" (the only dynamic axis a step protocol has).
    ``state``: ``{"name", "shape"}`` per state tensor (float32), "B" marking the batch axis;
    the initial state is zeros.

    For the parity check (required by ``export_checkpoint``):
    ``random_inputs(batch, steps, generator)``: valid step inputs for a rollout, keyed by the
    step input names, with a time axis at 1 (a ``token`` step [B, 1] comes from [B, T], a
    ``frame`` step [B, P] from [B, T, P]).
    ``sequence(inputs)``: the full-sequence forward on those: protocol output name ->
    tensor with the time axis at 1, which the step-by-step outputs must equal.
    ``random_inputs`` may also give a start value for a state tensor, keyed by its name (a
    VAE's latent ``z``): the rollout starts from it instead of zeros, and ``sequence`` reads it.

    ``graphs``: one-shot graphs exported beside the step graph (a VAE's encoder), each
    into ``<file stem>.<name>.onnx`` and named in the step file's metadata under ``name``.
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    state: list[dict]
    dynamic_axes: dict[str, dict[int, str]] | None = None
    random_inputs: Callable[[int, int, torch.Generator], dict[str, torch.Tensor]] | None = None
    sequence: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    graphs: list[GraphSpec] = field(default_factory=list)

    def __post_init__(self):
        self.state = [{"name": s["name"], "shape": list(s["shape"])} for s in self.state]
        names = [s["name"] for s in self.state]
        n_step = len(self.input_names) - len(names)
        if n_step < 1 or list(self.input_names[n_step:]) != names:
            raise ValueError(
                f"ExportSpec: inputs {self.input_names} must be the step "
                f"input(s) followed by the state {names}"
            )
        outs = [n + "_out" for n in names]
        if (
            len(self.output_names) <= len(outs)
            or list(self.output_names[-len(outs) :] if outs else []) != outs
        ):
            raise ValueError(
                f"ExportSpec: outputs {self.output_names} must be the protocol "
                f"output(s) followed by {outs}"
            )
        if len(self.example_inputs) != len(self.input_names):
            raise ValueError("ExportSpec: one example input per input name")
        if self.dynamic_axes is None:
            self.dynamic_axes = {n: {0: "B"} for n in self.step_inputs}
            self.dynamic_axes.update({s["name"]: {s["shape"].index("B"): "B"} for s in self.state})
        for name, x in zip(self.input_names, self.example_inputs):
            for axis in self.dynamic_axes.get(name, {}):
                if x.shape[axis] in (0, 1):
                    raise ValueError(
                        f"ExportSpec: example {name!r} has size {x.shape[axis]} "
                        f"on dynamic axis {axis}; the exporter would bake it in"
                    )

    @property
    def step_inputs(self) -> list[str]:
        return list(self.input_names[: len(self.input_names) - len(self.state)])

    @property
    def outputs(self) -> list[str]:
        """The protocol outputs (without the state outputs)."""
        return list(self.output_names[: len(self.output_names) - len(self.state)])

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        return {
            s["name"]: torch.zeros([batch if d == "B" else d for d in s["shape"]])
            for s in self.state
        }

    def step_slice(self, seq: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
        """The step inputs at time t of a sequence from ``random_inputs``."""
        out = {}
        for name, example in zip(self.input_names, self.example_inputs):
            if name in self.step_inputs:
                x = seq[name]
                out[name] = x[:, t : t + 1] if x.dim() == example.dim() else x[:, t]
        return out


@dataclass
class GraphSpec:
    """A one-shot graph a family exports beside its step graph (docs/ARCHITECTURE.md, "ONNX
    files"): ``module(*inputs) -> outputs``, example inputs (dynamic axes never of size 0
    or 1), ``dynamic_axes`` (input name -> {axis: label}). Parity: ``random_inputs(batch,
    generator)`` gives inputs keyed by name, on which onnxruntime must equal torch, and
    ``reference(inputs)``, when given, the same outputs computed another way (e.g. each
    padded row alone), which torch's must equal too."""

    name: str
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    random_inputs: Callable[[int, torch.Generator], dict[str, torch.Tensor]]
    reference: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


class StepModule(nn.Module):
    """The step graph of a model whose `step(input, *state)` is the protocol's step: what
    `ExportSpec.module` wraps for the token, note and frame LSTMs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, *state):
        return self.model.step(x, *state)
