"""Certified accuracy and time per image of each certificate (global, local, crown, auto) next to PGD, per model.

    python bench/certify_compare.py runs/i7_nominal.pt runs/i7_weightreg.pt [--limit 200] [--eps ...] [--threads 1]

One run, one table (markdown): the ratios that matter are crown vs global (time) and crown vs PGD (gap). The
CROWN-IBP reference figures (auto_LiRPA, one CPU thread) are in issue 7; compare on comparably trained models."""

import argparse
import time

import torch

from certify.bounds.attacks import pgd
from certify.run import certify_model
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset

METHODS = ("global", "local", "crown", "auto")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--norm", choices=["inf", "2"], default="inf")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"first {args.limit} test images, {args.norm}-norm, eps-ball clipped to [0,1], {args.threads} thread(s)\n")
    print("| model | certificate | " + " | ".join(f"eps {e:g}" for e in args.eps) + " | s/image |")
    print("|---|---|" + "---|" * (len(args.eps) + 1))
    for path in args.models:
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        data = load_dataset(trained_dataset(payload), "test", data_root=args.data_root, limit=args.limit)
        seconds = {}
        for method in METHODS:
            accs, t = [], 0.0
            for eps in args.eps:
                start = time.perf_counter()
                report = certify_model(model, data, eps=eps, norm=args.norm, bound=method, batch_size=100)
                t += time.perf_counter() - start
                accs.append(report.certified_accuracy)
            seconds[method] = t / (len(args.eps) * len(data))
            print(f"| {path} | {method} | " + " | ".join(f"{a:.1%}" for a in accs) + f" | {seconds[method]:.2g} |")
        x, y = data.tensors(0, len(data))
        accs, t = [], 0.0
        for eps in args.eps:
            start = time.perf_counter()
            adv = pgd(model, x, y, eps=eps, norm=args.norm, steps=20)
            t += time.perf_counter() - start
            with torch.no_grad():
                accs.append(float((model(adv).argmax(1) == y).double().mean()))
        print(f"| {path} | PGD-20 (upper bound) | " + " | ".join(f"{a:.1%}" for a in accs)
              + f" | {t / (len(args.eps) * len(data)):.2g} |")
        print(f"|  | ratio crown / global time | {seconds['crown'] / seconds['global']:.0f}x |")


if __name__ == "__main__":
    main()
