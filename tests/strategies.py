"""Shared hypothesis strategies: kernels, slopes, step sizes, image sizes."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**31 - 1)
paddings = st.sampled_from(["zeros", "circular"])
image_sizes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def slope_pairs(draw: st.DrawFn) -> tuple[float, float]:
    """0 <= a <= b <= 2."""
    a = draw(st.floats(0.0, 1.0, allow_nan=False))
    b = draw(st.floats(a, 2.0, allow_nan=False))
    return a, b


@st.composite
def kernels(draw: st.DrawFn, channels: tuple[int, int] = (1, 4), sizes: tuple[int, ...] = (1, 3),
            negative_centre: bool = False) -> torch.Tensor:
    """A float64 kernel [C, C, k, k]; with `negative_centre`, centre taps shifted down (likely contracting)."""
    C = draw(st.integers(*channels))
    k = draw(st.sampled_from(sizes))
    rng = np.random.default_rng(draw(seeds))
    scale = draw(st.floats(0.05, 2.0))
    K = torch.from_numpy(rng.normal(size=(C, C, k, k)) * scale)
    if negative_centre:
        c = k // 2
        shift = draw(st.floats(0.0, 6.0))
        K[range(C), range(C), c, c] -= shift
    return K


@st.composite
def model_configs(draw: st.DrawFn, image: int = 8):
    """A small ModelConfig with every layer type in play: normalisation or not, a stem of 0-2 convs (strides 1-2,
    even and odd kernels, any padding width), the Euler block of either field, a head of 0-1 hidden layers, either
    readout; free or AOL-rescaled stem and hidden layers; the block run by Euler (about half the draws) or by any
    fixed-step Runge-Kutta solver (the contractive field: Euler)."""
    from contraction.runge_kutta import FIXED_STEP
    from nodes.aol import repeats_torus_pixels
    from nodes.config import ModelConfig

    in_ch = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 3))
    stem, size = [], image
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(1, min(4, size)))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, min(k - 1, size)))
        stem.append((channels, k, stride, pad))
        size = (size + 2 * pad - k) // stride + 1
    if not stem and in_ch != channels:
        stem.append((channels, 3, 1, 1))
    norm = draw(st.booleans())
    field = draw(st.sampled_from(["paper", "gradient", "contractive"]))
    padding = draw(st.sampled_from(["zeros", "circular"]))
    if field == "gradient" and size < 3:  # circular taps of the gradient field may not wrap onto each other
        padding = "zeros"
    steps = draw(st.integers(1, 3))
    solver = "euler" if field == "contractive" else draw(st.one_of(st.just("euler"), st.sampled_from(FIXED_STEP)))
    activation = draw(st.sampled_from(["smooth_leaky_relu", "leaky_relu"] + (["tanh"] if field != "contractive" else [])))
    # AOL-rescaled stem and hidden layers (nodes.aol), where the config allows them (a circular conv must not repeat
    # torus pixels)
    aol = draw(st.booleans()) and (padding == "zeros"
                                   or not any(repeats_torus_pixels(k, p) for _, k, _, p in stem))
    rho = 0.0
    if field == "contractive":  # a rate below the Euler step's limit a / (h b) (a = 0.1, b = 1, T = 1)
        rho = draw(st.floats(0.0, 0.9)) * 0.1 * steps
    return ModelConfig(
        channels=channels, in_channels=in_ch, image_size=image, num_classes=3, steps=steps,
        padding=padding, field=field, rho=rho, activation=activation, solver=solver,
        readout=draw(st.sampled_from(["linear", "avgpool"])), shared_weights=draw(st.booleans()),
        stem=tuple(stem), head=tuple(draw(st.lists(st.integers(2, 5), max_size=1))),
        mean=tuple([0.3] * in_ch) if norm else (), std=tuple([0.7] * in_ch) if norm else (),
        lipschitz_layers="aol" if aol else "free")


def random_model(cfg, seed: int, scale: float = 1.0):
    """A ConvNODE of `cfg` with weights drawn from `seed`, in float64 and eval mode, its block's convs scaled by
    `scale` (above 1: the ill-conditioned blocks of ordinarily trained models)."""
    from nodes import ConvNODE

    torch.manual_seed(seed)
    model = ConvNODE(cfg).double().eval()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    return model


def random_case(cfg, seed: int, scale: float = 1.0, batch: int = 1):
    """(model, its unrolled net, a generator seeded by `seed`, `batch` float64 inputs in [0, 1] drawn from it, the
    model's predictions on them): the set-up of the bound engine's brute-force tests."""
    from certify.bounds.unrolled import unroll

    model = random_model(cfg, seed, scale)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(u).argmax(1)
    return model, unroll(model), gen, u, y
