"""The checkpoints shipped in examples/models/ load, are small, and certify what their manifest says."""

import json
from pathlib import Path

import pytest
import torch

from certify.run import attack_check, certify_model
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
MANIFEST = json.loads((MODELS / "models.json").read_text())


def test_every_shipped_checkpoint_is_in_the_manifest_and_small():
    files = sorted(p.name for p in MODELS.glob("*.pt"))
    assert files == sorted(m["file"] for m in MANIFEST) and len(files) >= 6
    kinds = {(m["dataset"], m["kind"]) for m in MANIFEST}
    for ds in ("mnist", "fashion-mnist"):
        assert {(ds, "nominal"), (ds, "weight-regularized"), (ds, "certified-trained")} <= kinds
    for p in MODELS.glob("*.pt"):
        assert p.stat().st_size <= 2_000_000  # the bound: 2 MB per shipped model
        assert "training_state" not in load_checkpoint(p)  # stripped: no optimizer state shipped


@pytest.mark.parametrize("entry", MANIFEST, ids=[m["file"] for m in MANIFEST])
def test_shipped_checkpoint_certifies_as_its_manifest_says(entry, real_data_root):
    path = MODELS / entry["file"]
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path)
    assert trained_dataset(payload) == entry["dataset"]
    data = load_dataset(entry["dataset"], "test", data_root=real_data_root, limit=100)
    check = entry["check"]
    report = certify_model(model, data, eps=check["eps"], norm=check["norm"], bound=check["bound"])
    assert report.clean_accuracy == pytest.approx(check["clean_first100"], abs=0.011)
    assert report.certified_accuracy == pytest.approx(check["certified_first100"], abs=0.011)
    if report.certified_accuracy > 0:
        attacked = attack_check(model, data, report, limit=30, restarts=1, steps=20, queries=50)
        assert attacked.broken == 0
    with torch.no_grad():
        assert model(data.tensors(0, 4)[0]).shape == (4, 10)


def test_measured_figures_of_the_frontier_models_are_consistent():
    """The full-test-set figures recorded for the certified-trained models: certified <= PGD-100 (PGD-50) <= clean,
    no certified input broken by PGD or the attack check, all 10,000 test images, a reproducing command; for the L2
    model, per radius: global <= auto (or crown) <= PGD."""
    measured = [m for m in MANIFEST if "measured" in m]
    assert {m["file"] for m in measured} >= {"mnist_linf_0.1.pt", "mnist_l2.pt"}
    for m in measured:
        r = m["measured"]
        assert r["test_images"] == 10_000
        assert r["certified"] <= r.get("pgd100", r.get("pgd50")) <= r["clean"]
        for radius in r.get("by_eps", {}).values():
            tight = radius.get("certified_auto", radius.get("certified_crown"))
            assert radius["certified_global"] <= tight <= radius["pgd_accuracy"] and radius["pgd_broken_certified"] == 0
        assert r["pgd_broken_certified"] == 0 and r["attack_check"]["broken"] == 0 and r["certify_exit_code"] == 0
        assert m["command"].startswith("cnode train ") and f"--certified-eps {m['check']['eps']:g}" in m["command"]
