"""`certify MODEL --eps E`: certified robustness of a trained ConvNODE checkpoint."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import torch

from contraction.errors import CNodeError
from certify.attacks import pgd
from certify.report import format_report, plot_curves, write_json
from certify.run import BOUNDS, attack_check, certify_model, check_eps
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset
from nodes.cli import OneLineParser, run_cli
from nodes.config import DATASETS
from nodes.data import EMBEDDED_NOTE, load_dataset

__all__ = ["main", "build_parser"]


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"eps must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="certify", description="Certified robustness radii of a ConvNODE checkpoint: "
                                "contraction rate -> Lipschitz bound -> radius per test input.")
    p.add_argument("model", help="checkpoint written by `cnode train`")
    p.add_argument("--eps", type=_eps, required=True, help="perturbation budget (on [0,1] pixels)")
    p.add_argument("--norm", choices=["inf", "2"], default="inf", help="threat model (default: %(default)s)")
    p.add_argument("--data-root", default=None, help="data root (default: $CNODE_DATA, else ./data)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the checkpoint's dataset")
    p.add_argument("--limit", type=int, default=0, help="certify the first N test images (0: all)")
    p.add_argument("--bound", choices=list(BOUNDS), default="auto",
                   help="global = Lipschitz product with the best weight bound of the ODE block; lmi = the same with "
                   "the S-procedure LMI (circular padding, --norm 2; about a minute); local = interval + local-slope "
                   "boxes over the eps-ball; crown = linear bound propagation (CROWN-IBP style); auto (default) = "
                   "global, then local and crown on the inputs still uncertified")
    p.add_argument("--radius", action="store_true",
                   help="with local/crown/auto: bisect each input's certified radius (about 12x the time)")
    p.add_argument("--attack-check", action="store_true",
                   help="attack certified inputs inside their radius (PGD + gradient-free); any success exits 1")
    p.add_argument("--json", default=None, help="write the full report as JSON")
    p.add_argument("--plot", default=None, help="draw certified (and PGD) accuracy against eps to this image")
    p.add_argument("--batch-size", type=int, default=1000, help="inputs per batch (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_eps(args.eps)
    if args.limit < 0 or args.batch_size < 1:
        raise CNodeError("--limit must be >= 0 and --batch-size >= 1")
    payload = load_checkpoint(args.model)
    model = model_from_checkpoint(payload, args.model)
    dataset = args.dataset or trained_dataset(payload)
    data = load_dataset(dataset, "test", data_root=args.data_root, download=args.download, limit=args.limit or None)
    if dataset == "mnist-mini":
        print(f"using the {EMBEDDED_NOTE}")
    report = certify_model(model, data, eps=args.eps, norm=args.norm, bound=args.bound, batch_size=args.batch_size,
                           progress=not args.quiet, radius=args.radius)
    if args.attack_check:
        report.attack = attack_check(model, data, report)
    print(format_report(report, args.model))
    pgd_points = []
    if args.plot:
        x, y = data.tensors(0, min(len(data), 200))
        for e in [args.eps * f for f in (0.5, 1.0, 1.5, 2.0)]:
            adv = pgd(model, x, y, eps=e, norm=args.norm, steps=20)
            with torch.no_grad():
                pgd_points.append((e, float((model(adv).argmax(1) == y).double().mean())))
        plot_curves(report, args.plot, pgd_points)
        print(f"  plot                    {args.plot}")
    if args.json:
        write_json(report, args.json, model=str(args.model))
    if report.attack is not None and report.attack.broken > 0:
        print(f"certify: error: {report.attack.broken} certified inputs were broken by an attack inside their "
              "radius: the certificate is unsound", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
