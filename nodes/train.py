"""Training loop: Adam, step-decayed learning rate, seeds, tqdm, per-epoch test accuracy; the initialisation,
regularizer and certified objective come from the TrainConfig's names (registries), explicit callables win."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nodes.classifier import ConvNODE
from nodes.config import ModelConfig, TrainConfig
from nodes.data import ImageData, batches
from nodes.device import module_device, place
from nodes.init import initialise_
from nodes.objectives import Objective, make_objective
from nodes.regularize import Regularizer, make_regularizer

__all__ = ["train", "fit", "evaluate", "eval_mode", "seed_everything", "eps_schedule", "Regularizer", "Objective",
           "History"]

log = logging.getLogger(__name__)


def eps_schedule(config: TrainConfig, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """0 (clean training only) for `certified_start` epochs, then a linear ramp of the certified eps from 0 over
    `certified_warmup` epochs, then constant."""
    done = epoch + batch / max(batches_per_epoch, 1) - config.certified_start
    if done < 0:
        return 0.0
    if config.certified_warmup <= 0:
        return config.certified_eps
    return config.certified_eps * min(1.0, done / config.certified_warmup)


@dataclass
class History:
    """Per-epoch figures of a training run."""

    train_loss: list[float] = field(default_factory=list)
    reg_value: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: ConvNODE, data: ImageData, *, batch_size: int = 500, progress: bool = False) -> float:
    """Clean accuracy of `model` on `data`, batches on the model's device (its train/eval mode is restored)."""
    device = module_device(model)
    with eval_mode(model):
        correct = 0
        it = batches(data, batch_size)
        if progress:
            it = tqdm(it, total=(len(data) + batch_size - 1) // batch_size, desc="evaluate", leave=False, disable=None)
        for x, y in it:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        return correct / max(len(data), 1)


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
) -> History:
    """Train in place with loss = CE(model(u), y) + reg_weight * R(model, states); with certified_eps > 0:
    mix * CE + (1 - mix) * objective(model, u, y, logits, eps(t)) (eps scheduled by `eps_schedule`).

    As the config names them: the initialisation (`init`, `neg_init`; skipped with `initialise=False`, e.g. to
    fine-tune), the regularizer (`reg`, `rho`, `reg_norm`, `reg_hinge`) and the certified objective
    (`certified_method`, `certified_norm`; registered by `import certify`). A `regularizer` or `objective` given
    here replaces the config's. `device`: None keeps the model where it is, else it is moved there ('auto', 'cpu',
    'cuda'). The model runs in train mode during the epochs and is left in the mode it had on entry."""
    gen = seed_everything(config.seed)
    device = place(model, device)
    if initialise:
        initialise_(model, config)
    if regularizer is None:
        regularizer = make_regularizer(config)
    if objective is None:
        objective = make_objective(config)
    readout = list(model.readout.parameters())
    ids = {id(p) for p in readout}
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": config.lr},
            {"params": readout, "lr": config.lr * config.readout_lr_scale},
        ]
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
    history = History()
    use_reg = regularizer is not None and config.reg_weight > 0
    use_obj = objective is not None and config.certified_eps > 0
    was_training = model.training
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        total, reg_total, seen = 0.0, 0.0, 0
        nb = (len(train_data) + config.batch_size - 1) // config.batch_size
        bar = tqdm(
            batches(train_data, config.batch_size, shuffle=True, generator=gen),
            total=nb,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=None if progress else True,  # None: a live bar on a terminal, nothing in a log file
            leave=False,
        )
        for i, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, states = model.trajectory(x)
            loss = F.cross_entropy(logits, y)
            if use_obj:
                eps = eps_schedule(config, epoch, i, nb)
                robust = objective(model, x, y, logits, eps) if eps > 0 else loss  # type: ignore[misc]
                loss = config.certified_mix * loss + (1 - config.certified_mix) * robust
            if use_reg:
                reg = regularizer(model, states)  # type: ignore[misc]
                reg_total += float(reg.detach()) * len(y)
                loss = loss + config.reg_weight * reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        scheduler.step()
        history.epoch_seconds.append(time.perf_counter() - start)
        history.train_loss.append(total / max(seen, 1))
        history.reg_value.append(reg_total / max(seen, 1))
        if test_data is not None:
            history.test_accuracy.append(evaluate(model, test_data))
        log.info(
            "epoch %d: loss %.4f, reg %.4f, test acc %s, %.1f s",
            epoch + 1,
            history.train_loss[-1],
            history.reg_value[-1],
            f"{history.test_accuracy[-1]:.4f}" if history.test_accuracy else "-",
            history.epoch_seconds[-1],
        )
        if on_epoch is not None:
            on_epoch(epoch, history)
    model.train(was_training)  # the caller's mode, as it was
    return history


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, train_data: ImageData, test_data: ImageData | None,
        *, device: str | torch.device | None = "auto", progress: bool = True, objective: Objective | None = None,
        on_epoch: Callable[[int, History], None] | None = None) -> tuple[ConvNODE, History]:
    """Build a model from its config (weights drawn with the config's seed) and `train` it on `device`."""
    torch.manual_seed(train_cfg.seed)
    model = ConvNODE(model_cfg)
    history = train(model, train_data, train_cfg, test_data=test_data, objective=objective, device=device,
                    progress=progress, on_epoch=on_epoch)
    return model, history
