import gzip
import os
import stat

import pytest
import torch

from contraction.errors import CNodeError
from nodes.data import EMBEDDED_NOTE, batches, load_dataset, resolve_data_root


def test_embedded_subset_loads_without_any_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CNODE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    train = load_dataset("mnist-mini", "train")
    test = load_dataset("mnist-mini", "test")
    assert (len(train), len(test)) == (2000, 1000)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert set(train.labels.tolist()) == set(range(10))
    assert train.source == EMBEDDED_NOTE


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_reads_the_real_files_without_writing_to_the_root(real_data_root, name, folder):
    before = sorted(os.listdir(real_data_root / folder / "raw"))
    test = load_dataset(name, "test", data_root=real_data_root)
    train = load_dataset(name, "train", data_root=real_data_root, limit=100)
    assert len(test) == 10_000 and len(train) == 100
    assert test.labels.unique().tolist() == list(range(10))
    assert sorted(os.listdir(real_data_root / folder / "raw")) == before
    x, y = next(batches(test, 64))
    assert x.shape == (64, 1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_embedded_subset_matches_the_real_test_split(real_data_root):
    real = load_dataset("mnist", "test", data_root=real_data_root, limit=1000)
    mini = load_dataset("mnist-mini", "test")
    assert torch.equal(real.images, mini.images) and torch.equal(real.labels, mini.labels)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.numpy().tobytes())


def test_read_only_root_works(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (7,), dtype=torch.uint8)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    for p in [raw, raw.parent, tmp_path]:
        p.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        data = load_dataset("mnist", "test", data_root=tmp_path)
    finally:
        for p in [tmp_path, raw.parent, raw]:
            p.chmod(stat.S_IRWXU)
    assert torch.equal(data.images[:, 0], images) and torch.equal(data.labels, labels.long())


def test_truncated_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", torch.zeros(5, dtype=torch.uint8))
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(CNodeError, match="truncated"):
        load_dataset("mnist", "test", data_root=tmp_path)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("CNODE_DATA", raising=False)
    with pytest.raises(CNodeError) as info:
        load_dataset("fashion-mnist", "train", data_root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path.resolve()) in msg and "--data-root" in msg and "CNODE_DATA" in msg and "--download" in msg


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CNODE_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root("/x") == resolve_data_root("/x").__class__("/x")
    monkeypatch.delenv("CNODE_DATA")
    assert str(resolve_data_root(None)) == "data"
