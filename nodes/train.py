"""Training loop: Adam, step-decayed learning rate, seeds, tqdm, per-epoch test accuracy; the initialisation,
regularizer and certified objective come from the TrainConfig's names (registries), explicit callables win."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from contraction.adaptive import PAIRS
from contraction.errors import CNodeError
from contraction.weights import check_step_rate
from nodes.checkpoint import save_model
from nodes.classifier import ConvNODE
from nodes.config import ModelConfig, TrainConfig
from nodes.data import ImageData, batches
from nodes.device import eval_mode, module_device, place
from nodes.distributed import SINGLE, Dist
from nodes.init import initialise_
from certify.bounds.objectives import Objective, make_objective
from nodes.regularize import Regularizer, make_regularizer

__all__ = ["train", "fit", "evaluate", "seed_everything", "eps_schedule", "ramp", "Regularizer",
           "Objective", "History", "TrainingState", "history_metrics"]

log = logging.getLogger(__name__)


def ramp(progress: float, shape: str = "linear", mid: float = 0.25, power: float = 4.0) -> float:
    """The fraction of the final eps reached `progress` in [0, 1] into the ramp. 'smooth' (Shi et al. 2021):
    A p^power up to `mid`, then linear to 1, A chosen so that the slope is continuous at `mid`. 'log' (GloRo, Leino
    et al. 2021): log((e - e^s) p + e^s) from s = 0.01 at p = 0 to 1 at p = 1, concave (fast at first)."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return p
    if shape == "log":
        start = 0.01
        return math.log((math.e - math.exp(start)) * p + math.exp(start))
    a = 1.0 / (mid ** (power - 1) * (power * (1 - mid) + mid))
    if p < mid:
        return a * p**power
    at_mid = a * mid**power
    return at_mid + (1 - at_mid) * (p - mid) / (1 - mid)


def eps_schedule(config: TrainConfig, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """0 (clean training only) for `certified_start` epochs, then the certified eps ramps from 0 (shaped by
    `eps_ramp`) over `certified_warmup` epochs, then stays constant."""
    done = epoch + batch / max(batches_per_epoch, 1) - config.certified_start
    if done < 0:
        return 0.0
    if config.certified_warmup <= 0:
        return config.certified_eps
    return config.certified_eps * ramp(done / config.certified_warmup, config.eps_ramp)


@dataclass
class History:
    """Per-epoch figures of a training run (`certified`: fraction of the training inputs the training bound proved,
    `eps`: the scheduled eps at the epoch's end)."""

    train_loss: list[float] = field(default_factory=list)
    reg_value: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    certified: list[float] = field(default_factory=list)
    eps: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(**{f.name: [float(v) for v in data.get(f.name, [])] for f in fields(cls)})


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def evaluate(model: ConvNODE, data: ImageData, *, batch_size: int = 500, progress: bool = False,
             dist: Dist = SINGLE, transform: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None
             ) -> float:
    """Accuracy of `model` on `data` (clean, or on `transform(x, y, i)` of every batch i: noise, an attack, run with
    gradients on), batches on the model's device (its train/eval mode is restored). With several processes
    (`dist`), each counts its contiguous share of the images and the counts are summed."""
    device = module_device(model)
    with eval_mode(model):
        correct = 0
        part = data.slice(len(data) * dist.rank // dist.world, len(data) * (dist.rank + 1) // dist.world)
        it = batches(part, batch_size)
        if progress:
            it = tqdm(it, total=(len(part) + batch_size - 1) // batch_size, desc="evaluate", leave=False, disable=None)
        for i, (x, y) in enumerate(it):
            x, y = x.to(device), y.to(device)
            if transform is not None:
                x = transform(x, y, i)
            with torch.no_grad():
                correct += int((model(x).argmax(1) == y).sum())
        return dist.all_sum([correct])[0] / max(len(data), 1)


@dataclass
class TrainingState:
    """Everything a run needs to continue bit-for-bit after `epoch` finished epochs: optimizer and scheduler state,
    every random generator (python, numpy, torch, the shuffling and the regularizer's), the history so far.
    Stored in the checkpoint (`nodes.checkpoint.save_model(..., training_state=...)`) as plain tensors and lists."""

    epoch: int
    optimizer: dict
    scheduler: dict
    rng: dict
    history: History
    average: dict | None = None  # weight averaging: the raw weights ('raw') and the updates so far ('n_averaged')

    def to_dict(self) -> dict:
        out = {"epoch": self.epoch, "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng,
               "history": asdict(self.history)}
        if self.average is not None:
            out["average"] = self.average
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingState":
        return cls(int(data["epoch"]), data["optimizer"], data["scheduler"], data["rng"],
                   History.from_dict(data["history"]), data.get("average"))


def _rng_state(shuffle: torch.Generator, reg: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos),
             int(has_gauss), float(gauss)], "torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
             "regularizer": reg.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, shuffle: torch.Generator, reg: torch.Generator) -> None:
    random.setstate((3, tuple(state["python"]), None))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    reg.set_state(state["regularizer"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(model: ConvNODE, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    readout = list(model.readout.parameters())
    ids = {id(p) for p in readout}
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": config.lr},
            {"params": readout, "lr": config.lr * config.readout_lr_scale},
        ]
    )
    if config.lr_milestones:
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.lr_milestones), gamma=config.lr_decay)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
    return optimizer, scheduler


class _Step(nn.Module):
    """One batch's training loss as a module, so that DistributedDataParallel can wrap everything that touches the
    weights (the trajectory, the certified objective, the regularizer) and average the gradients over the ranks.
    Returns (loss, regularizer value, inputs the training bound proved, inputs it bounded)."""

    def __init__(self, model: ConvNODE, config: TrainConfig, regularizer: Regularizer | None,
                 objective: Objective | None) -> None:
        super().__init__()
        self.model = model
        self.config, self.regularizer, self.objective = config, regularizer, objective

    def forward(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
        config = self.config
        robust_only = eps > 0 and self.objective is not None and self.regularizer is None and config.certified_mix == 0
        zero = torch.zeros((), device=x.device)
        if robust_only:  # the clean pass would enter the loss with weight 0: skip it (same loss, same gradients)
            logits, states, loss = None, None, zero
        else:
            logits, states = self.model.trajectory(x)
            loss = F.cross_entropy(logits, y)
        reg, proven, bounded = zero, zero, zero
        if eps > 0 and self.objective is not None:
            robust = self.objective(self.model, x, y, logits, eps)
            loss = robust.loss if robust_only else config.certified_mix * loss + (1 - config.certified_mix) * robust.loss
            if robust.certified is not None:
                proven, bounded = robust.certified.sum().float(), torch.tensor(float(len(y)), device=x.device)
        if self.regularizer is not None:
            assert states is not None
            value = self.regularizer(self.model, states)
            loss = loss + config.reg_weight * value
            reg = value.detach()
        return loss, reg, proven, bounded


def _rank_batches(data: ImageData, config: TrainConfig, gen: torch.Generator, dist: Dist):
    """This rank's part of every batch of the epoch's permutation (one permutation, the same on every rank): batch
    k of the one-process run, split into `world` near-equal contiguous parts. A last batch with fewer images than
    ranks is dropped (on every rank alike)."""
    for x, y in batches(data, config.batch_size, shuffle=True, generator=gen):
        if not dist.distributed:
            yield x, y
        elif len(y) >= dist.world:
            yield torch.tensor_split(x, dist.world)[dist.rank], torch.tensor_split(y, dist.world)[dist.rank]


def check_combination(model_config: ModelConfig, config: TrainConfig) -> None:
    """Refuse a recipe the model cannot keep or has no use for: the contraction regularizers and the contractive
    initialisation act on the paper's field x' = sigma(K*x + b) (the gradient and contractive fields contract by
    construction); a step target needs the Euler solver and a rate the step h = T / steps can carry (the error
    names a step count that can)."""
    if model_config.field != "paper" and (config.reg != "none" or config.init == "contractive" or config.neg_init):
        raise CNodeError(f"the {model_config.field} field is contractive by construction: the contraction "
                         "regularizers, --init contractive and --neg-init act on the paper's field (use --field paper)")
    if config.warmup_reg > 0 and model_config.solver in PAIRS:
        raise CNodeError(f"--warmup-reg needs one set of training boxes; the controlled solver {model_config.solver!r} "
                         "bounds each input along its own schedule (use a fixed-step solver)")
    if config.reg != "none" and config.reg_target == "step":
        if model_config.solver != "euler":
            raise CNodeError(f"the step target is the Euler step's factor; solver {model_config.solver!r} is certified "
                             "(cnode evaluate) but not targeted (use --solver euler, or --reg-target flow for the "
                             "flow's rate)")
        act = model_config.act
        check_step_rate(config.rho, act.a, act.b, model_config.T, model_config.steps, config.reg_norm,
                        f"--reg {config.reg} --rho {config.rho:g} --reg-norm {config.reg_norm}")


def train(
    model: ConvNODE,
    train_data: ImageData,
    config: TrainConfig,
    *,
    test_data: ImageData | None = None,
    regularizer: Regularizer | None = None,
    objective: Objective | None = None,
    initialise: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, History], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: TrainingState | None = None,
    dist: Dist = SINGLE,
) -> History:
    """Train in place with loss = CE(model(u), y) + reg_weight * R(model, states); with certified_eps > 0:
    mix * CE + (1 - mix) * objective(model, u, y, logits, eps(t)).loss (eps scheduled by `eps_schedule`).

    As the config names them: the initialisation (`init`, `neg_init`; skipped with `initialise=False`, e.g. to
    fine-tune, and on resume), the regularizer (`reg`, `rho`, `reg_norm`, `reg_hinge`), the certified objective
    (`certified_method`, `certified_norm`; registered by `import certify`), the learning-rate schedule and gradient
    clipping. A `regularizer` or `objective` given here replaces the config's. `device`: None keeps the model where
    it is, else it is moved there ('auto', 'cpu', 'cuda'). The model runs in train mode during the epochs and is
    left in the mode it had on entry.

    `checkpoint`: after every epoch the model, configs, metrics and the `TrainingState` are written there atomically
    (an interrupted run keeps its last finished epoch). `resume`: a state read from such a checkpoint (the model
    holding its weights): training continues at the next epoch, bit-for-bit as if never stopped (same device).

    `dist` (nodes.distributed, e.g. under torchrun): the batch loss runs wrapped in DistributedDataParallel, each
    rank on its part of every batch of one shared permutation (the global batch stays `batch_size`, so the recipe
    means the same at any world size), gradients averaged over the ranks; the epoch's figures are summed over the
    ranks, the test accuracy is counted in shares, and only rank 0 writes the checkpoint and calls `on_epoch`.
    Every rank keeps the same random streams, so rank 0's training state resumes every rank.

    Weight averaging (`ema_decay` > 0): the test accuracy and the checkpoint's model are the averaged weights, and
    the model holds them on return; the raw weights the optimizer moves are in the training state."""
    check_combination(model.config, config)
    run = _prepare(model, config, regularizer, objective, initialise, device, resume, dist)
    was_training = model.training
    for epoch in range(run.first, config.epochs):
        start = time.perf_counter()
        totals = _epoch(run, train_data, epoch, progress)
        _record(run, totals, time.perf_counter() - start, test_data)
        if checkpoint is not None and dist.main:
            _save(run, checkpoint, epoch, test_data)
        if on_epoch is not None and dist.main:
            on_epoch(epoch, run.history)
    if _averaged(run) is not None:
        model.load_state_dict(run.average.module.state_dict())  # type: ignore[union-attr]
    model.train(was_training)  # the caller's mode, as it was
    return run.history


def _model_to_test(run: "_Run") -> ConvNODE:
    """The weights a run reports and saves: the average once started, else the raw ones."""
    averaged = _averaged(run)
    return run.model if averaged is None else averaged


def _averaged(run: "_Run") -> ConvNODE | None:
    """The averaged weights' model once the average has been updated (None: no averaging, or not started)."""
    if run.average is None or int(run.average.n_averaged) == 0:
        return None
    return run.average.module  # type: ignore[return-value]


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch."""

    model: ConvNODE
    config: TrainConfig
    device: torch.device
    dist: Dist
    runner: nn.Module  # the batch loss (_Step), wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # the shuffling stream
    reg_gen: torch.Generator  # the regularizer's stream
    history: History
    first: int  # the first epoch to run (> 0 on resume)
    certified: bool  # a certified objective is in the loss
    average: AveragedModel | None = None  # the weight average (`ema_decay` > 0)


def _prepare(model: ConvNODE, config: TrainConfig, regularizer: Regularizer | None, objective: Objective | None,
             initialise: bool, device: str | torch.device | None, resume: TrainingState | None, dist: Dist) -> _Run:
    """Seeds, device, initialisation, the config's regularizer and objective (unless given), optimizer and schedule,
    the resumed state; the batch loss wrapped for the ranks."""
    gen = seed_everything(config.seed)
    reg_gen = torch.Generator().manual_seed(config.seed)
    device = place(model, device)
    if initialise and resume is None:
        initialise_(model, config)
    if regularizer is None:
        regularizer = make_regularizer(config, generator=reg_gen)
    if objective is None:
        objective = make_objective(config)
    optimizer, scheduler = _optimizer(model, config)
    average = None
    if config.ema_decay > 0:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    history, first = History(), 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        _set_rng_state(resume.rng, gen, reg_gen)
        history, first = resume.history, resume.epoch
        if average is not None:
            if resume.average is None:
                raise CNodeError("the recipe averages the weights but the training state has no average to resume")
            n = int(resume.average["n_averaged"])
            if n:  # the checkpoint's model holds the average; the optimizer's raw weights are in the state
                average.module.load_state_dict(model.state_dict())
                model.load_state_dict(resume.average["raw"])
            average.n_averaged.fill_(n)
    use_reg = regularizer is not None and config.reg_weight > 0
    use_obj = objective is not None and config.certified_eps > 0
    runner: nn.Module = _Step(model, config, regularizer if use_reg else None, objective if use_obj else None)
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(runner, device_ids=[device] if device.type == "cuda" else None)
    return _Run(model, config, device, dist, runner, optimizer, scheduler, gen, reg_gen, history, first, use_obj,
                average)


@dataclass
class _EpochTotals:
    """One epoch's sums over every rank's batches."""

    loss: float = 0.0  # sum of batch loss x batch size
    reg: float = 0.0  # sum of regularizer value x batch size
    seen: int = 0
    proven: int = 0  # inputs the training bound proved
    bounded: int = 0  # inputs it bounded
    eps: float = 0.0  # the last batch's eps


def _epoch(run: _Run, data: ImageData, epoch: int, progress: bool) -> _EpochTotals:
    """One pass over this rank's batches (one optimizer step each) with a progress bar; totals summed over ranks."""
    config, t = run.config, _EpochTotals()
    run.model.train()
    params = list(run.model.parameters())
    nb = (len(data) + config.batch_size - 1) // config.batch_size
    bar = tqdm(_rank_batches(data, config, run.gen, run.dist), total=nb, desc=f"epoch {epoch + 1}/{config.epochs}",
               disable=None if progress and run.dist.main else True,  # None: a live bar on a terminal, not in a log
               leave=False)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        t.eps = eps_schedule(config, epoch, i, nb) if run.certified else 0.0
        loss, reg, got, tried = run.runner(x, y, t.eps)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        run.optimizer.step()
        if run.average is not None and epoch + i / nb >= config.ema_start:
            run.average.update_parameters(run.model)
        t.loss += float(loss.detach()) * len(y)
        t.reg += float(reg) * len(y)
        t.proven, t.bounded, t.seen = t.proven + int(got), t.bounded + int(tried), t.seen + len(y)
        post = {"loss": f"{t.loss / t.seen:.4f}"}
        if run.certified:
            post.update(eps=f"{t.eps:.4g}", cert=f"{t.proven / t.bounded:.1%}" if t.bounded else "-")
        bar.set_postfix(post, refresh=False)
    t.loss, t.reg, t.seen, t.proven, t.bounded = run.dist.all_sum([t.loss, t.reg, t.seen, t.proven, t.bounded])
    return t


def _record(run: _Run, t: _EpochTotals, seconds: float, test_data: ImageData | None) -> None:
    """The schedule's step and the epoch's line in the history (test accuracy counted in shares over the ranks)."""
    run.scheduler.step()
    h = run.history
    h.epoch_seconds.append(seconds)
    h.train_loss.append(t.loss / max(t.seen, 1))
    h.reg_value.append(t.reg / max(t.seen, 1))
    h.certified.append(t.proven / t.bounded if t.bounded else float("nan"))
    h.eps.append(t.eps)
    if test_data is not None:
        h.test_accuracy.append(evaluate(_model_to_test(run), test_data, dist=run.dist))
    log.info("epoch %d: loss %.4f, reg %.4f, test acc %s, %.1f s", len(h.train_loss), h.train_loss[-1],
             h.reg_value[-1], f"{h.test_accuracy[-1]:.4f}" if h.test_accuracy else "-", h.epoch_seconds[-1])


def _save(run: _Run, checkpoint: str | os.PathLike[str], epoch: int, test_data: ImageData | None) -> None:
    """Model, configs, metrics and the TrainingState after `epoch`, written atomically (rank 0)."""
    averaged = _averaged(run)
    average = None if run.average is None else {
        "n_averaged": int(run.average.n_averaged),
        "raw": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()} if averaged else None}
    state = TrainingState(epoch + 1, run.optimizer.state_dict(), run.scheduler.state_dict(),
                          _rng_state(run.gen, run.reg_gen), run.history, average)
    save_model(checkpoint, run.model if averaged is None else averaged, train_config=run.config,
               metrics={**history_metrics(run.history, test_data), "device": str(run.device)},
               training_state=state.to_dict())


def history_metrics(history: History, test_data: ImageData | None = None) -> dict:
    """The metrics a checkpoint records of its run so far."""
    out = {
        "test_accuracy": history.test_accuracy[-1] if history.test_accuracy else None,
        "test_accuracy_per_epoch": list(history.test_accuracy),
        "train_loss_per_epoch": list(history.train_loss),
        "train_certified_per_epoch": list(history.certified),
        "seconds_per_epoch": list(history.epoch_seconds),
        "epochs_done": len(history.train_loss),
    }
    if test_data is not None:
        out["test_images"] = len(test_data)
    return out


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, train_data: ImageData, test_data: ImageData | None,
        *, device: str | torch.device | None = "auto", progress: bool = True, objective: Objective | None = None,
        on_epoch: Callable[[int, History], None] | None = None, checkpoint: str | os.PathLike[str] | None = None,
        ) -> tuple[ConvNODE, History]:
    """Build a model from its config (weights drawn with the config's seed) and `train` it on `device`."""
    torch.manual_seed(train_cfg.seed)
    model = ConvNODE(model_cfg)
    history = train(model, train_data, train_cfg, test_data=test_data, objective=objective, device=device,
                    progress=progress, on_epoch=on_epoch, checkpoint=checkpoint)
    return model, history
