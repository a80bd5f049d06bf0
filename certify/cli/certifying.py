"""`cnode certify` (alias `certify`), `cnode merge` and `cnode evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contraction.certificates import block_certificates
from contraction.errors import CNodeError
from certify.bounds.tight import REFINE_SECONDS
from certify.checks import PGD_LOSSES, attack_check, pgd_check, pgd_robust
from certify.cli.flags import add_model_flags, load_run, positive_eps
from certify.merge import format_merged, load_parts, merge_reports
from certify.report import format_certificates, format_report, plot_curves, write_json
from certify.run import BOUNDS, certify_model, check_eps
from nodes.checkpoint import file_sha256
from nodes.device import module_device
from nodes.distributed import Dist, parse_shard, process_group
from nodes.train import evaluate

__all__ = ["register", "add_certify_flags", "cmd_certify", "cmd_merge", "cmd_evaluate"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `evaluate`, `certify` and `merge` to the `cnode` parser."""
    p = sub.add_parser("evaluate", help="clean test accuracy and block certificates of a checkpoint",
                       description="Evaluate a checkpoint.")
    add_model_flags(p)
    p.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--json", default=None, help="write the report as JSON")
    p.add_argument("--lmi", action="store_true", help="also solve the LMI certificate (circular padding; ~1 min)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("certify", help="certified robustness at eps (radii per input)",
                       description="Certified robustness radii of a ConvNODE checkpoint.")
    add_certify_flags(p)

    p = sub.add_parser("merge", help="join the --json parts of `certify --shard I/N` into one report",
                       description="Join the JSON reports of `cnode certify --shard I/N --json PART` (same checkpoint, "
                       "eps, norm, bound and selection; every shard once) into one report, every figure recomputed "
                       "from the per-input results.")
    p.add_argument("parts", nargs="+", help="the shards' JSON reports")
    p.add_argument("--json", required=True, help="the merged report to write")
    p.set_defaults(func=cmd_merge)


def add_certify_flags(p: argparse.ArgumentParser) -> None:
    add_model_flags(p)
    p.add_argument("--eps", type=positive_eps, required=True, help="perturbation budget (on [0,1] pixels)")
    p.add_argument("--norm", choices=["inf", "2"], default="inf", help="threat model (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="certify the first N test images (0: all)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="certify only shard I of N (from 0) of the selected images, contiguous whole batches, for job "
                   "arrays; join the --json parts with `cnode merge` (under torchrun the ranks split the images "
                   "themselves)")
    p.add_argument("--bound", choices=list(BOUNDS), default="auto",
                   help="global = Lipschitz product with the best weight bound of the ODE block; lmi = the same with "
                   "the S-procedure LMI (circular padding, --norm 2; about a minute); the tight stages, each run "
                   "on the inputs the earlier ones leave unproven: local = global, then interval + local-slope boxes "
                   "over the eps-ball; crown = ... then a linear backward pass over the boxes (CROWN-IBP style); "
                   "linear = ... then linear intermediate bounds (about 1 s per image on the paper's model); "
                   "refine = ... then rounds of back-substituted bounds for the neurons the open margins need most "
                   "(up to --budget seconds per input); auto (default) = every stage, with a PGD attack before the "
                   "linear stage that skips the inputs it breaks (reported as falsified)")
    p.add_argument("--budget", type=float, default=REFINE_SECONDS, metavar="SECONDS",
                   help="the refine stage's most time per input it runs on (refine, auto; only inputs the cheaper "
                   "stages and the attack leave open; an input stops sooner when its rounds stop gaining and no "
                   "branching could close its margins; 0: skip it; default: %(default)s)")
    p.add_argument("--radius", action="store_true",
                   help="with local/crown/linear/auto: bisect each input's certified radius (about 12x the time)")
    p.add_argument("--attack-check", action="store_true",
                   help="attack certified inputs inside their radius (PGD + gradient-free); any success exits 1")
    p.add_argument("--pgd", type=int, default=0, metavar="STEPS",
                   help="also attack every input with PGD-STEPS at eps: the empirical robust accuracy beside the "
                   "certified one; a certified input it breaks exits 1 (0: off; default: %(default)s)")
    p.add_argument("--pgd-loss", choices=sorted(PGD_LOSSES), default="both",
                   help="--pgd's and --plot's objective(s): an input is robust only if PGD with each left it correct; "
                   "cross-entropy alone saturates on large logits and overstates robustness (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the full report as JSON")
    p.add_argument("--plot", default=None, help="draw certified (and PGD) accuracy against eps to this image")
    p.add_argument("--batch-size", type=int, default=1000, help="inputs per batch (default: %(default)s)")
    p.set_defaults(func=cmd_certify)


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, data = load_run(args)
    dataset = data.name
    acc = evaluate(model, data, progress=not args.quiet)
    certs = block_certificates(model.block.spec())
    if args.lmi:
        from contraction.lmi import lmi_block_certificate

        certs.append(lmi_block_certificate(model.block.spec()))
    report = {"model": str(args.model), "dataset": dataset, "n": len(data), "clean_accuracy": acc,
              "block_certificates": [c.to_dict() for c in certs]}
    print(f"{args.model}: {dataset} test accuracy {acc:.4f} on {len(data)} images")
    print(format_certificates(certs))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """One report from the shards' JSON parts; exits 1 like certify when a part's attack broke a certificate."""
    merged = merge_reports(load_parts(args.parts))
    Path(args.json).write_text(json.dumps(merged, indent=2))
    print(format_merged(merged))
    print(f"  wrote                   {args.json}")
    broken = (merged["pgd"] or {}).get("broken_certified", 0) + (merged["attack_check"] or {}).get("broken", 0)
    if broken:
        print(f"cnode: error: {broken} certified inputs were broken by an attack: the certificate is unsound",
              file=sys.stderr)
        return 1
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    """Certify (a shard of) the test set; under torchrun the ranks split the inputs and rank 0 reports."""
    check_eps(args.eps)
    if args.limit < 0 or args.batch_size < 1 or args.pgd < 0 or not 0 <= args.budget < float("inf"):
        raise CNodeError("--limit, --pgd and --budget must be >= 0 (--budget finite) and --batch-size >= 1")
    shard = parse_shard(args.shard) if args.shard else None
    with process_group(args.device) as dist:
        return _certify_cmd(args, shard, dist)


def _certify_cmd(args: argparse.Namespace, shard: tuple[int, int] | None, dist: Dist) -> int:
    if dist.distributed and (args.plot or args.radius):
        raise CNodeError("--plot and --radius run in one process (without torchrun)")
    model, data = load_run(args, dist)
    report = certify_model(model, data, eps=args.eps, norm=args.norm, bound=args.bound, batch_size=args.batch_size,
                           progress=not args.quiet, radius=args.radius, shard=shard, dist=dist, budget=args.budget)
    if args.pgd:
        report.pgd = pgd_check(model, data, report, steps=args.pgd, progress=not args.quiet, dist=dist,
                               losses=PGD_LOSSES[args.pgd_loss])
    if not dist.main:
        return 0
    if args.attack_check:
        report.attack = attack_check(model, data, report)
    print(format_report(report, args.model))
    pgd_points = []
    if args.plot:
        x, y = (t.to(module_device(model)) for t in data.tensors(0, min(len(data), 200)))
        for e in [args.eps * f for f in (0.5, 1.0, 1.5, 2.0)]:
            robust = pgd_robust(model, x, y, eps=e, norm=args.norm, steps=20, losses=PGD_LOSSES[args.pgd_loss])
            pgd_points.append((e, float(robust.all(dim=1).double().mean())))
        plot_curves(report, args.plot, pgd_points)
        print(f"  plot                    {args.plot}")
    if args.json:
        write_json(report, args.json, model=str(args.model), model_sha256=file_sha256(args.model))
    broken = (report.attack.broken if report.attack is not None else 0) + (
        report.pgd.broken_certified if report.pgd is not None else 0)
    if broken:
        print(f"certify: error: {broken} certified inputs were broken by an attack inside their radius: the "
              "certificate is unsound", file=sys.stderr)
        return 1
    return 0
