"""Back-substituted intermediate bounds against brute force on random models of every layer type and solver: every
refined pre-activation box contains the pre-activations at sampled, vertex and PGD points of the input set and lies
inside the box it refines; the backward pass over the refined boxes never exceeds a true margin."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.backsub import backsub_bounds
from certify.bounds.crown import backward_margins
from certify.bounds.linear import linear_bounds
from certify.bounds.local import local_bounds
from certify.bounds.unrolled import unroll
from tests.profiles import budget
from tests.strategies import model_configs, random_model, seeds
from tests.test_certify.test_linear import _points


@settings(max_examples=budget(6), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([0.3, 1.0, 2.5]),
       st.sampled_from([0.02, 0.1]), st.booleans())
def test_backsubstituted_boxes_contain_every_point_and_refine_the_given_ones(cfg, seed, norm, scale, eps, linear):
    model = random_model(cfg, seed, scale)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(u).argmax(1)
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
