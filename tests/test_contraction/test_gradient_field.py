"""The gradient field x' = -T^T sigma(T x + b): its Euler step's certified factors and rate against dense Jacobians
I - h T^T D T at random and vertex D, and the generalised LMI (x' = A sigma(T x + b), A = -T^T) against the
closed form."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contraction.certificates import BlockSpec, block_certificates, gradient_step_factors
from contraction.convops import conv_matrix, conv_singular_range
from contraction.lmi import dense_blocks, lmi_block_certificate, solve_step_lmi, verify_step_factor
from contraction.measures import mu_2, mu_inf, norm_2, norm_inf
from tests.profiles import budget
from tests.strategies import kernels, paddings, seeds, slope_pairs

TOL = 1e-9


def _random_D(seed, n, a, b, count=8):
    rng = np.random.default_rng(seed)
    ds = [rng.uniform(a, b, size=n) for _ in range(count - 3)]
    ds += [rng.choice([a, b], size=n), np.full(n, a), np.full(n, b)]  # vertices carry the worst case
    return [torch.from_numpy(d) for d in ds]


@settings(max_examples=budget(40), deadline=None)
@given(kernels(sizes=(1, 3)), slope_pairs(), paddings, st.integers(3, 5), seeds, st.floats(0.01, 1.0))
def test_step_factors_and_rates_bound_every_dense_jacobian(K, slopes, padding, side, seed, h):
    a, b = slopes
    T = conv_matrix(K, side, side, padding)
    n = T.shape[0]
    f = gradient_step_factors(K, a, b, h, side, side, padding)
    svals = torch.linalg.svdvals(T)
    assert f["s_max"] >= float(svals.max()) * (1 - TOL)  # exact (circular) or an upper bound (zero padding)
    assert f["s_min"] <= float(svals.min()) * (1 + TOL) + TOL
    if padding == "circular":
        assert math.isclose(f["s_min"], float(svals.min()), rel_tol=1e-7, abs_tol=1e-9)
        assert math.isclose(f["s_max"], float(svals.max()), rel_tol=1e-7)
    eye = torch.eye(n, dtype=torch.float64)
    for d in _random_D(seed, n, a, b):
        J = -T.T @ torch.diag(d) @ T
        torch.testing.assert_close(J, J.T)
        assert float(mu_2(J)) <= -f["rate_2"] + TOL * (1 + f["s_max"] ** 2)
        assert float(mu_inf(J)) <= f["mu_inf"] + TOL * (1 + f["s_max"] ** 2)
        step = eye + h * J
        assert float(norm_2(step)) <= f["2"] * (1 + TOL) + TOL
        assert float(norm_inf(step)) <= f["inf"] * (1 + TOL) + TOL
    if padding == "circular":  # the L2 factor is attained at D = a I or D = b I: the closed form is exact
        worst = max(float(norm_2(eye - h * d * T.T @ T)) for d in (a, b))
        assert math.isclose(worst, f["2"], rel_tol=1e-7, abs_tol=1e-9)


def test_block_certificates_of_the_gradient_field_multiply_the_step_factors():
    g = torch.Generator().manual_seed(1)
    Ks = [torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64) * 0.4 for _ in range(3)]
    spec = BlockSpec(tuple(Ks), 0.1, 1.0, 0.2, "euler", "circular", 5, 5, "gradient")
    certs = {c.norm: c for c in block_certificates(spec)}
    per = [gradient_step_factors(K, 0.1, 1.0, 0.2, 5, 5, "circular") for K in Ks]
    assert certs["2"].certified and math.isclose(certs["2"].factor, math.prod(p["2"] for p in per))
    assert math.isclose(certs["2"].rate, min(0.1 * p["s_min"] ** 2 for p in per))
    assert not certs["inf_weighted"].certified and certs["inf_weighted"].factor is None
    paper = {c.norm: c for c in block_certificates(BlockSpec(tuple(Ks), 0.1, 1.0, 0.2, "euler", "circular", 5, 5))}
    assert paper["2"].factor != certs["2"].factor  # the field decides which Jacobian is certified


def _gradient_kernel(seed, C=2, limit=1.9, h=0.2, b=1.0):
    """A random kernel scaled so that h b ||T||^2 = limit on the 4 x 4 torus."""
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64)
    smax = conv_singular_range(K, 4, 4, "circular")[1]
    return K * math.sqrt(limit / (h * b)) / smax


@settings(max_examples=budget(4), deadline=None)
@given(seeds, st.floats(1.0, 1.99))
def test_lmi_of_the_gradient_field_agrees_with_the_closed_form(seed, limit):
    """The LMI (A = -T^T, P free) can never beat the closed form (it is the spectral radius at D = a I or b I,
    a lower bound in every norm) and, the S-procedure being tight here, reaches it within the bisection's tolerance."""
    a, b, h = 0.1, 1.0, 0.2
    K = _gradient_kernel(seed, limit=limit, h=h, b=b)
    closed = gradient_step_factors(K, a, b, h, 4, 4, "circular")["2"]
    cert = lmi_block_certificate(BlockSpec((K,), a, b, h, "euler", "circular", 4, 4, "gradient"), tol=1e-4)
    assert cert.certified
    assert closed * (1 - 1e-7) <= cert.factor <= closed * (1 + 2e-3)


def test_generalised_lmi_on_a_dense_layer_matches_a_dense_check():
    """x' = A sigma(T x): the verified factor bounds ||I + h A D T||_P at random and vertex D (P from the solver)."""
    g = torch.Generator().manual_seed(3)
    T = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.8
    A = -T.T.clone()
    a, b, h = 0.1, 1.0, 0.3
    res = solve_step_lmi([dense_blocks(T)], a, b, h, c_high=3.0, tol=1e-4, outs=[dense_blocks(A)])
    assert res.status == "certified"
    P = torch.from_numpy(res.P)
    R = torch.linalg.cholesky(0.5 * (P + P.T))
    for d in _random_D(0, 4, a, b):
        step = torch.eye(3, dtype=torch.float64) + h * A @ torch.diag(d) @ T
        induced = float(norm_2(R.T @ step @ torch.linalg.inv(R.T)))  # ||step||_P
        assert induced <= res.factors[0] * (1 + 1e-7)
    # the identity A recovers the paper's problem: the same verification with outs=None and with A = I
    eye = dense_blocks(torch.eye(4, dtype=torch.float64))
    Tsq = dense_blocks(T[:3])
    f1 = verify_step_factor(np.eye(3) * 2, np.ones(3), Tsq, a, b, h)
    f2 = verify_step_factor(np.eye(3) * 2, np.ones(3), Tsq, a, b, h, eye[:, :3, :3])
    assert f1 == f2


def test_largest_singular_value_and_its_gradient_match_the_decomposition():
    from contraction.convops import largest_singular_value

    g = torch.Generator().manual_seed(5)
    M = torch.randn(6, 4, 7, dtype=torch.complex128, generator=g).requires_grad_()
    value = largest_singular_value(M)
    ref = torch.linalg.svdvals(M)[..., 0]
    torch.testing.assert_close(value, ref)
    (grad,) = torch.autograd.grad(value.sum(), M)
    (ref_grad,) = torch.autograd.grad(torch.linalg.svdvals(M)[..., 0].sum(), M)
    torch.testing.assert_close(grad, ref_grad)
    with torch.no_grad():
        assert torch.equal(largest_singular_value(M), value.detach())
