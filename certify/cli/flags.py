"""What every subcommand shares: the one-line-error parser, flags generated from the config dataclasses (one per
field, with choices and help), the data/device/quiet flags, and loading a checkpoint with its test data."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable, Sequence

from contraction.errors import CNodeError
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset
from nodes.classifier import ConvNODE
from nodes.config import (ARCHS, CERTIFIED_METHODS, DATASETS, DEFAULT_ARCH, DEFAULT_REG_WEIGHT, EPS_RAMPS, FIELDS, HINGES,
                          INITS, LIPSCHITZ_LAYERS, LIPSCHITZ_LOSSES, PADDINGS, READOUTS, REG_TARGETS, REGULARIZERS,
                          SOLVERS, THREAT_NORMS, ModelConfig)
from nodes.data import EMBEDDED_NOTE, ImageData, load_dataset
from nodes.device import DEVICES, resolve_device
from nodes.distributed import SINGLE, Dist

__all__ = ["OneLineParser", "add_config_flags", "config_from_args", "add_common_flags", "add_model_flags",
           "announce_data", "load_run", "positive_eps", "flag_name"]

_CHOICES: dict[str, Sequence[str]] = {
    "padding": PADDINGS,
    "field": FIELDS,
    "solver": SOLVERS,
    "readout": READOUTS,
    "dataset": DATASETS,
    "reg": REGULARIZERS,
    "reg_norm": THREAT_NORMS,
    "reg_hinge": HINGES,
    "reg_target": REG_TARGETS,
    "certified_norm": THREAT_NORMS,
    "eps_ramp": EPS_RAMPS,
    "certified_method": CERTIFIED_METHODS,
    "lipschitz_loss": LIPSCHITZ_LOSSES,
    "init": INITS,
    "lipschitz_layers": LIPSCHITZ_LAYERS,
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
    "field": "ODE field: 'paper' x' = sigma(K*x + b), 'gradient' x' = -K^T sigma(K*x + b) (non-expansive in L2 "
             "by construction: the kernel is rescaled so that h b ||K||^2 <= 2), or 'contractive' (the paper's field "
             "with its kernel mapped so that every Euler step shrinks by 1 - h rho in Linf, rate from --rho)",
    "solver": "solver of the ODE block: one step per interval (euler ... rk4), torchdiffeq's adaptive dopri5 "
              "(not certifiable), or dopri5-dyadic / bosh3-dyadic: Dormand-Prince 5(4) / Bogacki-Shampine 3(2) with "
              "steps T/steps 2^-l and accept/reject by --atol, certified as it runs on each input",
    "atol": "dopri5: absolute tolerance; *-dyadic: a step is accepted when its error estimate's largest "
            "component is <= atol",
    "rtol": "dopri5: relative tolerance (the -dyadic solvers have none)",
    "max_halvings": "*-dyadic: the smallest step is (T / steps) 2^-max_halvings, always accepted",
    "T": "integration horizon",
    "steps": "solver steps (one conv per step unless --shared-weights)",
    "shared_weights": "one convolution shared by all steps",
    "readout": "linear on the flattened state, or on the pixel average",
    "lipschitz_layers": "aol: every stem conv and hidden head layer rescaled to L2 norm <= 1 by construction "
                        "(almost-orthogonal layers, Prach & Lampert 2022; for L2 models), the last layer free",
    "dataset": "training and test data",
    "epochs": "training epochs",
    "lr": "Adam learning rate",
    "lr_decay": "learning-rate factor per epoch (or per milestone, see --lr-milestones)",
    "readout_lr_scale": "learning rate of the (wide) linear readout relative to --lr",
    "train_limit": "use the first N training images (0: all)",
    "reg": "contraction regularizer",
    "rho": "target contraction rate of the block as run (every Euler step shrinks distances by 1 - h rho): the "
           "regularizer's with --reg, the contractive field's with --field contractive",
    "reg_target": "step: the regularizer targets each Euler step as run (factor <= 1 - h rho); flow: the continuous "
                  "flow's log-norm <= -rho (the paper's target; the Euler map keeps it only when h b |c| <= 1)",
    "reg_weight": "weight lambda of the regularizer in the loss (default: "
                  + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_REG_WEIGHT.items()) + ")",
    "reg_norm": "norm of the contraction rate the regularizer targets",
    "reg_hinge": "squared hinge relu(mu + rho)^2 (its gradient depends on rho) or the paper's linear relu(mu + rho)",
    "certified_norm": "threat model of the certified loss (the eps-ball's norm)",
    "neg_init": "initialise the block's centre taps to a negative diagonal",
    "certified_eps": "certified training: eps of the worst-case loss over the ball (0: off; default: 0.015, or 0 "
                     "with --reg)",
    "certified_method": "certified loss: ibp = interval bound propagation (fast), crown-ibp = linear bounds over IBP "
                        "boxes mixed with IBP (beta 1 -> 0 over the ramp), mtl-ibp = IBP mixed with a PGD point, "
                        "local = the mean-value boxes of --bound local (no interval pass), lipschitz = global "
                        "Lipschitz margin",
    "certified_mix": "loss = mix * clean CE + (1 - mix) * certified CE",
    "certified_warmup": "epochs over which the certified eps ramps up from 0",
    "eps_ramp": "shape of the eps ramp: linear, smooth (Shi et al. 2021: polynomial, then linear) or log (GloRo's "
                "logarithmic ramp from 1 %% of the eps: fast at first)",
    "lipschitz_loss": "loss of --certified-method lipschitz: margin = CE of the logits shifted by eps L_yj, gloro = CE "
                      "with a bottom class max_j z_j + eps L_cj (c predicted), trades = clean CE + --trades-lambda x "
                      "the bottom class's KL term (Leino et al. 2021)",
    "trades_lambda": "weight of the robust term of --lipschitz-loss trades (GloRo used 1-3)",
    "train_eps_factor": "the certified loss trains at this factor x --certified-eps",
    "mtl_alpha": "mtl-ibp: loss = alpha CE(IBP worst case) + (1 - alpha) CE(PGD point)",
    "attack_steps": "mtl-ibp: PGD steps of the attack point",
    "lr_milestones": "epochs after which the learning rate is multiplied by --lr-decay, comma-separated "
                     "('none': after every epoch)",
    "grad_clip": "clip the gradient's 2-norm to this (0: no clipping)",
    "ema_decay": "keep an exponential moving average of the weights with this decay per step (0: off; e.g. "
                 "0.999): tested, saved and returned instead of the raw weights",
    "ema_start": "epoch from which the weight average is updated (needs --ema-decay)",
    "warmup_reg": "weight of the warm-up terms on the training boxes (tightness, active/inactive balance; Shi et "
                  "al. 2021 used 0.5), fading to 0 as the eps ramp ends (0: off)",
    "batch_size": "training batch size",
    "certified_start": "epochs of clean training before the certified eps starts its ramp",
    "init": "initialisation: default (PyTorch's), ibp (interval-preserving, Shi et al. 2021) or contractive (the "
            "block starts certified at the regularizer's target; the default when --reg is given, else default)",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-").lower()


def _sequence(cast: Callable[[str], Any], what: str) -> Callable[[str], tuple]:
    """A flag parser: 'a,b' -> (cast(a), cast(b)); '' or 'none' -> ()."""

    def parse(text: str) -> tuple:
        if text.strip().lower() in ("", "none"):
            return ()
        try:
            return tuple(cast(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


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


_PARSERS: dict[str, Callable[[str], Any]] = {"stem": _stem, "head": _sequence(int, "integers"),
                                             "lr_milestones": _sequence(int, "integers"),
                                             "mean": _sequence(float, "numbers"), "std": _sequence(float, "numbers")}
"""Flag parsers for the fields that are not a plain scalar; the others parse as their annotated type."""


def _scalar_type(cls: type, name: str) -> Callable[[str], Any]:
    """The annotated type of a config field, `X | None` read as X (a None default resolves in the config)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a config dataclass. TrainConfig flags are set only when given (the dataclass default
    applies otherwise, and `--resume` can tell what was asked); ModelConfig
    flags default to the `--arch` preset's value (only the flags given override it)."""
    model = cls is ModelConfig
    if model:
        parser.add_argument("--arch", choices=list(ARCHS), default=None,
                            help=f"architecture preset; any field below overrides it (default: {DEFAULT_ARCH})")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None if model else argparse.SUPPRESS,
                                  "help": _HELP.get(f.name, f.name)}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _PARSERS.get(f.name) or _scalar_type(cls, f.name)
            if f.name in _CHOICES:
                kwargs["choices"] = list(_CHOICES[f.name])
        if f.default is not None or model:
            shown = f.default if not isinstance(f.default, tuple) else (",".join(map(str, f.default)) or "none")
            kwargs["help"] += " (default: from --arch)" if model else f" (default: {shown})"
        parser.add_argument(flag_name(f.name), **kwargs)


def _contractive_field(args: argparse.Namespace) -> bool:
    field = getattr(args, "field", None) or ARCHS[getattr(args, "arch", None) or DEFAULT_ARCH].get("field", "paper")
    return field == "contractive"


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build a validated config dataclass from parsed flags (a ModelConfig from its `--arch` preset + overrides).

    `--rho` is the block's target rate: the contractive field's (ModelConfig.rho) with `--field contractive`,
    else the regularizer's (TrainConfig.rho)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    rho_here = _contractive_field(args) == (cls is ModelConfig)
    if "rho" in given and not rho_here:
        del given["rho"]
    if cls is ModelConfig:
        return ModelConfig.preset(getattr(args, "arch", None) or DEFAULT_ARCH,
                                  **{k: v for k, v in given.items() if v is not None})
    return cls(**given)


def add_common_flags(parser: argparse.ArgumentParser, *, download: bool = True) -> None:
    """The flags every subcommand shares: where the data is, the device, quiet progress."""
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw, FashionMNIST/raw "
                        "(default: $CNODE_DATA, else ./data)")
    if download:
        parser.add_argument("--download", action="store_true",
                            help="download the dataset into the data root if missing")
    parser.add_argument("--device", default="auto", metavar="{" + ",".join(DEVICES) + "}",
                        help="where to run: auto = CUDA when present, else CPU; also cuda:N (default: %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def announce_data(data: ImageData) -> None:
    if data.name == "mnist-mini":
        print(f"using the {EMBEDDED_NOTE}")


def load_run(args: argparse.Namespace, dist: Dist = SINGLE) -> tuple[ConvNODE, ImageData]:
    """The checkpoint `args.model` and the test split of its dataset (or `--dataset`), first `--limit` images (on
    this rank's device under torchrun)."""
    if args.limit < 0:
        raise CNodeError("--limit must be >= 0")
    payload = load_checkpoint(args.model)
    model = model_from_checkpoint(payload, args.model).to(dist.device or resolve_device(args.device))
    dataset = args.dataset or trained_dataset(payload)
    data = load_dataset(dataset, "test", data_root=args.data_root, download=args.download and dist.main,
                        limit=args.limit or None)
    if dist.main:
        announce_data(data)
    return model, data


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint written by `cnode train`")
    p.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the checkpoint's dataset")
    add_common_flags(p)


def positive_eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"eps must be a finite number > 0, got {text!r}")
    return value
