"""The command lines: bad inputs give one line on stderr and exit 2; the JSON report's schema; the README demo."""

import json
import subprocess
import sys

import pytest
import torch

from certify.cli import certify_main
from certify.cli import main as cnode_main
from certify.study import StudyConfig
from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from nodes import load_model


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(main(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_certify_json_schema(tiny_trained, tmp_path, capsys):
    _, path = tiny_trained
    out_json = tmp_path / "r.json"
    code, out, err = _run(certify_main, [str(path), "--eps", "0.001", "--limit", "50", "--json", str(out_json),
                                         "--quiet", "--attack-check", "--pgd", "5"], capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["pgd"]["steps"] == 5 and report["pgd"]["n"] == 50 and report["pgd"]["broken_certified"] == 0
    assert report["certified_accuracy"] <= report["pgd"]["accuracy"] <= report["clean_accuracy"]
    assert report["pgd"]["loss"] == "ce+margin"  # the default: robust only if PGD with each loss left it correct
    assert report["pgd"]["accuracy"] <= min(report["pgd"]["accuracy_by_loss"].values())
    assert "PGD-5 accuracy" in out and "ce alone" in out
    for key in ("dataset", "norm", "eps", "n", "clean_accuracy", "certified_accuracy", "bound", "timing", "samples"):
        assert key in report
    assert report["dataset"] == "mnist-mini" and report["norm"] == "inf" and report["n"] == 50
    for key in ("method", "norm", "rate", "factor", "embedding_lipschitz", "network_lipschitz_pairwise_max"):
        assert key in report["bound"]
    s = report["samples"]
    assert [x["index"] for x in s] == list(range(50))
    assert all(set(x) == {"index", "label", "prediction", "radius", "certified", "certified_by", "falsified",
                          "nonfinite", "pgd_robust"} for x in s)  # pgd_robust: --pgd ran
    assert report["nonfinite"] == sum(x["nonfinite"] for x in s) == 0
    assert report["roundoff"]["model"] == "derived" and 0 < report["roundoff"]["observed_over_derived_max"] <= 1
    assert sum(x["pgd_robust"] for x in s) / 50 == pytest.approx(report["pgd"]["accuracy"])
    assert not any(x["certified"] and not x["pgd_robust"] for x in s)
    assert report["shard"] is None and len(report["model_sha256"]) == 64
    assert report["falsified"] == sum(x["falsified"] for x in s)
    assert not any(x["falsified"] and x["certified"] for x in s)  # an adversarial input rules a certificate out
    assert report["certified_accuracy"] == pytest.approx(sum(x["certified"] for x in s) / 50)
    for x in s:  # one convention: the radius is a proven closed ball; certified at eps iff radius >= eps
        assert x["certified"] == (x["certified_by"] != "") == (x["radius"] >= 0.001)
    assert sum(report["certified_by"].values()) == sum(x["certified"] for x in s)
    assert report["attack_check"]["broken"] == 0
    assert "certified accuracy" in out


def test_bad_inputs_give_one_line_and_exit_2(tiny_trained, tmp_path, capsys):
    _, path = tiny_trained
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage" * 10)
    nan_model = tmp_path / "nan.pt"
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v * float("nan") for k, v in payload["state_dict"].items()}
    torch.save(payload, nan_model)
    dopri5 = tmp_path / "dopri5.pt"
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["solver"] = "dopri5"
    torch.save(payload, dopri5)
    cases = [
        (certify_main, [str(tmp_path / "missing.pt"), "--eps", "0.1"], "not found"),
        (certify_main, [str(corrupt), "--eps", "0.1"], "not a readable checkpoint"),
        (certify_main, [str(nan_model), "--eps", "0.1"], "non-finite"),
        (certify_main, [str(dopri5), "--eps", "0.1", "--dataset", "mnist-mini"], "adaptive"),
        (certify_main, [str(path), "--eps", "0"], "eps"),
        (certify_main, [str(path), "--eps", "-0.1"], "eps"),
        (certify_main, [str(path), "--eps", "nan"], "eps"),
        (certify_main, [str(path), "--eps", "abc"], "eps"),
        (certify_main, [str(path), "--eps", "0.1", "--norm", "1"], "norm"),
        (certify_main, [str(path)], "--eps"),
        (certify_main, [str(path), "--eps", "0.1", "--dataset", "mnist", "--data-root", str(tmp_path)], "not found"),
        (cnode_main, ["train", "--epochs", "1"], "--out"),
        (cnode_main, ["train", "--out", "x.pt", "--channels", "0", "--dataset", "mnist-mini"], "channels"),
        (cnode_main, ["train", "--out", "x.pt", "--padding", "reflect"], "padding"),
        (cnode_main, ["evaluate", str(corrupt)], "not a readable checkpoint"),
        (cnode_main, ["frobnicate"], "invalid choice"),
    ]
    for main, argv, fragment in cases:
        code, _, err = _run(main, argv, capsys)
        assert code == 2, (argv, err)
        assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_evaluate_prints_accuracy_and_block_certificates(tiny_trained, capsys):
    _, path = tiny_trained
    code, out, err = _run(cnode_main, ["evaluate", str(path), "--limit", "100", "--quiet"], capsys)
    assert code == 0, err
    assert "test accuracy" in out and "inf_weighted" in out and "certified" in out


def test_help_everywhere(capsys):
    """Every subcommand's --help exits 0 with a usage line; `python -m certify` runs the same CLI (one interpreter
    launch: the entry point; the rest in process)."""
    for main_, argv in ((cnode_main, ["--help"]), (certify_main, ["--help"]),
                        *((cnode_main, [cmd, "--help"]) for cmd in ("train", "strip", "evaluate", "certify", "merge",
                                                                   "robustness", "demo", "study"))):
        code, out, _ = _run(lambda a, m=main_: m(a), argv, capsys)
        assert code == 0 and "usage" in out, argv
    proc = subprocess.run([sys.executable, "-m", "certify", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: cnode train" in proc.stdout, proc.stderr


def test_certify_with_the_lmi_bound(tmp_path, capsys):
    from nodes import ConvNODE, ModelConfig, TrainConfig, save_model

    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2, padding="circular"))
    with torch.no_grad():
        for f in model.block.fields:
            f.conv.weight[range(2), range(2), 1, 1] -= 3.0
    path = save_model(tmp_path / "circ.pt", model, train_config=TrainConfig(dataset="mnist-mini"))
    out_json = tmp_path / "lmi.json"
    code, out, err = _run(certify_main, [str(path), "--eps", "0.01", "--norm", "2", "--bound", "lmi", "--limit", "20",
                                         "--json", str(out_json), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["bound"]["block_norm"] == "2_P" and report["bound"]["factor"] > 0 and "LMI" in out
    zeros = tmp_path / "zeros.pt"
    save_model(zeros, ConvNODE(ModelConfig(channels=2, steps=1)), train_config=TrainConfig(dataset="mnist-mini"))
    code, _, err = _run(certify_main, [str(zeros), "--eps", "0.01", "--norm", "2", "--bound", "lmi"], capsys)
    assert code == 2 and "circular" in err and len(err.strip().splitlines()) == 1


def test_cnode_robustness_table_and_json(tiny_trained, tmp_path, capsys):
    _, path = tiny_trained
    out_json = tmp_path / "rob.json"
    code, out, err = _run(cnode_main, ["robustness", str(path), "--limit", "40", "--draws", "2", "--square-queries",
                                       "20", "--certify-eps", "0.01", "0.1", "--l2-eps", "0.3", "--json", str(out_json),
                                       "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["n"] == 40 and set(r["gaussian"]) == {"0.1", "0.2", "0.3"} and set(r["pgd"]) == {"0.05", "0.1", "0.2", "0.3"}
    assert set(r["certified"]) == {"0.01", "0.1"}
    for e in ("0.05", "0.1", "0.2", "0.3"):  # PGD is at least as strong as FGSM here, never above clean
        assert r["pgd"][e] <= r["clean"] + 1e-12 and r["fgsm"][e] <= r["clean"] + 1e-12
    for e in ("0.01", "0.1"):  # certified accuracy never exceeds what PGD leaves at a larger or equal eps
        assert r["certified"][e] <= r["clean"]
    assert r["certified"]["0.1"] <= r["pgd"]["0.1"] + 1e-12
    assert r["square"]["accuracy"] >= r["certified"]["0.1"] - 1e-12
    assert "PGD-20 Linf" in out and "gradient-free" in out and "PGD-20 L2" in out and "block factor as run" in out
    assert set(r["pgd_l2"]) == set(r["certified_l2"]) == {"0.3"}  # L2: certified <= PGD <= clean
    assert r["certified_l2"]["0.3"] <= r["pgd_l2"]["0.3"] + 1e-12 and r["pgd_l2"]["0.3"] <= r["clean"] + 1e-12
    model = load_model(path)  # the factors reported are the block certificates' (Euler map as run)
    certs = {c.norm: c for c in block_certificates(model.block.spec(), ("inf", "inf_weighted"))}
    for norm, cert in certs.items():
        assert r["factors"][f"block_{norm}"] == pytest.approx(cert.factor)
        assert r["factors"][f"step_{norm}"] == pytest.approx(max(cert.step_factors))
    for bad in (["--certify-eps", "-1"], ["--l2-eps", "0"]):
        code, _, err = _run(cnode_main, ["robustness", str(path), *bad, "--quiet"], capsys)
        assert code == 2 and err.count("\n") == 1


def test_version_and_verbosity_flags(capsys):
    from contraction import __version__

    code, out, _ = _run(cnode_main, ["--version"], capsys)
    assert code == 0 and out.strip() == f"cnode {__version__}"
    code, out, _ = _run(certify_main, ["--version"], capsys)
    assert code == 0 and out.strip() == f"certify {__version__}"
    code, _, err = _run(cnode_main, ["-vv", "certify", "missing.pt", "--eps", "0.1"], capsys)
    assert code == 2 and "not found" in err


def test_train_log_file_has_one_line_per_epoch_and_no_carriage_returns(tmp_path):
    """Output to a file (not a terminal): no progress-bar redraws, just the epoch lines."""
    out = tmp_path / "m.pt"
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "certify", "train", "--dataset", "mnist-mini", "--epochs", "2",
                               "--train-limit", "256", "--test-limit", "50", "--channels", "4", "--head", "none",
                               "--out", str(out)], stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]


def test_cnode_study_trains_evaluates_and_reports_then_resumes(tmp_path, capsys):
    with pytest.raises(CNodeError, match="study --archs mini --rhos 0.5: rate rho = 0.5 cannot be kept"):
        StudyConfig(rhos=(0.5,))  # the mini's Euler step (h = 0.2) carries rates below 0.5 only: refused up front
    argv = ["study", "--datasets", "mnist-mini", "--archs", "paper", "--rhos", "0.5", "--epochs", "1",
            "--l2-eps", "--train-limit", "128",
            "--test-limit", "10", "--draws", "1", "--square-queries", "5", "--certify-eps", "0.01", "--out",
            str(tmp_path), "--quiet"]
    assert cnode_main(argv) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["label"] for r in first) == ["contractive rho=0.5", "jacobian rho=0.5", "nominal", "weight rho=0.5"]
    for r in first:
        ckpt = torch.load(r["checkpoint"], weights_only=True)
        tcfg = ckpt["train_config"]
        assert ckpt["model_config"]["channels"] == 8 and tuple(map(tuple, ckpt["model_config"]["stem"])) == ((8, 3, 1, 1),)
        assert (tcfg["lr"], tcfg["certified_eps"], tcfg["init"]) == (1e-2, 0.0, "default")  # the paper's recipe
        regularized = r["method"] in ("jacobian", "weight")
        assert tcfg["neg_init"] == regularized and tcfg["rho"] == (r["rho"] if regularized else 0.0)
        assert ckpt["model_config"]["field"] == ("contractive" if r["method"] == "contractive" else "paper")
        assert ckpt["model_config"]["rho"] == (r["rho"] if r["method"] == "contractive" else 0.0)
    assert cnode_main(argv[:-1] + ["--report-only"]) == 0  # everything reused: the same results
    assert json.loads((tmp_path / "results.json").read_text()) == first
    assert "| nominal | 1 |" in (tmp_path / "results.md").read_text()
    assert cnode_main(["study", "--report-only", "--out", str(tmp_path / "empty")]) == 2
    assert "no results" in capsys.readouterr().err


def test_plot_writes_a_readable_png(tiny_trained, tmp_path, capsys):
    import matplotlib.image

    _, path = tiny_trained
    png = tmp_path / "curve.png"
    code, out, err = _run(certify_main, [str(path), "--eps", "0.005", "--limit", "30", "--plot", str(png), "--quiet"],
                          capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05  # axes, a curve and labels: not a blank canvas


def test_an_lmi_too_large_for_memory_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Before any solve: the planned memory against what is available; above it, one line and exit 2, never a killed
    process."""
    import contraction.lmi
    from nodes import ConvNODE, ModelConfig, TrainConfig, save_model

    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2, padding="circular"))
    path = save_model(tmp_path / "circ.pt", model, train_config=TrainConfig(dataset="mnist-mini"))
    monkeypatch.setattr(contraction.lmi, "available_memory", lambda: 2**20)
    code, out, err = _run(certify_main, [str(path), "--eps", "0.01", "--norm", "2", "--bound", "lmi", "--limit", "5"],
                          capsys)
    assert code == 2 and "too_large" in err and "GiB" in err and len(err.strip().splitlines()) == 1, err


def test_contractive_field_trains_reports_contraction_as_run_and_certifies(tmp_path, capsys):
    """`--field contractive --rho R`: the report leads with the factor as run and says the network contracts; every
    stage certifies it soundly (attack check); a rate the step cannot carry is one line, exit 2, naming the steps."""
    out = tmp_path / "c.pt"
    code, text, err = _run(cnode_main, ["train", "--dataset", "mnist-mini", "--field", "contractive", "--rho", "0.2",
                                        "--channels", "4", "--epochs", "1", "--train-limit", "256", "--test-limit",
                                        "64", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "inf: the network as run contracts" in text and "worst step" in text
    cfg = torch.load(out, weights_only=True)["model_config"]
    assert cfg["field"] == "contractive" and cfg["rho"] == 0.2
    code, text, err = _run(certify_main, [str(out), "--eps", "0.01", "--limit", "32", "--attack-check", "--quiet"],
                           capsys)
    assert code == 0, err
    assert "factor as run" in text and "flow's rate" in text
    code, _, err = _run(cnode_main, ["train", "--dataset", "mnist-mini", "--reg", "weight", "--rho", "1.0",
                                     "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "use 13 steps" in err
    code, _, err = _run(cnode_main, ["train", "--dataset", "mnist-mini", "--field", "contractive", "--rho", "0.3",
                                     "--reg", "weight", "--out", str(tmp_path / "y.pt")], capsys)
    assert code == 2 and "contractive by construction" in err
