"""Whole-classifier Lipschitz bounds over the layer sequence, as run: the layers before the ODE block x the block's
certified factor x the layers after it, the last one as pairwise row differences.

The block's certificate may measure the state in a channel metric ||G x|| (G = diag(eta), eta the Perron weights,
for the weighted max norm; G = R^T with P = R R^T for the LMI's ||x||_P). G enters the bound exactly where it can:
a diagonal G is folded into the last conv before the block (the activation's slope matrix D, diagonal, commutes
with it: ||G (sigma(z) - sigma(z'))|| <= b ||G (z - z')||), otherwise its norm ||G|| is
a factor; G^-1 is folded into the first affine layer after the block (exact). Linf inputs: layer factors are
absolute row sums, the last layer's pairs ||w_y - w_j||_1; L2 inputs: spectral norms and ||w_y - w_j||_2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from contraction.certificates import Certificate, block_certificates
from contraction.errors import CNodeError, check_norm
from certify.bounds.layers import Act, Conv, Flatten, Layer, Linear
from certify.bounds.unrolled import Unrolled, unroll
from nodes.classifier import ConvNODE
from nodes.device import module_device

__all__ = ["NetworkBound", "network_bounds", "best_network_bound", "pairwise_norms", "layer_constants"]


@dataclass(frozen=True)
class NetworkBound:
    """|(z_y - z_j)(u) - (z_y - z_j)(u')| <= constants()[y, j] * ||u - u'|| for every u, u' (in `norm`)."""

    norm: str
    certificate: Certificate
    embedding: float  # everything before the block (normalisation, stem), into the block's metric
    block_factor: float
    pairwise: torch.Tensor  # [classes, classes], float64, zero diagonal: everything after the block
    global_constant: float  # ||z(u) - z(u')||_inf <= this * ||u - u'||
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


def pairwise_norms(W: torch.Tensor, dual: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[K, K] dual norms ||(w_y - w_j) * scale|| of the readout row differences ('1' or '2'; differentiable)."""
    diff = W[:, None, :] - W[None, :, :]
    if scale is not None:
        diff = diff * scale
    return diff.abs().sum(-1) if dual == "1" else diff.norm(dim=-1)


def _dual(norm: str) -> str:
    check_norm(norm)
    return "1" if norm == "inf" else "2"


def _product(layers: list[Layer] | tuple[Layer, ...], norm: str) -> torch.Tensor:
    out = torch.ones((), dtype=torch.float64)
    for layer in layers:
        out = out * layer.lipschitz(norm)
    return out


def layer_constants(net: Unrolled, norm: str) -> torch.Tensor:
    """Pairwise constants [K, K] of the whole network from each layer's own factor (no channel metric; the Euler
    steps' per-step bounds). Differentiable in the weights of a live `unroll(model, dtype=None, detach=False)`."""
    pair = pairwise_norms(net.final.weight, _dual(norm))
    return pair * _product(net.layers[:-1], norm).to(pair.dtype)


def _metric(cert: Certificate) -> tuple[torch.Tensor, bool] | None:
    """The channel matrix G of the certificate's state norm ||G x|| (and whether it is diagonal), None for plain."""
    if cert.norm == "inf_weighted" and cert.weights is not None:
        return torch.diag(torch.tensor(cert.weights, dtype=torch.float64)), True
    if cert.norm == "2_P":
        R = torch.linalg.cholesky(torch.tensor(cert.extra["P"], dtype=torch.float64))
        return R.T, False
    if cert.norm in ("inf", "2"):
        return None
    raise CNodeError(f"certificate norm {cert.norm!r} has no whole-network bound")


def _with_metric(net: Unrolled, G: torch.Tensor, diagonal: bool) -> tuple[list[Layer], float]:
    """The layers with G folded into the affine layers around the block, and the factor ||G|| where it is not."""
    layers = list(net.layers)
    start, stop = net.block
    channels = G.shape[0]
    entry = 1.0
    j = start - 1
    while j >= 0 and isinstance(layers[j], Act) and diagonal:
        j -= 1
    if diagonal and j >= 0 and isinstance(layers[j], Conv):
        layers[j] = layers[j].mix(out=G)  # type: ignore[union-attr]
    else:
        entry = float(torch.linalg.matrix_norm(G, ord=2))
    Ginv = torch.linalg.inv(G)
    j = stop
    while isinstance(layers[j], Flatten):
        j += 1
    layer = layers[j]
    if isinstance(layer, Linear):
        layers[j] = layer.mix(Ginv, channels)
    elif isinstance(layer, Conv):
        layers[j] = layer.mix(inp=Ginv)
    else:
        raise CNodeError(f"no affine layer after the ODE block to absorb the {cert_name(diagonal)} metric")
    return layers, entry


def cert_name(diagonal: bool) -> str:
    return "channel-weighted" if diagonal else "LMI"


def _bound(net: Unrolled, cert: Certificate, norm: str) -> NetworkBound:
    dual = _dual(norm)
    metric = _metric(cert)
    layers, entry = (list(net.layers), 1.0) if metric is None else _with_metric(net, *metric)
    start, stop = net.block
    with torch.no_grad():
        emb = float(_product(layers[:start], norm)) * entry
        post = _product(layers[stop:-1], norm)
        W = layers[-1].weight  # type: ignore[attr-defined]
        pair = pairwise_norms(W, dual) * post
        dual_rows = (W.abs().sum(1) if dual == "1" else W.norm(dim=1)).max() * post
    factor = float(cert.factor)  # type: ignore[arg-type]
    what = "Linf input; layers by absolute row sums, last layer's pairs in the 1-norm" if norm == "inf" else \
        "L2 input; layers by spectral norms (FFT for convs), last layer's pairs in the 2-norm"
    if metric is not None:
        what += f"; block in the {cert_name(metric[1])} metric, folded into the layers around it"
    return NetworkBound(norm=norm, certificate=cert, embedding=emb, block_factor=factor, pairwise=pair,
                        global_constant=float(dual_rows) * factor * emb, assumptions=f"{what}; block: {cert.condition}")


def network_bounds(model: ConvNODE, norm: str, certificates: list[Certificate] | None = None) -> list[NetworkBound]:
    """A whole-network bound for each certified block certificate usable with `norm` inputs."""
    _dual(norm)
    certs = certificates if certificates is not None else block_certificates(model.block.spec())
    family = ("inf", "inf_weighted") if norm == "inf" else ("2", "2_P")
    usable = [c for c in certs if c.certified and c.norm in family and c.factor is not None]
    if not usable:
        return []
    if module_device(model).type != "cpu":  # a weight-only computation: on a CPU copy, beside the certificates
        model = copy.deepcopy(model).cpu()
    net = unroll(model, any_solver=True)  # the block enters through its certificate, whatever its solver
    return [_bound(net, c, norm) for c in usable]


def best_network_bound(model: ConvNODE, norm: str, certificates: list[Certificate] | None = None) -> NetworkBound:
    """The bound with the smallest largest pairwise constant; CNodeError when the block has no sound bound."""
    bounds = network_bounds(model, norm, certificates)
    if not bounds:
        certs = certificates if certificates is not None else block_certificates(model.block.spec())
        why = certs[0].condition if certs else "no certificate"
        raise CNodeError(f"no sound Lipschitz bound for this model in the {norm}-norm ({why})")
    return min(bounds, key=lambda nb: float(nb.constants().max()))
