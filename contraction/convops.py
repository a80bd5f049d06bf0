"""Facts about a stride-1 'same' convolution T(K) read off its kernel, without building the matrix.

Kernels are [C_out, C_in, k, k] with odd k; a dense layer W is the kernel W[:, :, None, None] on a 1x1 image.
With zero padding, boundary pixels only lose terms, so channel-level sums bound every pixel's row/column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contraction.errors import CNodeError

__all__ = [
    "PADDINGS",
    "as_kernel",
    "check_kernel",
    "apply_conv",
    "apply_conv_adjoint",
    "centre_taps",
    "centre_mask",
    "with_centre_taps",
    "channel_abs_sums",
    "offdiag_row_sums",
    "offdiag_col_sums",
    "pixel_row_sums",
    "pixel_col_sums",
    "conv_matrix",
    "conv_spectral_norm",
    "conv_spectral_norm_tensor",
    "conv_singular_range",
    "largest_singular_value",
    "apply_conv_general",
    "apply_conv_general_adjoint",
    "apply_conv_columns",
    "conv_output_size",
    "conv_general_spectral_norm_tensor",
]

PADDINGS = ("zeros", "circular")


def as_kernel(layer: nn.Module | torch.Tensor) -> torch.Tensor:
    """The kernel of an nn.Conv2d, an nn.Linear (as [out, in, 1, 1]) or a kernel tensor itself."""
    if isinstance(layer, nn.Conv2d):
        if layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1:
            raise CNodeError("only stride-1, undilated, ungrouped convolutions are supported")
        return layer.weight
    if isinstance(layer, nn.Linear):
        return layer.weight[:, :, None, None]
    if isinstance(layer, torch.Tensor):
        return check_kernel(layer)
    raise CNodeError(f"expected nn.Conv2d, nn.Linear or a kernel tensor, got {type(layer).__name__}")


def layer_padding(layer: nn.Module | torch.Tensor) -> str:
    """Padding mode of a conv layer ('zeros' for dense layers and bare kernels)."""
    return layer.padding_mode if isinstance(layer, nn.Conv2d) else "zeros"


def check_kernel(K: torch.Tensor, *, square: bool = False) -> torch.Tensor:
    """Validate a kernel [C_out, C_in, k, k] with odd k (finite; C_out == C_in when `square`)."""
    if not isinstance(K, torch.Tensor) or K.dim() != 4 or K.shape[2] != K.shape[3] or K.shape[2] % 2 != 1:
        shape = tuple(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__
        raise CNodeError(f"expected a kernel [C_out, C_in, k, k] with odd k, got {shape}")
    if square and K.shape[0] != K.shape[1]:
        raise CNodeError(f"expected a square kernel (C_out == C_in), got {tuple(K.shape)}")
    if not bool(torch.isfinite(K).all()):
        raise CNodeError("kernel has non-finite entries")
    return K


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise CNodeError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")


def apply_conv(x: torch.Tensor, K: torch.Tensor, padding: str) -> torch.Tensor:
    """T(K) x: same-size convolution (cross-correlation, as nn.Conv2d) with the given padding, no bias."""
    _check_padding(padding)
    p = K.shape[-1] // 2
    if padding == "circular" and p > 0:
        H, W = x.shape[-2:]
        if p < H and p < W:  # taps wrap at most once: circular pad (fast, also in backward)
            return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), K)
        # index wrapping: also valid when taps wrap more than once
        rows = torch.arange(-p, H + p, device=x.device) % H
        cols = torch.arange(-p, W + p, device=x.device) % W
        return F.conv2d(x[..., rows, :][..., cols], K)
    return F.conv2d(x, K, padding=p)


def apply_conv_adjoint(y: torch.Tensor, K: torch.Tensor, padding: str) -> torch.Tensor:
    """T(K)^T y, the adjoint of `apply_conv`: the same-padding conv with the flipped, transposed kernel."""
    return apply_conv(y, K.flip(-1, -2).transpose(0, 1), padding)


def centre_taps(K: torch.Tensor) -> torch.Tensor:
    """Diagonal of T(K): the centre taps K[i, i, c, c], shape [C]."""
    K = check_kernel(K, square=True)
    c = K.shape[-1] // 2
    return K[:, :, c, c].diagonal()


def centre_mask(K: torch.Tensor) -> torch.Tensor:
    """1 at the centre taps K[i, i, c, c], 0 elsewhere (K's shape, dtype and device)."""
    K = check_kernel(K, square=True)
    c = K.shape[-1] // 2
    mask = torch.zeros_like(K)
    mask[:, :, c, c] = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    return mask


def with_centre_taps(K: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """K with its centre taps replaced by `centre` [C] (differentiable in both)."""
    mask = centre_mask(K)
    return K * (1 - mask) + mask * centre[:, None, None, None]


def channel_abs_sums(K: torch.Tensor) -> torch.Tensor:
    """Channel-level majorant M[i, j] = sum_{u,v} |K[i, j, u, v]|, shape [C_out, C_in]."""
    return check_kernel(K).abs().sum(dim=(2, 3))


def offdiag_row_sums(K: torch.Tensor) -> torch.Tensor:
    """Largest off-diagonal absolute row sum of output channel i: sum |K[i]| - |K[i,i,c,c]| (interior pixels)."""
    return channel_abs_sums(K).sum(1) - centre_taps(K).abs()


def offdiag_col_sums(K: torch.Tensor) -> torch.Tensor:
    """Largest off-diagonal absolute column sum of input channel j: sum |K[:, j]| - |K[j,j,c,c]|."""
    return channel_abs_sums(K).sum(0) - centre_taps(K).abs()


def pixel_row_sums(K: torch.Tensor, H: int, W: int, padding: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute row sums of T(K) per output pixel, sum_q |T_pq| w_q, shape [C_out, H, W] (w = 1 by default)."""
    ones = torch.ones(1, K.shape[1], H, W, dtype=K.dtype, device=K.device)
    x = ones if weights is None else weights.reshape(1, -1, H, W)
    return apply_conv(x, K.abs(), padding)[0]


def pixel_col_sums(K: torch.Tensor, H: int, W: int, padding: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute column sums of T(K) per input pixel, sum_p w_p |T_pq|, shape [C_in, H, W]."""
    ones = torch.ones(1, K.shape[0], H, W, dtype=K.dtype, device=K.device)
    y = ones if weights is None else weights.reshape(1, -1, H, W)
    return apply_conv_adjoint(y, K.abs(), padding)[0]


def conv_matrix(K: torch.Tensor, H: int, W: int, padding: str) -> torch.Tensor:
    """The explicit matrix of T(K) on C_in x H x W inputs (channel-major flattening). Tests and small cases only."""
    K = check_kernel(K)
    n_in = K.shape[1] * H * W
    if n_in * K.shape[0] * H * W > 20_000_000:
        raise CNodeError(f"conv_matrix is for small cases; {K.shape[0] * H * W} x {n_in} is too large")
    eye = torch.eye(n_in, dtype=K.dtype, device=K.device).reshape(n_in, K.shape[1], H, W)
    return apply_conv(eye, K, padding).reshape(n_in, -1).T


def largest_singular_value(M: torch.Tensor) -> torch.Tensor:
    """The largest singular value of every matrix of a batch [..., m, n]: the square root of the top eigenvalue of
    the smaller Gram matrix G (eigh, the same routine with or without a graph, so the value is bit-identical in
    training and in certification). Differentiable: the gradient is that of the Rayleigh quotient v^H G v at G's top
    eigenvector v (the eigenvalue's own gradient), ~5x cheaper than a backward pass through the decomposition."""
    G = M @ M.mH if M.shape[-2] <= M.shape[-1] else M.mH @ M
    with torch.no_grad():
        values, vectors = torch.linalg.eigh(G)
    top = values[..., -1]
    if G.requires_grad:
        v = vectors[..., -1:]
        quotient = (v.mH @ G @ v).real[..., 0, 0]
        top = top + (quotient - quotient.detach())  # the eigenvalue's value, the quotient's gradient
    return top.clamp_min(0.0).sqrt()


def conv_spectral_norm_tensor(K: torch.Tensor, H: int, W: int, padding: str) -> torch.Tensor:
    """||T(K)||_2 by the 2-D DFT, differentiable in K: exact for circular padding; for zero padding, the exact norm
    of the circular conv on the (H+k-1) x (W+k-1) torus, which bounds it (zero padding = crop o torus conv o zero
    extension)."""
    K = check_kernel(K)
    _check_padding(padding)
    k = K.shape[-1]
    if padding == "zeros":
        H, W = H + k - 1, W + k - 1
    return largest_singular_value(conv_symbols(K, H, W)).amax()


def conv_spectral_norm(K: torch.Tensor, H: int, W: int, padding: str) -> float:
    """||T(K)||_2 as a float, in float64 (see conv_spectral_norm_tensor)."""
    return float(conv_spectral_norm_tensor(K.detach().to(torch.float64), H, W, padding))


def conv_singular_range(K: torch.Tensor, H: int, W: int, padding: str) -> tuple[float, float]:
    """(lower bound of sigma_min(T(K)), upper bound of ||T(K)||_2) for a square C x C kernel, in float64: both exact
    by the DFT for circular padding; for zero padding (0, the torus bound of conv_spectral_norm_tensor)."""
    K = check_kernel(K, square=True).detach().to(torch.float64)
    if padding == "zeros":
        return 0.0, conv_spectral_norm(K, H, W, padding)
    _check_padding(padding)
    sv = torch.linalg.svdvals(conv_symbols(K, H, W))
    return float(sv.amin()), float(sv.amax())


def conv_symbols(K: torch.Tensor, H: int, W: int, offset: int | None = None) -> torch.Tensor:
    """Per-frequency C_out x C_in matrices of the circular conv T(K) on an H x W torus, shape [H, W, C_out, C_in].

    T is unitarily block-diagonalised by the 2-D DFT; these blocks carry its spectrum (up to a common unitary)."""
    k = K.shape[-1]
    p = k // 2 if offset is None else offset
    # cross-correlation: y[p] = sum_u K[u] x[p + u - c]; place tap u at offset (u - c) mod H (taps that wrap onto the
    # same offset add up)
    offsets = torch.arange(k, device=K.device) - p
    where = ((offsets % H)[:, None] * W + (offsets % W)[None, :]).flatten()
    taps = torch.zeros(K.shape[0], K.shape[1], H * W, dtype=K.dtype, device=K.device)
    taps = taps.index_add(2, where, K.flatten(2)).unflatten(2, (H, W))
    sym = torch.fft.fft2(taps, dim=(-2, -1)).conj().resolve_conj()  # y_hat(w) = sum_u K[u] e^{+i w u} x_hat(w)
    return sym.permute(2, 3, 0, 1)


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output side of a conv with this kernel, stride and padding on a `size` x `size` input."""
    return (size + 2 * pad - kernel) // stride + 1


def apply_conv_general(x: torch.Tensor, K: torch.Tensor, stride: int, pad: int, padding: str) -> torch.Tensor:
    """T(K) x for any kernel size, stride and padding width (as nn.Conv2d with that padding mode), no bias."""
    _check_padding(padding)
    if padding == "circular" and pad > 0:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), K, stride=stride)
    return F.conv2d(x, K, stride=stride, padding=pad)


def apply_conv_columns(x: torch.Tensor, K: torch.Tensor, stride: int, pad: int, padding: str) -> torch.Tensor:
    """`apply_conv_general` on G columns stored last: x [C_in, H, W, G] -> [C_out, H_out, W_out, G].

    The layout of linear bounds (certify.bounds.linear: one column per input coordinate and image). One matrix product
    per output row and tap, each over W_out x G contiguous values: several times faster than conv2d on the
    columns as a batch in float64 (whose CPU path is an im2col loop), and no padded copy for zero padding."""
    _check_padding(padding)
    C_in, H, W, G = x.shape
    k = K.shape[-1]
    if padding == "circular" and pad > 0:  # materialise the wrapped border, then read it unpadded
        rows = torch.arange(-pad, H + pad, device=x.device) % H
        cols = torch.arange(-pad, W + pad, device=x.device) % W
        x = x.index_select(1, rows).index_select(2, cols)
        H, W, pad = H + 2 * pad, W + 2 * pad, 0
    H_out, W_out = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    out = torch.zeros(K.shape[0], H_out, W_out, G, dtype=x.dtype, device=x.device)
    for v in range(k):  # output columns whose input column w * stride + v - pad lies inside
        w_lo = max(0, -(-(pad - v) // stride))
        w_hi = min(W_out - 1, (W - 1 - v + pad) // stride)
        if w_hi < w_lo:
            continue
        c0 = w_lo * stride + v - pad
        for u in range(k):
            tap = K[:, :, u, v]
            for h in range(H_out):
                r = h * stride + u - pad
                if 0 <= r < H:
                    src = x[:, r, c0:c0 + (w_hi - w_lo) * stride + 1:stride].reshape(C_in, -1)
                    out[:, h, w_lo:w_hi + 1].view(K.shape[0], -1).addmm_(tap, src)
    return out


def apply_conv_general_adjoint(y: torch.Tensor, K: torch.Tensor, stride: int, pad: int, padding: str,
                               in_size: int) -> torch.Tensor:
    """T(K)^T y for `apply_conv_general` on `in_size` x `in_size` inputs (transposed conv; circular pads folded)."""
    _check_padding(padding)
    k = K.shape[-1]
    full = in_size + 2 * pad  # the padded input the conv reads
    extra = full - ((y.shape[-1] - 1) * stride + k)  # rows the strided conv never reads
    if padding == "zeros" or pad == 0:
        return F.conv_transpose2d(y, K, stride=stride, padding=pad if padding == "zeros" else 0, output_padding=extra) \
            if extra < stride else F.pad(F.conv_transpose2d(y, K, stride=stride, padding=pad), (0, extra, 0, extra))
    z = F.pad(F.conv_transpose2d(y, K, stride=stride), (0, extra, 0, extra))  # adjoint on the padded input
    idx = (torch.arange(full, device=y.device) - pad) % in_size  # padded position -> input position
    out = torch.zeros(*z.shape[:-2], in_size, full, dtype=z.dtype, device=z.device).index_add_(-2, idx, z)
    return torch.zeros(*z.shape[:-2], in_size, in_size, dtype=z.dtype, device=z.device).index_add_(-1, idx, out)


def conv_general_spectral_norm_tensor(K: torch.Tensor, size: int, stride: int, pad: int, padding: str) -> torch.Tensor:
    """An upper bound of ||T(K)||_2 for `apply_conv_general` on size x size inputs, by the 2-D DFT (differentiable).

    Polyphase form: with x_r[m] = x[s m + r], a stride-s conv is a stride-1 conv of the s^2 phases (C_in s^2 input
    channels) on the torus of side N / s, block-diagonalised by the DFT. Circular padding with s | size: N = size,
    exact when every output reads a distinct phase position. Zero padding: T is a crop of that torus conv with N
    a multiple of s, N >= size + pad and N / s >= its output side (no tap wraps onto a read pixel), so its norm is
    at most the torus norm. Circular padding with s not dividing size: the stride-1 circulant, subsampled
    (subsampling does not raise the norm). Circular outputs that repeat a torus position (an output side above
    size / s) repeat rows: the bound is multiplied by sqrt of the largest repetition count in 2-D."""
    _check_padding(padding)
    k = K.shape[-1]
    s = stride
    repeat = 1.0
    if padding == "circular":
        if size % s:
            s, n = 1, size
        else:
            n = size
        out = conv_output_size(size, k, stride, pad)
        repeat = float(torch.bincount((stride * torch.arange(out)) % size).max())  # per axis
    else:
        out = conv_output_size(size, k, stride, pad)
        n = max(size + pad, s * out, k)
        n += (-n) % s
    m = n // s
    off = torch.arange(k, device=K.device) - pad  # tap u -> phase r = off mod s, torus offset (off - r) / s mod m
    phase, shift = off % s, torch.div(off - off % s, s, rounding_mode="floor") % m
    # flat index over (r1, r2, d1, d2): ((r1 * s + r2) * m + d1) * m + d2, tap (u, v) -> (phase u, phase v, ...)
    where = (((phase[:, None] * s + phase[None, :]) * m + shift[:, None]) * m + shift[None, :]).flatten()
    taps = torch.zeros(K.shape[0], K.shape[1], s * s * m * m, dtype=K.dtype, device=K.device)
    taps = taps.index_add(2, where, K.flatten(2)).unflatten(2, (s, s, m, m))  # taps on one position add up
    sym = torch.fft.fft2(taps, dim=(-2, -1)).conj().resolve_conj()  # [C_out, C_in, s, s, m, m]
    sym = sym.permute(4, 5, 0, 1, 2, 3).reshape(m, m, K.shape[0], K.shape[1] * s * s)
    return largest_singular_value(sym).amax() * repeat  # sqrt(repeat^2): rows repeat on both axes
