"""The evaluation protocol (docs/METHOD.md section 6, ours) on one checkpoint.

Clean accuracy; Gaussian noise and salt-and-pepper, averaged over seeded draws; FGSM and PGD (Linf, 20 steps,
step 2.5 eps / 20, random start; cross-entropy, or each of `pgd_losses`: an input counts only if it survives every
one) through the fixed-step solver; a gradient-free attack at one eps as a masking check; certified accuracy (Linf,
`--bound`, default auto) at the attack eps; in L2 (`l2_eps`) PGD-20 and certified accuracy; the ODE block's Lipschitz
factor as run (Euler map, inf and channel-weighted inf; `factors`). Table on stdout, JSON with --json."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from tqdm import tqdm

from contraction.errors import CNodeError
from certify.bounds.attacks import PGD_LOSS_NAMES, fgsm, is_adversarial, pgd, square
from certify.noise import gaussian_noise, salt_and_pepper
from certify.run import certify_model
from contraction.certificates import block_certificates
from nodes.classifier import ConvNODE
from nodes.data import ImageData
from nodes.device import place
from nodes.train import evaluate

__all__ = ["robustness", "format_robustness", "block_factors", "GAUSSIAN", "SALT_PEPPER", "ATTACK_EPS", "L2_EPS"]

GAUSSIAN = (0.1, 0.2, 0.3)
SALT_PEPPER = (0.05, 0.1, 0.2)
ATTACK_EPS = (0.05, 0.1, 0.2, 0.3)
L2_EPS = (0.5,)


def robustness(model: ConvNODE, data: ImageData, *, gaussian: Sequence[float] = GAUSSIAN,
               salt_pepper: Sequence[float] = SALT_PEPPER, attack_eps: Sequence[float] = ATTACK_EPS,
               draws: int = 3, pgd_steps: int = 20, square_eps: float = 0.1, square_queries: int = 300,
               certify_eps: Sequence[float] | None = None, bound: str = "auto", batch_size: int = 250,
               l2_eps: Sequence[float] = (), pgd_losses: Sequence[str] = ("ce",), progress: bool = True,
               device: str | torch.device | None = None) -> dict[str, Any]:
    """Every number of the protocol for one model on `data` (accuracies as fractions); `device` as in
    `certify_model` (None: where the model is)."""
    place(model, device)
    if draws < 1 or pgd_steps < 1 or batch_size < 1:
        raise CNodeError("draws, pgd steps and batch size must be >= 1")
    pgd_losses = tuple(pgd_losses)
    if not pgd_losses or any(loss not in PGD_LOSS_NAMES for loss in pgd_losses):
        raise CNodeError(f"PGD's losses must be among {', '.join(PGD_LOSS_NAMES)} (got {pgd_losses!r})")
    certify_eps = tuple(attack_eps if certify_eps is None else certify_eps)
    jobs = len(gaussian) + len(salt_pepper) + 2 * len(attack_eps) + 2 + len(certify_eps) + 2 * len(l2_eps)
    bar = tqdm(total=jobs, desc="robustness", disable=None if progress else True, leave=False)  # None: off unless a tty
    t0 = time.perf_counter()
    out: dict[str, Any] = {"n": len(data), "dataset": data.name, "pgd_loss": "+".join(pgd_losses)}

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    def accuracy(transform=None) -> float:  # transform(x, y, batch index) -> the inputs evaluated
        return evaluate(model, data, batch_size=batch_size, transform=transform)

    out["clean"] = accuracy()
    tick("clean")
    for key, corrupt, levels in (("gaussian", gaussian_noise, gaussian), ("salt_pepper", salt_and_pepper, salt_pepper)):
        out[key] = {}
        for level in levels:  # seed per draw and batch: the same corruptions for every model
            accs = [accuracy(lambda x, y, i, s=s: corrupt(x, level, seed=1000 * s + i)) for s in range(draws)]
            out[key][str(level)] = sum(accs) / draws
            tick(f"{key} {level}")
    for name in ("fgsm", "pgd"):
        out[name] = {}
        for eps in attack_eps:
            if name == "fgsm":
                attack = lambda x, y, i, e=eps: fgsm(model, x, y, eps=e)  # noqa: E731
            else:
                attack = lambda x, y, i, e=eps: _pgd_worst(model, x, y, pgd_losses, eps=e,  # noqa: E731
                                                           steps=pgd_steps, step_size=2.5 * e / pgd_steps, seed=i)
            out[name][str(eps)] = accuracy(attack)
            tick(f"{name} {eps}")
    out["square"] = {"eps": square_eps, "queries": square_queries,
                     "accuracy": accuracy(lambda x, y, i: square(model, x, y, eps=square_eps, queries=square_queries))}
    out["square"]["pgd_accuracy"] = out["pgd"].get(str(square_eps))
    tick("gradient-free")
    out["certified"] = {}
    out["certified_bound"] = bound
    for eps in certify_eps:
        report = certify_model(model, data, eps=eps, norm="inf", bound=bound, batch_size=batch_size)
        out["certified"][str(eps)] = report.certified_accuracy
        tick(f"certified {eps}")
    if l2_eps:
        out["pgd_l2"], out["certified_l2"] = {}, {}
    for eps in l2_eps:
        attack = lambda x, y, i, e=eps: _pgd_worst(model, x, y, pgd_losses, eps=e, norm="2",  # noqa: E731
                                                   steps=pgd_steps, step_size=2.5 * e / pgd_steps, seed=i)
        out["pgd_l2"][str(eps)] = accuracy(attack)
        tick(f"pgd L2 {eps}")
        report = certify_model(model, data, eps=eps, norm="2", bound=bound, batch_size=batch_size)
        out["certified_l2"][str(eps)] = report.certified_accuracy
        tick(f"certified L2 {eps}")
    out["factors"] = block_factors(model)
    bar.close()
    out["seconds"] = time.perf_counter() - t0
    return out


def _pgd_worst(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, losses: tuple[str, ...], **kw: Any) -> torch.Tensor:
    """PGD with each loss; per input the first adversarial example that changes the prediction, else the last
    loss's point: the input is then classified correctly only if it survived every loss."""
    worst = pgd(model, x, y, loss=losses[0], **kw)
    for loss in losses[1:]:
        survived = ~is_adversarial(model, worst, y)
        if not bool(survived.any()):
            break
        adv = pgd(model, x, y, loss=loss, **kw)
        worst = torch.where(survived.view(-1, *[1] * (x.dim() - 1)), adv, worst)
    return worst


def block_factors(model: ConvNODE) -> dict[str, float | None]:
    """The ODE block's certified Lipschitz factor as run (the whole block and its worst step), in the infinity and
    the channel-weighted infinity norm; None where no certificate holds (a solver the certificates do not cover)."""
    out: dict[str, float | None] = {}
    for cert in block_certificates(model.block.spec(), ("inf", "inf_weighted")):
        ok = cert.certified and cert.factor is not None
        out[f"block_{cert.norm}"] = float(cert.factor) if ok else None
        out[f"step_{cert.norm}"] = float(max(cert.step_factors)) if ok and cert.step_factors else None
    return out


def format_robustness(result: dict[str, Any], name: str = "") -> str:
    """The result as a small table."""
    pct = lambda v: "   -  " if v is None else f"{100 * v:5.1f}%"  # noqa: E731
    lines = [f"robustness {name}: {result['dataset']} test, {result['n']} images ({result['seconds']:.0f} s)",
             f"  clean                          {pct(result['clean'])}"]
    pgd_loss = result.get("pgd_loss", "ce")  # results written before the flag: cross-entropy
    bound = result["certified_bound"]
    for key, label in (("gaussian", "gaussian std"), ("salt_pepper", "salt-and-pepper"), ("fgsm", "FGSM Linf"),
                       ("pgd", f"PGD-20 Linf ({pgd_loss})"), ("certified", f"certified Linf ({bound})"),
                       ("pgd_l2", f"PGD-20 L2 ({pgd_loss})"), ("certified_l2", f"certified L2 ({bound})")):
        if key not in result:
            continue
        row = "  ".join(f"{k}: {pct(v)}" for k, v in result[key].items())
        lines.append(f"  {label:<30} {row}")
    sq = result["square"]
    lines.append(f"  gradient-free Linf {sq['eps']:<11g} {pct(sq['accuracy'])}  (PGD at that eps: "
                 f"{pct(sq['pgd_accuracy'])}; much higher PGD than gradient-free accuracy = masked gradients)")
    f = result.get("factors")
    if f:
        num = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"  block factor as run (Euler map)  inf {num(f['block_inf'])} (worst step {num(f['step_inf'])}),"
                     f"  weighted inf {num(f['block_inf_weighted'])} (worst step {num(f['step_inf_weighted'])})")
    return "\n".join(lines)
