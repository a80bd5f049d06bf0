"""`cnode demo`: the README's main job. Train a small weight-regularized ConvNODE, evaluate it, certify it.

Lives in certify/ (it needs certification) and is added to the `cnode` parser built in nodes/."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from certify.report import format_report
from certify.robustness import add_robustness
from certify.run import certify_model
from certify.training import certified_objective
from contraction.certificates import block_certificates
from nodes.checkpoint import save_model
from nodes.cli import add_data_flags, announce_data, build_parser, fit, format_certificates, run_cli
from nodes.config import ModelConfig, TrainConfig
from nodes.data import load_dataset, resolve_data_root

__all__ = ["main", "add_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small weight-regularized ConvNODE, evaluate it, print its block certificates and certify it."""
    root = resolve_data_root(args.data_root)
    dataset = "mnist" if (root / "MNIST" / "raw").is_dir() else "mnist-mini"
    limit = args.train_images if dataset == "mnist" else 0
    train_cfg = TrainConfig(dataset=dataset, epochs=args.epochs, train_limit=limit, seed=args.seed, lr=args.lr,
                            batch_size=args.batch_size, readout_lr_scale=0.1, reg="weight", rho=args.rho,
                            reg_weight=args.reg_weight, norm="inf", neg_init=True)
    model_cfg = ModelConfig(padding="circular")
    train_data = load_dataset(dataset, "train", data_root=root, limit=limit or None)
    test_data = load_dataset(dataset, "test", data_root=root, limit=args.test_images)
    if dataset == "mnist":
        print(f"using MNIST from {train_data.source} (first {len(train_data)} training, "
              f"first {len(test_data)} test images)")
    announce_data(train_data)
    print(f"training {model_cfg.channels}-channel ConvNODE, Euler {model_cfg.steps} steps, weight regularizer "
          f"rho={train_cfg.rho} lambda={train_cfg.reg_weight}, {train_cfg.epochs} epochs", flush=True)
    model, history = fit(model_cfg, train_cfg, train_data, test_data, progress=not args.quiet)
    save_model(args.out, model, train_config=train_cfg,
               metrics={"test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None})
    print(f"saved {args.out} ({sum(history.epoch_seconds):.0f} s of training)")
    print(format_certificates(block_certificates(model.block.spec())))
    for norm, eps in (("inf", args.eps), ("2", args.eps_l2)):
        report = certify_model(model, test_data, eps=eps, norm=norm)
        print(format_report(report, args.out))
    return 0


def add_demo(sub: Any) -> None:
    """Add the `demo` subcommand to the `cnode` subparsers."""
    p = sub.add_parser("demo", help="train a small contractive model and certify it (the README's main job)",
                       description="Train a small weight-regularized ConvNODE on MNIST (or the embedded subset), "
                       "evaluate it, print its contraction certificates and certify it.")
    add_data_flags(p)
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--rho", type=float, default=0.5, help="target contraction rate (default: %(default)s)")
    p.add_argument("--reg-weight", type=float, default=0.01, help="regularizer weight (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=5_000, help="MNIST training images (default: %(default)s)")
    p.add_argument("--test-images", type=int, default=1000, help="test images (default: %(default)s)")
    p.add_argument("--eps", type=float, default=0.01, help="Linf budget to certify (default: %(default)s)")
    p.add_argument("--eps-l2", type=float, default=0.1, help="L2 budget to certify (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", default="runs/demo.pt", help="checkpoint path (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cnode`: the nodes commands (train, evaluate) plus demo; training gets the certified loss."""
    parser = build_parser(add_demo, add_robustness)
    parser.set_defaults(objective_factory=certified_objective)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
