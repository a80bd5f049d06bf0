"""ONNX / VNN-LIB export: ONNX Runtime runs the exported graph of random models of every layer type, field and
solver to within float32 round-off of PyTorch; a tampered graph is caught; adaptive solvers are refused; the VNN-LIB
queries, read back by an independent small parser, are the clipped Linf ball and the 'another class wins'
disjunction; the CLI writes the VNN-COMP layout and gives one-line errors for bad input."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from certify.cli import main as cnode_main
from certify.export import ExportMismatch, check_onnx, to_onnx, vnnlib_property
from contraction.errors import CNodeError
from nodes import ConvNODE, ModelConfig
from tests.profiles import budget
from tests.strategies import model_configs, random_model, seeds

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@settings(max_examples=budget(10), deadline=None)
@given(model_configs(), seeds)
def test_onnx_runtime_runs_every_layer_type_and_solver_as_pytorch_does(cfg, seed):
    model = random_model(cfg, seed).float()
    proto = to_onnx(model, dynamic_batch=True)
    kinds = {n.op_type for n in proto.graph.node}
    assert kinds <= {"Conv", "Pad", "Gemm", "Add", "Mul", "Sub", "Div", "Flatten", "LeakyRelu", "Tanh", "Softplus",
                     "Identity"}
    x = torch.rand(7, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed))
    check = check_onnx(model, proto, x, batch=3)
    assert check.n == 7 and check.max_ratio <= 1
    assert check.max_abs_diff <= 1e-4 * (1 + float(model(x).abs().max()))


def test_a_tampered_graph_is_refused_with_one_line():
    torch.manual_seed(0)
    model = ConvNODE(ModelConfig(channels=2, steps=2, image_size=6, num_classes=3, solver="rk4")).eval()
    proto = to_onnx(model, dynamic_batch=True)
    init = next(i for i in proto.graph.initializer if len(i.dims) == 4)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[0] += 1e-3
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    with pytest.raises(ExportMismatch, match="not the network") as err:
        check_onnx(model, proto, torch.rand(20, 1, 6, 6))
    assert "\n" not in str(err.value)


def test_adaptive_solvers_cannot_be_exported_as_run():
    model = ConvNODE(ModelConfig(channels=2, steps=2, image_size=6, num_classes=3, solver="dopri5"))
    with pytest.raises(CNodeError, match="adaptive"):
        to_onnx(model)


def _parse_vnnlib(text):
    """An independent reader of the VNN-LIB subset: declared X_i / Y_j, per-input bounds, the output disjuncts."""
    xs = set(re.findall(r"\(declare-const X_(\d+) Real\)", text))
    ys = set(re.findall(r"\(declare-const Y_(\d+) Real\)", text))
    upper = {int(i): float(v) for i, v in re.findall(r"\(assert \(<= X_(\d+) ([-0-9.e]+)\)\)", text)}
    lower = {int(i): float(v) for i, v in re.findall(r"\(assert \(>= X_(\d+) ([-0-9.e]+)\)\)", text)}
    body = text[text.index("(assert (or"):]
    disjuncts = re.findall(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)", body)
    return len(xs), len(ys), lower, upper, [(int(a), int(b)) for a, b in disjuncts]


def test_vnnlib_query_is_the_clipped_ball_and_the_other_classes_winning():
    u = torch.tensor([[[[0.0, 0.05, 0.5], [0.97, 1.0, 0.3]]]])
    nx, ny, lower, upper, disjuncts = _parse_vnnlib(vnnlib_property(u, 3, 0.1, 10))
    assert (nx, ny) == (6, 10)
    for i, v in enumerate(u.flatten().tolist()):
        assert lower[i] == float(np.float32(max(0.0, v - 0.1))) and upper[i] == float(np.float32(min(1.0, v + 0.1)))
    assert sorted(disjuncts) == [(j, 3) for j in range(10) if j != 3]


def test_cnode_export_writes_onnx_and_a_vnncomp_benchmark_of_the_open_inputs(tiny_trained, tmp_path, capsys):
    _, path = tiny_trained
    out = tmp_path / "model.onnx"
    assert cnode_main(["export", str(path), "--onnx", str(out), "--dataset", "mnist-mini", "--check", "30", "-q"]) == 0
    assert "ONNX Runtime vs PyTorch on 30" in capsys.readouterr().out
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    bench = tmp_path / "bench"
    assert cnode_main(["export", str(path), "--vnnlib", str(bench), "--eps", "0.1", "--limit", "3",
                       "--dataset", "mnist-mini", "--timeout", "60", "-q"]) == 0
    rows = list(csv.reader((bench / "instances.csv").open()))
    assert len(rows) == 3 and all(r[2] == "60" and (bench / r[0]).exists() and (bench / r[1]).exists() for r in rows)
    nx, ny, lower, upper, disjuncts = _parse_vnnlib((bench / rows[0][1]).read_text())
    assert (nx, ny, len(disjuncts), len(lower), len(upper)) == (784, 10, 9, 784, 784)
    report = tmp_path / "report.json"
    samples = [{"index": i, "label": 1, "prediction": p, "certified": c, "falsified": f}
               for i, (p, c, f) in enumerate([(1, True, False), (1, False, False), (2, False, False), (1, False, True),
                                              (1, False, False)])]
    report.write_text(json.dumps({"norm": "inf", "eps": 0.05, "samples": samples}))
    open_bench = tmp_path / "open"
    assert cnode_main(["export", str(path), "--vnnlib", str(open_bench), "--json", str(report),
                       "--dataset", "mnist-mini", "-q"]) == 0
    names = sorted(r[1] for r in csv.reader((open_bench / "instances.csv").open()))
    assert [n.split("_")[-2] for n in names] == ["1", "4"]  # the open, correctly classified inputs only


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "/no/such/folder/m.onnx"], "does not exist"),
    ([], "nothing to export"),
    (["--vnnlib", "DIR"], "--eps"),
    (["--vnnlib", "DIR", "--eps", "0.1", "--norm", "2"], "Linf"),
    (["--vnnlib", "DIR", "--eps", "-1"], "eps"),
    (["--onnx", "OUT", "--eps", "0.1"], "--vnnlib"),
    (["--vnnlib", "DIR", "--eps", "0.1", "--indices", "999999"], "out of range"),
])
def test_bad_export_requests_get_one_line_and_exit_2(tiny_trained, tmp_path, capsys, argv, message):
    _, path = tiny_trained
    argv = [a.replace("DIR", str(tmp_path / "b")).replace("OUT", str(tmp_path / "m.onnx")) for a in argv]
    try:
        code = cnode_main(["export", str(path), "--dataset", "mnist-mini", *argv])
    except SystemExit as exit_:  # the parser's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
