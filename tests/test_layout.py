"""Imports run one way, module by module: contraction <- the model (nodes) <- the bound engine (certify.bounds) <-
training (nodes.train) <- the application (certify) <- the CLI (certify.cli); cvxpy is never imported at package
import, and importing the engine loads nothing of the application."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAINING = {"nodes.train", "nodes.__init__"}  # the training loop (and the package that re-exports it)
ENGINE_SEES = {"nodes.classifier", "nodes.config", "nodes.device", "nodes.block", "nodes.field"}  # the model


def _layer(module: str) -> int:
    """0 contraction, 1 the model, 2 the engine, 3 training, 4 the application, 5 the CLI."""
    if module.startswith("contraction"):
        return 0
    if module.startswith("nodes"):
        return 3 if module in TRAINING else 1
    if module.startswith("certify.bounds"):
        return 2
    return 5 if module.startswith("certify.cli") or module == "certify.__main__" else 4


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("contraction", "nodes", "certify"):
        for path in (REPO / package).rglob("*.py"):
            out[".".join(path.relative_to(REPO).with_suffix("").parts)] = path
    return out


def _imports(path: Path) -> list[str]:
    """Every absolute import of our packages in the file, at run time (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] in ("contraction", "nodes", "certify")]


def test_imports_run_one_way():
    modules = _modules()
    for name, path in modules.items():
        for imported in _imports(path):
            target = imported if imported in modules else imported.rsplit(".", 1)[0]
            if target not in modules and f"{target}.__init__" in modules:
                target = f"{target}.__init__"
            if target not in modules or target == name:
                continue  # a name imported from a module (its module was checked)
            if _layer(name) == 2 and target.startswith("nodes"):
                assert target in ENGINE_SEES, f"the engine's {name} imports {imported}: it sees the model only"
            else:
                assert _layer(target) <= _layer(name), f"{name} (layer {_layer(name)}) imports {imported} " \
                                                        f"(layer {_layer(target)})"


def test_the_engine_has_no_application_code():
    """No progress bars, processes or printing in certify/bounds (its imports of nodes: the test above)."""
    for path in (REPO / "certify" / "bounds").rglob("*.py"):
        text = path.read_text()
        for word in ("tqdm", "torch.distributed", "print("):
            assert word not in text, f"{path.relative_to(REPO)} mentions {word}"


def test_importing_the_packages_has_no_heavy_side_effects():
    code = "import contraction, nodes, certify, sys; print('cvxpy' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert "cnode demo" in makefile and "pytest" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_demo_runs_on_the_embedded_subset(tmp_path):
    """The README's main job, shortened: `cnode demo` on the embedded subset trains, evaluates and certifies."""
    out = subprocess.run(
        [sys.executable, "-m", "certify", "demo", "--data-root", str(tmp_path / "none"), "--epochs", "1",
         "--quiet", "--out", str(tmp_path / "demo.pt"), "--test-images", "200"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "embedded MNIST subset" in out.stdout
    headline = [line for line in out.stdout.splitlines() if line.startswith("headline: ")]
    assert len(headline) == 1 and "at Linf 0.1" in headline[0] and "1000 embedded MNIST test images" in headline[0]
    assert "certified accuracy" in out.stdout and "inf_weighted" in out.stdout and (tmp_path / "demo.pt").exists()


def test_example_loop_makes_a_dense_field_contracting():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "regularize_your_own_loop.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before = float(out.stdout.split("before: ")[1].split()[0])
    after = float(out.stdout.split("after:")[1].split()[0])
    assert before > 1.0 > after


@pytest.mark.slow
def test_paper_study_quick_mode_writes_results_tables_and_plots(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "paper_study.py"), "--quick", "--rhos", "0.5",
                          "--test-limit", "10", "--square-queries", "5", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in results] == ["nominal", "jacobian rho=0.5", "weight rho=0.5", "contractive rho=0.5"]
    for r in results:
        rob = r["robustness"]
        assert rob["n"] == 10 and 0.0 <= rob["certified"]["0.05"] <= rob["pgd"]["0.05"] + 1e-12
        assert set(rob["certified"]) == {"0.01", "0.05", "0.1"}
    assert "| nominal |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "study.png").stat().st_size > 10_000
    # resumable: a second run reuses every result instead of retraining
    again = subprocess.run([sys.executable, str(REPO / "examples" / "paper_study.py"), "--quick", "--rhos", "0.5",
                            "--test-limit", "10", "--out", str(tmp_path)], capture_output=True, text=True,
                           timeout=120, cwd=REPO)
    assert again.returncode == 0 and "clean" not in again.stdout


def test_box_growth_example_shows_the_mean_value_box_shrinking_through_a_contractive_block(tmp_path):
    """examples/box_growth.py: through a block certified contractive as run, the mean-value box shrinks step by step
    while interval arithmetic's grows, and the engine's IBP rule (the two met) stays below interval arithmetic."""
    import torch

    from nodes import ConvNODE, ModelConfig, TrainConfig, save_model

    torch.manual_seed(0)
    path = save_model(tmp_path / "c.pt", ConvNODE(ModelConfig.preset("mini", channels=4, field="contractive", rho=0.3)),
                      train_config=TrainConfig(dataset="mnist-mini"))
    out = subprocess.run([sys.executable, str(REPO / "examples" / "box_growth.py"), str(path), "--limit", "8",
                          "--out", str(tmp_path / "box.png")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "box.png").read_bytes()[:4] == b"\x89PNG"
    rows = {line.split(": ")[1]: [float(v) for v in line.split("after each step ")[1].split()]
            for line in out.stdout.splitlines() if "after each step" in line}
    mv, ia, ibp = rows["mean-value box"], rows["interval arithmetic"], rows["IBP as run (met with the mean-value box)"]
    assert all(b < a for a, b in zip(mv, mv[1:])) and ia[-1] > ia[0] and ibp[-1] < ia[-1]


def test_an_export_named_like_its_submodule_stays_the_export_after_the_submodule_is_imported():
    """`from nodes import train` is the function even when `nodes.train` (the module) was imported first, as
    `certify.cli` does (a fresh interpreter: the import order is the point)."""
    import subprocess
    import sys

    code = ("import certify.cli, nodes.train\nfrom nodes import train, fit\nimport nodes\n"
            "assert callable(train) and not isinstance(train, type(nodes)), train\n"
            "assert nodes.train is train and nodes.fit is fit\n"
            "from nodes.train import TrainingState\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_bound_gap_example_splits_the_certificate_attack_gap_and_never_finds_a_gradient_above_its_constant(tmp_path):
    """examples/bound_gap.py on a small gradient-field model: every input gradient's dual norm lies at or below its
    certified pairwise constant (ratio <= 1), and certified <= first-order yardstick, certified <= PGD-robust."""
    import re

    import torch

    from nodes import ConvNODE, ModelConfig, TrainConfig, save_model

    torch.manual_seed(0)
    model = ConvNODE(ModelConfig.preset("mini", channels=4, field="gradient", padding="circular"))
    with torch.no_grad():  # large readout rows: margins big enough that some inputs certify at a small radius
        model.head[-1].weight.mul_(30.0)
    path = save_model(tmp_path / "g.pt", model, train_config=TrainConfig(dataset="mnist-mini"))
    out = subprocess.run([sys.executable, str(REPO / "examples" / "bound_gap.py"), str(path), "--norm", "2",
                          "--eps", "0.005", "--limit", "64", "--pgd-steps", "10"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stdout
    ratio_max = float(re.search(r"/ L_yj \(runner-up pair\):.* max ([0-9.e+-]+)", out.stdout).group(1))
    assert 0.0 < ratio_max <= 1.0
    pct = [float(v) for v in re.findall(r"([0-9.]+) %$", out.stdout, flags=re.M)]
    certified, first_order, robust = pct[-3:]
    assert 0.0 < certified <= first_order and certified <= robust
    missing = subprocess.run([sys.executable, str(REPO / "examples" / "bound_gap.py"), str(tmp_path / "none.pt"),
                              "--eps", "0.1"], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
