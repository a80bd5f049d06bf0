"""Certified training: the certified loss bounds the true worst-case loss; training for it raises certified accuracy."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tests.profiles import budget
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.cli import main as cnode_main
from certify.bounds.tight import certified_at
from certify.bounds.lipschitz import best_network_bound
from certify.bounds.radius import certified_radii
from certify.bounds.objectives import (LIPSCHITZ_LOSSES, bottom_logit, certified_loss, certified_margins,
                                       certified_objective, crown_beta,
                              lipschitz_constants)
from certify.bounds.unrolled import unroll
from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, train
from nodes.checkpoint import load_checkpoint
from contraction.runge_kutta import FIXED_STEP
from nodes.config import CERTIFIED_METHODS
from nodes.train import eps_schedule, ramp
from tests.strategies import seeds


def _model(seed, padding, solver="euler"):
    torch.manual_seed(seed)
    return ConvNODE(ModelConfig(channels=2, steps=2, image_size=6, padding=padding, num_classes=3,
                                solver=solver)).double()


@settings(max_examples=budget(10), deadline=None)
@given(seeds, st.sampled_from(["zeros", "circular"]), st.sampled_from(["inf", "2"]),
       st.sampled_from(CERTIFIED_METHODS), st.floats(0.0, 1.0), st.sampled_from(FIXED_STEP))
def test_certified_loss_bounds_the_worst_case_loss(seed, padding, norm, method, beta, solver):
    """Every certified loss, every fixed-step solver: the bound of the loss is above the loss at PGD and random
    points of the ball."""
    model = _model(seed, padding, solver)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=gen)
    eps = 0.1 if norm == "inf" else 0.4
    bound = F.cross_entropy(-certified_margins(model, u, y, eps, norm, method, beta=beta), y, reduction="none")
    adv = pgd(model, u, y, eps=eps, norm=norm, steps=30, loss="ce")
    d = torch.rand(32, *u.shape, generator=gen, dtype=u.dtype) * 2 - 1
    if norm == "2":
        d = d / d.flatten(2).norm(dim=2)[..., None, None, None]
    with torch.no_grad():
        for v in [adv] + [(u + eps * di).clamp(0, 1) for di in d]:
            assert (F.cross_entropy(model(v), y, reduction="none") <= bound + 1e-9).all()
        # not vacuous: at eps -> 0 the certified loss is the clean loss
        tiny = certified_loss(model, u, y, 1e-9, norm, method, beta=beta)
        assert float(tiny) == pytest.approx(float(F.cross_entropy(model(u), y)), abs=1e-6)


@settings(max_examples=budget(6), deadline=None)
@given(seeds, st.sampled_from(["zeros", "circular"]), st.sampled_from(["inf", "2"]), st.sampled_from(FIXED_STEP))
def test_training_constants_bound_the_network_jacobian(seed, padding, norm, solver):
    model = _model(seed, padding, solver)
    L = lipschitz_constants(model, norm).detach()
    u = torch.rand(3, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 6, 6))[0], u[i])
        diff = J[:, None, :] - J[None, :, :]
        dual = diff.abs().sum(-1) if norm == "inf" else diff.norm(dim=-1)
        assert (dual <= L * (1 + 1e-9) + 1e-12).all()


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_certified_loss_has_gradients_for_every_weight(solver):
    model = _model(0, "zeros", solver).float()
    u, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    for method in CERTIFIED_METHODS:
        model.zero_grad()
        certified_loss(model, u, y, 0.05, "inf", method, beta=0.5).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (method, name)


def test_eps_schedule_warms_up_linearly_then_holds():
    cfg = TrainConfig(certified_eps=0.1, certified_warmup=2.0, certified_start=0.0, epochs=3)
    values = [eps_schedule(cfg, e, b, 10) for e in range(3) for b in range(10)]
    assert values[0] == 0.0 and values == sorted(values) and values[-1] == pytest.approx(0.1)
    assert values[10] == pytest.approx(0.05)
    assert eps_schedule(TrainConfig(certified_eps=0.1, certified_warmup=0.0, certified_start=0.0), 0, 0, 10) == 0.1
    late = TrainConfig(certified_eps=0.1, certified_warmup=2.0, certified_start=1.0)
    ramp = [eps_schedule(late, e, b, 10) for e in range(4) for b in range(10)]
    assert ramp[:11] == [0.0] * 11 and ramp[12] > ramp[11] > 0  # clean epoch first, then the ramp
    assert abs(ramp[20] - 0.05) < 1e-12 and ramp[-1] == 0.1


@pytest.fixture(scope="module")
def plain_batch_model():
    """A tiny ConvNODE fitted plainly to one fixed batch: accurate, but with little certified."""
    torch.manual_seed(0)
    data = load_dataset("mnist-mini", "train", limit=128)
    model = ConvNODE(ModelConfig(channels=4, steps=3))
    train(model, data, TrainConfig(dataset="mnist-mini", epochs=40, batch_size=128, lr=3e-2, lr_decay=1.0,
                                     certified_eps=0.0),
          progress=False)
    return model, data


def _finetune(model, data, method, eps, **extra):
    model = copy.deepcopy(model)
    cfg = TrainConfig(dataset="mnist-mini", epochs=20, batch_size=128, lr=1e-2, lr_decay=1.0, certified_eps=eps,
                      certified_method=method, certified_warmup=0.0, certified_start=0.0, **extra)
    train(model, data, cfg, objective=certified_objective(cfg), progress=False)
    return model


def test_local_training_raises_certified_accuracy_on_a_fixed_batch(plain_batch_model):
    model, data = plain_batch_model
    x, y = data.tensors(0, 128)

    def certified(m) -> int:
        with torch.no_grad():
            return int(certified_at(unroll(m), x.double(), y, 0.05, "inf", "crown").sum())

    before, after = certified(model), certified(_finetune(model, data, "local", 0.05))
    assert after >= before + 15, (before, after)


def test_lipschitz_training_raises_the_global_radii_on_a_fixed_batch(plain_batch_model):
    model, data = plain_batch_model
    x, y = data.tensors(0, 128)

    def mean_radius(m) -> float:
        with torch.no_grad():
            return float(certified_radii(m(x), y, best_network_bound(m, "inf").constants()).mean())

    before, after = mean_radius(model), mean_radius(_finetune(model, data, "lipschitz", 1e-4))
    assert after >= 2 * before > 0, (before, after)
    for loss, lam in (("gloro", 0.0), ("trades", 2.0)):
        tuned = _finetune(model, data, "lipschitz", 1e-4, lipschitz_loss=loss, trades_lambda=lam)
        assert mean_radius(tuned) >= 2 * before, (loss, before, mean_radius(tuned))


@settings(max_examples=budget(30), deadline=None)
@given(seeds, st.integers(2, 6), st.floats(0.0, 3.0))
def test_gloro_bottom_class_and_losses_match_their_definitions(seed, k, scale):
    """The bottom class is the brute-force max over j != c of z_j + shift_cj (c predicted), above z_c exactly when a
    Lipschitz margin of c is negative; 'gloro' is CE over the K + 1 logits (never below the clean CE), 'trades' the
    clean CE plus lambda x the KL divergence of the softmax with the bottom class from the clean one, computed
    explicitly; 'margin' is CE of the negated certified margins."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(7, k, generator=g, dtype=torch.float64)
    shift = torch.rand(k, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (7,), generator=g)
    c = z.argmax(1)
    brute = torch.tensor([max(float(z[b, j] + shift[c[b], j]) for j in range(k) if j != c[b]) for b in range(7)],
                         dtype=torch.float64)
    bot = bottom_logit(z, shift)
    assert torch.allclose(bot, brute)
    open_ = torch.tensor([any(float(z[b, c[b]] - z[b, j] - shift[c[b], j]) < 0 for j in range(k) if j != c[b])
                          for b in range(7)])
    assert torch.equal(bot > z.gather(1, c[:, None])[:, 0], open_)
    clean = F.cross_entropy(z, y)
    gloro = LIPSCHITZ_LOSSES["gloro"](z, y, shift, 0.0)
    assert torch.isclose(gloro, F.cross_entropy(torch.cat([z, brute[:, None]], 1), y)) and gloro >= clean - 1e-12
    p = torch.cat([F.softmax(z, 1), torch.zeros(7, 1, dtype=z.dtype)], 1)
    q = F.softmax(torch.cat([z, brute[:, None]], 1), 1)
    kl = (p[:, :k] * (p[:, :k].log() - q[:, :k].log())).sum(1).mean()
    assert torch.isclose(LIPSCHITZ_LOSSES["trades"](z, y, shift, 1.5), clean + 1.5 * kl)
    m = (z.gather(1, y[:, None]) - z - shift[y]).masked_fill(F.one_hot(y, k).bool(), 0.0)
    assert torch.isclose(LIPSCHITZ_LOSSES["margin"](z, y, shift, 0.0), F.cross_entropy(-m, y))


def test_lipschitz_losses_count_the_same_certified_inputs_and_refuse_other_methods():
    """Every Lipschitz loss reports the inputs whose Lipschitz margins are all > 0 at train_eps_factor x eps; 'margin'
    is the loss of certified_margins; a Lipschitz loss with a box method, and lambda without 'trades', are refused."""
    from contraction.errors import CNodeError

    model = _model(3, "circular").float()
    u, y = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    m = certified_margins(model, u, y, 0.02, "2", "lipschitz")
    expected = (m.masked_fill(F.one_hot(y, 3).bool(), torch.inf) > 0).all(1)
    for loss, lam in (("margin", 0.0), ("gloro", 0.0), ("trades", 1.0)):
        cfg = TrainConfig(certified_eps=0.01, certified_method="lipschitz", certified_norm="2", train_eps_factor=2.0,
                          lipschitz_loss=loss, trades_lambda=lam)
        out = certified_objective(cfg)(model, u, y, model(u), 0.01)
        assert torch.equal(out.certified, expected), loss
        if loss == "margin":
            assert torch.isclose(out.loss, F.cross_entropy(-m, y))
    for bad in (dict(certified_method="ibp", lipschitz_loss="gloro"),
                dict(certified_method="lipschitz", lipschitz_loss="trades"),
                dict(certified_method="lipschitz", trades_lambda=1.0)):
        with pytest.raises(CNodeError, match="lipschitz_loss|trades_lambda"):
            TrainConfig(certified_eps=0.1, **bad)


def test_log_ramp_starts_at_one_percent_rises_fast_and_ends_at_one():
    xs = [i / 1000 for i in range(1001)]
    ys = [ramp(x, "log") for x in xs]
    assert ys[0] == pytest.approx(0.01) and ys[-1] == pytest.approx(1.0) and ys == sorted(ys)
    assert all(y >= x for x, y in zip(xs, ys))  # concave from 0.01 to 1: above the line
    assert ys[250] > 0.3 and ramp(2.0, "log") == pytest.approx(1.0)


def test_cnode_train_certified_flags(tmp_path, capsys):
    out = tmp_path / "cert.pt"
    argv = ["train", "--dataset", "mnist-mini", "--epochs", "1", "--train-limit", "128", "--test-limit", "64",
            "--channels", "2", "--steps", "2", "--certified-eps", "0.05", "--certified-method", "local",
            "--quiet", "--out", str(out)]
    assert cnode_main(argv) == 0
    cfg = load_checkpoint(out)["train_config"]
    assert cfg["certified_eps"] == 0.05 and cfg["certified_method"] == "local"
    assert cnode_main(argv[:-2] + ["--certified-mix", "1.5", "--out", str(out)]) == 2


def test_smooth_ramp_starts_flat_joins_the_line_with_a_continuous_slope_and_ends_at_one():
    xs = [i / 1000 for i in range(1001)]
    ys = [ramp(x, "smooth") for x in xs]
    assert ys[0] == 0.0 and ys[-1] == pytest.approx(1.0) and ys == sorted(ys)
    assert ramp(0.5, "linear") == 0.5 and ramp(1.7, "smooth") == 1.0 and ramp(-1, "smooth") == 0.0
    assert ys[100] < 0.1 * 0.1  # polynomial start: far below the line early on
    h = 1e-6
    left = (ramp(0.25, "smooth") - ramp(0.25 - h, "smooth")) / h
    right = (ramp(0.25 + h, "smooth") - ramp(0.25, "smooth")) / h
    assert left == pytest.approx(right, rel=1e-4)
    cfg = TrainConfig(certified_eps=0.2, certified_warmup=4.0, certified_start=1.0, eps_ramp="smooth")
    assert eps_schedule(cfg, 3, 0, 10) == pytest.approx(0.2 * ramp(0.5, "smooth"))


def test_objective_trains_at_the_factor_and_counts_inputs_its_bound_proves():
    """The objective bounds at train_eps_factor x eps; `certified` is exactly the inputs whose margins are all > 0;
    crown-ibp's beta falls from 1 at eps 0 to 0 at the training eps."""
    model = _model(1, "zeros").float()
    u, y = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cfg = TrainConfig(certified_eps=0.02, certified_method="ibp", train_eps_factor=2.0)
    out = certified_objective(cfg)(model, u, y, model(u), 0.02)
    m = certified_margins(model, u, y, 0.04, "inf", "ibp")
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(-m, y).detach()), rel=1e-6)
    expected = (m.masked_fill(F.one_hot(y, 3).bool(), torch.inf) > 0).all(1)
    assert torch.equal(out.certified, expected)
    assert crown_beta(0.0, 0.3) == 1.0 and crown_beta(0.15, 0.3) == pytest.approx(0.5) and crown_beta(0.3, 0.3) == 0
    mtl = certified_objective(TrainConfig(certified_eps=0.02, certified_method="mtl-ibp", mtl_alpha=0.3))
    adv_part = float(mtl(model, u, y, model(u), 0.02).loss.detach()) - 0.3 * float(F.cross_entropy(
        -certified_margins(model, u, y, 0.02, "inf", "ibp"), y).detach())
    assert adv_part >= 0.7 * float(F.cross_entropy(model(u), y)) - 1e-6  # the PGD point is no better than u


def test_warmup_regularizer_terms_and_their_fade_over_the_ramp():
    """The tightness term is relu(tau - r0 / r) / tau per layer; balanced active/inactive neurons pay no balance term,
    a layer of active neurons only pays 2; the certified loss carries warmup_reg x (1 - eps / eps_train) x the terms,
    nothing at the ramp's end."""
    from certify.bounds.local import LayerBounds
    from certify.bounds.objectives import warmup_regularizer
    from contraction.errors import CNodeError

    lo_u, hi_u = torch.zeros(2, 4), torch.full((2, 4), 0.2)  # input half-width r0 = 0.1
    c = torch.tensor([[2.0, -2.0, 3.0, -3.0]] * 2)
    for r, tight in ((0.1, 0.0), (1.0, 0.8), (0.25, 0.2)):  # r0 / r = 1, 0.1, 0.4
        balanced = LayerBounds([], [(c - r, c + r)], lo_u, hi_u)
        assert torch.isclose(warmup_regularizer(balanced), torch.tensor(tight)), r
    active = LayerBounds([], [(c.abs() - 0.1, c.abs() + 0.1)], lo_u, hi_u)
    assert torch.isclose(warmup_regularizer(active), torch.tensor(2.0))

    data = load_dataset("mnist-mini", "train", limit=16)
    x, y = data.tensors(0, 16)
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2))
    base = dict(dataset="mnist-mini", certified_eps=0.1, certified_method="ibp", train_eps_factor=2.0)
    plain = certified_objective(TrainConfig(**base))
    warm = certified_objective(TrainConfig(**base, warmup_reg=0.5))
    net = unroll(model, dtype=None, detach=False)
    from certify.bounds.local import ibp_bounds
    for eps in (0.0125, 0.05, 0.1):
        extra = 0.5 * (1 - eps / 0.1) * warmup_regularizer(ibp_bounds(net, x, 2 * eps, "inf"))
        got = warm(model, x, y, model(x), eps).loss - plain(model, x, y, model(x), eps).loss
        assert torch.isclose(got, extra, rtol=1e-5, atol=1e-7), eps
    assert float(extra.detach()) == 0.0
    with pytest.raises(CNodeError, match="warmup_reg"):
        TrainConfig(dataset="mnist-mini", certified_method="lipschitz", certified_eps=0.1, warmup_reg=0.5)
