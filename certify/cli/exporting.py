"""`cnode export`: the classifier as run to ONNX, its Linf robustness queries to VNN-LIB (a VNN-COMP benchmark)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from contraction.errors import CNodeError
from certify.cli.flags import add_model_flags, positive_eps
from certify.export import OPSET, check_onnx, to_onnx, write_benchmark
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset
from nodes.data import load_dataset

__all__ = ["register", "cmd_export", "open_inputs"]


def _indices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated test indices, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"test indices must be >= 0, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the `cnode` parser."""
    p = sub.add_parser("export", help="the model as ONNX, its robustness queries as VNN-LIB (VNN-COMP layout)",
                       description="Export a ConvNODE checkpoint: the classifier as run to ONNX (checked against "
                                   "PyTorch with ONNX Runtime), its Linf robustness queries to VNN-LIB.")
    add_model_flags(p)
    p.add_argument("--onnx", default=None, help="write the classifier as run to this ONNX file (opset %d)" % OPSET)
    p.add_argument("--dynamic-batch", action="store_true", help="with --onnx: a batch dimension named 'batch' "
                   "(default: batch 1, what verifiers read)")
    p.add_argument("--check", type=int, default=100, help="test images on which ONNX Runtime must match PyTorch "
                   "within float32 round-off before anything is written (default: %(default)s)")
    p.add_argument("--vnnlib", default=None, help="write a VNN-COMP benchmark to this folder: onnx/, vnnlib/ (one "
                   "query per input: the Linf ball clipped to [0, 1], 'another class scores at least the true one', "
                   "unsat = robust), instances.csv")
    p.add_argument("--eps", type=positive_eps, default=None, help="Linf radius of the queries (default with --json: "
                   "the report's)")
    p.add_argument("--norm", default="inf", help="threat model of the queries: inf (VNN-LIB boxes)")
    p.add_argument("--limit", type=int, default=20, help="queries for the first N test images (default: %(default)s)")
    p.add_argument("--indices", type=_indices, default=None, help="comma-separated test indices instead of --limit")
    p.add_argument("--json", default=None, help="a `cnode certify --json` report: queries only for the inputs it "
                   "leaves open (correctly classified, neither certified nor falsified)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per instance in instances.csv "
                   "(default: %(default)s)")
    p.set_defaults(func=cmd_export)


def open_inputs(report: dict, eps: float | None) -> tuple[float, tuple[int, ...]]:
    """(eps, test indices) of a certify report's open inputs: correctly classified, not certified, not falsified."""
    try:
        norm, at, samples = report["norm"], float(report["eps"]), report["samples"]
        open_ = tuple(int(s["index"]) for s in samples
                      if s["prediction"] == s["label"] and not s["certified"] and not s["falsified"])
    except (KeyError, TypeError, ValueError):
        raise CNodeError("--json: not a `cnode certify --json` report") from None
    if norm != "inf":
        raise CNodeError(f"--json: the report is for the {norm} norm; VNN-LIB queries here are Linf boxes")
    if eps is not None and abs(eps - at) > 1e-12 * at:
        raise CNodeError(f"--json: the report is at eps {at:g}, not --eps {eps:g}")
    return at, open_


def _writable(path: Path) -> Path:
    """`path` when its folder exists (a one-line error otherwise)."""
    if not path.parent.exists():
        raise CNodeError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def cmd_export(args: argparse.Namespace) -> int:
    if args.onnx is None and args.vnnlib is None:
        raise CNodeError("nothing to export: give --onnx OUT.onnx and/or --vnnlib DIR")
    if args.check < 1:
        raise CNodeError("--check must be >= 1 (the export is checked before it is written)")
    if args.limit < 1 and args.indices is None and args.json is None:
        raise CNodeError("--limit must be >= 1")
    if args.timeout <= 0:
        raise CNodeError("--timeout must be > 0 seconds")
    onnx_path = _writable(Path(args.onnx)) if args.onnx else None
    eps, indices = args.eps, None
    if args.vnnlib is not None:
        if args.norm != "inf":
            raise CNodeError(f"--norm {args.norm}: VNN-LIB queries here are Linf boxes (--norm inf)")
        _writable(Path(args.vnnlib))
        if args.json is not None:
            try:
                report = json.loads(Path(args.json).read_text())
            except (OSError, ValueError):
                raise CNodeError(f"--json: cannot read a JSON report from {args.json}") from None
            eps, indices = open_inputs(report, eps)
        elif args.indices is not None:
            indices = args.indices
        else:
            indices = tuple(range(args.limit))
        if eps is None:
            raise CNodeError("--vnnlib needs --eps (or a certify report: --json)")
    elif args.eps is not None or args.json is not None or args.indices is not None:
        raise CNodeError("--eps, --json and --indices set the VNN-LIB queries: give --vnnlib DIR")
    payload = load_checkpoint(args.model)
    model = model_from_checkpoint(payload, args.model).cpu().eval()
    need = max(args.check, 1 + max(indices or (), default=-1))
    data = load_dataset(args.dataset or trained_dataset(payload), "test", data_root=args.data_root,
                        download=args.download, limit=need)
    if indices and max(indices) >= len(data):
        raise CNodeError(f"test index {max(indices)} out of range: {data.name} has {len(data)} test images")
    x, y = data.tensors()
    t0 = time.perf_counter()
    proto = to_onnx(model, dynamic_batch=args.dynamic_batch)
    check = check_onnx(model, proto, x[:args.check])  # the graph that is written
    seconds = time.perf_counter() - t0
    print(f"{args.model}: exported as run (opset {OPSET}, {len(proto.graph.node)} nodes) in {seconds:.2f} s; ONNX "
          f"Runtime vs PyTorch on {check.n} {data.name} test images: max |logit difference| {check.max_abs_diff:.3g} "
          f"({check.max_ratio:.3g}x the float32 round-off allowed)")
    if onnx_path is not None:
        import onnx

        onnx.save(proto, str(onnx_path))
        print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB)")
    if args.vnnlib is not None:
        assert indices is not None and eps is not None
        fixed = proto if not args.dynamic_batch else to_onnx(model)
        sel = list(indices)
        out = write_benchmark(model, fixed, Path(args.vnnlib), x[sel], y[sel], sel, eps, timeout=args.timeout,
                              name=Path(args.model).stem)
        print(f"wrote {len(sel)} VNN-LIB queries at Linf eps {eps:g} and {out}")
    return 0
