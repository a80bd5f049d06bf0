"""The `MODEL:EPS,EPS` arguments of the certification benches: each checkpoint's model, its test images and the eps
to run, and the PGD accuracy they are compared against (bench/tightness.py and bench/decide.py share them)."""

from typing import Iterator

import torch

from certify.bounds.attacks import is_adversarial, pgd
from nodes import ImageData, load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset
from nodes.classifier import ConvNODE


def checkpoint_runs(specs: list[str], limit: int, data_root: str | None
                    ) -> Iterator[tuple[str, ConvNODE, ImageData, float]]:
    """(file name, model, its first `limit` test images, eps) for every eps of every `checkpoint:eps,eps,...`."""
    for spec in specs:
        path, _, eps_list = spec.partition(":")
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        data = load_dataset(trained_dataset(payload), "test", data_root=data_root, limit=limit)
        for eps in (float(e) for e in eps_list.split(",")):
            yield path.rsplit("/", 1)[-1], model, data, eps


def pgd_accuracy(model: ConvNODE, data: ImageData, eps: float, steps: int) -> float:
    """Accuracy under a PGD-`steps` attack at Linf eps (an upper bound of the robust accuracy)."""
    x, y = data.tensors(0, len(data))
    adv = pgd(model, x, y, eps=eps, steps=steps)
    with torch.no_grad():
        return float((~is_adversarial(model, adv, y) & (model(x).argmax(1) == y)).double().mean())
