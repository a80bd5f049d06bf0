import pytest

from contraction.errors import CNodeError
from nodes.config import ModelConfig, TrainConfig

BAD_MODEL = [
    ({"channels": 0}, "channels"),
    ({"channels": 2.5}, "channels"),
    ({"activation": "relu"}, "activation"),
    ({"slope": 0.0}, "slope"),
    ({"slope": float("nan")}, "slope"),
    ({"padding": "reflect"}, "padding"),
    ({"solver": "adams"}, "solver"),
    ({"T": -1.0}, "T"),
    ({"T": float("inf")}, "T"),
    ({"steps": 0}, "steps"),
    ({"shared_weights": "yes"}, "shared_weights"),
    ({"readout": "mlp"}, "readout"),
    ({"kernel_size": 4}, "odd"),
    ({"num_classes": 1}, "num_classes"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD_MODEL)
def test_bad_model_config_is_rejected_with_a_clear_message(kwargs, fragment):
    with pytest.raises(CNodeError, match=fragment):
        ModelConfig(**kwargs)


BAD_TRAIN = [
    ({"dataset": "cifar10"}, "dataset"),
    ({"epochs": -1}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr_decay": 1.5}, "lr_decay"),
    ({"reg": "l2"}, "reg"),
    ({"rho": -0.1}, "rho"),
    ({"norm": "1"}, "norm"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD_TRAIN)
def test_bad_train_config_is_rejected(kwargs, fragment):
    with pytest.raises(CNodeError, match=fragment):
        TrainConfig(**kwargs)


def test_config_round_trip_and_unknown_fields():
    cfg = ModelConfig(channels=4, padding="circular", solver="rk4", steps=3, shared_weights=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CNodeError, match="unknown fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})
    assert cfg.h == pytest.approx(1.0 / 3)
    assert cfg.num_convs == 1 and ModelConfig(steps=4).num_convs == 4
