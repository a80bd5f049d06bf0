"""Contraction of the network as it runs: the Euler step's targets, the contractive field's kernel map, the step
count a rate needs; each bound against dense Jacobians of the step, vertex and random slope matrices, and simulated
trajectory pairs."""

import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from contraction.certificates import BlockSpec, block_certificates, verdict
from contraction.convops import conv_matrix
from contraction.errors import CNodeError
from contraction.jacobian import step_norm_2_estimate, step_norm_inf_at
from contraction.regularizers import jacobian_hinge, weight_hinge
from contraction.slopes import get_activation
from contraction.weights import (check_step_rate, contractive_kernel, euler_factor_2, euler_factor_inf,
                                 step_rate_limit)
from contraction.convops import conv_spectral_norm
from nodes import ConvNODE
from nodes.config import ModelConfig, TrainConfig
from nodes.init import initialise_
from nodes.train import check_combination
from tests.profiles import budget
from tests.strategies import kernels, paddings, seeds

TOL = 1e-9


def _slope_matrices(n: int, a: float, b: float, gen: torch.Generator) -> list[torch.Tensor]:
    """Vertex slope vectors (all a, all b, a random a/b mix) and a random one inside [a, b]."""
    mix = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, a, b)
    inside = a + (b - a) * torch.rand(n, generator=gen, dtype=torch.float64)
    return [torch.full((n,), a, dtype=torch.float64), torch.full((n,), b, dtype=torch.float64), mix, inside]


def _dense_step_norm(K, d, h, size, padding, norm):
    T = conv_matrix(K, size, size, padding)
    J = torch.eye(T.shape[0], dtype=T.dtype) + h * d[:, None] * T
    return float(torch.linalg.matrix_norm(J, ord=float("inf") if norm == "inf" else 2))


@settings(max_examples=budget(40), deadline=None)
@given(kernels(channels=(1, 3), sizes=(1, 3, 5)), st.floats(-3, 3), st.integers(1, 20), st.floats(0.0, 0.99),
       st.sampled_from([(0.1, 1.0), (0.01, 1.0), (0.5, 2.0)]), st.integers(2, 5), paddings, seeds)
def test_contractive_kernel_certifies_every_step_for_every_weight(K, log_scale, steps, frac, slopes, size, padding,
                                                                  seed):
    a, b = slopes
    h = 1.0 / steps
    rho = frac * step_rate_limit(a, b, h, "inf") / (1 + 2e-3) - 2e-3
    assume(rho >= 0)
    W = K * 10.0**log_scale
    Km = contractive_kernel(W, a, b, h, rho)
    target = 1 - h * rho
    assert float(euler_factor_inf(Km, a, b, h)) <= target + TOL
    gen = torch.Generator().manual_seed(seed)
    n = Km.shape[0] * size * size
    for d in _slope_matrices(n, a, b, gen):  # the dense Jacobian of the step at any slope matrix
        assert _dense_step_norm(Km, d, h, size, padding, "inf") <= target + TOL
    # a simulated pair through the step x + h sigma(T x + c): distance shrinks by the factor
    act = get_activation("smooth_leaky_relu" if a == 0.1 else "leaky_relu", a) if b == 1.0 else None
    if act is not None:
        T = conv_matrix(Km, size, size, padding)
        bias = torch.randn(n, generator=gen, dtype=torch.float64)
        x = 3 * torch.randn(n, generator=gen, dtype=torch.float64)
        y = x + torch.randn(n, generator=gen, dtype=torch.float64) * 10.0 ** float(torch.empty(1).uniform_(-4, 1))
        step = lambda z: z + h * act(T @ z + bias)  # noqa: E731
        assert float((step(x) - step(y)).abs().max()) <= target * float((x - y).abs().max()) * (1 + 1e-9) + 1e-12


@settings(max_examples=budget(30), deadline=None)
@given(kernels(channels=(1, 3), sizes=(1, 3), negative_centre=True), st.floats(0.05, 0.5), st.floats(0.0, 0.5),
       st.sampled_from([(0.1, 1.0), (0.3, 1.0)]))
def test_step_weight_hinge_is_zero_iff_the_step_is_certified(K, h, rho, slopes):
    a, b = slopes
    act = get_activation("leaky_relu", a)
    hinge = float(weight_hinge([K], act, rho=rho, norm="inf", h=h))
    factor = float(euler_factor_inf(K, a, b, h))
    assert (hinge == 0) == (factor <= 1 - h * rho)
    hinge2 = float(weight_hinge([K], act, rho=rho, norm="2", h=h, size=4))
    factor2 = float(euler_factor_2(K, a, b, h, conv_spectral_norm(K, 4, 4, "zeros")))
    if hinge2 == 0:
        assert factor2 <= 1 - h * rho + TOL
    # the flow's hinge is still there, under its explicit name
    assert float(weight_hinge([K], act, rho=rho, norm="inf", target="flow")) >= 0


@settings(max_examples=budget(12), deadline=None)
@given(kernels(channels=(1, 3), sizes=(1, 3), negative_centre=True), st.floats(0.05, 0.6), st.integers(2, 4),
       paddings, seeds)
def test_step_norm_at_a_state_equals_the_dense_jacobian(K, h, size, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    C = K.shape[0]
    a, b = 0.1, 1.0
    d = a + (b - a) * torch.rand(1, C, size, size, generator=gen, dtype=torch.float64)
    got = float(step_norm_inf_at(d, K, padding, h)[0])
    dense = _dense_step_norm(K, d.flatten(), h, size, padding, "inf")
    if padding == "circular" and size < K.shape[-1]:  # taps wrap onto one pixel: the tap-wise rows bound the true ones
        assert got >= dense * (1 - 1e-12)
    else:
        assert got == pytest.approx(dense, rel=1e-10, abs=1e-12)
    # L2: the power iteration is a lower estimate that reaches the dense norm
    T = conv_matrix(K, size, size, padding)
    act = get_activation("leaky_relu", a)
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    x = torch.randn(2, C, size, size, generator=gen, dtype=torch.float64)
    f = lambda z: act(torch.nn.functional.conv2d(  # noqa: E731
        torch.nn.functional.pad(z, [K.shape[-1] // 2] * 4, mode="circular" if padding == "circular" else "constant"),
        K) + bias[:, None, None])
    v0 = torch.randn(x.shape, generator=gen, dtype=torch.float64)  # the example's own start (not the global RNG's)
    est, _ = step_norm_2_estimate(f, x, h, iters=200, v0=v0)
    for i in range(2):
        di = act.deriv((T @ x[i].flatten()) + bias.repeat_interleave(size * size))
        dense = _dense_step_norm(K, di, h, size, padding, "2")
        assert float(est[i]) <= dense * (1 + 1e-9)
        assert float(est[i]) >= 0.99 * dense


def test_jacobian_step_hinge_penalises_an_expanding_step():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.weight[0, 0, 1, 1] = -30.0  # h b |c| = 6: the step overshoots, the flow contracts on that channel
    act = get_activation("leaky_relu", 0.1)
    x = torch.randn(4, 2, 5, 5)
    step = jacobian_hinge(conv, act, x, rho=0.1, norm="inf", h=0.2)
    assert float(step) > 1.0  # ||I + h D T||_inf >= |1 - 0.2 * 30 d| - ... far above 1 - h rho
    step.backward()
    assert float(conv.weight.grad[0, 0, 1, 1]) < 0  # pushes the centre tap back up toward the stability limit


@pytest.mark.parametrize("norm", ["inf", "2"])
@given(st.floats(0.01, 3.0), st.integers(1, 40), st.sampled_from([(0.1, 1.0), (0.05, 0.5), (0.2, 1.0)]))
@settings(max_examples=budget(30), deadline=None)
def test_a_rate_the_step_cannot_carry_names_a_step_count_that_can(norm, rho, steps, slopes):
    a, b = slopes
    T = 1.0
    limit = step_rate_limit(a, b, T / steps, norm)
    if rho < limit:
        check_step_rate(rho, a, b, T, steps, norm, "x")
        return
    with pytest.raises(CNodeError, match="use (\\d+) steps") as info:
        check_step_rate(rho, a, b, T, steps, norm, "x")
    n = int(re.search(r"use (\d+) steps", str(info.value)).group(1))
    assert n > steps and rho < step_rate_limit(a, b, T / n, norm)


def test_rho_one_on_mini_is_a_one_line_error_naming_the_steps():
    model_cfg = ModelConfig.preset("mini")
    with pytest.raises(CNodeError, match="use 13 steps over T = 1"):
        check_combination(model_cfg, TrainConfig(reg="weight", rho=1.0))
    check_combination(model_cfg, TrainConfig(reg="weight", rho=1.0, reg_target="flow"))  # the flow's: allowed
    check_combination(ModelConfig.preset("mini", steps=13), TrainConfig(reg="weight", rho=1.0))
    with pytest.raises(CNodeError, match="cannot be kept"):
        ModelConfig.preset("mini", field="contractive", rho=0.5)


@pytest.mark.parametrize("norm,rho", [("inf", 0.3), ("inf", 0.0), ("2", 0.01)])
def test_step_init_starts_certified_at_the_target(norm, rho):
    torch.manual_seed(1)
    model = ConvNODE(ModelConfig.preset("mini"))
    cfg = TrainConfig(reg="weight", rho=rho, reg_norm=norm)
    initialise_(model, cfg)
    (cert,) = block_certificates(model.block.spec(), (norm,))
    assert max(cert.step_factors) <= 1 - model.config.h * rho
    assert float(weight_hinge([f.conv for f in model.block.fields], model.activation, rho=rho, norm=norm,
                              h=model.config.h, size=model.config.block_size)) == 0


@settings(max_examples=budget(10), deadline=None)
@given(seeds, st.floats(0.0, 0.45), st.floats(0.1, 100.0), paddings)
def test_contractive_field_model_contracts_as_run(seed, rho, scale, padding):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("mini", channels=4, field="contractive", rho=rho, padding=padding)
    model = ConvNODE(cfg).double()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    cert, weighted = block_certificates(model.block.spec(), ("inf", "inf_weighted"))
    h = cfg.h
    assert max(cert.step_factors) <= 1 - h * rho and cert.factor <= (1 - h * rho) ** cfg.steps
    assert weighted.factor <= cert.factor * (1 + 1e-12)
    # simulated trajectory pairs of the block as run (torchdiffeq's Euler)
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    y = x + 1e-2 * torch.randn_like(x)
    dx = (model.block(x) - model.block(y)).flatten(1).abs().amax(1)
    assert bool((dx <= cert.factor * (x - y).flatten(1).abs().amax(1) * (1 + 1e-9)).all())
    assert "contracts" in verdict(cert)


def test_verdict_names_an_overshooting_step():
    K = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    K[0, 0, 1, 1] = -30.0
    cert = block_certificates(BlockSpec((K,) * 5, 0.1, 1.0, 0.2, "euler", "zeros", 5, 5), ("inf",))[0]
    assert cert.rate > 0 and cert.factor > 1
    line = verdict(cert)
    assert "does not contract" in line and "overshoots" in line and "0.5" in line


def test_old_checkpoints_read_as_the_flows_target():
    data = TrainConfig(reg="weight", rho=1.0, reg_target="flow").to_dict()
    del data["reg_target"]
    assert TrainConfig.from_dict(data).reg_target == "flow"
    assert TrainConfig(reg="weight", rho=0.3).reg_target == "step"
    with pytest.raises(CNodeError, match="without a regularizer"):
        TrainConfig(rho=0.3)
    assert math.isclose(step_rate_limit(0.1, 1.0, 0.2, "inf"), 0.5)


@settings(max_examples=budget(20), deadline=None)
@given(seeds, st.sampled_from(["paper", "contractive"]), st.floats(0.01, 1.0), st.floats(0.0, 0.45), paddings)
def test_the_euler_steps_interval_rule_holds_every_point_and_sees_contraction(seed, field, width, rho, padding):
    """IBP's rule for an Euler step (interval arithmetic met with the mean-value box around the midpoint): every
    point of the box maps inside it, it is never wider than interval arithmetic, and through a step certified
    contractive in Linf its largest half-width shrinks by the step's factor."""
    from certify.bounds.unrolled import unroll

    torch.manual_seed(seed)
    cfg = ModelConfig.preset("mini", channels=3, field=field, rho=rho if field == "contractive" else 0.0,
                             padding=padding)
    model = ConvNODE(cfg).double()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(3.0)
    step = unroll(model).steps[0]
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    hi = lo + width * torch.rand(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    (out_lo, out_hi), _ = step.interval(lo, hi)
    (zl, zh), _ = step.conv.interval(lo, hi)
    plain_lo, plain_hi = lo + step.h * step.act(zl), hi + step.h * step.act(zh)
    assert (out_lo >= plain_lo - 1e-12).all() and (out_hi <= plain_hi + 1e-12).all()
    for _ in range(20):
        x = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64)
        y = step(x)
        assert (y >= out_lo - 1e-9).all() and (y <= out_hi + 1e-9).all()
    if field == "contractive":
        (cert,) = block_certificates(model.block.spec(), ("inf",))
        half_in = (0.5 * (hi - lo)).flatten(1).amax(1)
        half_out = (0.5 * (out_hi - out_lo)).flatten(1).amax(1)
        assert (half_out <= cert.step_factors[0] * half_in * (1 + 1e-9)).all()
