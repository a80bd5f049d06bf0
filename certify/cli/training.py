"""`cnode train` (fresh, resumed, or under torchrun) and `cnode strip`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from certify.cli.flags import add_common_flags, add_config_flags, announce_data, config_from_args, flag_name
from certify.report import format_certificates
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, save_model, strip_training_state
from nodes.classifier import ConvNODE
from nodes.config import ModelConfig, TrainConfig
from nodes.data import load_dataset
from nodes.device import resolve_device
from nodes.distributed import Dist, process_group
from nodes.train import TrainingState, check_combination, history_metrics, train

__all__ = ["register", "cmd_train", "cmd_strip"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `strip` to the `cnode` parser."""
    p = sub.add_parser("train", help="train a ConvNODE classifier", description="Train a ConvNODE classifier.")
    add_config_flags(p, ModelConfig, skip=("in_channels", "image_size", "num_classes", "rho"))  # --rho: TrainConfig's
    add_config_flags(p, TrainConfig)
    add_common_flags(p)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--out", required=True, help="checkpoint path, rewritten after every epoch (resumable)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run stored in PATH (its recipe; --epochs may extend it)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("strip", help="copy a checkpoint without its training state (for shipping)",
                       description="Copy a checkpoint without the optimizer and random states that --resume needs.")
    p.add_argument("model", help="checkpoint to read")
    p.add_argument("out", help="checkpoint to write")
    p.set_defaults(func=cmd_strip)


def cmd_train(args: argparse.Namespace) -> int:
    """Train from the flags, or continue the run stored at --resume; the checkpoint at --out is rewritten after
    every epoch (with its training state), so Ctrl-C or a crash keeps the last finished epoch. Under torchrun
    (WORLD_SIZE > 1) every rank trains its part of each batch (DistributedDataParallel); rank 0 prints and writes."""
    with process_group(args.device) as dist:
        return _train(args, dist)


def _resumed(args: argparse.Namespace) -> tuple[ConvNODE, TrainConfig, TrainingState]:
    """The model, recipe and training state stored at --resume (only --epochs may change the recipe)."""
    payload = load_checkpoint(args.resume)
    if not isinstance(payload.get("training_state"), dict) or not payload.get("train_config"):
        raise CNodeError(f"{args.resume}: no training state to resume (a stripped or pre-0.4 checkpoint)")
    given = sorted(f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name) and f.name != "epochs")
    given += sorted(f.name for f in dataclasses.fields(ModelConfig) if getattr(args, f.name, None) is not None)
    given += ["arch"] if args.arch is not None else []
    if given:
        raise CNodeError(f"--resume continues the stored recipe; only --epochs may change (given: "
                         f"{', '.join(flag_name(g) for g in given)})")
    stored = TrainConfig.from_dict(payload["train_config"])
    train_cfg = dataclasses.replace(stored, epochs=getattr(args, "epochs", stored.epochs))
    state = TrainingState.from_dict(payload["training_state"])
    if state.epoch >= train_cfg.epochs:
        raise CNodeError(f"{args.resume} has finished {state.epoch} of {train_cfg.epochs} epochs; give a larger "
                         "--epochs to train on")
    return model_from_checkpoint(payload, args.resume), train_cfg, state


def _train(args: argparse.Namespace, dist: Dist) -> int:
    say = print if dist.main else (lambda *a, **k: None)
    state = None
    if args.resume:
        model, train_cfg, state = _resumed(args)
        say(f"resuming {args.resume} after epoch {state.epoch} of {train_cfg.epochs}", flush=True)
    else:
        train_cfg = config_from_args(TrainConfig, args)
        torch.manual_seed(train_cfg.seed)
        model = ConvNODE(config_from_args(ModelConfig, args))
    check_combination(model.config, train_cfg)  # before the data loads (train() checks it again)
    train_data = load_dataset(train_cfg.dataset, "train", data_root=args.data_root, download=args.download and dist.main,
                              limit=train_cfg.train_limit or None)
    test_data = load_dataset(train_cfg.dataset, "test", data_root=args.data_root, download=args.download and dist.main,
                             limit=args.test_limit or None)
    if dist.main:
        announce_data(train_data)
    device = dist.device if dist.distributed else resolve_device(args.device)
    if dist.distributed:
        say(f"training on {dist.world} processes ({device.type}; batch {train_cfg.batch_size} split over the ranks)",
            flush=True)
    logging.getLogger(__name__).info("training on %s", device)
    try:
        history = train(model, train_data, train_cfg, test_data=test_data, device=device,
                        progress=not args.quiet, on_epoch=_epoch_printer(train_cfg), checkpoint=args.out,
                        resume=state, dist=dist)
    except KeyboardInterrupt:
        if not dist.main:
            return 130
        done = Path(args.out).is_file() and "training_state" in load_checkpoint(args.out)
        print(f"\ninterrupted: {args.out} holds the last finished epoch (continue with --resume {args.out})" if done
              else "\ninterrupted before the first epoch finished: nothing saved", file=sys.stderr)
        return 130
    if train_cfg.epochs == 0 and dist.main:  # no epoch ran, so train() wrote no checkpoint
        save_model(args.out, model, train_config=train_cfg,
                   metrics={**history_metrics(history, test_data), "device": str(device)})
    say(f"saved {args.out}")
    if dist.main:  # what the trained block keeps as run (the flow's rate second)
        say(format_certificates(block_certificates(model.block.spec(), ("inf", "inf_weighted", "2"))))
    return 0


def _epoch_printer(config: TrainConfig) -> Callable[[int, Any], None]:
    """The per-epoch progress line: loss, eps, the training bound's certified fraction, test accuracy, ETA."""

    def show(epoch: int, history: Any) -> None:
        acc = f"{history.test_accuracy[-1]:.4f}" if history.test_accuracy else "-"
        cert = history.certified[-1]
        extra = f", eps {history.eps[-1]:.4g}, certified (train) {cert:.1%}" if cert == cert else ""
        recent = history.epoch_seconds[-3:]
        eta = (config.epochs - epoch - 1) * sum(recent) / len(recent)
        print(f"epoch {epoch + 1}/{config.epochs}: loss {history.train_loss[-1]:.4f}{extra}, "
              f"reg {history.reg_value[-1]:.4f}, test accuracy {acc} ({history.epoch_seconds[-1]:.1f} s, "
              f"ETA {eta / 60:.1f} min)", flush=True)

    return show


def cmd_strip(args: argparse.Namespace) -> int:
    """Copy a checkpoint without its training state (the file to ship)."""
    out = strip_training_state(args.model, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0
