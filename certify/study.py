"""The paper's study (METHOD.md section 6, our protocol): nominal, Jacobian-regularized, weight-regularized and
contractive-field ConvNODEs of the paper's architecture and recipe over a sweep of target rates rho (each Euler
step as run shrinking by 1 - h rho) and seeds, on MNIST and
FashionMNIST, each through the robustness protocol; certified-trained checkpoints can join every table (`extra`).
Writes results.json, results.md and study.png. `cnode study` is its command line."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from contraction.errors import CNodeError
from certify.robustness import ATTACK_EPS, GAUSSIAN, SALT_PEPPER, robustness
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, save_model
from nodes.config import ModelConfig, TrainConfig
from nodes.data import load_dataset
from nodes.train import fit

METHODS = ("nominal", "jacobian", "weight", "contractive")
RATED = ("jacobian", "weight", "contractive")
"""The methods with a target rate: the two regularizers (each Euler step as run at 1 - h rho) and the contractive
field (the rate built into the model)."""

__all__ = ["StudyConfig", "METHODS", "QUICK", "PAPER_RECIPE", "REG_WEIGHT", "run_study", "study_items", "study_one",
           "tables", "aggregate"]

# The paper's recipe, every field explicit (the library's defaults may change; the study does not): the paper's
# architecture, Adam, readout at a tenth of the lr, no certified loss, PyTorch's initialisation (+ the negative
# diagonal for the regularized models), the same for every method (a fair comparison).
PAPER_RECIPE = dict(batch_size=128, lr=1e-2, lr_decay=0.7, readout_lr_scale=0.1, certified_eps=0.0, init="default",
                    reg_norm="inf", reg_hinge="squared")
REG_WEIGHT = {"jacobian": 0.1, "weight": 0.01}


@dataclass(frozen=True)
class StudyConfig:
    """The sweep: datasets x (nominal, jacobian and weight at each rho) x seeds, and the protocol's settings."""

    out: str = "runs/study"
    datasets: tuple[str, ...] = ("mnist", "fashion-mnist")
    rhos: tuple[float, ...] = (0.1, 0.3, 0.6)  # step targets the paper's Euler step (h = 0.1) carries: < 1
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    epochs: int = 2
    train_limit: int = 20_000
    test_limit: int = 300
    draws: int = 3
    square_queries: int = 100
    certify_eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    extra: tuple[str, ...] = ()
    data_root: str | None = None
    report_only: bool = False
    device: str = "auto"
    jobs: int = 1
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise CNodeError(f"study: jobs must be an integer >= 1, got {self.jobs!r}")
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise CNodeError(f"study: shard must be (i, n) with 0 <= i < n, got {self.shard!r}")
        if self.seeds < 1 or self.epochs < 1 or self.train_limit < 0 or self.test_limit < 1 or self.draws < 1 \
                or self.square_queries < 1 or any(not e > 0 for e in self.certify_eps) or any(r < 0 for r in self.rhos):
            raise CNodeError("study: seeds, epochs, test images, draws and queries must be >= 1, rhos >= 0, eps > 0")


QUICK = dict(datasets=("mnist-mini",), rhos=(0.3, 0.9), epochs=1, train_limit=0, test_limit=100, draws=1,
             square_queries=50)
"""The smoke-test settings (`cnode study --quick`)."""


def runs(args: StudyConfig) -> list[tuple[str, str, float, int]]:
    """(dataset, method, rho, seed) for every model to train; nominal has rho 0."""
    out = []
    for seed in range(args.seeds):  # seed by seed, so that a run cut short still has whole sweeps
        for ds in args.datasets:
            if "nominal" in args.methods:
                out.append((ds, "nominal", 0.0, seed))
            for method in RATED:
                if method in args.methods:
                    out.extend((ds, method, rho, seed) for rho in args.rhos)
    return out


def train_one(ds: str, method: str, rho: float, seed: int, args: StudyConfig, path: Path) -> None:
    """The paper's architecture and recipe; the regularizers add their hinge at rate rho (and the lab's negative
    diagonal), the contractive field builds the rate into the model (no regularizer, no diagonal)."""
    reg = dict(reg=method, rho=rho, reg_weight=REG_WEIGHT[method], neg_init=True) if method in REG_WEIGHT else {}
    tcfg = TrainConfig(dataset=ds, epochs=args.epochs, seed=seed, train_limit=args.train_limit, **PAPER_RECIPE, **reg)
    field = dict(field="contractive", rho=rho) if method == "contractive" else {}
    data = load_dataset(ds, "train", data_root=args.data_root, limit=args.train_limit or None)
    model, history = fit(ModelConfig.preset("paper", **field), tcfg, data, None, device=args.device, progress=False)
    save_model(path, model, train_config=tcfg, metrics={"train_seconds": sum(history.epoch_seconds)})


def check_reused(ckpt: dict, method: str, rho: float, seed: int, args: StudyConfig, path: Path) -> None:
    """Refuse to resume from a checkpoint trained with another recipe than this run's (epochs, images, rate, seed)."""
    tcfg, mcfg = ckpt.get("train_config") or {}, ckpt.get("model_config") or {}
    want = {"epochs": args.epochs, "train_limit": args.train_limit, "seed": seed,
            "reg": method if method in REG_WEIGHT else "none", "rho": rho if method in REG_WEIGHT else 0.0,
            "field": "contractive" if method == "contractive" else "paper",
            "field_rho": rho if method == "contractive" else 0.0}
    found = {**tcfg, "field": mcfg.get("field", "paper"), "field_rho": mcfg.get("rho", 0.0)}
    diff = {k: (found.get(k), v) for k, v in want.items() if found.get(k) != v}
    if diff:
        raise CNodeError(f"{path} was trained with another recipe ({diff}, as (found, wanted)); "
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
        for method, marker in (("jacobian", "o-"), ("weight", "s-"), ("contractive", "^-")):
            pts = sorted((a["rho"], a["mean"][("clean", None)], a["spread"][("clean", None)] / 2)
                         for a in rows if a["method"] == method)
            if pts:
                rho, mean, err = zip(*pts)
                row[0].errorbar(rho, mean, yerr=err, fmt=marker, capsize=3, label=method)
        for a in rows:
            if a["method"] not in RATED:
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
    return model_label(r["method"], r["rho"]) if r["method"] in METHODS else r["label"]


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





Item = tuple[str, str, float, int, str, Path]  # dataset, method, rho, seed, label, checkpoint


def study_items(args: StudyConfig) -> list[Item]:
    """Every model of the sweep (seed-major), then the --extra checkpoints, as (dataset, method, rho, seed, label,
    checkpoint path)."""
    out = Path(args.out)
    todo: list[Item] = [(ds, m, rho, seed, model_label(m, rho) + (f" seed={seed}" if args.seeds > 1 else ""),
                         out / f"{ds}_{m}_rho{rho:g}_s{seed}.pt") for ds, m, rho, seed in runs(args)]
    for spec in args.extra:
        ds, sep, rest = spec.partition(":")
        label, sep2, path = rest.partition("=")
        if not (sep and sep2 and ds and label and path):
            raise CNodeError(f"--extra takes DATASET:LABEL=PATH, got {spec!r}")
        todo.append((ds, label, 0.0, 0, label, Path(path)))
    return todo


def result_path(item: Item, args: StudyConfig) -> Path:
    """Where an item's protocol results live (beside its checkpoint in --out; by label for an --extra one)."""
    ds, _, _, _, label, path = item
    out = Path(args.out)
    return path.with_suffix(".json") if path.parent == out else out / f"{ds}_{label}.json"


def study_one(item: Item, args: StudyConfig) -> dict:
    """Train the item's model unless its checkpoint exists (refusing one of another recipe), run the protocol on it,
    write its results JSON. One job of the sweep: independent of every other item (a process of --jobs, an array
    task of --shard)."""
    ds, method, rho, seed, label, path = item
    out = Path(args.out)
    if not path.exists():
        train_one(ds, method, rho, seed, args, path)
    ckpt = load_checkpoint(path)
    if path.parent == out:
        check_reused(ckpt, method, rho, seed, args, path)
    metrics = ckpt.get("metrics") or {}
    t_train = metrics.get("train_seconds") or sum(metrics.get("seconds_per_epoch") or [])
    data = load_dataset(ds, "test", data_root=args.data_root, limit=args.test_limit)
    rob = robustness(model_from_checkpoint(ckpt, path), data, draws=args.draws, square_queries=args.square_queries,
                     gaussian=GAUSSIAN, salt_pepper=SALT_PEPPER, attack_eps=ATTACK_EPS,
                     certify_eps=args.certify_eps, progress=False, device=args.device)
    entry = {"dataset": ds, "method": method, "rho": rho, "seed": seed, "label": label, "checkpoint": str(path),
             "train_seconds": t_train, "robustness": rob}
    result_path(item, args).write_text(json.dumps(entry, indent=2))
    return entry


def _job_threads(threads: int) -> None:  # a --jobs worker's share of the cores
    import torch

    torch.set_num_threads(threads)


def _summary(entry: dict, args: StudyConfig) -> str:
    r = entry["robustness"]
    return (f"{entry['dataset']:14s} {entry['label']:22s} clean {r['clean']:.3f}  gauss.3 {r['gaussian']['0.3']:.3f}  "
            f"pgd.1 {r['pgd']['0.1']:.3f}  cert.{args.certify_eps[-1]:g} "
            f"{r['certified'][str(args.certify_eps[-1])]:.3f}  (train {entry['train_seconds']:.0f} s, "
            f"eval {r['seconds']:.0f} s)")


def run_study(args: StudyConfig, *, log: Callable[[str], None] = print) -> list[dict]:
    """Train (or reuse) every model of the sweep, run the protocol on each, write results.json, results.md and
    study.png into `args.out`. Resumable: a checkpoint or result already in `out` is reused.

    `jobs` > 1: the models go to that many local processes (each with its share of the cores). `shard=(i, n)`: only
    the models i, i + n, i + 2n, ... of the sweep (a job array's task); the tables are then left to
    `report_only`, which writes them from every result in `out` once all shards have finished."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo = study_items(args)
    mine = todo if args.shard is None else todo[args.shard[0]::args.shard[1]]
    pending = [] if args.report_only else [item for item in mine if not result_path(item, args).exists()]
    if args.jobs > 1 and len(pending) > 1:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(pending)), mp_context=multiprocessing.get_context(
                "spawn"), initializer=_job_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(study_one, item, args) for item in pending]
            for done in as_completed(futures):
                log(_summary(done.result(), args))
    else:
        for item in pending:
            log(_summary(study_one(item, args), args))
    if args.shard is not None:
        finished = sum(result_path(item, args).exists() for item in mine)
        log(f"shard {args.shard[0]}/{args.shard[1]}: {finished} of its {len(mine)} models done "
            f"({time.perf_counter() - start:.0f} s); `cnode study --report-only --out {out}` writes the tables once "
            "every shard has finished")
        return [json.loads(result_path(item, args).read_text()) for item in mine if result_path(item, args).exists()]
    results = [json.loads(result_path(item, args).read_text()) for item in todo if result_path(item, args).exists()]
    if not results:
        raise CNodeError(f"no results in {out} to report")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(tables(results))
    plots(results, out)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'study.png'} "
        f"({time.perf_counter() - start:.0f} s)")
    return results
