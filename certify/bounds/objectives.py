"""Certified training objectives: cross-entropy of the certified worst-case logits over the eps-ball, and their
registry keyed by `TrainConfig.certified_method` (nodes.train imports it: training needs the engine, so the engine
sits below training and knows the model, never the training loop).

For every wrong class j the logit z_j - z_y is replaced by an upper bound over the ball, -m_j, with m_j a
differentiable lower bound of the margin z_y - z_j. The methods (`TrainConfig.certified_method`):
- 'ibp': m_j from interval bound propagation (each layer's `interval` rule, certify.bounds.local.ibp_bounds): about the
  cost of two forward passes, the fast path;
- 'crown-ibp' (Zhang et al. 2020): beta * CROWN-IBP + (1 - beta) * IBP margins, the CROWN-IBP bound being one
  backward linear-relaxation pass (certify.bounds.crown) over the IBP boxes; beta = 1 - eps(t) / eps_train falls from 1
  to 0 over the eps ramp (the linear bound guides the early, small-eps phase);
- 'mtl-ibp' (De Palma et al. 2023): alpha * CE(IBP worst case) + (1 - alpha) * CE(u_adv), u_adv a PGD point in the
  ball (`attack_steps` steps from x at the default one step, i.e. FGSM; with more steps a random start seeded by
  `seed`, the same draw every batch);
- 'local': m_j from the mean-value boxes of certify.bounds.local (the mean-value enclosure of every Euler step, as
  `--bound local` computes them but without its interval pass: `local_bounds(interval=False)`), tighter than IBP
  and slower;
- 'lipschitz' (Lipschitz-margin training): m_j = (z_y - z_j)(u) - eps * L_yj, L_yj the global pairwise constant;
  its loss is one of LIPSCHITZ_LOSSES (`TrainConfig.lipschitz_loss`): 'margin', CE(-m) as for the box methods;
  'gloro' (Leino et al. 2021), CE over [z, z_bot] with the bottom class z_bot = max_{j != c} z_j + eps L_cj, c the
  predicted class (no gradient through the argmax); 'trades', CE(z, y) + lambda KL(softmax([z, -inf]) ||
  softmax([z, z_bot])) = CE(z, y) + lambda softplus(z_bot - logsumexp(z)) (GloRo's TRADES loss).
A controlled solver ('dopri5-dyadic', 'bosh3-dyadic') is bounded along each input's schedule (the inputs grouped by
schedule, each group through its own layers); its accept/reject decisions are not part of the training bound (the
certificate proves them, certify.bounds.decisions).
The certified loss is CE([-m_j]_j, y) (the y entry is 0), an upper bound of the worst-case CE over the ball; an
input counts as certified in training when every m_j > 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from contraction.adaptive import PAIRS, group_by_schedule
from contraction.errors import CNodeError
from certify.bounds.attacks import pgd
from certify.bounds.crown import backward_margins
from certify.bounds.lipschitz import layer_constants
from certify.bounds.local import LayerBounds, box_margins, ibp_bounds, local_bounds
from certify.bounds.unrolled import Unrolled, unroll
from nodes.classifier import ConvNODE
from nodes.config import CERTIFIED_METHODS, TrainConfig

__all__ = ["RobustLoss", "Objective", "OBJECTIVES", "make_objective", "lipschitz_constants", "certified_margins",
           "LIPSCHITZ_LOSSES", "lipschitz_margins", "bottom_logit",
           "certified_loss", "certified_objective", "crown_beta", "warmup_regularizer", "WARMUP_TOLERANCE"]


@dataclass(frozen=True)
class RobustLoss:
    """A robust loss of one batch and which of its inputs the training bound proves (every margin > 0 over the
    ball; None when the objective bounds nothing, e.g. at eps 0)."""

    loss: torch.Tensor
    certified: torch.Tensor | None = None


Objective = Callable[[ConvNODE, torch.Tensor, torch.Tensor, torch.Tensor | None, float], RobustLoss]
"""L(model, x, y, logits, eps) -> RobustLoss (e.g. cross-entropy of certified worst-case logits at eps); logits are
the clean pass's, or None where the training step skips it (the objective then runs what it needs itself)."""


def lipschitz_constants(model: ConvNODE, norm: str) -> torch.Tensor:
    """Differentiable pairwise constants L_yj [K, K] of the whole network (each layer's own factor, the solver steps'
    per-step bounds: the global bound of certify.bounds.lipschitz without the channel metric)."""
    return layer_constants(unroll(model, dtype=None, detach=False), norm)


def lipschitz_margins(z: torch.Tensor, y: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The Lipschitz margins [B, K]: z_y - z_j - shift[y, j] (shift = eps x the pairwise constants), 0 at j = y."""
    m = z.gather(1, y[:, None]) - z - shift[y]
    return m.masked_fill(F.one_hot(y, z.shape[1]).bool(), 0.0)


def bottom_logit(z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """GloRo's bottom class [B]: max over j != c of z_j + shift[c, j], c = argmax z the predicted class (shift = eps x
    the pairwise constants [K, K]); above z_c exactly when the Lipschitz margin does not prove c."""
    c = z.argmax(1).detach()
    shifted = (z + shift[c]).masked_fill(F.one_hot(c, z.shape[1]).bool(), -torch.inf)
    return shifted.amax(1)


def _margin_loss(z: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, lam: float) -> torch.Tensor:
    return F.cross_entropy(-lipschitz_margins(z, y, shift), y)


def _gloro_loss(z: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, lam: float) -> torch.Tensor:
    return F.cross_entropy(torch.cat([z, bottom_logit(z, shift)[:, None]], 1), y)


def _trades_loss(z: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, lam: float) -> torch.Tensor:
    return F.cross_entropy(z, y) + lam * F.softplus(bottom_logit(z, shift) - torch.logsumexp(z, 1)).mean()


LIPSCHITZ_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "margin": _margin_loss, "gloro": _gloro_loss, "trades": _trades_loss}
"""loss(logits [B, K], labels, shift = eps L [K, K], trades lambda) keyed by `TrainConfig.lipschitz_loss`."""


def crown_beta(eps: float, eps_train: float) -> float:
    """CROWN-IBP's weight of the linear bound: 1 at eps 0, 0 once the ramp reaches the training eps."""
    return max(0.0, 1.0 - eps / eps_train) if eps_train > 0 else 0.0


def certified_margins(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
                      logits: torch.Tensor | None = None, *, beta: float = 0.0) -> torch.Tensor:
    """Differentiable lower bounds of z_y - z_j over the eps-ball, [B, K] (0 at j = y). `beta`: crown-ibp's mix."""
    if method == "lipschitz":
        return lipschitz_margins(model(x) if logits is None else logits, y, eps * lipschitz_constants(model, norm))
    if method not in CERTIFIED_METHODS:
        raise CNodeError(f"certified method must be one of {list(CERTIFIED_METHODS)}, got {method!r}")
    if model.config.solver in PAIRS:  # a controlled solver: each group of inputs through its own schedule's layers
        with torch.no_grad():
            runs = model.block.run(model.embedding(x), record=True)[2]
        m = torch.zeros(len(y), model.config.num_classes, dtype=x.dtype, device=x.device)
        for run, idx in group_by_schedule(runs).items():
            rows = torch.tensor(idx, device=x.device)
            m = m.index_put((rows,), _margins(unroll(model, dtype=None, detach=False, schedule=run), x[rows], y[rows],
                                              eps, norm, method, beta))
        return m
    return _margins(unroll(model, dtype=None, detach=False), x, y, eps, norm, method, beta)  # refuses dopri5


def _margins(net: Unrolled, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
             beta: float) -> torch.Tensor:
    return _margins_and_boxes(net, x, y, eps, norm, method, beta)[0]


def _margins_and_boxes(net: Unrolled, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
                       beta: float) -> tuple[torch.Tensor, LayerBounds]:
    is_y = F.one_hot(y, net.readout_weight.shape[0]).bool()
    if method == "local":
        b = local_bounds(net, x, eps, norm, interval=False)
    else:  # ibp, crown-ibp, mtl-ibp
        b = ibp_bounds(net, x, eps, norm)
    m = box_margins(net, y, b.lo, b.hi).masked_fill(is_y, 0.0)
    if method == "crown-ibp" and beta > 0:
        linear = backward_margins(net, b, x, y, eps, norm).masked_fill(is_y, 0.0)
        m = beta * linear + (1.0 - beta) * m
    return m, b


WARMUP_TOLERANCE = 0.5
"""The warm-up regulariser's tolerance tau (Shi et al. 2021's value)."""


def warmup_regularizer(bounds: LayerBounds, tolerance: float = WARMUP_TOLERANCE) -> torch.Tensor:
    """Shi et al. 2021's warm-up terms on the training boxes, averaged over the nonlinear layers' pre-activation boxes
    [l, u] (centre c, half-width r): tightness, relu(tau - r0 / mean r) / tau with r0 the input box's mean half-width
    (the boxes' growth through the network held near 1 / tau), and balance, (relu(tau - rho_mean) + relu(tau -
    rho_var)) / tau, rho the smaller of the ratio and its inverse between the neurons certainly active (l > 0) and
    certainly inactive (u < 0): their mean |c| and their spread of c about the layer's mean (the activation's two
    pieces kept in use): a layer with one kind only pays 2, one with neither (0 / 0) no balance term."""
    r0 = (0.5 * (bounds.input_hi - bounds.input_lo)).mean()
    tight, balance, n = r0.new_zeros(()), r0.new_zeros(()), 0
    for pre in bounds.pre:
        if pre is None:
            continue
        lo, hi = pre
        c, r = 0.5 * (hi + lo), 0.5 * (hi - lo)
        tight = tight + F.relu(tolerance - r0 / r.mean().clamp_min(1e-12)) / tolerance
        on, off = (lo > 0).to(c.dtype), (hi < 0).to(c.dtype)
        n += 1
        if not bool(on.any()) and not bool(off.any()):
            continue
        spread = (c - c.mean()) ** 2
        pairs = (((c * on).mean(), -(c * off).mean()), ((spread * on).sum(), (spread * off).sum()))
        for a, b in pairs:  # min(a / b, b / a) >= 0, 0 when one kind is missing
            q = torch.minimum(a, b) / torch.maximum(a, b).clamp_min(1e-12)
            balance = balance + F.relu(tolerance - q) / tolerance
    return (tight + balance) / max(n, 1)


def certified_loss(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "inf",
                   method: str = "ibp", logits: torch.Tensor | None = None, *, beta: float = 0.0) -> torch.Tensor:
    """CE of the worst-case logits -m_j: >= max over the eps-ball of CE(model(u'), y)."""
    return F.cross_entropy(-certified_margins(model, x, y, eps, norm, method, logits, beta=beta), y)


def certified_objective(config: TrainConfig) -> Objective:
    """The training hook for nodes.train: the config's certified method and threat norm, trained at
    `train_eps_factor` x the scheduled eps."""
    method, norm, factor = config.certified_method, config.certified_norm, config.train_eps_factor
    eps_train = config.certified_eps * factor

    def objective(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None,
                  eps: float) -> RobustLoss:
        eps = eps * factor
        if method == "lipschitz":
            z = model(x) if logits is None else logits
            shift = eps * lipschitz_constants(model, norm)
            m = lipschitz_margins(z, y, shift).masked_fill(F.one_hot(y, z.shape[1]).bool(), torch.inf)
            return RobustLoss(LIPSCHITZ_LOSSES[config.lipschitz_loss](z, y, shift, config.trades_lambda),
                              (m > 0).all(1).detach())
        warm = config.warmup_reg * max(0.0, 1.0 - eps / eps_train)  # fades out as the ramp reaches the training eps
        if warm > 0:
            m, boxes = _margins_and_boxes(unroll(model, dtype=None, detach=False), x, y, eps, norm, method,
                                          crown_beta(eps, eps_train))
        else:
            m = certified_margins(model, x, y, eps, norm, method, logits, beta=crown_beta(eps, eps_train))
        certified = (m.masked_fill(F.one_hot(y, m.shape[1]).bool(), torch.inf) > 0).all(1).detach()
        loss = F.cross_entropy(-m, y)
        if warm > 0:
            loss = loss + warm * warmup_regularizer(boxes)
        if method == "mtl-ibp" and config.mtl_alpha < 1:
            adv = pgd(model, x, y, eps=eps, norm=norm, steps=config.attack_steps, seed=config.seed)
            loss = config.mtl_alpha * loss + (1 - config.mtl_alpha) * F.cross_entropy(model(adv), y)
        return RobustLoss(loss, certified)

    return objective


OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {method: certified_objective for method in CERTIFIED_METHODS}
"""Objective factories keyed by certified method name (every method the config accepts)."""


def make_objective(config: TrainConfig) -> Objective | None:
    """The certified objective the config names (None when `certified_eps` is 0)."""
    if config.certified_eps <= 0:
        return None
    if config.certified_method not in OBJECTIVES:
        raise CNodeError(f"certified method must be one of {list(OBJECTIVES)}, got {config.certified_method!r}")
    return OBJECTIVES[config.certified_method](config)
