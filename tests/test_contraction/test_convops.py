"""Conv facts read off the kernel vs the explicit convolution matrix."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from contraction.convops import (
    apply_conv,
    apply_conv_adjoint,
    centre_taps,
    conv_matrix,
    conv_spectral_norm,
    offdiag_col_sums,
    offdiag_row_sums,
    pixel_col_sums,
    pixel_row_sums,
)
from contraction.errors import CNodeError
from contraction.measures import norm_2, norm_inf
from tests.strategies import image_sizes, kernels, paddings, seeds


@given(kernels(sizes=(1, 3, 5)), paddings, image_sizes, seeds)
def test_conv_matrix_matches_the_conv_and_its_adjoint(K, padding, hw, seed):
    H, W = hw
    T = conv_matrix(K, H, W, padding)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, K.shape[1], H, W, generator=g, dtype=torch.float64)
    y = torch.randn(2, K.shape[0], H, W, generator=g, dtype=torch.float64)
    torch.testing.assert_close(apply_conv(x, K, padding).flatten(1), x.flatten(1) @ T.T)
    torch.testing.assert_close(apply_conv_adjoint(y, K, padding).flatten(1), y.flatten(1) @ T)
    conv = torch.nn.Conv2d(K.shape[1], K.shape[0], K.shape[-1], padding=K.shape[-1] // 2, padding_mode=padding,
                           bias=False).double()
    conv.weight.data = K
    if not (padding == "circular" and min(H, W) < K.shape[-1] // 2):  # torch's circular pad needs pad <= size
        torch.testing.assert_close(conv(x), apply_conv(x, K, padding))


@given(kernels(), paddings, st.tuples(st.integers(3, 6), st.integers(3, 6)))
def test_kernel_facts_equal_the_matrix_when_no_tap_wraps(K, padding, hw):
    H, W = hw  # k <= 3 <= H, W: every tap lands on a distinct entry
    T = conv_matrix(K, H, W, padding)
    C = K.shape[0]
    diag = T.diagonal().reshape(C, H, W)
    torch.testing.assert_close(diag, centre_taps(K)[:, None, None].expand(C, H, W))
    rows = T.abs().sum(1).reshape(C, H, W)
    cols = T.abs().sum(0).reshape(C, H, W)
    torch.testing.assert_close(pixel_row_sums(K, H, W, padding), rows)
    torch.testing.assert_close(pixel_col_sums(K, H, W, padding), cols)
    # channel-level sums are the largest per-pixel sums (attained at interior pixels / everywhere if circular)
    torch.testing.assert_close(rows.amax((1, 2)) - centre_taps(K).abs(), offdiag_row_sums(K))
    torch.testing.assert_close(cols.amax((1, 2)) - centre_taps(K).abs(), offdiag_col_sums(K))
    assert float(pixel_row_sums(K, H, W, padding).amax()) == pytest.approx(float(norm_inf(T)))  # ||T||_inf


@given(kernels(sizes=(1, 3, 5)), paddings, image_sizes)
def test_per_pixel_sums_bound_the_matrix_even_when_taps_wrap(K, padding, hw):
    H, W = hw
    T = conv_matrix(K, H, W, padding)
    C = K.shape[0]
    assert (T.abs().sum(1).reshape(C, H, W) <= pixel_row_sums(K, H, W, padding) + 1e-12).all()
    assert (T.abs().sum(0).reshape(C, H, W) <= pixel_col_sums(K, H, W, padding) + 1e-12).all()


@given(kernels(sizes=(1, 3, 5)), paddings, image_sizes)
def test_fft_spectral_norm_is_exact_for_circular_and_a_bound_for_zeros(K, padding, hw):
    H, W = hw
    exact = float(norm_2(conv_matrix(K, H, W, padding)))
    fft = conv_spectral_norm(K, H, W, padding)
    if padding == "circular":
        assert fft == pytest.approx(exact, rel=1e-9, abs=1e-12)
    else:
        assert fft >= exact * (1 - 1e-9) - 1e-12


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 3), torch.full((1, 1, 3, 3), float("nan"))]
)
def test_bad_kernels_are_rejected(bad):
    with pytest.raises(CNodeError):
        centre_taps(bad)


def test_bad_padding_and_oversized_matrix_are_rejected():
    with pytest.raises(CNodeError, match="padding"):
        apply_conv(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), "reflect")
    with pytest.raises(CNodeError, match="small cases"):
        conv_matrix(torch.zeros(8, 8, 3, 3), 28, 28, "zeros")
