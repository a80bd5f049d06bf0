"""The paper's study (docs/METHOD.md section 6, our protocol): nominal, Jacobian-regularized, weight-regularized
and contractive-field ConvNODEs with the paper's recipe over a sweep of target rates rho (each Euler step as run
shrinking by 1 - h rho), architectures (the paper's and `mini`) and seeds, on MNIST and FashionMNIST, each through
the robustness protocol (with the block's factor as run); certified-trained checkpoints can join every table
(`extra`). Writes results.json, results.md and study.png. `cnode study` is its command line."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from contraction.errors import CNodeError
from contraction.weights import check_step_rate
from certify.robustness import ATTACK_EPS, GAUSSIAN, SALT_PEPPER, robustness
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, save_model
from nodes.config import ModelConfig, TrainConfig
from nodes.data import load_dataset
from nodes.train import fit

METHODS = ("nominal", "jacobian", "weight", "contractive")
ARCHS = ("paper", "mini")
"""The architecture presets a sweep can take (`ModelConfig.preset`)."""
RATED = ("jacobian", "weight", "contractive")
"""The methods with a target rate: the two regularizers (each Euler step as run at 1 - h rho) and the contractive
field (the rate built into the model)."""

__all__ = ["StudyConfig", "StudyItem", "METHODS", "ARCHS", "QUICK", "PAPER_RECIPE", "REG_WEIGHT", "run_study",
           "study_items", "study_one", "tables", "aggregate", "recipe"]

# The paper's recipe, every field explicit (the library's defaults may change; the study does not): Adam, readout
# at a tenth of the lr, no certified loss, PyTorch's initialisation (+ the negative diagonal for the regularized
# models), the same for every method and architecture (a fair comparison).
PAPER_RECIPE = dict(batch_size=128, lr=1e-2, lr_decay=0.7, readout_lr_scale=0.1, certified_eps=0.0, init="default",
                    reg_norm="inf", reg_hinge="squared")
REG_WEIGHT = {"jacobian": 0.1, "weight": 0.01}


@dataclass(frozen=True)
class StudyConfig:
    """The sweep: datasets x (nominal, jacobian and weight at each rho) x seeds, and the protocol's settings."""

    out: str = "runs/study"
    datasets: tuple[str, ...] = ("mnist", "fashion-mnist")
    archs: tuple[str, ...] = ARCHS
    rhos: tuple[float, ...] = (0.1, 0.3)  # rates both Euler steps carry (paper h = 0.1: < 1; mini h = 0.2: < 0.5)
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    epochs: int = 2
    train_limit: int = 20_000
    test_limit: int = 300
    draws: int = 3
    square_queries: int = 100
    certify_eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    l2_eps: tuple[float, ...] = (0.5,)
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
        if not self.archs or any(a not in ARCHS for a in self.archs) or any(not e > 0 for e in self.l2_eps):
            raise CNodeError(f"study: archs must be among {', '.join(ARCHS)} and L2 eps > 0")
        if any(m in RATED for m in self.methods):  # before hours of training: every rate on every architecture
            for arch in self.archs:
                cfg = ModelConfig.preset(arch)
                for rho in self.rhos:
                    check_step_rate(rho, cfg.act.a, cfg.act.b, cfg.T, cfg.steps, PAPER_RECIPE["reg_norm"],
                                    f"study --archs {arch} --rhos {rho:g}")


QUICK = dict(datasets=("mnist-mini",), archs=("paper",), rhos=(0.3, 0.9), epochs=1, train_limit=0, test_limit=100,
             draws=1, square_queries=50)
"""The smoke-test settings (`cnode study --quick`)."""


@dataclass(frozen=True)
class StudyItem:
    """One model of the study: a trained one (`method` in METHODS) or an --extra checkpoint (`method` its label)."""

    dataset: str
    arch: str
    method: str
    rho: float
    seed: int
    label: str
    path: Path


def runs(args: StudyConfig) -> list[tuple[str, str, str, float, int]]:
    """(dataset, arch, method, rho, seed) for every model to train; nominal has rho 0."""
    out = []
    for seed in range(args.seeds):  # seed by seed, so that a run cut short still has whole sweeps
        for ds in args.datasets:
            for arch in args.archs:
                if "nominal" in args.methods:
                    out.append((ds, arch, "nominal", 0.0, seed))
                for method in RATED:
                    if method in args.methods:
                        out.extend((ds, arch, method, rho, seed) for rho in args.rhos)
    return out


def model_config(arch: str, method: str, rho: float) -> ModelConfig:
    """The preset; the contractive field builds the rate rho into the model."""
    field = dict(field="contractive", rho=rho) if method == "contractive" else {}
    return ModelConfig.preset(arch, **field)


def recipe(dataset: str, method: str, rho: float, seed: int, args: StudyConfig) -> TrainConfig:
    """The paper's recipe for one model; the regularizers add their hinge at rate rho (and the lab's negative
    diagonal), the contractive field builds the rate into the model (no regularizer, no diagonal)."""
    reg = dict(reg=method, rho=rho, reg_weight=REG_WEIGHT[method], neg_init=True) if method in REG_WEIGHT else {}
    return TrainConfig(dataset=dataset, epochs=args.epochs, seed=seed, train_limit=args.train_limit, **PAPER_RECIPE,
                       **reg)


def train_one(item: StudyItem, args: StudyConfig) -> None:
    """The preset and the paper's recipe (`recipe`, `model_config`), saved to the item's path."""
    tcfg = recipe(item.dataset, item.method, item.rho, item.seed, args)
    data = load_dataset(item.dataset, "train", data_root=args.data_root, limit=args.train_limit or None)
    model, history = fit(model_config(item.arch, item.method, item.rho), tcfg, data, None, device=args.device,
                         progress=False)
    save_model(item.path, model, train_config=tcfg, metrics={"train_seconds": sum(history.epoch_seconds)})


def check_reused(ckpt: dict, method: str, rho: float, seed: int, args: StudyConfig, path: Path,
                 arch: str = "paper") -> None:
    """Refuse to resume from a checkpoint trained with another recipe than this run's: every model-config field
    (the architecture, the field and its rate) and every training field the checkpoint records (epochs, images,
    seed, the regularizer and its rate, the paper's optimiser settings) must equal what this run would train."""
    try:
        found_model = ModelConfig.from_dict(ckpt.get("model_config") or {})
        stored = ckpt.get("train_config") or {}
        found_train = TrainConfig.from_dict(stored)
    except CNodeError as e:
        raise CNodeError(f"{path}: unreadable recipe ({e}); remove it or use another --out") from None
    want_train = recipe(found_train.dataset, method, rho, seed, args)
    diff = {f.name: (getattr(found_model, f.name), getattr(want, f.name))
            for want in (model_config(arch, method, rho),) for f in dataclasses.fields(want)
            if getattr(found_model, f.name) != getattr(want, f.name)}
    diff.update({k: (getattr(found_train, k), getattr(want_train, k)) for k in stored
                 if hasattr(want_train, k) and getattr(found_train, k) != getattr(want_train, k)})
    if diff:
        raise CNodeError(f"{path} was trained with another recipe ({diff}, as (found, wanted)); "
                         "remove it or use another --out")


def _panels(agg: list[dict]) -> list[tuple[str, str]]:
    """(dataset, architecture) of every table and plot row; --extra rows (any architecture) join each of their
    dataset's, or make one of their own where the sweep trained nothing on that dataset."""
    trained = {(a["dataset"], a["arch"]) for a in agg if a["arch"] != ANY_ARCH}
    alone = {(a["dataset"], ANY_ARCH) for a in agg if a["arch"] == ANY_ARCH and not any(d == a["dataset"]
                                                                                        for d, _ in trained)}
    return sorted(trained | alone)


def _panel_rows(agg: list[dict], ds: str, arch: str) -> list[dict]:
    return [a for a in agg if a["dataset"] == ds and a["arch"] in (arch, ANY_ARCH)]


def plots(results: list[dict], out: Path) -> None:
    """Fig. 1 (clean accuracy vs rho) and accuracy vs noise, attack eps and certified eps, per dataset; seeds pooled
    (mean, error bars at half the spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(results)
    panels = _panels(agg)
    fig, axes = plt.subplots(len(panels), 4, figsize=(18, 4 * len(panels)), squeeze=False)
    for row, (ds, arch) in zip(axes, panels):
        rows = _panel_rows(agg, ds, arch)
        ds = f"{ds} {arch}"
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
    return ([("clean", None)] + [(g, k) for g in ("gaussian", "salt_pepper", "fgsm", "pgd", "certified", "pgd_l2",
                                                 "certified_l2") for k in rob.get(g, {})] + [("square", "accuracy")])


def accuracy(rob: dict, key: tuple[str, str | None]) -> float:
    group, level = key
    return rob[group] if level is None else rob[group][level]


def aggregate(results: list[dict]) -> list[dict]:
    """Pool the seeds of each (dataset, architecture, model): per column the mean and the spread (max - min) over
    seeds; the block's factors as run, the worst over seeds (None where one seed has none)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r.get("arch", "paper"), group_label(r)), []).append(r)
    out = []
    for (ds, arch, label), rs in groups.items():
        cols = columns(rs[0]["robustness"])
        vals = {key: [accuracy(r["robustness"], key) for r in rs] for key in cols}
        factors = {}
        for key in FACTORS:
            fs = [(r["robustness"].get("factors") or {}).get(key) for r in rs]
            factors[key] = None if any(f is None for f in fs) else max(fs)
        out.append({"dataset": ds, "arch": arch, "label": label, "method": rs[0]["method"], "rho": rs[0]["rho"],
                    "seeds": len(rs), "factors": factors,
                     "n": rs[0]["robustness"]["n"], "columns": cols,
                     "mean": {k: sum(v) / len(v) for k, v in vals.items()},
                     "spread": {k: max(v) - min(v) for k, v in vals.items()},
                     "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs)})
    return out


COLUMN_NAMES = {"gaussian": "gauss", "salt_pepper": "s&p", "fgsm": "FGSM", "pgd": "PGD", "certified": "cert",
                "pgd_l2": "PGD L2", "certified_l2": "cert L2"}
FACTORS = ("step_inf_weighted", "block_inf_weighted")
"""The block's factors as run in the tables: its worst Euler step and the whole block, channel-weighted inf."""


def tables(results: list[dict]) -> str:
    """Markdown: one table per dataset and architecture, one row per model (seeds pooled: mean, and ± half the spread
    when several), with the block's factor as run (worst step and block, channel-weighted inf; worst over seeds)."""
    lines = []
    agg = aggregate(results)
    num = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    for ds, arch in _panels(agg):
        rows = _panel_rows(agg, ds, arch)
        cols = rows[0]["columns"]
        head = (["model", "seeds"] + [("clean" if k is None else "gradient-free" if g == "square"
                                        else f"{COLUMN_NAMES[g]} {k}") for g, k in cols]
                + ["step factor", "block factor", "train s"])
        lines += [f"### {ds}, {arch} (first {rows[0]['n']} test images; accuracy in %; factors of the Euler map as "
                  "run, channel-weighted inf)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for a in rows:
            cells = [f"{100 * a['mean'][k]:.1f}" + (f" ±{50 * a['spread'][k]:.1f}" if a["seeds"] > 1 else "")
                     for k in cols]
            cells += [num(a["factors"][k]) for k in FACTORS]
            lines.append(f"| {a['label']} | {a['seeds']} | " + " | ".join(cells) + f" | {a['train_seconds']:.0f} |")
        lines.append("")
    if any(a["seeds"] > 1 for a in agg):
        lines += ["Mean over seeds ± half the spread (max - min) between them.", ""]
    return "\n".join(lines)





ANY_ARCH = "any"
"""The architecture of an --extra checkpoint: its rows join the tables of every architecture of its dataset."""


def study_items(args: StudyConfig) -> list[StudyItem]:
    """Every model of the sweep (seed-major), then the --extra checkpoints. The paper architecture's checkpoints keep
    their names of earlier studies (DATASET_METHOD_rhoR_sS.pt), the others carry their architecture."""
    out = Path(args.out)
    todo = [StudyItem(ds, arch, m, rho, seed, model_label(m, rho) + (f" seed={seed}" if args.seeds > 1 else ""),
                      out / f"{ds}{'' if arch == 'paper' else '_' + arch}_{m}_rho{rho:g}_s{seed}.pt")
            for ds, arch, m, rho, seed in runs(args)]
    for spec in args.extra:
        ds, sep, rest = spec.partition(":")
        label, sep2, path = rest.partition("=")
        if not (sep and sep2 and ds and label and path):
            raise CNodeError(f"--extra takes DATASET:LABEL=PATH, got {spec!r}")
        todo.append(StudyItem(ds, ANY_ARCH, label, 0.0, 0, label, Path(path)))
    return todo


def result_path(item: StudyItem, args: StudyConfig) -> Path:
    """Where an item's protocol results live (beside its checkpoint in --out; by label for an --extra one)."""
    out = Path(args.out)
    return item.path.with_suffix(".json") if item.path.parent == out else out / f"{item.dataset}_{item.label}.json"


def study_one(item: StudyItem, args: StudyConfig) -> dict:
    """Train the item's model unless its checkpoint exists (refusing one of another recipe), run the protocol on it,
    write its results JSON. One job of the sweep: independent of every other item (a process of --jobs, an array
    task of --shard)."""
    out = Path(args.out)
    if not item.path.exists():
        train_one(item, args)
    ckpt = load_checkpoint(item.path)
    if item.path.parent == out:
        check_reused(ckpt, item.method, item.rho, item.seed, args, item.path, item.arch)
    metrics = ckpt.get("metrics") or {}
    t_train = metrics.get("train_seconds") or sum(metrics.get("seconds_per_epoch") or [])
    data = load_dataset(item.dataset, "test", data_root=args.data_root, limit=args.test_limit)
    rob = robustness(model_from_checkpoint(ckpt, item.path), data, draws=args.draws,
                     square_queries=args.square_queries, gaussian=GAUSSIAN, salt_pepper=SALT_PEPPER,
                     attack_eps=ATTACK_EPS, certify_eps=args.certify_eps, l2_eps=args.l2_eps, progress=False,
                     device=args.device)
    entry = {"dataset": item.dataset, "arch": item.arch, "method": item.method, "rho": item.rho, "seed": item.seed,
             "label": item.label, "checkpoint": str(item.path), "train_seconds": t_train, "robustness": rob}
    result_path(item, args).write_text(json.dumps(entry, indent=2))
    return entry


def _job_threads(threads: int) -> None:  # a --jobs worker's share of the cores
    import torch

    torch.set_num_threads(threads)


def _summary(entry: dict, args: StudyConfig) -> str:
    r = entry["robustness"]
    f = r.get("factors", {}).get("block_inf_weighted")
    return (f"{entry['dataset']:14s} {entry.get('arch', 'paper'):6s} {entry['label']:22s} clean {r['clean']:.3f}  "
            f"gauss.3 {r['gaussian']['0.3']:.3f}  "
            f"pgd.1 {r['pgd']['0.1']:.3f}  cert.{args.certify_eps[-1]:g} "
            f"{r['certified'][str(args.certify_eps[-1])]:.3f}  block factor {'-' if f is None else f'{f:.3g}'}  "
            f"(train {entry['train_seconds']:.0f} s, eval {r['seconds']:.0f} s)")


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
