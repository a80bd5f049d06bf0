"""ConvNODE classifiers: configs, data, model, training and checkpoints.

The model (config.py, field.py, block.py, classifier.py, init.py, regularize.py, device.py) sits below the bound
engine (certify.bounds), which reads it; training (train.py) sits above the engine, whose certified objectives it
uses; data.py, checkpoint.py and distributed.py serve both. The names below load on first use, so importing one
module of the package loads nothing else of it."""

from __future__ import annotations

from contraction import __version__
from contraction.lazy import lazy_exports

_EXPORTS = {
    "ConvNODE": "nodes.classifier",
    "ModelConfig": "nodes.config", "TrainConfig": "nodes.config",
    "ImageData": "nodes.data", "load_dataset": "nodes.data", "resolve_data_root": "nodes.data",
    "train": "nodes.train", "fit": "nodes.train", "evaluate": "nodes.train", "History": "nodes.train",
    "TrainingState": "nodes.train",
    "strip_training_state": "nodes.checkpoint", "save_model": "nodes.checkpoint", "load_model": "nodes.checkpoint",
    "load_checkpoint": "nodes.checkpoint", "model_from_checkpoint": "nodes.checkpoint",
    "trained_dataset": "nodes.checkpoint",
    "eval_mode": "nodes.device",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports("nodes", _EXPORTS, globals())
