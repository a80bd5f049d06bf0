"""Back-substituted intermediate bounds against brute force on random models of every layer type and solver: every
refined pre-activation box contains the pre-activations at sampled, vertex and PGD points of the input set and lies
inside the box it refines; the backward pass over the refined boxes never exceeds a true margin."""

import time

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.backsub import _split, backsub_bounds, branch_margins, gap_weights
from certify.bounds.crown import backward_margins
from certify.bounds.linear import linear_bounds
from certify.bounds.local import local_bounds
from certify.bounds.radius import float32_below
from certify.bounds.unrolled import unroll
from tests.profiles import budget
from tests.strategies import model_configs, random_case, random_model, seeds
from tests.test_certify.test_linear import _points


@settings(max_examples=budget(6), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([0.3, 1.0, 2.5]),
       st.sampled_from([0.02, 0.1]), st.booleans())
def test_backsubstituted_boxes_contain_every_point_and_refine_the_given_ones(cfg, seed, norm, scale, eps, linear):
    model, net, gen, u, y = random_case(cfg, seed, scale, 2)
    given_ = linear_bounds(net, u, eps, norm) if linear else local_bounds(net, u, eps, norm)
    refined = backsub_bounds(net, u, eps, norm, given_, budget=2**16)  # small chunks: the chunking is exercised
    for p, q in zip(refined.pre, given_.pre):
        if p is not None:
            assert (p[0] >= q[0]).all() and (p[1] <= q[1]).all() and (p[0] <= p[1]).all()
    margins = backward_margins(net, refined, u, y, eps, norm)
    for x in _points(u, eps, norm, gen, model, y):
        pre = net.preactivations(x)
        for i, p in enumerate(refined.pre):
            if p is not None:
                tol = 1e-9 * (1 + pre[i].abs())
                assert (p[0] - tol <= pre[i]).all() and (pre[i] <= p[1] + tol).all(), i
        z = net(x)
        true = z.gather(1, y[:, None]) - z
        assert (margins.masked_fill(margins.isinf(), -1e30) <= true + 1e-9).all()


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from([0.3, 2.5]))
def test_float32_rows_lose_no_more_than_each_layers_backward_rounding_rule(cfg, seed, scale):
    """Each layer's `backward` on float32 rows against the same rows in float64: over the layer's input box the
    float32 rows' linear bound lies at most |lam| . w + c0 above the float64 rows' ((w, c0) the layer's
    `backward_rounding` at the box's magnitude), so moving it down by that keeps it below every true value; the
    constant stays float64; layers without the rule say so (None)."""
    model = random_model(cfg, seed, scale).float()
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    bounds = local_bounds(net, u, 0.05, "inf")
    ins = [(bounds.input_lo, bounds.input_hi)] + bounds.boxes
    checked = 0
    for i, layer in enumerate(net.layers[:-1]):
        lo, hi = ins[i]
        rule = layer.backward_rounding(torch.maximum(lo.abs(), hi.abs()), bounds.pre[i])
        if rule is None:
            continue
        w, c0 = rule
        rows = torch.tensor([0, 1, 1, 0])
        shape = bounds.boxes[i][0].shape[1:]
        lam = (torch.randn(4, *shape, generator=gen, dtype=torch.float64)
               * 10.0 ** torch.randint(-3, 4, (4,) + (1,) * len(shape), generator=gen)).float()
        zero = torch.zeros(4, dtype=torch.float64)
        l64, c64 = layer.backward(lam.double(), zero, bounds.pre[i], rows)
        l32, c32 = layer.backward(lam, zero, bounds.pre[i], rows)
        assert c32.dtype == torch.float64
        d = (l32.double() - l64).flatten(1)  # the largest (l32 x + c32) - (l64 x + c64) over the box
        mid, rad = (0.5 * (lo + hi)).flatten(1)[rows], (0.5 * (hi - lo)).flatten(1)[rows]
        above = (d * mid).sum(1) + (d.abs() * rad).sum(1) + (c32 - c64)
        allowed = (lam.double().abs() * w[rows]).flatten(1).sum(1) + c0[rows]
        assert (above <= allowed).all(), (type(layer).__name__, float((above / allowed).max()))
        checked += 1
    assert checked > 0


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from([0.3, 2.5]), st.booleans())
def test_a_paired_pass_gives_the_rows_and_their_negations_what_separate_rows_get(cfg, seed, scale, one_input):
    """Every layer's `backward` on R rows with 2R constants (a paired pass: the rows and their negations) returns the
    linear part of the rows and the constants that the 2R rows [lam; -lam] get run separately: the relaxation's
    slope does not depend on the functional's sign (one input in the batch: the per-input tensors broadcast)."""
    model = random_model(cfg, seed, scale)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    B = 1 if one_input else 2
    u = torch.rand(B, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    bounds = local_bounds(net, u, 0.05, "inf")
    rows = torch.tensor([0, B - 1, B - 1])
    for i, layer in enumerate(net.layers[:-1]):
        lam = torch.randn(3, *bounds.boxes[i][0].shape[1:], generator=gen, dtype=torch.float64)
        const = torch.randn(6, generator=gen, dtype=torch.float64)
        l2, c2 = layer.backward(lam, const, bounds.pre[i], rows)
        lsep, csep = layer.backward(torch.cat([lam, -lam]), const, bounds.pre[i], torch.cat([rows, rows]))
        assert torch.allclose(torch.cat([l2, -l2]), lsep, rtol=1e-12, atol=1e-12), type(layer).__name__
        assert torch.allclose(c2, csep, rtol=1e-9, atol=1e-9 * (1 + float(csep.abs().max()))), type(layer).__name__


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([1.0, 2.5]), st.sampled_from([0.05, 0.2]))
def test_each_half_of_a_split_bounds_the_margins_at_the_points_whose_preactivation_it_holds(cfg, seed, norm, scale,
                                                                                          eps):
    """Branch and bound's split (`_split`) of the neuron whose gap weighs most: the two halves cover its interval
    (cut at 0 or the midpoint) and keep every other box, and the backward pass over each half bounds the margin at
    every sampled, vertex and PGD point whose pre-activation lies in that half."""
    model, net, gen, u, y = random_case(cfg, seed, scale, 1)
    bounds = local_bounds(net, u, eps, norm)
    pairs = ~torch.nn.functional.one_hot(y, cfg.num_classes).bool()
    weights = gap_weights(net, bounds, y, pairs)
    if not weights:
        return
    k = max(weights, key=lambda i: float(weights[i].max()))
    if not float(weights[k].max()) > 0:
        return
    j = int(weights[k].argmax())
    halves = _split(bounds, k, j)
    lo, hi = (float(t.flatten()[j]) for t in bounds.pre[k])
    (a0, b0), (a1, b1) = ((float(t.flatten()[j]) for t in h.pre[k]) for h in halves)
    assert a0 == lo and b1 == hi and b0 == a1 and lo <= b0 <= hi
    for h in halves:
        assert all(h.pre[i] is bounds.pre[i] for i in range(len(bounds.pre)) if i != k)
    margins = [backward_margins(net, h, u, y, eps, norm) for h in halves]
    for x in _points(u, eps, norm, gen, model, y):
        z = float(net.preactivations(x)[k].flatten()[j])
        out = net(x)
        true = out.gather(1, y[:, None]) - out
        for side, m in enumerate(margins):
            if (z <= b0) if side == 0 else (z >= a1):
                assert (m[pairs] <= true[pairs] + 1e-9 * (1 + true[pairs].abs())).all()


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_branch_and_bound_proofs_hold_at_every_point_and_against_attacks(cfg, seed, norm):
    """Where `branch_margins` proves every open margin, its bounds (the least over the branches) lie below the true
    margins at sampled, vertex and PGD points, and a stronger PGD finds no adversarial example. The eps is chosen
    just past where the plain backward pass proves every margin, so branches are needed."""
    model, net, gen, u, y = random_case(cfg, seed, 1.0, 1)
    pairs = ~torch.nn.functional.one_hot(y, cfg.num_classes).bool()

    def plain(eps):
        bounds = local_bounds(net, u, eps, norm)
        return bounds, backward_margins(net, bounds, u, y, eps, norm)

    low, high = 0.0, 1.0  # bisect the eps where the plain pass's worst margin crosses 0
    for _ in range(10):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if float(plain(mid)[1][pairs].min()) > 0 else (low, mid)
    proven = None
    for eps in (high * 1.02, high * 1.1, high * 1.3):  # just past it: margins open, within reach of splits
        bounds, m = plain(eps)
        todo = pairs & ~(m > 0)
        if not bool(todo.any()):
            continue
        got, branches = branch_margins(net, u, y, eps, norm, bounds, todo, torch.zeros_like(m), None,
                                       time.perf_counter() + 0.5)
        if got is None:
            break
        proven = (eps, got, todo, branches)
    if proven is None:
        return
    eps, got, todo, branches = proven
    assert branches >= 1 and (got[todo] > 0).all()
    for x in _points(u, eps, norm, gen, model, y):
        out = net(x)
        true = out.gather(1, y[:, None]) - out
        assert (got[todo] <= true[todo] + 1e-9 * (1 + true[todo].abs())).all()
    adv = pgd(model.float(), u.float(), y, eps=float32_below(eps), norm=norm, steps=40, restarts=3)
    with torch.no_grad():
        assert (model.float()(adv).argmax(1) == y).all()
