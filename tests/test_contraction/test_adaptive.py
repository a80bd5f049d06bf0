"""The controlled adaptive solvers (contraction.adaptive): the embedded pairs are the published ones (order
conditions), a run is exactly its schedule (replaying the accepted steps gives the states; replaying every attempt's
error estimate gives every recorded decision), steps stay on the dyadic grid, and the solution converges."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contraction.adaptive import PAIRS, DyadicController, decisions
from contraction.errors import CNodeError
from contraction.runge_kutta import BOSH3, DOPRI5, combine, tableau_step
from nodes import ConvNODE, ModelConfig
from tests.profiles import budget
from tests.strategies import seeds


def _c(tab):
    return [sum(row) for row in tab.a]


@pytest.mark.parametrize("tab,order,embedded", [(DOPRI5, 5, 4), (BOSH3, 3, 2)])
def test_the_pairs_satisfy_their_order_conditions(tab, order, embedded):
    """sum b_i c_i^q = 1 / (q + 1) up to the method's order - 1 (the quadrature conditions), the embedded weights
    b^ = b - error up to theirs, and the last stage is the update (first same as last)."""
    c = _c(tab)
    b_hat = [b - e for b, e in zip(tab.b, tab.error)]
    for q in range(order):
        assert sum(b * ci**q for b, ci in zip(tab.b, c)) == pytest.approx(1 / (q + 1), abs=1e-12)
    for q in range(embedded):
        assert sum(b * ci**q for b, ci in zip(b_hat, c)) == pytest.approx(1 / (q + 1), abs=1e-12)
    assert tab.a[-1] == tab.b[:-1] and tab.b[-1] == 0.0
    assert tab.update().stages == tab.stages - 1


def test_the_step_converges_at_its_order_on_a_linear_ode():
    """x' = -x: the one-step error of the update falls as h^(p+1), the estimate's as h^(q+1) (a factor 2^(p+1) and
    2^(q+1) per halving, within 15 %): the tableaus are the intended methods, not just consistent ones."""
    f = lambda y: -y  # noqa: E731
    for tab, p, q in [(DOPRI5, 5, 4), (BOSH3, 3, 2)]:
        x = torch.ones(1, dtype=torch.float64)
        errs, ests = [], []
        for h in (0.2, 0.1):
            ks = []
            for row in tab.a:
                ks.append(f(combine(x, h, row, ks)))
            errs.append(abs(float(combine(x, h, tab.b, ks)) - math.exp(-h)))
            ests.append(abs(float(combine(torch.zeros_like(x), h, tab.error, ks))))
        assert errs[0] / errs[1] == pytest.approx(2 ** (p + 1), rel=0.15)
        assert ests[0] / ests[1] == pytest.approx(2 ** (q + 1), rel=0.15)


def _model(solver, seed, scale, atol, halvings, steps=2):
    torch.manual_seed(seed)
    model = ConvNODE(ModelConfig(channels=2, in_channels=1, image_size=5, num_classes=3, steps=steps, solver=solver,
                                 atol=atol, max_halvings=halvings, stem=((2, 3, 1, 1),)))
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    return model.double().eval()


@settings(max_examples=budget(15), deadline=None)
@given(st.sampled_from(sorted(PAIRS)), seeds, st.floats(0.5, 8.0), st.sampled_from([1e-2, 1e-3, 1e-4, 1e-5]),
       st.integers(0, 4))
def test_a_run_is_its_schedule(solver, seed, scale, atol, halvings):
    """Replaying each input's schedule alone (the accepted steps with the pair's update at h = H 2^-l) reproduces the
    batched run's states, and recomputing each attempt's error estimate reproduces every decision the schedule
    records (`decisions`); the accepted steps tile every interval on the dyadic grid."""
    model = _model(solver, seed, scale, atol, halvings)
    pair, ctl = PAIRS[solver], model.block.controller
    u = torch.rand(6, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x0 = model.embedding(u)
        states, attempts, runs = model.block.run(x0, record=True)
    grid = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    spans = [grid[1] - grid[0], grid[2] - grid[1]]
    for i, run in enumerate(runs):
        assert attempts[i] == len(run)
        x = x0[i:i + 1]
        for k in range(2):  # the accepted steps of interval k sum to H exactly, each aligned to its own size
            units = [2 ** (halvings - a.level) for a in run if a.interval == k and a.accepted]
            pos = 0
            for n in units:
                assert pos % n == 0
                pos += n
            assert pos == 2**halvings
        outcomes = {}
        for j, a in enumerate(run):
            f = model.block.field_at_step(a.interval)
            h = spans[a.interval] * 2.0 ** -a.level
            with torch.no_grad():
                x_new, err = ctl.attempt(lambda y, f=f: f(None, y), x, h.view(1, 1, 1, 1))
            outcomes[j] = float(err[0])
            assert a.accepted == (a.level == halvings or float(err[0]) <= ctl.threshold)
            if a.accepted:
                x = x_new
        torch.testing.assert_close(x, states[-1][i:i + 1], rtol=0, atol=1e-12)
        for d in decisions(run, halvings, pair.grow):
            assert (outcomes[d.attempt] <= d.scale * ctl.threshold) == d.below


def test_stiff_runs_reject_halve_and_double():
    """The decisions the property above replays do occur: a stiff block rejects, halves, and doubles again after
    accepting a small error; each such test is in `decisions`."""
    model = _model("bosh3-dyadic", 0, 6.0, 1e-3, 4)
    u = torch.rand(6, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runs = model.block.run(model.embedding(u), record=True)[2]
    levels = [[a.level for a in run] for run in runs]
    assert any(not a.accepted for run in runs for a in run)
    assert any(b < a for lv in levels for a, b in zip(lv, lv[1:]))  # a doubling
    ds = [d for run in runs for d in decisions(run, 4, 8.0)]
    assert {d.scale for d in ds} == {1.0, 1.0 / 8.0} and {d.below for d in ds} == {True, False}


def test_a_tight_tolerance_converges_to_the_flow():
    """With a small atol and deep halvings the controlled solvers agree with a fine fixed-step rk4 solve."""
    for solver in PAIRS:
        model = _model(solver, 0, 3.0, 1e-6, 8, steps=1)
        u = torch.rand(3, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            x0 = model.embedding(u)
            out = model.block.run(x0)[0][-1]
            f = model.block.field_at_step(0)
            x = x0
            for _ in range(256):
                x = tableau_step(lambda y: f(None, y), x, 1.0 / 256, _rk4())
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def _rk4():
    from contraction.runge_kutta import TABLEAUS

    return TABLEAUS["rk4"]


@pytest.mark.parametrize("kw", [{"atol": 0.0}, {"atol": float("inf")}, {"max_halvings": -1}, {"max_halvings": 21},
                                {"max_halvings": True}])
def test_bad_controller_settings_are_one_line_errors(kw):
    settings_ = {"pair": PAIRS["bosh3-dyadic"], "atol": 1e-3, "max_halvings": 3, **kw}
    with pytest.raises(CNodeError):
        DyadicController(**settings_)
