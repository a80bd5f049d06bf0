"""The fixed-step Runge-Kutta solvers as run: our tableaus reproduce torchdiffeq's steps, and every block
certificate's step factor bounds the dense Jacobian of the step for every admissible slope matrix of every stage
(vertices included), in every norm, for the paper's and the gradient field; simulated pairs never separate faster."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq import odeint

from contraction.certificates import BlockSpec, block_certificates, verdict
from contraction.convops import apply_conv, apply_conv_adjoint, conv_matrix
from contraction.errors import CNodeError
from contraction.runge_kutta import TABLEAUS, Tableau, rk_step_factor, step_factor, tableau_step
from contraction.slopes import get_activation
from tests.profiles import budget
from tests.strategies import image_sizes, kernels, paddings, seeds

RK = [name for name in TABLEAUS if name != "euler"]
NORMS = ("inf", "inf_weighted", "1", "2")


def _field(K, padding, field, act, bias):
    if field == "gradient":
        return lambda t, x: -apply_conv_adjoint(act(apply_conv(x, K, padding) + bias), K, padding)
    return lambda t, x: act(apply_conv(x, K, padding) + bias)


def _tableau_step(tableau, f, x, h):
    ks = []
    for row in tableau.a:
        y = x + h * sum((w * k for w, k in zip(row, ks)), torch.zeros_like(x))
        ks.append(f(0.0, y))
    return x + h * sum(w * k for w, k in zip(tableau.b, ks))


def _run(solver, f, x, h):
    """One step as the block runs it: torchdiffeq's, or the block's own (contraction.runge_kutta.tableau_step)."""
    tableau = TABLEAUS[solver]
    if tableau.torchdiffeq:
        return odeint(f, x, torch.tensor([0.0, h], dtype=x.dtype), method=solver)[-1]
    return tableau_step(lambda y: f(0.0, y), x, h, tableau)


def _shu_osher_step(tableau, f, x, h):
    """v_0 = x, v_m = sum_k alpha_mk v_k + h beta_mk f(v_k): the last v is the step."""
    v = [x]
    for row in tableau.shu_osher:
        v.append(sum(al * v[k] + h * be * f(0.0, v[k]) for k, (al, be) in enumerate(row)))
    return v[-1]


@pytest.mark.parametrize("solver", list(TABLEAUS))
def test_tableaus_are_the_steps_the_block_runs(solver):
    """Our tableaus reproduce torchdiffeq's steps (the library's tableau_step and a plain re-implementation); a
    Shu-Osher form is the same step."""
    g = torch.Generator().manual_seed(0)
    K = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, 1, 1, generator=g, dtype=torch.float64)
    f = _field(K, "zeros", "paper", get_activation("smooth_leaky_relu", 0.1), bias)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    h = 0.3
    tableau = TABLEAUS[solver]
    ours = _tableau_step(tableau, f, x, h)
    torch.testing.assert_close(tableau_step(lambda y: f(0.0, y), x, h, tableau), ours, rtol=1e-12, atol=1e-12)
    if tableau.torchdiffeq:
        torch.testing.assert_close(ours, _run(solver, f, x, h), rtol=1e-12, atol=1e-12)
    if tableau.shu_osher is not None:
        torch.testing.assert_close(_shu_osher_step(tableau, f, x, h), ours, rtol=1e-12, atol=1e-12)


def _step_jacobian(tableau, h, Jf):
    """J = I + h sum_i b_i Jf_i G_i, G_i = I + h sum_j a_ij Jf_j G_j, with one field Jacobian per stage."""
    n = Jf[0].shape[0]
    eye = torch.eye(n, dtype=Jf[0].dtype)
    G = []
    for i, row in enumerate(tableau.a):
        G.append(eye + h * sum((w * Jf[j] @ G[j] for j, w in enumerate(row)), torch.zeros_like(eye)))
    return eye + h * sum(w * Jf[i] @ G[i] for i, w in enumerate(tableau.b))


def _norm(J, norm, eta):
    if norm == "inf":
        return float(J.abs().sum(1).max())
    if norm == "1":
        return float(J.abs().sum(0).max())
    if norm == "2":
        return float(torch.linalg.matrix_norm(J, 2))
    return float((J.abs() * eta[:, None] / eta[None, :]).sum(1).max())


@settings(max_examples=budget(20))
@given(kernels(negative_centre=True), paddings, image_sizes, seeds, st.floats(0.01, 0.6),
       st.sampled_from(RK), st.sampled_from(["paper", "gradient"]), st.sampled_from([(0.1, 1.0), (0.0, 1.0), (0.5, 2.0)]))
def test_step_factors_bound_the_dense_jacobian_for_every_slope_of_every_stage(K, padding, hw, seed, h, solver, field,
                                                                              slopes):
    a, b = slopes
    H, W = max(hw[0], 3), max(hw[1], 3)  # no circular taps wrapping onto each other
    tableau = TABLEAUS[solver]
    spec = BlockSpec((K,), a, b, h, solver, padding, H, W, field)
    T = conv_matrix(K, H, W, padding)
    n = T.shape[0]
    rng = np.random.default_rng(seed)
    for cert in block_certificates(spec, NORMS):
        if not cert.certified:
            assert field == "gradient" and cert.norm == "inf_weighted"
            continue
        assert cert.step_factors[0] == pytest.approx(cert.factor)
        eta = torch.tensor(cert.weights, dtype=torch.float64).repeat_interleave(H * W) if cert.weights else None
        for trial in range(6):
            Jf = []
            for _ in range(tableau.stages):  # each stage its own slopes: vertices first, then interior draws
                d = rng.choice([a, b], size=n) if trial < 3 else rng.uniform(a, b, size=n)
                D = torch.diag(torch.from_numpy(d))
                Jf.append(-T.T @ D @ T if field == "gradient" else D @ T)
            J = _step_jacobian(tableau, h, Jf)
            assert _norm(J, cert.norm, eta) <= cert.factor * (1 + 1e-9) + 1e-12, (cert.norm, cert.condition)


@settings(max_examples=budget(15))
@given(kernels(negative_centre=True), paddings, seeds, st.floats(0.05, 0.5), st.sampled_from(RK))
def test_simulated_pairs_never_separate_faster_than_certified(K, padding, seed, h, solver):
    """Two states pushed through torchdiffeq's step with the smooth leaky ReLU: ||x+ - y+|| <= factor ||x - y||."""
    act = get_activation("smooth_leaky_relu", 0.1)
    g = torch.Generator().manual_seed(seed)
    C, H = K.shape[0], 5
    bias = torch.randn(C, 1, 1, generator=g, dtype=torch.float64)
    f = _field(K, padding, "paper", act, bias)
    x = 3 * torch.randn(4, C, H, H, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(4, C, H, H, generator=g, dtype=torch.float64)
    fx, fy = _run(solver, f, x, h), _run(solver, f, y, h)
    spec = BlockSpec((K,), act.a, act.b, h, solver, padding, H, H)
    for cert in block_certificates(spec, ("inf", "2")):
        dist = (lambda v: v.flatten(1).abs().amax(1)) if cert.norm == "inf" else (lambda v: v.flatten(1).norm(dim=1))
        assert (dist(fx - fy) <= cert.factor * dist(x - y) * (1 + 1e-9) + 1e-12).all()


def test_heun_is_contractive_whenever_its_euler_step_is_and_midpoint_pays_second_order():
    """Heun (Shu-Osher): (1 + E^2) / 2 < 1 for every E < 1, whatever L; the generic bound adds h^2 L^2 / 2 for the
    midpoint rule and reduces to E for Euler."""
    for E in (0.2, 0.9, 0.999):
        assert step_factor("heun2", 0.1, E, 100.0) == pytest.approx((1 + E * E) / 2) and (1 + E * E) / 2 < 1
    assert rk_step_factor(TABLEAUS["midpoint"], 0.1, 0.9, 2.0) == pytest.approx(0.9 + 0.1**2 * 2.0**2 / 2)
    assert rk_step_factor(TABLEAUS["euler"], 0.1, 0.9, 50.0) == 0.9
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[range(2), range(2), 1, 1] = -4.0
    euler, heun = (block_certificates(BlockSpec((K,) * 5, 0.1, 1.0, 0.2, s, "zeros", 4, 4), ("inf",))[0]
                   for s in ("euler", "heun2"))
    assert euler.contracting and heun.contracting and heun.factor < 1 and "heun2" in heun.method


def test_a_runge_kutta_verdict_names_the_condition_that_fails():
    """Where an RK step does not contract, the verdict says whether its Euler factor is the problem or the (h L)^2
    terms of a non-SSP tableau (then a smaller step or an SSP solver)."""
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[range(2), range(2), 1, 1] = -4.0
    mid = block_certificates(BlockSpec((K,) * 5, 0.1, 1.0, 0.45, "midpoint", "zeros", 4, 4), ("inf",))[0]
    assert mid.factor > 1 and max(mid.extra["euler_step_factors"]) < 1
    assert "SSP solver" in verdict(mid) and "(h L)^2" in verdict(mid)
    K[range(2), range(2), 1, 1] = -12.0
    big = block_certificates(BlockSpec((K,) * 5, 0.1, 1.0, 0.45, "heun2", "zeros", 4, 4), ("inf",))[0]
    assert big.factor > 1 and "E(h) < 1" in verdict(big)


def test_adaptive_and_unknown_solvers_get_one_line_reasons():
    K = -torch.eye(2, dtype=torch.float64)[:, :, None, None]
    certs = block_certificates(BlockSpec((K,), 0.1, 1.0, 0.1, "dopri5", "zeros", 3, 3))
    assert all(not c.certified and c.factor is None and "adaptive" in c.condition for c in certs)
    with pytest.raises(CNodeError, match="fixed-step solvers"):
        step_factor("dopri5", 0.1, 0.9, 1.0)
    with pytest.raises(CNodeError, match="sum to 1"):
        Tableau("bad", ((), (1.0,)), (1.5, -0.4))
    with pytest.raises(CNodeError, match="summing to 0"):
        Tableau("bad", ((), (1.0,)), (1.5, -0.5), error=(0.1, 0.0))
    with pytest.raises(CNodeError, match="lower triangular"):
        Tableau("bad", ((1.0,), ()), (0.5, 0.5))


@pytest.mark.parametrize("solver", RK)
def test_a_convnode_block_run_with_each_solver_shrinks_pairs_by_its_certified_factor(solver):
    """The block as the model runs it (nodes' ODEBlock: one torchdiffeq step per interval, a kernel per interval)
    against the certificate of its spec: pairs of states never separate by more than the block factor."""
    from nodes.classifier import ConvNODE
    from nodes.config import ModelConfig
    from nodes.regularize import negative_diagonal_init_

    torch.manual_seed(0)
    model = negative_diagonal_init_(ConvNODE(ModelConfig(channels=3, steps=3, solver=solver)), value=-2.0).double()
    c, s = model.config.channels, model.config.block_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, c, s, s, generator=g, dtype=torch.float64)
    y = x + 0.05 * torch.randn(6, c, s, s, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fx, fy = model.block(x), model.block(y)
    for cert in block_certificates(model.block.spec(), ("inf", "2")):
        assert cert.certified and len(cert.step_factors) == 3 and solver in cert.method
        dist = (lambda v: v.flatten(1).abs().amax(1)) if cert.norm == "inf" else (lambda v: v.flatten(1).norm(dim=1))
        assert (dist(fx - fy) <= cert.factor * dist(x - y) * (1 + 1e-9)).all()
