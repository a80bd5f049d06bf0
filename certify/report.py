"""Formatting of certification reports (text table, JSON, plot): no computation beyond presentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from contraction.certificates import Certificate, verdict
from certify.bounds.lipschitz import NetworkBound
from certify.run import STAGES, CertifyReport

__all__ = ["format_report", "format_certificates", "write_json", "plot_curves"]


def format_report(report: CertifyReport, model_path: str = "") -> str:
    b = report.bound
    norm = "Linf" if report.norm == "inf" else "L2"
    lines = [
        f"certify {model_path}: {report.dataset} test, first {report.n} images, {norm} eps = {report.eps:g}",
        f"  clean accuracy          {report.clean_accuracy:8.2%}",
        f"  certified accuracy      {report.certified_accuracy:8.2%}   "
        + "(" + (", ".join(f"{m}: {c}" for m, c in report.certified_counts().items()) + " inputs"
                 if report.certified_counts() else "none certified") + "; bound " + report.extra.get("bound_mode", "")
        + ")",
        f"  median radius           {report.median_radius:8.4g}",
        *_block_lines(b),
        f"  time                    {report.timing['total_seconds']:8.2f} s "
        f"(bound {report.timing['bound_seconds']:.2f} s, radii {report.timing['certify_seconds']:.2f} s"
        + "".join(f", {m} {report.timing[m + '_seconds']:.2f} s" for m in STAGES[1:] + ("attack", "radius", "decisions")
                  if m + "_seconds" in report.timing) + ")",
    ]
    ro = report.roundoff
    if ro.get("model") == "derived":
        lines.insert(-1, f"  float32 round-off       derived over each ball (observed/bound on {ro['sample']} inputs: median "
                         f"{ro['observed_over_derived_median']:.2g}, max {ro['observed_over_derived_max']:.2g})")
    if report.runs is not None:
        dy = report.runs.summary(report.predictions == report.labels)
        lines.insert(3, f"  controlled solver runs  {dy['mean_attempts']:8.2f}   attempted steps per input; decisions "
                        f"proven the same over the ball: {dy['decisions_proven']} of {dy['decisions']} (correct inputs; "
                        f"{dy['inputs_with_open_decision']} inputs with one open are not certified)")
    if report.nonfinite_count:
        lines.insert(3, f"  non-finite bounds       {report.nonfinite_count:8d}   (a bound or its float32 slack overflowed or "
                        "was NaN: those inputs are left open)")
    if report.falsified is not None and report.falsified_count:
        lines.insert(3, f"  falsified               {report.falsified_count:8d}   (PGD found an adversarial input in the "
                        "eps-ball: no certificate exists)")
    if report.falsified is not None:
        lines.insert(3, f"  undecided               {report.undecided_count:8d}   (correct inputs neither certified nor "
                        "falsified)")
    if report.attack is not None:
        a = report.attack
        lines.append(f"  attack check            {a.broken} of {a.attacked} certified inputs broken inside "
                     f"their radius (PGD x{a.pgd_restarts} restarts, gradient-free search)")
    if report.pgd is not None:
        g = report.pgd
        each = ", ".join(f"{k} alone {v:.2%}" for k, v in (g.by_loss or {}).items()) if len(g.losses) > 1 else ""
        lines.append(f"  PGD-{g.steps} accuracy        {g.accuracy:8.2%}   (empirical upper bound of the robust accuracy, "
                     f"loss {'+'.join(g.losses)}{'; ' + each if each else ''}; {g.broken_certified} certified inputs "
                     "broken)")
    return "\n".join(lines)


def _block_lines(b: NetworkBound | dict) -> list[str]:
    """The network bound's lines (a dict: a bound without a weight-only factor, e.g. a controlled solver's)."""
    if not isinstance(b, NetworkBound):
        return [f"  ODE block               {b.get('method', '')}"]
    cert = b.certificate
    return [
        f"  ODE block               {cert.status}, {cert.method} ({cert.norm}-norm)",
        f"    factor as run         {b.block_factor:8.4g}   ({len(cert.step_factors)} "
        + (cert.method.split(" from ")[0] if " from " in cert.method else "Euler") + " steps"
        + (f", worst step {max(cert.step_factors):.4g})" if cert.step_factors else ")"),
        f"    flow's rate           {cert.rate:8.4g}   (the continuous ODE's, not the network's as run)"
        if cert.rate is not None else "    flow's rate                  -   (the LMI certifies the discrete step only)",
        f"  stem Lipschitz          {b.embedding:8.4g}   (into the block's norm)",
        f"  network constant L_yj   {float(b.constants().max()):8.4g}   (largest pairwise)",
    ]


def format_certificates(certs: Sequence[Certificate]) -> str:
    """The ODE block's certificates, the network as run first: per norm the largest Euler step factor and the
    block's factor (Lipschitz bounds of the map that runs, valid at every state), then the continuous flow's rate
    (named as the flow's); a verdict per norm says whether the network as run contracts, and why not."""
    solver = next((c.method.split(" from ")[0] for c in certs if " from " in c.method), "Euler")
    lines = [f"contraction of the ODE block as run (Lipschitz factors of the {solver} step, valid at every state; the "
             "flow's rate is the continuous ODE's, second):",
             f"  {'norm':<13}{'status':<15}{'worst step':>11}{'block':>11}{'flow rate':>11}  method"]
    for c in certs:
        rate = f"{c.rate:.4g}" if c.rate is not None else "-"
        factor = f"{c.factor:.4g}" if c.factor is not None else "-"
        step = f"{max(c.step_factors):.4g}" if c.step_factors else "-"
        lines.append(f"  {c.norm:<13}{c.status:<15}{step:>11}{factor:>11}{rate:>11}  {c.method}")
    lines += [f"  {verdict(c)}" for c in certs]
    return "\n".join(lines)


def write_json(report: CertifyReport, path: str | Path, **extra: object) -> None:
    Path(path).write_text(json.dumps({**report.to_dict(), **extra}, indent=2))


def plot_curves(report: CertifyReport, path: str | Path, pgd_points: Sequence[tuple[float, float]] = ()) -> None:
    """Certified accuracy against eps (from the radii), with empirical PGD accuracy points beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    radii = report.radii.sort().values
    top = max(float(radii.max()) * 1.1 if report.n else 0.0, 2 * report.eps, max((e for e, _ in pgd_points), default=0))
    eps_grid = torch.linspace(0, top, 200, dtype=torch.float64)
    cert = [(radii >= e).double().mean().item() for e in eps_grid]  # radii are closed balls
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(eps_grid.numpy(), cert, label="certified (lower bound)")
    if pgd_points:
        xs, ys = zip(*pgd_points)
        ax.plot(xs, ys, "o--", label="PGD accuracy, first 200 images (upper bound)")
    ax.axvline(report.eps, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"eps ({'Linf' if report.norm == 'inf' else 'L2'})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{report.dataset}: {report.bound.certificate.method}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
