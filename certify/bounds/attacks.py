"""Attacks that share one projection and one step loop: FGSM, PGD (Linf / L2, random start, restarts), and a
gradient-free Square-style random search as a masking check. All respect the [0, 1] box, accept a per-input
eps, and leave the caller's model mode as it was."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contraction.errors import CNodeError, norm_error
from nodes.device import eval_mode

__all__ = ["per_input_eps", "project", "PGD_LOSS_NAMES", "pgd", "fgsm", "square", "margin_loss", "is_adversarial"]


def per_input_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """eps (scalar or [B]) as a [B, 1, ...] tensor broadcasting against x; CNodeError unless finite and >= 0."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise CNodeError(f"eps must be finite and >= 0, got {eps}")
    return e.view(-1, *[1] * (x.dim() - 1))


def project(delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project a perturbation onto {||delta|| <= eps} and then keep x + delta in [0, 1] (stays in the ball)."""
    if norm == "inf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    elif norm == "2":
        n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
        delta = delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    else:
        raise norm_error(norm)
    return (x + delta).clamp(0.0, 1.0) - x  # box clipping only shrinks each coordinate: norm stays <= eps


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-input max_{j != y} z_j - z_y (positive means misclassified)."""
    zy = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other[torch.arange(len(y), device=y.device), y] = -torch.inf
    return other.amax(1) - zy


def is_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def _step(grad: torch.Tensor, step: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "inf":
        return step * grad.sign()
    g = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
    return step * grad / g


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, gen: torch.Generator) -> torch.Tensor:
    if norm == "inf":
        return (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device) - 1) * eps
    d = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    r = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device).view(-1, *[1] * (x.dim() - 1))
    return d * eps * r


PGD_LOSS_NAMES = ("ce", "margin")  # the objectives pgd() ascends: cross-entropy, the margin loss


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "inf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    seed: int = 0,
) -> torch.Tensor:
    """Projected gradient ascent inside the eps-ball (per-input eps allowed) and [0, 1]; keeps the first success.

    step_size defaults to 2.5 eps / steps. Returns adversarial inputs (or the best tries)."""
    if steps < 1 or restarts < 1:
        raise CNodeError("steps and restarts must be >= 1")
    if loss not in PGD_LOSS_NAMES:
        raise CNodeError(f"PGD's loss must be one of {', '.join(PGD_LOSS_NAMES)} (got {loss!r})")
    e = per_input_eps(eps, x)
    alpha = e * (2.5 / steps) if step_size is None else torch.as_tensor(step_size, dtype=x.dtype) * (e > 0)
    gen = torch.Generator(device=x.device).manual_seed(seed)  # on the data's device
    best = x.clone()
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model):
        for r in range(restarts):
            start = random_start and (r > 0 or steps > 1)
            delta = project(_random_start(x, e, norm, gen), x, e, norm) if start else torch.zeros_like(x)
            for _ in range(steps):
                delta.requires_grad_(True)
                logits = model(x + delta)
                objective = F.cross_entropy(logits, y, reduction="sum") if loss == "ce" else margin_loss(logits, y).sum()
                (grad,) = torch.autograd.grad(objective, delta)
                with torch.no_grad():
                    delta = project(delta.detach() + _step(grad, alpha, norm), x, e, norm)
            with torch.no_grad():
                adv = is_adversarial(model, x + delta, y)
                new = adv & ~found
                best[new] = (x + delta)[new]
                if r == restarts - 1:
                    rest = ~found & ~adv
                    best[rest] = (x + delta)[rest]
                found |= adv
            if bool(found.all()):
                break
    return best


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | torch.Tensor, norm: str = "inf"
         ) -> torch.Tensor:
    """Fast gradient (sign) method: the PGD loop with one step from x, projected onto the eps-ball (no random start)."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=1, random_start=False)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "inf",
    queries: int = 300,
    p_init: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Gradient-free random search (Square-attack style): random square patches on the ball's boundary, kept
    when they raise the margin loss. No gradients: a check against gradient masking."""
    e = per_input_eps(eps, x)
    gen = torch.Generator(device=x.device).manual_seed(seed)  # on the data's device
    B, C, H, W = x.shape
    with eval_mode(model), torch.no_grad():
        if norm == "inf":
            delta = e * torch.where(torch.rand(B, C, 1, W, generator=gen, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
        else:
            delta = _random_start(x, e, norm, gen)
        delta = project(delta.expand(B, C, H, W).clone(), x, e, norm)
        best = margin_loss(model(x + delta), y)
        for i in range(queries):
            if bool((best > 0).all()):
                break
            frac = p_init * (0.5 ** (8 * i // queries))
            s = max(1, int(round((frac * H * W) ** 0.5)))
            r0 = torch.randint(0, H - s + 1, (B,), generator=gen, device=x.device).tolist()
            c0 = torch.randint(0, W - s + 1, (B,), generator=gen, device=x.device).tolist()
            cand = delta.clone()
            for b in range(B):
                if norm == "inf":
                    sign = torch.where(torch.rand(C, 1, 1, generator=gen, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
                    cand[b, :, r0[b]:r0[b] + s, c0[b]:c0[b] + s] = sign * e[b, 0, 0, 0]
                else:
                    patch = torch.randn(C, s, s, generator=gen, dtype=x.dtype, device=x.device)
                    cand[b, :, r0[b]:r0[b] + s, c0[b]:c0[b] + s] += patch * e[b, 0, 0, 0] / max(s, 1)
            cand = project(cand, x, e, norm)
            loss = margin_loss(model(x + cand), y)
            better = (loss > best) & (best <= 0)
            delta[better] = cand[better]
            best = torch.where(better, loss, best)
    return x + delta
