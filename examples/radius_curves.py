"""Certified accuracy against the radius, for several certification reports side by side (one plot).

    certify examples/models/mnist_l2.pt --norm 2 --eps 1.58 --bound global --json runs/l2.json
    certify examples/models/mnist_linf_0.1.pt --norm 2 --eps 1.58 --bound global --json runs/linf_l2.json
    python examples/radius_curves.py docs/l2_radius.png runs/l2.json:"mnist_l2 (L2-trained)" \\
        runs/linf_l2.json:"mnist_linf_0.1 (Linf-trained)"

Each report's per-input radii (JSON samples) give the fraction of inputs certified at every radius (a radius is a
closed ball: certified at eps iff radius >= eps); the reports must share a norm. Global (and lmi) radii are closed
forms; the tight stages' radii are bisected only with `certify --radius`."""

import argparse
import json
from pathlib import Path


def curve(path: str) -> tuple[dict, list[float]]:
    report = json.loads(Path(path).read_text())
    if "samples" not in report:
        raise SystemExit(f"{path}: no per-input samples (write it with certify --json)")
    return report, sorted(float(s["radius"]) for s in report["samples"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the PNG to write")
    p.add_argument("reports", nargs="+", help="certify --json reports, each as PATH or PATH:LABEL")
    p.add_argument("--max-radius", type=float, default=None, help="right end of the x axis (default: from the data)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    loaded = []
    for spec in args.reports:
        path, _, label = spec.partition(":")
        report, radii = curve(path)
        loaded.append((label or Path(path).stem, report, np.asarray(radii)))
    norms = {r["norm"] for _, r, _ in loaded}
    if len(norms) != 1:
        raise SystemExit(f"the reports mix norms {sorted(norms)}")
    top = args.max_radius or max(2.0 * max(r["eps"] for _, r, _ in loaded), max(float(x.max()) for *_, x in loaded))
    grid = np.linspace(0.0, top, 400)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, report, radii in loaded:
        frac = [(radii >= e).mean() for e in grid]
        mode = report.get("bound_mode", "")
        if mode not in ("global", "lmi") and not report.get("radius_bisection"):
            raise SystemExit(f"{label}: --bound {mode} radii stop at eps; certify with --radius for a curve")
        ax.plot(grid, frac, label=f"{label}, --bound {mode}")
    for eps in sorted({r["eps"] for _, r, _ in loaded}):
        ax.axvline(eps, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"radius ({'L2' if norms == {'2'} else 'Linf'}, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, top)
    n = {len(x) for *_, x in loaded}
    ax.set_title(f"{loaded[0][1]['dataset']} test set ({'/'.join(map(str, sorted(n)))} images)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
