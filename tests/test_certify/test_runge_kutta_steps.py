"""The fixed-step Runge-Kutta solvers in the bound engine (certify.bounds.layers.RKStep), per tableau, against brute
force: the unrolled step is the step the model runs (torchdiffeq's, or the block's own for ssprk3), the backward rule
is the transposed Jacobian wherever the relaxation is exact, the mean-value boxes contract at least as fast as the
weight-only certificate promises, and the certificates of every stage hold against attacks on a trained model. The
generic property tests (tests.strategies.model_configs draws every solver) check every other rule: boxes, linear
bounds and float32 error bounds contain sampled, vertex and PGD points; Lipschitz factors bound dense Jacobians."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from certify.bounds.layers import Box, EulerStep, GradientStep, RKStep
from certify.bounds.relax import MARGIN
from certify.bounds.unrolled import unroll
from contraction.runge_kutta import FIXED_STEP, TABLEAUS
from nodes import ConvNODE, ModelConfig
from nodes.regularize import negative_diagonal_init_
from tests.profiles import budget
from tests.strategies import seeds

RK = [s for s in FIXED_STEP if s != "euler"]


def _model(solver, field="paper", seed=0, steps=2, channels=3, size=5, centre=None, **kw):
    torch.manual_seed(seed)
    model = ConvNODE(ModelConfig(channels=channels, in_channels=channels, image_size=size, num_classes=3, steps=steps,
                                 solver=solver, field=field, **kw))
    if centre is not None:
        negative_diagonal_init_(model, value=centre)
    return model.double().eval()


@pytest.mark.parametrize("field", ["paper", "gradient"])
@pytest.mark.parametrize("solver", RK)
def test_the_unrolled_step_is_the_step_the_model_runs(solver, field):
    """Float64: the layers' forward equals the model's (torchdiffeq's step, the block's own for ssprk3) to round-off;
    the block's steps are RKStep layers around the field's Euler layer, one per interval."""
    model = _model(solver, field, steps=3)
    net = unroll(model)
    assert [type(layer) for layer in net.steps] == [RKStep] * 3
    assert all(isinstance(s.euler, GradientStep if field == "gradient" else EulerStep) for s in net.steps)
    u = torch.rand(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(u), model(u), rtol=1e-12, atol=1e-12)
        x = model.embedding(u)
        for k, step in enumerate(net.steps):
            x_next = model.block.trajectory(x)[1] if k == 0 else None
            if x_next is not None:
                torch.testing.assert_close(step(x), x_next, rtol=1e-12, atol=1e-12)


@settings(max_examples=budget(12), deadline=None)
@given(st.sampled_from(RK), st.sampled_from(["paper", "gradient"]), seeds)
def test_backward_is_the_transposed_jacobian_where_the_relaxation_is_exact(solver, field, seed):
    """With every stage's pre-activation far in the leaky ReLU's positive part the relaxation is exact (slope 1, no
    offset): the backward rule's linear part is J^T lam, J the step's dense Jacobian, and its constant is
    lam . (x+ - J x), the step being affine there."""
    model = _model(solver, field, seed=seed, activation="leaky_relu")
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.bias.fill_(50.0)
    step = unroll(model).steps[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, generator=g)
    box, pre = step.bounds(Box(x - 0.01, x + 0.01, x))
    assume(bool((pre[0] > 0).all()))  # every stage in the linear part (the premise; rare seeds miss it)
    lam = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    back, const = step.backward(lam, torch.zeros(2, dtype=torch.float64), pre, torch.arange(2))
    for i in range(2):
        J = torch.autograd.functional.jacobian(lambda v: step(v.view(1, 3, 5, 5)).flatten(), x[i].flatten())
        torch.testing.assert_close(back[i].flatten(), J.T @ lam[i].flatten(), rtol=1e-9, atol=1e-9)
        affine = float((lam[i] * step(x[i:i + 1])[0]).sum() - (J.T @ lam[i].flatten() * x[i].flatten()).sum())
        # below it by at most the relaxation's outward margin, MARGIN (1 + |sigma(lo)| + |sigma(hi)|) per neuron
        # (here z ~ 50), weighed by the stages' functionals (|mu| <= a few |lam|)
        margin = MARGIN * (1 + 2 * float(pre[1].abs().max())) * 10 * float(lam[i].abs().sum())
        assert affine - margin - 1e-9 * abs(affine) <= float(const[i]) <= affine + 1e-9 * (1 + abs(affine))


@settings(max_examples=budget(12), deadline=None)
@given(st.sampled_from(FIXED_STEP), st.sampled_from(["paper", "gradient"]), seeds, st.floats(0.05, 1.0),
       st.sampled_from(["inf", "2"]))
def test_mean_value_boxes_shrink_at_least_as_fast_as_the_certified_factor(solver, field, seed, width, norm):
    """A box of half-width r around a centre leaves the step (mean-value rule, no interval meet) with half-width at
    most factor * r in Linf, the step's weight-only factor: the elementwise rule follows the same decompositions
    with local slopes. Its sampled images stay inside."""
    model = _model(solver, field, seed=seed, centre=-2.0 if field == "paper" else None)
    step = unroll(model).steps[0]
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    box, _ = step.bounds(Box(c - width, c + width, c), interval=False)
    radius = torch.maximum(box.hi - box.centre, box.centre - box.lo)
    assert float(radius.max()) <= float(step.lipschitz("inf")) * width * (1 + 1e-9)
    for _ in range(20):
        x = c + width * (2 * torch.rand(c.shape, generator=g, dtype=c.dtype) - 1).sign()
        y = step(x)
        assert (box.lo <= y + 1e-9).all() and (y <= box.hi + 1e-9).all()


@pytest.mark.parametrize("solver", ["heun2", "ssprk3"])
def test_ssp_steps_contract_whenever_their_euler_step_does(solver):
    """Heun and SSP-RK3 are convex combinations of Euler steps: with a contracting Euler step (centre taps -3, a
    large h L) their certified factor, and their boxes, shrink too, where the generic E + h L sum b_i e_i bound of the
    midpoint rule does not."""
    model = _model(solver, seed=3, centre=-3.0, steps=3)
    step = unroll(model).steps[0]
    E = float(step.euler.lipschitz("inf"))
    assert E < 1 and float(step.lipschitz("inf")) < 1
    mid = unroll(_model("midpoint", seed=3, centre=-3.0, steps=3)).steps[0]
    assert float(mid.lipschitz("inf")) > 1  # the generic bound pays (h L)^2
    c = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    box, _ = step.bounds(Box(c - 0.1, c + 0.1, c), interval=False)
    assert float((box.hi - box.lo).max()) < 0.2
