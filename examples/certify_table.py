"""Certified accuracy of trained checkpoints at several eps, from one certification per (model, norm, bound).

    python examples/certify_table.py runs/mnist_weightreg.pt runs/mnist_nominal.pt [--limit N] [--lmi]

For each model: clean accuracy, certified accuracy at Linf 0.01/0.05/0.1 and L2 0.5/1.0/1.58 (radius >= eps),
the certificate that won, and an attack check (PGD with restarts + gradient-free search inside the radii)."""

import argparse
import time

from certify.bounds.radius import certified_accuracy
from certify.run import certify_model
from certify.checks import attack_check
from nodes import load_checkpoint, load_dataset, model_from_checkpoint, trained_dataset

EPS = {"inf": (0.01, 0.05, 0.1), "2": (0.1, 0.5, 1.0, 1.58)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--lmi", action="store_true", help="also certify L2 with the LMI (circular padding models)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    for path in args.models:
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        dataset = trained_dataset(payload)
        data = load_dataset(dataset, "test", data_root=args.data_root, limit=args.limit or None)
        runs = [("inf", "global"), ("2", "global")]
        if args.lmi and model.config.padding == "circular":
            runs.append(("2", "lmi"))
        for norm, bound in runs:
            t = time.perf_counter()
            report = certify_model(model, data, eps=EPS[norm][0], norm=norm, bound=bound)
            check = attack_check(model, data, report)
            accs = ", ".join(f"{e:g}: {certified_accuracy(report.radii, e):.2%}" for e in EPS[norm])
            cert = report.bound.certificate
            print(f"{path} [{dataset}, n={report.n}] clean {report.clean_accuracy:.2%} | "
                  f"{'Linf' if norm == 'inf' else 'L2'} certified {accs} | median radius {report.median_radius:.4g} | "
                  f"block {cert.norm} factor {report.bound.block_factor:.4g} ({cert.method}) | "
                  f"attack check broken {check.broken}/{check.attacked} | {time.perf_counter() - t:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
