"""The verification field's exchange formats: a ConvNODE as an ONNX graph (the network as run: normalisation, stem,
every solver step unrolled with its kernel and step as run, head) and its robustness queries as VNN-LIB files laid
out as a VNN-COMP benchmark (`onnx/`, `vnnlib/`, `instances.csv`).

The graph is written from the bound engine's layers (certify.bounds.unrolled: the one place that turns a model into
layers), each layer's `export` rule emitting standard ONNX nodes (Conv, Pad 'wrap' for circular padding, Gemm, Add,
Mul, Sub, Div, Flatten; LeakyRelu, Tanh, and the smooth leaky ReLU as a*z + (1-a)*Softplus(z)). Before a graph is
handed out, ONNX Runtime's logits on sample inputs must equal PyTorch's within float32 round-off: both evaluate the
same exact network in float32, so they differ by at most the sum of the two evaluations' derived error bounds
(certify.bounds.roundoff), else `ExportMismatch`. Needs the `export` extra (onnx, onnxruntime)."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contraction.errors import CNodeError
from contraction.slopes import Activation
from certify.bounds.layers import Linear
from certify.bounds.local import local_bounds
from certify.bounds.roundoff import float32_error
from certify.bounds.unrolled import Unrolled, unroll
from nodes.classifier import ConvNODE
from nodes.device import eval_mode, exact_float32

__all__ = ["OPSET", "ExportCheck", "ExportMismatch", "to_onnx", "check_onnx", "vnnlib_property", "write_benchmark"]

OPSET = 19
"""The ONNX opset the graphs are written in (19: Pad's 'wrap' mode, circular padding)."""


class ExportMismatch(CNodeError):
    """ONNX Runtime's logits differ from PyTorch's by more than float32 round-off."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:  # the optional extra
        raise CNodeError("exporting needs the 'export' extra: pip install 'contractive-nodes[export]' (onnx, "
                         "onnxruntime)") from err
    return onnx


@dataclass(frozen=True)
class Value:
    """A tensor of the graph being built (its name); adds to another value and scales by a float."""

    g: "OnnxGraph"
    name: str

    def __add__(self, other: "Value") -> "Value":
        return self.g.op("Add", self, other)

    def __rmul__(self, scale: float) -> "Value":
        if scale == 1.0:
            return self
        return self.g.op("Mul", self, self.g.const(torch.tensor(float(scale))))

    __mul__ = __rmul__


class OnnxGraph:
    """Collects nodes and float32 initializers; the builder the layers' `export` rules write into."""

    def __init__(self) -> None:
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, t: torch.Tensor) -> Value:
        name = self._name("c")
        array = t.detach().to(torch.float32).cpu().numpy()
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return Value(self, name)

    def ints(self, values: Sequence[int]) -> Value:
        name = self._name("i")
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return Value(self, name)

    def op(self, kind: str, *inputs: Value, **attrs: Any) -> Value:
        out = self._name(kind.lower())
        self.nodes.append(self.onnx.helper.make_node(kind, [v.name for v in inputs], [out], **attrs))
        return Value(self, out)

    def normalize(self, x: Value, mean: torch.Tensor, std: torch.Tensor) -> Value:
        shape = (1, -1, 1, 1)
        return self.op("Div", self.op("Sub", x, self.const(mean.reshape(shape))), self.const(std.reshape(shape)))

    def conv(self, x: Value, weight: torch.Tensor, bias: torch.Tensor, stride: int, pad: int, padding: str) -> Value:
        k = int(weight.shape[-1])
        if pad and padding == "circular":
            x = self.op("Pad", x, self.ints([0, 0, pad, pad, 0, 0, pad, pad]), mode="wrap")
            pads = [0, 0, 0, 0]
        elif padding == "zeros":
            pads = [pad] * 4
        elif pad:
            raise CNodeError(f"no ONNX export for {padding!r} padding")
        else:
            pads = [0, 0, 0, 0]
        return self.op("Conv", x, self.const(weight), self.const(bias), kernel_shape=[k, k], strides=[stride, stride],
                       pads=pads)

    def flatten(self, x: Value) -> Value:
        return self.op("Flatten", x, axis=1)

    def gemm(self, x: Value, weight: torch.Tensor, bias: torch.Tensor) -> Value:
        return self.op("Gemm", x, self.const(weight), self.const(bias), transB=1)

    def act(self, x: Value, act: Activation) -> Value:
        if act.name not in ACTIVATION_NODES:
            raise CNodeError(f"no ONNX export for the activation {act.name!r}")
        return ACTIVATION_NODES[act.name](self, x, act)


ACTIVATION_NODES = {
    "leaky_relu": lambda g, x, act: g.op("LeakyRelu", x, alpha=float(act.a)),
    "tanh": lambda g, x, act: g.op("Tanh", x),
    "smooth_leaky_relu": lambda g, x, act: act.a * x + (1.0 - act.a) * g.op("Softplus", x),
}
"""Each activation as standard ONNX nodes (keyed by contraction.slopes' names)."""


def _layers(model: ConvNODE) -> Unrolled:
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise CNodeError("the model has non-finite weights (NaN or inf): nothing to export")
    try:
        return unroll(model, dtype=torch.float32)
    except CNodeError as err:
        raise CNodeError(f"cannot export the network as run: {err}") from None


def to_onnx(model: ConvNODE, *, dynamic_batch: bool = False, name: str = "convnode") -> Any:
    """The classifier as run, as an ONNX ModelProto (input `input` [B, C, S, S] raw pixels in [0, 1], output `logits`
    [B, classes]; B = 1, or named `batch` with `dynamic_batch`), checked by onnx.checker."""
    onnx = _onnx()
    net = _layers(model)
    cfg = model.config
    g = OnnxGraph()
    x = Value(g, "input")
    for layer in net.layers:
        x = layer.export(g, x)
    g.nodes.append(onnx.helper.make_node("Identity", [x.name], ["logits"]))
    batch: Any = "batch" if dynamic_batch else 1
    inp = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                             [batch, cfg.in_channels, cfg.image_size, cfg.image_size])
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [batch, cfg.num_classes])
    graph = onnx.helper.make_graph(g.nodes, name, [inp], [out], g.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="contractive-nodes")
    proto.ir_version = min(proto.ir_version, 9)  # readable by every current ONNX Runtime
    onnx.checker.check_model(proto, full_check=True)
    return proto


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against PyTorch on `n` sample inputs: the largest |difference| of a logit, and the largest ratio
    of a difference to its allowed round-off (<= 1 passes)."""

    n: int
    max_abs_diff: float
    max_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _run_onnx(proto: Any, x: torch.Tensor, batch: int) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise CNodeError("checking an export needs onnxruntime: pip install 'contractive-nodes[export]'") from err
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fixed = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0: dynamic
    step = fixed or batch
    outs = [session.run(["logits"], {"input": x[i:i + step].numpy()})[0] for i in range(0, len(x), step)]
    return torch.from_numpy(np.concatenate(outs))


@exact_float32()
def check_onnx(model: ConvNODE, proto: Any, x: torch.Tensor, *, batch: int = 100) -> ExportCheck:
    """ONNX Runtime's logits on the float32 images x against the model's: every |difference| must be within E_torch +
    E_onnx, the derived float32 error bounds of the two evaluations of the same exact network (the exported graph's
    folded pixel average a plain dot product), else ExportMismatch (one line)."""
    x = x.detach().to(torch.float32).cpu()
    with eval_mode(model), torch.no_grad():
        ours = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).double()
    theirs = _run_onnx(proto, x, batch).double()
    net = unroll(model)
    graph_net = Unrolled(tuple(dataclasses.replace(layer, sums=None) if isinstance(layer, Linear) else layer
                               for layer in net.layers), net.block, net.act)
    allowed = []
    for i in range(0, len(x), batch):
        u = x[i:i + batch].double()
        allowed.append(float32_error(net, local_bounds(net, u, 0.0, "inf"))
                       + float32_error(graph_net, local_bounds(graph_net, u, 0.0, "inf")))
    bound = torch.cat(allowed)
    diff = (theirs - ours).abs()
    ratio = torch.nan_to_num(diff / bound, nan=torch.inf)
    check = ExportCheck(len(x), float(diff.max()), float(ratio.max()))
    if not bool(torch.isfinite(theirs).all()) or check.max_ratio > 1:
        raise ExportMismatch(f"ONNX Runtime's logits differ from PyTorch's by up to {check.max_abs_diff:.3g}, "
                             f"{check.max_ratio:.3g}x the float32 round-off allowed: the graph is not the network")
    return check


def _real(v: float) -> str:
    """A decimal that parses to exactly the float32 value v."""
    return repr(float(np.float32(v)))


def vnnlib_property(u: torch.Tensor, label: int, eps: float, classes: int) -> str:
    """VNN-LIB text of the query 'some class j != label scores at least the label's' over the Linf ball of radius eps
    around the raw image u intersected with [0, 1] (X_i: the flattened input, Y_j: the logits). Unsat: robust."""
    flat = u.detach().to(torch.float32).flatten().tolist()
    lines = [f"; Linf robustness at eps {eps!r} (clipped to [0, 1]), true class {label}: unsat = robust", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(flat))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    lines.append("")
    for i, v in enumerate(flat):
        lines.append(f"(assert (<= X_{i} {_real(min(1.0, v + eps))}))")
        lines.append(f"(assert (>= X_{i} {_real(max(0.0, v - eps))}))")
    lines += ["", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label]
    lines += ["))", ""]
    return "\n".join(lines)


def write_benchmark(model: ConvNODE, proto: Any, out: Path, images: torch.Tensor, labels: torch.Tensor,
                    indices: Sequence[int], eps: float, *, timeout: float = 300.0, name: str = "convnode") -> Path:
    """A VNN-COMP benchmark folder: onnx/NAME.onnx, vnnlib/NAME_IDX_eps.vnnlib (one per test index) and
    instances.csv (onnx path, vnnlib path, timeout per line, relative to the folder); returns instances.csv."""
    onnx = _onnx()
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    onnx_rel = f"onnx/{name}.onnx"
    onnx.save(proto, str(out / onnx_rel))
    rows = []
    for i, idx in enumerate(indices):
        rel = f"vnnlib/{name}_{idx}_{eps:g}.vnnlib"
        (out / rel).write_text(vnnlib_property(images[i], int(labels[i]), eps, model.config.num_classes))
        rows.append((onnx_rel, rel, f"{timeout:g}"))
    path = out / "instances.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path
