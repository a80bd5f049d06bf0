import torch

from nodes import ConvNODE, ModelConfig, TrainConfig, evaluate, load_dataset, train


def test_short_training_beats_chance_by_a_wide_margin():
    train_data = load_dataset("mnist-mini", "train")
    test_data = load_dataset("mnist-mini", "test", limit=500)
    cfg = ModelConfig(channels=4, steps=2)
    torch.manual_seed(0)
    model = ConvNODE(cfg)
    history = train(model, train_data, TrainConfig(dataset="mnist-mini", epochs=3, lr=1e-2, batch_size=32,
                                                           certified_eps=0.0),
                    test_data=test_data, progress=False)
    assert len(history.test_accuracy) == 3 and len(history.epoch_seconds) == 3
    assert history.test_accuracy[-1] > 0.6  # chance is 0.1; this run reaches about 0.85
    assert evaluate(model, test_data) == history.test_accuracy[-1]


def test_regularizer_hook_is_called_and_added(monkeypatch):
    data = load_dataset("mnist-mini", "train", limit=64)
    calls = []

    def reg(model, states):
        calls.append(len(states))
        return sum(p.pow(2).sum() for p in model.block.parameters())

    model = ConvNODE(ModelConfig(channels=2, steps=3))
    history = train(model, data, TrainConfig(dataset="mnist-mini", epochs=1, batch_size=32, reg="weight",
                                              reg_weight=0.1, certified_eps=0.0), regularizer=reg, progress=False)
    assert calls == [4, 4] and history.reg_value[0] > 0


def test_evaluate_restores_the_callers_mode():
    data = load_dataset("mnist-mini", "test", limit=10)
    model = ConvNODE(ModelConfig(channels=2, steps=1)).train()
    evaluate(model, data)
    assert model.training


def test_ibp_init_keeps_input_box_widths_at_the_start_and_the_config_applies_it():
    from certify.local import local_bounds
    from certify.unrolled import unroll
    from nodes.init import initialise_

    x, _ = load_dataset("mnist-mini", "test").tensors(0, 20)
    widths = {}
    for init in ("default", "ibp"):
        torch.manual_seed(0)
        model = initialise_(ConvNODE(ModelConfig.preset("mini")), TrainConfig(init=init, neg_init=True))
        centre = model.block.fields[0].conv.weight[0, 0, 1, 1]
        assert float(centre) == -5.0  # neg_init after the init
        b = local_bounds(unroll(model), x.double(), 0.01, "inf")
        widths[init] = float((b.hi - b.lo).mean())
        if init == "ibp":
            assert all(float(m.bias.abs().max()) == 0 for m in model.head)
    # the box reaching the head: wide from PyTorch's init, about the input's 0.02 from the interval-preserving one
    assert widths["ibp"] < 0.1 < widths["default"]
