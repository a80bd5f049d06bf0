"""Typed, validated configuration of a ConvNODE classifier and of its training run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from contraction.certificates import FIELDS
from contraction.convops import PADDINGS, conv_output_size
from contraction.errors import THREAT_NORMS, CNodeError
from contraction.slopes import ACTIVATIONS, Activation, get_activation
from contraction.regularizers import REG_TARGETS
from contraction.weights import CONTRACTIVE_INSET, check_step_rate
from nodes.aol import LIPSCHITZ_LAYERS, repeats_torus_pixels

__all__ = ["ModelConfig", "TrainConfig", "FIELDS", "REG_TARGETS", "ARCHS", "DEFAULT_ARCH", "INITS", "PADDINGS", "SOLVERS", "READOUTS",
           "DATASETS", "REGULARIZERS", "HINGES", "THREAT_NORMS", "DEFAULT_REG_WEIGHT", "CERTIFIED_METHODS", "EPS_RAMPS",
           "LIPSCHITZ_LOSSES", "LIPSCHITZ_LAYERS"]

SOLVERS = ("euler", "midpoint", "heun2", "heun3", "ssprk3", "rk4", "dopri5", "dopri5-dyadic", "bosh3-dyadic")
READOUTS = ("linear", "avgpool")
DATASETS = ("mnist", "fashion-mnist", "mnist-mini")
REGULARIZERS = ("none", "jacobian", "weight")
HINGES = ("squared", "linear")
INITS = ("default", "ibp", "contractive")
DEFAULT_REG_WEIGHT = {"weight": 0.1, "jacobian": 0.1}
"""The weight lambda of each regularizer when `reg_weight` is not given (measured in docs/RESULTS.md section 5:
`cnode train --reg weight --rho 1.0 --epochs 1` reaches the certified rate on MNIST)."""
DEFAULT_CERTIFIED_EPS = 0.015
"""The default recipe's certified-training eps (Linf) when `certified_eps` is not given and no regularizer is."""


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise CNodeError(f"{name} must be an integer {span}, got {value!r}")


def _check_float(name: str, value: Any, low: float, *, strict: bool = True, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        span = (">" if strict else ">=") + f" {low}" + ("" if high is None else f" and <= {high}")
        raise CNodeError(f"{name} must be a finite number {span}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CNodeError(f"{name} must be one of {list(choices)}, got {value!r}")


class _Config:
    """Shared helpers: plain-dict round trip for checkpoints."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # type: ignore[no-untyped-def]
        if not isinstance(data, dict):
            raise CNodeError(f"{cls.__name__} must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise CNodeError(f"{cls.__name__}: unknown fields {unknown}")
        return cls(**data)


StemConv = tuple[int, int, int, int]
"""One stem convolution: (out_channels, kernel, stride, padding), followed by the activation."""


@dataclass(frozen=True)
class ModelConfig(_Config):
    """ConvNODE: u -> normalise -> stem (convs, each + sigma) -> ODE block x' = sigma(K(t)*x + b(t)) on [0, T]
    (`field='gradient'`: x' = -K(t)^T sigma(K(t)*x + b(t)); `field='contractive'`: the paper's field with each kernel
    mapped so that every Euler step is certified to shrink by 1 - h rho in the infinity norm) -> head (flatten or pixel average, hidden linear layers
    + sigma, then the classes). `lipschitz_layers='aol'`: every stem conv and hidden head layer is 1-Lipschitz in L2
    by construction (nodes.aol); the block and the last layer stay as they are.

    `stem=None` is the paper's embedding: one `kernel_size` conv to `channels`, stride 1, same size. Named
    presets: `ModelConfig.preset("paper" | "mini", **overrides)`."""

    channels: int = 8
    activation: str = "smooth_leaky_relu"
    slope: float = 0.1
    padding: str = "zeros"
    solver: str = "euler"
    T: float = 1.0
    steps: int = 10
    shared_weights: bool = False
    readout: str = "linear"
    kernel_size: int = 3
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    rtol: float = 1e-3
    atol: float = 1e-4
    max_halvings: int = 4
    stem: tuple[StemConv, ...] | None = None
    head: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    field: str = "paper"
    rho: float = 0.0
    lipschitz_layers: str = "free"

    def __post_init__(self) -> None:
        _check_int("channels", self.channels, 1, 512)
        _check_choice("lipschitz_layers", self.lipschitz_layers, LIPSCHITZ_LAYERS)
        _check_choice("field", self.field, FIELDS)
        _check_choice("activation", self.activation, tuple(ACTIVATIONS))
        _check_float("slope", self.slope, 0.0, high=0.999)
        _check_choice("padding", self.padding, PADDINGS)
        _check_choice("solver", self.solver, SOLVERS)
        _check_float("T", self.T, 0.0)
        _check_int("steps", self.steps, 1, 10_000)
        if not isinstance(self.shared_weights, bool):
            raise CNodeError(f"shared_weights must be a bool, got {self.shared_weights!r}")
        _check_choice("readout", self.readout, READOUTS)
        _check_int("kernel_size", self.kernel_size, 1, 15)
        if self.kernel_size % 2 == 0:
            raise CNodeError(f"kernel_size must be odd (a centre tap is needed), got {self.kernel_size}")
        _check_int("in_channels", self.in_channels, 1, 16)
        _check_int("image_size", self.image_size, 1, 1024)
        _check_int("num_classes", self.num_classes, 2, 100_000)
        _check_float("rtol", self.rtol, 0.0)
        _check_float("atol", self.atol, 0.0)
        _check_int("max_halvings", self.max_halvings, 0, 20)
        self._check_stem()
        head = _as_tuple("head", self.head)
        for width in head:
            _check_int("head width", width, 1, 1_000_000)
        object.__setattr__(self, "head", head)
        for name in ("mean", "std"):
            values = _as_tuple(name, getattr(self, name))
            if values and len(values) != self.in_channels:
                raise CNodeError(f"{name} needs one value per input channel ({self.in_channels}), got {len(values)}")
            for v in values:
                _check_float(name, v, 0.0 if name == "std" else -math.inf)
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if bool(self.mean) != bool(self.std):
            raise CNodeError("normalisation needs both mean and std (or neither)")
        _check_float("rho", self.rho, 0.0, strict=False)
        if self.field == "contractive":
            if self.solver != "euler":
                raise CNodeError(f"the contractive field's guarantee is for the Euler step; solver {self.solver!r} "
                                 "is not covered (use --solver euler)")
            act = self.act
            if act.a <= 0:
                raise CNodeError(f"the contractive field needs a lower slope a > 0 ({act.name} has a = {act.a})")
            check_step_rate(self.rho, act.a, act.b, self.T, self.steps, "inf", "the contractive field",
                            inset=CONTRACTIVE_INSET)
        elif self.rho != 0:
            raise CNodeError(f"rho {self.rho:g} is the contractive field's rate; the {self.field!r} field has none "
                             "(a contraction target for it is the regularizer's: TrainConfig.rho with reg)")
        if self.field == "gradient" and self.padding == "circular" and self.block_size < self.kernel_size:
            raise CNodeError(f"the gradient field with circular padding needs a block side >= the kernel "
                             f"({self.block_size} < {self.kernel_size}: taps would wrap onto each other)")

    def _check_stem(self) -> None:
        if self.stem is None:
            k = self.kernel_size
            object.__setattr__(self, "stem", ((self.channels, k, 1, k // 2),))
        convs = tuple(_as_tuple(f"stem conv {i}", c) for i, c in enumerate(_as_tuple("stem", self.stem)))
        size, cin = self.image_size, self.in_channels
        for i, conv in enumerate(convs):
            if len(conv) != 4:
                raise CNodeError(f"stem conv {i} must be (out_channels, kernel, stride, padding), got {conv!r}")
            out, k, stride, pad = conv
            _check_int(f"stem conv {i} out_channels", out, 1, 512)
            _check_int(f"stem conv {i} kernel", k, 1, 15)
            _check_int(f"stem conv {i} stride", stride, 1, 8)
            _check_int(f"stem conv {i} padding", pad, 0, k - 1)
            if self.padding == "circular" and pad > size:
                raise CNodeError(f"stem conv {i}: circular padding {pad} exceeds the {size}x{size} input")
            if self.lipschitz_layers == "aol" and self.padding == "circular" and repeats_torus_pixels(k, pad):
                raise CNodeError(f"stem conv {i}: AOL with circular padding needs 2 x padding <= kernel - 1 (got "
                                 f"padding {pad}, kernel {k}: the conv would repeat pixels of the torus, and the "
                                 "rescaled map could exceed norm 1)")
            size = conv_output_size(size, k, stride, pad)
            if size < 1:
                raise CNodeError(f"stem conv {i} leaves no pixels ({k}x{k}, stride {stride}, padding {pad})")
            cin = out
        if cin != self.channels:
            raise CNodeError(f"the ODE block has {self.channels} channels but the stem ends with {cin}")
        object.__setattr__(self, "stem", tuple(tuple(int(v) for v in c) for c in convs))

    @classmethod
    def preset(cls, arch: str, **overrides: Any) -> "ModelConfig":
        """A named architecture (`ARCHS`) with any field overridden. `channels` without `stem` resizes the preset's
        stem convs to that width, so that the stem still ends where the block starts."""
        _check_choice("arch", arch, tuple(ARCHS))
        base = dict(ARCHS[arch])
        if "channels" in overrides and "stem" not in overrides and base.get("stem"):
            _check_int("channels", overrides["channels"], 1, 512)
            base["stem"] = tuple((overrides["channels"], *conv[1:]) for conv in base["stem"])
        return cls(**{**base, **overrides})

    @property
    def h(self) -> float:
        """Step size T / steps of the fixed-step solvers (the output grid of dopri5)."""
        return self.T / self.steps

    @property
    def act(self) -> Activation:
        """The activation with its slope interval [a, b]."""
        return get_activation(self.activation, self.slope)

    @property
    def num_convs(self) -> int:
        """Number of distinct convolutions in the ODE block."""
        return 1 if self.shared_weights else self.steps

    @property
    def block_size(self) -> int:
        """Side of the ODE block's square state (the image side after the stem)."""
        size = self.image_size
        for _, k, stride, pad in self.stem or ():
            size = conv_output_size(size, k, stride, pad)
        return size

    @property
    def features(self) -> int:
        """Inputs of the head's first linear layer: the flattened state, or its channels when pixel-averaged."""
        return self.channels * (self.block_size**2 if self.readout == "linear" else 1)


def _as_tuple(name: str, value: Any) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise CNodeError(f"{name} must be a sequence, got {value!r}")
    return tuple(value)


ARCHS: dict[str, dict[str, Any]] = {
    # the paper's model: embedding conv 1 -> 8 at 28 x 28, ten Euler steps, linear readout
    "paper": {},
    # downsampling stem to 32 x 7 x 7 (two stride-2 4x4 convs), 5 Euler steps, a 256-unit hidden layer; leaky ReLU
    # (slopes [0.1, 1] like the smooth one): the smooth one's softplus offset ln 2, added at every layer and step,
    # stalls training from PyTorch's initialisation (1 epoch on 12k MNIST images: 8 % vs 94 % clean)
    "mini": {"channels": 32, "stem": ((32, 4, 2, 1), (32, 4, 2, 1)), "steps": 5, "T": 1.0, "head": (256,),
             "activation": "leaky_relu"},
    # mini widened toward DeepMind's IBP "medium" CNN (convs 32/32/64/64, two 512-unit linears): a 64 x 7 x 7
    # state after a 32- then 64-channel stride-2 stem, the same 5 Euler steps, a 512-512 head
    "medium": {"channels": 64, "stem": ((32, 4, 2, 1), (64, 4, 2, 1)), "steps": 5, "T": 1.0, "head": (512, 512),
               "activation": "leaky_relu"},
}


DEFAULT_ARCH = "mini"
"""The architecture `cnode train` uses unless `--arch` says otherwise (`ModelConfig()` itself is the paper's)."""

CERTIFIED_METHODS = ("ibp", "crown-ibp", "mtl-ibp", "local", "lipschitz")
"""Certified losses (certify.bounds.objectives): interval bound propagation; CROWN-IBP (linear bounds over IBP boxes, mixed
with IBP by beta falling from 1 to 0 over the eps ramp); MTL-IBP (alpha CE(IBP worst case) + (1 - alpha) CE(PGD
point)); the mean-value boxes of `--bound local` without its interval pass ('local'; named 'interval' in
checkpoints written before); the Lipschitz margin ('lipschitz')."""
EPS_RAMPS = ("linear", "smooth", "log")

LIPSCHITZ_LOSSES = ("margin", "gloro", "trades")
"""The losses of Lipschitz-margin training (certify.bounds.objectives): 'margin', cross-entropy of the logits shifted
by eps L_yj; 'gloro' (Leino et al. 2021), cross-entropy over the logits and a bottom class max_{j != c} z_j +
eps L_cj, c the predicted class; 'trades', the clean cross-entropy plus trades_lambda x the bottom class's KL term."""


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Adam with a step-decayed learning rate, an optional contraction regularizer (`reg`, `rho`, `reg_weight`,
    `reg_norm`, `reg_hinge`, `reg_target`: 'step' (default) targets every Euler step as run, factor <= 1 - h rho;
    'flow' the continuous flow's log-norm <= -rho, labelled as the flow's), an optional certified loss (`certified_*`, threat model `certified_norm`) and the
    initialisation (`init`, `neg_init`); `nodes.train.train` builds each from these names.

    The defaults are the verifiable recipe (docs/RESULTS.md section 5): with the `mini` architecture, one MNIST
    epoch gives 97.6 % clean and certifies at Linf 0.01 within a point of PGD. Adam at 2e-3, 40 % of the first
    epoch clean, then a light MTL-IBP loss (IBP worst case and an FGSM point, half and half; the best of the
    certified losses compared in docs/RESULTS.md section 6b) whose eps ramps to 0.015 over 0.3 epochs, mixed half
    and half with the clean loss. `certified_eps=0` trains plainly.

    Left `None`, three fields resolve from `reg` (and are stored resolved): `reg_weight` (DEFAULT_REG_WEIGHT),
    `init` ('contractive' with a regularizer: the block starts certified at rho) and `certified_eps` (0 with a
    regularizer: measured with the flow's targets, which put the block's centre taps near the Euler step's
    stability limit h b |c| <= 2, where interval bounds grow with every step and the light certified loss cost ~27
    points of clean accuracy, docs/RESULTS.md section 5; give both explicitly to combine them).

    Schedules: `eps_ramp` shapes the ramp of the certified eps ('smooth': Shi et al. 2021's polynomial-then-linear
    growth, continuous slope, over the same `certified_warmup` epochs; 'log': GloRo's logarithmic ramp, fast at first,
    from 1 % of the eps); the loss trains at `train_eps_factor` x
    `certified_eps` (the test eps stays `certified_eps`); the learning rate is multiplied by `lr_decay` after every
    epoch, or only at the `lr_milestones` (epochs) when given; `grad_clip` > 0 clips the gradient's 2-norm
    (0: no clipping); `mtl_alpha`, `attack_steps`: the MTL-IBP mix and its PGD steps.

    Weight averaging: `ema_decay` > 0 keeps an exponential moving average of the weights, updated after every
    optimizer step from epoch `ema_start` on (the first update copies the weights); the test accuracy, the
    checkpoint and the trained model are the averaged weights (the raw ones continue training; a resumed run
    restores both).

    `warmup_reg` > 0 adds Shi et al. 2021's warm-up terms on the training boxes (bound tightness and the balance of
    certainly active and inactive neurons, certify.bounds.objectives.warmup_regularizer) to the certified loss,
    weighted by warmup_reg x (1 - eps(t) / eps_train): in full at the ramp's start, gone at its end (they used 0.5).

    `lipschitz_loss` (certified_method 'lipschitz' only, LIPSCHITZ_LOSSES): 'margin' (the default), 'gloro' or
    'trades' (with `trades_lambda` > 0, the robust term's weight)."""

    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    lr_decay: float = 0.5
    readout_lr_scale: float = 1.0
    seed: int = 0
    train_limit: int = 0
    reg: str = "none"
    rho: float = 0.0
    reg_weight: float | None = None
    reg_norm: str = "inf"
    reg_hinge: str = "squared"
    reg_target: str = "step"
    neg_init: bool = False
    certified_eps: float | None = None
    certified_method: str = "mtl-ibp"
    certified_norm: str = "inf"
    certified_mix: float = 0.5
    certified_warmup: float = 0.3
    certified_start: float = 0.4
    eps_ramp: str = "linear"
    train_eps_factor: float = 1.0
    mtl_alpha: float = 0.5
    attack_steps: int = 1
    lr_milestones: tuple[int, ...] = ()
    grad_clip: float = 0.0
    init: str | None = None
    ema_decay: float = 0.0
    ema_start: float = 0.0
    warmup_reg: float = 0.0
    lipschitz_loss: str = "margin"
    trades_lambda: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("reg", self.reg, REGULARIZERS)  # the defaults below resolve from it
        if self.certified_eps is None:  # the default recipe's light certified loss, unless a regularizer is asked
            object.__setattr__(self, "certified_eps", DEFAULT_CERTIFIED_EPS if self.reg == "none" else 0.0)
        _check_float("certified_eps", self.certified_eps, 0.0, strict=False)
        _check_choice("certified_method", self.certified_method, CERTIFIED_METHODS)
        _check_float("certified_mix", self.certified_mix, 0.0, strict=False, high=1.0)
        _check_float("certified_warmup", self.certified_warmup, 0.0, strict=False)
        _check_float("certified_start", self.certified_start, 0.0, strict=False)
        _check_choice("eps_ramp", self.eps_ramp, EPS_RAMPS)
        _check_float("train_eps_factor", self.train_eps_factor, 0.0)
        _check_float("mtl_alpha", self.mtl_alpha, 0.0, strict=False, high=1.0)
        _check_int("attack_steps", self.attack_steps, 1, 1000)
        milestones = _as_tuple("lr_milestones", self.lr_milestones)
        for m in milestones:
            _check_int("lr milestone", m, 1)
        if list(milestones) != sorted(set(milestones)):
            raise CNodeError(f"lr_milestones must increase, got {list(milestones)}")
        object.__setattr__(self, "lr_milestones", milestones)
        _check_float("grad_clip", self.grad_clip, 0.0, strict=False)
        _check_float("ema_decay", self.ema_decay, 0.0, strict=False)
        if self.ema_decay >= 1:
            raise CNodeError(f"ema_decay must be below 1 (1 never moves the average), got {self.ema_decay!r}")
        _check_float("ema_start", self.ema_start, 0.0, strict=False)
        _check_float("warmup_reg", self.warmup_reg, 0.0, strict=False)
        if self.warmup_reg > 0 and (self.certified_eps == 0 or self.certified_method == "lipschitz"):
            raise CNodeError("warmup_reg regularises the certified loss's boxes during the eps ramp: it needs "
                             "certified_eps > 0 and a box method (ibp, crown-ibp, mtl-ibp, local), got "
                             f"certified_eps {self.certified_eps:g}, method {self.certified_method!r}")
        _check_choice("lipschitz_loss", self.lipschitz_loss, LIPSCHITZ_LOSSES)
        _check_float("trades_lambda", self.trades_lambda, 0.0, strict=False)
        if self.lipschitz_loss != "margin" and (self.certified_eps == 0 or self.certified_method != "lipschitz"):
            raise CNodeError(f"lipschitz_loss {self.lipschitz_loss!r} is a loss of Lipschitz-margin training: it needs "
                             f"certified_method 'lipschitz' and certified_eps > 0, got {self.certified_method!r}, "
                             f"certified_eps {self.certified_eps:g}")
        if (self.lipschitz_loss == "trades") != (self.trades_lambda > 0):
            raise CNodeError("trades_lambda weighs the robust term of lipschitz_loss 'trades' and nothing else: give "
                             f"both or neither (got lipschitz_loss {self.lipschitz_loss!r}, trades_lambda "
                             f"{self.trades_lambda:g})")
        if self.ema_decay == 0 and self.ema_start > 0:
            raise CNodeError(f"ema_start {self.ema_start:g} given without weight averaging (ema_decay is 0): it would "
                             "do nothing; give ema_decay > 0, e.g. 0.999")
        if self.ema_decay > 0 and self.ema_start >= self.epochs > 0:
            raise CNodeError(f"ema_start {self.ema_start:g} is not before the last epoch ({self.epochs}): the "
                             "average would never be updated")
        if self.init is None:  # with a contraction target, start certified at it; stored resolved
            object.__setattr__(self, "init", "default" if self.reg == "none" else "contractive")
        _check_choice("init", self.init, INITS)
        _check_int("epochs", self.epochs, 0, 10_000)
        _check_int("batch_size", self.batch_size, 1, 1_000_000)
        _check_float("lr", self.lr, 0.0)
        _check_float("lr_decay", self.lr_decay, 0.0, high=1.0)
        _check_float("readout_lr_scale", self.readout_lr_scale, 0.0)
        _check_int("seed", self.seed, 0)
        _check_int("train_limit", self.train_limit, 0)
        _check_float("rho", self.rho, 0.0, strict=False)
        _check_choice("reg_norm", self.reg_norm, THREAT_NORMS)
        _check_choice("reg_hinge", self.reg_hinge, HINGES)
        _check_choice("reg_target", self.reg_target, REG_TARGETS)
        if self.reg == "none" and self.rho > 0:
            raise CNodeError(f"rho {self.rho:g} given without a regularizer (reg is 'none'): it would do nothing; give "
                             "reg 'weight' or 'jacobian' (or the contractive field's rate, ModelConfig.rho)")
        _check_choice("certified_norm", self.certified_norm, THREAT_NORMS)
        if self.reg_weight is None:  # the regularizer's documented default; stored resolved
            object.__setattr__(self, "reg_weight", DEFAULT_REG_WEIGHT.get(self.reg, 0.0))
        _check_float("reg_weight", self.reg_weight, 0.0, strict=False)
        if self.reg == "none" and self.reg_weight > 0:
            raise CNodeError(f"reg_weight {self.reg_weight} given without a regularizer (reg is 'none')")
        if self.reg != "none" and self.reg_weight == 0:
            raise CNodeError(f"the {self.reg} regularizer with weight 0 does nothing; give reg_weight > 0 "
                             "(or leave it out for the default)")
        if not isinstance(self.neg_init, bool):
            raise CNodeError(f"neg_init must be a bool, got {self.neg_init!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from a checkpoint; configs written before 0.3 had one `norm` for both the regularizer and the
        certified loss, and the linear hinge."""
        if isinstance(data, dict) and data.get("certified_method") == "interval":  # its name in checkpoints written before
            data = {**data, "certified_method": "local"}
        if isinstance(data, dict) and data.get("reg", "none") != "none" and "reg_target" not in data:
            data = {**data, "reg_target": "flow"}  # written before 0.5: every target was the flow's
        if isinstance(data, dict) and "norm" in data:
            legacy = {k: v for k, v in data.items() if k != "norm"}
            legacy.update(reg_norm=data["norm"], certified_norm=data["norm"], reg_hinge="linear")
            legacy.setdefault("certified_start", 0.0)  # fields added later, at the values that reproduce those runs
            legacy.setdefault("init", "default")
            data = legacy
        return super().from_dict(data)
