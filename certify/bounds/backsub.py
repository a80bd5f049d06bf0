"""Back-substituted intermediate bounds (CROWN's intermediate step) on the layer engine, everywhere or where the
margins need them.

The forward stages bound every pre-activation through boxes (certify.bounds.local) or forward linear forms
(certify.bounds.linear), whose error terms are carried through |I + h diag(k) T| step after step. Here a
pre-activation neuron z_j of a sigma layer or of an Euler-type step (z = T x + b) is bounded instead by a backward
pass: the linear functional +-e_j on z, carried back to the network's input through every earlier layer's `backward`
rule (each layer's relaxation on its own pre-activation box, refined first, layer by layer from the input), and
minimised exactly over the input set (certify.bounds.crown.input_minimum). The new box is met with the given one, so
it is never looser. Rows (input, neuron, sign) go through in chunks of at most `budget` coefficients. The
pre-activation boxes of Runge-Kutta steps (one per stage) are kept as given.

`backsub_bounds` recomputes every neuron whose relaxation has a gap (a leaky ReLU neuron of fixed sign is already
exact): full CROWN, far too costly for a conv network of ten steps (well over a minute per image on two cores).
`refine_margins` is the affordable form, run per input on the margins earlier stages leave open: the backward pass
of those margins weighs each neuron's relaxation gap by the functional that reaches it (|nu_j| (upper_j - lower_j):
what the gap costs the margins' bound), the neurons with the largest weight per layer of depth are back-substituted
(FIRST_ROWS neuron-layers in the first round, twice as many in each next one up to `rows`, fewer where the time left
at the last round's pace allows less; a neuron once refined is not chosen again), the margins' backward pass reruns
over the refined boxes, and rounds go on until the input is proven, a full-size round closes no open margin's
distance to a proof by PROGRESS, an open margin's distance exceeds HOPELESS times what its last round's pace closes
in the time left (every margin must close for a proof), or the time runs out. Which neurons are chosen affects only
the cost: every box is sound whatever the choice. When the rounds end with margins still open, the margins' pass
over the refined boxes runs again with optimised lower lines (certify.bounds.optimise); then, with time left, branch
and bound (`branch_margins`) splits the pre-activation intervals of the neurons whose gaps weigh most, if the
largest weights could close the distance at the depth the time allows (`_reach`; on a conv network whose gap is
spread over thousands of neurons a split gains ~0.1 % of it and branching is skipped). With the float32 terms
(certify.bounds.roundoff.Float32Terms) the boxes are those of the float32 states (each back-substituted bound moved
out by the errors the earlier layers add, weighed by the functional) and the margins' pass bounds the float32 margin
too (certify.bounds.crown.rounded_margins)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contraction.floats import TINY
from certify.bounds.crown import float32_boxes, input_minimum, rounded_margins
from certify.bounds.layers import Act, FieldStep, Pre, meet, row_dot, take
from certify.bounds.linear import DEFAULT_BUDGET
from certify.bounds.local import LayerBounds
from certify.bounds.optimise import optimised_margins, raise_open, relaxed_layers
from certify.bounds.radius import unproven
from certify.bounds.relax import CachedBox, relaxation
from certify.bounds.roundoff import ENGINE_MARGIN, Float32Terms
from certify.bounds.unrolled import Unrolled

__all__ = ["backsub_bounds", "gap_weights", "Refinement", "refine_margins", "DEFAULT_ROWS"]

DEFAULT_ROWS = 6000  # neuron-layers back-substituted per input and round (about 4 s per round on the paper model)
FIRST_ROWS = 250  # the first round's size; each next one doubles (up to `rows`) while the time left allows
HOPELESS = 8.0  # ... or when some open margin would need more than this times its last round's pace in the time left
PROGRESS = 0.01  # a round that closes no open margin's distance to a proof by this fraction ends the input's rounds


def _gap(net: Unrolled, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[B, N]: upper - lower of each neuron's relaxation on its box."""
    r = relaxation(net.act, box)
    return (r.upper - r.lower).flatten(1)


def _float32_rules(net: Unrolled, k: int, pre: list[Pre], bounds: LayerBounds, terms: Float32Terms | None
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer i < k (and -1: the conv of a step k), the `backward_rounding` (w, c0) of the layers the rows of
    layer k's neurons go back through, at the magnitudes of their float32 inputs; None where a layer has no rule."""
    def magnitude(i: int) -> torch.Tensor:
        lo, hi = (bounds.input_lo, bounds.input_hi) if i == 0 else bounds.boxes[i - 1]
        err = 0.0 if terms is None or i == 0 else terms.errors[i - 1]
        return torch.maximum(lo.abs(), hi.abs()) + err

    rules: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    layer = net.layers[k]
    if isinstance(layer, FieldStep):
        rules[-1] = layer.conv.backward_rounding(magnitude(k), None)
    for i in range(k):
        rule = net.layers[i].backward_rounding(magnitude(i), pre[i])
        if rule is None:
            return None
        rules[i] = rule
    return rules


def _refine(net: Unrolled, k: int, pre: list[Pre], bounds: LayerBounds, u: torch.Tensor, eps: float | torch.Tensor,
            norm: str, budget: int, mask: torch.Tensor, terms: Float32Terms | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """New (lo, hi) of layer k's pre-activation box by back-substitution of the neurons in `mask` ([B, N] bool; the
    others keep their box). With the float32 `terms` (and `pre` holding the float32 states' pre-activations), the
    box of the float32 state's pre-activation: each bound moved out by sum_i |lambda_i| . own_i over the earlier
    layers (certify.bounds.crown.rounded_margins).

    The rows go back in float32 (the constants in float64) where every layer has a `backward_rounding` rule, each
    bound moved out by the rules' bound of what the float32 rows lose (sum_i |lambda_i| . w_i + c0_i): a float32
    convolution costs a fifth of a float64 one here."""
    layer = net.layers[k]
    lo, hi = pre[k]  # type: ignore[misc]
    shape = lo.shape[1:]
    n = math.prod(shape)
    b_idx, j_idx = mask.nonzero(as_tuple=True)
    new_lo, new_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    widest = max(math.prod(bounds.input_lo.shape[1:]), *(math.prod(b[0].shape[1:]) for b in bounds.boxes[:k + 1]))
    chunk = max(1, budget // widest)
    rules = _float32_rules(net, k, pre, bounds, terms) if lo.dtype == torch.float64 else None
    rows_dtype = torch.float32 if rules is not None else lo.dtype

    # per layer i (and -1: the conv of a step k), what |lam| on its output weighs: the float32 rows' loss (the
    # `backward_rounding` rule's w, its c0 added apart) and the layer's own float32 error
    weight: dict[int, torch.Tensor] = {}
    for i in range(-1 if isinstance(layer, FieldStep) else 0, k):
        w = None if rules is None else rules[i][0]
        if terms is not None and i >= 0:
            w = terms.own[i] if w is None else w + terms.own[i]
        if w is not None:
            weight[i] = w.to(lo.dtype)
    fixed = None if rules is None else sum(c0.to(lo.dtype) for _, c0 in rules.values())

    for start in range(0, len(b_idx), chunk):
        rows, cols = b_idx[start:start + chunk], j_idx[start:start + chunk]
        R = len(rows)
        e = torch.zeros(R, n, dtype=rows_dtype, device=lo.device)
        e[torch.arange(R, device=lo.device), cols] = 1.0
        lam = e.view(R, *shape)  # one pass for the rows +e_j and -e_j (a paired pass, certify.bounds.layers)
        const = torch.zeros(2 * R, dtype=lo.dtype, device=lo.device)
        added = torch.zeros(R, dtype=lo.dtype, device=lo.device)  # the same for +e_j and -e_j (|lam| only)
        if fixed is not None:
            added = added + take(fixed, rows)
        if isinstance(layer, FieldStep):  # z = T x + b: to the step's input
            if -1 in weight:
                added = added + row_dot(lam.abs(), weight[-1], rows)
            lam, const = layer.conv.backward(lam, const, None, rows)
        for i in range(k - 1, -1, -1):
            if i in weight:
                added = added + row_dot(lam.abs(), weight[i], rows)
            lam, const = net.layers[i].backward(lam, const, pre[i], rows)
        both = torch.cat([rows, rows])
        low = input_minimum(torch.cat([lam, -lam]).to(lo.dtype), const, bounds, u, eps, norm, both)
        if terms is not None or rules is not None:
            low = low - torch.cat([added, added]) * (1 + ENGINE_MARGIN) - TINY
        low = low.nan_to_num(nan=-torch.inf)  # a non-number (overflow) leaves the box as it was
        new_lo[rows, cols] = torch.maximum(new_lo[rows, cols], low[:R])
        new_hi[rows, cols] = torch.minimum(new_hi[rows, cols], -low[R:])
    new_hi = torch.maximum(new_hi, new_lo)
    return new_lo.view_as(lo), new_hi.view_as(hi)


def backsub_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, bounds: LayerBounds, *,
                   budget: int = DEFAULT_BUDGET, masks: dict[int, torch.Tensor] | None = None,
                   terms: Float32Terms | None = None) -> LayerBounds:
    """`bounds` (boxes over the input set) with pre-activation boxes recomputed by back-substitution and met with
    their own, first layer first (module docstring): of the neurons in `masks` (layer index -> [B, N] bool; a layer
    not in it is kept), by default of every neuron whose relaxation has a gap in every sigma layer and Euler-type
    step. With the float32 `terms`, `bounds` and the result hold the float32 states' pre-activations
    (certify.bounds.crown.float32_boxes)."""
    pre: list[Pre] = [p if p is None or isinstance(p, CachedBox) else CachedBox(*p) for p in bounds.pre]
    for k in relaxed_layers(net, pre):
        mask = _gap(net, pre[k]) > 0 if masks is None else masks.get(k)  # type: ignore[arg-type]
        if mask is not None and bool(mask.any()):
            pre[k] = CachedBox(*meet(pre[k], _refine(net, k, pre, bounds, u, eps, norm, budget, mask, terms)))  # type: ignore[arg-type]
    return LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi, bounds.balls)


def gap_weights(net: Unrolled, bounds: LayerBounds, labels: torch.Tensor, pairs: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per refinable layer k, [B, N]: sum over the margins in `pairs` ([B, K] bool) of |nu_j| (upper_j - lower_j),
    nu the margin's backward functional on sigma's output at neuron j: what neuron j's relaxation gap costs the
    margin's CROWN bound over `bounds`."""
    W, c = net.readout_weight, net.readout_bias
    B = labels.shape[0]
    b_idx, j_idx = (pairs & ~F.one_hot(labels, W.shape[0]).bool()).nonzero(as_tuple=True)
    lam, const = W[labels[b_idx]] - W[j_idx], c[labels[b_idx]] - c[j_idx]
    keep = set(relaxed_layers(net, bounds.pre))
    out = {}
    for k in range(len(net.layers) - 2, -1, -1):
        layer, box = net.layers[k], bounds.pre[k]
        if k in keep:
            nu = lam if isinstance(layer, Act) else layer.field_dual(layer.h * lam)  # type: ignore[union-attr]
            gap = _gap(net, box)  # type: ignore[arg-type]
            out[k] = torch.zeros_like(gap).index_add_(0, b_idx, nu.flatten(1).abs() * gap[b_idx])
        lam, const = layer.backward(lam, const, box, b_idx)
    assert all(w.shape[0] == B for w in out.values())
    return out


def _choose(weights: dict[int, torch.Tensor], done: dict[int, torch.Tensor], rows: int) -> dict[int, torch.Tensor]:
    """Per input, the neurons of largest weight per layer of depth (a neuron of layer k costs k layers of backward
    pass) not refined before, up to `rows` neuron-layers: {layer: [B, N] bool}."""
    ks = sorted(weights)
    depth = torch.cat([torch.full((weights[k].shape[1],), float(k + 1)) for k in ks]).to(weights[ks[0]])
    value = torch.cat([weights[k].masked_fill(done[k], 0.0) for k in ks], 1) / depth
    order = value.argsort(1, descending=True)
    spent = depth[order].cumsum(1)
    pick = (spent <= rows) & (value.gather(1, order) > 0)
    chosen = torch.zeros_like(value, dtype=torch.bool).scatter_(1, order, pick)
    return dict(zip(ks, chosen.split([weights[k].shape[1] for k in ks], 1)))


def _split(bounds: LayerBounds, k: int, j: int) -> tuple[LayerBounds, LayerBounds]:
    """The two halves of neuron j's pre-activation interval at layer k (one input): at 0 where the interval holds
    it (sigma's kink), else at the midpoint; every other box kept."""
    lo, hi = bounds.pre[k]  # type: ignore[misc]
    a, b = float(lo.flatten()[j]), float(hi.flatten()[j])
    cut = 0.0 if a < 0.0 < b else 0.5 * (a + b)
    halves = []
    for side in (0, 1):
        new = (lo.clone(), hi.clone())
        new[1 - side].view(-1)[j] = cut  # side 0: [lo, cut], side 1: [cut, hi]
        pre = list(bounds.pre)
        pre[k] = CachedBox(*new)
        halves.append(LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi, bounds.balls))
    return halves[0], halves[1]


def _reach(net: Unrolled, bounds: LayerBounds, labels: torch.Tensor, todo: torch.Tensor, distance: torch.Tensor,
           seconds: float) -> int:
    """How many splits deep branching may go in `seconds` (0: none could close the open margins). A split removes
    about its neuron's gap weight (`gap_weights`, summed over the open margins), so a path of d splits at most the d
    largest; with a node costing about two backward passes (timed here on one), d = log2(nodes affordable); 0 when
    even the d largest weights fall short of some open margin's distance to a proof."""
    began = time.perf_counter()
    weights = gap_weights(net, bounds, labels, todo)
    per_pass = time.perf_counter() - began
    if not weights:
        return 0
    w = torch.cat([v.flatten() for v in weights.values()])
    depth = max(1, int(math.log2(max(2.0, seconds / max(2 * per_pass, 1e-6)))))
    reach = float(w.topk(min(depth, w.numel())).values.sum())
    return depth if bool((-distance[todo] < reach).all()) else 0


def branch_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                   bounds: LayerBounds, todo: torch.Tensor, slack: torch.Tensor, terms: Float32Terms | None,
                   deadline: float, depth: int = 64) -> tuple[torch.Tensor | None, int]:
    """Branch and bound on one input: prove the margins `todo` ([1, K] bool) over `bounds` (the float32 states'
    boxes with `terms`) by splitting pre-activation intervals, depth first, until every branch's margins are proven
    or `deadline` (time.perf_counter) passes. With `terms` a margin is proven on a branch when its float32 bound
    C - R > 0, else when C > `slack`. Each open branch splits the neuron whose relaxation gap weighs most in its open
    margins (`gap_weights`) into two halves (`_split`); a branch's margins the plain pass leaves open get the pass
    with optimised lower lines too (certify.bounds.optimise); the halves cover the interval, so a margin proven on
    both is proven on the branch, and the least of its bounds over the branches is a bound over the input set. The search
    gives up (as the refine rounds do, HOPELESS) when a branch at depth d is further from a proof than HOPELESS x
    what its own split gained x the `depth` - d splits left: every branch must close.

    Returns ([1, K] those bounds, C - R with `terms` else C, -inf outside `todo`; None when some branch stayed open),
    and the number of branches bounded."""
    stack = [(bounds, todo, -math.inf, 0)]  # (boxes, open margins, the parent's worst distance, depth)
    best = torch.full(todo.shape, torch.inf, dtype=slack.dtype, device=slack.device)
    branches = 0
    while stack:
        if time.perf_counter() > deadline:
            return None, branches
        node, want, parent, d = stack.pop()
        branches += 1
        lb, r = rounded_margins(net, node, u, labels, eps, norm, want, terms)
        value = lb - r if terms is not None else lb
        proven = lambda: want & ((value > 0) if terms is not None else ~unproven(lb, slack))  # noqa: E731
        done = proven()
        if bool((want & ~done).any()):  # the node's pass again with optimised lower lines
            o = optimised_margins(net, node, u, labels, eps, norm, want & ~done, slack, terms)
            lb = torch.where(want & ~done, torch.maximum(lb, o.margins), lb)
            value = torch.where(want & ~done, torch.maximum(value, o.rounded if terms is not None else o.margins),
                                value)
            done = proven()
        best = torch.where(done, torch.minimum(best, value), best)
        want = want & ~done
        if not bool(want.any()):
            continue
        worst = float((value if terms is not None else lb - slack)[want].min())
        if d > 0 and -worst > HOPELESS * max(worst - parent, 0.0) * max(depth - d, 0):
            return None, branches
        weights = gap_weights(net, node, labels, want)
        k = max(weights, key=lambda i: float(weights[i].max()), default=None)
        if k is None or not float(weights[k].max()) > 0:  # every relaxation exact here: no split can help
            return None, branches
        stack += [(half, want, worst, d + 1) for half in _split(node, k, int(weights[k].argmax()))]
    return best.masked_fill(~todo, -torch.inf), branches


@dataclass
class Refinement:
    """`margins` [B, K]: the best lower bounds of z_y - z_j reached (never below the ones given); `rounded`: the best
    lower bounds of the float32 margins (with the float32 terms; else as given); `rounds` [B]: the refinement rounds
    each input ran; `neurons` [B]: how many neurons were back-substituted for it; `branches` [B]: how many branches
    branch and bound bounded for it (`branch_margins`)."""

    margins: torch.Tensor
    rounded: torch.Tensor
    rounds: torch.Tensor
    neurons: torch.Tensor
    branches: torch.Tensor


def refine_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                   bounds: LayerBounds, margins: torch.Tensor, slack: torch.Tensor | float = 0.0, *,
                   seconds: float = 5.0, rows: int = DEFAULT_ROWS, budget: int = DEFAULT_BUDGET,
                   terms: Float32Terms | None = None, rounded: torch.Tensor | None = None) -> Refinement:
    """Lower bounds of the margins by rounds of selective back-substitution (module docstring) over `bounds`
    (boxes over the input set, best the linear stage's), starting from `margins` ([B, K], e.g. the CROWN pass over
    `bounds`), one input at a time, each for at most `seconds`. A margin is proven when above its `slack`, or, with
    the float32 `terms`, when its float32 bound (certify.bounds.crown.rounded_margins; `rounded`: the ones so far)
    is above 0. Rounds that end with open margins hand the time left to branch and bound over the refined boxes."""
    B = u.shape[0]
    best = margins.clone()
    best32 = torch.full_like(best, -torch.inf) if rounded is None else rounded.clone()
    rounds = torch.zeros(B, dtype=torch.long)
    neurons = torch.zeros(B, dtype=torch.long)
    branches = torch.zeros(B, dtype=torch.long)
    slack_t = torch.as_tensor(slack, dtype=best.dtype, device=best.device)
    slack_t = (slack_t.reshape(-1, 1) if slack_t.dim() == 1 else slack_t).expand(B, best.shape[1])
    for i in range(B):
        sl = slice(i, i + 1)
        t = None if terms is None else terms.select(sl)
        own = bounds.select(sl) if t is None else float32_boxes(bounds.select(sl), t)
        m, m32, s = best[sl], best32[sl], slack_t[sl]
        e = eps[sl] if isinstance(eps, torch.Tensor) and eps.dim() else eps
        done = {k: torch.zeros_like(_gap(net, own.pre[k]), dtype=torch.bool) for k in relaxed_layers(net, own.pre)}
        start, size = time.perf_counter(), min(FIRST_ROWS, rows)
        while done and (todo := unproven(m, s) & ~(m32 > 0)).any() and size >= 1:
            began = time.perf_counter()
            chosen = _choose(gap_weights(net, own, labels[sl], todo), done, size)
            if not any(bool(c.any()) for c in chosen.values()):
                break
            own = backsub_bounds(net, u[sl], e, norm, own, budget=budget, masks=chosen, terms=t)
            lb, r = rounded_margins(net, own, u[sl], labels[sl], e, norm, todo, t)
            rounds[i] += 1
            neurons[i] += sum(int(c.sum()) for c in chosen.values())
            for k, ch in chosen.items():
                done[k] |= ch
            before = torch.maximum(m - s, m32)[todo]  # the better route's distance to a proof (< 0 while open)
            m, m32 = torch.maximum(lb, m), torch.maximum(lb - r, m32)
            after = torch.maximum(m - s, m32)[todo]
            if size >= rows and not bool((after - before > PROGRESS * before.abs()).any()):
                break
            now = time.perf_counter()  # the next round: twice as large, within the time left at this round's pace
            left = seconds - (now - start)
            pace = (after - before).clamp_min(0) / max(now - began, 1e-9)  # distance closed per second, per margin
            if bool((-after > HOPELESS * pace * left).any()):  # a margin no pace this input has shown can close
                break
            size = int(min(2 * size, rows, size * left / max(now - began, 1e-9)))
        todo = unproven(m, s) & ~(m32 > 0)
        if neurons[i] > 0 and bool(todo.any()):  # the refined boxes' pass with optimised lower lines
            m, m32 = raise_open(net, own, u[sl], labels[sl], e, norm, m, m32, s, t)
            todo = unproven(m, s) & ~(m32 > 0)
        left = seconds - (time.perf_counter() - start)
        depth = _reach(net, own, labels[sl], todo, torch.maximum(m - s, m32), left) \
            if done and bool(todo.any()) and left > 0 else 0
        if depth:
            got, branches[i] = branch_margins(net, u[sl], labels[sl], e, norm, own, todo, s, t, start + seconds,
                                              depth)
            if got is not None and t is not None:
                m32 = torch.maximum(m32, got)
            elif got is not None:
                m = torch.maximum(m, got)
        best[sl], best32[sl] = m, m32
    return Refinement(best, best32, rounds, neurons, branches)
