"""Time to certify the MNIST test set after the one-time bound, over one plain inference pass of the same images.

    python bench/certify_speed.py runs/mnist_weightreg.pt [--limit N] [--norm inf]

Prints the ratio measured in this run (target <= 2x) and the one-time bound's cost."""

import argparse
import time

import torch

from certify.run import certify_model
from nodes import load_dataset, load_model
from nodes.data import batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--limit", type=int, default=10_000)
    p.add_argument("--norm", choices=["inf", "2"], default="inf")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    model = load_model(args.model)
    data = load_dataset("mnist", "test", data_root=args.data_root, limit=args.limit)
    with torch.no_grad():
        t = time.perf_counter()
        for x, _ in batches(data, 1000):
            model(x)
        plain = time.perf_counter() - t
    report = certify_model(model, data, eps=0.01, norm=args.norm, bound="global", batch_size=1000)
    cert = report.timing["certify_seconds"]
    print(f"images {len(data)}; plain inference {plain:.2f} s; certification after the bound {cert:.2f} s; "
          f"ratio {cert / plain:.2f}x; one-time bound {report.timing['bound_seconds']:.3f} s")


if __name__ == "__main__":
    main()
