"""Certified accuracy and seconds per image of every certificate stage, next to PGD, on an ordinarily trained, a
weight-regularized and certified-trained models, in one run.

    python bench/tightness.py [MODEL:EPS,EPS ...] [--limit 100] [--threads 2] [--pgd-steps 50]

Each `--bound` runs global first, then its tight stages on the inputs still unproven: local (boxes), crown (+ the
backward pass), linear (+ linear intermediate bounds), alpha (+ the backward pass with optimised lower lines), auto
(all, with PGD dropping the inputs it breaks before the linear stage). The ratios that matter: auto's certified
accuracy vs PGD (the gap no certifier can close is below PGD), and auto's time vs crown's (the escalation's cost where
the cheap stages already suffice). Figures of one run on one machine; the timing columns are comparable only within
this run."""

import argparse
import time

import torch

from checkpoint_specs import checkpoint_runs, pgd_accuracy
from certify.run import certify_model

BOUNDS = ("global", "local", "crown", "linear", "alpha", "auto")
DEFAULT = ("examples/models/mnist_plain_paper.pt:0.005,0.01,0.02", "examples/models/mnist_weightreg.pt:0.02,0.05",
           "examples/models/mnist_certified_linf.pt:0.1", "examples/models/mnist_linf_0.1.pt:0.1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT), help="checkpoint:eps,eps,... (default: %(default)s)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--bounds", nargs="+", default=list(BOUNDS), choices=BOUNDS)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"first {args.limit} test images, Linf, eps-ball clipped to [0, 1], {args.threads} thread(s); certified "
          f"accuracy (s/image); auto: stage counts, falsified inputs and its stages' seconds\n")
    print("| model | eps | " + " | ".join(args.bounds) + f" | PGD-{args.pgd_steps} | auto: certified by / falsified |")
    print("|---|---|" + "---|" * (len(args.bounds) + 2))
    for name, model, data, eps in checkpoint_runs(args.models, args.limit, args.data_root):
        cells, auto = [], None
        for bound in args.bounds:
            start = time.perf_counter()
            report = certify_model(model, data, eps=eps, bound=bound, batch_size=100)
            cells.append(f"{report.certified_accuracy:.0%} ({(time.perf_counter() - start) / len(data):.3f})")
            auto = report if bound == "auto" else auto
        robust = pgd_accuracy(model, data, eps, args.pgd_steps)
        detail = ""
        if auto is not None:
            stages = ", ".join(f"{k} {v}" for k, v in auto.certified_counts().items())
            times = ", ".join(f"{k[:-8]} {v:.1f} s" for k, v in auto.timing.items()
                              if k.endswith("_seconds") and k[:-8] in ("local", "crown", "linear", "attack"))
            detail = f"{stages} / {auto.falsified_count} ({times})"
        print(f"| {name} | {eps:g} | " + " | ".join(cells) + f" | {robust:.0%} | {detail} |", flush=True)

if __name__ == "__main__":
    main()
