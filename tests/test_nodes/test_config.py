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
    ({"reg_norm": "1"}, "reg_norm"),
    ({"certified_norm": "1"}, "certified_norm"),
    ({"reg_hinge": "cubic"}, "reg_hinge"),
    ({"reg_weight": 0.1}, "without a regularizer"),
    ({"reg": "weight", "reg_weight": 0.0}, "does nothing"),
    ({"reg": "jacobian", "reg_weight": -1.0}, "reg_weight"),
]


def test_a_regularizer_without_a_weight_gets_its_documented_default_and_legacy_configs_load():
    from nodes.config import DEFAULT_REG_WEIGHT

    for reg, weight in DEFAULT_REG_WEIGHT.items():
        cfg = TrainConfig(reg=reg, rho=1.0)
        assert cfg.reg_weight == weight > 0 and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().reg_weight == 0.0
    legacy = {k: v for k, v in TrainConfig(reg="weight", reg_weight=0.01).to_dict().items()
              if k not in ("reg_norm", "reg_hinge", "certified_norm", "certified_start", "init")}
    old = TrainConfig.from_dict({**legacy, "norm": "2"})  # a config written before the norms were split
    assert (old.reg_norm, old.certified_norm, old.reg_hinge, old.certified_start) == ("2", "2", "linear", 0.0)


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
