"""Certified losses against each other: the same architecture, data, schedule and budget for every
`--certified-method`, then clean, certified (`bound auto`) and PGD accuracy at the test eps, and training time.

    python examples/certified_methods.py [--train-limit 12000] [--epochs 6] [--eps 0.1] [--test-limit 500]
        [--methods ibp crown-ibp mtl-ibp interval] [--out runs/methods]

Each model is trained through `nodes.train.fit` with one TrainConfig that differs only in `certified_method`
(checkpoints in --out, reused when present: resumable), certified with `certify.run.certify_model` and attacked
with PGD-50 at eps on the first --test-limit test images. Prints one row per method."""

import argparse
import json
import time
from pathlib import Path

import torch

from certify.run import certify_model
from certify.checks import pgd_check
from nodes import ModelConfig, TrainConfig, fit, load_dataset, load_model, save_model
from nodes.config import CERTIFIED_METHODS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--train-limit", type=int, default=12_000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp", "mtl-ibp", "local"],
                   choices=list(CERTIFIED_METHODS))
    p.add_argument("--out", default="runs/methods")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(args.dataset, "train", data_root=args.data_root, limit=args.train_limit)
    test = load_dataset(args.dataset, "test", data_root=args.data_root, limit=args.test_limit)
    rows = []
    print(f"{args.dataset}, {len(train)} training images, {args.epochs} epochs, eps {args.eps}, "
          f"{torch.get_num_threads()} threads; first {len(test)} test images", flush=True)
    print(f"{'method':<10} {'clean':>7} {'certified':>9} {'PGD-50':>7} {'train s':>8}", flush=True)
    for method in args.methods:
        cfg = TrainConfig(dataset=args.dataset, epochs=args.epochs, train_limit=args.train_limit, lr=1e-3,
                          lr_decay=0.2, lr_milestones=(args.epochs - 1,), grad_clip=10.0, init="ibp",
                          certified_method=method, certified_eps=args.eps, train_eps_factor=1.5,
                          certified_start=1.0, certified_warmup=args.epochs / 2, eps_ramp="smooth",
                          certified_mix=0.0)
        path = out / f"{method}.pt"
        if path.is_file():
            model, seconds = load_model(path), json.loads((out / f"{method}.json").read_text())["train_seconds"]
        else:
            t = time.perf_counter()
            model, _ = fit(ModelConfig.preset("mini"), cfg, train, None, device="cpu", progress=False)
            seconds = time.perf_counter() - t
            save_model(path, model, train_config=cfg)
            (out / f"{method}.json").write_text(json.dumps({"train_seconds": seconds}))
        report = certify_model(model, test, eps=args.eps, norm="inf", bound="auto")
        check = pgd_check(model, test, report, steps=50)
        rows.append({"method": method, "clean": report.clean_accuracy, "certified": report.certified_accuracy,
                     "pgd50": check.accuracy, "broken_certified": check.broken_certified, "train_seconds": seconds})
        print(f"{method:<10} {report.clean_accuracy:7.2%} {report.certified_accuracy:9.2%} {check.accuracy:7.2%} "
              f"{seconds:8.0f}", flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
