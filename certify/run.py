"""Orchestration: one-time network bound -> logits -> radii -> certified accuracy (+ optional attack check)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from certify.attacks import is_adversarial, pgd, square
from nodes.train import eval_mode
from certify.lipschitz import NetworkBound, best_network_bound
from certify.radius import certified_radii, roundoff_slack
from certify.tight import certified_at, local_and_crown, tight_radii
from certify.unrolled import unroll
from nodes.classifier import ConvNODE
from nodes.data import ImageData, batches

__all__ = ["CertifyReport", "certify_model", "attack_check", "check_eps", "BOUNDS"]

BOUNDS = ("auto", "global", "lmi", "local", "crown")
RADIUS_CAP = {"inf": 0.5, "2": 10.0}  # bisection's upper end for --radius
ROUNDOFF_REL = 1e-4


@dataclass
class CertifyReport:
    """Certified robustness of a model on a dataset at eps, with the bound used and per-input radii."""

    dataset: str
    norm: str
    eps: float
    bound: NetworkBound
    labels: torch.Tensor
    predictions: torch.Tensor
    radii: torch.Tensor
    timing: dict[str, float]
    roundoff: dict[str, float]
    attack: dict[str, Any] | None = None
    certified: torch.Tensor | None = None  # [n] bool at eps; None: radii > eps (global bound only)
    certified_by: list[str] | None = None  # per input: "global", "local", "crown" or ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.numel())

    @property
    def clean_accuracy(self) -> float:
        return float((self.predictions == self.labels).double().mean()) if self.n else 0.0

    @property
    def certified_mask(self) -> torch.Tensor:
        return self.certified if self.certified is not None else self.radii > self.eps

    @property
    def certified_accuracy(self) -> float:
        return float(self.certified_mask.double().mean()) if self.n else 0.0

    def certified_counts(self) -> dict[str, int]:
        """How many inputs each certificate certified (auto runs the cheaper ones first)."""
        by = self._by()
        return {m: sum(1 for b in by if b == m) for m in ("global", "local", "crown") if m in by}

    def _by(self) -> list[str]:
        """Per input: the certificate that certified it, or ''."""
        return self.certified_by or ["global" if c else "" for c in self.certified_mask.tolist()]

    @property
    def median_radius(self) -> float:
        return float(self.radii.median()) if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "norm": self.norm,
            "eps": self.eps,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy,
            "median_radius": self.median_radius,
            "certified_by": self.certified_counts(),
            "bound": self.bound.to_dict(),
            "roundoff": self.roundoff,
            "timing": self.timing,
            "attack_check": self.attack,
            "samples": [
                {"index": i, "label": int(y), "prediction": int(p), "radius": float(r), "certified": bool(c),
                 "certified_by": by}
                for i, (y, p, r, c, by) in enumerate(zip(self.labels, self.predictions, self.radii,
                                                         self.certified_mask.tolist(), self._by()))
            ],
            **self.extra,
        }


def check_eps(eps: float) -> float:
    """eps must be a finite number > 0."""
    if not isinstance(eps, (int, float)) or not (eps > 0) or eps != eps or eps == float("inf"):
        raise CNodeError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _measured_roundoff(model: ConvNODE, x: torch.Tensor) -> float:
    """Largest |z32 - z64| / (1 + max|z|) on a check batch (float64 copy of the model)."""
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        z64 = model64(x.double())
        z32 = model(x.float()).double()
    return float(((z32 - z64).abs().amax(1) / (1 + z64.abs().amax(1))).max())


def certify_model(
    model: ConvNODE,
    data: ImageData,
    *,
    eps: float,
    norm: str = "inf",
    bound: str = "auto",
    batch_size: int = 1000,
    progress: bool = False,
    radius: bool = False,
) -> CertifyReport:
    """Certify every input of `data` at eps; the bound used and a proven radius per input.

    bound: 'global' (weight bounds) or 'lmi' (LMI block) -> Lipschitz radii, certified when radius > eps;
    'local' / 'crown' -> tight margins over the eps-ball (Euler models); 'auto' -> global, then local on the
    inputs still uncertified, then crown on the rest. `radius=True` bisects the tight radius of every input."""
    eps = check_eps(eps)
    if norm not in ("inf", "2"):
        raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")
    if bound not in BOUNDS:
        raise CNodeError(f"bound must be one of {list(BOUNDS)}, got {bound!r}")
    t0 = time.perf_counter()
    spec = model.block.spec()
    certs = block_certificates(spec)
    tight = {"auto": ("local", "crown"), "local": ("local",), "crown": ("crown",)}.get(bound, ())
    if bound == "auto" and model.config.solver != "euler":
        tight = ()  # the tight certificates follow Euler steps; auto falls back to the global bound
    if tight and model.config.solver != "euler":
        raise CNodeError(f"--bound {bound} follows the Euler steps; this model uses {model.config.solver!r} "
                         "(use --bound global, or train with --solver euler)")
    if bound == "lmi":
        from contraction.lmi import lmi_block_certificate

        lmi = lmi_block_certificate(spec)
        if not lmi.certified:
            raise CNodeError(f"LMI certificate not available: {lmi.status}: {lmi.condition}")
        certs = [lmi] if norm == "2" else certs
        if norm == "inf":
            raise CNodeError("the LMI certifies the 2-norm: use --norm 2 with --bound lmi")
    net = best_network_bound(model, norm, certs)
    constants = net.constants()
    unrolled = unroll(model) if tight else None
    t_bound = time.perf_counter() - t0

    labels, preds, radii, certified, by = [], [], [], [], []
    seconds = {"global": 0.0, "local": 0.0, "crown": 0.0}
    t1 = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        it = batches(data, batch_size if not tight else min(batch_size, 100))
        if progress:
            step = batch_size if not tight else min(batch_size, 100)
            it = tqdm(it, total=(len(data) + step - 1) // step, desc=f"certify ({bound})", leave=False)
        for x, y in it:
            ts = time.perf_counter()
            z = model(x)
            slack = roundoff_slack(z, ROUNDOFF_REL)
            r = certified_radii(z, y, constants, slack)
            ok = (r > eps) if bound in ("auto", "global", "lmi") else torch.zeros_like(r, dtype=torch.bool)
            names = ["global" if c else "" for c in ok.tolist()]
            seconds["global"] += time.perf_counter() - ts
            todo = torch.nonzero(~ok & (z.argmax(1) == y)).flatten()
            if len(todo) and tight:
                ts = time.perf_counter()
                if tight == ("local", "crown"):  # one pass: the boxes, then CROWN on the margins they leave open
                    got_local, got = local_and_crown(unrolled, x[todo], y[todo], eps, norm, slack[todo])
                else:
                    got_local = torch.zeros(len(todo), dtype=torch.bool)
                    got = certified_at(unrolled, x[todo], y[todo], eps, norm, tight[0], slack[todo])
                seconds[tight[-1]] += time.perf_counter() - ts
                ok[todo[got]] = True
                for i, by_local in zip(todo[got].tolist(), got_local[got].tolist()):
                    names[i] = "local" if by_local else tight[-1]
            if radius and tight:
                r = torch.where(ok, r.clamp_min(eps), r)
                good = torch.nonzero(z.argmax(1) == y).flatten()
                if len(good):
                    r[good] = tight_radii(unrolled, x[good], y[good], norm, tight[-1], slack[good], r[good],
                                          RADIUS_CAP[norm])
            elif tight:
                r = torch.where(ok, r.clamp_min(eps), r)  # certified at eps: the closed eps-ball is proven
            radii.append(r)
            certified.append(ok)
            by.extend(names)
            labels.append(y)
            preds.append(z.argmax(1))
    t_cert = time.perf_counter() - t1
    first = data.tensors(0, min(len(data), 64))[0]
    with eval_mode(model):
        measured = _measured_roundoff(model, first) if len(data) else 0.0
    if measured > 0.1 * ROUNDOFF_REL:
        raise CNodeError(f"float32 logits differ from float64 by {measured:.2e} (relative), above the "
                         f"round-off slack's safety margin; certificate withheld")
    return CertifyReport(
        dataset=data.name,
        norm=norm,
        eps=eps,
        bound=net,
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        predictions=torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long),
        radii=torch.cat(radii) if radii else torch.zeros(0, dtype=torch.float64),
        timing={"bound_seconds": t_bound, "certify_seconds": t_cert, "total_seconds": time.perf_counter() - t0,
                **{f"{m}_seconds": s for m, s in seconds.items() if s > 0}},
        certified=torch.cat(certified) if certified else torch.zeros(0, dtype=torch.bool),
        certified_by=by,
        extra={"bound_mode": bound, "radius_bisection": bool(radius and tight)},
        roundoff={"relative_slack": ROUNDOFF_REL, "measured_relative_float32_error": measured,
                  "note": "each margin is reduced by 4e-4 * (1 + max|z|) before dividing by L_yj"},
    )


def attack_check(
    model: ConvNODE, data: ImageData, report: CertifyReport, *, limit: int = 200, restarts: int = 3,
    steps: int = 40, queries: int = 300, batch_size: int = 100,
) -> dict[str, Any]:
    """Attack the certified inputs inside their certified radius (PGD with restarts and the gradient-free search).

    Any success would falsify the certificate: `broken` must be 0."""
    idx = torch.nonzero(report.radii > 0).flatten()[:limit]
    broken = {"pgd": 0, "square": 0}
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        x = data.images[sel].float() / 255.0
        y = data.labels[sel]
        r = report.radii[sel].to(torch.float32)
        for name, adv in (
            ("pgd", pgd(model, x, y, eps=r, norm=report.norm, steps=steps, restarts=restarts, loss="margin")),
            ("square", square(model, x, y, eps=r, norm=report.norm, queries=queries)),
        ):
            broken[name] += int(is_adversarial(model, adv, y).sum())
    return {"attacked": int(len(idx)), "broken": broken["pgd"] + broken["square"], "broken_by": broken,
            "pgd": {"steps": steps, "restarts": restarts, "loss": "margin"}, "square": {"queries": queries}}
