"""`cnode robustness` (the evaluation protocol on one checkpoint), `cnode study` (the paper's sweep) and `cnode demo`
(the README's main job)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from certify.cli.flags import add_common_flags, add_model_flags, announce_data, load_run
from certify.checks import PGD_LOSSES
from certify.report import format_certificates, format_report
from certify.robustness import ATTACK_EPS, L2_EPS, format_robustness, robustness
from certify.run import BOUNDS, certify_model
from certify.study import ARCHS as STUDY_ARCHS, METHODS, QUICK, StudyConfig, run_study
from nodes.checkpoint import load_model, save_model
from nodes.config import DATASETS, ModelConfig, TrainConfig
from nodes.data import load_dataset, resolve_data_root
from nodes.device import resolve_device
from nodes.distributed import parse_shard
from nodes.train import fit

__all__ = ["register", "cmd_robustness", "cmd_study", "cmd_demo", "best_shipped", "SHIPPED"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `robustness`, `demo` and `study` to the `cnode` parser."""
    _add_robustness(sub)
    _add_demo(sub)
    _add_study(sub)


def _add_robustness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robustness", help="noise, attacks and certified accuracy of a checkpoint (our protocol)",
                       description="The evaluation protocol on one checkpoint.")
    add_model_flags(p)
    p.add_argument("--limit", type=int, default=1000, help="first N test images (0: all; default: %(default)s)")
    p.add_argument("--draws", type=int, default=3, help="seeded noise draws averaged (default: %(default)s)")
    p.add_argument("--bound", choices=list(BOUNDS), default="auto", help="certificate (default: %(default)s)")
    p.add_argument("--certify-eps", type=float, nargs="+", default=list(ATTACK_EPS),
                   help="Linf eps to certify at (default: the attack eps)")
    p.add_argument("--l2-eps", type=float, nargs="*", default=list(L2_EPS),
                   help="L2 eps for PGD-20 and certified accuracy (default: %(default)s; none: skip)")
    p.add_argument("--square-queries", type=int, default=300, help="gradient-free queries (default: %(default)s)")
    p.add_argument("--pgd-loss", choices=sorted(PGD_LOSSES), default="ce",
                   help="PGD's objective: cross-entropy (the protocol's, default), the margin loss, or both (an input "
                   "counts only if it survives each; cross-entropy alone overstates robustness where logits saturate)")
    p.add_argument("--batch-size", type=int, default=250, help="inputs per batch (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.set_defaults(func=cmd_robustness)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the headline figure, then train a small contractive model and certify it "
                       "(the README's main job)",
                       description="Certify the best shipped MNIST checkpoint at Linf 0.1 on the embedded test images; "
                       "then train a small weight-regularized ConvNODE on MNIST (or the embedded subset), evaluate it, "
                       "print its contraction certificates and certify it.")
    add_common_flags(p, download=False)
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
    p.set_defaults(func=cmd_demo)


def _add_study(sub: argparse._SubParsersAction) -> None:
    d = StudyConfig()
    p = sub.add_parser("study", help="the paper's study: nominal / Jacobian / weight-regularized sweep over rho",
                       description="The paper's study with our protocol: nominal, Jacobian- and weight-regularized "
                       "ConvNODEs (the paper's architecture and recipe) over target rates rho and seeds, each through "
                       "`cnode robustness`; writes results.json, results.md and study.png. Resumable: models and "
                       "results already in --out are reused.")
    add_common_flags(p, download=False)
    for flag, kwargs, help_ in (  # default None: StudyConfig's value, or QUICK's with --quick
            ("--out", {}, "folder for checkpoints and results"),
            ("--datasets", {"nargs": "+", "choices": list(DATASETS)}, "datasets"),
            ("--archs", {"nargs": "+", "choices": list(STUDY_ARCHS)}, "architecture presets, one sweep each"),
            ("--rhos", {"type": float, "nargs": "+"}, "target contraction rates"),
            ("--methods", {"nargs": "+", "choices": list(METHODS)}, "models to train"),
            ("--seeds", {"type": int}, "seeds per model"),
            ("--epochs", {"type": int}, "epochs per model"),
            ("--train-limit", {"type": int}, "training images per model (0: all)"),
            ("--test-limit", {"type": int}, "test images per evaluation"),
            ("--draws", {"type": int}, "seeded noise draws"),
            ("--square-queries", {"type": int}, "queries of the gradient-free attack"),
            ("--certify-eps", {"type": float, "nargs": "+"}, "Linf eps for certified accuracy (bound auto)"),
            ("--l2-eps", {"type": float, "nargs": "*"}, "L2 eps for PGD-20 and certified accuracy (bound auto)"),
            ("--extra", {"nargs": "*"}, "more checkpoints in every table, as DATASET:LABEL=PATH")):
        dest = flag[2:].replace("-", "_")
        default = getattr(d, dest)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        p.add_argument(flag, default=None, help=f"{help_} (default: {shown or 'none'})", **kwargs)
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: tables and plots from the results already in --out (joins the "
                   "results of --shard jobs)")
    p.add_argument("--jobs", type=int, default=None, help="models trained and evaluated in parallel local processes, "
                   "each with its share of the cores (default: 1)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="only models I, I+N, I+2N, ... of the sweep (a job array's task; from 0); then --report-only")
    p.add_argument("--quick", action="store_true", help="smoke-test defaults: " + ", ".join(
        f"{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in QUICK.items())
        + " (flags given explicitly still win)")
    p.set_defaults(func=cmd_study)


def cmd_robustness(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise CNodeError("--limit must be >= 0")
    model, data = load_run(args)
    if any(not e > 0 for e in (*args.certify_eps, *args.l2_eps)) or args.square_queries < 1:
        raise CNodeError("--certify-eps and --l2-eps values must be > 0 and --square-queries >= 1")
    result = robustness(model, data, draws=args.draws, bound=args.bound, progress=not args.quiet,
                        batch_size=args.batch_size, certify_eps=args.certify_eps, square_queries=args.square_queries,
                        l2_eps=args.l2_eps, pgd_losses=PGD_LOSSES[args.pgd_loss])
    print(format_robustness(result, args.model))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), **result}, indent=2))
    return 0


SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "models"
"""The shipped checkpoints and their models.json (present in a source checkout)."""


def best_shipped(dataset: str = "mnist", eps: float = 0.1) -> tuple[Path, dict[str, Any]] | None:
    """The shipped checkpoint of `dataset` with the highest recorded certified accuracy at Linf `eps`."""
    index = SHIPPED / "models.json"
    if not index.is_file():
        return None
    entries = [e for e in json.loads(index.read_text()) if e.get("dataset") == dataset
               and (e.get("check") or {}).get("norm") == "inf" and (e.get("check") or {}).get("eps") == eps
               and (SHIPPED / e["file"]).is_file()]
    if not entries:
        return None
    best = max(entries, key=lambda e: e["check"].get("certified_first100", 0.0))
    return SHIPPED / best["file"], best


def cmd_demo(args: argparse.Namespace) -> int:
    """The headline (the best shipped MNIST model certified at Linf 0.1 on the embedded test images), then train a
    small weight-regularized ConvNODE, evaluate it, print its block certificates and certify it."""
    device = resolve_device(args.device)
    shipped = best_shipped("mnist", 0.1)
    if shipped is not None:
        path, entry = shipped
        model = load_model(path).to(device)
        images = load_dataset("mnist-mini", "test")
        report = certify_model(model, images, eps=0.1, norm="inf", bound="auto", progress=not args.quiet)
        print(f"headline: {path.name} ({entry['kind']}) certifies {100 * report.certified_accuracy:.1f} % of the "
              f"{report.n} embedded MNIST test images at Linf 0.1 (clean {100 * report.clean_accuracy:.1f} %, "
              f"bound auto, {report.timing['total_seconds']:.1f} s)", flush=True)
    root = resolve_data_root(args.data_root)
    dataset = "mnist" if (root / "MNIST" / "raw").is_dir() else "mnist-mini"
    limit = args.train_images if dataset == "mnist" else 0
    # the demo's own model: the paper's block with circular padding and the weight regularizer, no certified loss
    train_cfg = TrainConfig(dataset=dataset, epochs=args.epochs, train_limit=limit, seed=args.seed, lr=args.lr,
                            lr_decay=0.5, batch_size=args.batch_size, readout_lr_scale=0.1, reg="weight",
                            rho=args.rho, reg_weight=args.reg_weight, reg_norm="inf", reg_hinge="linear",
                            neg_init=True, init="default", certified_eps=0.0)
    model_cfg = ModelConfig.preset("paper", padding="circular")
    train_data = load_dataset(dataset, "train", data_root=root, limit=limit or None)
    test_data = load_dataset(dataset, "test", data_root=root, limit=args.test_images)
    if dataset == "mnist":
        print(f"using MNIST from {train_data.source} (first {len(train_data)} training, "
              f"first {len(test_data)} test images)")
    announce_data(train_data)
    print(f"training {model_cfg.channels}-channel ConvNODE, Euler {model_cfg.steps} steps, weight regularizer "
          f"rho={train_cfg.rho} lambda={train_cfg.reg_weight}, {train_cfg.epochs} epochs on {device}", flush=True)
    model, history = fit(model_cfg, train_cfg, train_data, test_data, device=device, progress=not args.quiet)
    save_model(args.out, model, train_config=train_cfg,
               metrics={"test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None})
    print(f"saved {args.out} ({sum(history.epoch_seconds):.0f} s of training)")
    print(format_certificates(block_certificates(model.block.spec())))
    for norm, eps in (("inf", args.eps), ("2", args.eps_l2)):
        report = certify_model(model, test_data, eps=eps, norm=norm)
        print(format_report(report, args.out))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """The paper's study (certify.study): StudyConfig's defaults (QUICK's with --quick) under the flags given."""
    values = {**dataclasses.asdict(StudyConfig()), **(QUICK if args.quick else {})}
    for f in dataclasses.fields(StudyConfig):
        given = getattr(args, f.name, None)
        if given is not None and given is not False:
            values[f.name] = tuple(given) if isinstance(given, list) else given
    values["device"] = str(resolve_device(args.device))
    values["shard"] = parse_shard(args.shard) if args.shard else None
    cfg = StudyConfig(**values)  # validated there
    run_study(cfg, log=lambda line: print(line, flush=True))
    return 0
