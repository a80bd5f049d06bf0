import pytest
import torch

from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, save_model, train
from nodes.regularize import make_regularizer, negative_diagonal_init_


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """A small weight-regularized ConvNODE trained briefly on the embedded subset, saved to disk."""
    torch.manual_seed(0)
    cfg = ModelConfig(channels=4, steps=3)
    tcfg = TrainConfig(dataset="mnist-mini", epochs=2, lr=5e-3, batch_size=64, reg="weight", rho=0.5,
                       reg_target="flow", reg_weight=0.1, reg_hinge="linear", neg_init=True, init="default", certified_eps=0.0)
    model = negative_diagonal_init_(ConvNODE(cfg))
    train(model, load_dataset("mnist-mini", "train"), tcfg, regularizer=make_regularizer(tcfg), progress=False)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(path, model, train_config=tcfg)
    return model.eval(), path
