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
