"""The classifier as it runs, unrolled into the bound engine's layer sequence: [normalise], stem (conv, sigma)...,
one solver step per interval (Euler: x+ = x + h sigma(K_k x + b_k), gradient field: x+ = x - h K_k^T sigma(K_k x +
b_k); a fixed-step Runge-Kutta solver: its tableau's stages of that field, RKStep), flatten, head (linear, sigma)...,
linear. torchdiffeq's adaptive dopri5 has no such form: its steps depend on the input in ways no finite sequence
records; a controlled solver ('dopri5-dyadic', 'bosh3-dyadic') is unrolled along one input's schedule
(contraction.adaptive: one RKStep of its pair per accepted step, of its size H 2^-l as run). Pixel averaging
(`readout='avgpool'`) is folded into the first head layer (its weights divided by H W and repeated over the pixels).

The layers are the real-arithmetic twin of the network as it runs in its own dtype: every constant the network rounds
(the normalisation's mean and std, cast to the input's dtype) is taken as rounded; each Euler step records the step
the network takes (`h_run`: t_{k+1} - t_k of torchdiffeq's grid in that dtype) for the float32 rules, which bound the
rest (certify.bounds.roundoff)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from contraction.adaptive import PAIRS, Schedule
from contraction.convops import conv_output_size
from contraction.errors import CNodeError
from contraction.runge_kutta import FIXED_STEP, TABLEAUS
from contraction.slopes import Activation
from certify.bounds.layers import STEP_LAYERS, Act, Conv, Flatten, Layer, Linear, Normalize, RKStep
from nodes.classifier import ConvNODE

__all__ = ["Unrolled", "unroll"]


@dataclass(frozen=True)
class Unrolled:
    """A sequence of layers ending in the Linear layer to the classes; `block` = the Euler steps' index range.
    `estimators` (a controlled solver's schedule): per attempt, the index of the layer whose output is the attempt's
    state and the pair's full step (RKStep with the error weights, FSAL stage included) the attempt computes there."""

    layers: tuple[Layer, ...]
    block: tuple[int, int]
    act: Activation
    estimators: tuple[tuple[int, RKStep], ...] = ()
    _factors: dict[tuple[int, str, bool], torch.Tensor] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.layers or not isinstance(self.layers[-1], Linear):
            raise CNodeError("a network must end with a linear layer to the classes")

    @property
    def final(self) -> Linear:
        """The last layer (logits = W x + c)."""
        return self.layers[-1]  # type: ignore[return-value]

    @property
    def readout_weight(self) -> torch.Tensor:
        return self.final.weight

    @property
    def readout_bias(self) -> torch.Tensor:
        return self.final.bias

    @property
    def steps(self) -> tuple[Layer, ...]:
        return self.layers[self.block[0]:self.block[1]]  # type: ignore[return-value]

    def factor(self, i: int, norm: str, pre: bool = False) -> torch.Tensor:
        """Layer i's Lipschitz factor in `norm` (`pre`: of its pre-activation map), kept once computed where the
        weights are fixed (a certificate's copy: spectral norms are the costly part); recomputed where they take
        gradients."""
        layer = self.layers[i]
        compute = layer.pre_lipschitz if pre else layer.lipschitz
        key = (i, norm, pre)
        if key in self._factors:
            return self._factors[key]
        value = compute(norm)
        if not value.requires_grad:
            self._factors[key] = value
        return value

    def outputs(self, u: torch.Tensor) -> list[torch.Tensor]:
        """The input and every layer's output: [u, layer_0(u), ..., logits]."""
        out = [u]
        for layer in self.layers:
            out.append(layer(out[-1]))
        return out

    def preactivations(self, u: torch.Tensor, outs: list[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """The pre-activation of every nonlinear layer (its input for sigma, T x + b for an Euler step); `outs`: the
        layer outputs when already computed (`outputs(u)`)."""
        outs = self.outputs(u) if outs is None else outs
        pre = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Act):
                pre[i] = outs[i]
            elif layer.nonlinear:
                pre[i] = layer.preactivation(outs[i])  # type: ignore[attr-defined]
        return pre

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.outputs(u)[-1]


def _cast(t: torch.Tensor, dtype: torch.dtype | None, detach: bool) -> torch.Tensor:
    t = t.detach() if detach else t
    return t.to(dtype) if dtype is not None else t


def _conv(conv: nn.Conv2d, size: int, dtype: torch.dtype | None, detach: bool,
          weight: torch.Tensor | None = None) -> Conv:
    w, b = conv.weight if weight is None else weight, conv.bias
    if b is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if conv.dilation != (1, 1) or conv.groups != 1 or len(set(conv.stride)) != 1 or len(set(conv.padding)) != 1:
        raise CNodeError("the bound engine takes undilated, ungrouped convs with equal strides and paddings")
    return Conv(_cast(w, dtype, detach), _cast(b, dtype, detach), conv.stride[0], conv.padding[0],
                conv.padding_mode, size)


def unroll(model: ConvNODE, *, dtype: torch.dtype | None = torch.float64, detach: bool = True,
           any_solver: bool = False, schedule: Schedule | None = None) -> Unrolled:
    """The model's layers (float64 copies by default; `detach=False, dtype=None` keeps them trainable).

    The block's layers are its solver's steps (Euler steps, or RKStep of a fixed-step tableau around the field's Euler
    layer; a controlled solver: one RKStep of its pair per accepted attempt of `schedule`); an adaptive solver without
    a schedule is refused unless `any_solver` (for callers that use only the layers around the block)."""
    cfg = model.config
    tableau = TABLEAUS.get(cfg.solver)
    pair = PAIRS.get(cfg.solver)
    if schedule is not None and pair is None:
        raise CNodeError(f"a schedule is a controlled solver's run ({', '.join(PAIRS)}); this model's solver is "
                         f"{cfg.solver!r}")
    if tableau is None and not any_solver and schedule is None:
        if pair is not None:
            raise CNodeError(f"solver {cfg.solver!r} takes its steps per input: the bound engine unrolls one input's "
                             "schedule at a time (cnode certify does)")
        raise CNodeError(f"solver {cfg.solver!r} chooses its steps per input (adaptive): the bound engine certifies the "
                         f"fixed-step solvers {', '.join(FIXED_STEP)} as run, and the controlled {', '.join(PAIRS)} "
                         "(dyadic steps) along each input's run")
    act = model.activation
    layers: list[Layer] = []
    like = model.head[0].weight  # the network's dtype and device
    if cfg.mean:
        shape = (cfg.in_channels, 1, 1)
        as_run = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device).to(dtype or like.dtype).view(shape)  # noqa: E731
        layers.append(Normalize(as_run(cfg.mean), as_run(cfg.std)))
    size = cfg.image_size
    for conv in model.stem:
        layers += [_conv(conv, size, dtype, detach), Act(act)]
        size = conv_output_size(size, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    start = len(layers)
    step = STEP_LAYERS[cfg.field]
    kernels = [field.kernel_and_bound() for field in model.block.fields]  # as run (the gradient field: rescaled)
    grid = torch.linspace(0.0, cfg.T, cfg.steps + 1, dtype=like.dtype, device=like.device)  # as nodes.block builds it
    h_run = (grid[1:] - grid[:-1]).tolist()
    # (interval, step as run, exact step) of each layer: one per interval, or the schedule's accepted attempts
    plan = [(k, h_run[k], cfg.h, True) for k in range(cfg.steps)] if schedule is None else \
        [(a.interval, h_run[a.interval] * 2.0**-a.level, h_run[a.interval] * 2.0**-a.level, a.accepted)
         for a in schedule]
    estimators = []
    for k, run, exact, accepted in plan:
        field = model.block.field_at_step(k)
        kernel, bound = kernels[0 if cfg.shared_weights else k]
        # a live (training) unroll reuses the field's spectral bound; a certificate's copy recomputes it in float64
        extra = {"smax": bound} if bound is not None and not detach else {}
        conv = _conv(field.conv, size, dtype, detach, kernel)
        euler = step(conv, exact, act, h_run=run, **extra)  # type: ignore[call-arg]
        if pair is not None:
            estimators.append((len(layers) - 1, RKStep(euler, pair.tableau)))
            if accepted:
                layers.append(RKStep(euler, pair.tableau.update()))
        else:
            layers.append(euler if tableau is None or tableau.name == "euler" else RKStep(euler, tableau))
    block = (start, len(layers))
    layers.append(Flatten((cfg.channels, size, size)))
    for i, lin in enumerate(model.head):
        W, c = _cast(lin.weight, dtype, detach), _cast(lin.bias, dtype, detach)
        sums = None
        if i == 0 and cfg.readout == "avgpool":
            W = (W / size**2).repeat_interleave(size**2, dim=1)
            sums = size**2 + 1 + lin.in_features + 2  # the mean's sum and division, then the layer's sums
        if i > 0:
            layers.append(Act(act))
        layers.append(Linear(W, c, sums))
    return Unrolled(tuple(layers), block, act, tuple(estimators))
