"""The flow's regularizers (target='flow'): finite gradients, and a gradient step moves the certified rate the
right way. The Euler step's targets (the default) are tested in test_step_targets.py."""

import pytest
import torch
from torch import nn

from contraction.errors import CNodeError
from contraction.regularizers import contractive_centre_taps, jacobian_hinge, jacobian_log_norm, weight_hinge
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
    before = float(bound(conv.weight.detach(), ACT.a, ACT.b))
    assert before > -rho  # not certified at the start: the steps have work to do
    opt = torch.optim.SGD(conv.parameters(), lr=0.05)
    for step in range(2000):
        opt.zero_grad()
        loss = weight_hinge([conv], ACT, rho=rho, norm=norm, target="flow")
        if float(loss) == 0.0:
            break
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters() if p.grad is not None)
        opt.step()
    final = float(weight_hinge([conv], ACT, rho=rho, norm=norm, target="flow"))
    assert final == 0.0, f"hinge still active after {step} steps"
    after = float(bound(conv.weight.detach(), ACT.a, ACT.b))
    assert after <= -rho + 1e-9 < before  # zero penalty: certified at rate rho


def test_zero_weight_penalty_certifies_the_rate():
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[0, 0, 1, 1] = K[1, 1, 1, 1] = -20.0
    K[0, 1] = 0.1
    for norm, bound in [("inf", mu_inf_bound), ("2", mu_2_gershgorin_bound)]:
        assert float(weight_hinge([K], ACT, rho=1.0, norm=norm, target="flow")) == 0.0
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
        jacobian_hinge(conv, ACT, x, rho=1.0, norm=norm, iters=5, target="flow").backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
        opt.step()
    after = float(jacobian_log_norm(conv, ACT, x, norm=norm, iters=30).mean())
    assert after < before


def test_regularizers_work_on_a_dense_field_in_a_plain_loop():
    torch.manual_seed(0)
    layer = nn.Linear(6, 6).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    for norm in ("inf", "2"):
        value = jacobian_hinge(layer, ACT, x, rho=0.2, norm=norm, target="flow")
        assert value.dim() == 0 and torch.isfinite(value)
    # dense mu_inf at the states equals the dense Jacobian's log-norm
    d = ACT.deriv(layer(x))
    J = d[:, :, None] * layer.weight
    from contraction.measures import mu_inf

    torch.testing.assert_close(jacobian_log_norm(layer, ACT, x, norm="inf"), mu_inf(J))
    # the inf-norm weight hinge of a dense layer, written out: sum_i relu(W_ii + sum_{j != i} |W_ij| + rho / a)
    W = layer.weight.detach()
    rows = W.diagonal() + (W.abs().sum(1) - W.diagonal().abs())
    expected = torch.relu(rows + 0.2 / ACT.a)
    torch.testing.assert_close(weight_hinge([layer], ACT, rho=0.2, norm="inf", target="flow"), expected.sum())
    torch.testing.assert_close(weight_hinge([layer], ACT, rho=0.2, norm="inf", squared=True, target="flow"),
                               expected.pow(2).sum())


def test_bad_arguments():
    conv = _conv()
    with pytest.raises(CNodeError, match="rho"):
        weight_hinge([conv], ACT, rho=-1.0, target="flow")
    with pytest.raises(CNodeError, match="norm"):
        weight_hinge([conv], ACT, rho=0.0, norm="fro", target="flow")
    with pytest.raises(CNodeError, match="a > 0"):
        weight_hinge([conv], get_activation("tanh"), rho=0.0, norm="inf", target="flow")
    with pytest.raises(CNodeError, match="at least one"):
        weight_hinge([], ACT, rho=0.0, target="flow")


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_squared_hinge_makes_adam_runs_depend_on_rho_where_the_linear_one_does_not(norm):
    """Under Adam the linear hinge's step ignores rho while it is active (its gradient does not depend on rho and
    Adam normalises the scale); the squared hinge's gradient 2 relu(mu + rho) does."""

    def run(rho, squared):
        conv = _conv(3)
        opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            weight_hinge([conv], ACT, rho=rho, norm=norm, squared=squared, target="flow").backward()
            opt.step()
        return conv.weight.detach()

    assert torch.equal(run(5.0, False), run(10.0, False))  # active all along (rho / a is large): identical
    low, high = run(5.0, True), run(10.0, True)
    assert not torch.equal(low, high)
    bound = mu_inf_bound if norm == "inf" else mu_2_gershgorin_bound
    assert float(bound(high, ACT.a, ACT.b)) < float(bound(low, ACT.a, ACT.b))  # the higher target contracts more


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_contractive_centre_taps_zero_the_weight_hinge_exactly_at_their_rate(norm):
    conv = _conv(4)
    K = conv.weight.detach().clone()
    c = K.shape[-1] // 2
    idx = torch.arange(K.shape[0])
    K[idx, idx, c, c] = contractive_centre_taps(K, ACT, rho=0.7, norm=norm)
    assert float(weight_hinge([K], ACT, rho=0.7, norm=norm, target="flow")) < 1e-9  # at the rate (round-off)
    assert float(weight_hinge([K], ACT, rho=0.8, norm=norm, target="flow")) > 0  # a higher rate is not reached
    bound = mu_inf_bound if norm == "inf" else mu_2_gershgorin_bound
    assert float(bound(K, ACT.a, ACT.b)) <= -0.7 + 1e-9
