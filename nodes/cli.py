"""`cnode`: train, evaluate and demo ConvNODE classifiers from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from contraction.certificates import Certificate, block_certificates
from contraction.errors import CNodeError
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, save_model, trained_dataset
from nodes.classifier import ConvNODE
from nodes.config import ARCHS, CERTIFIED_METHODS, DATASETS, INITS, PADDINGS, READOUTS, REGULARIZERS, SOLVERS, ModelConfig, TrainConfig
from nodes.data import EMBEDDED_NOTE, ImageData, load_dataset
from nodes.init import initialise_
from nodes.regularize import make_regularizer
from nodes.train import Objective, evaluate, train

__all__ = ["main", "build_parser", "OneLineParser", "add_data_flags", "announce_data", "fit", "format_certificates", "add_config_flags", "config_from_args", "run_cli"]

_CHOICES: dict[str, Sequence[str]] = {
    "padding": PADDINGS,
    "solver": SOLVERS,
    "readout": READOUTS,
    "dataset": DATASETS,
    "reg": REGULARIZERS,
    "norm": ("inf", "2"),
    "certified_method": CERTIFIED_METHODS,
    "init": INITS,
}
_HELP = {
    "channels": "channels of the ODE state (the stem's last conv ends there)",
    "stem": "stem convs out:kernel:stride:padding, comma-separated ('none': the block acts on the image)",
    "head": "hidden widths of the head, comma-separated ('none': one linear layer)",
    "mean": "per-channel input mean subtracted inside the model, comma-separated",
    "std": "per-channel input std divided inside the model, comma-separated",
    "kernel_size": "kernel of the ODE block's convs (and of the paper's embedding conv)",
    "activation": "slope-restricted activation (smooth_leaky_relu, leaky_relu, tanh)",
    "slope": "lower slope a of the leaky activations",
    "padding": "padding of every convolution",
    "solver": "torchdiffeq solver of the ODE block",
    "T": "integration horizon",
    "steps": "solver steps (one conv per step unless --shared-weights)",
    "shared_weights": "one convolution shared by all steps",
    "readout": "linear on the flattened state, or on the pixel average",
    "dataset": "training and test data",
    "epochs": "training epochs",
    "lr": "Adam learning rate",
    "lr_decay": "learning-rate factor per epoch",
    "readout_lr_scale": "learning rate of the (wide) linear readout relative to --lr",
    "train_limit": "use the first N training images (0: all)",
    "reg": "contraction regularizer",
    "rho": "target contraction rate of the regularizer",
    "reg_weight": "weight lambda of the regularizer in the loss",
    "norm": "norm of the regularizer and of the certified loss's threat model",
    "neg_init": "initialise the block's centre taps to a negative diagonal",
    "certified_eps": "certified training: eps of the worst-case loss over the ball (0: off)",
    "certified_method": "certified loss: interval = local boxes (IBP-style), lipschitz = global Lipschitz margin",
    "certified_mix": "loss = mix * clean CE + (1 - mix) * certified CE",
    "certified_warmup": "epochs over which the certified eps ramps up linearly from 0",
    "certified_start": "epochs of clean training before the certified eps starts its ramp",
    "init": "initialisation of the weights: default (PyTorch's) or ibp (interval-preserving, Shi et al. 2021)",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-").lower()


def _ints(text: str) -> tuple[int, ...]:
    """'256,128' -> (256, 128); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _stem(text: str) -> tuple[tuple[int, ...], ...]:
    """'32:4:2:1,32:4:2:1' -> ((32, 4, 2, 1), (32, 4, 2, 1)): out_channels:kernel:stride:padding per conv."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        convs = tuple(tuple(int(v) for v in conv.split(":")) for conv in text.split(","))
    except ValueError:
        convs = ((),)
    if any(len(c) != 4 for c in convs):
        raise argparse.ArgumentTypeError(f"expected out:kernel:stride:padding per conv, comma-separated, got {text!r}")
    return convs


_PARSERS: dict[str, Callable[[str], Any]] = {"stem": _stem, "head": _ints, "mean": _floats, "std": _floats}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a config dataclass. TrainConfig flags default to the dataclass default; ModelConfig
    flags default to the `--arch` preset's value (only the flags given override it)."""
    model = cls is ModelConfig
    if model:
        parser.add_argument("--arch", choices=list(ARCHS), default="paper",
                            help="architecture preset; any field below overrides it (default: %(default)s)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None if model else f.default,
                                  "help": _HELP.get(f.name, f.name)}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _PARSERS.get(f.name, type(f.default))
            if f.name in _CHOICES:
                kwargs["choices"] = list(_CHOICES[f.name])
        kwargs["help"] += " (default: from --arch)" if model else " (default: %(default)s)"
        parser.add_argument(_flag(f.name), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build a validated config dataclass from parsed flags (a ModelConfig from its `--arch` preset + overrides)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    if cls is ModelConfig:
        return ModelConfig.preset(getattr(args, "arch", "paper"), **{k: v for k, v in given.items() if v is not None})
    return cls(**given)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw, FashionMNIST/raw "
                        "(default: $CNODE_DATA, else ./data)")
    parser.add_argument("--download", action="store_true", help="download the dataset into the data root if missing")


def announce_data(data: ImageData) -> None:
    if data.name == "mnist-mini":
        print(f"using the {EMBEDDED_NOTE}")


def cmd_train(args: argparse.Namespace) -> int:
    model_cfg: ModelConfig = config_from_args(ModelConfig, args)
    train_cfg: TrainConfig = config_from_args(TrainConfig, args)
    train_data = load_dataset(train_cfg.dataset, "train", data_root=args.data_root, download=args.download,
                              limit=train_cfg.train_limit or None)
    test_data = load_dataset(train_cfg.dataset, "test", data_root=args.data_root, download=args.download,
                             limit=args.test_limit or None)
    announce_data(train_data)
    factory = getattr(args, "objective_factory", None)
    if train_cfg.certified_eps > 0 and factory is None:
        raise CNodeError("certified training (--certified-eps) runs through the `cnode` command")
    objective = factory(train_cfg) if factory is not None and train_cfg.certified_eps > 0 else None
    model, history = fit(model_cfg, train_cfg, train_data, test_data, progress=not args.quiet, objective=objective)
    metrics = {
        "test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None,
        "test_accuracy_per_epoch": history.test_accuracy,
        "train_loss_per_epoch": history.train_loss,
        "seconds_per_epoch": history.epoch_seconds,
        "test_images": len(test_data),
    }
    save_model(args.out, model, train_config=train_cfg, metrics=metrics)
    print(f"saved {args.out}")
    return 0


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, train_data: ImageData, test_data: ImageData | None,
        *, progress: bool = True, objective: Objective | None = None) -> tuple[ConvNODE, Any]:
    """Build a model from its config and train it (with the configured regularizer and certified objective)."""
    torch.manual_seed(train_cfg.seed)
    model = initialise_(ConvNODE(model_cfg), train_cfg)
    regularizer = make_regularizer(train_cfg, seed=train_cfg.seed)
    if regularizer is None and train_cfg.reg == "none" and train_cfg.reg_weight > 0:
        raise CNodeError("--reg-weight given without --reg {jacobian,weight}")
    history = train(model, train_data, train_cfg, test_data=test_data, regularizer=regularizer, objective=objective,
                    progress=progress, on_epoch=_print_epoch)
    return model, history


def _print_epoch(epoch: int, history: Any) -> None:
    acc = f"{history.test_accuracy[-1]:.4f}" if history.test_accuracy else "-"
    print(f"epoch {epoch + 1}: loss {history.train_loss[-1]:.4f}, reg {history.reg_value[-1]:.4f}, "
          f"test accuracy {acc} ({history.epoch_seconds[-1]:.1f} s)", flush=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    payload = load_checkpoint(args.model)
    model = model_from_checkpoint(payload, args.model)
    dataset = args.dataset or trained_dataset(payload)
    data = load_dataset(dataset, "test", data_root=args.data_root, download=args.download, limit=args.limit or None)
    announce_data(data)
    acc = evaluate(model, data, progress=not args.quiet)
    certs = block_certificates(model.block.spec())
    if args.lmi:
        from contraction.lmi import lmi_block_certificate

        certs.append(lmi_block_certificate(model.block.spec()))
    report = {"model": str(args.model), "dataset": dataset, "n": len(data), "clean_accuracy": acc,
              "block_certificates": [c.to_dict() for c in certs]}
    print(f"{args.model}: {dataset} test accuracy {acc:.4f} on {len(data)} images")
    print(format_certificates(certs))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def format_certificates(certs: Sequence[Certificate]) -> str:
    """A small table of the ODE block's certificates: norm, status, continuous rate, discrete factor, method."""
    lines = ["certified contraction of the ODE block (valid at every state; factor = Lipschitz bound of the block):",
             f"  {'norm':<13}{'status':<15}{'rate':>10}{'factor':>12}  method"]
    for c in certs:
        rate = f"{c.rate:.4g}" if c.rate is not None else "-"
        factor = f"{c.factor:.4g}" if c.factor is not None else "-"
        lines.append(f"  {c.norm:<13}{c.status:<15}{rate:>10}{factor:>12}  {c.method}")
    for c in certs:
        if not c.certified:
            lines.append(f"  {c.norm}: {c.condition}")
    return "\n".join(lines)


def build_parser(*extra: Callable[[Any], None]) -> argparse.ArgumentParser:
    """The `cnode` parser; each `extra` callable may add subcommands to its subparsers."""
    parser = OneLineParser(prog="cnode", description="Train and evaluate contractive ConvNODE classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("train", help="train a ConvNODE classifier", description="Train a ConvNODE classifier.")
    add_config_flags(p, ModelConfig, skip=("in_channels", "image_size", "num_classes"))
    add_config_flags(p, TrainConfig)
    add_data_flags(p)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="clean test accuracy of a checkpoint", description="Evaluate a checkpoint.")
    p.add_argument("model", help="checkpoint written by `cnode train`")
    p.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the checkpoint's dataset")
    add_data_flags(p)
    p.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--json", default=None, help="write the report as JSON")
    p.add_argument("--lmi", action="store_true", help="also solve the LMI certificate (circular padding; ~1 min)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    for extend in extra:
        extend(sub)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and dispatch; a CNodeError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CNodeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
