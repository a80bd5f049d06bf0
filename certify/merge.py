"""One report from the JSON parts of `cnode certify --shard i/n` (a job array's shards): the parts must come from
the same checkpoint (SHA-256), dataset, norm, eps, bound and selection, and together cover every shard once; every
figure of the merged report is recomputed from the per-input results, so it equals the one-process report's
(timings are the parts' sums)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contraction.errors import CNodeError
from certify.run import CertifyReport

__all__ = ["MATCH", "merge_reports", "load_parts", "format_merged"]

MATCH = ("model_sha256", "dataset", "norm", "eps", "bound_mode", "radius_bisection")
"""What every part must share (besides the network bound, the shard count and the number of selected inputs)."""


def load_parts(paths: list[str]) -> list[tuple[str, dict]]:
    """(path, report) of every part; a one-line error for a missing or unreadable file."""
    out = []
    for p in paths:
        try:
            out.append((p, json.loads(Path(p).read_text())))
        except (OSError, ValueError) as e:
            raise CNodeError(f"cannot read the report {p}: {e.__class__.__name__}: {e}") from None
    return out


def _same(parts: list[tuple[str, dict]], key: str, value) -> None:
    first_path, first = parts[0]
    for path, rep in parts[1:]:
        if value(rep) != value(first):
            raise CNodeError(f"{path} and {first_path} differ in {key} ({value(rep)!r} vs {value(first)!r}): parts of "
                             "one report must share the model, dataset, norm, eps, bound and selection")


def merge_reports(parts: list[tuple[str, dict]]) -> dict[str, Any]:
    """The merged report (a dict with the fields of `CertifyReport.to_dict`)."""
    if not parts:
        raise CNodeError("no reports to merge")
    for path, rep in parts:
        if not isinstance(rep, dict) or not isinstance(rep.get("shard"), dict) or "samples" not in rep:
            raise CNodeError(f"{path} is not a report of `cnode certify --shard I/N --json` (no shard or samples)")
    for key in MATCH:
        _same(parts, key, lambda r, k=key: r.get(k))
    _same(parts, "network bound", lambda r: json.dumps(r.get("bound"), sort_keys=True))
    _same(parts, "shard count", lambda r: r["shard"]["count"])
    _same(parts, "selected inputs", lambda r: r["shard"]["inputs"])
    count, n = parts[0][1]["shard"]["count"], parts[0][1]["shard"]["inputs"]
    seen: dict[int, str] = {}
    for path, rep in parts:
        i = rep["shard"]["index"]
        if i in seen:
            raise CNodeError(f"shard {i}/{count} given twice ({seen[i]} and {path})")
        seen[i] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise CNodeError(f"shards {', '.join(f'{i}/{count}' for i in missing)} missing: the merged report would not "
                         f"cover all {n} inputs")
    samples = sorted((s for _, rep in parts for s in rep["samples"]), key=lambda s: s["index"])
    if [s["index"] for s in samples] != list(range(n)):
        raise CNodeError(f"the parts' inputs are not exactly 0..{n - 1} once each")
    first = parts[0][1]
    report = CertifyReport.from_samples(
        samples, dataset=first["dataset"], norm=first["norm"], eps=first["eps"], bound=first["bound"],
        timing={k: sum(rep["timing"].get(k, 0.0) for _, rep in parts)
                for k in dict.fromkeys(k for _, rep in parts for k in rep["timing"])},
        roundoff={**first["roundoff"], **{k: max(rep["roundoff"][k] for _, rep in parts) for k in first["roundoff"]
                                          if k.endswith(("_max", "_error"))}})
    whole = report.to_dict()  # every figure as the one-process report computes it
    merged: dict[str, Any] = {k: first[k] for k in first if k not in ("samples", "shard", "timing", "pgd",
                                                                     "attack_check")}
    merged.update(
        {k: v for k, v in whole.items() if k not in ("samples", "attack_check", "pgd", "shard")},
        shard=None,
        merged_from=[path for _, path in sorted(seen.items())],
        pgd=_merged_pgd(parts, samples),
        attack_check=_merged_attack(parts),
        samples=samples,
    )
    return merged


def _merged_pgd(parts: list[tuple[str, dict]], samples: list[dict]) -> dict | None:
    if any(rep.get("pgd") is None for _, rep in parts):
        return None
    _same(parts, "PGD settings", lambda r: (r["pgd"]["steps"], r["pgd"]["restarts"], r["pgd"].get("loss", "ce")))
    robust = [bool(s["pgd_robust"]) for s in samples]
    broken = sum(s["certified"] and not r for s, r in zip(samples, robust))
    first = parts[0][1]["pgd"]
    by_loss = {k: sum(r["pgd"]["accuracy_by_loss"][k] * r["pgd"]["n"] for _, r in parts) / len(samples)
               for k in first.get("accuracy_by_loss", {})} if samples else {}
    return {**first, "n": len(samples), "accuracy": sum(robust) / len(samples) if samples else 0.0,
            "accuracy_by_loss": by_loss, "broken_certified": broken, "status": "unsound" if broken else "not_broken"}


def _merged_attack(parts: list[tuple[str, dict]]) -> dict | None:
    if any(rep.get("attack_check") is None for _, rep in parts):
        return None
    checks = [rep["attack_check"] for _, rep in parts]
    broken_by = {k: sum(c["broken_by"].get(k, 0) for c in checks) for k in checks[0]["broken_by"]}
    broken = sum(broken_by.values())
    return {**checks[0], "attacked": sum(c["attacked"] for c in checks), "broken": broken, "broken_by": broken_by,
            "status": "unsound" if broken else "not_broken"}


def format_merged(report: dict) -> str:
    """A few lines: what was merged and the recomputed figures."""
    norm = "Linf" if report["norm"] == "inf" else "L2"
    counts = ", ".join(f"{k}: {v}" for k, v in report["certified_by"].items()) or "none certified"
    lines = [f"merged {len(report['merged_from'])} parts of {report.get('model', '?')}: {report['dataset']} test, "
             f"{report['n']} images, {norm} eps = {report['eps']:g}, bound {report['bound_mode']}",
             f"  clean accuracy          {report['clean_accuracy']:8.2%}",
             f"  certified accuracy      {report['certified_accuracy']:8.2%}   ({counts})",
             f"  median radius           {report['median_radius']:8.4g}"]
    if report["falsified"]:
        lines.append(f"  falsified               {report['falsified']:8d}")
    if report["pgd"] is not None:
        g = report["pgd"]
        lines.append(f"  PGD-{g['steps']} accuracy        {g['accuracy']:8.2%}   ({g['broken_certified']} certified "
                     "inputs broken)")
    if report["attack_check"] is not None:
        a = report["attack_check"]
        lines.append(f"  attack check            {a['broken']} of {a['attacked']} certified inputs broken")
    return "\n".join(lines)
