"""Float32 soundness: the derived error bound contains the float32 network's real error over the ball, a forged error
above it withholds the certificate, and no non-finite bound, slack or logit ever certifies an input."""

import dataclasses

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.layers import Conv, EulerStep
from certify.bounds.local import ibp_bounds, local_bounds
from certify.bounds.radius import certified_radii, float32_below, unproven
from certify.bounds.roundoff import ball_error, ball_terms, float32_error, hull_error, margin_slack
from certify.run import certify_model, certify_tensors
from certify.bounds.tight import TIGHT_STAGES, escalate
from certify.bounds.unrolled import unroll
from contraction.convops import conv_matrix
from contraction.errors import CertificateWithheldError, CNodeError
from nodes import ConvNODE, ModelConfig, load_dataset
from tests.profiles import budget
from tests.strategies import model_configs, random_model, seeds


def _ball_points(u, eps, norm, gen, count):
    """Random points of the ball (Linf or L2) intersected with [0, 1]."""
    pts = []
    for _ in range(count):
        d = 2 * torch.rand(u.shape, generator=gen) - 1
        if norm == "2":
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * torch.rand(len(u), 1, 1, 1, generator=gen)
        pts.append((u + eps * d).clamp(0, 1))
    return pts


@settings(max_examples=budget(25))
@given(model_configs(), seeds, st.sampled_from([0.3, 1.0, 3.0]), st.sampled_from(["inf", "2"]),
       st.sampled_from([0.0, 0.02, 0.1]))
def test_float32_error_bound_contains_the_real_error_at_random_and_pgd_points(cfg, seed, scale, norm, eps):
    """Every layer type, both fields, every activation: |float32 logits - exact logits| <= E over the ball, at random
    points and at PGD points (which go where the logits are extreme)."""
    model32 = random_model(cfg, seed, scale).float()
    net = unroll(model32)  # the real-arithmetic twin (float64 copies of the float32 weights and constants)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    local = local_bounds(net, u.double(), eps, norm)
    bound = float32_error(net, local)
    assert torch.isfinite(bound).all() and (bound > 0).all()
    ball = ball_error(net, u.double(), eps, norm, local)  # the certificates' bound: boxes met with Lipschitz balls
    assert torch.isfinite(ball).all() and (ball > 0).all()
    points = [u] + _ball_points(u, eps, norm, gen, 3)
    if eps > 0:
        with torch.no_grad():
            y = model32(u).argmin(1)  # push toward the least likely class: large logit moves
        points.append(pgd(model32, u, y, eps=float32_below(eps), norm=norm, steps=5, loss="margin"))
    for p in points:
        with torch.no_grad():
            observed = (model32(p).double() - net(p.double())).abs()
        assert (observed <= bound).all(), float((observed / bound).max())
        assert (observed <= ball).all(), float((observed / ball).max())


def test_the_bound_is_not_vacuous_and_grows_with_the_ball(tiny_trained):
    model, _ = tiny_trained
    net = unroll(model)
    u = load_dataset("mnist-mini", "test", limit=8).tensors(0, 8)[0].double()
    small = float32_error(net, local_bounds(net, u, 0.0, "inf"))
    big = float32_error(net, local_bounds(net, u, 0.1, "inf"))
    with torch.no_grad():
        z = model(u.float()).double()
    assert (big >= small).all() and (small < 1e-3 * (1 + z.abs())).all()  # n u |W| |x| sums: ~5e-4 here


def test_margin_slack_pays_both_logits():
    err = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    s = margin_slack(err, torch.tensor([1]))
    assert s[0, 1] == 0 and s[0, 0] >= 3.0 and s[0, 2] >= 6.0
    assert torch.isnan(margin_slack(torch.tensor([[float("nan"), 1.0]]), torch.tensor([1]))[0, 0])


def test_a_forged_float32_error_above_the_bound_withholds_the_certificate(tiny_trained):
    """Logits moved by more than the derived bound (as TF32 or an FFT convolution could): the plan's cross-check on
    the sample refuses to certify."""
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=20)
    ok = certify_model(model, data, eps=0.001, bound="global")
    assert ok.roundoff["model"] == "derived" and ok.roundoff["observed_over_derived_max"] <= 1
    handle = model.head[-1].register_forward_hook(lambda mod, inp, out: out + 1e-2 * torch.arange(out.shape[1]))
    try:
        with pytest.raises(CertificateWithheldError, match="derived bound"):
            certify_model(model, data, eps=0.001, bound="global")
    finally:
        handle.remove()


def _tanh_overflow_model() -> ConvNODE:
    """tanh everywhere, huge block kernels: the float32 network stays finite (tanh saturates), but the float32
    error bound multiplies by |I + h D T| ~ 1e30 per step and overflows float64."""
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=12, activation="tanh", image_size=28)).eval()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.copy_(torch.randn_like(f.conv.weight) * 1e30)
    return model


def test_a_model_whose_bounds_overflow_certifies_nothing_and_counts_them():
    model = _tanh_overflow_model()
    data = load_dataset("mnist-mini", "test", limit=30)
    with torch.no_grad():
        assert torch.isfinite(model(data.tensors(0, 30)[0])).all()  # the network itself is fine
    for bound in ("global", "auto"):
        report = certify_model(model, data, eps=0.01, bound=bound)
        assert report.certified_accuracy == 0.0 and report.certified_counts() == {}
        correct = report.predictions == report.labels
        assert report.nonfinite_count >= int(correct.sum()) > 0
        assert report.to_dict()["nonfinite"] == report.nonfinite_count


@pytest.mark.parametrize("rule", ["bounds", "backward", "symbolic"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_forged_rule_returning_non_numbers_never_certifies(tiny_trained, monkeypatch, rule, bad):
    """A layer rule that returns NaN or inf (an overflow anywhere in a stage) proves nothing: forged boxes (the
    mean-value and the interval rule, which the boxes are met with) leave every input open; a forged backward or symbolic rule certifies no input beyond what the stage's honest parts prove (the
    boxes; for the linear stage, the crown stage over the local boxes), and its NaNs are counted."""
    model, _ = tiny_trained
    net = unroll(model)
    x, y = load_dataset("mnist-mini", "test", limit=60).tensors(0, 60)
    x, eps = x.double(), 0.03
    with torch.no_grad():
        keep = model(x.float()).argmax(1) == y
    x, y = x[keep], y[keep]
    honest = {s: escalate(net, x, y, eps, "inf", (s,)).certified for s in TIGHT_STAGES}
    assert honest["linear"].any() and not honest["local"].all()  # the test sees proofs and open inputs
    original = getattr(EulerStep, rule)

    def forged(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        first = out[0]
        if isinstance(first, torch.Tensor):
            return (torch.full_like(first, bad), *out[1:])
        if rule == "bounds":
            return dataclasses.replace(first, lo=torch.full_like(first.lo, -bad), hi=torch.full_like(first.hi, bad)), out[1]
        return dataclasses.replace(first, r=torch.full_like(first.r, bad)), out[1]

    monkeypatch.setattr(EulerStep, rule, forged)
    if rule == "bounds":  # the local boxes are also met with IBP's chain: an overflow there too
        interval = EulerStep.interval

        def forged_interval(self, lo, hi):
            (out_lo, out_hi), pre = interval(self, lo, hi)
            return (torch.full_like(out_lo, -bad), torch.full_like(out_hi, bad)), pre

        monkeypatch.setattr(EulerStep, "interval", forged_interval)
    stage = {"bounds": "local", "backward": "crown", "symbolic": "linear"}[rule]
    esc = escalate(net, x, y, eps, "inf", (stage,))
    assert not esc.margins.isnan().any()
    if rule == "bounds":
        assert not esc.certified.any() and esc.nonfinite.all()
        return
    allowed = honest["local"] if rule == "backward" else honest["crown"]
    assert not (esc.certified & ~allowed).any()
    if bad != bad:  # NaN reaches the margins of every input the boxes leave open
        assert esc.nonfinite[~honest["local"]].all()


def test_unproven_fails_closed():
    m = torch.tensor([[float("nan"), 1.0, -float("inf"), 2.0]], dtype=torch.float64)
    assert unproven(m, 0.5).tolist() == [[True, False, True, False]]
    assert unproven(torch.ones(1, 2), torch.tensor([[float("nan"), 0.0]])).tolist() == [[True, False]]


def test_global_radii_of_non_numbers_are_zero():
    L = torch.ones(3, 3, dtype=torch.float64) - torch.eye(3, dtype=torch.float64)
    z = torch.tensor([[float("nan"), 0.0, 0.0], [float("inf"), 0.0, 0.0], [2.0, 0.0, 0.0]])
    r = certified_radii(z, torch.tensor([0, 0, 0]), L)
    assert r.tolist()[:2] == [0.0, 0.0] and r[2] > 0
    r = certified_radii(z[2:], torch.tensor([0]), L, torch.tensor([[0.0, float("nan"), 0.0]]))
    assert r.tolist() == [0.0]


def test_non_finite_inputs_weights_and_eps_are_refused(tiny_trained):
    model, _ = tiny_trained
    x, y = load_dataset("mnist-mini", "test", limit=4).tensors(0, 4)
    for eps in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(CNodeError, match="eps"):
            certify_tensors(model, x, y, eps=eps)
    with pytest.raises(CNodeError, match="finite"):
        certify_tensors(model, x.clone().index_fill_(0, torch.tensor([1]), float("nan")), y, eps=0.1)
    broken = ConvNODE(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.head[0].weight[0, 0] = float("inf")
    with pytest.raises(CNodeError, match="non-finite weights"):
        certify_tensors(broken, x, y, eps=0.1)


def test_float32_below_never_rounds_up():
    t = torch.tensor([0.1, 1 / 3, 2.0, 1e-30, 0.3], dtype=torch.float64)
    d = float32_below(t)
    assert d.dtype == torch.float32 and (d.double() <= t).all()
    up = torch.nextafter(d, torch.full_like(d, torch.inf))
    assert (up.double() > t).all()  # the largest such float32
    assert float(float32_below(0.1)) <= 0.1


@settings(max_examples=budget(20))
@given(st.integers(1, 4), st.integers(1, 3), st.sampled_from([1, 3, 5, 7]), seeds)
def test_conv_row_norms_are_exact_even_when_circular_taps_wrap(size, channels, k, seed):
    """A same-size circular conv whose kernel is wider than the state (taps wrap onto the same pixel): the row norm is
    the folded kernel's, as the dense matrix says."""
    gen = torch.Generator().manual_seed(seed)
    K = torch.randn(channels, channels, k, k, generator=gen, dtype=torch.float64)
    pad = k // 2
    conv = Conv(K, torch.zeros(channels, dtype=torch.float64), 1, pad, "circular", size)
    x = torch.zeros(1, channels, size, size, dtype=torch.float64)
    dense = torch.stack([conv.apply(e.view_as(x)).flatten() for e in torch.eye(x.numel(), dtype=torch.float64)], 1)
    rows = dense.norm(dim=1).view(channels, -1)
    got = conv.row_norms().flatten()
    assert torch.allclose(rows, got[:, None].expand_as(rows), rtol=1e-12)  # every row of a circular conv alike
    if k <= size:
        torch.testing.assert_close(dense, conv_matrix(K, size, size, "circular"))


def test_tight_stages_with_derived_slack_match_the_run(tiny_trained):
    """escalate(slack=None) derives the same slack certify_model uses: the stage certifies the same inputs."""
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=60)
    report = certify_model(model, data, eps=0.01, bound="crown")
    x, y = data.tensors(0, 60)
    net = unroll(model)
    esc = escalate(net, x.double(), y, 0.01, "inf", TIGHT_STAGES[:2], slack=None)
    mask = report.certified_mask.clone()
    correct = report.predictions == report.labels
    tight_only = mask & torch.tensor([b != "global" for b in report.certified_by])
    assert (esc.certified[tight_only]).all()  # what the run proved by a tight stage, escalate proves again
    assert not (esc.certified & ~correct).any()


@settings(max_examples=budget(25))
@given(model_configs(), seeds, st.sampled_from([0.3, 1.0, 3.0]), st.sampled_from(["inf", "2"]),
       st.sampled_from([0.0, 0.02, 0.1]))
def test_the_batch_hull_bound_holds_every_input_bound_and_the_real_error(cfg, seed, scale, norm, eps):
    """hull_error (one bound for the batch, over the hull of its boxes) is at least every input's own bound (the
    propagation only grows with the boxes: a margin that clears the hull's slack clears its own) and contains the
    float32 network's real error at each input and at random points of each ball."""
    model32 = random_model(cfg, seed, scale).float()
    net = unroll(model32)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(5, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    local = local_bounds(net, u.double(), eps, norm)
    hull = hull_error(net, local)
    assert hull.shape == (1, cfg.num_classes) and torch.isfinite(hull).all()
    terms = ball_terms(net, u.double(), eps, norm, local)
    own = terms.errors[-1] if terms is not None else ball_error(net, u.double(), eps, norm, local)
    assert (own <= hull).all(), float((own / hull).max())
    assert (float32_error(net, local) <= hull).all()
    ibp = ibp_bounds(net, u.double(), eps, norm)  # certify_batch's first tier: IBP's boxes hold the local ones
    assert all((a[0] <= b[0]).all() and (b[1] <= a[1]).all() for a, b in zip(ibp.boxes, local.boxes))
    assert (hull <= hull_error(net, ibp)).all()
    for p in [u] + _ball_points(u, eps, norm, gen, 3):
        with torch.no_grad():
            observed = (model32(p).double() - net(p.double())).abs()
        assert (observed <= hull).all()


@pytest.mark.parametrize("norm,eps", [("inf", 0.01), ("inf", 0.03), ("2", 0.3)])
def test_the_hull_tier_changes_no_verdict_stage_or_radius(tiny_trained, monkeypatch, norm, eps):
    """certify_batch proves some inputs by the local stage under a hull's slack (IBP's boxes first, then the local
    boxes of the rest), skipping their own float32 bound: every verdict, stage and radius equals the run that
    derives every input's own bound from the local boxes (the tiers disabled), and the IBP tier is not vacuous on
    this model."""
    import certify.run as run

    model, _ = tiny_trained
    x, y = load_dataset("mnist-mini", "test").tensors(0, 120)
    calls, ibp = [], []
    real, real_ibp = run._proven_by_hull, run.ibp_bounds

    def counted(*args):
        early, hull = real(*args)
        calls.append((any(args[3] is b for b in ibp), int(early.sum())))
        return early, hull

    def kept(*args):
        ibp.append(real_ibp(*args))
        return ibp[-1]

    monkeypatch.setattr(run, "_proven_by_hull", counted)
    monkeypatch.setattr(run, "ibp_bounds", kept)
    fast = certify_tensors(model, x, y, eps=eps, norm=norm, bound="auto")
    monkeypatch.setattr(run, "_proven_by_hull", lambda plan, z, y, local, reach: (torch.zeros_like(y, dtype=torch.bool), None))
    slow = certify_tensors(model, x, y, eps=eps, norm=norm, bound="auto")
    assert fast.certified_by == slow.certified_by
    assert torch.equal(fast.falsified, slow.falsified) and torch.equal(fast.nonfinite, slow.nonfinite)
    assert torch.allclose(fast.radii, slow.radii, rtol=1e-9, atol=0.0)
    if norm == "inf":
        assert sum(n for by_ibp, n in calls if by_ibp) > 0, "IBP's hull proved nothing: the test is vacuous"


def _ball_layers(cfg, seed, scale):
    """A random model's unrolled twin, two inputs, every layer's exact input at them (the balls' centres) and a
    radius per input."""
    net = unroll(random_model(cfg, seed, scale).float())
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    r = 0.05 + torch.rand(2, generator=gen, dtype=torch.float64)
    return net, net.outputs(u), r, gen


def _unit_rows(v):
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * (v.dim() - 1))


@settings(max_examples=budget(20))
@given(model_configs(), seeds, st.sampled_from([0.3, 1.0, 3.0]))
# a 3x3 circular conv on a 2x2 state: wrapped taps are separate products (|w_a| + |w_b| in the error model), found by
# hypothesis when the ball's bound took the signed row's 2-norm (|w_a + w_b|)
@example(ModelConfig(channels=1, activation="smooth_leaky_relu", slope=0.1, padding="circular", steps=1, image_size=8,
                     num_classes=3, stem=((1, 1, 2, 0), (1, 1, 2, 0)), head=()), 0, 0.3)
def test_affine_rounding_over_an_l2_ball_holds_at_each_rows_extreme_point(cfg, seed, scale):
    """Affine layers (and the steps' convolutions): the own float32 error over the L2 ball (c, r), inputs within err
    of it, is at least the error model's gamma_n (|A| |x^| + |b|) + n TINY at every point of the ball, the point that
    maximises one output's |A_i| |x| (c + r |A_i| sign(c) / ||A_i||: the Cauchy-Schwarz bound is attained there)
    included, even where the box around the ball is the whole box."""
    from certify.bounds.layers import Affine, FieldStep
    from contraction.floats import TINY, gamma

    net, outs, r, gen = _ball_layers(cfg, seed, scale)
    rr = r.view(-1, 1, 1, 1)
    for i, layer in enumerate(net.layers):
        affine = layer.conv if isinstance(layer, FieldStep) else layer if isinstance(layer, Affine) else None
        if affine is None or affine.terms == 0:
            continue
        c = outs[i]
        view = r.view(-1, *[1] * (c.dim() - 1))
        lo, hi = c - view, c + view  # the box around the ball: the ball's bound is the one that can decide
        err = 1e-3 * torch.rand(c.shape, generator=gen, dtype=torch.float64)
        own = affine.rounding(lo, hi, err, (c, r))
        assert (own <= affine.rounding(lo, hi, err) * (1 + 1e-12)).all()  # never looser than the box's

        def model_error(x):
            b = affine.bias_map()
            size = affine.apply_abs(x.abs() + err)
            return gamma(affine.terms) * (size if b is None else size + b.abs()) + affine.terms * TINY

        out = torch.zeros_like(own).flatten(1)
        for k in torch.randperm(out.shape[1], generator=gen)[:4].tolist():
            e = torch.zeros_like(out)
            e[:, k] = 1.0
            row = affine.adjoint(e.view_as(own)).abs()  # |A_k| in the input's shape
            sign = torch.where(c >= 0, 1.0, -1.0).to(c.dtype)
            x = c + view * _unit_rows(row) * sign
            assert torch.allclose(x.flatten(1).sub(c.flatten(1)).norm(dim=1), r)
            got = model_error(x).flatten(1)[:, k]
            assert (got <= own.flatten(1)[:, k] * (1 + 1e-9)).all(), float((got / own.flatten(1)[:, k]).max())
        for _ in range(3):  # random points of the ball
            d = _unit_rows(torch.randn(c.shape, generator=gen, dtype=torch.float64))
            x = c + d * view * torch.rand(len(c), generator=gen, dtype=torch.float64).view_as(view)
            assert (model_error(x) <= own * (1 + 1e-9)).all()


@settings(max_examples=budget(20))
@given(model_configs(), seeds, st.sampled_from([0.3, 1.0, 3.0]))
def test_a_steps_float32_activation_lies_within_its_error_of_the_ball_the_rule_gives(cfg, seed, scale):
    """A step's field over an L2 ball (c, r) of its input: every sigma^ = sigma(z^) + (its float32 error), z^ within
    dz of z = T x + b, x in the ball, lies within e of the ball (|sigma(z_c)|-centred, radius b ||T||_2 r) that
    `_sigma_ball` returns: at random points, at points along T's top singular vector (where the radius is nearly
    attained) and with every perturbation at its extreme."""
    from certify.bounds.layers import FieldStep, _sigma_ball

    net, outs, r, gen = _ball_layers(cfg, seed, scale)
    steps = [(i, layer) for i, layer in enumerate(net.layers) if isinstance(layer, FieldStep)]
    for i, step in steps:
        c = outs[i]
        view = r.view(-1, *[1] * (c.dim() - 1))
        v = torch.randn(c.shape, generator=gen, dtype=torch.float64)
        for _ in range(30):  # power iteration on T^T T: T's top right singular vector
            v = _unit_rows(step.conv.adjoint(step.conv.apply(v)))
        dz = 1e-3 * torch.rand(step.conv(c).shape, generator=gen, dtype=torch.float64)
        s_err = 1e-4 * torch.rand(dz.shape, generator=gen, dtype=torch.float64)
        centre_abs, radius, e = _sigma_ball(step, (c, r), dz, s_err)
        centre = step.act(step.conv(c))
        assert torch.equal(centre_abs, centre.abs())
        points = [c + view * v, c - view * v]
        points += [c + view * _unit_rows(torch.randn(c.shape, generator=gen, dtype=torch.float64)) for _ in range(3)]
        for x in points:
            z = step.conv(x)
            sign = torch.where(torch.rand(z.shape, generator=gen) < 0.5, -1.0, 1.0).to(z.dtype)
            s_hat = step.act(z + sign * dz) + sign * s_err
            outside = ((s_hat - centre).abs() - e).clamp_min(0).flatten(1).norm(dim=1)
            assert (outside <= radius * (1 + 1e-9) + 1e-12).all(), float((outside / radius).max())
