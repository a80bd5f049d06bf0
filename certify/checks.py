"""Checks of a certificate report by attack: the attack check (PGD with restarts and the gradient-free search
inside every certified input's proven radius: any success is an unsound certificate) and the PGD check (PGD at the
report's eps on every input: the empirical robust accuracy beside the certified one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from contraction.errors import CNodeError
from certify.bounds.attacks import PGD_LOSS_NAMES, is_adversarial, pgd, square
from certify.bounds.radius import float32_below
from certify.run import CertifyReport
from nodes.classifier import ConvNODE
from nodes.data import ImageData
from nodes.device import exact_float32, module_device
from nodes.distributed import SINGLE, Dist, batch_shard

__all__ = ["AttackCheck", "attack_check", "PGDCheck", "pgd_check"]


@dataclass(frozen=True)
class AttackCheck:
    """Attacks on certified inputs inside their proven radius: `broken` must be 0 (else the certificate is unsound)."""

    attacked: int
    broken_by: dict[str, int]
    pgd_steps: int
    pgd_restarts: int
    square_queries: int

    @property
    def broken(self) -> int:
        return sum(self.broken_by.values())

    @property
    def status(self) -> str:
        return "unsound" if self.broken else "not_broken"

    def to_dict(self) -> dict[str, Any]:
        return {"attacked": self.attacked, "broken": self.broken, "broken_by": dict(self.broken_by),
                "status": self.status, "pgd": {"steps": self.pgd_steps, "restarts": self.pgd_restarts,
                                               "loss": "margin"}, "square": {"queries": self.square_queries}}


def _images(inputs: ImageData | torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """The float images [len(sel), C, S, S] in [0, 1] at indices `sel` of a dataset or of a float image tensor."""
    x = inputs.images[sel].float() / 255.0 if isinstance(inputs, ImageData) else inputs[sel.to(inputs.device)]
    return x.float()


@exact_float32()  # the arithmetic the certificate is for
def attack_check(
    model: ConvNODE, inputs: ImageData | torch.Tensor, report: CertifyReport, *, limit: int = 200, restarts: int = 3,
    steps: int = 40, queries: int = 300, batch_size: int = 100,
) -> AttackCheck:
    """Attack the certified inputs inside their certified radius (PGD with restarts and the gradient-free search).

    `inputs`: the dataset or the float images [N, C, S, S] the report was computed on, in the same order."""
    idx = torch.nonzero(report.radii > 0).flatten()[:limit]
    broken = {"pgd": 0, "square": 0}
    device = module_device(model)
    index = report.index()
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        x, y = _images(inputs, index[sel]).to(device), report.labels[sel].to(device)
        r = float32_below(report.radii[sel]).to(device)  # inside the proven radius
        for name, adv in (
            ("pgd", pgd(model, x, y, eps=r, norm=report.norm, steps=steps, restarts=restarts, loss="margin")),
            ("square", square(model, x, y, eps=r, norm=report.norm, queries=queries)),
        ):
            broken[name] += int(is_adversarial(model, adv, y).sum())
    return AttackCheck(int(len(idx)), broken, steps, restarts, queries)


PGD_LOSSES = {**{name: (name,) for name in PGD_LOSS_NAMES}, "both": PGD_LOSS_NAMES}
"""`cnode certify --pgd-loss`: the objectives PGD runs with; an input is robust only if it survives every one. The
default, both: cross-entropy saturates where the logits are large (the Lipschitz-margin models': on the shipped
`mnist_l2.pt` PGD-50 with cross-entropy leaves 67.4 % of the first 500 test images at L2 1.58, with the margin loss
58.4 %), so a figure from it alone overstates the robust accuracy it bounds."""


@dataclass(frozen=True)
class PGDCheck:
    """PGD at the report's eps on every input: `accuracy` is an upper bound of the robust accuracy (certified
    accuracy must not exceed it); `broken_certified` counts certified inputs PGD changed (must be 0). An input is
    robust if PGD with each of `losses` left it correct; `by_loss` is the accuracy left by each loss alone."""

    n: int
    accuracy: float
    broken_certified: int
    steps: int
    restarts: int
    robust: torch.Tensor | None = None  # per input: PGD did not change a correct prediction
    losses: tuple[str, ...] = PGD_LOSSES["both"]
    by_loss: dict[str, float] | None = None

    @property
    def status(self) -> str:
        return "unsound" if self.broken_certified else "not_broken"

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "accuracy": self.accuracy, "broken_certified": self.broken_certified,
                "status": self.status, "steps": self.steps, "restarts": self.restarts, "loss": "+".join(self.losses),
                "accuracy_by_loss": dict(self.by_loss or {})}


def pgd_robust(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
               restarts: int = 1, losses: tuple[str, ...] = PGD_LOSSES["both"]) -> torch.Tensor:
    """[len(y), len(losses)] bool: PGD-`steps` with each loss (random start) at eps left the prediction correct
    (a wrong clean prediction is never robust)."""
    correct = ~is_adversarial(model, x, y)
    return torch.stack([correct & ~is_adversarial(model, pgd(model, x, y, eps=eps, norm=norm, steps=steps,
                                                             restarts=restarts, loss=loss), y)
                        for loss in losses], dim=1)


@exact_float32()  # the arithmetic the certificate is for
def pgd_check(model: ConvNODE, inputs: ImageData | torch.Tensor, report: CertifyReport, *, steps: int = 100,
              restarts: int = 1, batch_size: int = 500, progress: bool = False, dist: Dist = SINGLE,
              losses: tuple[str, ...] = PGD_LOSSES["both"]) -> PGDCheck:
    """PGD-`steps` (random start) with each of `losses` at the report's eps on every input the report covers, in
    order: the empirical robust accuracy beside the certified one, and a soundness check of every certificate at
    eps. `inputs` holds the report's inputs at the report's indices. With several processes (`dist`) the ranks take
    contiguous whole batches and gather: the same per-input result as one process."""
    if steps < 1 or restarts < 1:
        raise CNodeError("PGD needs steps >= 1 and restarts >= 1")
    if not losses:
        raise CNodeError("PGD needs at least one loss")
    device = module_device(model)
    index = report.index()
    mine = batch_shard(report.n, batch_size, dist.rank, dist.world)
    parts = []
    starts = range(mine.start, mine.stop, batch_size)
    for start in tqdm(starts, desc="pgd", leave=False, disable=None if progress and dist.main else True):
        sel = torch.arange(start, min(start + batch_size, mine.stop))
        x, y = _images(inputs, index[sel]).to(device), report.labels[sel].to(device)
        robust = pgd_robust(model, x, y, eps=float32_below(report.eps), norm=report.norm, steps=steps,
                            restarts=restarts, losses=losses).cpu()
        parts.append(robust & (report.predictions[sel] == report.labels[sel])[:, None])
    gathered = [p for part in dist.all_gather(parts) for p in part]
    each = torch.cat(gathered) if gathered else torch.zeros(0, len(losses), dtype=torch.bool)
    robust = each.all(dim=1)
    broken = int((~robust & report.certified_mask).sum())
    by_loss = {loss: float(each[:, k].double().mean()) if report.n else 0.0 for k, loss in enumerate(losses)}
    return PGDCheck(report.n, float(robust.double().mean()) if report.n else 0.0, broken, steps, restarts, robust,
                    tuple(losses), by_loss)
