import os
import pickle

import pytest
import torch

from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig, TrainConfig, load_checkpoint, load_model, save_model
from nodes.checkpoint import FORMAT, FORMAT_VERSION


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2, image_size=8, padding="circular"))
    path = save_model(tmp_path / "m.pt", model, train_config=TrainConfig(epochs=1), metrics={"test_accuracy": 0.5})
    return model, path


def test_round_trip_gives_identical_logits_and_eval_mode(saved):
    model, path = saved
    u = torch.rand(3, 1, 8, 8)
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(u), model.eval()(u), rtol=0, atol=0)
    payload = torch.load(path, weights_only=True)  # plain data, no pickled classes
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["train_config"]["epochs"] == 1 and payload["metrics"]["test_accuracy"] == 0.5
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _bad_files(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01not a checkpoint" * 50)
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "format_version": 99}, tmp_path / "future.pt")
    bad_cfg = {**payload, "model_config": {**payload["model_config"], "channels": -1}}
    torch.save(bad_cfg, tmp_path / "badconfig.pt")
    sd = dict(payload["state_dict"])
    sd.pop(next(iter(sd)))
    torch.save({**payload, "state_dict": sd}, tmp_path / "missingkey.pt")
    nan_sd = {k: torch.full_like(v, float("nan")) for k, v in payload["state_dict"].items()}
    torch.save({**payload, "state_dict": nan_sd}, tmp_path / "nan.pt")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump(Boom(), fh)
    torch.save({"x": Boom()}, tmp_path / "evil_torch.pt")
    return ["truncated", "garbage", "empty", "foreign", "tensor", "future", "badconfig", "missingkey", "nan",
            "evil", "evil_torch", "missing"]


def test_bad_checkpoints_give_one_line_errors_naming_the_file(saved, tmp_path, monkeypatch):
    _, good = saved
    monkeypatch.chdir(tmp_path)
    for name in _bad_files(tmp_path, good):
        path = tmp_path / f"{name}.pt"
        with pytest.raises(CNodeError) as info:
            load_model(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (name, message)
    assert not (tmp_path / "PWNED").exists()


def test_load_checkpoint_returns_metadata(saved):
    _, path = saved
    payload = load_checkpoint(path)
    assert payload["model_config"]["padding"] == "circular"


def test_a_version_1_checkpoint_loads_as_the_paper_architecture():
    """examples/models/ holds checkpoints written before the stem/head layout (format 1: embed.*, readout.*)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "models" / "mnist_weightreg.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and "embed.weight" in raw["state_dict"]
    model = load_model(path)
    assert model.config.stem == ((model.config.channels, 3, 1, 1),) and model.config.head == ()
    torch.testing.assert_close(model.stem[0].weight, raw["state_dict"]["embed.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.head[0].weight, raw["state_dict"]["readout.weight"], rtol=0, atol=0)
    u = torch.rand(2, 1, 28, 28)
    x = model.activation(torch.nn.functional.conv2d(u, raw["state_dict"]["embed.weight"], raw["state_dict"]["embed.bias"],
                                                    padding=1))
    assert model.config.padding == "zeros"
    torch.testing.assert_close(model.embedding(u), x)


def test_atomic_writes_get_the_umasks_permissions_not_the_temp_files(tmp_path):
    import os
    import stat

    from nodes import ConvNODE, ModelConfig, save_model

    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.pt", ConvNODE(ModelConfig(channels=2, steps=1)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
