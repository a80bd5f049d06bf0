"""Seconds per epoch of plain and interval (certified) training, and certify seconds per image, `paper` vs `mini`.

    python bench/arch_speed.py [--images 1024] [--certify 100] [--paper CKPT --mini CKPT] [--eps 0.1]

Each figure is timed on the same images in this one run; training from fresh models, epoch times extrapolated to
the 60,000 MNIST training images; certification of the given checkpoints (default: the fresh, untrained models,
where most inputs are misclassified and the tight stages barely run). Prints the ratios paper / mini."""

import argparse
import time

import torch

from certify.run import certify_model
from certify.bounds.objectives import certified_objective
from nodes import ConvNODE, ModelConfig, TrainConfig, load_dataset, load_model, train
from nodes.data import resolve_data_root

TRAIN_IMAGES = 60_000


def _epoch_seconds(arch: str, data, certified: bool) -> float:
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset(arch))
    cfg = TrainConfig(dataset=data.name, epochs=1, lr=1e-3, certified_eps=0.1 if certified else 0.0,
                      certified_warmup=0.0)
    t = time.perf_counter()
    train(model, data, cfg, objective=certified_objective(cfg) if certified else None, progress=False)
    return (time.perf_counter() - t) * TRAIN_IMAGES / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="training images timed per figure")
    p.add_argument("--certify", type=int, default=100, help="test images certified per architecture")
    p.add_argument("--data-root", default=None)
    p.add_argument("--paper", default=None, help="a trained paper checkpoint to certify")
    p.add_argument("--mini", default=None, help="a trained mini checkpoint to certify")
    p.add_argument("--eps", type=float, default=0.01, help="Linf eps certified (default: %(default)s)")
    args = p.parse_args()
    dataset = "mnist" if (resolve_data_root(args.data_root) / "MNIST" / "raw").is_dir() else "mnist-mini"
    train_data = load_dataset(dataset, "train", data_root=args.data_root, limit=args.images)
    test_data = load_dataset(dataset, "test", data_root=args.data_root, limit=args.certify)
    rows = {}
    for arch in ("paper", "mini"):
        plain = _epoch_seconds(arch, train_data, certified=False)
        interval = _epoch_seconds(arch, train_data, certified=True)
        torch.manual_seed(0)
        path = getattr(args, arch)
        model = load_model(path) if path else ConvNODE(ModelConfig.preset(arch)).eval()
        report = certify_model(model, test_data, eps=args.eps, bound="auto")
        rows[arch] = (plain, interval, report.timing["certify_seconds"] / len(test_data))
        params = sum(q.numel() for q in model.parameters())
        print(f"{arch:>6}: {params:>7} parameters; plain epoch {plain:7.1f} s, interval epoch {interval:7.1f} s "
              f"(extrapolated to {TRAIN_IMAGES} images from {len(train_data)}); certify {path or 'untrained'} (auto, "
              f"Linf {args.eps:g}, {report.certified_accuracy:.0%} certified) {rows[arch][2] * 1000:.1f} ms per image",
              flush=True)
    (pp, pi, pc), (mp, mi, mc) = rows["paper"], rows["mini"]
    print(f"paper / mini: plain epoch {pp / mp:.1f}x, interval epoch {pi / mi:.1f}x, certify per image {pc / mc:.1f}x "
          f"(torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
