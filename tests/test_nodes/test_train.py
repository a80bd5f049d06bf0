import pytest
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
    from certify.bounds.local import local_bounds
    from certify.bounds.unrolled import unroll
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


def test_train_builds_the_initialisation_and_regularizer_its_config_names():
    """The API path the CLI takes: `train(model, data, TrainConfig(reg=..., neg_init=True))` applies both."""
    from contraction.certificates import block_certificates

    data = load_dataset("mnist-mini", "train", limit=256)
    cfg = dict(dataset="mnist-mini", batch_size=64, lr=1e-2, certified_eps=0.0)
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2))
    train(model, data, TrainConfig(epochs=0, neg_init=True, **cfg), progress=False)
    assert float(model.block.fields[0].conv.weight[0, 0, 1, 1]) == -5.0  # neg_init applied, no epoch run

    def rate(reg: str, rho: float) -> tuple[float, float]:
        torch.manual_seed(0)
        m = ConvNODE(ModelConfig(channels=2, steps=2))
        extra = {} if reg == "none" else {"reg": reg, "rho": rho, "init": "default", "reg_target": "flow"}
        h = train(m, data, TrainConfig(epochs=2, neg_init=True, **cfg, **extra), progress=False)
        inf = [c for c in block_certificates(m.block.spec()) if c.norm == "inf"][0]
        return inf.rate, h.reg_value[-1]

    plain, reg_none = rate("none", 0.0)
    low, reg_low = rate("weight", 0.5)
    high, _ = rate("weight", 3.0)
    assert reg_none == 0.0 and reg_low > 0.0  # the config's regularizer ran, with its default weight
    assert plain < low < high  # and its target moved the certified rate: two rhos, two different models
    assert TrainConfig(reg="weight", rho=1.0).init == "contractive" and TrainConfig().init == "default"


def test_certified_objective_comes_from_the_config_registry(monkeypatch):
    from certify.bounds import objectives
    from contraction.errors import CNodeError
    from nodes.config import CERTIFIED_METHODS

    from nodes.config import REGULARIZERS
    from nodes.regularize import REGULARIZER_FACTORIES

    assert set(objectives.OBJECTIVES) == set(CERTIFIED_METHODS)  # every method the config accepts trains
    assert set(REGULARIZER_FACTORIES) == set(REGULARIZERS) - {"none"}
    data = load_dataset("mnist-mini", "train", limit=128)
    losses = {}
    for eps in (0.0, 0.05):
        torch.manual_seed(0)
        m = ConvNODE(ModelConfig(channels=2, steps=2))
        cfg = TrainConfig(dataset="mnist-mini", epochs=1, batch_size=64, certified_eps=eps, certified_start=0.0,
                          certified_warmup=0.0)
        losses[eps] = train(m, data, cfg, progress=False).train_loss[0]
    assert losses[0.05] > losses[0.0]  # the worst-case loss over the ball was mixed in
    monkeypatch.setattr(objectives, "OBJECTIVES", {})  # the loop looks the config's name up in the registry
    with pytest.raises(CNodeError, match="certified method must be one of"):
        train(ConvNODE(ModelConfig(channels=2, steps=1)), data, TrainConfig(dataset="mnist-mini", epochs=1),
              progress=False)


def test_default_recipe_trains_with_import_nodes_alone():
    """`TrainConfig()` (whose default recipe has a certified loss) trains in a fresh interpreter that imported only
    `nodes`: the objectives come with nodes.train, not from a side effect of `import certify`; and importing the
    engine does not load the application (certify.run, the CLI)."""
    import subprocess
    import sys

    code = ("import sys, torch, nodes\n"
            "assert 'certify.run' not in sys.modules and 'certify.cli' not in sys.modules, sorted(sys.modules)\n"
            "data = nodes.load_dataset('mnist-mini', 'train', limit=64)\n"
            "cfg = nodes.TrainConfig(dataset='mnist-mini', epochs=1, batch_size=32)\n"
            "assert cfg.certified_eps > 0\n"
            "h = nodes.train(nodes.ConvNODE(nodes.ModelConfig(channels=2, steps=1)), data, cfg, progress=False)\n"
            "print(h.certified[-1] == h.certified[-1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"  # the certified loss ran (the training bound's fraction is a number)


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("rho", [0.0, 0.5, 2.0])
def test_contractive_init_starts_certified_at_the_flows_target(norm, rho):
    from contraction.certificates import block_certificates
    from contraction.regularizers import weight_hinge
    from nodes.init import initialise_

    for seed, arch in ((0, "paper"), (1, "mini")):
        torch.manual_seed(seed)
        model = ConvNODE(ModelConfig.preset(arch, channels=6))
        initialise_(model, TrainConfig(reg="weight", rho=rho, reg_norm=norm, reg_target="flow"))
        convs = [f.conv for f in model.block.fields]
        assert float(weight_hinge(convs, model.activation, rho=rho, norm=norm, target="flow")) == 0.0
        cert = [c for c in block_certificates(model.block.spec()) if c.norm == norm][0]
        assert cert.certified and cert.rate >= rho


@pytest.mark.parametrize("method", ["ibp", "lipschitz"])
def test_robust_only_step_skips_the_clean_pass_with_the_same_loss_and_gradients(method, monkeypatch):
    """With certified_mix 0 and no regularizer the clean pass enters the loss with weight 0: the step skips it (the
    trajectory runs only where the objective needs the logits itself: once for the lipschitz margins, never for the
    box bounds) and its loss and every gradient equal the full computation's, 0 * CE + robust loss."""
    from certify.bounds.objectives import certified_objective
    from nodes.data import batches
    from nodes.train import _Step

    x, y = next(batches(load_dataset("mnist-mini", "train", limit=16), 16))
    torch.manual_seed(3)
    model = ConvNODE(ModelConfig(channels=2, steps=2))
    cfg = TrainConfig(dataset="mnist-mini", certified_eps=0.1, certified_method=method, certified_mix=0.0)
    objective = certified_objective(cfg)
    logits = model(x)
    reference = 0.0 * torch.nn.functional.cross_entropy(logits, y) + objective(model, x, y, logits, 0.05).loss
    params = list(model.parameters())
    expected = torch.autograd.grad(reference, params, allow_unused=True)

    calls = []
    trajectory = model.trajectory
    monkeypatch.setattr(model, "trajectory", lambda u: calls.append(len(u)) or trajectory(u))
    loss = _Step(model, cfg, None, objective)(x, y, 0.05)[0]
    assert len(calls) == (1 if method == "lipschitz" else 0)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    assert torch.allclose(loss, reference, rtol=1e-6, atol=0)
    for p, g, e in zip(params, got, expected):
        g = torch.zeros_like(p) if g is None else g
        e = torch.zeros_like(p) if e is None else e
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-7)
    calls.clear()
    mixed = TrainConfig(dataset="mnist-mini", certified_eps=0.1, certified_method=method, certified_mix=0.5)
    _Step(model, mixed, None, certified_objective(mixed))(x, y, 0.05)
    assert calls and calls[0] == len(y)  # a mix > 0 runs the clean pass
