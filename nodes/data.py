"""MNIST / FashionMNIST in torchvision's folder layout (ROOT/MNIST/raw/*.gz), read in place, plus an embedded subset.

The raw IDX files are read directly (gzipped or extracted) so that a read-only data root works: nothing is
written next to the data. `download=True` delegates to torchvision's dataset classes, which fetch into the root.
"""

from __future__ import annotations

import gzip
import logging
import os
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from contraction.errors import DataError

__all__ = ["ImageData", "load_dataset", "resolve_data_root", "batches", "EMBEDDED_NOTE", "DATA_ENV"]

log = logging.getLogger(__name__)

DATA_ENV = "CNODE_DATA"
EMBEDDED_NOTE = "embedded MNIST subset (2,000 train / first 1,000 test images; see nodes/embedded/README.md)"

# dataset name -> torchvision class name (the folder under the root)
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class ImageData:
    """Images as uint8 [N, 1, 28, 28] (scaled to [0,1] per batch) with int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int = 0, stop: int | None = None) -> "ImageData":
        """The images [start:stop] as a dataset of their own (views, no copy)."""
        return dataclasses.replace(self, images=self.images[start:stop], labels=self.labels[start:stop])

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] and labels of the slice [start:stop]."""
        return self.images[start:stop].float().div_(255.0), self.labels[start:stop]


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the explicit argument, else $CNODE_DATA, else ./data."""
    if data_root:
        return Path(data_root)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path("data")


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise DataError(f"{path}: truncated IDX file (expected {count} bytes of data, found {len(data) - offset})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _FOLDERS[name])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"download of {name} into {root} failed: {exc}") from None


def _load_embedded(split: str) -> ImageData:
    ref = resources.files("nodes.embedded").joinpath("mnist_subset.npz")
    with ref.open("rb") as fh, np.load(fh) as npz:
        images = torch.from_numpy(np.array(npz[f"{split}_images"])).unsqueeze(1)
        labels = torch.from_numpy(np.array(npz[f"{split}_labels"]).astype(np.int64))
    return ImageData(images, labels, "mnist-mini", split, EMBEDDED_NOTE)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    limit: int | None = None,
) -> ImageData:
    """Load a split of `mnist`, `fashion-mnist` or the embedded `mnist-mini`; `limit` keeps the first N."""
    if split not in _FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist-mini":
        data = _load_embedded(split)
    elif name in _FOLDERS:
        root = resolve_data_root(data_root)
        raw = root / _FOLDERS[name] / "raw"
        img_stem, lab_stem = _FILES[split]
        if download and (_find(raw, img_stem) is None or _find(raw, lab_stem) is None):
            _download(name, root)
        img_path, lab_path = _find(raw, img_stem), _find(raw, lab_stem)
        if img_path is None or lab_path is None:
            raise DataError(
                f"{name} {split} files not found in {raw.resolve()} (looked for {img_stem}[.gz]); "
                f"pass --data-root DIR or set {DATA_ENV}=DIR (DIR/{_FOLDERS[name]}/raw/*.gz), "
                "add --download to fetch them, or use --dataset mnist-mini (embedded subset)"
            )
        images = _read_idx(img_path)
        labels = _read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{raw}: image and label files do not match ({images.shape} vs {labels.shape})")
        data = ImageData(
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            name,
            split,
            str(raw),
        )
    else:
        raise DataError(f"unknown dataset {name!r}; expected one of ['mnist', 'fashion-mnist', 'mnist-mini']")
    if limit:
        if limit < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        data = data.slice(0, limit)
    return data


def batches(
    data: ImageData, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images in [0,1], labels) mini-batches; shuffled with `generator` when asked."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield data.images[idx].float().div_(255.0), data.labels[idx]
