"""L2 robustness of the gradient field: Lipschitz-margin training keeps the differentiable constants equal to the
certificate's, the certificate is non-vacuous after brief training, and L2 attacks never break it."""

import pytest
import torch

from certify.bounds.lipschitz import best_network_bound, layer_constants
from certify.run import certify_model
from certify.checks import attack_check, pgd_check
from certify.bounds.objectives import lipschitz_constants
from certify.bounds.unrolled import unroll
from contraction.certificates import block_certificates
from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset
from nodes.train import fit

SMALL = dict(channels=4, stem=((4, 4, 2, 1), (4, 4, 2, 1)), head=(16,), steps=3, field="gradient")


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_training_constants_are_the_certificate_constants(padding):
    """Training reuses the field's spectral bound (no second DFT) and runs in float32; the certificate recomputes
    every factor in float64 from the kernel as run: the two agree."""
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset("mini", padding=padding, **SMALL))
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(10.0)  # rescaled in the forward pass: both must see the rescaled kernel
    live = lipschitz_constants(model, "2")
    assert live.requires_grad
    certified = layer_constants(unroll(model), "2")
    # training takes s_min = 0 (step factor 1, no gradient); the certificate uses the exact s_min of circular padding
    block = [c for c in block_certificates(model.block.spec()) if c.norm == "2"][0].factor
    assert (block == 1.0) == (padding == "zeros") and block <= 1.0
    torch.testing.assert_close(live.detach().double() * block, certified, rtol=1e-5, atol=1e-6)
    network = best_network_bound(model, "2").constants()  # the global certificate: the block by its certificate
    assert (network <= certified * (1 + 1e-9)).all()


@pytest.fixture(scope="module")
def l2_trained():
    cfg = ModelConfig.preset("mini", padding="circular", **SMALL)
    tcfg = TrainConfig(dataset="mnist-mini", epochs=4, lr=3e-3, batch_size=64, certified_eps=0.5,
                       certified_method="lipschitz", certified_norm="2", certified_mix=0.0, certified_start=0.0,
                       certified_warmup=2.0)
    model, _ = fit(cfg, tcfg, load_dataset("mnist-mini", "train"), None, progress=False)
    return model.eval(), load_dataset("mnist-mini", "test", limit=150)


def test_lipschitz_margin_training_certifies_and_l2_attacks_break_nothing(l2_trained):
    model, data = l2_trained
    reports = {b: certify_model(model, data, eps=0.5, norm="2", bound=b) for b in ("global", "auto")}
    assert reports["global"].certified_accuracy > 0.2, reports["global"].certified_accuracy  # not vacuous
    assert not (reports["global"].certified_mask & ~reports["auto"].certified_mask).any()
    assert reports["global"].bound.certificate.method.startswith("gradient flow")
    for report in reports.values():
        check = attack_check(model, data, report, limit=80, restarts=2, steps=30, queries=150)
        assert check.attacked > 0 and check.broken == 0, check
        pgd = pgd_check(model, data, report, steps=30)
        assert pgd.broken_certified == 0 and pgd.accuracy >= report.certified_accuracy


def test_radius_curves_plots_reports_side_by_side_and_refuses_mixed_norms(l2_trained, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from certify.report import write_json

    model, data = l2_trained
    paths = {}
    for name, norm, bound in (("a", "2", "global"), ("b", "2", "lmi"), ("c", "inf", "global"), ("d", "2", "auto")):
        paths[name] = tmp_path / f"{name}.json"
        write_json(certify_model(model, data, eps=0.5 if norm == "2" else 0.01, norm=norm, bound=bound), paths[name])
    script = Path(__file__).resolve().parents[2] / "examples" / "radius_curves.py"
    run = lambda *args: subprocess.run([sys.executable, str(script), *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    ok = run(tmp_path / "curve.png", f"{paths['a']}:global", f"{paths['b']}:lmi")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "curve.png").stat().st_size > 1000
    mixed = run(tmp_path / "x.png", paths["a"], paths["c"])
    assert mixed.returncode != 0 and "mix norms" in mixed.stderr
    capped = run(tmp_path / "y.png", paths["d"])  # auto's radii stop at eps without --radius
    assert capped.returncode != 0 and "--radius" in capped.stderr


def test_the_global_radius_pays_the_inputs_own_float32_slack_once(l2_trained):
    """The global radius pays the slack over the ball once and the (smaller) slack at the input itself once: every
    radius is at least the one that pays the ball's slack twice, larger where the slack decides (eps between the two),
    and PGD inside each radius (float32 model as run) changes no prediction."""
    from certify.bounds.attacks import pgd
    from certify.bounds.local import local_bounds
    from certify.bounds.radius import certified_radii, float32_below
    from certify.bounds.roundoff import ball_error, margin_slack

    model, data = l2_trained
    x, y = data.tensors(0, len(data))
    net = unroll(model)
    L = best_network_bound(model, "2").constants()
    with torch.no_grad():
        z = model(x)
    x64 = x.double()

    def twice_radii(eps):
        ball = margin_slack(ball_error(net, x64, eps, "2", local_bounds(net, x64, eps, "2")), y)
        return certified_radii(z, y, L, 2 * ball), ball

    free = certified_radii(z, y, L)
    twice, _ = twice_radii(0.5)
    i = int(torch.argmax(torch.where((free > 0) & (free < 1.0), free - twice, -1.0)))
    eps = float(0.5 * (free[i] + twice[i]))  # the input the slack decides: certified by no-slack, not by twice
    twice, ball = twice_radii(eps)
    centre = margin_slack(ball_error(net, x64, 0.0, "2", local_bounds(net, x64, 0.0, "2")), y)
    assert (centre <= ball).all() and (centre < ball).any()  # the one-point set's bound is the smaller
    once = certify_model(model, data, eps=eps, norm="2", bound="global").radii.to(twice.dtype)
    capped = torch.minimum(once, torch.full_like(once, eps))  # radii above eps are recomputed over their own ball
    assert (capped >= torch.minimum(twice, torch.full_like(twice, eps)) - 1e-12).all()
    assert ((capped > twice + 1e-12) & (twice < eps)).any()  # larger radii where the slack decides
    good = torch.nonzero(once > 0).flatten()
    adv = pgd(model, x[good], y[good], eps=float32_below(once[good]), norm="2", steps=30, loss="margin")
    with torch.no_grad():
        assert (model(adv).argmax(1) == y[good]).all()
