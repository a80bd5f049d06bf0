"""LMI certificates: FFT blocks vs the dense matrix, soundness vs random D and simulation, bad statuses."""

import math

import numpy as np
import pytest
import torch

from contraction.certificates import CERTIFIED, BlockSpec, block_certificates
from contraction.convops import apply_conv, conv_matrix
from contraction.lmi import (
    INFEASIBLE,
    conv_blocks,
    dense_blocks,
    lmi_block_certificate,
    solve_step_lmi,
    verify_step_factor,
)
from contraction.slopes import get_activation

A, B, H_STEP = 0.1, 1.0, 0.1


def _kernel(seed=0, C=2, scale=0.3, centre=-2.0):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64) * scale
    K[range(C), range(C), 1, 1] += centre
    return K


@pytest.fixture(scope="module")
def solved():
    K = _kernel()
    res = solve_step_lmi([conv_blocks(K, 4, 4)], A, B, H_STEP, c_high=2.0, tol=1e-4, iters=14)
    assert res.status == CERTIFIED
    return K, res


@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
def test_fft_blocks_give_the_same_factor_as_the_dense_matrix(solved, hw):
    """For a channel metric P_c (x) I and L_c (x) I, the verified factor over DFT blocks equals the dense one."""
    K, res = solved
    H, W = hw
    P, L = res.P, res.L[0]
    n = H * W
    P_dense = np.kron(P, np.eye(n))
    L_dense = np.repeat(L, n)
    T = conv_matrix(K, H, W, "circular")
    f_fft = verify_step_factor(P, L, conv_blocks(K, H, W), A, B, H_STEP)
    f_dense = verify_step_factor(P_dense, L_dense, dense_blocks(T), A, B, H_STEP)
    assert f_fft == pytest.approx(f_dense, rel=1e-7)


def test_lmi_factor_bounds_every_admissible_step_in_the_P_norm(solved):
    K, res = solved
    H, W = 4, 4
    n = H * W
    T = conv_matrix(K, H, W, "circular")
    P = torch.from_numpy(np.kron(res.P, np.eye(n)))
    Rt = torch.linalg.cholesky(P).T  # ||x||_P = ||R^T x||
    rng = np.random.default_rng(0)
    c = res.factors[0]
    for _ in range(50):
        d = torch.from_numpy(rng.choice([A, B], size=T.shape[0]) if rng.random() < 0.5 else rng.uniform(A, B, T.shape[0]))
        S = torch.eye(T.shape[0], dtype=torch.float64) + H_STEP * d[:, None] * T
        gain = torch.linalg.matrix_norm(Rt @ S @ torch.linalg.inv(Rt), ord=2)
        assert float(gain) <= c * (1 + 1e-9)


def test_simulated_trajectories_contract_in_the_P_norm(solved):
    K, res = solved
    act = get_activation("smooth_leaky_relu", A)
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    Rt = torch.linalg.cholesky(torch.from_numpy(res.P)).T

    def pnorm(z):
        return torch.einsum("ij,bjp->bip", Rt, z.flatten(2)).flatten(1).norm(dim=1)

    d0 = pnorm(x - y)
    for _ in range(5):
        x = x + H_STEP * act(apply_conv(x, K, "circular") + 0.3)
        y = y + H_STEP * act(apply_conv(y, K, "circular") + 0.3)
    assert (pnorm(x - y) <= d0 * res.factors[0] ** 5 * (1 + 1e-9)).all()


def test_lmi_is_never_worse_than_the_2_norm_weight_bound():
    K = _kernel(3, C=3, scale=0.2)
    spec = BlockSpec((K,) * 3, A, B, H_STEP, "euler", "circular", 6, 6)
    lmi = lmi_block_certificate(spec, tol=1e-4)
    weight2 = [c for c in block_certificates(spec) if c.norm == "2"][0]
    assert lmi.certified and lmi.factor <= weight2.factor * (1 + 1e-6)
    assert len(lmi.step_factors) == 3


def test_expanding_system_is_not_certified_below_one_and_bad_inputs_have_status():
    K = _kernel(centre=+3.0)  # expanding: any verified factor is > 1
    res = solve_step_lmi([conv_blocks(K, 4, 4)], A, B, H_STEP, c_high=1.0, tol=1e-3, iters=6)
    assert res.status == INFEASIBLE and res.P is None and res.factors == ()
    nan = solve_step_lmi([conv_blocks(K, 4, 4) * np.nan], A, B, H_STEP, c_high=2.0)
    assert nan.status != CERTIFIED and nan.P is None
    # an inaccurate point (L too small for M22 < 0) verifies to no factor at all
    assert math.isinf(verify_step_factor(np.eye(2), np.zeros(2), conv_blocks(K, 4, 4), A, B, H_STEP))
    zeros = lmi_block_certificate(BlockSpec((K,), A, B, H_STEP, "euler", "zeros", 4, 4))
    assert not zeros.certified and "circular" in zeros.condition and zeros.factor is None
    rk4 = lmi_block_certificate(BlockSpec((K,), A, B, H_STEP, "rk4", "circular", 4, 4))
    assert not rk4.certified


def test_the_step_problem_is_built_once_and_bisects_a_dpp_parameter():
    """The LMI is canonicalised once (DPP: c enters only as the parameter 1 - c^2) and re-solved at every c; a
    feasible c stays feasible above it, its verified factor is at most c, and a problem rebuilt at that c agrees."""
    import cvxpy as cp

    from contraction.lmi import _StepProblem

    blocks = [conv_blocks(_kernel(1), 4, 4)]
    problem = _StepProblem(cp, blocks, A, B, H_STEP)
    assert problem.prob.is_dpp()
    solver = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else "SCS"
    found = []
    for c in (2.0, 1.5, 1.2):
        status, P, L, _ = problem.solve(c, solver, 1e-7)
        found.append(P is not None)
        if P is not None:
            f = verify_step_factor(P, L[0], blocks[0], A, B, H_STEP)
            fresh = _StepProblem(cp, blocks, A, B, H_STEP).solve(c, solver, 1e-7)
            assert fresh[1] is not None and f <= c * (1 + 1e-3)
    assert found[0] and found == sorted(found, reverse=True)  # feasibility only shrinks as c falls
