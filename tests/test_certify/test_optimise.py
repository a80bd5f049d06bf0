"""Optimised lower lines (certify.bounds.optimise) against brute force: a line of any slope with `line_offsets`'
lower offset lies below sigma on a dense grid of the interval; the backward pass with any lower slopes per row and
neuron (random ones, far outside the slope range, included) never exceeds a true margin at sampled, vertex and PGD
points; the optimised bounds start from the CROWN pass's and never fall below it, and gain where the chord's parallel
line is loose. (With the float32 terms they bound the float32 network's margin: test_float32_margins.)"""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.crown import backward_margins, rounded_margins
from certify.bounds.linear import linear_bounds
from certify.bounds.local import LayerBounds
from certify.bounds.optimise import optimised_margins, relaxed_layers
from certify.bounds.relax import NARROW, CachedBox, SlopedBox, line_offsets
from contraction.slopes import get_activation
from tests.profiles import budget
from tests.strategies import model_configs, random_case, seeds
from tests.test_certify.test_linear import _points

ACTS = ["smooth_leaky_relu", "leaky_relu", "tanh"]


@settings(max_examples=budget(60), deadline=None)
@given(st.sampled_from(ACTS), st.sampled_from([0.001, 0.1, 0.5]), st.floats(-8, 8), st.floats(0, 10),
       st.floats(-0.5, 1.5), st.booleans())
def test_a_line_of_any_slope_with_its_offsets_encloses_sigma_on_a_dense_grid(name, a, lo, width, k, narrow):
    act = get_activation(name, a)
    width = width * NARROW if narrow else width
    lo_t = torch.tensor([lo], dtype=torch.float64)
    hi_t = lo_t + width
    k_t = torch.tensor([k], dtype=torch.float64)
    lower, upper = line_offsets(act, lo_t, hi_t, k_t)
    z = torch.linspace(lo, lo + width, 20001, dtype=torch.float64)
    g = act.fn(z) - k * z
    assert (g >= lower).all() and (g <= upper).all()
    step = width / 20000  # tight: within the grid's resolution of g's true extrema
    assert float(g.min() - lower) <= (act.b + abs(k)) * step + 1e-9 * (1 + abs(lo) + width)
    assert float(upper - g.max()) <= (act.b + abs(k)) * step + 1e-9 * (1 + abs(lo) + width)


def _sloped(net, bounds: LayerBounds, slopes: dict[int, torch.Tensor], rows: torch.Tensor) -> LayerBounds:
    pre = list(bounds.pre)
    for k, s in slopes.items():
        pre[k] = SlopedBox(CachedBox(*pre[k]), net.act, s, rows)
    return LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi, bounds.balls)


@settings(max_examples=budget(15), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([0.3, 1.0, 2.5]),
       st.sampled_from([0.02, 0.1, 0.4]))
def test_any_lower_slopes_and_the_optimised_ones_never_exceed_a_true_margin(cfg, seed, norm, scale, eps):
    model, net, gen, u, y = random_case(cfg, seed, scale, 2)
    lin = linear_bounds(net, u, eps, norm)
    crown = backward_margins(net, lin, u, y, eps, norm)
    other = ~F.one_hot(y, crown.shape[1]).bool()
    b_idx, _ = other.nonzero(as_tuple=True)
    # random slopes per row and neuron in [-1, 2]: sound too (the offsets are the exact minimum for any slope)
    rand = {k: 3 * torch.rand(len(b_idx), *lin.pre[k][0].shape[1:], generator=gen, dtype=torch.float64) - 1
            for k in relaxed_layers(net, lin.pre)}
    random_bound = rounded_margins(net, _sloped(net, lin, rand, b_idx), u, y, eps, norm)[0]
    opt = optimised_margins(net, lin, u, y, eps, norm, other, float("inf"), steps=8)
    # nothing proven at an infinite slack: every step ran
    assert opt.steps == (8 if relaxed_layers(net, lin.pre) else 0)
    # the first iterate is the CROWN pass (the chord's slope on both lines)
    assert (opt.margins[other] >= crown[other] - 1e-9 * (1 + crown[other].abs())).all()
    for x in _points(u, eps, norm, gen, model, y):
        z = net(x)
        true = (z.gather(1, y[:, None]) - z)[other]
        tol = 1e-9 * (1 + true.abs())
        for bound in (random_bound, opt.margins):
            b = bound[other]
            assert (b.masked_fill(b.isinf(), -1e30) <= true + tol).all(), float((b - true).max())


def test_optimised_slopes_gain_where_the_parallel_line_is_loose():
    """Leaky ReLU of slope 0.001 (near ReLU) on a wide eps: the chord's parallel lower line is loose on neurons whose
    interval is mostly negative; the optimised slopes raise some margin's bound by a clear amount."""
    from nodes.config import ModelConfig

    cfg = ModelConfig(channels=2, in_channels=1, image_size=6, num_classes=3, steps=2, activation="leaky_relu",
                      slope=0.001, stem=((2, 3, 1, 1),), head=(8,))
    model, net, gen, u, y = random_case(cfg, 3, 1.0, 4)
    lin = linear_bounds(net, u, 0.1, "inf")
    crown = backward_margins(net, lin, u, y, 0.1, "inf")
    other = ~F.one_hot(y, 3).bool()
    opt = optimised_margins(net, lin, u, y, 0.1, "inf", other, float("inf"), steps=20)
    gain = (opt.margins - crown)[other]
    assert float(gain.max()) > 1e-3 * float(crown[other].abs().max()), gain
