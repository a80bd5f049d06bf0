"""Tight certificates vs brute force: relaxations on dense samples, boxes vs sampled and attacked inputs,
margin bounds vs true margins, superset order global <= local <= crown, attacks inside certified balls."""

import pytest
import torch
from tests.profiles import budget
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.crown import backward_margins
from certify.bounds.lipschitz import best_network_bound
from certify.bounds.local import box_margins, local_bounds
from certify.bounds.radius import certified_radii
from certify.bounds.relax import relax
from certify.run import CertifyReport, certify_model, certify_tensors
from certify.checks import AttackCheck, attack_check
from certify.bounds.tight import TIGHT_STAGES, certified_at, escalate, stage_margins, tight_radii
from certify.bounds.unrolled import unroll
from contraction.errors import CNodeError, DataError
from contraction.slopes import get_activation
from nodes import ConvNODE, ModelConfig, load_dataset
from tests.strategies import model_configs, seeds


def local_margins(net, u, y, eps, norm):
    """The local stage's margins (certify.bounds.tight.stage_margins)."""
    return stage_margins("local", net, u, y, eps, norm)[0]


def crown_margins(net, u, y, eps, norm):
    """The crown stage's margins (the larger of CROWN-IBP's and the boxes')."""
    return stage_margins("crown", net, u, y, eps, norm)[0]

ACTS = ["smooth_leaky_relu", "leaky_relu", "tanh"]


@settings(max_examples=budget(60))
@given(st.sampled_from(ACTS), st.floats(-8, 8), st.floats(0, 12), st.floats(0.05, 0.5))
def test_relaxation_holds_on_dense_samples(name, lo, width, slope):
    act = get_activation(name, slope)
    lo_t = torch.tensor([lo], dtype=torch.float64)
    hi_t = lo_t + width
    r = relax(act, lo_t, hi_t)
    z = torch.linspace(lo, lo + width, 20001, dtype=torch.float64)
    s = act.fn(z)
    assert (r.slope * z + r.lower <= s + 1e-12).all()
    assert (s <= r.slope * z + r.upper + 1e-12).all()
    # and it is not vacuous: the gap between the lines is at most what the constant bounds give
    assert float(r.upper - r.lower) <= float(s.max() - s.min()) + float((r.slope * width).abs()) + 1e-9


@settings(max_examples=budget(60))
@given(st.sampled_from(ACTS), st.floats(-8, 8), st.floats(0, 12))
def test_local_slope_range_is_the_range_of_the_derivative(name, lo, width):
    act = get_activation(name, 0.1)
    lo_t = torch.tensor([lo], dtype=torch.float64)
    dl, du = act.slope_range(lo_t, lo_t + width)
    z = torch.linspace(lo, lo + width, 4001, dtype=torch.float64)
    d = act.deriv(z)
    assert float(dl) <= float(d.min()) + 1e-12 and float(d.max()) <= float(du) + 1e-12
    assert act.a - 1e-12 <= float(dl) <= float(du) <= act.b + 1e-12
    if name != "leaky_relu":  # smooth: the range is attained on the grid up to its spacing
        assert float(d.min()) - float(dl) < 1e-2 and float(du) - float(d.max()) < 1e-2


def _ball(u, eps, norm, n, gen):
    """n random points of the eps-ball around each u (half of them on the boundary), clipped to [0, 1]."""
    d = torch.rand(n, *u.shape, generator=gen, dtype=u.dtype) * 2 - 1
    if norm == "2":
        d = d / d.flatten(2).norm(dim=2)[..., None, None, None]
        d = d * torch.where(torch.arange(n)[:, None, None, None, None] % 2 == 0, 1.0,
                            torch.rand(n, *[1] * u.dim(), generator=gen, dtype=u.dtype))
    else:
        d = torch.where(torch.arange(n)[:, None, None, None, None] % 2 == 0, d.sign(), d)
    return (u + eps * d).clamp(0, 1)


@settings(max_examples=budget(30), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_boxes_and_margins_contain_sampled_and_attacked_inputs(cfg, seed, norm):
    torch.manual_seed(seed)
    model = ConvNODE(cfg).double().eval()
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(3, cfg.in_channels, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (3,), generator=gen)
    eps = 0.3 if norm == "inf" else 1.0
    b = local_bounds(net, u, eps, norm)
    low_local = local_margins(net, u, y, eps, norm)
    low_crown = crown_margins(net, u, y, eps, norm)
    pts = _ball(u, eps, norm, 64, gen)  # [n, B, C, 8, 8]
    adv = pgd(model, u, y, eps=eps, norm=norm, steps=30, loss="margin")
    other = ~torch.nn.functional.one_hot(y, 3).bool()
    tol = 1e-9
    for v in list(pts) + [adv]:
        outs, pre = net.outputs(v), net.preactivations(v)
        for i, (lo, hi) in enumerate(b.boxes):  # every layer's output box
            assert (lo - tol <= outs[i + 1]).all() and (outs[i + 1] <= hi + tol).all(), (i, net.layers[i])
        for i, p in pre.items():  # every pre-activation box
            assert (b.pre[i][0] - tol <= p).all() and (p <= b.pre[i][1] + tol).all(), (i, net.layers[i])
        logits = outs[-1]
        true = logits.gather(1, y[:, None]) - logits
        assert (low_local[other] <= true[other] + tol).all()
        assert (low_crown[other] <= true[other] + tol).all()
    assert torch.allclose(net(u), model(u))  # the unrolled net is the model
    # not vacuous: on a tiny ball both bounds meet the true margin at u
    z0 = model(u)
    true0 = (z0.gather(1, y[:, None]) - z0)[other]
    for fn in (local_margins, crown_margins):
        assert torch.allclose(fn(net, u, y, 1e-7, norm)[other], true0, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_batch(tiny_trained):
    model, _ = tiny_trained
    x, y = load_dataset("mnist-mini", "test").tensors(0, 120)
    return model, x, y


@pytest.mark.parametrize("norm,eps_list", [("inf", [0.005, 0.01, 0.02, 0.05]), ("2", [0.05, 0.1, 0.3, 0.6])])
def test_tighter_methods_certify_supersets(tiny_batch, norm, eps_list):
    model, x, y = tiny_batch
    net = unroll(model)
    L = best_network_bound(model, norm).constants()
    with torch.no_grad():
        z = model(x)
    g_radius = certified_radii(z, y, L)
    x64 = x.double()
    for eps in eps_list:
        glob = g_radius > eps
        loc = local_margins(net, x64, y, eps, norm).amin(1) > 0
        b = local_bounds(net, x64, eps, norm)
        back_all = backward_margins(net, b, x64, y, eps, norm)
        back = back_all.amin(1) > 0
        crown = crown_margins(net, x64, y, eps, norm).amin(1) > 0
        assert not (glob & ~loc).any(), f"global certified an input that local did not at eps={eps}"
        assert not (loc & ~crown).any() and not (back & ~crown).any()
        full = torch.maximum(back_all, box_margins(net, y, b.lo, b.hi)).amin(1) > 0
        assert torch.equal(crown, full)  # skipping the margins the boxes already prove changes nothing
        assert int(crown.sum()) >= int(glob.sum())


def test_attacks_never_break_a_tight_certificate(tiny_trained):
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=100)
    for norm, eps, bound in (("inf", 0.03, "crown"), ("2", 0.4, "crown"), ("inf", 0.04, "linear")):
        report = certify_model(model, data, eps=eps, norm=norm, bound=bound)
        assert report.certified_accuracy > 0, "the tiny model should certify something here"
        assert set(report.certified_counts()) <= {"global", "local", "crown", "linear"}
        assert bound == "linear" or "linear" not in report.certified_counts()
        check = attack_check(model, data, report, limit=80, restarts=2, steps=30, queries=200)
        assert check.attacked > 0 and check.broken == 0, check


def test_auto_runs_cheap_first_and_never_loses_to_a_single_method(tiny_trained):
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=100)
    reports = {b: certify_model(model, data, eps=0.02, norm="inf", bound=b) for b in ("global", "local", "crown", "auto")}
    for b in ("global", "local", "crown"):
        assert not (reports[b].certified_mask & ~reports["auto"].certified_mask).any(), b
    counts = reports["auto"].certified_counts()
    assert counts.get("global", 0) == int(reports["global"].certified_mask.sum())
    assert sum(counts.values()) == int(reports["auto"].certified_mask.sum())


def test_a_zero_budget_skips_the_refine_stage_and_a_budget_never_loses_a_verdict(tiny_batch):
    """`--budget 0` ("0: skip it"): the refine stage does not run (no seconds, no certificate by it); with a budget
    every input certified without it stays certified."""
    model, x, y = tiny_batch
    net = unroll(model)
    x64, y = x[:12].double(), y[:12]
    none = escalate(net, x64, y, 0.05, "inf", slack=None, refine_seconds=0.0)
    some = escalate(net, x64, y, 0.05, "inf", slack=None, refine_seconds=0.5)
    assert "refine" not in none.seconds and not (none.stage == TIGHT_STAGES.index("refine")).any()
    assert (some.certified | ~none.certified).all()


def test_bisected_radius_is_certified_and_nearly_maximal(tiny_batch):
    model, x, y = tiny_batch
    net = unroll(model)
    x64, y = x[:20].double(), y[:20]
    with torch.no_grad():
        right = model(x[:20]).argmax(1) == y
    x64, y = x64[right], y[right]
    r = tight_radii(net, x64, y, "inf", "crown", 0.0, torch.zeros(len(y), dtype=torch.float64), 0.5)
    assert (r > 0).any()
    assert certified_at(net, x64[r > 0], y[r > 0], r[r > 0], "inf", "crown").all()
    bigger = certified_at(net, x64, y, torch.minimum(r * 1.01 + 1e-6, torch.tensor(0.5)), "inf", "crown")
    assert not bigger[r < 0.5 * 0.999].any()


def test_adaptive_solvers_are_refused_with_one_line():
    """dopri5's steps depend on the input: no layer sequence runs it; unroll and certify say so in one line."""
    model = ConvNODE(ModelConfig(channels=2, steps=2, image_size=6, num_classes=3, solver="dopri5"))
    with pytest.raises(CNodeError, match="adaptive") as err:
        unroll(model)
    assert "\n" not in str(err.value)
    data = load_dataset("mnist-mini", "test", limit=4)
    with pytest.raises(CNodeError, match="adaptive"):
        certify_model(ConvNODE(ModelConfig(channels=2, steps=2, solver="dopri5")), data, eps=0.1, bound="crown")


def test_certify_tensors_matches_certify_model_and_refuses_bad_tensors(tiny_trained):
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=60)
    x, y = data.tensors()
    by_data = certify_model(model, data, eps=0.02, norm="inf", batch_size=25)
    by_tensors = certify_tensors(model, x, y, eps=0.02, norm="inf", batch_size=25)
    assert torch.equal(by_data.radii, by_tensors.radii) and by_data.certified_by == by_tensors.certified_by
    assert isinstance(by_tensors, CertifyReport) and by_tensors.dataset == "tensors"
    check = attack_check(model, x, by_tensors, limit=20, restarts=1, steps=10, queries=20)
    assert isinstance(check, AttackCheck) and check.to_dict()["broken"] == check.broken == 0
    for bad_x, bad_y, fragment in [
        (x * 255, y, r"\[0, 1\]"),
        (x[:, 0], y, "images"),
        (x, y[:10], "labels"),
        (x, y.float(), "labels must be integers"),
        (x, y + 10, "labels must be integers"),
    ]:
        with pytest.raises(DataError, match=fragment):
            certify_tensors(model, bad_x, bad_y, eps=0.02)


def test_auto_radii_with_the_falsifier_survive_attacks(tiny_trained):
    """radius=True with auto (bisection, derived float32 slack at every eps tried, PGD falsifier): no attack inside
    any reported radius changes the float32 prediction."""
    from certify.bounds.attacks import pgd, square
    from certify.bounds.radius import float32_below

    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=30)
    report = certify_model(model, data, eps=0.01, bound="auto", radius=True, budget=0.5)  # refine: 0.5 s a try
    idx = torch.nonzero(report.radii > 0).flatten()
    assert len(idx) > 10 and (report.radii[idx] > 0.01).any()  # bisection went past eps somewhere
    x, y = data.tensors(0, 30)
    x, y = x[idx], y[idx]
    r = float32_below(report.radii[idx])
    for adv in (pgd(model, x, y, eps=r, steps=40, restarts=3, loss="margin"), square(model, x, y, eps=r, queries=300)):
        assert ((adv - x).flatten(1).abs().amax(1) <= r * (1 + 1e-6)).all()  # up to float32 rounding of adv - x
        with torch.no_grad():
            assert (model(adv).argmax(1) == y).all()
