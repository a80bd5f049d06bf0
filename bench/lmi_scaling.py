"""Structured (FFT) vs dense LMI solve time over sizes, and the full reference size (8 channels, 28x28).

    python bench/lmi_scaling.py [--dense-max 64]

The dense LMI has n = C*H*W states (a 2n x 2n LMI); the structured one has H*W/2 blocks of 2C x 2C (complex)."""

import argparse
import time

import torch

from contraction.certificates import BlockSpec, block_certificates
from contraction.convops import conv_matrix
from contraction.lmi import conv_blocks, dense_blocks, lmi_block_certificate, solve_step_lmi


def kernel(C: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64) * 0.1
    K[range(C), range(C), 1, 1] -= 3.0
    return K


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense-max", type=int, default=64, help="largest n for the dense LMI")
    args = p.parse_args()
    a, b, h = 0.1, 1.0, 0.1
    print(f"{'C':>3} {'H x W':>7} {'n':>6} {'fft s':>8} {'fft c':>9} {'dense s':>8} {'dense c':>9} {'ratio':>7}")
    for C, H in [(2, 4), (2, 6), (4, 4), (2, 8)]:
        K = kernel(C)
        n = C * H * H
        t = time.perf_counter()
        r = solve_step_lmi([conv_blocks(K, H, H)], a, b, h, c_high=2.0, tol=1e-3)
        fft_s = time.perf_counter() - t
        if n <= args.dense_max:
            t = time.perf_counter()
            d = solve_step_lmi([dense_blocks(conv_matrix(K, H, H, "circular"))], a, b, h, c_high=2.0, tol=1e-3)
            dense_s = time.perf_counter() - t
            dense = f"{dense_s:8.2f} {d.factors[0] if d.factors else float('nan'):9.5f} {dense_s / fft_s:6.1f}x"
        else:
            dense = f"{'-':>8} {'-':>9} {'-':>7}"
        print(f"{C:>3} {H:>3} x {H:<3} {n:>6} {fft_s:8.2f} {r.factors[0] if r.factors else float('nan'):9.5f} {dense}")
    spec = BlockSpec((kernel(8),) * 10, a, b, h, "euler", "circular", 28, 28)
    t = time.perf_counter()
    lmi = lmi_block_certificate(spec)
    full = time.perf_counter() - t
    best_w = min(c.factor for c in block_certificates(spec) if c.certified)
    print(f"full size 8 x 28 x 28 (n = 6272), shared kernel, 10 steps: LMI {lmi.status} factor {lmi.factor:.5f} "
          f"in {full:.1f} s; best weight-bound factor {best_w:.5f}")


if __name__ == "__main__":
    main()
