"""The IEEE float32 error model the certificates rest on (docs/METHOD.md section 12).

- Sums and dot products: for any summation order (BLAS blocking, split sums, FMA), the float32 value of
  sum_{k <= n} w_k x_k differs from the exact value by at most gamma_n sum_k |w_k| |x_k| (Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., eq. 3.5), gamma_n = n u / (1 - n u), u = 2^-24, plus TINY per term for
  underflow (gradual or flushed to zero).
- Each basic operation (+, -, *, /) is correctly rounded: relative error <= u.
- Elementwise transcendental functions (exp, log1p, tanh) are within 4 ulps (8 u relative) of the exact value: the
  documented worst cases of the libraries PyTorch uses are 1 ulp (SLEEF's u10 kernels on the CPU) and 2 ulps (CUDA's
  expf). This is an assumption about the libraries, not a theorem; `Activation.rounding` bounds each activation under
  it and tests/test_contraction/test_floats.py checks it against float64 on dense grids.
- Convolutions are sums of products (direct or GEMM algorithms). FFT and Winograd convolutions are not: certification
  pins them out (nodes.device.exact_float32 turns cuDNN off on CUDA; on the CPU PyTorch's oneDNN path is direct)."""

from __future__ import annotations

__all__ = ["UNIT", "TINY", "gamma"]

UNIT = 2.0**-24
"""Unit roundoff of float32 (round to nearest)."""

TINY = 2.0**-126
"""The absolute error one float32 operation can add by underflow (the smallest normal number: covers flush-to-zero)."""


def gamma(n: int, unit: float = UNIT) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of an n-term float32 sum of products (n u < 1)."""
    if n < 0 or n * unit >= 1:
        raise ValueError(f"gamma_n needs 0 <= n < 1/u, got n = {n}")
    return n * unit / (1 - n * unit)
