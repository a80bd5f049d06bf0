"""Regularizers: finite gradients, and a gradient step moves the certified rate the right way."""

import pytest
import torch
from torch import nn

from contraction.errors import CNodeError
from contraction.regularizers import jacobian_hinge, jacobian_log_norm, weight_hinge
from contraction.slopes import get_activation
from contraction.weights import mu_2_gershgorin_bound, mu_inf_bound

ACT = get_activation("smooth_leaky_relu", 0.1)


def _conv(seed=0, padding="zeros"):
    torch.manual_seed(seed)
    return nn.Conv2d(3, 3, 3, padding=1, padding_mode=padding).double()


@pytest.mark.parametrize("norm,bound", [("inf", mu_inf_bound), ("2", mu_2_gershgorin_bound)])
def test_weight_hinge_steps_improve_the_certified_rate(norm, bound):
    conv = _conv()
    rho = 0.5
    before = float(bound(conv.weight, ACT.a, ACT.b))
    opt = torch.optim.SGD(conv.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = weight_hinge([conv], ACT, rho=rho, norm=norm)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters() if p.grad is not None)
        opt.step()
    after = float(bound(conv.weight, ACT.a, ACT.b))
    assert after < before
    if float(weight_hinge([conv], ACT, rho=rho, norm=norm)) == 0.0:
        assert after <= -rho + 1e-9  # zero penalty means certified at rate rho


def test_zero_weight_penalty_certifies_the_rate():
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[0, 0, 1, 1] = K[1, 1, 1, 1] = -20.0
    K[0, 1] = 0.1
    for norm, bound in [("inf", mu_inf_bound), ("2", mu_2_gershgorin_bound)]:
        assert float(weight_hinge([K], ACT, rho=1.0, norm=norm)) == 0.0
        assert float(bound(K, ACT.a, ACT.b)) <= -1.0


@pytest.mark.parametrize("norm", ["inf", "1", "2"])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_jacobian_hinge_gradients_are_finite_and_reduce_the_measure(norm, padding):
    conv = _conv(1, padding)
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    before = float(jacobian_log_norm(conv, ACT, x, norm=norm, iters=30).mean())
    opt = torch.optim.SGD(conv.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        jacobian_hinge(conv, ACT, x, rho=1.0, norm=norm, iters=5).backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
        opt.step()
    after = float(jacobian_log_norm(conv, ACT, x, norm=norm, iters=30).mean())
    assert after < before


def test_regularizers_work_on_a_dense_field_in_a_plain_loop():
    torch.manual_seed(0)
    layer = nn.Linear(6, 6).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    for norm in ("inf", "2"):
        value = jacobian_hinge(layer, ACT, x, rho=0.2, norm=norm)
        assert value.dim() == 0 and torch.isfinite(value)
    # dense mu_inf at the states equals the dense Jacobian's log-norm
    d = ACT.deriv(layer(x))
    J = d[:, :, None] * layer.weight
    from contraction.measures import mu_inf

    torch.testing.assert_close(jacobian_log_norm(layer, ACT, x, norm="inf"), mu_inf(J))
    assert float(weight_hinge([layer], ACT, rho=0.2, norm="inf")) >= 0


def test_bad_arguments():
    conv = _conv()
    with pytest.raises(CNodeError, match="rho"):
        weight_hinge([conv], ACT, rho=-1.0)
    with pytest.raises(CNodeError, match="norm"):
        weight_hinge([conv], ACT, rho=0.0, norm="fro")
    with pytest.raises(CNodeError, match="a > 0"):
        weight_hinge([conv], get_activation("tanh"), rho=0.0, norm="inf")
    with pytest.raises(CNodeError, match="at least one"):
        weight_hinge([], ACT, rho=0.0)
