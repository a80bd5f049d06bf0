"""The controlled adaptive solvers on `mini`, one run: training seconds per epoch, clean accuracy on the 10,000 test
images, mean attempted steps per input, and at each Linf eps the certified (--bound auto) and PGD-20 accuracy on the
first `--limit` images, the share of accept/reject decisions proven the same over the ball, the attack check, and
certify seconds per image. Drives the `cnode` CLI as a user would (resumes: files that exist are reused).

    python bench/adaptive.py --out runs/adaptive [--solvers bosh3-dyadic,dopri5-dyadic] [--atol 1e-3]
        [--eps 0.01,0.05] [--limit 200] [--epochs 1] [--certified-eps 0.015]
"""

import argparse
import json
from pathlib import Path

import torch

from contraction.adaptive import PAIRS
from cnode_cli import cnode  # bench/ is the script directory, first on sys.path


def run(solver: str, out: Path, args: argparse.Namespace) -> dict:
    model = out / f"{solver}.pt"
    if not model.exists():
        cnode("train", "--arch", "mini", "--dataset", "mnist", "--solver", solver, "--atol", str(args.atol),
               "--epochs", str(args.epochs), "--certified-eps", str(args.certified_eps), "--out", str(model), "-q")
    ev = out / f"{solver}.evaluate.json"
    if not ev.exists():
        cnode("evaluate", str(model), "--json", str(ev), "-q")
    row: dict = {"solver": solver, "atol": args.atol, "clean": json.loads(ev.read_text())["clean_accuracy"],
                 "epoch_s": torch.load(model, weights_only=True)["metrics"]["seconds_per_epoch"]}
    for eps in args.eps:
        cert = out / f"{solver}.certify_{eps:g}.json"
        if not cert.exists():
            cnode("certify", str(model), "--eps", str(eps), "--limit", str(args.limit), "--bound", "auto",
                   "--pgd", "20", "--attack-check", "--json", str(cert), "-q")
        c = json.loads(cert.read_text())
        dy = c["dyadic"]
        row[f"eps {eps:g}"] = {
            "n": c["n"], "certified": c["certified_accuracy"], "pgd": c["pgd"]["accuracy"],
            "broken": f"{c['attack_check']['broken']}/{c['attack_check']['attacked']}",
            "mean_attempts": dy["mean_attempts"],
            "decisions_proven": f"{dy['decisions_proven']}/{dy['decisions']}",
            "inputs_with_open_decision": dy["inputs_with_open_decision"],
            "ms_per_image": 1000 * c["timing"]["certify_seconds"] / c["n"], "certified_by": c["certified_by"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--solvers", default=",".join(PAIRS))
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--certified-eps", type=float, default=0.015)
    p.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[0.01, 0.05])
    p.add_argument("--limit", type=int, default=200)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(s, args.out, args) for s in args.solvers.split(",")]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
