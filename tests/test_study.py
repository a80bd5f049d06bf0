"""The paper study's pooling of seeds: every table cell is the mean over seeds, the spread is max - min."""

import dataclasses

import pytest
from tests.profiles import budget
from hypothesis import given, settings
from hypothesis import strategies as st

from certify import study
from contraction.errors import CNodeError
from nodes.config import ModelConfig

acc = st.floats(0.0, 1.0)


def result(method: str, rho: float, seed: int, vals: list[float], arch: str = "paper",
           factors: dict | None = None) -> dict:
    rob = {"n": 50, "clean": vals[0], "gaussian": {"0.1": vals[1]}, "salt_pepper": {"0.05": vals[2]},
           "fgsm": {"0.05": vals[3]}, "pgd": {"0.05": vals[4]}, "certified": {"0.01": vals[5]},
           "square": {"accuracy": vals[6]}, "factors": factors or {}}
    label = method + (f" rho={rho:g}" if method != "nominal" else "") + f" seed={seed}"
    return {"dataset": "mnist", "arch": arch, "method": method, "rho": rho, "seed": seed, "label": label,
            "train_seconds": 10.0 * (seed + 1), "robustness": rob}


@settings(max_examples=budget(30), deadline=None)
@given(st.lists(st.lists(acc, min_size=7, max_size=7), min_size=1, max_size=4), st.lists(acc, min_size=7, max_size=7))
def test_aggregate_pools_seeds_of_one_model_and_keeps_models_apart(per_seed, other):
    results = [result("weight", 0.5, s, v) for s, v in enumerate(per_seed)] + [result("nominal", 0.0, 0, other)]
    agg = {a["label"]: a for a in study.aggregate(results)}
    assert set(agg) == {"weight rho=0.5", "nominal"}
    pooled = agg["weight rho=0.5"]
    assert pooled["seeds"] == len(per_seed) and len(pooled["columns"]) == 7
    for i, key in enumerate(pooled["columns"]):
        col = [v[i] for v in per_seed]
        assert abs(pooled["mean"][key] - sum(col) / len(col)) < 1e-12
        assert abs(pooled["spread"][key] - (max(col) - min(col))) < 1e-12
        assert min(col) - 1e-12 <= pooled["mean"][key] <= max(col) + 1e-12
        assert agg["nominal"]["mean"][key] == other[i] and agg["nominal"]["spread"][key] == 0.0
    table = study.tables(results)
    assert f"| weight rho=0.5 | {len(per_seed)} | {100 * pooled['mean'][('clean', None)]:.1f}" in table


@settings(max_examples=budget(30), deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4), st.lists(acc, min_size=7, max_size=7))
def test_architectures_get_their_own_tables_and_the_worst_factor_over_seeds(factors, vals):
    """One table per (dataset, architecture); the block factor shown is the largest over seeds (a claim that the
    model contracts must hold for every seed), '-' where one seed has none; an --extra row joins every table."""
    mini = [result("weight", 0.3, s, vals, "mini", {"block_inf_weighted": f, "step_inf_weighted": f / 2})
            for s, f in enumerate(factors)]
    paper = [result("weight", 0.3, 0, vals, "paper", {"block_inf_weighted": 0.5}),
             result("weight", 0.3, 1, vals, "paper", {"block_inf_weighted": None})]
    extra = {**result("nominal", 0.0, 0, vals, study.ANY_ARCH), "method": "ibp", "label": "ibp"}
    agg = {(a["arch"], a["label"]): a for a in study.aggregate(mini + paper + [extra])}
    assert agg[("mini", "weight rho=0.3")]["factors"] == {"block_inf_weighted": max(factors),
                                                          "step_inf_weighted": max(factors) / 2}
    assert agg[("paper", "weight rho=0.3")]["factors"]["block_inf_weighted"] is None
    table = study.tables(mini + paper + [extra])
    assert "### mnist, mini" in table and "### mnist, paper" in table and "### mnist, any" not in table
    assert table.count("| ibp | 1 |") == 2
    mini_rows = table.split("### mnist, mini")[1]
    assert f"| {max(factors):.3g} |" in mini_rows and f"| {max(factors) / 2:.3g} |" in mini_rows
    assert study.tables([extra]).count("### mnist, any") == 1  # extras alone: one table of their own


def test_resuming_refuses_a_checkpoint_of_another_recipe(tmp_path):
    args = study.StudyConfig(epochs=3, train_limit=0)
    tcfg = {"epochs": 3, "train_limit": 0, "seed": 1, "reg": "weight", "rho": 0.5}
    paper = {"field": "paper", "rho": 0.0}
    ckpt = lambda t, m=paper: {"train_config": t, "model_config": m}  # noqa: E731
    study.check_reused(ckpt(tcfg), "weight", 0.5, 1, args, tmp_path / "m.pt")  # same recipe: reused silently
    for change in ({"epochs": 5}, {"train_limit": 10_000}, {"seed": 0}, {"rho": 1.0}, {"reg": "jacobian"}):
        with pytest.raises(CNodeError, match="another recipe"):
            study.check_reused(ckpt({**tcfg, **change}), "weight", 0.5, 1, args, tmp_path / "m.pt")
    plain = {**tcfg, "reg": "none", "rho": 0.0}
    study.check_reused(ckpt(plain), "nominal", 0.0, 1, args, tmp_path / "m.pt")
    contractive = {"field": "contractive", "rho": 0.3}
    study.check_reused(ckpt(plain, contractive), "contractive", 0.3, 1, args, tmp_path / "m.pt")
    for other in ({"field": "contractive", "rho": 0.6}, paper):  # the field's rate is part of the recipe
        with pytest.raises(CNodeError, match="another recipe"):
            study.check_reused(ckpt(plain, other), "contractive", 0.3, 1, args, tmp_path / "m.pt")
    mini = dataclasses.asdict(ModelConfig.preset("mini"))  # and so is the architecture
    study.check_reused(ckpt(plain, mini), "nominal", 0.0, 1, args, tmp_path / "m.pt", arch="mini")
    with pytest.raises(CNodeError, match="another recipe"):
        study.check_reused(ckpt(plain, mini), "nominal", 0.0, 1, args, tmp_path / "m.pt", arch="paper")
    with pytest.raises(CNodeError, match="another recipe"):
        study.check_reused(ckpt(plain, dataclasses.asdict(ModelConfig.preset("paper"))), "nominal", 0.0, 1, args,
                           tmp_path / "m.pt", arch="mini")
    # every field counts, not a chosen few: the optimiser's settings and any model field
    with pytest.raises(CNodeError, match="lr"):
        study.check_reused(ckpt({**plain, "lr": 1e-3}), "nominal", 0.0, 1, args, tmp_path / "m.pt")
    with pytest.raises(CNodeError, match="kernel_size"):
        study.check_reused(ckpt(plain, {**paper, "kernel_size": 5}), "nominal", 0.0, 1, args, tmp_path / "m.pt")
    real = study.recipe("mnist", "weight", 0.5, 1, args).to_dict()  # a whole stored recipe is reused as is
    study.check_reused(ckpt(real), "weight", 0.5, 1, args, tmp_path / "m.pt")
    with pytest.raises(CNodeError, match="archs"):
        study.StudyConfig(archs=("huge",))


def _strip(results: list[dict]) -> list[dict]:
    """Results without their wall-clock figures and block factors (compared by `_factors_close`: the weights they
    are read from differ in the last bits between thread counts)."""
    return [{**{k: v for k, v in r.items() if k not in ("train_seconds", "checkpoint")},
             "robustness": {k: v for k, v in r["robustness"].items() if k not in ("seconds", "factors")}}
            for r in results]


def _factors_close(a: list[dict], b: list[dict]) -> bool:
    fa, fb = [r["robustness"]["factors"] for r in a], [r["robustness"]["factors"] for r in b]
    return len(fa) == len(fb) and all(x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-4) for k in x)
                                      for x, y in zip(fa, fb))


@pytest.mark.slow
def test_parallel_jobs_and_shards_give_the_one_process_study(tmp_path):
    """--jobs 2 (local processes) and two --shard jobs + --report-only reproduce the sequential study's results."""
    tiny = dict(datasets=("mnist-mini",), archs=("paper",), l2_eps=(), methods=("nominal", "weight"), rhos=(0.5,), epochs=1, train_limit=300,
                test_limit=20, draws=1, square_queries=10, certify_eps=(0.1,), device="cpu")
    logs: list[str] = []
    seq = study.run_study(study.StudyConfig(out=str(tmp_path / "seq"), **tiny), log=logs.append)
    par = study.run_study(study.StudyConfig(out=str(tmp_path / "par"), jobs=2, **tiny), log=logs.append)
    for i in range(2):
        part = study.run_study(study.StudyConfig(out=str(tmp_path / "sh"), shard=(i, 2), **tiny), log=logs.append)
        assert len(part) == 1
    assert not (tmp_path / "sh" / "results.json").exists()  # shards leave the tables to --report-only
    sh = study.run_study(study.StudyConfig(out=str(tmp_path / "sh"), report_only=True, **tiny), log=logs.append)
    assert len(seq) == 2 and _strip(par) == _strip(seq) == _strip(sh)
    assert _factors_close(par, seq) and _factors_close(sh, seq)
    assert any("shard 1/2: 1 of its 1 models done" in line for line in logs)
    with pytest.raises(CNodeError, match="jobs"):
        study.StudyConfig(jobs=0)
    with pytest.raises(CNodeError, match="shard"):
        study.StudyConfig(shard=(2, 2))
