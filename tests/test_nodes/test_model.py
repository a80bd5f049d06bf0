import pytest
import torch

from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig


def small(**kw) -> ModelConfig:
    return ModelConfig(**{"channels": 3, "steps": 4, "T": 0.8, "image_size": 6, **kw})


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_torchdiffeq_euler_equals_hand_written_euler(shared, padding):
    torch.manual_seed(0)
    model = ConvNODE(small(shared_weights=shared, padding=padding)).double()
    u = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    logits, states = model.trajectory(u)
    h = model.config.h
    x = model.activation(model.stem[0](u))
    hand = [x]
    for k in range(model.config.steps):
        conv = model.block.field_at_step(k).conv
        x = x + h * model.activation(conv(x))
        hand.append(x)
    assert len(states) == model.config.steps + 1
    for s, e in zip(states, hand):
        torch.testing.assert_close(s, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, model.readout(hand[-1].flatten(1)))


@pytest.mark.parametrize("solver", ["euler", "rk4", "ssprk3", "dopri5"])
@pytest.mark.parametrize("readout", ["linear", "avgpool"])
def test_shapes(solver, readout):
    model = ConvNODE(small(solver=solver, readout=readout))
    out = model(torch.rand(2, 1, 6, 6))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_rk4_and_dopri5_agree_with_fine_euler_on_a_smooth_field():
    torch.manual_seed(1)
    base = ConvNODE(small(solver="euler", steps=400, shared_weights=True)).double()
    u = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    ref = base(u)
    for solver, tol in [("rk4", 1e-3), ("dopri5", 1e-3)]:
        other = ConvNODE(small(solver=solver, steps=4, shared_weights=True, rtol=1e-7, atol=1e-9)).double()
        other.load_state_dict(base.state_dict())
        torch.testing.assert_close(other(u), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 6, 6), (2, 3, 6, 6), (2, 1, 5, 6), (1, 1, 1, 6, 6)])
def test_wrong_input_shape_is_a_clear_error(shape):
    model = ConvNODE(small())
    with pytest.raises(CNodeError, match=r"expected input of shape \[B, 1, 6, 6\]"):
        model(torch.rand(*shape))


def test_block_spec_lists_one_kernel_per_step():
    model = ConvNODE(small(shared_weights=True))
    spec = model.block.spec()
    assert spec.steps == 4 and all(K is spec.kernels[0] or torch.equal(K, spec.kernels[0]) for K in spec.kernels)
    assert spec.h == pytest.approx(0.2) and (spec.a, spec.b) == (0.1, 1.0)


def test_stem_head_and_normalisation_run_as_written():
    torch.manual_seed(0)
    cfg = small(channels=4, stem=((3, 4, 2, 1), (4, 3, 1, 1)), head=(5, 6), mean=(0.5,), std=(0.2,), steps=2)
    model = ConvNODE(cfg).double()
    u = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    act = model.activation
    x = act(model.stem[1](act(model.stem[0]((u - 0.5) / 0.2))))
    assert x.shape == (3, 4, 3, 3) and cfg.block_size == 3
    for k in range(2):
        x = x + cfg.h * act(model.block.field_at_step(k).conv(x))
    f = x.flatten(1)
    f = act(model.head[1](act(model.head[0](f))))
    torch.testing.assert_close(model(u), model.head[2](f), rtol=1e-12, atol=1e-12)
    assert model.readout is model.head[0] and model.head[0].in_features == 4 * 9


@pytest.mark.parametrize("kwargs,fragment", [
    ({"channels": 4, "stem": ((3, 3, 1, 1),)}, "stem ends with 3"),
    ({"stem": ((8, 7, 4, 0), (8, 3, 1, 1))}, "leaves no pixels"),
    ({"stem": ((8, 3, 1),)}, "out_channels, kernel, stride, padding"),
    ({"stem": (), "channels": 2}, "stem ends with 1"),
    ({"head": (0,)}, "head width"),
    ({"mean": (0.1, 0.2), "std": (1.0, 1.0)}, "one value per input channel"),
    ({"mean": (0.1,)}, "both mean and std"),
    ({"mean": (0.1,), "std": (0.0,)}, "std"),
])
def test_bad_architectures_are_rejected_with_a_clear_message(kwargs, fragment):
    with pytest.raises(CNodeError, match=fragment):
        small(**kwargs)
