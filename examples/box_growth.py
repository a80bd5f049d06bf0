"""How an input box grows through the ODE block's Euler steps: interval arithmetic against the mean-value box
(`certify --bound local`) and the engine's IBP rule (the two met), for each model given, on the first test images
at Linf eps.

Interval arithmetic on x + h sigma(T x + b) adds the radii of x and of h sigma(.): a growth of up to
1 + h b (|c| + R) per step whatever the block does. The mean-value box uses |I + h D T| with the local slopes, so
through a step certified contractive (factor < 1) it does not grow.

    python examples/box_growth.py runs/contractive.pt runs/default.pt --eps 0.01 --out docs/box_growth.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from certify.bounds.layers import EulerStep
from certify.bounds.local import ibp_bounds, input_box, local_bounds
from certify.bounds.unrolled import unroll
from contraction.certificates import block_certificates
from nodes import load_dataset, load_model


def interval_arithmetic(net, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Textbook IBP: every layer by interval arithmetic, an Euler step as x+ in [lo + h sigma(z_lo), hi + h sigma(z_hi)]
    (the engine's own `interval` rule meets this with the mean-value box)."""
    boxes = []
    for layer in net.layers[:-1]:
        if isinstance(layer, EulerStep):
            (zl, zh), _ = layer.conv.interval(lo, hi)
            lo, hi = lo + layer.h * layer.act(zl), hi + layer.h * layer.act(zh)
        else:
            (lo, hi), _ = layer.interval(lo, hi)
        boxes.append((lo, hi))
    return boxes


def block_radii(path: str, eps: float, n: int, dataset: str | None) -> dict:
    model = load_model(path)
    net = unroll(model)
    data = load_dataset(dataset or "mnist-mini", "test", limit=n)
    u = data.images[:n].to(torch.float64) / 255.0  # uint8 -> [0, 1], as the models see them
    start, end = net.block
    radii = {}
    for name, boxes in (("interval arithmetic", interval_arithmetic(net, *input_box(u, eps))),
                        ("IBP as run (met with the mean-value box)", ibp_bounds(net, u, eps, "inf").boxes),
                        ("mean-value box", local_bounds(net, u, eps, "inf").boxes)):
        # the box entering the block (the stem's output) and after every Euler step: mean half-width per input
        radii[name] = [float((0.5 * (boxes[i][1] - boxes[i][0])).flatten(1).mean(1).mean())
                       for i in range(start - 1, end)]
    (cert,) = block_certificates(model.block.spec(), ("inf",))
    return {"radii": radii, "factor": cert.factor, "steps": cert.step_factors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=100, help="first N test images")
    p.add_argument("--dataset", default=None, help="default: the embedded MNIST subset (MNIST's first test images)")
    p.add_argument("--out", default="docs/box_growth.png")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, path in enumerate(args.models):
        r = block_radii(path, args.eps, args.limit, args.dataset)
        label = f"{Path(path).stem} (Linf step factor <= {max(r['steps']):.3g})"
        for style, (name, ys) in zip(("--", ":", "-"), r["radii"].items()):
            ax.semilogy(range(len(ys)), ys, style, marker="o", color=f"C{k}", label=f"{label}: {name}")
            print(f"{path}: {name}: mean box half-width entering the block {ys[0]:.3g}, after each step "
                  + " ".join(f"{y:.3g}" for y in ys[1:]))
    ax.set_xlabel("Euler step")
    ax.set_ylabel(f"mean box half-width (Linf eps {args.eps:g})")
    ax.legend(fontsize=6)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
