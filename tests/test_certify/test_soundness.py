"""Bounds vs brute force on small models: dense Jacobians, explicit conv matrices, attacks inside radii."""

import pytest
import torch
from tests.profiles import budget
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd, square
from certify.bounds.lipschitz import best_network_bound, network_bounds
from certify.bounds.unrolled import unroll
from certify.bounds.radius import certified_radii
from certify.run import certify_model
from contraction.certificates import block_certificates
from contraction.convops import conv_matrix
from contraction.measures import norm_2, norm_inf
from nodes import ConvNODE, ModelConfig, load_dataset
from tests.strategies import seeds


def _random_model(seed, padding, readout="linear", image=5, steps=2, channels=2, centre=-2.0):
    torch.manual_seed(seed)
    model = ConvNODE(ModelConfig(channels=channels, steps=steps, image_size=image, padding=padding,
                                 readout=readout, num_classes=3)).double().eval()
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(2.0)
            f.conv.weight[range(channels), range(channels), 1, 1] += centre
    return model


@settings(max_examples=budget(8))
@given(seeds, st.sampled_from(["zeros", "circular"]), st.sampled_from(["linear", "avgpool"]),
       st.sampled_from(["inf", "2"]))
def test_network_jacobian_never_exceeds_the_pairwise_constants(seed, padding, readout, norm):
    model = _random_model(seed, padding, readout)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64)
    for nb in network_bounds(model, norm):
        L = nb.constants()
        for i in range(u.shape[0]):
            J = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 5, 5))[0], u[i].flatten())
            diff = J[:, None, :] - J[None, :, :]  # rows of z_y - z_j
            dual = diff.abs().sum(-1) if norm == "inf" else diff.norm(dim=-1)
            assert (dual <= L * (1 + 1e-9) + 1e-12).all(), (nb.method, (dual - L).max())
            assert (L <= 2 * nb.global_constant * (1 + 1e-12)).all()


@settings(max_examples=budget(8))
@given(seeds, st.sampled_from(["zeros", "circular"]))
def test_factors_match_explicit_matrices(seed, padding):
    model = _random_model(seed, padding)
    net = unroll(model)
    stem = net.layers[0]
    T0 = conv_matrix(model.stem[0].weight.detach(), 5, 5, padding)
    assert float(stem.lipschitz("inf")) == pytest.approx(float(norm_inf(T0)))
    assert float(stem.lipschitz("2")) >= float(norm_2(T0)) * (1 - 1e-9)
    assert net.final.weight.shape == (3, 2 * 25)
    # block factor vs the dense Jacobian of the whole Euler block at random states
    x0 = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    certs = {c.norm: c for c in block_certificates(model.block.spec())}
    for i in range(3):
        Jb = torch.autograd.functional.jacobian(lambda v: model.block(v.view(1, 2, 5, 5)).flatten(), x0[i].flatten())
        assert float(norm_inf(Jb)) <= certs["inf"].factor * (1 + 1e-9)
        assert float(norm_2(Jb)) <= certs["2"].factor * (1 + 1e-9)
        eta = torch.tensor(certs["inf_weighted"].weights, dtype=torch.float64).repeat_interleave(25)
        assert float(norm_inf(eta[:, None] * Jb / eta[None, :])) <= certs["inf_weighted"].factor * (1 + 1e-9)


def test_radius_rules():
    L = torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 1.0], [4.0, 1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.0, 1.0, 0.0], [5.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    r = certified_radii(logits, labels, L)
    assert r[0] == pytest.approx(min(2.0 / 2.0, 3.0 / 4.0))
    assert r[1] == 0.0  # misclassified
    assert r[2] == 0.0  # tie
    assert r[3] > r[0]  # larger margin, larger radius
    r_slack = certified_radii(logits, labels, L, slack=0.5)
    assert (r_slack <= r).all() and r_slack[0] == pytest.approx(min(1.5 / 2.0, 2.5 / 4.0))
    # the pairwise constant certifies at least as much as the global 2 * max one
    r_global = certified_radii(logits, labels, torch.full_like(L, float(L.max())) * (1 - torch.eye(3)))
    assert (r >= r_global).all()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_inside_certified_radii_never_changes_the_prediction(tiny_trained, norm):
    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=300)
    report = certify_model(model, data, eps=1e-3, norm=norm)
    idx = torch.nonzero(report.radii > 0).flatten()[:60]
    assert len(idx) > 20, "the tiny model should certify some inputs"
    x = data.images[idx].float() / 255
    y = data.labels[idx]
    r = report.radii[idx].float()
    for adv in (pgd(model, x, y, eps=r, norm=norm, steps=30, restarts=4, loss="margin"),
                square(model, x, y, eps=r, norm=norm, queries=200)):
        dist = (adv - x).flatten(1).abs().amax(1) if norm == "inf" else (adv - x).flatten(1).norm(dim=1)
        assert (dist <= r * (1 + 1e-6) + 1e-7).all()  # up to float32 rounding of pixel values
        with torch.no_grad():
            assert (model(adv).argmax(1) == y).all()
    # and the same attacks at 20x the radius do succeed somewhere: they are not toothless
    big = pgd(model, x, y, eps=r * 20 + (0.3 if norm == "inf" else 3.0), norm=norm, steps=30, restarts=2)
    with torch.no_grad():
        assert (model(big).argmax(1) != y).any()


def test_best_bound_picks_the_smallest_constant(tiny_trained):
    model, _ = tiny_trained
    bounds = network_bounds(model, "inf")
    best = best_network_bound(model, "inf")
    assert len(bounds) == 2 and float(best.constants().max()) == min(float(b.constants().max()) for b in bounds)


def test_lmi_network_bound_never_below_the_true_jacobian():
    from contraction.lmi import lmi_block_certificate

    model = _random_model(5, "circular", image=6, steps=2, channels=2)
    lmi = lmi_block_certificate(model.block.spec(), tol=1e-3)
    assert lmi.certified
    (nb,) = network_bounds(model, "2", [lmi])
    L = nb.constants()
    u = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 6, 6))[0], u[i].flatten())
        dual = (J[:, None, :] - J[None, :, :]).norm(dim=-1)
        assert (dual <= L * (1 + 1e-9) + 1e-12).all()


def test_pgd_check_bounds_certified_accuracy_and_catches_a_forged_certificate(tiny_trained):
    """PGD accuracy lies between certified and clean accuracy; a report claiming radii it does not have (every
    correct input 'certified' at a large eps) is caught: the attack breaks some of those certificates."""
    import dataclasses

    from certify.checks import pgd_check

    model, _ = tiny_trained
    data = load_dataset("mnist-mini", "test", limit=60)
    report = certify_model(model, data, eps=0.02, norm="inf", bound="auto")
    check = pgd_check(model, data, report, steps=10)
    assert report.certified_accuracy <= check.accuracy <= report.clean_accuracy
    assert check.broken_certified == 0 and check.n == 60 and check.status == "not_broken"
    correct = (report.predictions == report.labels).double()
    forged = dataclasses.replace(report, eps=0.3, radii=correct * 0.3)
    caught = pgd_check(model, data, forged, steps=10)
    assert caught.broken_certified > 0 and caught.status == "unsound"
    assert caught.accuracy < report.clean_accuracy


def test_pgd_check_with_both_losses_is_not_fooled_by_saturated_cross_entropy(tiny_trained):
    """With the logits scaled by 1e4 the float32 softmax saturates: cross-entropy's gradient is exactly 0 at every
    confidently correct input and PGD with it alone moves nowhere, while the margin loss (scale-free under sign
    steps) still finds adversarial inputs. The default check runs both and keeps the lower figure, per input."""
    import copy

    from certify.checks import PGD_LOSSES, pgd_check

    model, _ = tiny_trained
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.head[-1].weight.mul_(1e4), scaled.head[-1].bias.mul_(1e4)
    data = load_dataset("mnist-mini", "test", limit=60)
    report = certify_model(scaled, data, eps=0.15, norm="inf", bound="global")
    ce = pgd_check(scaled, data, report, steps=10, losses=PGD_LOSSES["ce"])
    margin = pgd_check(scaled, data, report, steps=10, losses=PGD_LOSSES["margin"])
    both = pgd_check(scaled, data, report, steps=10)
    assert PGD_LOSSES["both"] == ("ce", "margin") and both.losses == ("ce", "margin")
    assert ce.accuracy > margin.accuracy  # the saturated cross-entropy overstates robustness
    assert both.accuracy <= min(both.by_loss.values()) and both.by_loss["ce"] > both.by_loss["margin"]
    assert torch.equal(both.robust, ce.robust & margin.robust)  # per input: robust under each (same seeds)
    assert (both.by_loss["ce"], both.by_loss["margin"]) == (ce.accuracy, margin.accuracy)
    assert both.to_dict()["loss"] == "ce+margin" and both.broken_certified == 0
