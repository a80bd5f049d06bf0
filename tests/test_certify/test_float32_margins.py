"""Bounds of the float32 margin itself (certify.bounds.crown.rounded_margins, the refine stage) against the float32
network as it runs: at random, vertex and PGD points of the ball the float32 model's margin never falls below C - R,
the refined bounds (back-substituted in float32 rows where every layer has the rule) and the optimised lower lines'
included; C stays below the exact margin; a network with Runge-Kutta steps has no such terms."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.backsub import refine_margins
from certify.bounds.crown import float32_boxes, rounded_margins
from certify.bounds.layers import RKStep
from certify.bounds.linear import linear_bounds
from certify.bounds.local import local_bounds
from certify.bounds.optimise import optimised_margins
from certify.bounds.radius import float32_below
from certify.bounds.roundoff import ball_terms
from certify.bounds.unrolled import unroll
from tests.profiles import budget
from tests.strategies import model_configs, random_model, seeds
from tests.test_certify.test_roundoff import _ball_points


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from([1.0, 2.5]), st.sampled_from(["inf", "2"]),
       st.sampled_from([0.02, 0.1]))
def test_float32_margin_bounds_hold_for_the_float32_network_at_random_vertex_and_pgd_points(cfg, seed, scale, norm,
                                                                                           eps):
    model32 = random_model(cfg, seed, scale).float()
    net = unroll(model32)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(3, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    u64 = u.double()
    local = local_bounds(net, u64, eps, norm)
    terms = ball_terms(net, u64, eps, norm, local)
    if any(isinstance(layer, RKStep) for layer in net.layers):
        assert terms is None  # the stage boxes of a Runge-Kutta step have no pre_error rule: the slack route only
        return
    assert terms is not None
    with torch.no_grad():
        y = model32(u).argmax(1)
    lin = linear_bounds(net, u64, eps, norm, local=local)
    c, r = rounded_margins(net, float32_boxes(lin, terms), u64, y, eps, norm, terms=terms)
    other = ~torch.nn.functional.one_hot(y, c.shape[1]).bool()
    assert (r[other] > 0).all() and torch.isfinite(r[other]).all()
    ref = refine_margins(net, u64, y, eps, norm, lin, c, float("inf"), seconds=5.0, rows=64, terms=terms)
    assert (ref.margins >= c).all() and (ref.rounds > 0).all()  # every margin open at first: a round ran
    opt = optimised_margins(net, float32_boxes(lin, terms), u64, y, eps, norm, other, float("inf"), terms, steps=8)
    assert (opt.rounded[other] >= (c - r)[other] - 1e-9 * (1 + (c - r)[other].abs())).all()  # from the CROWN pass
    points = [u] + _ball_points(u, eps, norm, gen, 6)
    if norm == "inf":
        lo, hi = (u - eps).clamp(0, 1), (u + eps).clamp(0, 1)
        points += [torch.where(torch.rand(u.shape, generator=gen) < 0.5, lo, hi) for _ in range(3)]
    points.append(pgd(model32, u, y, eps=float32_below(eps), norm=norm, steps=10, loss="margin"))
    for p in points:
        with torch.no_grad():
            z32 = model32(p).double()  # the float32 logits, their differences exact in float64
            z = net(p.double())
        true32 = z32.gather(1, y[:, None]) - z32
        true = z.gather(1, y[:, None]) - z
        for bound32 in (c - r, ref.rounded, opt.rounded):
            assert (bound32[other] <= true32[other]).all(), float((bound32 - true32)[other].max())
        for bound in (c, ref.margins, opt.margins):  # over the float32 boxes, which hold the exact states too
            assert (bound[other] <= true[other] + 1e-9 * (1 + true[other].abs())).all()
