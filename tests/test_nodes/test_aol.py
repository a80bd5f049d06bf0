"""Almost-orthogonal layers (nodes.aol): the rescaled linear and conv maps are 1-Lipschitz in L2 against their explicit
matrices (every padding, stride and kernel, hypothesis), exact where the columns are already orthonormal, and the
model keeps them through training, initialisation, checkpoints and the certificate."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, strategies as st
from torch import nn

from certify.bounds.layers import Conv, Linear
from certify.bounds.lipschitz import best_network_bound
from certify.bounds.unrolled import unroll
from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig, load_model, save_model
from nodes.aol import aol_conv_scale, aol_linear_scale, apply_lipschitz_layers, raw_weight
from nodes.init import ibp_init_
from tests.strategies import seeds

TOL = 1e-9


def _dense(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The explicit matrix of a bias-free module on inputs of `shape` (applied to the identity)."""
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        return module(eye).reshape(n, -1).T


@given(out=st.integers(1, 12), inp=st.integers(1, 12), scale=st.floats(1e-3, 1e3), seed=seeds)
def test_aol_linear_is_1_lipschitz(out, inp, scale, seed):
    W = torch.from_numpy(np.random.default_rng(seed).normal(size=(out, inp)) * scale)
    layer = nn.Linear(inp, out, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(W)
    apply_lipschitz_layers([layer], "aol")
    torch.testing.assert_close(layer.weight, W * aol_linear_scale(W))
    assert torch.linalg.matrix_norm(_dense(layer, (inp,)), ord=2) <= 1 + TOL


@given(n=st.integers(1, 8), seed=seeds)
def test_aol_keeps_orthonormal_columns(n, seed):
    """On a matrix with orthonormal columns the Gram matrix is I: every scale is 1 (the rescaling costs nothing)."""
    Q, _ = torch.linalg.qr(torch.from_numpy(np.random.default_rng(seed).normal(size=(n + 3, n))))
    torch.testing.assert_close(aol_linear_scale(Q), torch.ones(n, dtype=torch.float64))


@given(cout=st.integers(1, 4), cin=st.integers(1, 3), k=st.integers(1, 5), size=st.integers(1, 7),
       stride=st.integers(1, 2), pad=st.integers(0, 4), padding=st.sampled_from(["zeros", "circular"]),
       scale=st.floats(1e-2, 1e2), seed=seeds)
@example(cout=2, cin=1, k=3, size=2, stride=1, pad=1, padding="circular", scale=1.0, seed=0)  # taps wrap onto a pixel
def test_aol_conv_is_1_lipschitz_for_every_padding_and_stride(cout, cin, k, size, stride, pad, padding, scale, seed):
    pad = min(pad, k - 1, size, (k - 1) // 2) if padding == "circular" else min(pad, k)
    if (size + 2 * pad - k) // stride + 1 < 1:
        return
    K = torch.from_numpy(np.random.default_rng(seed).normal(size=(cout, cin, k, k)) * scale)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, padding_mode=padding, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(K)
    apply_lipschitz_layers([conv], "aol")
    torch.testing.assert_close(conv.weight, K * aol_conv_scale(K)[None, :, None, None])
    norm = torch.linalg.matrix_norm(_dense(conv, (cin, size, size)), ord=2)
    assert norm <= 1 + TOL, norm


def test_aol_conv_scale_is_the_column_bound_of_a_large_torus():
    """On a torus wider than the kernel's reach no taps wrap: the per-channel scale is exactly the AOL bound of the
    explicit matrix's columns (the largest Gram row sum over that channel's pixels)."""
    torch.manual_seed(0)
    K = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(K)
    P = _dense(conv, (2, 8, 8))
    rows = (P.T @ P).abs().sum(1).reshape(2, 64)
    torch.testing.assert_close(aol_conv_scale(K), rows.max(1).values.rsqrt())


SMALL = dict(channels=4, stem=((4, 4, 2, 1), (4, 4, 2, 1)), head=(16, 8), steps=2, field="gradient",
             padding="circular")


def test_aol_model_layers_are_1_lipschitz_and_survive_init_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset("mini", lipschitz_layers="aol", **SMALL))
    before = [raw_weight(m).detach().clone() for m in model.stem]
    ibp_init_(model)  # writes the trained tensor behind the parametrization, not the computed weight
    assert all(not torch.equal(b, raw_weight(m)) for b, m in zip(before, model.stem))
    net = unroll(model)
    norms = [float(layer.lipschitz("2")) for layer in net.layers if isinstance(layer, (Conv, Linear))]
    assert len(norms) == 5 and all(n <= 1 + 1e-6 for n in norms[:4]), norms  # the last layer is free
    with torch.no_grad():
        model.head[-1].weight.mul_(50.0)
    assert float(unroll(model).layers[-1].lipschitz("2")) > 1
    # a free model of the same weights is not 1-Lipschitz: the parametrization is what bounds it
    free = ConvNODE(ModelConfig.preset("mini", **SMALL))
    with torch.no_grad():
        for f, m in zip(free.stem, model.stem):
            f.weight.copy_(raw_weight(m) * 10)
    assert max(float(layer.lipschitz("2")) for layer in unroll(free).layers[:2] if isinstance(layer, Conv)) > 1
    path = save_model(tmp_path / "aol.pt", model)
    loaded = load_model(path)
    assert loaded.config.lipschitz_layers == "aol"
    u = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(u), model.eval()(u), rtol=0, atol=0)
    bound = best_network_bound(loaded, "2")
    assert bound.embedding <= 1 + 1e-6


def test_aol_trains_through_the_parametrization():
    """The gradient reaches the trained tensor behind each AOL weight, and a step changes the computed weight."""
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset("mini", lipschitz_layers="aol", **SMALL))
    u, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(u), y).backward()
    grads = [raw_weight(m).grad for m in (*model.stem, *model.head[:-1])]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_unknown_lipschitz_layers_is_refused():
    with pytest.raises(CNodeError, match="lipschitz_layers"):
        ModelConfig(lipschitz_layers="orthogonal")


def test_circular_convs_that_repeat_torus_pixels_are_refused():
    """A circular conv with 2 x padding > kernel - 1 has more outputs than the torus has pixels: rows repeat, and the
    rescaled map is not 1-Lipschitz (found by hypothesis: kernel 2, padding 1 on one pixel), so the config refuses it."""
    conv = nn.Conv2d(1, 1, 2, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    apply_lipschitz_layers([conv], "aol")
    assert torch.linalg.matrix_norm(_dense(conv, (1, 1, 1)), ord=2) > 1.4
    with pytest.raises(CNodeError, match="2 x padding <= kernel - 1"):
        ModelConfig(stem=((4, 2, 1, 1),), channels=4, padding="circular", lipschitz_layers="aol")
    ModelConfig(stem=((4, 2, 1, 1),), channels=4, padding="zeros", lipschitz_layers="aol")  # zero padding: fine
