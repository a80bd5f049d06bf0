"""Controlled adaptive Runge-Kutta solvers whose every run is a finite sequence of decisions (docs/METHOD.md section
14.2), so that the bound engine can certify the network as it runs on each input: `PAIRS`, an embedded pair per solver
name ('dopri5-dyadic': Dormand and Prince's 5(4), 'bosh3-dyadic': Bogacki and Shampine's 3(2)).

Each grid interval [t_k, t_k+1] (length H, the block's step T / steps as run in float32) is integrated with steps
h = H 2^-l, l in 0..max_halvings (exact in float32: powers of two). An attempt at level l from state x computes the
pair's stages, the update x+ and the error estimate e = h sum_i (b_i - b^_i) k_i, and decides, with
err = max_j |e_j| (this input's largest component):

- accept (x <- x+) iff err <= atol, or l = max_halvings (the smallest step is always accepted: no decision);
- after a rejection: l <- l + 1 (halve);
- after an acceptance: l <- l - 1 (double) iff err <= atol / grow (grow = 2^(q+1), q the embedded method's order:
  the estimate scales as h^(q+1)), l > 0 and the new position is a multiple of the doubled step (dyadic alignment:
  steps never straddle a grid point); else keep l.

The level carries from one interval to the next; every input starts at level 0. A run on one input is its
`Schedule`: the attempts (interval, level, accepted) in order. Inputs of a batch run together, each at its own step
(one field evaluation per stage on the inputs still running). Every decision compares the float32 error estimate
with float32 thresholds (atol rounded to float32, divided by grow exactly); `decisions` lists, per attempt, the
comparisons the run made and their outcomes: a certificate for a ball around an input holds for its schedule when
every one of them is proven to come out the same at every point of the ball (certify.bounds.decisions);
`group_by_schedule` gathers the inputs that ran the same schedule (one layer sequence each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from contraction.errors import CNodeError
from contraction.runge_kutta import BOSH3, DOPRI5, Tableau, combine

__all__ = ["Attempt", "Schedule", "Decision", "Pair", "PAIRS", "DyadicController", "decisions", "group_by_schedule"]


@dataclass(frozen=True)
class Pair:
    """An embedded pair: the tableau (with its error weights) and the doubling factor 2^(q+1)."""

    tableau: Tableau
    grow: float


PAIRS: dict[str, Pair] = {"dopri5-dyadic": Pair(DOPRI5, 32.0), "bosh3-dyadic": Pair(BOSH3, 8.0)}
"""The controlled solvers by config name (`ModelConfig.solver`)."""


@dataclass(frozen=True)
class Attempt:
    """One attempted step: the grid interval, its level l (h = H 2^-l) and whether it was accepted."""

    interval: int
    level: int
    accepted: bool


Schedule = tuple[Attempt, ...]


@dataclass(frozen=True)
class Decision:
    """A comparison the run made at an attempt: err <= `scale` * atol came out `below` (True) or not."""

    attempt: int
    scale: float
    below: bool


def decisions(schedule: Schedule, max_halvings: int, grow: float) -> list[Decision]:
    """Every comparison of the error estimate with a threshold that the run of `schedule` made and that mattered: the
    acceptance test at each attempt below the smallest step, and the doubling test after each acceptance where a
    doubling was possible and a later attempt follows."""
    out = []
    n = 2**max_halvings
    pos = 0
    for i, att in enumerate(schedule):
        units = 2 ** (max_halvings - att.level)
        if att.level < max_halvings:
            out.append(Decision(i, 1.0, att.accepted))
        if not att.accepted:
            continue
        pos = (pos + units) % n  # an interval's end is the next one's start
        if att.level > 0 and pos % (2 * units) == 0 and i + 1 < len(schedule):
            out.append(Decision(i, 1.0 / grow, schedule[i + 1].level < att.level))
    return out


def group_by_schedule(runs: list[Schedule]) -> dict[Schedule, list[int]]:
    """The indices of the inputs that ran each schedule, in order of first appearance."""
    out: dict[Schedule, list[int]] = {}
    for i, run in enumerate(runs):
        out.setdefault(run, []).append(i)
    return out


@dataclass(frozen=True)
class DyadicController:
    """The solver's settings: the embedded pair, the absolute tolerance on the error estimate's largest component and
    the deepest level (the smallest step H 2^-max_halvings)."""

    pair: Pair
    atol: float
    max_halvings: int

    def __post_init__(self) -> None:
        if not (self.atol > 0) or self.atol == float("inf"):
            raise CNodeError(f"atol must be a finite number > 0, got {self.atol!r}")
        if isinstance(self.max_halvings, bool) or not isinstance(self.max_halvings, int) \
                or not 0 <= self.max_halvings <= 20:
            raise CNodeError(f"max_halvings must be an integer in 0..20, got {self.max_halvings!r}")

    @property
    def threshold(self) -> float:
        """atol as the float32 run compares it."""
        return float(torch.tensor(self.atol, dtype=torch.float32))

    def attempt(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One attempt from x with per-input steps h [B, 1, ...]: (x+, err [B]), err = max_j |e_j|."""
        tab = self.pair.tableau
        ks: list[torch.Tensor] = []
        for row in tab.a:
            ks.append(f(combine(x, h, row, ks)))
        x_new = combine(x, h, tab.b, ks)
        assert tab.error is not None
        est = combine(torch.zeros_like(x), h, tab.error, ks)
        return x_new, est.detach().abs().flatten(1).amax(1)

    def solve(self, field_at: Callable[[int], Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
              spans: list[torch.Tensor], record: bool = False
              ) -> tuple[list[torch.Tensor], torch.Tensor, list[Schedule]]:
        """Integrate over the intervals (`spans[k]`: interval k's length H_k as run, a 0-d tensor of x's dtype;
        `field_at(k)`: the field on it). Returns the states at the grid points (len(spans) + 1), the attempts per
        input [B], and (if `record`) every input's schedule."""
        B, top = x.shape[0], self.max_halvings
        n = 2**top
        level = torch.zeros(B, dtype=torch.long, device=x.device)
        attempts = torch.zeros(B, dtype=torch.long, device=x.device)
        traces: list[list[Attempt]] = [[] for _ in range(B)] if record else []
        atol, grow = self.threshold, self.threshold / self.pair.grow  # exact in float32
        shape = (-1,) + (1,) * (x.dim() - 1)
        states = [x]
        for k, H in enumerate(spans):
            f = field_at(k)
            pos = torch.zeros(B, dtype=torch.long, device=x.device)
            while True:
                idx = torch.nonzero(pos < n).flatten()
                if not len(idx):
                    break
                lv = level[idx]
                h = (H * torch.pow(2.0, -lv.to(x.dtype))).view(shape)  # H 2^-l, exact
                x_new, err = self.attempt(f, x[idx], h)
                accept = (lv == top) | (err <= atol)
                units = torch.pow(2, top - lv)
                moved = pos[idx] + units * accept
                grows = accept & (err <= grow) & (lv > 0) & (moved % (2 * units) == 0)
                x = x.index_copy(0, idx, torch.where(accept.view(shape), x_new, x[idx]))
                pos[idx] = moved
                level[idx] = lv + (~accept).long() - grows.long()
                attempts[idx] += 1
                if record:
                    for i, l_, a in zip(idx.tolist(), lv.tolist(), accept.tolist()):
                        traces[i].append(Attempt(k, l_, a))
            states.append(x)
        return states, attempts, [tuple(t) for t in traces]

