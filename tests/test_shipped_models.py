"""The checkpoints shipped in examples/models/ load, are small, and certify what their manifest says."""

import json
from pathlib import Path

import pytest
import torch

from certify.run import certify_model
from certify.checks import attack_check
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


FAST = 10  # inputs of the fast check (make test); the slow one takes the manifest's 100


def _check(entry, real_data_root, limit):
    path = MODELS / entry["file"]
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path)
    assert trained_dataset(payload) == entry["dataset"]
    data = load_dataset(entry["dataset"], "test", data_root=real_data_root, limit=limit)
    check = entry["check"]
    report = certify_model(model, data, eps=check["eps"], norm=check["norm"], bound=check["bound"])
    if report.certified_accuracy > 0:
        attacked = attack_check(model, data, report, limit=30, restarts=1, steps=20, queries=50)
        assert attacked.broken == 0
    with torch.no_grad():
        assert model(data.tensors(0, 4)[0]).shape == (4, 10)
    return report


# the plain paper model's fast check is test_linear's (its auto certificate on the same checkpoint, 2 s per input)
FAST_ENTRIES = [m for m in MANIFEST if m["file"] != "mnist_plain_paper.pt"]


@pytest.mark.parametrize("entry", FAST_ENTRIES, ids=[m["file"] for m in FAST_ENTRIES])
def test_shipped_checkpoint_gives_its_recorded_verdicts(entry, real_data_root):
    """The first 10 inputs: each one's verdict (certified, open, misclassified) is the one recorded in the manifest
    (`python bench/shipped_models.py --write`), up to one input (a margin within float reductions of its slack)."""
    report = _check(entry, real_data_root, FAST)
    expected = entry["check"]["verdicts_first100"][:FAST]
    got = report.verdicts()
    assert sum(a != b for a, b in zip(got, expected)) <= 1, (got, expected)
    recorded = entry["check"]["verdicts_first100"]
    assert recorded.count("c") / 100 == pytest.approx(entry["check"]["certified_first100"], abs=1e-9)
    assert 1 - recorded.count("x") / 100 == pytest.approx(entry["check"]["clean_first100"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("entry", MANIFEST, ids=[m["file"] for m in MANIFEST])
def test_shipped_checkpoint_certifies_as_its_manifest_says(entry, real_data_root):
    report = _check(entry, real_data_root, 100)
    check = entry["check"]
    assert report.clean_accuracy == pytest.approx(check["clean_first100"], abs=0.011)
    assert report.certified_accuracy == pytest.approx(check["certified_first100"], abs=0.011)


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


@pytest.mark.parametrize("entry", [m for m in MANIFEST if "block_factor_inf" in m["check"]], ids=lambda m: m["file"])
def test_shipped_contractive_model_contracts_as_run(entry):
    """The contractive field's shipped model: the Euler map as run is certified contractive in Linf (every step and
    the block, the manifest's figures), and pairs of states pushed through the block shrink by at least that."""
    from contraction.certificates import block_certificates

    path = MODELS / entry["file"]
    model = model_from_checkpoint(load_checkpoint(path), path)
    assert model.config.field == "contractive"
    (cert,) = block_certificates(model.block.spec(), ("inf",))
    assert cert.certified and cert.factor < 1 and max(cert.step_factors) < 1
    assert cert.factor == pytest.approx(entry["check"]["block_factor_inf"], abs=1e-4)
    assert max(cert.step_factors) == pytest.approx(entry["check"]["worst_step_inf"], abs=1e-4)
    assert max(cert.step_factors) <= 1 - model.config.h * model.config.rho  # the rate the field is built for
    g = torch.Generator().manual_seed(0)
    c, s = model.config.channels, model.config.block_size
    x = torch.randn(8, c, s, s, generator=g)
    y = x + 0.1 * torch.randn(8, c, s, s, generator=g)
    with torch.no_grad():
        fx, fy = model.block(x), model.block(y)
    ratio = (fx - fy).flatten(1).abs().amax(1) / (x - y).flatten(1).abs().amax(1)
    assert bool((ratio <= cert.factor * (1 + 1e-4)).all())
