"""Decided inputs per model and eps: certified (by which stage), falsified, undecided, against PGD, with seconds
per image, `cnode certify --bound auto` as a user runs it (the refine stage with --budget seconds per input).

    python bench/decide.py [MODEL:EPS,EPS ...] [--limit 100] [--budget 5] [--pgd-steps 50] [--threads 2]

Certified + falsified is what the certificate decided; PGD-k accuracy is an upper bound of the robust accuracy (the
certified one can only reach it). Figures of one run on one machine."""

import argparse
import time

import torch

from checkpoint_specs import checkpoint_runs, pgd_accuracy
from certify.run import certify_model

DEFAULT = ("examples/models/mnist_plain_paper.pt:0.005,0.01,0.02,0.05",)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT), help="checkpoint:eps,eps,... (default: %(default)s)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--budget", type=float, default=5.0, help="the refine stage's seconds per input")
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"first {args.limit} test images, Linf (eps-ball clipped to [0, 1]), --bound auto --budget {args.budget:g}, "
          f"{args.threads} thread(s)\n")
    print(f"| model | eps | clean | certified | by stage | falsified | undecided | PGD-{args.pgd_steps} | s/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model, data, eps in checkpoint_runs(args.models, args.limit, args.data_root):
        start = time.perf_counter()
        r = certify_model(model, data, eps=eps, bound="auto", batch_size=100, budget=args.budget)
        seconds = (time.perf_counter() - start) / len(data)
        robust = pgd_accuracy(model, data, eps, args.pgd_steps)
        by = ", ".join(f"{k} {v}" for k, v in r.certified_counts().items())
        print(f"| {name} | {eps:g} | {r.clean_accuracy:.0%} | {r.certified_accuracy:.0%} | {by} "
              f"| {r.falsified_count} | {r.undecided_count} | {robust:.0%} | {seconds:.2f} |", flush=True)

if __name__ == "__main__":
    main()
