"""The gradient field as run: the rescaled kernel keeps h b ||T||_2^2 below 2 after any optimiser step, simulated
trajectory pairs contract by the certified factor, the unrolled engine runs the same map."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.layers import GradientStep
from certify.bounds.unrolled import unroll
from contraction.certificates import block_certificates
from contraction.convops import conv_matrix
from nodes import ConvNODE
from nodes.config import ModelConfig
from nodes.field import STEP_BUDGET, GradientField
from tests.profiles import budget
from tests.strategies import seeds


def _config(padding="circular", **kw):
    base = dict(channels=3, image_size=6, num_classes=3, steps=3, stem=((3, 3, 1, 1),), field="gradient",
                padding=padding, T=0.9)
    return ModelConfig(**{**base, **kw})


@settings(max_examples=budget(10), deadline=None)
@given(seeds, st.sampled_from(["zeros", "circular"]), st.floats(0.05, 1.0), st.sampled_from(["adam", "sgd"]))
def test_step_condition_holds_after_random_optimiser_steps(seed, padding, lr, kind):
    torch.manual_seed(seed)
    model = ConvNODE(_config(padding))
    opt = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    cfg = model.config
    with torch.no_grad():  # start just below the step limit
        for f in model.block.fields:
            f.conv.weight.mul_(0.95 * f.limit / f.spectral_bound())
    for _ in range(6):  # a loss that pulls the raw kernels up: the rescaling must hold the run kernels at the limit
        opt.zero_grad()
        u = torch.rand(4, 1, 6, 6)
        raw = sum(f.conv.weight.abs().sum() for f in model.block.fields)
        (-model(u).square().mean() - raw).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        for field in model.block.fields:
            K = field.kernel().detach().double()
            T = conv_matrix(K, cfg.block_size, cfg.block_size, cfg.padding)
            hbs2 = cfg.h * cfg.act.b * float(torch.linalg.matrix_norm(T, ord=2)) ** 2
            assert hbs2 <= 2.0 * (1 + 1e-6), hbs2
    assert any(float(f.spectral_bound().detach()) > f.limit for f in model.block.fields)  # the raw kernels crossed
    assert STEP_BUDGET < 2


@settings(max_examples=budget(10), deadline=None)
@given(seeds, st.sampled_from(["zeros", "circular"]), st.floats(0.5, 20.0))
def test_trajectory_pairs_contract_by_the_certified_factor(seed, padding, scale):
    torch.manual_seed(seed)
    model = ConvNODE(_config(padding)).double()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    cert = [c for c in block_certificates(model.block.spec()) if c.norm == "2"][0]
    assert cert.certified and cert.factor <= 1 + 1e-9  # non-expansive whatever the raw weights
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 6, 6, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(16, 3, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fx, fy = model.block(x), model.block(y)
    d0 = (x - y).flatten(1).norm(dim=1)
    assert ((fx - fy).flatten(1).norm(dim=1) <= cert.factor * d0 * (1 + 1e-9)).all()
    assert cert.rate >= 0 and (cert.rate > 0) == (padding == "circular" and cert.extra["s_min"] > 0)


def test_engine_and_model_run_the_same_gradient_steps():
    torch.manual_seed(0)
    model = ConvNODE(_config()).double()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(30)  # far above the step limit: the rescaled kernel must be the one unrolled
    net = unroll(model)
    assert all(isinstance(s, GradientStep) for s in net.steps)
    u = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(net(u), model(u))
    field = model.block.fields[0]
    assert isinstance(field, GradientField)
    K = net.steps[0].conv.weight
    assert math.isclose(model.config.h * float(torch.linalg.matrix_norm(conv_matrix(K, 6, 6, "circular"), ord=2)) ** 2,
                        STEP_BUDGET, rel_tol=1e-6)


def test_the_kernel_as_run_is_the_same_with_and_without_a_graph():
    """Training (with a graph) and certification or inference (without) run bit-identical rescaled kernels."""
    torch.manual_seed(1)
    model = ConvNODE(_config())
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(30)
    for field in model.block.fields:
        with torch.no_grad():
            plain = field.kernel()
        live = field.kernel()
        assert live.requires_grad and torch.equal(plain, live.detach())
