"""ConvNODE classifiers: configs, data, model, training and checkpoints."""

from contraction import __version__
from nodes.checkpoint import (load_checkpoint, load_model, model_from_checkpoint, save_model, strip_training_state,
                              trained_dataset)
from nodes.classifier import ConvNODE
from nodes.config import ModelConfig, TrainConfig
from nodes.data import ImageData, load_dataset, resolve_data_root
from nodes.train import History, TrainingState, eval_mode, evaluate, fit, train

__all__ = [
    "__version__",
    "ConvNODE",
    "ModelConfig",
    "TrainConfig",
    "ImageData",
    "load_dataset",
    "resolve_data_root",
    "train",
    "fit",
    "evaluate",
    "History",
    "TrainingState",
    "strip_training_state",
    "save_model",
    "load_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "trained_dataset",
    "eval_mode",
]
