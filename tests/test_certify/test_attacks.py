import pytest
import torch

from certify.bounds.attacks import fgsm, pgd, project, square
from certify.noise import gaussian_noise, salt_and_pepper
from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConvNODE(ModelConfig(channels=2, steps=2, image_size=8))


def _dist(a, b, norm):
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "inf" else d.norm(dim=1)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_attacks_stay_in_the_ball_and_the_box_and_restore_mode(model, norm):
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3, 1.0])
    for mode in (True, False):
        model.train(mode)
        for adv in (pgd(model, x, y, eps=eps, norm=norm, steps=5, restarts=2), fgsm(model, x, y, eps=eps, norm=norm),
                    square(model, x, y, eps=eps, norm=norm, queries=20)):
            assert (_dist(adv, x, norm) <= eps * (1 + 1e-6) + 1e-7).all()
            assert adv.min() >= 0 and adv.max() <= 1
        assert model.training == mode


def test_projection_clips_to_the_box_inside_the_ball():
    x = torch.full((1, 1, 2, 2), 0.95)
    delta = torch.full((1, 1, 2, 2), 0.2)
    out = project(delta, x, torch.tensor(0.1).view(1, 1, 1, 1), "inf")
    torch.testing.assert_close(x + out, torch.ones_like(x))
    with pytest.raises(CNodeError):
        project(delta, x, torch.tensor(0.1).view(1, 1, 1, 1), "1")


def test_attacks_reject_bad_eps(model):
    x = torch.rand(8, 1, 8, 8)
    y = model(x).argmax(1)
    with pytest.raises(CNodeError):
        pgd(model, x, y, eps=-0.1)
    with pytest.raises(CNodeError):
        pgd(model, x, y, eps=float("nan"))


def test_noise_is_seeded_and_in_range():
    x = torch.rand(4, 1, 8, 8)
    g1, g2 = gaussian_noise(x, 0.2, seed=1), gaussian_noise(x, 0.2, seed=1)
    assert torch.equal(g1, g2) and g1.min() >= 0 and g1.max() <= 1 and not torch.equal(g1, x)
    sp = salt_and_pepper(x, 0.2, seed=3)
    changed = (sp != x).float().mean()
    assert 0.1 < float(changed) < 0.3 and set(sp[sp != x].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(CNodeError):
        salt_and_pepper(x, 1.5)
