"""Shared fixtures; the hypothesis profiles live in tests/profiles.py (loaded here)."""

import os
from pathlib import Path

import pytest
import torch

from tests import profiles  # noqa: F401  (registers and loads the hypothesis profile)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """The real MNIST/FashionMNIST root: $CNODE_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("CNODE_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (candidate / "MNIST" / "raw").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real MNIST files not found (set CNODE_DATA to a root holding MNIST/raw/*.gz)")
    return root
