"""Every fixed-step solver on `mini` with the default recipe, one run: training seconds per epoch, clean accuracy,
certified (--bound auto) and PGD-20 accuracy at Linf eps, the attack check, certify seconds per image; ratios to
Euler measured in the same run. Drives the `cnode` CLI exactly as a user would (resumes: a solver whose files
exist is not retrained or recertified).

    python bench/solvers.py --out runs/solvers [--epochs 1] [--eps 0.01] [--limit 1000] [--solvers euler,rk4]
"""

import argparse
import json
from pathlib import Path

import torch

from contraction.runge_kutta import FIXED_STEP
from cnode_cli import cnode  # bench/ is the script directory, first on sys.path


def run(solver: str, out: Path, args: argparse.Namespace) -> dict:
    model, log = out / f"{solver}.pt", out / f"{solver}.json"
    if log.exists():
        return json.loads(log.read_text())
    row: dict = {"solver": solver}
    if not model.exists():
        row["train_s"] = cnode("train", "--arch", "mini", "--dataset", "mnist", "--solver", solver, "--epochs",
                                str(args.epochs), "--out", str(model), "-q")
    ev = out / f"{solver}.evaluate.json"
    cnode("evaluate", str(model), "--json", str(ev), "-q")
    cert = out / f"{solver}.certify.json"
    row["certify_s"] = cnode("certify", str(model), "--eps", str(args.eps), "--limit", str(args.limit), "--bound",
                              "auto", "--pgd", "20", "--attack-check", "--json", str(cert), "-q")
    e, c = json.loads(ev.read_text()), json.loads(cert.read_text())
    row["epoch_s"] = torch.load(model, weights_only=True)["metrics"]["seconds_per_epoch"]
    row.update(clean=e["clean_accuracy"], certified=c["certified_accuracy"], pgd=c["pgd"]["accuracy"],
               attack=c["attack_check"], timing=c["timing"], n=c["n"], certified_by=c["certified_by"],
               block={b["norm"]: b["factor"] for b in e["block_certificates"]})
    log.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--solvers", default=",".join(FIXED_STEP))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(s, args.out, args) for s in args.solvers.split(",")]
    base = next((r for r in rows if r["solver"] == "euler"), rows[0])
    print(f"mini, default recipe, {args.epochs} epoch(s) on MNIST; certified (auto) and PGD-20 at Linf {args.eps} on the "
          f"first {args.limit}; ratios to {base['solver']}")
    print(f"{'solver':<9}{'s/epoch':>9}{'x':>6}{'clean':>8}{'cert':>8}{'pgd20':>8}{'broken':>8}{'ms/img':>9}{'x':>6}"
          f"{'block factor inf':>18}")
    for r in rows:
        ms, base_ms = 1000 * r["certify_s"] / r["n"], 1000 * base["certify_s"] / base["n"]
        ep, base_ep = sum(r["epoch_s"]) / len(r["epoch_s"]), sum(base["epoch_s"]) / len(base["epoch_s"])
        print(f"{r['solver']:<9}{ep:9.1f}{ep / base_ep:6.2f}{r['clean']:8.4f}{r['certified']:8.3f}{r['pgd']:8.3f}"
              f"{r['attack']['broken']:8d}{ms:9.1f}{ms / base_ms:6.2f}{r['block'].get('inf') or float('nan'):18.4g}")


if __name__ == "__main__":
    main()
