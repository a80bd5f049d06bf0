"""Linear intermediate bounds (certify.bounds.linear) and the per-input escalation (certify.bounds.tight) against brute force:
the columns-last conv against conv2d, every layer's symbolic enclosure against sampled, vertex and attacked
inputs, boxes never looser than the local ones, chunking invisible, stages never losing an input a cheaper one
proved, and attacks never breaking a certificate of the linear stage."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from certify.bounds.attacks import pgd
from certify.bounds.layers import Symbolic
from certify.bounds.linear import linear_bounds, remember, symbolic_layers, symbolic_range
from certify.bounds.local import input_box, local_bounds
from certify.run import certify_model
from certify.bounds.tight import TIGHT_STAGES, certified_at, escalate, stage_margins
from certify.bounds.unrolled import unroll
from contraction.convops import apply_conv_columns, apply_conv_general
from nodes import ModelConfig, load_dataset
from tests.profiles import budget
from tests.strategies import model_configs, random_case, random_model, seeds

EXAMPLES = "examples/models"


@settings(max_examples=budget(60))
@given(st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.sampled_from(["zeros", "circular"]),
       st.integers(1, 7), st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), seeds)
def test_columns_last_conv_is_conv2d(k, stride, pad, padding, size, c_in, c_out, cols, seed):
    assume(size + 2 * pad >= k and not (padding == "circular" and pad > size))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cols, c_in, size, size, generator=gen, dtype=torch.float64)
    K = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64)
    ref = apply_conv_general(x, K, stride, pad, padding)
    got = apply_conv_columns(x.permute(1, 2, 3, 0).contiguous(), K, stride, pad, padding).permute(3, 0, 1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def _points(u, eps, norm, gen, model, y):
    """Points of the input set: uniform samples, box vertices (Linf), ball directions (L2), and a PGD point."""
    lo, hi = input_box(u, eps)
    pts = []
    for k in range(16):
        if norm == "inf":  # uniform in the box, then vertices
            w = torch.rand(u.shape, generator=gen, dtype=u.dtype)
            pts.append(lo + (hi - lo) * (w if k < 8 else (w < 0.5).double()))
        else:  # inside the ball, then on its sphere (clipping to [0, 1] keeps a point in the ball)
            d = torch.randn(u.shape, generator=gen, dtype=u.dtype)
            size = eps * (torch.rand(u.shape[0], generator=gen, dtype=u.dtype) if k < 8 else 1.0)
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (u.dim() - 1)) * torch.as_tensor(size).view(-1, 1, 1, 1)
            pts.append((u + d).clamp(0, 1))
    adv = pgd(model.float(), u.float(), y, eps=eps, norm=norm, steps=10).double()
    model.double()
    if norm == "inf":  # float32 rounding can leave the set by 1e-8: back into the box, in float64
        adv = torch.minimum(torch.maximum(adv, lo), hi)
    else:
        d = adv - u
        adv = (u + d * (eps / d.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, *[1] * (u.dim() - 1))).clamp(0, 1)
    return pts + [adv]


@settings(max_examples=budget(25), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([0.3, 1.0, 2.5]),
       st.sampled_from([0.02, 0.1, 0.4]))
def test_every_layer_symbolic_enclosure_contains_the_exact_outputs(cfg, seed, norm, scale, eps):
    """x = A u + c +- r at every layer, pre-activations inside their boxes, for points of the set (vertices, ball
    directions, PGD), and every box of linear_bounds inside the local one's."""
    model, net, gen, u, y = random_case(cfg, seed, scale, 3)
    local = local_bounds(net, u, eps, norm)
    lo_u, hi_u = local.input_lo, local.input_hi
    ball = torch.full((3,), eps, dtype=torch.float64) if norm == "2" else None
    concretize = lambda s: symbolic_range(s, lo_u, hi_u, u, ball)  # noqa: E731
    forms, pres = [], []
    for i, s, p in symbolic_layers(net, u, local, concretize):
        forms.append(s)
        pres.append(p)
        if p is not None:  # never looser than the local pre-activation box
            assert (p[0] >= local.pre[i][0] - 1e-12).all() and (p[1] <= local.pre[i][1] + 1e-12).all()
    for x in _points(u, eps, norm, gen, model, y):
        outs = net.outputs(x)
        pre = net.preactivations(x)
        for i, s in enumerate(forms):
            lin = torch.einsum("...bn,bn->b...", s.A, x.flatten(1)) + s.c
            tol = 1e-9 * (1 + lin.abs())
            assert ((outs[i + 1] - lin).abs() <= s.r + tol).all(), (i, type(net.layers[i]).__name__)
            if pres[i] is not None:  # (a Runge-Kutta step's: one box per stage, stacked on dim 1)
                ptol = 1e-9 * (1 + pre[i].abs())
                assert (pres[i][0] - ptol <= pre[i]).all() and (pre[i] <= pres[i][1] + ptol).all(), i
    b = linear_bounds(net, u, eps, norm, local=local)
    assert (b.lo >= local.lo - 1e-12).all() and (b.hi <= local.hi + 1e-12).all()


@settings(max_examples=budget(15), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.integers(1, 7))
def test_the_shared_first_layer_and_blocked_ranges_equal_the_plain_pass(cfg, seed, norm, rows):
    """symbolic_layers (an affine first layer computed once and shared over the batch; each form's range reused by
    the next rule) and symbolic_range read in blocks of `rows` rows give the forms and ranges of the plain pass:
    every input's identity through every layer's rule, each range by the dense formula A mid +- |A| rad."""
    model, net, gen, u, y = random_case(cfg, seed, 1.0, 3)
    local = local_bounds(net, u, 0.05, norm)
    lo_u, hi_u = local.input_lo, local.input_hi
    ball = torch.full((3,), 0.05, dtype=torch.float64) if norm == "2" else None

    def dense(s):
        mid, rad = 0.5 * (lo_u + hi_u), 0.5 * (hi_u - lo_u)
        centre = torch.einsum("...bn,bn->b...", s.A, mid.flatten(1))
        width = torch.einsum("...bn,bn->b...", s.A.abs(), rad.flatten(1))
        lo, hi = s.c + centre - width - s.r, s.c + centre + width + s.r
        if ball is not None:
            at = s.c + torch.einsum("...bn,bn->b...", s.A, u.flatten(1))
            norms = s.A.norm(dim=-1).movedim(-1, 0)
            lo, hi = torch.maximum(lo, at - 0.05 * norms - s.r), torch.minimum(hi, at + 0.05 * norms + s.r)
            hi = torch.maximum(hi, lo)
        return lo, hi

    n = u[0].numel()
    s = Symbolic(torch.eye(n, dtype=u.dtype).reshape(*u.shape[1:], 1, n).expand(*u.shape[1:], 3, n).contiguous(),
                 torch.zeros_like(u), torch.zeros_like(u))
    calls = []

    def blocked(form):
        calls.append(form)
        return symbolic_range(form, lo_u, hi_u, u, ball, rows=rows)

    conc = remember(blocked)
    for (i, shared, p), layer in zip(symbolic_layers(net, u, local, conc), net.layers[:-1]):
        s, q = layer.symbolic(s, local.pre[i], dense)
        for a, b in zip((shared.A, shared.c, shared.r), (s.A, s.c, s.r)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for a, b in zip(conc(shared), dense(s)):  # the output's range, as linear_bounds takes it
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if p is not None:
            for a, b in zip(p, q):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(calls) == len({id(f) for f in calls}), "a form was concretised twice"


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]))
def test_chunking_the_inputs_changes_nothing(cfg, seed, norm):
    model = random_model(cfg, seed, 1.0)
    net = unroll(model)
    u = torch.rand(5, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    eps = torch.linspace(0.01, 0.2, 5, dtype=torch.float64)
    whole, parts = linear_bounds(net, u, eps, norm), linear_bounds(net, u, eps, norm, budget=1)
    for a, b in zip(whole.pre + whole.boxes, parts.pre + parts.boxes):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@settings(max_examples=budget(15), deadline=None)
@given(model_configs(), seeds, st.sampled_from(["inf", "2"]), st.sampled_from([0.5, 1.5, 3.0]))
def test_escalation_keeps_every_input_a_cheaper_stage_proves_and_its_margins_are_sound(cfg, seed, norm, scale):
    model = random_model(cfg, seed, scale)
    net = unroll(model)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(12, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        z = model(u)
    y = z.argmax(1)
    true = z.gather(1, y[:, None]) - z
    eps = 0.05 if norm == "inf" else 0.3
    alone = {s: stage_margins(s, net, u, y, eps, norm)[0] for s in TIGHT_STAGES}
    esc = escalate(net, u, y, eps, norm)
    got = {s: certified_at(net, u, y, eps, norm, s) for s in TIGHT_STAGES}
    for i, s in enumerate(TIGHT_STAGES):
        proven = (alone[s] > 0).all(1)
        assert not (proven & ~esc.certified).any(), s  # what any stage proves alone, the escalation keeps
        assert not (got[TIGHT_STAGES[max(i - 1, 0)]] & ~got[s]).any(), s  # the chain only grows
        assert (esc.stage[proven] <= i).all()  # ... and proves it no later than that stage
    other = ~torch.nn.functional.one_hot(y, 3).bool()
    for m in list(alone.values()) + [esc.margins]:  # every bound is a lower bound of the margin at u itself
        assert (m[other] <= true[other] + 1e-9).all()
    for x in _points(u, eps, norm, gen, model, y):
        with torch.no_grad():
            zx = model(x)
        mx = zx.gather(1, y[:, None]) - zx
        assert (esc.margins[other] <= mx[other] + 1e-9).all()


def test_falsified_inputs_are_never_certified_and_skip_the_expensive_stage():
    model = random_model(ModelConfig(channels=2, steps=2, image_size=6, num_classes=3), 0, 2.0)
    net = unroll(model)
    u = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = model(u).argmax(1)
    seen = []

    def falsify(idx, eps):
        seen.append(idx.clone())
        return idx % 2 == 0  # claims an attack on every even input

    esc = escalate(net, u, y, 0.5, "inf", falsify=falsify)
    assert len(seen) == 1  # once, before the linear stage, on the inputs the cheap stages left
    assert not (esc.falsified & esc.certified).any()
    assert esc.falsified.sum() == (seen[0] % 2 == 0).sum() and "attack" in esc.seconds


@pytest.fixture(scope="module")
def plain_paper():
    from nodes.checkpoint import load_model

    return load_model(f"{EXAMPLES}/mnist_plain_paper.pt")


def test_linear_stage_certifies_an_ordinarily_trained_model_where_crown_cannot_and_attacks_fail(plain_paper):
    """The shipped default-recipe paper model (1 plain epoch, lr 5e-2): in exact arithmetic (slack 0: the engine's
    real-arithmetic twin) boxes and CROWN-IBP prove nothing at Linf 0.005; the linear stage proves inputs, and PGD +
    the gradient-free search on the float32 model break none of them. The derived float32 slack, carried forward
    through the Euler steps as the local boxes are, is far above every margin (docs/RESULTS.md section 11); the
    backward passes bound the float32 margin itself (the errors weighed by the backward functional, their magnitudes
    from the linear stage's boxes) and prove inputs as run, which a margin attack on the float32 model does not
    break."""
    data = load_dataset("mnist-mini", "test", limit=6)
    net = unroll(plain_paper)
    x, y = data.tensors(0, 6)
    esc = escalate(net, x.double(), y, 0.005, "inf", slack=0.0)
    assert not (esc.stage == 0).any() and not (esc.stage == 1).any()  # local and crown prove nothing
    proven = esc.stage == 2
    assert int(proven.sum()) >= 4
    adv = pgd(plain_paper, x[proven], y[proven], eps=0.005, steps=40, restarts=2, loss="margin")
    with torch.no_grad():
        assert (plain_paper(adv).argmax(1) == y[proven]).all()
    auto = certify_model(plain_paper, data.slice(0, 2), eps=0.005, bound="auto")  # every stage again: 2 inputs
    assert auto.n == 2 and auto.roundoff["model"] == "derived"
    by = [s for s in auto.certified_by if s]
    assert by and set(by) <= {"linear", "refine"}, auto.certified_by  # the float32 margins by the backward pass
    keep = auto.certified_mask
    adv = pgd(plain_paper, x[:2][keep], y[:2][keep], eps=0.005, steps=40, restarts=2, loss="margin")
    with torch.no_grad():
        assert (plain_paper(adv).argmax(1) == y[:2][keep]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_linear_bounds_on_cuda_equal_the_cpu(plain_paper):
    net_cpu = unroll(plain_paper)
    net_gpu = unroll(plain_paper.cuda())
    plain_paper.cpu()
    u = load_dataset("mnist-mini", "test", limit=3).tensors(0, 3)[0].double()
    a = linear_bounds(net_cpu, u, 0.005, "inf")
    b = linear_bounds(net_gpu, u.cuda(), 0.005, "inf")
    for (lo_a, hi_a), (lo_b, hi_b) in zip([p for p in a.pre if p is not None] + [a.boxes[-1]],
                                          [p for p in b.pre if p is not None] + [b.boxes[-1]]):
        torch.testing.assert_close(lo_b.cpu(), lo_a, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(hi_b.cpu(), hi_a, rtol=1e-9, atol=1e-9)
