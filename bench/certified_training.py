"""Seconds per batch of each certified loss vs a plain training step, on the `mini` architecture, one run.

    python bench/certified_training.py [--batches 8] [--batch-size 128] [--eps 0.1] [--arch mini] [--mix 0]

Every method trains a fresh model (same seed, same images) for the given batches with the certified loss on from
the first batch (eps ramping over two epochs, so that crown-ibp's linear pass runs: beta > 1/2), mixed with the
clean loss at `--mix` (0: the shipped recipes' robust loss alone, whose step skips the clean pass); prints seconds
per batch and the ratio to the plain step measured in this run (after one untimed warm-up run). With --mix 0 a
last row runs ibp at mix 0.001, i.e. with the clean pass, for what skipping it saves."""

import argparse
import time

import torch

from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, train
from nodes.config import CERTIFIED_METHODS


def _seconds_per_batch(arch: str, data, method: str | None, eps: float, batch_size: int, mix: float = 0.0) -> float:
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset(arch))
    cfg = TrainConfig(dataset=data.name, epochs=1, batch_size=batch_size, certified_eps=eps if method else 0.0,
                      certified_method=method or "ibp", certified_start=0.0, certified_warmup=2.0, certified_mix=mix)
    t = time.perf_counter()
    train(model, data, cfg, progress=False)
    return (time.perf_counter() - t) / ((len(data) + batch_size - 1) // batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--arch", default="mini")
    p.add_argument("--mix", type=float, default=0.0, help="the clean loss's weight (0: robust loss alone)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    try:
        data = load_dataset("mnist", "train", data_root=args.data_root, limit=args.batches * args.batch_size)
    except Exception:  # no MNIST here: the embedded subset
        data = load_dataset("mnist-mini", "train", limit=args.batches * args.batch_size)
    _seconds_per_batch(args.arch, data, None, args.eps, args.batch_size)  # warm-up: thread pools, allocator
    plain = _seconds_per_batch(args.arch, data, None, args.eps, args.batch_size)
    print(f"{args.arch}, {len(data)} {data.name} images, batch {args.batch_size}, eps {args.eps}, "
          f"mix {args.mix:g}, {torch.get_num_threads()} threads")
    print(f"{'plain':<16} {plain:8.3f} s/batch   1.00 x")
    for method in CERTIFIED_METHODS:
        s = _seconds_per_batch(args.arch, data, method, args.eps, args.batch_size, args.mix)
        print(f"{method:<16} {s:8.3f} s/batch {s / plain:6.2f} x", flush=True)
    if args.mix == 0:
        s = _seconds_per_batch(args.arch, data, "ibp", args.eps, args.batch_size, 1e-3)
        print(f"{'ibp, mix 0.001':<16} {s:8.3f} s/batch {s / plain:6.2f} x   (the clean pass run)", flush=True)


if __name__ == "__main__":
    main()
