"""Shared fixtures; the hypothesis profiles live in tests/profiles.py (loaded here)."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests import profiles  # noqa: F401  (registers and loads the hypothesis profile)

# one thread per xdist worker (`make test` runs two workers: no OpenMP spin-waits competing for the cores), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

REPO = Path(__file__).resolve().parent.parent


def _test_seed() -> int:
    """$CNODE_TEST_SEED, else a seed derived from the checked-out commit (new examples for every commit), else 0."""
    if os.environ.get("CNODE_TEST_SEED"):
        return int(os.environ["CNODE_TEST_SEED"])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 0
    return int(hashlib.sha256(head.encode()).hexdigest()[:8], 16)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Seed hypothesis (before its plugin reads --hypothesis-seed) unless the command line gave a seed."""
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(_test_seed())


def _seed_line(config: pytest.Config) -> str:
    return (f"hypothesis seed: {config.getoption('hypothesis_seed')} (reproduce: CNODE_TEST_SEED=<seed> make test, "
            f"profile {profiles.PROFILE})")


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Repeat the seed at the end: `-q` hides the header, and a red run must say how to reproduce it."""
    terminalreporter.write_line(_seed_line(config))


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
