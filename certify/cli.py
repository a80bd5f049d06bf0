"""The command line: `cnode {train,strip,evaluate,certify,merge,robustness,demo,study}` and `certify` (= `cnode certify`).

The one CLI module, at the top of the import graph: it parses flags into configs and calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from contraction import __version__
from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from certify.attacks import pgd
from certify.merge import format_merged, load_parts, merge_reports
from certify.report import format_certificates, format_report, plot_curves, write_json
from certify.robustness import ATTACK_EPS, L2_EPS, format_robustness, robustness
from certify.run import BOUNDS, attack_check, certify_model, check_eps, pgd_check
from certify.study import ARCHS as STUDY_ARCHS, METHODS, QUICK, StudyConfig, run_study
from nodes.checkpoint import (file_sha256, load_checkpoint, load_model, model_from_checkpoint, save_model, strip_training_state,
                              trained_dataset)
from nodes.classifier import ConvNODE
from nodes.config import (ARCHS, CERTIFIED_METHODS, DATASETS, DEFAULT_ARCH, EPS_RAMPS, DEFAULT_REG_WEIGHT, FIELDS,
                          HINGES, INITS, PADDINGS, THREAT_NORMS,
                          READOUTS, REG_TARGETS, REGULARIZERS, SOLVERS, ModelConfig, TrainConfig)
from nodes.data import EMBEDDED_NOTE, ImageData, load_dataset, resolve_data_root
from nodes.device import DEVICES, module_device, resolve_device
from nodes.distributed import SINGLE, Dist, parse_shard, process_group
from nodes.train import TrainingState, check_combination, evaluate, fit, history_metrics, train

__all__ = ["main", "certify_main", "build_parser"]

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
    "field": "ODE field: 'paper' x' = sigma(K*x + b), 'gradient' x' = -K^T sigma(K*x + b) (non-expansive in L2 "
             "by construction: the kernel is rescaled so that h b ||K||^2 <= 2), or 'contractive' (the paper's field "
             "with its kernel mapped so that every Euler step shrinks by 1 - h rho in Linf, rate from --rho)",
    "solver": "torchdiffeq solver of the ODE block",
    "T": "integration horizon",
    "steps": "solver steps (one conv per step unless --shared-weights)",
    "shared_weights": "one convolution shared by all steps",
    "readout": "linear on the flattened state, or on the pixel average",
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
                        "interval = local boxes with the mean-value pass, lipschitz = global Lipschitz margin",
    "certified_mix": "loss = mix * clean CE + (1 - mix) * certified CE",
    "certified_warmup": "epochs over which the certified eps ramps up from 0",
    "eps_ramp": "shape of the eps ramp: linear, or smooth (Shi et al. 2021: polynomial, then linear)",
    "train_eps_factor": "the certified loss trains at this factor x --certified-eps",
    "mtl_alpha": "mtl-ibp: loss = alpha CE(IBP worst case) + (1 - alpha) CE(PGD point)",
    "attack_steps": "mtl-ibp: PGD steps of the attack point",
    "lr_milestones": "epochs after which the learning rate is multiplied by --lr-decay, comma-separated "
                     "('none': after every epoch)",
    "grad_clip": "clip the gradient's 2-norm to this (0: no clipping)",
    "batch_size": "training batch size",
    "certified_start": "epochs of clean training before the certified eps starts its ramp",
    "init": "initialisation: default (PyTorch's), ibp (interval-preserving, Shi et al. 2021) or contractive (the "
            "block starts certified at the regularizer's target; the default when --reg is given, else default)",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag(name: str) -> str:
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
        parser.add_argument(_flag(f.name), **kwargs)


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


def cmd_train(args: argparse.Namespace) -> int:
    """Train from the flags, or continue the run stored at --resume; the checkpoint at --out is rewritten after
    every epoch (with its training state), so Ctrl-C or a crash keeps the last finished epoch. Under torchrun
    (WORLD_SIZE > 1) every rank trains its part of each batch (DistributedDataParallel); rank 0 prints and writes."""
    with process_group(args.device) as dist:
        return _train(args, dist)


def _train(args: argparse.Namespace, dist: Dist) -> int:
    say = print if dist.main else (lambda *a, **k: None)
    state = None
    if args.resume:
        payload = load_checkpoint(args.resume)
        if not isinstance(payload.get("training_state"), dict) or not payload.get("train_config"):
            raise CNodeError(f"{args.resume}: no training state to resume (a stripped or pre-0.4 checkpoint)")
        given = sorted(f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name) and f.name != "epochs")
        given += sorted(f.name for f in dataclasses.fields(ModelConfig) if getattr(args, f.name, None) is not None)
        given += ["arch"] if args.arch is not None else []
        if given:
            raise CNodeError(f"--resume continues the stored recipe; only --epochs may change (given: "
                             f"{', '.join(_flag(g) for g in given)})")
        stored = TrainConfig.from_dict(payload["train_config"])
        train_cfg = dataclasses.replace(stored, epochs=getattr(args, "epochs", stored.epochs))
        model = model_from_checkpoint(payload, args.resume)
        state = TrainingState.from_dict(payload["training_state"])
        if state.epoch >= train_cfg.epochs:
            raise CNodeError(f"{args.resume} has finished {state.epoch} of {train_cfg.epochs} epochs; give a larger "
                             "--epochs to train on")
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, data = load_run(args)
    dataset = data.name
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


def cmd_merge(args: argparse.Namespace) -> int:
    """One report from the shards' JSON parts; exits 1 like certify when a part's attack broke a certificate."""
    merged = merge_reports(load_parts(args.parts))
    Path(args.json).write_text(json.dumps(merged, indent=2))
    print(format_merged(merged))
    print(f"  wrote                   {args.json}")
    broken = (merged["pgd"] or {}).get("broken_certified", 0) + (merged["attack_check"] or {}).get("broken", 0)
    if broken:
        print(f"cnode: error: {broken} certified inputs were broken by an attack: the certificate is unsound",
              file=sys.stderr)
        return 1
    return 0


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"eps must be a finite number > 0, got {text!r}")
    return value


def cmd_certify(args: argparse.Namespace) -> int:
    """Certify (a shard of) the test set; under torchrun the ranks split the inputs and rank 0 reports."""
    check_eps(args.eps)
    if args.limit < 0 or args.batch_size < 1 or args.pgd < 0:
        raise CNodeError("--limit and --pgd must be >= 0 and --batch-size >= 1")
    shard = parse_shard(args.shard) if args.shard else None
    with process_group(args.device) as dist:
        return _certify_cmd(args, shard, dist)


def _certify_cmd(args: argparse.Namespace, shard: tuple[int, int] | None, dist: Dist) -> int:
    if dist.distributed and (args.plot or args.radius):
        raise CNodeError("--plot and --radius run in one process (without torchrun)")
    model, data = load_run(args, dist)
    report = certify_model(model, data, eps=args.eps, norm=args.norm, bound=args.bound, batch_size=args.batch_size,
                           progress=not args.quiet, radius=args.radius, shard=shard, dist=dist)
    if args.pgd:
        report.pgd = pgd_check(model, data, report, steps=args.pgd, progress=not args.quiet, dist=dist)
    if not dist.main:
        return 0
    if args.attack_check:
        report.attack = attack_check(model, data, report)
    print(format_report(report, args.model))
    pgd_points = []
    if args.plot:
        x, y = (t.to(module_device(model)) for t in data.tensors(0, min(len(data), 200)))
        for e in [args.eps * f for f in (0.5, 1.0, 1.5, 2.0)]:
            adv = pgd(model, x, y, eps=e, norm=args.norm, steps=20)
            with torch.no_grad():
                pgd_points.append((e, float((model(adv).argmax(1) == y).double().mean())))
        plot_curves(report, args.plot, pgd_points)
        print(f"  plot                    {args.plot}")
    if args.json:
        write_json(report, args.json, model=str(args.model), model_sha256=file_sha256(args.model))
    broken = (report.attack.broken if report.attack is not None else 0) + (
        report.pgd.broken_certified if report.pgd is not None else 0)
    if broken:
        print(f"certify: error: {broken} certified inputs were broken by an attack inside their radius: the "
              "certificate is unsound", file=sys.stderr)
        return 1
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise CNodeError("--limit must be >= 0")
    model, data = load_run(args)
    if any(not e > 0 for e in (*args.certify_eps, *args.l2_eps)) or args.square_queries < 1:
        raise CNodeError("--certify-eps and --l2-eps values must be > 0 and --square-queries >= 1")
    result = robustness(model, data, draws=args.draws, bound=args.bound, progress=not args.quiet,
                        batch_size=args.batch_size, certify_eps=args.certify_eps, square_queries=args.square_queries,
                        l2_eps=args.l2_eps)
    print(format_robustness(result, args.model))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), **result}, indent=2))
    return 0


SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models"
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


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint written by `cnode train`")
    p.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the checkpoint's dataset")
    add_common_flags(p)


def _add_certify(p: argparse.ArgumentParser) -> None:
    _add_model_flags(p)
    p.add_argument("--eps", type=_eps, required=True, help="perturbation budget (on [0,1] pixels)")
    p.add_argument("--norm", choices=["inf", "2"], default="inf", help="threat model (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="certify the first N test images (0: all)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="certify only shard I of N (from 0) of the selected images, contiguous whole batches, for job "
                   "arrays; join the --json parts with `cnode merge` (under torchrun the ranks split the images "
                   "themselves)")
    p.add_argument("--bound", choices=list(BOUNDS), default="auto",
                   help="global = Lipschitz product with the best weight bound of the ODE block; lmi = the same with "
                   "the S-procedure LMI (circular padding, --norm 2; about a minute); the tight stages, each run "
                   "on the inputs the earlier ones leave unproven: local = global, then interval + local-slope boxes "
                   "over the eps-ball; crown = ... then a linear backward pass over the boxes (CROWN-IBP style); "
                   "linear = ... then linear intermediate bounds (about 1 s per image on the paper's model); "
                   "auto (default) = every stage, with a PGD attack before the linear stage that skips the inputs "
                   "it breaks (reported as falsified)")
    p.add_argument("--radius", action="store_true",
                   help="with local/crown/linear/auto: bisect each input's certified radius (about 12x the time)")
    p.add_argument("--attack-check", action="store_true",
                   help="attack certified inputs inside their radius (PGD + gradient-free); any success exits 1")
    p.add_argument("--pgd", type=int, default=0, metavar="STEPS",
                   help="also attack every input with PGD-STEPS at eps: the empirical robust accuracy beside the "
                   "certified one; a certified input it breaks exits 1 (0: off; default: %(default)s)")
    p.add_argument("--json", default=None, help="write the full report as JSON")
    p.add_argument("--plot", default=None, help="draw certified (and PGD) accuracy against eps to this image")
    p.add_argument("--batch-size", type=int, default=1000, help="inputs per batch (default: %(default)s)")
    p.set_defaults(func=cmd_certify)


def build_parser() -> argparse.ArgumentParser:
    """The `cnode` parser with every subcommand."""
    parser = OneLineParser(prog="cnode", description="Train contractive ConvNODE classifiers and certify their "
                           "robustness.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

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

    p = sub.add_parser("evaluate", help="clean test accuracy and block certificates of a checkpoint",
                       description="Evaluate a checkpoint.")
    _add_model_flags(p)
    p.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--json", default=None, help="write the report as JSON")
    p.add_argument("--lmi", action="store_true", help="also solve the LMI certificate (circular padding; ~1 min)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("certify", help="certified robustness at eps (radii per input)",
                       description="Certified robustness radii of a ConvNODE checkpoint.")
    _add_certify(p)

    p = sub.add_parser("merge", help="join the --json parts of `certify --shard I/N` into one report",
                       description="Join the JSON reports of `cnode certify --shard I/N --json PART` (same checkpoint, "
                       "eps, norm, bound and selection; every shard once) into one report, every figure recomputed "
                       "from the per-input results.")
    p.add_argument("parts", nargs="+", help="the shards' JSON reports")
    p.add_argument("--json", required=True, help="the merged report to write")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("robustness", help="noise, attacks and certified accuracy of a checkpoint (our protocol)",
                       description="The evaluation protocol on one checkpoint.")
    _add_model_flags(p)
    p.add_argument("--limit", type=int, default=1000, help="first N test images (0: all; default: %(default)s)")
    p.add_argument("--draws", type=int, default=3, help="seeded noise draws averaged (default: %(default)s)")
    p.add_argument("--bound", choices=list(BOUNDS), default="auto", help="certificate (default: %(default)s)")
    p.add_argument("--certify-eps", type=float, nargs="+", default=list(ATTACK_EPS),
                   help="Linf eps to certify at (default: the attack eps)")
    p.add_argument("--l2-eps", type=float, nargs="*", default=list(L2_EPS),
                   help="L2 eps for PGD-20 and certified accuracy (default: %(default)s; none: skip)")
    p.add_argument("--square-queries", type=int, default=300, help="gradient-free queries (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=250, help="inputs per batch (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.set_defaults(func=cmd_robustness)

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
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and dispatch; a CNodeError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
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
    """`cnode ...`."""
    return run_cli(build_parser(), argv)


def build_certify_parser() -> argparse.ArgumentParser:
    """The parser of `certify`, the alias of `cnode certify`."""
    p = OneLineParser(prog="certify", description="Certified robustness radii of a ConvNODE checkpoint "
                      "(the same as `cnode certify`).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_certify(p)
    return p


def certify_main(argv: Sequence[str] | None = None) -> int:
    """`certify MODEL --eps E ...`: the alias of `cnode certify`."""
    return run_cli(build_certify_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
