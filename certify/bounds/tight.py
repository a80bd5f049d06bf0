"""Tight certificates at a given eps: the stages, escalated per input, and radii by bisection.

The stages, cheapest first (each certifies an input when every lower bound of z_y - z_j, j != y, over the closed
eps-ball intersected with [0, 1] is a number above its float32 round-off slack; float64 on an unrolled copy of the
model; a NaN or infinite bound leaves its input open and is counted):
- 'local': interval + mean-value boxes through every layer (certify.bounds.local);
- 'crown': one linear backward pass over those boxes (CROWN-IBP style, certify.bounds.crown), for the margins the boxes
  leave open;
- 'linear': linear intermediate bounds (certify.bounds.linear) met with the boxes, then the backward pass over them;
- 'alpha': the backward pass over the linear stage's boxes again, each open margin with its own optimised lower lines
  (certify.bounds.optimise, alpha-CROWN's idea);
- 'refine': rounds of back-substituted intermediate bounds for the neurons whose relaxation gaps weigh most in the
  open margins, then the backward pass again (certify.bounds.backsub.refine_margins), with optimised lower lines over
  the refined boxes before any branching, at most `seconds` per input.
`escalate` runs them in order, each only on the inputs the earlier ones left unproven (sharing the boxes: the local
ones, then the linear stage's), and keeps the best bound of every margin so far: a later stage never loses what an
earlier one proved. A `falsify` hook (an attack) may drop inputs with an adversarial example before the first
expensive stage: no bound can prove those.

The slack: given (scalar, per input or per margin), or `None`: derived, the float32 error bound of every logit over
the same ball from the local boxes (certify.bounds.roundoff), so each certificate holds for the float32 network as it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from contraction.errors import CNodeError
from certify.bounds.backsub import refine_margins
from certify.bounds.crown import crown_stage, float32_boxes
from certify.bounds.linear import linear_bounds
from certify.bounds.local import LayerBounds, box_margins, local_bounds
from certify.bounds.optimise import raise_open
from certify.bounds.radius import unproven
from certify.bounds.roundoff import Float32Terms, ball_error, ball_terms, margin_slack
from certify.bounds.unrolled import Unrolled

__all__ = ["TIGHT_STAGES", "Escalation", "stage_margins", "escalate", "certified_at", "tight_radii"]

TIGHT_STAGES = ("local", "crown", "linear", "alpha", "refine")
EXPENSIVE = ("linear", "alpha", "refine")  # the falsify hook runs before the first of these
REFINE_SECONDS = 5.0  # the refine stage's time per input (cnode certify --budget)

Falsify = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]  # (input indices, eps) -> adversarial found
Slack = Union[torch.Tensor, float, None]  # scalar, [B], [B, K], or None: derived (the float32 error over the ball)


def _rows(t: torch.Tensor | float, idx: torch.Tensor) -> torch.Tensor | float:
    """The rows `idx` of a per-input tensor; scalars (and 0-d tensors) pass through."""
    return t[idx] if isinstance(t, torch.Tensor) and t.dim() else t


def stage_margins(stage: str, net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
                  norm: str, slack: torch.Tensor | float = 0.0, local: LayerBounds | None = None, *,
                  linear: bool = False, refine_seconds: float = REFINE_SECONDS, terms: Float32Terms | None = None
                  ) -> tuple[torch.Tensor, LayerBounds, torch.Tensor]:
    """[B, K] lower bounds of z_y - z_j (+inf at j = y) by one stage, the boxes it used: `local` (the local boxes,
    built when not given; `linear=True`: they are already the linear stage's), or the linear stage's where it built
    them, and [B, K] lower bounds of the float32 network's margins by its backward passes with the float32 `terms`
    (-inf where none ran or without terms). `refine_seconds`: the refine stage's time per input.

    'crown', 'linear' and 'refine' bound only the margins their boxes leave unproven (`slack`: scalar, [B] or [B, K])
    and keep the box bound for the others (and wherever it is larger)."""
    if stage not in TIGHT_STAGES:
        raise CNodeError(f"tight stage must be one of {list(TIGHT_STAGES)}, got {stage!r}")
    u = u.to(net.readout_weight.dtype)
    if local is None:
        local = local_bounds(net, u, eps, norm)
    if stage == "local":
        m = box_margins(net, labels, local.lo, local.hi)
        return m, local, torch.full_like(m, -torch.inf)
    bounds = linear_bounds(net, u, eps, norm, local=local) if stage != "crown" and not linear else local
    if terms is not None and stage != "crown":  # the float32 terms from the linear stage's (smaller) magnitudes
        terms = ball_terms(net, u, eps, norm, bounds)
    _, m, m32 = crown_stage(net, u, labels, eps, norm, slack, bounds, terms)
    if stage == "alpha":
        m, m32 = raise_open(net, bounds if terms is None else float32_boxes(bounds, terms), u, labels, eps, norm, m,
                            m32, slack, terms)
    if stage == "refine":
        r = refine_margins(net, u, labels, eps, norm, bounds, m, slack, seconds=refine_seconds, terms=terms,
                           rounded=m32)
        m, m32 = r.margins, r.rounded
    return m, bounds, m32


@dataclass
class Escalation:
    """Per input: `stage` = the index (in the stages run) of the stage that certified it, -1 if none; `falsified`:
    an adversarial example was found (by the falsify hook); `margins`: the best lower bounds reached, [B, K] (-inf
    where no stage gave a number); `nonfinite`: some stage's bound or the slack was NaN or infinite (the input stayed
    open there); `slack` [B, K]: the slack each margin had to clear; `seconds` per stage (and 'attack')."""

    stage: torch.Tensor
    falsified: torch.Tensor
    margins: torch.Tensor
    nonfinite: torch.Tensor
    slack: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def certified(self) -> torch.Tensor:
        return self.stage >= 0


def escalate(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
             stages: tuple[str, ...] = TIGHT_STAGES, slack: Slack = 0.0, falsify: Falsify | None = None,
             local: LayerBounds | None = None, refine_seconds: float = REFINE_SECONDS,
             terms: Float32Terms | None = None) -> Escalation:
    """Run `stages` in order, each on the inputs still unproven (per-input `eps` and `slack` allowed; `slack=None`:
    derived from the local boxes, with the float32 terms; `local`: those boxes when already computed;
    `refine_seconds`: the refine stage's time per input; `terms`: the float32 terms over the same balls).

    A margin is proven when a stage's bound exceeds its slack, or (with `terms`) a stage's backward pass bounds the
    float32 margin above 0 (certify.bounds.crown.rounded_margins): the errors weighed by the functional that
    reaches them, where the slack carries them forward through |layer| (far larger on expansive blocks)."""
    B = u.shape[0]
    dev = u.device
    K = net.readout_weight.shape[0]
    stage = torch.full((B,), -1, dtype=torch.long, device=dev)
    falsified = torch.zeros(B, dtype=torch.bool, device=dev)
    best = torch.full((B, K), -torch.inf, dtype=net.readout_weight.dtype, device=dev)
    seconds: dict[str, float] = {}
    todo = torch.arange(B, device=dev)
    if slack is None:
        t0 = time.perf_counter()
        u = u.to(net.readout_weight.dtype)
        if local is None:
            local = local_bounds(net, u, eps, norm)
        terms = ball_terms(net, u, eps, norm, local)
        slack = margin_slack(terms.errors[-1] if terms is not None else ball_error(net, u, eps, norm, local), labels)
        seconds["local"] = time.perf_counter() - t0
    slack_t = torch.as_tensor(slack, dtype=best.dtype, device=dev)
    slack_t = (slack_t.reshape(-1, 1) if slack_t.dim() == 1 else slack_t).expand(B, K)
    is_y = torch.nn.functional.one_hot(labels, K).bool()
    nonfinite = (~torch.isfinite(slack_t) & ~is_y).any(1)
    proven = torch.zeros(B, K, dtype=torch.bool, device=dev)
    linear = False  # `local` holds the linear stage's boxes
    for i, name in enumerate(stages):
        if not len(todo):
            break
        if name == "refine" and refine_seconds <= 0:  # no time for it: the stage does not run
            continue
        if falsify is not None and name in EXPENSIVE and "attack" not in seconds:
            t0 = time.perf_counter()
            bad = falsify(todo, _rows(eps, todo)).to(dev)
            falsified[todo[bad]] = True
            todo, local = todo[~bad], local.select(~bad) if local is not None else None
            seconds["attack"] = seconds.get("attack", 0.0) + time.perf_counter() - t0
            if not len(todo):
                break
        t0 = time.perf_counter()
        m, local, m32 = stage_margins(name, net, u[todo], labels[todo], _rows(eps, todo), norm, slack_t[todo],
                                      local, linear=linear, refine_seconds=refine_seconds,
                                      terms=None if terms is None else terms.select(todo))
        linear = linear or name in EXPENSIVE
        bad = ~torch.isfinite(m) & ~is_y[todo]
        nonfinite[todo[bad.any(1)]] = True
        m = torch.maximum(m.masked_fill(bad, -torch.inf), best[todo])  # a non-number proves nothing
        best[todo] = m
        proven[todo] |= ~unproven(m, slack_t[todo]) | (m32 > 0)  # NaN compares false: proves nothing
        got = proven[todo].all(1)
        stage[todo[got]] = i
        todo, local = todo[~got], local.select(~got)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return Escalation(stage, falsified, best, nonfinite, slack_t, seconds)


def _chain(method: str) -> tuple[str, ...]:
    """The stages up to `method` (a stage name), in order."""
    if method not in TIGHT_STAGES:
        raise CNodeError(f"tight method must be one of {list(TIGHT_STAGES)}, got {method!r}")
    return TIGHT_STAGES[:TIGHT_STAGES.index(method) + 1]


def certified_at(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                 method: str, slack: Slack = 0.0, falsify: Falsify | None = None,
                 refine_seconds: float = REFINE_SECONDS) -> torch.Tensor:
    """Boolean [B]: certified by one of the stages up to `method` (escalated per input)."""
    return escalate(net, u, labels, eps, norm, _chain(method), slack, falsify,
                    refine_seconds=refine_seconds).certified


def tight_radii(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, norm: str, method: str,
                slack: Slack, lo: torch.Tensor, hi: float, iters: int = 12,
                falsify: Falsify | None = None, refine_seconds: float = REFINE_SECONDS) -> torch.Tensor:
    """Largest eps in [lo, hi] certified by the stages up to `method`, by bisection per input (lo: radii already
    proven, e.g. global). `slack=None`: derived at every eps tried (the float32 error over that ball).

    The certified set only grows as eps shrinks, so the invariant 'certified at lo' holds throughout."""
    lo = lo.to(torch.float64).clone()
    up = torch.full_like(lo, hi)
    ok = certified_at(net, u, labels, up, norm, method, slack, falsify, refine_seconds)
    lo = torch.where(ok, up, lo)
    for _ in range(iters):
        todo = ~ok & (up - lo > 1e-4 * up)
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        mid = 0.5 * (lo + up)
        sub = None if falsify is None else (lambda i, e, idx=idx: falsify(idx[i], e))
        good = certified_at(net, u[todo], labels[todo], mid[todo], norm, method, _rows(slack, idx), sub,
                            refine_seconds)
        sub_lo, sub_up = lo[todo], up[todo]
        lo[todo] = torch.where(good, mid[todo], sub_lo)
        up[todo] = torch.where(good, sub_up, mid[todo])
    return lo
