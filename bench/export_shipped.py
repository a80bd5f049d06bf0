"""Every shipped checkpoint exported to ONNX as run: ONNX Runtime vs PyTorch logits on the first N test images of
its dataset (max |difference|, and as a fraction of the derived float32 round-off allowed), export seconds, file
size; and a VNN-COMP benchmark of the first 20 MNIST inputs at Linf 0.1 for mnist_linf_0.1.pt. One run.

    python bench/export_shipped.py --out runs/export [--check 1000]
"""

import argparse
import json
import time
from pathlib import Path

import onnx

from certify.export import check_onnx, to_onnx, write_benchmark
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset
from nodes.data import load_dataset

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--check", type=int, default=1000)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<30}{'solver':>8}{'nodes':>7}{'MB':>7}{'export s':>10}{'check s':>9}{'max |diff|':>12}{'x allowed':>11}")
    rows = []
    for path in sorted(MODELS.glob("*.pt")):
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path).cpu().eval()
        data = load_dataset(trained_dataset(payload), "test", limit=args.check)
        x, _ = data.tensors()
        t = time.perf_counter()
        proto = to_onnx(model)
        export_s = time.perf_counter() - t
        out = args.out / f"{path.stem}.onnx"
        onnx.save(proto, str(out))
        t = time.perf_counter()
        check = check_onnx(model, to_onnx(model, dynamic_batch=True), x)
        check_s = time.perf_counter() - t
        row = {"model": path.name, "solver": model.config.solver, "nodes": len(proto.graph.node),
               "mb": out.stat().st_size / 1e6, "export_s": export_s, "check_s": check_s, **check.to_dict()}
        rows.append(row)
        print(f"{path.name:<30}{row['solver']:>8}{row['nodes']:>7}{row['mb']:7.2f}{export_s:10.2f}{check_s:9.1f}"
              f"{check.max_abs_diff:12.3g}{check.max_ratio:11.3g}", flush=True)
    path = MODELS / "mnist_linf_0.1.pt"
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path).cpu().eval()
    x, y = load_dataset("mnist", "test", limit=20).tensors()
    csv = write_benchmark(model, to_onnx(model), args.out / "vnncomp", x, y, list(range(20)), 0.1, name=path.stem)
    print(f"VNN-COMP benchmark: {csv} ({len(csv.read_text().splitlines())} instances)")
    (args.out / "export.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
