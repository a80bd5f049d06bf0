"""More than one process: shards partition the inputs in whole batches; torchrun training (gloo, 2 processes) gives
one checkpoint, resumes bit for bit and lands near the one-process run; distributed, sharded and merged
certification give exactly the one-process per-input results; merge refuses parts that do not belong together."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.cli import main
from certify.merge import load_parts, merge_reports
from certify.run import certify_model
from contraction.errors import CNodeError
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, load_model
from nodes.distributed import batch_shard, parse_shard
from tests.profiles import budget

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "examples" / "models" / "mnist_linf_0.1.pt"


@settings(max_examples=budget(100))
@given(st.integers(0, 500), st.integers(1, 64), st.integers(1, 9))
def test_shards_are_contiguous_whole_batches_covering_every_input_once(n, batch, shards):
    parts = [batch_shard(n, batch, i, shards) for i in range(shards)]
    assert [i for p in parts for i in p] == list(range(n))
    for p in parts:
        assert p.start % batch == 0 or p.start == n  # starts at a batch boundary of the one-process run
        assert p.step == 1


def test_shard_flags_are_checked():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/3", "1", "a/b", "1/0"):
        with pytest.raises(CNodeError, match="shard"):
            parse_shard(bad)


def _torchrun(args: list[str], tmp_path: Path, procs: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "certify", *args]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


RECIPE = ["--dataset", "mnist-mini", "--train-limit", "1000", "--batch-size", "100", "--test-limit", "300", "-q",
          "--reg", "jacobian", "--rho", "0.3", "--init", "default", "--certified-eps", "0.005", "--certified-start",
          "0.5"]  # learns to ~60 % in 2 epochs of 1000 images (one process), every loss term in play


@pytest.mark.slow
def test_torchrun_training_writes_one_checkpoint_resumes_bit_for_bit_and_matches_one_process(tmp_path):
    """2 gloo processes, a regularizer and the certified loss under DDP: 2 epochs straight equal 1 epoch + --resume
    (same world size, same seed); accuracy within a few points of the one-process run of the same recipe."""
    straight = _torchrun(["train", *RECIPE, "--epochs", "2", "--out", "a.pt"], tmp_path)
    assert straight.stdout.count("saved a.pt") == 1 and "training on 2 processes" in straight.stdout
    _torchrun(["train", *RECIPE, "--epochs", "1", "--out", "b.pt"], tmp_path)
    _torchrun(["train", "--resume", "b.pt", "--epochs", "2", "--out", "b.pt", "-q"], tmp_path)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["metrics"]["epochs_done"] == b["metrics"]["epochs_done"] == 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "certify", "train", *RECIPE, "--epochs", "2", "--out", "c.pt"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    acc_dist = a["metrics"]["test_accuracy"]
    acc_one = load_checkpoint(tmp_path / "c.pt")["metrics"]["test_accuracy"]
    assert acc_dist > 0.4 and abs(acc_dist - acc_one) <= 0.05, (acc_dist, acc_one)


def _samples(path: Path) -> list[dict]:
    return json.loads(path.read_text())["samples"]


@pytest.mark.slow
def test_torchrun_certification_equals_one_process_per_input(tmp_path):
    flags = [str(MODEL), "--dataset", "mnist-mini", "--eps", "0.1", "--limit", "250", "--pgd", "5", "--quiet"]
    assert main(["certify", *flags, "--json", str(tmp_path / "one.json")]) == 0
    out = _torchrun(["certify", *flags, "--json", "two.json"], tmp_path)
    assert out.stdout.count("certified accuracy") == 1  # rank 0 reports
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    # identical per input (verdicts, stages, predictions); the radius up to the float32 convolutions' summation order,
    # which follows the thread count (1 per rank under torchrun, 2 here): a few float32 ulps of the margins
    strip = lambda samples: [{k: v for k, v in x.items() if k != "radius"} for x in samples]  # noqa: E731
    assert strip(one["samples"]) == strip(two["samples"]) and two["processes"] == 2
    for a, b in zip(one["samples"], two["samples"]):
        assert b["radius"] == pytest.approx(a["radius"], rel=1e-5, abs=1e-9)
    assert one["pgd"] == two["pgd"] and one["certified_by"] == two["certified_by"]


def test_sharded_and_merged_certification_equals_one_process(tmp_path, capsys):
    """--shard i/n parts (3 shards of 250 inputs in batches of 100), merged by `cnode merge`: every per-input result
    and every recomputed figure equal the one-process report's; PGD per input survives the merge."""
    flags = [str(MODEL), "--dataset", "mnist-mini", "--eps", "0.1", "--limit", "250", "--pgd", "5", "--quiet"]
    assert main(["certify", *flags, "--json", str(tmp_path / "one.json")]) == 0
    for i in range(3):
        assert main(["certify", *flags, "--shard", f"{i}/3", "--json", str(tmp_path / f"p{i}.json")]) == 0
    parts = [str(tmp_path / f"p{i}.json") for i in (2, 0, 1)]
    assert main(["merge", *parts, "--json", str(tmp_path / "m.json")]) == 0
    one, merged = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "m.json").read_text())
    assert merged["samples"] == one["samples"]
    for key in ("n", "clean_accuracy", "certified_accuracy", "median_radius", "certified_by", "falsified", "bound"):
        assert merged[key] == one[key], key
    assert merged["pgd"]["accuracy"] == one["pgd"]["accuracy"]
    assert merged["pgd"]["accuracy_by_loss"] == pytest.approx(one["pgd"]["accuracy_by_loss"])
    assert [len(_samples(tmp_path / f"p{i}.json")) for i in range(3)] == [100, 100, 50]
    assert "merged 3 parts" in capsys.readouterr().out


def test_merge_refuses_parts_that_do_not_belong_together(tmp_path):
    """Three real shards merge; parts that differ in eps, model, shard count, or are not shards, are refused (each
    made from a real part by changing only that field)."""
    model = load_model(MODEL)
    data = load_dataset("mnist-mini", "test", limit=30)
    reports = [certify_model(model, data, eps=0.1, bound="local", batch_size=10, shard=(i, 3)).to_dict()
               for i in range(3)]

    def part(i, tamper=None):
        rep = {**json.loads(json.dumps(reports[i])), "model": "m.pt", "model_sha256": "abc"}
        if tamper:
            tamper(rep)
        path = tmp_path / f"{i}_{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(rep))
        return str(path)

    good = [part(i) for i in range(3)]
    assert merge_reports(load_parts(good))["n"] == 30
    cases = {
        "missing": ([good[0], good[1]], "missing"),
        "twice": ([good[0], good[0], good[1], good[2]], "twice"),
        "eps": ([good[0], good[1], part(2, lambda r: r.update(eps=0.05))], "eps"),
        "model": ([good[0], good[1], part(2, lambda r: r.update(model_sha256="def"))], "model_sha256"),
        "count": ([good[0], part(1, lambda r: r["shard"].update(index=1, count=2))], "shard count"),
        "not a shard": ([good[0], part(1, lambda r: r.update(shard=None))], "not a report"),
    }
    for name, (paths, match) in cases.items():
        with pytest.raises(CNodeError, match=match):
            merge_reports(load_parts(paths))
    with pytest.raises(CNodeError, match="cannot read"):
        load_parts([str(tmp_path / "nope.json")])
