"""The ODE block: x' = f_t(x) on [0, T] (the config's field: sigma(K(t)*x + b(t)), or the gradient field
-K(t)^T sigma(K(t)*x + b(t))), integrated with torchdiffeq on a grid of `steps` intervals."""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

from contraction.adaptive import PAIRS, DyadicController, Schedule
from contraction.certificates import BlockSpec
from contraction.runge_kutta import TABLEAUS, tableau_step

from nodes.config import ModelConfig
from nodes.field import FIELD_TYPES, ConvField, make_conv

__all__ = ["ODEBlock"]


class ODEBlock(nn.Module):
    """Shared weights: one conv on [0, T]; otherwise conv k acts on [t_k, t_{k+1}], t_k = k T / steps.

    Fixed-step solvers (euler, midpoint, heun2, heun3, ssprk3, rk4) take exactly one step per interval, so euler runs
    x+ = x + h f_k(x); torchdiffeq runs them, except ssprk3 (contraction.runge_kutta.tableau_step). 'dopri5' is
    torchdiffeq's adaptive solver on each interval; 'dopri5-dyadic' and 'bosh3-dyadic' the controlled ones of
    contraction.adaptive (steps (T / steps) 2^-l per input, their accept/reject decisions recorded by `run`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        act, field = config.act, FIELD_TYPES[config.field]
        self.fields = nn.ModuleList(
            field(make_conv(config.channels, config.channels, config.kernel_size, config.padding), act, config.h,
                  config.block_size, config.rho)
            for _ in range(config.num_convs)
        )

    def field_at_step(self, k: int) -> ConvField:
        """The vector field active on the k-th interval."""
        return self.fields[0 if self.config.shared_weights else k]

    def _odeint(self, field: ConvField, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.solver == "dopri5":
            return odeint(field, x, t, method="dopri5", rtol=cfg.rtol, atol=cfg.atol)
        tableau = TABLEAUS[cfg.solver]
        if tableau.torchdiffeq:
            return odeint(field, x, t, method=cfg.solver)
        states = [x]  # a tableau torchdiffeq lacks: one step per grid interval, dt = t_{k+1} - t_k as torchdiffeq's
        for t0, t1 in zip(t[:-1], t[1:]):
            states.append(tableau_step(lambda y: field(t0, y), states[-1], t1 - t0, tableau))
        return torch.stack(states)

    @property
    def controller(self) -> DyadicController:
        return DyadicController(PAIRS[self.config.solver], self.config.atol, self.config.max_halvings)

    def run(self, x: torch.Tensor, record: bool = False) -> tuple[list[torch.Tensor], torch.Tensor, list[Schedule]]:
        """A controlled ('-dyadic') block on x: (states at the grid points, attempts per input, each input's schedule
        if `record`). The intervals' lengths are those of the float32 grid as run (t_{k+1} - t_k)."""
        cfg = self.config
        grid = torch.linspace(0.0, cfg.T, cfg.steps + 1, dtype=x.dtype, device=x.device)
        spans = [grid[k + 1] - grid[k] for k in range(cfg.steps)]
        return self.controller.solve(lambda k: (lambda y, f=self.field_at_step(k): f(None, y)), x, spans, record)

    def trajectory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """States at t_0, ..., t_steps (steps + 1 tensors shaped like x)."""
        cfg = self.config
        if cfg.solver in PAIRS:
            return self.run(x)[0]
        grid = torch.linspace(0.0, cfg.T, cfg.steps + 1, dtype=x.dtype, device=x.device)
        if cfg.shared_weights:
            return list(self._odeint(self.fields[0], x, grid).unbind(0))
        states = [x]
        for k, field in enumerate(self.fields):
            states.append(self._odeint(field, states[-1], grid[k : k + 2])[-1])
        return states

    def spec(self) -> BlockSpec:
        """The block as run, for certificates: one kernel per step (as run: the gradient field's rescaled one), slopes,
        solver, step size, padding, field."""
        cfg = self.config
        act = cfg.act
        with torch.no_grad():  # CPU copies; shared: one tensor, repeated
            distinct = [f.kernel().detach().cpu() for f in self.fields]
        kernels = tuple(distinct[0 if cfg.shared_weights else k] for k in range(cfg.steps))
        return BlockSpec(kernels, act.a, act.b, cfg.h, cfg.solver, cfg.padding, cfg.block_size, cfg.block_size,
                         cfg.field)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trajectory(x)[-1]
