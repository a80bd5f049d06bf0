"""Devices: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`, with one-line errors."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from contraction.errors import CNodeError

__all__ = ["DEVICES", "resolve_device", "module_device", "place", "exact_float32", "eval_mode"]

DEVICES = ("auto", "cpu", "cuda")
"""The choices of `--device` (`cuda:N` is accepted too)."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for `spec`: None or 'auto' -> CUDA if available else CPU; 'cuda' without CUDA is an error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(spec, str):
        raise CNodeError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CNodeError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise CNodeError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CNodeError(f"device {spec!r} asked for, but PyTorch sees no CUDA device here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CNodeError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def place(module: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Move `module` to `device` ('auto', 'cpu', 'cuda[:N]'; None leaves it where it is) and return where it is."""
    if device is not None:
        module.to(resolve_device(device))
    return module_device(module)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 arithmetic with sum-of-products convolutions on CUDA inside the block, the previous settings
    restored after: TF32 off for matmuls and convolutions (PyTorch's default lets cuDNN round float32 inputs to TF32's
    10-bit mantissa, which moves a ConvNODE's logits by ~2e-4 relative), and cuDNN off altogether, so no FFT or
    Winograd algorithm runs: PyTorch's own CUDA convolutions are im2col + GEMM, sums of products, the arithmetic the
    derived float32 error bound models (contraction.floats). A no-op for the CPU's arithmetic (oneDNN's direct
    convolutions and BLAS GEMMs are sums of products)."""
    conv, mm, cudnn = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                       torch.backends.cudnn.enabled)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if torch.cuda.is_available():
        torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = mm
        torch.backends.cudnn.enabled = cudnn


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `model` in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
