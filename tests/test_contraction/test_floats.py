"""The float32 error model of the activations (contraction.floats, Activation.rounding) against float64 on dense
grids of float32 inputs, and monotone activations in every precision."""

import pytest
import torch

from contraction.floats import UNIT, gamma
from contraction.slopes import ACTIVATIONS, get_activation


def _float32_grid() -> torch.Tensor:
    """float32 values across the range that matters: uniform in [-100, 100], fine near 0 and around softplus' old
    threshold 20, and logarithmic from 1e-40 (subnormals) to 1e4 on both sides."""
    parts = [torch.linspace(-100, 100, 400_001), torch.linspace(-1e-3, 1e-3, 20_001), torch.linspace(19, 21, 20_001),
             torch.logspace(-40, 4, 20_000), -torch.logspace(-40, 4, 20_000)]
    return torch.cat(parts).float()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_float32_activation_error_is_within_its_rounding_bound(name):
    act = get_activation(name, 0.1)
    z = _float32_grid()
    observed = (act(z).double() - act(z.double())).abs()
    bound = act.rounding(z.double().abs())
    assert (observed <= bound).all(), float((observed / bound).max())
    assert float(observed.max()) > 0  # float32 really rounds here: the comparison has teeth


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_are_monotone_in_float64_and_within_one_rounding_in_float32(name):
    """The relaxations assume sigma increasing: in float64 no drop beyond the relaxation margin (F.softplus dropped
    by 1.9e-9 at z = 20), in float32 no drop beyond the rounding bound."""
    act = get_activation(name, 0.1)
    z = torch.sort(_float32_grid().double()).values
    y = act(z)
    assert float((y[1:] - y[:-1]).min()) >= -1e-12 * (1 + float(y.abs().max()))
    y32 = act(z.float()).double()
    drop = (y32[:-1] - y32[1:]).clamp_min(0)
    assert (drop <= act.rounding(z[1:].abs()) * 2).all()


def test_smooth_leaky_relu_has_no_step_at_twenty():
    act = get_activation("smooth_leaky_relu", 0.1)
    z = torch.linspace(19.999, 20.001, 10_001, dtype=torch.float64)
    assert float(torch.diff(act(z)).min()) > 0


def test_gamma():
    assert gamma(0) == 0 and gamma(1) == pytest.approx(UNIT) and gamma(1000) > 1000 * UNIT
    with pytest.raises(ValueError):
        gamma(2**24)
