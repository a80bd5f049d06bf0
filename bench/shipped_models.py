"""Re-run every shipped checkpoint's manifest check (examples/models/models.json: the first 100 test images at the
entry's eps, norm and bound) and compare with the recorded figures; `--write` records the figures and the per-input
verdicts (`verdicts_first100`: one character per input, c certified, . correct but not certified, x misclassified),
which the fast test compares on the first 10.

    python bench/shipped_models.py [--write] [--files mnist_l2.pt ...]

Needs the real MNIST/FashionMNIST files ($CNODE_DATA or --data-root). Prints one line per model and seconds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from certify.run import certify_model
from contraction.errors import CNodeError
from nodes.checkpoint import load_checkpoint, model_from_checkpoint
from nodes.data import load_dataset

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="record the per-input results in models.json")
    p.add_argument("--files", nargs="*", default=None, help="only these checkpoints")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    manifest = json.loads((MODELS / "models.json").read_text())
    changed = 0
    for entry in manifest:
        if args.files and entry["file"] not in args.files:
            continue
        path, check = MODELS / entry["file"], entry["check"]
        model = model_from_checkpoint(load_checkpoint(path), path)
        data = load_dataset(entry["dataset"], "test", data_root=args.data_root, limit=100)
        t0 = time.perf_counter()
        report = certify_model(model, data, eps=check["eps"], norm=check["norm"], bound=check["bound"])
        seconds = time.perf_counter() - t0
        verdicts = report.verdicts()
        same = (round(report.clean_accuracy, 2) == check["clean_first100"]
                and round(report.certified_accuracy, 2) == check["certified_first100"])
        changed += not same
        print(f"{entry['file']:32s} clean {report.clean_accuracy:.2f} (manifest {check['clean_first100']:.2f})  "
              f"certified {report.certified_accuracy:.2f} (manifest {check['certified_first100']:.2f})  "
              f"{'same' if same else 'CHANGED'}  {seconds:.1f} s", flush=True)
        if args.write:
            check["clean_first100"] = round(report.clean_accuracy, 2)
            check["certified_first100"] = round(report.certified_accuracy, 2)
            check["verdicts_first100"] = verdicts
    if args.write:
        (MODELS / "models.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 1 if changed else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except CNodeError as exc:  # a missing dataset or checkpoint: one line and exit 2, as run_cli does for cnode
        print(f"shipped_models: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
