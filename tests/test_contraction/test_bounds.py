"""Soundness: weight-only certificates vs dense Jacobians D T(K) at random states and slopes, and vs simulation."""


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contraction.certificates import BlockSpec, block_certificates
from contraction.convops import apply_conv, conv_matrix, conv_spectral_norm
from contraction.errors import CNodeError
from contraction.jacobian import mu_1_at, mu_2_estimate, mu_inf_at
from contraction.measures import mu_1, mu_2, mu_inf, mu_inf_weighted, norm_1, norm_2, norm_inf
from contraction.slopes import get_activation
from contraction.weights import (
    euler_factor_1,
    euler_factor_2,
    euler_factor_inf,
    euler_perron_weights,
    mu_1_bound,
    mu_2_gershgorin_bound,
    mu_inf_bound,
    mu_inf_weighted_bound,
    perron_weights,
)
from tests.profiles import budget
from tests.strategies import image_sizes, kernels, paddings, seeds, slope_pairs

TOL = 1e-9


def _random_D(seed, n, a, b, count=8):
    rng = np.random.default_rng(seed)
    ds = [rng.uniform(a, b, size=n) for _ in range(count - 2)]
    ds.append(rng.choice([a, b], size=n))  # vertices matter for the worst case
    ds.append(np.full(n, b))
    return [torch.from_numpy(d) for d in ds]


def _expand(eta, H, W):
    return eta[:, None].expand(-1, H * W).reshape(-1)


@given(kernels(negative_centre=True), slope_pairs(), paddings, image_sizes, seeds, st.floats(0.01, 1.0))
def test_weight_bounds_hold_for_every_admissible_D(K, slopes, padding, hw, seed, h):
    a, b = slopes
    H, W = hw
    T = conv_matrix(K, H, W, padding)
    n = T.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    eta = perron_weights([K])
    eta_e = euler_perron_weights([K], a, b, h)
    bounds = {
        "mu_inf": float(mu_inf_bound(K, a, b)),
        "mu_1": float(mu_1_bound(K, a, b)),
        "mu_2": float(mu_2_gershgorin_bound(K, a, b)),
        "mu_eta": float(mu_inf_weighted_bound(K, a, b, eta)),
        "step_inf": float(euler_factor_inf(K, a, b, h)),
        "step_eta": float(euler_factor_inf(K, a, b, h, eta_e)),
        "step_1": float(euler_factor_1(K, a, b, h)),
        "step_2": float(euler_factor_2(K, a, b, h, conv_spectral_norm(K, H, W, padding))),
    }
    for d in _random_D(seed, n, a, b):
        J = d[:, None] * T
        S = eye + h * J
        true = {
            "mu_inf": float(mu_inf(J)),
            "mu_1": float(mu_1(J)),
            "mu_2": float(mu_2(J)),
            "mu_eta": float(mu_inf_weighted(J, _expand(eta, H, W))),
            "step_inf": float(norm_inf(S)),
            "step_eta": float(norm_inf(_expand(eta_e, H, W)[:, None] * S / _expand(eta_e, H, W)[None, :])),
            "step_1": float(norm_1(S)),
            "step_2": float(norm_2(S)),
        }
        for key, value in true.items():
            assert value <= bounds[key] + TOL * (1 + abs(bounds[key])), (key, value, bounds[key])


@given(kernels(negative_centre=True), slope_pairs(), st.floats(0.01, 1.0))
def test_optimal_weights_are_never_worse_than_unweighted(K, slopes, h):
    a, b = slopes
    eta = perron_weights([K])
    assert float(mu_inf_weighted_bound(K, a, b, eta)) <= float(mu_inf_bound(K, a, b)) + 1e-9
    eta_e = euler_perron_weights([K], a, b, h)
    assert float(euler_factor_inf(K, a, b, h, eta_e)) <= float(euler_factor_inf(K, a, b, h)) + 1e-9


@given(kernels(negative_centre=True), st.floats(0.01, 1.0), seeds)
def test_perron_weights_beat_random_weights(K, a, seed):
    """The Perron vector of the Metzler majorant is optimal: no positive weight does better."""
    eta = perron_weights([K])
    best = float(mu_inf_weighted_bound(K, a, 1.0, eta))
    rng = np.random.default_rng(seed)
    for _ in range(20):
        other = torch.from_numpy(rng.uniform(0.1, 10, size=K.shape[0]))
        assert best <= float(mu_inf_weighted_bound(K, a, 1.0, other)) + 1e-7 * (1 + abs(best))


@given(kernels(channels=(1, 3), negative_centre=True), paddings, st.sampled_from(["smooth_leaky_relu", "tanh",
       "leaky_relu"]), st.integers(1, 4), seeds, st.floats(0.02, 0.5))
def test_simulated_euler_pairs_never_separate_faster_than_certified(K0, padding, act_name, steps, seed, h):
    act = get_activation(act_name, 0.1)
    H, W = 4, 5
    g = torch.Generator().manual_seed(seed)
    C = K0.shape[0]
    Ks = [K0] + [K0 + 0.3 * torch.randn(K0.shape, generator=g, dtype=torch.float64) for _ in range(steps - 1)]
    biases = [torch.randn(C, generator=g, dtype=torch.float64) for _ in Ks]
    spec = BlockSpec(tuple(Ks), act.a, act.b, h, "euler", padding, H, W)
    certs = {c.norm: c for c in block_certificates(spec)}
    x = 3 * torch.randn(6, C, H, W, generator=g, dtype=torch.float64)
    y = x + torch.randn(6, C, H, W, generator=g, dtype=torch.float64) * torch.logspace(-4, 0, 6, dtype=torch.float64)[
        :, None, None, None]
    x0, y0 = x.clone(), y.clone()
    for K, bias in zip(Ks, biases):
        x = x + h * act(apply_conv(x, K, padding) + bias[:, None, None])
        y = y + h * act(apply_conv(y, K, padding) + bias[:, None, None])
    eta = torch.tensor(certs["inf_weighted"].weights, dtype=torch.float64)[None, :, None, None]
    norms = {
        "inf": lambda z: z.flatten(1).abs().amax(1),
        "inf_weighted": lambda z: (eta * z).flatten(1).abs().amax(1),
        "1": lambda z: z.flatten(1).abs().sum(1),
        "2": lambda z: z.flatten(1).norm(dim=1),
    }
    for name, norm in norms.items():
        ratio = norm(x - y) / norm(x0 - y0)
        assert (ratio <= certs[name].factor * (1 + 1e-9)).all(), (name, ratio.max(), certs[name].factor)


def test_contracting_layer_has_the_closed_form_factor():
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[0, 0, 1, 1] = K[1, 1, 1, 1] = -4.0
    K[0, 1, 0, 0] = 1.0
    a, b, h = 0.1, 1.0, 0.1
    # s_i = -4 + 1 and -4: mu_inf <= a * max(s) = -0.3; h b |c| = 0.4 <= 1 so the step factor is 1 - h * 0.3
    assert float(mu_inf_bound(K, a, b)) == pytest.approx(-0.3)
    assert float(euler_factor_inf(K, a, b, h)) == pytest.approx(1 - h * 0.3)
    spec = BlockSpec((K,) * 10, a, b, h, "euler", "zeros", 5, 5)
    cert = next(c for c in block_certificates(spec) if c.norm == "inf")
    assert cert.contracting and cert.rate >= 0.3 - 1e-12 and cert.factor <= (1 - 0.03) ** 10 + 1e-12


def test_adaptive_solvers_are_not_certified():
    K = -torch.eye(2, dtype=torch.float64)[:, :, None, None]
    for solver in ("dopri5",):
        certs = block_certificates(BlockSpec((K,), 0.1, 1.0, 0.1, solver, "zeros", 3, 3))
        assert all(not c.certified and c.factor is None and c.rate is None for c in certs)


def test_nan_weights_and_bad_slopes_are_rejected():
    K = torch.full((2, 2, 3, 3), float("nan"))
    with pytest.raises(CNodeError, match="non-finite"):
        BlockSpec((K,), 0.1, 1.0, 0.1, "euler", "zeros", 3, 3)
    with pytest.raises(CNodeError, match="slope"):
        mu_inf_bound(torch.zeros(1, 1, 3, 3), 1.0, 0.5)


@given(kernels(), paddings, image_sizes, seeds)
def test_state_probes_equal_the_dense_jacobian(K, padding, hw, seed):
    H, W = max(hw[0], 3), max(hw[1], 3)  # no wrapped taps: exact equality
    act = get_activation("smooth_leaky_relu", 0.1)
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(3, K.shape[0], H, W, generator=g, dtype=torch.float64)
    d = act.deriv(apply_conv(x, K, padding))
    T = conv_matrix(K, H, W, padding)
    J = d.flatten(1)[:, :, None] * T
    torch.testing.assert_close(mu_inf_at(d, K, padding), mu_inf(J))
    torch.testing.assert_close(mu_1_at(d, K, padding), mu_1(J))


@settings(max_examples=budget(10))  # 300 power iterations per example
@given(kernels(), paddings, image_sizes, seeds)
def test_the_mu_2_estimate_is_a_rayleigh_quotient_close_to_the_dense_value(K, padding, hw, seed):
    H, W = max(hw[0], 3), max(hw[1], 3)
    act = get_activation("smooth_leaky_relu", 0.1)
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(3, K.shape[0], H, W, generator=g, dtype=torch.float64)
    d = act.deriv(apply_conv(x, K, padding))
    J = d.flatten(1)[:, :, None] * conv_matrix(K, H, W, padding)
    est, _ = mu_2_estimate(lambda z: act(apply_conv(z, K, padding)), x, iters=300)
    S = (J + J.transpose(1, 2)) / 2
    eigs = torch.linalg.eigvalsh(S)
    true, scale = eigs[:, -1], eigs.abs().amax(1)
    assert (est <= true + 1e-9 * (1 + scale)).all()  # a Rayleigh quotient: never above the true value
    assert (est >= true - 0.05 * scale - 1e-9).all()  # and close to it (relative to ||S||) after enough iterations
