"""The paper's study on MNIST and FashionMNIST, with our protocol (METHOD.md section 6): nominal, Jacobian-regularized
and weight-regularized ConvNODEs over a sweep of target rates rho (and seeds), each through `cnode robustness`;
certified-trained checkpoints can join every table with --extra. Writes results.json and four plots.

    python examples/paper_study.py --quick                      # smoke test on the embedded subset, minutes
    python examples/paper_study.py --out runs/study             # the full run (see docs/RESULTS.md for its time)
    python examples/paper_study.py --extra mnist:certified=examples/models/mnist_certified_linf.pt ...

Resumable: a checkpoint or result already in --out is reused, so an interrupted run picks up where it stopped."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from certify.robustness import ATTACK_EPS, GAUSSIAN, SALT_PEPPER, robustness
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, save_model
from nodes.train import fit
from nodes.config import ModelConfig, TrainConfig

# one recipe per dataset for every method (a fair comparison): Adam, readout at a tenth of the lr
RECIPES = {
    "mnist": dict(lr=1e-2, lr_decay=0.7, readout_lr_scale=0.1),
    "fashion-mnist": dict(lr=1e-2, lr_decay=0.7, readout_lr_scale=0.1),
    "mnist-mini": dict(lr=1e-2, lr_decay=0.7, readout_lr_scale=0.1),
}
REG_WEIGHT = {"jacobian": 0.1, "weight": 0.01}


def runs(args: argparse.Namespace) -> list[tuple[str, str, float, int]]:
    """(dataset, method, rho, seed) for every model to train; nominal has rho 0."""
    out = []
    for seed in range(args.seeds):  # seed by seed, so that a run cut short still has whole sweeps
        for ds in args.datasets:
            out.append((ds, "nominal", 0.0, seed))
            for method in ("jacobian", "weight"):
                out.extend((ds, method, rho, seed) for rho in args.rhos)
    return out


def train_one(ds: str, method: str, rho: float, seed: int, args: argparse.Namespace, path: Path) -> None:
    reg = {} if method == "nominal" else dict(reg=method, rho=rho, reg_weight=REG_WEIGHT[method], neg_init=True)
    tcfg = TrainConfig(dataset=ds, epochs=args.epochs, seed=seed, train_limit=args.train_limit, **RECIPES[ds], **reg)
    data = load_dataset(ds, "train", data_root=args.data_root, limit=args.train_limit or None)
    model, history = fit(ModelConfig(), tcfg, data, None, progress=False)
    save_model(path, model, train_config=tcfg, metrics={"train_seconds": sum(history.epoch_seconds)})


def check_reused(tcfg: dict, method: str, rho: float, seed: int, args: argparse.Namespace, path: Path) -> None:
    """Refuse to resume from a checkpoint trained with another recipe than this run's (epochs, images, rate, seed)."""
    want = {"epochs": args.epochs, "train_limit": args.train_limit, "seed": seed,
            "reg": "none" if method == "nominal" else method, "rho": rho}
    diff = {k: (tcfg.get(k), v) for k, v in want.items() if tcfg.get(k) != v}
    if diff:
        raise SystemExit(f"error: {path} was trained with another recipe ({diff}, as (found, wanted)); "
                         "remove it or use another --out")


def plots(results: list[dict], out: Path) -> None:
    """Fig. 1 (clean accuracy vs rho) and accuracy vs noise, attack eps and certified eps, per dataset; seeds pooled
    (mean, error bars at half the spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(results)
    datasets = sorted({a["dataset"] for a in agg})
    fig, axes = plt.subplots(len(datasets), 4, figsize=(18, 4 * len(datasets)), squeeze=False)
    for row, ds in zip(axes, datasets):
        rows = [a for a in agg if a["dataset"] == ds]
        for method, marker in (("jacobian", "o-"), ("weight", "s-")):
            pts = sorted((a["rho"], a["mean"][("clean", None)], a["spread"][("clean", None)] / 2)
                         for a in rows if a["method"] == method)
            if pts:
                rho, mean, err = zip(*pts)
                row[0].errorbar(rho, mean, yerr=err, fmt=marker, capsize=3, label=method)
        for a in rows:
            if a["method"] not in ("jacobian", "weight"):
                row[0].axhline(a["mean"][("clean", None)], ls="--", lw=1,
                               color="k" if a["label"] == "nominal" else "gray", label=a["label"])
        row[0].set(title=f"{ds}: clean accuracy vs rho", xlabel="rho", ylabel="accuracy")
        for ax, group, title in ((row[1], "gaussian", "Gaussian noise std"), (row[2], "pgd", "PGD-20 Linf eps"),
                                 (row[3], "certified", "certified Linf eps")):
            for a in rows:
                keys = [k for k in a["columns"] if k[0] == group]
                ax.errorbar([float(k[1]) for k in keys], [a["mean"][k] for k in keys],
                            yerr=[a["spread"][k] / 2 for k in keys], fmt="o-", lw=1, capsize=2, label=a["label"])
            ax.set(title=f"{ds}: accuracy vs {title}", xlabel=title, ylabel="accuracy", ylim=(0, 1))
        for ax in row:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=90)
    plt.close(fig)


def model_label(method: str, rho: float) -> str:
    """A trained model's name, seeds pooled: 'nominal' or 'weight rho=0.5'."""
    return method if method == "nominal" else f"{method} rho={rho:g}"


def group_label(r: dict) -> str:
    """The model a result belongs to, seeds pooled: a trained model's name, or an --extra label."""
    return model_label(r["method"], r["rho"]) if r["method"] in ("nominal", "jacobian", "weight") else r["label"]


def columns(rob: dict) -> list[tuple[str, str | None]]:
    """Every accuracy the protocol reports, as (group, level) keys of a robustness dict; level None for clean."""
    return ([("clean", None)] + [(g, k) for g in ("gaussian", "salt_pepper", "fgsm", "pgd", "certified")
                                 for k in rob[g]] + [("square", "accuracy")])


def accuracy(rob: dict, key: tuple[str, str | None]) -> float:
    group, level = key
    return rob[group] if level is None else rob[group][level]


def aggregate(results: list[dict]) -> list[dict]:
    """Pool the seeds of each (dataset, model): per column the mean and the spread (max - min) over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], group_label(r)), []).append(r)
    out = []
    for (ds, label), rs in groups.items():
        cols = columns(rs[0]["robustness"])
        vals = {key: [accuracy(r["robustness"], key) for r in rs] for key in cols}
        out.append({"dataset": ds, "label": label, "method": rs[0]["method"], "rho": rs[0]["rho"], "seeds": len(rs),
                     "n": rs[0]["robustness"]["n"], "columns": cols,
                     "mean": {k: sum(v) / len(v) for k, v in vals.items()},
                     "spread": {k: max(v) - min(v) for k, v in vals.items()},
                     "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs)})
    return out


COLUMN_NAMES = {"gaussian": "gauss", "salt_pepper": "s&p", "fgsm": "FGSM", "pgd": "PGD", "certified": "cert"}


def tables(results: list[dict]) -> str:
    """Markdown: one table per dataset, one row per model (seeds pooled: mean, and ± half the spread when several)."""
    lines = []
    agg = aggregate(results)
    for ds in sorted({a["dataset"] for a in agg}):
        rows = [a for a in agg if a["dataset"] == ds]
        cols = rows[0]["columns"]
        head = (["model", "seeds"] + [("clean" if k is None else "gradient-free" if g == "square"
                                        else f"{COLUMN_NAMES[g]} {k}") for g, k in cols] + ["train s"])
        lines += [f"### {ds} (first {rows[0]['n']} test images; accuracy in %)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for a in rows:
            cells = [f"{100 * a['mean'][k]:.1f}" + (f" ±{50 * a['spread'][k]:.1f}" if a["seeds"] > 1 else "")
                     for k in cols]
            lines.append(f"| {a['label']} | {a['seeds']} | " + " | ".join(cells) + f" | {a['train_seconds']:.0f} |")
        lines.append("")
    if any(a["seeds"] > 1 for a in agg):
        lines += ["Mean over seeds ± half the spread (max - min) between them.", ""]
    return "\n".join(lines)


QUICK = dict(datasets=["mnist-mini"], rhos=[0.5, 2.0], epochs=1, train_limit=0, test_limit=100, draws=1,
             square_queries=50)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/study")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--rhos", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=20_000, help="training images per model (0: all)")
    p.add_argument("--test-limit", type=int, default=300, help="test images per evaluation")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--square-queries", type=int, default=100)
    p.add_argument("--certify-eps", type=float, nargs="+", default=[0.01, 0.05, 0.1],
                   help="Linf eps for certified accuracy (bound auto)")
    p.add_argument("--extra", nargs="*", default=[], help="more checkpoints as DATASET:LABEL=PATH")
    p.add_argument("--data-root", default=None)
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: tables and plots from the results already in --out")
    p.add_argument("--quick", action="store_true", help="defaults for a smoke test: embedded subset, 1 epoch, "
                   "two rates, 100 test images (flags given explicitly still win)")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    start = time.perf_counter()
    todo = [(ds, m, rho, seed, model_label(m, rho) + (f" seed={seed}" if args.seeds > 1 else ""),
             out / f"{ds}_{m}_rho{rho:g}_s{seed}.pt") for ds, m, rho, seed in runs(args)]
    for spec in args.extra:
        ds, rest = spec.split(":", 1)
        label, path = rest.split("=", 1)
        todo.append((ds, label, 0.0, 0, label, Path(path)))
    results = []
    for ds, method, rho, seed, label, path in todo:
        res_path = path.with_suffix(".json") if path.parent == out else out / f"{ds}_{label}.json"
        if res_path.exists():
            results.append(json.loads(res_path.read_text()))
            continue
        if args.report_only:
            continue
        if not path.exists():
            train_one(ds, method, rho, seed, args, path)
        ckpt = load_checkpoint(path)
        if path.parent == out:
            check_reused(ckpt.get("train_config") or {}, method, rho, seed, args, path)
        metrics = ckpt.get("metrics") or {}
        t_train = metrics.get("train_seconds") or sum(metrics.get("seconds_per_epoch") or [])
        data = load_dataset(ds, "test", data_root=args.data_root, limit=args.test_limit)
        rob = robustness(model_from_checkpoint(ckpt, path), data, draws=args.draws, square_queries=args.square_queries,
                         gaussian=GAUSSIAN, salt_pepper=SALT_PEPPER, attack_eps=ATTACK_EPS,
                         certify_eps=args.certify_eps, progress=False)
        entry = {"dataset": ds, "method": method, "rho": rho, "seed": seed, "label": label, "checkpoint": str(path),
                 "train_seconds": t_train, "robustness": rob}
        res_path.write_text(json.dumps(entry, indent=2))
        results.append(entry)
        r = rob
        print(f"{ds:14s} {label:22s} clean {r['clean']:.3f}  gauss.3 {r['gaussian']['0.3']:.3f}  "
              f"pgd.1 {r['pgd']['0.1']:.3f}  cert.1 {r['certified'][str(args.certify_eps[-1])]:.3f}  "
              f"(train {t_train:.0f} s, eval {r['seconds']:.0f} s)", flush=True)
    if not results:
        raise SystemExit(f"error: no results in {out} to report")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(tables(results))
    plots(results, out)
    print(f"wrote {out / 'results.json'} and {out / 'study.png'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
