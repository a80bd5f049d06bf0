"""The bound engine's layer rules against brute force on random small models of every layer type: each layer's
Lipschitz factor vs its dense Jacobian, adjoints vs explicit matrices, the whole-network constants vs the dense
Jacobian of the network, global <= boxes <= crown on the same inputs, and the presets' shapes."""

import pytest
import torch
from tests.profiles import budget
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from certify.bounds.layers import Act, Affine, Box, Conv, EulerStep, Normalize
from certify.bounds.lipschitz import layer_constants, network_bounds
from certify.bounds.local import box_margins, ibp_bounds
from certify.bounds.radius import certified_radii
from certify.run import certify_model
from nodes.data import ImageData
from certify.bounds.tight import stage_margins
from certify.bounds.unrolled import unroll
from contraction.measures import norm_2, norm_inf
from nodes import ConvNODE, ModelConfig
from tests.strategies import model_configs, random_model, seeds


def local_margins(net, u, y, eps, norm):
    """The local stage's margins (certify.bounds.tight.stage_margins)."""
    return stage_margins("local", net, u, y, eps, norm)[0]


def crown_margins(net, u, y, eps, norm):
    """The crown stage's margins (the larger of CROWN-IBP's and the boxes')."""
    return stage_margins("crown", net, u, y, eps, norm)[0]


def _jacobian(fn, x):
    return torch.autograd.functional.jacobian(lambda v: fn(v.view(1, *x.shape[1:])).flatten(), x[0].flatten())


@settings(max_examples=budget(30), deadline=None)
@given(model_configs(), seeds)
def test_every_layer_factor_bounds_its_dense_jacobian_and_adjoints_are_transposes(cfg, seed):
    model = random_model(cfg, seed)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    for layer in net.layers:
        J = _jacobian(layer, x)
        for norm, measure in (("inf", norm_inf), ("2", norm_2)):
            assert float(measure(J)) <= float(layer.lipschitz(norm)) * (1 + 1e-9) + 1e-12, (layer, norm)
        if isinstance(layer, Affine):
            y = torch.randn(1, *layer(x).shape[1:], generator=gen, dtype=torch.float64)
            torch.testing.assert_close(layer.adjoint(y).flatten(), J.T @ y.flatten())
            if isinstance(layer, Conv):  # Linf factor is exact: the largest absolute row sum
                assert float(layer.lipschitz("inf")) == pytest.approx(float(norm_inf(J)))
        x = layer(x)


@settings(max_examples=budget(20), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_network_constants_bound_the_dense_jacobian_of_the_network(cfg, seed, norm):
    model = random_model(cfg, seed, scale=0.5)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    bounds = network_bounds(model, norm)
    assert bounds, "Euler models always have a weight bound"
    constants = [nb.constants() for nb in bounds] + [layer_constants(unroll(model), norm)]
    for i in range(u.shape[0]):
        J = _jacobian(model, u[i:i + 1])
        diff = J[:, None, :] - J[None, :, :]  # rows of z_y - z_j
        dual = diff.abs().sum(-1) if norm == "inf" else diff.norm(dim=-1)
        for L in constants:
            assert (dual <= L * (1 + 1e-9) + 1e-12).all(), (dual - L).max()


@settings(max_examples=budget(15), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_crown_is_never_looser_than_the_boxes_and_auto_never_loses_an_input(cfg, seed, norm):
    """Global radii and box bounds are not ordered in general (either can win on an input); crown keeps the better
    of its backward pass and the boxes, and auto runs global first: it keeps every input any stage proves."""
    torch.manual_seed(seed)
    model = ConvNODE(cfg).eval()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(0.3)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (16, cfg.in_channels, cfg.image_size, cfg.image_size), generator=gen)
    u = images.double() / 255
    with torch.no_grad():
        z = model(u.float())
    y = z.argmax(1)
    L = min((nb.constants() for nb in network_bounds(model, norm)), key=lambda c: float(c.max()))
    eps = float(certified_radii(z, y, L).median())
    assume(eps > 0)
    data = ImageData(images.to(torch.uint8), y, "random", "test", "hypothesis")
    # the global radii pay the float32 slack: the eps where they prove half the inputs (the slack-free radii's
    # median, or the median of the sound radii where the slack leaves fewer)
    radii = certify_model(model, data, eps=eps, norm=norm, bound="global").radii
    if not bool((radii >= eps).any()):
        eps = float(radii.median())
        assume(eps > 0)
    box, crown = local_margins(net, u, y, eps, norm), crown_margins(net, u, y, eps, norm)
    assert (crown >= box).all()
    reports = {b: certify_model(model, data, eps=eps, norm=norm, bound=b) for b in ("global", "local", "crown", "auto")}
    assert reports["global"].certified_mask.any()
    for b in ("global", "local", "crown"):
        assert not (reports[b].certified_mask & ~reports["auto"].certified_mask).any(), b


def test_euler_step_box_contains_its_image_at_vertices_of_the_input_box():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=2, steps=1, image_size=4, num_classes=3)
    step = unroll(ConvNODE(cfg).double()).steps[0]
    assert isinstance(step, EulerStep)
    lo = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    hi = lo + 0.5
    out, (zl, zh) = step.bounds(Box(lo, hi, 0.5 * (lo + hi)))
    for _ in range(200):
        x = torch.where(torch.rand_like(lo) < 0.5, lo, hi)
        y, z = step(x), step.conv(x)
        assert (out.lo <= y + 1e-12).all() and (y <= out.hi + 1e-12).all()
        assert (zl <= z + 1e-12).all() and (z <= zh + 1e-12).all()


def test_presets_have_the_promised_shapes():
    paper, mini = ModelConfig.preset("paper"), ModelConfig.preset("mini")
    assert paper == ModelConfig() and paper.block_size == 28 and paper.stem == ((8, 3, 1, 1),)
    assert (mini.channels, mini.block_size, mini.steps, mini.T, mini.head) == (32, 7, 5, 1.0, (256,))
    model = ConvNODE(ModelConfig.preset("mini", num_classes=3))
    assert model.embedding(torch.rand(2, 1, 28, 28)).shape == (2, 32, 7, 7)
    kinds = [type(layer).__name__ for layer in unroll(model).layers]
    assert kinds == ["Conv", "Act", "Conv", "Act"] + ["EulerStep"] * 5 + ["Flatten", "Linear", "Act", "Linear"]
    cifar = ConvNODE(ModelConfig.preset("mini", in_channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3))
    assert cifar(torch.rand(2, 3, 32, 32)).shape == (2, 10) and cifar.config.block_size == 8
    assert isinstance(unroll(cifar).layers[0], Normalize)
    with pytest.raises(Exception, match="arch"):
        ModelConfig.preset("resnet")


def test_act_layer_box_is_the_exact_image():
    act = unroll(ConvNODE(ModelConfig(channels=1, steps=1, image_size=3, num_classes=2)).double()).layers[1]
    assert isinstance(act, Act)
    lo = torch.linspace(-3, 3, 9, dtype=torch.float64).view(1, 1, 3, 3)
    out, pre = act.bounds(Box(lo, lo + 1, lo + 0.5))
    torch.testing.assert_close(out.lo, act(lo))
    torch.testing.assert_close(out.hi, act(lo + 1))


def test_attacks_never_break_a_certificate_of_a_trained_downsampling_model():
    """A small model of the mini preset's shape (strided stem, hidden head layer), interval-trained briefly."""
    from certify.checks import attack_check
    from certify.bounds.objectives import certified_objective
    from nodes import TrainConfig, load_dataset
    from nodes.train import fit

    cfg = ModelConfig.preset("mini", channels=4, stem=((4, 4, 2, 1), (4, 4, 2, 1)), head=(16,), steps=3)
    tcfg = TrainConfig(dataset="mnist-mini", epochs=4, lr=3e-3, batch_size=64, neg_init=True, certified_eps=0.05,
                       certified_start=1.0, certified_warmup=1.0)
    model, _ = fit(cfg, tcfg, load_dataset("mnist-mini", "train"), None, progress=False,
                   objective=certified_objective(tcfg))
    data = load_dataset("mnist-mini", "test", limit=150)
    for norm, eps in (("inf", 0.03), ("2", 0.1)):
        report = certify_model(model, data, eps=eps, norm=norm, bound="auto")
        assert report.certified_accuracy > 0.1, (norm, report.certified_accuracy)  # not vacuous: inputs to attack
        check = attack_check(model, data, report, limit=60, restarts=2, steps=30, queries=150)
        assert check.attacked > 0 and check.broken == 0, check


@settings(max_examples=budget(8), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_ibp_boxes_contain_every_layer_output_over_the_input_set(cfg, seed, norm):
    """Every layer's `interval` rule, chained by ibp_bounds: each layer's output (and each pre-activation) at
    sampled points and at the box's vertices of the eps-set lies in its box; IBP margins never beat the local ones
    by more than round-off (both are sound, local is the tighter) and never exceed the true margins."""
    model = random_model(cfg, seed)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    size, cin = cfg.image_size, cfg.in_channels
    u = torch.rand(2, cin, size, size, generator=gen, dtype=torch.float64)
    eps = 0.05 if norm == "inf" else 0.2
    b = ibp_bounds(net, u, eps, norm)
    y = model(u).argmax(1)
    margins = box_margins(net, y, b.lo, b.hi)
    local = local_margins(net, u, y, eps, norm)  # meets the interval rule on boxes inside IBP's: never looser
    assert (local >= margins - 1e-9).all()
    for _ in range(20):
        d = torch.rand(u.shape, generator=gen, dtype=u.dtype) * 2 - 1
        d = d.sign() * eps if norm == "inf" else eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x = (u + d).clamp(0, 1)
        for i, layer in enumerate(net.layers[:-1]):
            if b.pre[i] is not None:
                z = layer.preactivation(x) if layer.nonlinear and not isinstance(layer, Act) else x
                assert (b.pre[i][0] <= z + 1e-9).all() and (z <= b.pre[i][1] + 1e-9).all(), i
            x = layer(x)
            assert (b.boxes[i][0] <= x + 1e-9).all() and (x <= b.boxes[i][1] + 1e-9).all(), i
        z = net.layers[-1](x)
        true = z.gather(1, y[:, None]) - z
        assert (margins.masked_fill(margins.isinf(), 0) <= true + 1e-9).all()


def test_euler_step_interval_rule_is_interval_arithmetic():
    """x+ in [lo + h sigma(z_lo), hi + h sigma(z_hi)]: attained at a vertex when the conv is one positive tap."""
    cfg = ModelConfig(channels=1, steps=1, image_size=3, num_classes=2, kernel_size=1)
    model = ConvNODE(cfg).double()
    with torch.no_grad():
        model.block.fields[0].conv.weight.fill_(2.0)
        model.block.fields[0].conv.bias.fill_(-0.5)
    step = unroll(model).steps[0]
    lo = torch.linspace(-1, 1, 9, dtype=torch.float64).view(1, 1, 3, 3)
    (out_lo, out_hi), (zl, zh) = step.interval(lo, lo + 0.3)
    torch.testing.assert_close(out_lo, step(lo))
    torch.testing.assert_close(out_hi, step(lo + 0.3))
    torch.testing.assert_close(zl, 2 * lo - 0.5)
