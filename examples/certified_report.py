"""Clean, certified (our best certificate: auto = global, then local, then crown) and PGD accuracy of checkpoints,
with their training time: the table of the certified-training issue.

    python examples/certified_report.py runs/cert_mnist_linf.pt --eps 0.1 [--norm inf] [--limit 1000]"""

import argparse
import time

import torch

from certify.bounds.attacks import pgd
from certify.run import certify_model
from certify.checks import attack_check
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--eps", type=float, nargs="+", required=True)
    p.add_argument("--norm", choices=["inf", "2"], default="inf")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    print(f"first {args.limit} test images, {args.norm}-norm; PGD: 20 steps x 3 restarts (margin loss)\n")
    print("| model | clean | eps | certified | PGD | attack check | certify s | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.models:
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        data = load_dataset(trained_dataset(payload), "test", data_root=args.data_root, limit=args.limit)
        train_s = sum((payload.get("metrics") or {}).get("seconds_per_epoch") or []) or float("nan")
        x, y = data.tensors(0, len(data))
        for eps in args.eps:
            t = time.perf_counter()
            report = certify_model(model, data, eps=eps, norm=args.norm, bound="auto", batch_size=250)
            t = time.perf_counter() - t
            adv = torch.cat([pgd(model, x[i:i + 250], y[i:i + 250], eps=eps, norm=args.norm, steps=20, restarts=3,
                                 loss="margin") for i in range(0, len(y), 250)])
            with torch.no_grad():
                robust = float((model(adv).argmax(1) == y).double().mean())
            check = attack_check(model, data, report, limit=100, restarts=2, steps=30, queries=100)
            print(f"| {path} | {report.clean_accuracy:.1%} | {eps:g} | {report.certified_accuracy:.1%} | "
                  f"{robust:.1%} | {check.broken}/{check.attacked} broken | {t:.0f} | {train_s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
