"""Devices: resolution and one-line errors on any machine; the CUDA paths where a GPU is present."""

import pytest
import torch

from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, train
from nodes.device import module_device, resolve_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_auto_and_cpu_resolve_and_bad_devices_are_one_line_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("tpu", "cuda:x", 3):
        with pytest.raises(CNodeError, match="device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(CNodeError, match="no CUDA"):
            resolve_device("cuda")


def test_cli_refuses_cuda_without_one(tmp_path, capsys):
    from certify.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--dataset", "mnist-mini", "--epochs", "1", "--device", "cuda", "--out",
                 str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err


@CUDA
def test_training_evaluation_and_certification_on_cuda_match_the_cpu():
    from certify import certify_model
    from certify.bounds.attacks import pgd
    from certify.noise import gaussian_noise

    data = load_dataset("mnist-mini", "train", limit=256)
    test = load_dataset("mnist-mini", "test", limit=100)
    cfg = TrainConfig(dataset="mnist-mini", epochs=1, batch_size=64, certified_eps=0.02, certified_start=0.0)
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset("mini", channels=4, head=(16,)))
    train(model, data, cfg, device="cuda", progress=False)
    assert module_device(model).type == "cuda"
    on_gpu = certify_model(model, test, eps=0.01, bound="auto")
    on_cpu = certify_model(model.cpu(), test, eps=0.01, bound="auto")
    assert torch.equal(on_gpu.predictions, on_cpu.predictions)
    assert torch.equal(on_gpu.certified_mask, on_cpu.certified_mask)
    model.cuda()
    x, y = (t.cuda() for t in test.tensors(0, 32))
    assert pgd(model, x, y, eps=0.05, steps=3).device.type == "cuda"
    assert gaussian_noise(x, 0.1).device.type == "cuda"
