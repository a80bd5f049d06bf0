"""Long runs that survive: per-epoch checkpoints with the full training state, bit-for-bit resume, Ctrl-C, and the
schedule fields (lr milestones, gradient clipping) as the stored optimizer state shows them."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from certify.cli import main as cnode_main
from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, train
from nodes.checkpoint import load_checkpoint, model_from_checkpoint
from nodes.train import TrainingState


@pytest.fixture
def one_thread():
    """PyTorch's multi-threaded CPU reductions differ run to run at ~1e-8; bit-for-bit needs one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw):
    base = dict(dataset="mnist-mini", epochs=2, batch_size=32, lr=3e-3, reg="jacobian", rho=0.1,
                certified_eps=0.05, certified_method="mtl-ibp", certified_start=0.5, certified_warmup=1.0,
                eps_ramp="smooth", lr_milestones=(1,), lr_decay=0.3, grad_clip=5.0)
    return TrainConfig(**{**base, **kw})


def _fresh():
    torch.manual_seed(0)
    return ConvNODE(ModelConfig(channels=2, steps=2))


def test_two_epochs_equal_one_epoch_then_resume_then_one_more(tmp_path, one_thread):
    """Every random stream (shuffling, the Jacobian regularizer's sampling, PGD), Adam's moments, the lr schedule
    and the history continue exactly: the weights after 1 + resume + 1 epochs equal 2 straight epochs bit for bit."""
    data = load_dataset("mnist-mini", "train", limit=96)
    straight = _fresh()
    h2 = train(straight, data, _cfg(), progress=False)
    path = tmp_path / "run.pt"
    first = _fresh()
    train(first, data, _cfg(epochs=1), progress=False, checkpoint=path)
    payload = load_checkpoint(path)
    state = TrainingState.from_dict(payload["training_state"])
    assert state.epoch == 1 and payload["metrics"]["epochs_done"] == 1
    resumed = model_from_checkpoint(payload, path)
    h = train(resumed, data, _cfg(), progress=False, resume=state, checkpoint=path)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert h.train_loss == h2.train_loss and h.reg_value == h2.reg_value
    assert TrainingState.from_dict(load_checkpoint(path)["training_state"]).epoch == 2


def test_interrupt_keeps_the_last_finished_epoch_loadable(tmp_path):
    data = load_dataset("mnist-mini", "train", limit=64)
    path = tmp_path / "run.pt"

    def stop(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_fresh(), data, _cfg(epochs=4, certified_method="ibp"), progress=False, checkpoint=path, on_epoch=stop)
    payload = load_checkpoint(path)
    assert TrainingState.from_dict(payload["training_state"]).epoch == 2
    model = model_from_checkpoint(payload, path)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left no temp file behind


def test_gradient_clipping_and_lr_milestones_reach_the_optimizer(tmp_path):
    """One Adam step from zero moments stores exp_avg = (1 - beta1) g: clipped, ||g|| <= grad_clip. The learning
    rate is multiplied by lr_decay only at the milestones."""
    data = load_dataset("mnist-mini", "train", limit=32)
    norms = {}
    for clip in (0.0, 1e-3):
        path = tmp_path / f"clip{clip}.pt"
        cfg = _cfg(epochs=1, grad_clip=clip, reg="none", rho=0.0, certified_eps=0.0, lr_milestones=())
        train(_fresh(), data, cfg, progress=False, checkpoint=path)
        opt = TrainingState.from_dict(load_checkpoint(path)["training_state"]).optimizer
        g2 = sum(float((s["exp_avg"] / 0.1).pow(2).sum()) for s in opt["state"].values())
        norms[clip] = g2**0.5
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3) and norms[0.0] > 1e-2
    path = tmp_path / "lr.pt"
    plain = _cfg(epochs=4, lr_milestones=(1, 3), reg="none", rho=0.0, certified_eps=0.0)
    train(_fresh(), data, plain, progress=False, checkpoint=path)
    opt = TrainingState.from_dict(load_checkpoint(path)["training_state"]).optimizer
    assert opt["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.3**2)


def test_cnode_train_resume_strip_and_refusals(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run.pt"
    argv = ["train", "--dataset", "mnist-mini", "--channels", "2", "--steps", "2", "--train-limit", "64",
            "--test-limit", "32", "--certified-method", "ibp", "--certified-eps", "0.05", "-q", "--out", str(out)]
    assert cnode_main(argv + ["--epochs", "1"]) == 0
    assert cnode_main(["train", "--resume", str(out), "--epochs", "2", "--out", str(out), "-q", "--test-limit",
                       "32"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert TrainingState.from_dict(load_checkpoint(out)["training_state"]).epoch == 2
    assert load_checkpoint(out)["train_config"]["epochs"] == 2
    # refusals: a finished run, a changed recipe, a stripped file
    for extra, message in ((["--epochs", "2"], "finished 2 of 2"), (["--lr", "0.1", "--epochs", "3"], "--lr"),
                           (["--channels", "4", "--epochs", "3"], "--channels"),
                           (["--arch", "paper", "--epochs", "3"], "--arch")):
        assert cnode_main(["train", "--resume", str(out), "--out", str(out), "-q", *extra]) == 2
        assert message in capsys.readouterr().err
    slim = tmp_path / "slim.pt"
    assert cnode_main(["strip", str(out), str(slim)]) == 0
    assert "training_state" not in load_checkpoint(slim) and slim.stat().st_size < out.stat().st_size / 2
    assert cnode_main(["train", "--resume", str(slim), "--epochs", "3", "--out", str(slim), "-q"]) == 2
    assert "no training state" in capsys.readouterr().err
    # Ctrl-C: a clear line and exit 130, the checkpoint untouched
    from certify.cli import training as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert cnode_main(argv + ["--epochs", "1", "--out", str(tmp_path / "x.pt")]) == 130
    assert "interrupted before the first epoch finished: nothing saved" in capsys.readouterr().err
    assert cnode_main(argv + ["--epochs", "3"]) == 130  # `out` holds 2 finished epochs
    assert f"continue with --resume {out}" in capsys.readouterr().err


def _ema(decay, steps):
    """The exponential average of a weight trajectory as its definition reads: a_1 = w_1, a_k = d a_{k-1} + (1 - d) w_k."""
    avg = None
    for w in steps:
        avg = {k: v.clone() for k, v in w.items()} if avg is None else \
            {k: decay * avg[k] + (1 - decay) * w[k] for k in avg}
    return avg


def test_weight_averaging_returns_and_saves_the_average_of_the_raw_steps_and_resumes(tmp_path, one_thread):
    """The averaged run moves the raw weights exactly as the plain run does (recorded after every optimizer step);
    the model it returns and the checkpoint it writes are their exponential average from `ema_start` on; a run
    resumed from epoch 1 ends with the same average and raw weights bit for bit."""
    data = load_dataset("mnist-mini", "train", limit=96)
    cfg = dict(reg="none", rho=0.0, certified_method="ibp")
    steps = []
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kw: steps.append({k: v.detach().clone() for k, v in plain.state_dict().items()}))
    try:
        plain = _fresh()
        train(plain, data, _cfg(**cfg), progress=False)
    finally:
        hook.remove()
    assert len(steps) == 6  # 2 epochs x 3 batches
    decay, start = 0.6, 0.5  # the average starts after the first 2 of 3 batches' worth of epoch 1 (i / nb >= 0.5)
    averaged = _fresh()
    path = tmp_path / "ema.pt"
    train(averaged, data, _cfg(ema_decay=decay, ema_start=start, **cfg), progress=False, checkpoint=path)
    expect = _ema(decay, steps[2:])
    for k, v in averaged.state_dict().items():
        assert torch.allclose(v, expect[k], rtol=1e-5, atol=1e-7), k
        assert not torch.equal(v, steps[-1][k]) or "bias" in k, k  # the average, not the last step
    saved = model_from_checkpoint(load_checkpoint(path), path)
    for k, v in saved.state_dict().items():
        assert torch.equal(v, averaged.state_dict()[k]), k
    raw = TrainingState.from_dict(load_checkpoint(path)["training_state"]).average["raw"]
    for k, v in raw.items():
        assert torch.equal(v, steps[-1][k]), k  # the optimizer's weights, kept for resuming

    first = _fresh()
    train(first, data, _cfg(epochs=1, ema_decay=decay, ema_start=start, **cfg), progress=False, checkpoint=path)
    payload = load_checkpoint(path)
    resumed = model_from_checkpoint(payload, path)
    train(resumed, data, _cfg(ema_decay=decay, ema_start=start, **cfg), progress=False,
          resume=TrainingState.from_dict(payload["training_state"]), checkpoint=path)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, averaged.state_dict()[k]), k
    raw2 = TrainingState.from_dict(load_checkpoint(path)["training_state"]).average["raw"]
    for k, v in raw2.items():
        assert torch.equal(v, raw[k]), k


def test_weight_averaging_flags_that_would_do_nothing_are_refused():
    from contraction.errors import CNodeError

    with pytest.raises(CNodeError, match="ema_start"):
        TrainConfig(ema_start=3.0)
    with pytest.raises(CNodeError, match="below 1"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(CNodeError, match="never be updated"):
        TrainConfig(epochs=2, ema_decay=0.9, ema_start=2.0)
