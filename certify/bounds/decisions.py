"""Proving that a controlled solver's run takes the same decisions at every input of a set (docs/METHOD.md section
14.2).

A run of the controlled solver on one input is its schedule (contraction.adaptive); the network it computes is the
schedule's unrolled layers (certify.bounds.unrolled, `schedule=`). A certificate of those layers over an input set
holds for the network as it runs when every comparison of the error estimate with a threshold that the run made
(`contraction.adaptive.decisions`) comes out the same at every input of the set. For the attempt at state x (the
output of the schedule's last accepted step before it) the float32 run compares err = max_j |fl(e_j)| with the
threshold, e = h sum_i (b_i - b^_i) k_i(x). Over the set:

- the float32 state is within the layer's derived error bound d of the exact one (certify.bounds.roundoff), so the
  state as run lies in the exact state's box widened by d;
- e over that widened box: the estimator step's stage-by-stage boxes (RKStep.estimate_bounds: centre value +-
  h sum |b_i - b^_i| kappa_i, met with interval arithmetic), then, where that leaves a decision open, the linear form
  of e in the input (RKStep.estimate_symbolic over the forward linear relaxation of the layers before it, its error
  widened by d): the error weights sum to 0, so the first-order terms cancel in the linear part and only the
  relaxations' second-order gaps remain;
- |fl(e_j) - e_j| <= the estimate's own float32 error (RKStep.estimate_rounding: the stages' rounding chain from an
  exact state).

'err <= thr' is proven where the largest |e_j| bound plus its rounding is below thr, 'err > thr' where one component's
interval minus its rounding stays outside [-thr, thr]; a NaN bound proves nothing."""

from __future__ import annotations

import torch

from contraction.adaptive import Decision
from certify.bounds.attacks import per_input_eps
from certify.bounds.layers import Box, Symbolic, meet
from certify.bounds.linear import DEFAULT_BUDGET, symbolic_layers, symbolic_range
from certify.bounds.local import LayerBounds
from certify.bounds.roundoff import ENGINE_MARGIN, float32_errors, lipschitz_met
from certify.bounds.unrolled import Unrolled

__all__ = ["decision_proofs"]

_Bound = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # e's lower and upper bounds and its float32 error, [B, ...]


def _decide(bound: _Bound, decision: Decision, threshold: float) -> torch.Tensor:
    """[B]: the decision's outcome is proven for every input of the set."""
    lo, hi, rnd = (t.flatten(1) for t in bound)
    thr = decision.scale * threshold
    if decision.below:
        upper = (torch.maximum(lo.abs(), hi.abs()) + rnd).amax(1)
        return upper * (1 + ENGINE_MARGIN) < thr
    lower = torch.maximum(lo, -hi).clamp_min(0.0) - rnd
    return (lower * (1 - ENGINE_MARGIN) > thr).any(1)


def _prove(bounds: list[_Bound], decisions: list[Decision], threshold: float) -> torch.Tensor:
    return torch.stack([_decide(bounds[d.attempt], d, threshold) for d in decisions], 1)


def decision_proofs(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, bounds: LayerBounds,
                    decisions: list[Decision], threshold: float, *, linear: bool = True,
                    budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """[B, D] (D = len(decisions)): decision d of the schedule `net` was unrolled from is proven to come out the same
    at every input of the set around u[b] (`bounds`: the local boxes over it). `threshold`: the controller's atol as
    the float32 run compares it; `linear`: try the linear forms where the boxes leave a decision open."""
    B = u.shape[0]
    if not decisions:
        return torch.ones(B, 0, dtype=torch.bool, device=u.device)
    met = lipschitz_met(net, u, eps, norm, bounds)
    errors = float32_errors(net, met)
    est_bounds: list[_Bound] = []
    pres = []
    for index, est in net.estimators:
        lo, hi = met.boxes[index]
        d = errors[index]
        box = Box(lo - d, hi + d, 0.5 * (lo + hi))
        (elo, ehi), pre = est.estimate_bounds(box)
        est_bounds.append((elo, ehi, est.estimate_rounding(box.lo, box.hi, pre)))
        pres.append(pre)
    proven = _prove(est_bounds, decisions, threshold)
    open_ = torch.nonzero(~proven.all(1)).flatten()
    if not linear or not len(open_):
        return proven
    wanted = {d.attempt for d, ok in zip(decisions, proven[open_].all(0).tolist()) if not ok}
    n = u[0].numel()
    widest = max(lo[0].numel() for lo, _ in met.boxes)
    step = max(1, budget // (10 * n * widest))
    for start in range(0, len(open_), step):
        rows = open_[start:start + step]
        sym = _symbolic_estimates(net, u[rows], per_input_eps(eps, u[rows]).flatten(), norm, bounds.select(rows),
                                  [e[rows] for e in errors], [(p[0][rows], p[1][rows]) for p in pres], wanted)
        refined = []
        for (elo, ehi, rnd), s in zip(est_bounds, sym):
            lo, hi = (elo[rows], ehi[rows]) if s is None else meet((elo[rows], ehi[rows]), s)
            refined.append((lo, hi, rnd[rows]))
        proven[rows] |= _prove(refined, decisions, threshold)
    return proven


def _symbolic_estimates(net: Unrolled, u: torch.Tensor, eps: torch.Tensor, norm: str, local: LayerBounds,
                        errors: list[torch.Tensor], pres: list[tuple[torch.Tensor, torch.Tensor]], wanted: set[int]
                        ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """The error estimate of each attempt in `wanted` bounded through its linear form in the input (module
    docstring); None for the others."""
    lo_u, hi_u = local.input_lo, local.input_hi
    ball = eps if norm == "2" else None

    def concretize(s: Symbolic) -> tuple[torch.Tensor, torch.Tensor]:
        return symbolic_range(s, lo_u, hi_u, u, ball)

    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(net.estimators)
    last = max(net.estimators[a][0] for a in wanted)
    for i, s, _ in symbolic_layers(net, u, local, concretize, stop=last + 1):
        for a, (index, est) in enumerate(net.estimators):
            if index == i and a in wanted:
                wide = Symbolic(s.A, s.c, s.r + errors[i])
                out[a] = concretize(est.estimate_symbolic(wide, pres[a], concretize))
    return out
