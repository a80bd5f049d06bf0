"""Checkpoints as plain dicts of tensors and primitives: atomic writes, `weights_only=True` loads, clear errors."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from contraction import __version__
from contraction.errors import CNodeError, CheckpointError
from nodes.classifier import ConvNODE
from nodes.config import ModelConfig, TrainConfig

__all__ = ["save_model", "strip_training_state", "load_model", "load_checkpoint", "model_from_checkpoint", "trained_dataset", "FORMAT", "FORMAT_VERSION", "library_version",
           "file_sha256"]

FORMAT = "contractive-nodes/convnode"
FORMAT_VERSION = 2
# version 1: one embedding conv (`embed.*`) and one linear readout (`readout.*`); version 2: `stem.0.*`, `head.0.*`
_V1_KEYS = {"embed.": "stem.0.", "readout.": "head.0."}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (a checkpoint's identity in reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_version() -> str:
    """The library's version, stored in every checkpoint."""
    return __version__


def save_model(
    path: str | os.PathLike[str],
    model: ConvNODE,
    *,
    train_config: TrainConfig | None = None,
    metrics: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write `model` with its configs and metrics to `path` atomically (temp file in the same folder + rename).

    `training_state` (nodes.train.TrainingState.to_dict()) makes the file resumable; `strip_training_state` drops
    it for shipping (it holds the optimizer's moments: about twice the weights)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if training_state is not None:
        payload["training_state"] = _to_cpu(training_state)
    return _write(path, payload)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def strip_training_state(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy the checkpoint `src` to `dst` without its training state (a model file for shipping)."""
    payload = load_checkpoint(src)
    payload.pop("training_state", None)
    return _write(Path(dst), payload)


def _write(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would leave the checkpoint unreadable to others
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint dict; any unreadable, truncated or foreign file raises CNodeError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt input
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a contractive-nodes checkpoint")
    if payload.get("format_version") == 1 and isinstance(payload.get("state_dict"), dict):
        payload = {**payload, "format_version": FORMAT_VERSION, "state_dict": _upgrade_v1(payload["state_dict"])}
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')!r} is not supported "
            f"(this library reads version {FORMAT_VERSION})"
        )
    for key in ("model_config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key}")
    return payload


def _upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a version-1 state dict's keys to version 2 (the model config reads unchanged: no stem = paper)."""
    out = {}
    for key, value in state.items():
        for old, new in _V1_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def load_model(path: str | os.PathLike[str]) -> ConvNODE:
    """The classifier stored at `path`, in eval mode: input [B, C, S, S] in [0, 1], output logits."""
    return model_from_checkpoint(load_checkpoint(path), path)


def trained_dataset(payload: dict[str, Any], default: str = "mnist") -> str:
    """The dataset a checkpoint was trained on (its train config), else `default`."""
    return (payload.get("train_config") or {}).get("dataset", default)


def model_from_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> ConvNODE:
    """The classifier of a payload returned by `load_checkpoint(path)`, in eval mode (`path` names errors)."""
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (CNodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from None
    model = ConvNODE(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not match the model config ({first[:160]})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckpointError(f"{path}: checkpoint holds non-finite weights")
    return model.eval()
