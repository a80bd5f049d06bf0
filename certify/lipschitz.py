"""Whole-classifier Lipschitz bounds: embedding x readout pairs x the ODE block's certified factor, as run.

Linf inputs: ||u - u'||_inf -> ||x0 - x0'||_eta (channel-weighted max norm, eta = 1 unless the weighted certificate
wins) -> block factor in that norm -> |(z_y - z_j) - (z_y' - z_j')| <= sum_p |w_y,p - w_j,p| / eta_p ||.||_eta.
L2 inputs: ||.||_2 throughout, readout pairs ||w_y - w_j||_2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contraction.certificates import Certificate, block_certificates
from contraction.convops import conv_spectral_norm, pixel_row_sums
from contraction.errors import CNodeError
from nodes.classifier import ConvNODE

__all__ = ["NetworkBound", "network_bounds", "best_network_bound", "readout_matrix", "embedding_constant", "pairwise_norms"]


@dataclass(frozen=True)
class NetworkBound:
    """|(z_y - z_j)(u) - (z_y - z_j)(u')| <= pairwise[y, j] * ||u - u'|| for every u, u' (in `norm`)."""

    norm: str
    certificate: Certificate
    embedding: float
    block_factor: float
    pairwise: torch.Tensor  # [classes, classes], float64, zero diagonal
    global_constant: float  # max_j dual-norm of w_j times the rest: ||z(u) - z(u')||_inf <= this * ||u - u'||
    assumptions: str

    @property
    def method(self) -> str:
        return self.certificate.method

    def to_dict(self) -> dict:
        return {
            "method": self.certificate.method,
            "norm": self.norm,
            "block_norm": self.certificate.norm,
            "rate": self.certificate.rate,
            "factor": self.block_factor,
            "embedding_lipschitz": self.embedding,
            "readout_pairwise_max": float(self.pairwise.max()),
            "network_lipschitz_pairwise_max": float(self.pairwise.max() * self.block_factor * self.embedding),
            "network_lipschitz_global": self.global_constant,
            "assumptions": self.assumptions,
        }

    def constants(self) -> torch.Tensor:
        """L_yj of the whole network, [classes, classes]."""
        return self.pairwise * (self.block_factor * self.embedding)


def readout_matrix(model: ConvNODE, *, detach: bool = True) -> torch.Tensor:
    """Readout weights as a [classes, C*H*W] matrix acting on the flattened final state (a float64 copy; with
    `detach=False` the live, trainable weights)."""
    W = model.readout.weight.detach().to(torch.float64) if detach else model.readout.weight
    cfg = model.config
    if cfg.readout == "linear":
        return W
    hw = cfg.image_size**2
    return (W / hw).repeat_interleave(hw, dim=1)


def embedding_constant(model: ConvNODE, norm: str, eta: torch.Tensor | None = None) -> float:
    """Lipschitz constant of u -> sigma(conv0 u): b * ||T(K0)|| (Linf into the eta-weighted max norm, or L2)."""
    cfg = model.config
    K0 = model.embed.weight.detach().to(torch.float64)
    b = model.activation.b
    if norm == "inf":
        rows = pixel_row_sums(K0, cfg.image_size, cfg.image_size, cfg.padding)  # [C, H, W], exact per pixel
        weights = torch.ones(rows.shape[0], dtype=torch.float64) if eta is None else eta
        return float(b * (weights[:, None, None] * rows).max())
    if norm == "2":
        return float(b * conv_spectral_norm(K0, cfg.image_size, cfg.image_size, cfg.padding))
    raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")


def pairwise_norms(W: torch.Tensor, dual: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[K, K] dual norms ||(w_y - w_j) * scale|| of the readout row differences ('1' or '2'; differentiable)."""
    diff = W[:, None, :] - W[None, :, :]
    if scale is not None:
        diff = diff * scale
    return diff.abs().sum(-1) if dual == "1" else diff.norm(dim=-1)


def _bound(model: ConvNODE, cert: Certificate, norm: str) -> NetworkBound:
    cfg = model.config
    W = readout_matrix(model)
    hw = cfg.image_size**2
    if norm == "inf":
        eta = torch.tensor(cert.weights, dtype=torch.float64) if cert.weights is not None else None
        scale = None if eta is None else (1.0 / eta).repeat_interleave(hw)
        pair = pairwise_norms(W, "1", scale)
        dual_rows = (W.abs() * (scale if scale is not None else 1.0)).sum(1)
        emb = embedding_constant(model, "inf", eta)
        assumption = "Linf input; readout rows in the (weighted) 1-norm"
    elif cert.norm == "2_P":
        # ||x||_P = ||R^T x|| with P = P_c (x) I = R R^T: readout duals ||R^-1 w||, embedding ||R^T|| b ||T0||
        P = torch.tensor(cert.extra["P"], dtype=torch.float64)
        R = torch.linalg.cholesky(P)
        Rinv = torch.linalg.inv(R)
        C = P.shape[0]
        Wc = W.view(W.shape[0], C, hw)
        Wt = torch.einsum("ij,kjp->kip", Rinv, Wc).reshape(W.shape[0], -1)
        pair = pairwise_norms(Wt, "2", None)
        dual_rows = Wt.norm(dim=1)
        emb = embedding_constant(model, "2") * float(torch.linalg.eigvalsh(P).max().sqrt())
        assumption = "L2 input; block in the LMI metric ||x||_P; readout duals ||P^-1/2 (w_y - w_j)||"
    else:
        pair = pairwise_norms(W, "2", None)
        dual_rows = W.norm(dim=1)
        emb = embedding_constant(model, "2")
        assumption = "L2 input; readout pairs in the 2-norm; embedding norm by FFT" + (
            " on the enlarged torus (zero padding)" if cfg.padding == "zeros" else " (circular padding, exact)")
    factor = float(cert.factor)  # type: ignore[arg-type]
    return NetworkBound(
        norm=norm,
        certificate=cert,
        embedding=emb,
        block_factor=factor,
        pairwise=pair,
        global_constant=float(dual_rows.max()) * factor * emb,
        assumptions=f"{assumption}; block: {cert.condition}",
    )


def network_bounds(model: ConvNODE, norm: str, certificates: list[Certificate] | None = None) -> list[NetworkBound]:
    """A whole-network bound for each certified block certificate usable with `norm` inputs."""
    if norm not in ("inf", "2"):
        raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")
    certs = certificates if certificates is not None else block_certificates(model.block.spec())
    family = ("inf", "inf_weighted") if norm == "inf" else ("2", "2_P")
    return [_bound(model, c, norm) for c in certs if c.certified and c.norm in family and c.factor is not None]


def best_network_bound(model: ConvNODE, norm: str, certificates: list[Certificate] | None = None) -> NetworkBound:
    """The bound with the smallest largest pairwise constant; CNodeError when the block has no sound bound."""
    bounds = network_bounds(model, norm, certificates)
    if not bounds:
        certs = certificates if certificates is not None else block_certificates(model.block.spec())
        why = certs[0].condition if certs else "no certificate"
        raise CNodeError(f"no sound Lipschitz bound for this model in the {norm}-norm ({why})")
    return min(bounds, key=lambda nb: float(nb.constants().max()))
