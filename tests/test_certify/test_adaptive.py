"""The controlled adaptive solvers in the bound engine, against brute force: the embedded pairs' steps and error
estimates (RKStep with Dormand-Prince's and Bogacki-Shampine's tableaus, negative update weights included) under
every rule, a schedule's layers are the run, proven decisions never flip at sampled, vertex or attacked points of
the ball, and a certificate is never broken."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.decisions import decision_proofs
from certify.bounds.layers import Box, RKStep, Symbolic
from certify.bounds.linear import symbolic_range
from certify.bounds.local import local_bounds
from certify.bounds.objectives import certified_margins
from certify.bounds.radius import float32_below
from certify.bounds.unrolled import unroll
from certify.cli import certify_main
from certify.merge import merge_reports
from certify.run import CertifyReport, certify_tensors, schedules
from contraction.adaptive import PAIRS, decisions
from contraction.errors import CNodeError
from contraction.runge_kutta import BOSH3, DOPRI5, combine, tableau_step
from nodes import ConvNODE, ModelConfig, save_model
from tests.profiles import budget
from tests.strategies import seeds

TABLEAUS = {"dopri5": DOPRI5, "dopri5-update": DOPRI5.update(), "bosh3": BOSH3, "bosh3-update": BOSH3.update()}


def _field(field, seed, scale):
    """The first Euler step layer of a small random model (float64 copies of its float32 weights) and the float32
    field it runs."""
    torch.manual_seed(seed)
    model = ConvNODE(ModelConfig(channels=2, in_channels=2, image_size=4, num_classes=3, steps=2, field=field,
                                 stem=()))
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    f32 = model.block.field_at_step(0)
    return unroll(model).steps[0], lambda y: f32(None, y)


def _euler(field, seed, scale):
    return _field(field, seed, scale)[0]


def _estimate(step, x):
    ks = []
    for row in step.tableau.a:
        ks.append(step.euler.field(combine(x, step.h, row, ks)))
    return combine(torch.zeros_like(x), step.h, step.tableau.error, ks)


def _points(c, r, gen, count=24):
    """Vertices and interior points of the box c +- r."""
    signs = [(2 * torch.rand(c.shape, generator=gen, dtype=c.dtype) - 1).sign() for _ in range(count // 2)]
    inner = [2 * torch.rand(c.shape, generator=gen, dtype=c.dtype) - 1 for _ in range(count // 2)]
    return [c + r * s for s in signs + inner]


@settings(max_examples=budget(12), deadline=None)
@given(st.sampled_from(sorted(TABLEAUS)), st.sampled_from(["paper", "gradient"]), seeds, st.floats(0.3, 3.0),
       st.sampled_from([0.01, 0.1, 0.5]), st.booleans())
def test_pair_steps_and_estimates_contain_every_sampled_point(name, field, seed, scale, width, interval):
    """Boxes (mean-value, with and without the interval meet) and linear forms of the step and, for the tableaus with
    error weights, of the error estimate, contain the images of vertices and interior points of the box; the
    weight-only factor (negative update weights: sum |b_i|) bounds the dense Jacobian's norms."""
    e = _euler(field, seed, scale)
    step = RKStep(e, TABLEAUS[name])
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen)
    box, pre = step.bounds(Box(c - width, c + width, c), interval)
    n = c[0].numel()
    eye = torch.eye(n, dtype=c.dtype).reshape(2, 4, 4, 1, n).expand(2, 4, 4, 2, n).contiguous()
    s = Symbolic(eye, torch.zeros_like(c), torch.zeros_like(c))
    concretize = lambda sym: symbolic_range(sym, c - width, c + width, c, None)  # noqa: E731
    lin = concretize(step.symbolic(s, pre, concretize)[0])
    est = None
    if step.tableau.error is not None:
        est = [step.estimate_bounds(Box(c - width, c + width, c), interval)[0],
               concretize(step.estimate_symbolic(s, pre, concretize))]
    for x in _points(c, width, gen):
        y = step(x)
        for lo, hi in ((box.lo, box.hi), lin):
            assert (lo <= y + 1e-9).all() and (y <= hi + 1e-9).all()
        if est is not None:
            v = _estimate(step, x)
            for lo, hi in est:
                assert (lo <= v + 1e-9).all() and (v <= hi + 1e-9).all()
    for norm, order in (("inf", float("inf")), ("2", 2)):
        J = torch.autograd.functional.jacobian(lambda v: step(v.view(1, 2, 4, 4)).flatten(), c[0].flatten())
        assert float(torch.linalg.matrix_norm(J, ord=order)) <= float(step.lipschitz(norm)) * (1 + 1e-9)


@settings(max_examples=budget(15), deadline=None)
@given(st.sampled_from(sorted(TABLEAUS)), st.sampled_from(["paper", "gradient"]), seeds, st.floats(0.3, 3.0),
       st.sampled_from([0.0, 0.01, 0.1]))
def test_pair_float32_bounds_contain_the_float32_step_and_estimate(name, field, seed, scale, width):
    """The step and the error estimate computed in float32 as the solver computes them (per-input h a float32
    tensor) lie within the derived float32 error bounds of their exact values, at float32 points of the box."""
    e, f32 = _field(field, seed, scale)
    step = RKStep(e, TABLEAUS[name])
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen).float().double()
    lo, hi = c - width, c + width
    _, pre = step.bounds(Box(lo, hi, c))
    bound = step.roundoff(lo, hi, pre, torch.zeros_like(c))[1]
    est_bound = step.estimate_rounding(lo, hi, pre) if step.tableau.error is not None else None
    h = torch.full((2, 1, 1, 1), step.h, dtype=torch.float32)
    for x in [c] + _points(c, width, gen, 6):
        x32 = x.float()
        with torch.no_grad():
            y32 = tableau_step(f32, x32, h, step.tableau)
            ks = []
            for row in step.tableau.a:
                ks.append(f32(combine(x32, h, row, ks)))
        exact = step(x32.double())
        assert ((y32.double() - exact).abs() <= bound).all(), float(((y32.double() - exact).abs() / bound).max())
        if est_bound is not None:
            v32 = combine(torch.zeros_like(x32), h, step.tableau.error, ks)
            assert ((v32.double() - _estimate(step, x32.double())).abs() <= est_bound).all()


def _controlled(solver, seed, scale=3.0, atol=1e-3, halvings=3, field="paper"):
    torch.manual_seed(seed)
    model = ConvNODE(ModelConfig(channels=2, in_channels=1, image_size=5, num_classes=3, steps=2, solver=solver,
                                 atol=atol, max_halvings=halvings, field=field, stem=((2, 3, 1, 1),)))
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight.mul_(scale)
    return model.eval()


@pytest.mark.parametrize("solver", sorted(PAIRS))
def test_a_schedules_layers_are_the_run(solver):
    """The layers unrolled from an input's schedule compute the run's logits (float64, to round-off), each attempt's
    estimator reproduces the error the run compared, and a model without a schedule is refused in one line."""
    model = _controlled(solver, 1, scale=4.0, atol=1e-4).double()
    u = torch.rand(4, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, _, runs = schedules(model, u)
    assert any(not a.accepted for run in runs for a in run)
    for i, run in enumerate(runs):
        net = unroll(model, schedule=run)
        torch.testing.assert_close(net(u[i:i + 1]), z[i:i + 1], rtol=1e-10, atol=1e-10)
        outs = net.outputs(u[i:i + 1])
        ctl = model.block.controller
        for (index, est), a in zip(net.estimators, run):
            err = float(_estimate(est, outs[index + 1]).abs().max())
            assert a.accepted == (a.level == ctl.max_halvings or err <= ctl.threshold)
    with pytest.raises(CNodeError, match="per input"):
        unroll(model)
    with pytest.raises(CNodeError, match="controlled"):
        unroll(_controlled(solver, 1).__class__(ModelConfig(channels=2, steps=1)), schedule=runs[0])


@settings(max_examples=budget(6), deadline=None)
@given(st.sampled_from(sorted(PAIRS)), seeds, st.floats(1.0, 5.0), st.sampled_from([1e-2, 1e-3]),
       st.sampled_from([0.001, 0.01]), st.sampled_from(["paper", "gradient"]))
def test_proven_decisions_never_flip_in_the_ball(solver, seed, scale, atol, eps, field):
    """Where decision_proofs proves every decision of an input's run, every sampled, vertex and attacked point of the
    eps-ball (float32, as the model runs) takes the same schedule."""
    model = _controlled(solver, seed, scale, atol, field=field)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(3, 1, 5, 5, generator=gen)
    _, _, runs = schedules(model, u)
    ctl = model.block.controller
    for i, run in enumerate(runs):
        net = unroll(model, schedule=run)
        ui = u[i:i + 1].double()
        proofs = decision_proofs(net, ui, eps, "inf", local_bounds(net, ui, eps, "inf"),
                                 decisions(run, ctl.max_halvings, ctl.pair.grow), ctl.threshold)
        if not bool(proofs.all()):
            continue
        pts = [(u[i:i + 1] + eps * d).clamp(0, 1) for d in _points(torch.zeros(1, 1, 5, 5), 1.0, gen, 16)]
        y = model(u[i:i + 1]).argmax(1)
        pts.append(pgd(model, u[i:i + 1], (y + 1) % 3, eps=float32_below(eps), steps=5, loss="margin"))
        _, _, others = schedules(model, torch.cat(pts))
        assert all(o == run for o in others)


def test_decisions_are_proven_on_a_tame_model_and_not_on_a_ball_that_crosses_the_threshold():
    """Not vacuous: a tame model's decisions are proven over a small ball; over the whole pixel box they are not."""
    model = _controlled("bosh3-dyadic", 0, scale=1.5, atol=1e-3)
    u = torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    _, _, runs = schedules(model, u)
    ctl = model.block.controller
    run = runs[0]
    net = unroll(model, schedule=run)
    ds = decisions(run, ctl.max_halvings, ctl.pair.grow)
    assert ds
    small = decision_proofs(net, u[:1].double(), 1e-4, "inf", local_bounds(net, u[:1].double(), 1e-4, "inf"), ds,
                            ctl.threshold)
    whole = decision_proofs(net, u[:1].double(), 1.0, "inf", local_bounds(net, u[:1].double(), 1.0, "inf"), ds,
                            ctl.threshold)
    assert bool(small.all()) and not bool(whole.all())


@pytest.mark.parametrize("solver", sorted(PAIRS))
def test_certified_inputs_of_a_controlled_model_hold_against_attacks(solver):
    """certify_tensors on a controlled model: the report counts decisions; every certified input keeps its
    prediction at sampled, vertex and PGD points of its ball."""
    model = _controlled(solver, 2, scale=1.5, atol=1e-3)
    gen = torch.Generator().manual_seed(2)
    u = torch.rand(12, 1, 5, 5, generator=gen)
    with torch.no_grad():
        y = model(u).argmax(1)
    eps = 0.01
    report = certify_tensors(model, u, y, eps=eps, bound="auto")
    dy = report.to_dict()["dyadic"]
    assert dy["decisions"] > 0 and 0 <= dy["decisions_proven"] <= dy["decisions"]
    assert report.certified_accuracy > 0
    assert set(report.certified_counts()) <= {"local", "crown", "linear"}
    for i in torch.nonzero(report.certified_mask).flatten().tolist():
        pts = [(u[i:i + 1] + eps * d).clamp(0, 1) for d in _points(torch.zeros(1, 1, 5, 5), 1.0, gen, 16)]
        for target in range(3):
            if target != int(y[i]):
                pts.append(pgd(model, u[i:i + 1], torch.tensor([target]), eps=float32_below(eps), steps=10,
                               loss="margin"))
        with torch.no_grad():
            assert (model(torch.cat(pts)).argmax(1) == y[i]).all()


def test_controlled_models_refuse_what_needs_one_layer_sequence(tmp_path, capsys):
    """--bound global / lmi and --radius need one layer sequence for every input: one line, exit 2."""
    model = _controlled("bosh3-dyadic", 0)
    u, y = torch.rand(2, 1, 5, 5), torch.zeros(2, dtype=torch.long)
    for kw, msg in [({"bound": "global"}, "one layer sequence"), ({"bound": "auto", "radius": True}, "--radius")]:
        with pytest.raises(CNodeError, match=msg):
            certify_tensors(model, u, y, eps=0.01, **kw)
    path = tmp_path / "m.pt"
    save_model(path, model)
    assert certify_main([str(path), "--eps", "0.1", "--bound", "global", "--dataset", "mnist-mini"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("solver", sorted(PAIRS))
def test_the_certified_loss_bounds_the_margins_of_points_with_the_same_schedule(solver):
    """Training's IBP margins of a controlled model (grouped by schedule) are below the margins at sampled points of
    the ball that run the same schedule."""
    model = _controlled(solver, 3, scale=2.0, atol=1e-3).double()
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(5, 1, 5, 5, dtype=torch.float64, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1])
    eps = 0.02
    m = certified_margins(model, u, y, eps, "inf", "ibp")
    _, _, runs = schedules(model, u)
    for i in range(5):
        pts = torch.cat([(u[i:i + 1] + eps * d).clamp(0, 1) for d in
                         _points(torch.zeros(1, 1, 5, 5, dtype=torch.float64), 1.0, gen, 16)])
        z, _, others = schedules(model, pts)
        same = torch.tensor([o == runs[i] for o in others])
        margins = z.gather(1, y[i].repeat(len(pts))[:, None]) - z
        assert (m[i][None, :] <= margins[same] + 1e-9).all()


def test_sharded_reports_of_a_controlled_model_merge_to_the_whole_runs_figures():
    """Each input's attempts and decisions travel in the samples: a report rebuilt from them, and the merge of
    shard-like parts, give the one-process decisions summary (not one part's)."""
    model = _controlled("bosh3-dyadic", 0, scale=3.0, atol=1e-3)
    u = torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(u).argmax(1)
    whole = certify_tensors(model, u, y, eps=0.01, bound="local").to_dict()
    rebuilt = CertifyReport.from_samples(whole["samples"], dataset="t", norm="inf", eps=0.01, bound={}, timing={},
                                         roundoff={}).to_dict()
    assert rebuilt["dyadic"] == whole["dyadic"] and whole["dyadic"]["decisions"] > 0
    parts = []
    for i, (lo, hi) in enumerate(((0, 3), (3, 8))):
        part = certify_tensors(model, u[lo:hi], y[lo:hi], eps=0.01, bound="local").to_dict()
        for s in part["samples"]:
            s["index"] += lo
        parts.append((f"p{i}", {**part, "shard": {"index": i, "count": 2, "inputs": 8}}))
    merged = merge_reports(parts)
    assert merged["dyadic"] == whole["dyadic"] != parts[0][1]["dyadic"]
