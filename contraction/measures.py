"""Matrix measures (log-norms) mu(A) = lim_{h->0+} (||I + hA|| - 1)/h, batched over leading dimensions."""

from __future__ import annotations

import torch

from contraction.errors import CNodeError

__all__ = ["mu_1", "mu_inf", "mu_2", "mu_inf_weighted", "mu_2_weighted", "norm_1", "norm_inf", "norm_2"]


def _square(A: torch.Tensor) -> torch.Tensor:
    if not isinstance(A, torch.Tensor) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise CNodeError(f"expected square matrices [..., n, n], got {shape}")
    return A


def _offdiag_abs(A: torch.Tensor) -> torch.Tensor:
    return A.abs() - torch.diag_embed(A.diagonal(dim1=-2, dim2=-1).abs())


def mu_inf(A: torch.Tensor) -> torch.Tensor:
    """mu_inf(A) = max_i (a_ii + sum_{j != i} |a_ij|)."""
    A = _square(A)
    return (A.diagonal(dim1=-2, dim2=-1) + _offdiag_abs(A).sum(-1)).amax(-1)


def mu_1(A: torch.Tensor) -> torch.Tensor:
    """mu_1(A) = max_j (a_jj + sum_{i != j} |a_ij|) = mu_inf(A^T)."""
    return mu_inf(_square(A).transpose(-1, -2))


def mu_2(A: torch.Tensor) -> torch.Tensor:
    """mu_2(A) = lambda_max((A + A^T) / 2)."""
    A = _square(A)
    return torch.linalg.eigvalsh((A + A.transpose(-1, -2)) / 2).amax(-1)


def _check_weights(eta: torch.Tensor, n: int) -> torch.Tensor:
    if eta.shape[-1] != n or not bool((eta > 0).all()) or not bool(torch.isfinite(eta).all()):
        raise CNodeError(f"weights must be finite, positive, of length {n}")
    return eta


def mu_inf_weighted(A: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """mu_{inf,eta}(A) = mu_inf(diag(eta) A diag(eta)^-1), the log-norm of ||x|| = max_i eta_i |x_i|."""
    A = _square(A)
    eta = _check_weights(eta.to(A.dtype), A.shape[-1])
    return mu_inf(eta[..., :, None] * A / eta[..., None, :])


def mu_2_weighted(A: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """mu_{2,P}(A) = max eig of (A^T P + P A)/2 relative to P, the log-norm of ||x||_P = sqrt(x^T P x); P > 0."""
    A = _square(A)
    try:
        R = torch.linalg.cholesky(P.to(A.dtype)).transpose(-1, -2)  # P = R^T R
    except RuntimeError:
        raise CNodeError("P must be symmetric positive definite") from None
    RAR = R @ A @ torch.linalg.inv(R)
    return mu_2(RAR)


def norm_inf(A: torch.Tensor) -> torch.Tensor:
    """Induced infinity norm: largest absolute row sum."""
    return A.abs().sum(-1).amax(-1)


def norm_1(A: torch.Tensor) -> torch.Tensor:
    """Induced 1-norm: largest absolute column sum."""
    return A.abs().sum(-2).amax(-1)


def norm_2(A: torch.Tensor) -> torch.Tensor:
    """Spectral norm: largest singular value."""
    return torch.linalg.matrix_norm(A, ord=2)
