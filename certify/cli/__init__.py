"""The command line: `cnode {train,strip,evaluate,certify,merge,robustness,demo,study}` and `certify` (= `cnode
certify`). A thin dispatcher at the top of the import graph: each subcommand group's module (training, certifying,
studies) adds its parsers and turns flags into library calls; flags.py holds what they share."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from contraction import __version__
from contraction.errors import CNodeError
from certify.cli import certifying, exporting, studies, training
from certify.cli.flags import OneLineParser

__all__ = ["main", "certify_main", "build_parser", "build_certify_parser", "run_cli"]

GROUPS = (training, certifying, exporting, studies)
"""The subcommand groups, in the order `cnode --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The `cnode` parser with every subcommand."""
    parser = OneLineParser(prog="cnode", description="Train contractive ConvNODE classifiers and certify their "
                           "robustness.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for group in GROUPS:
        group.register(sub)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and dispatch; a CNodeError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CNodeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """`cnode ...`."""
    return run_cli(build_parser(), argv)


def build_certify_parser() -> argparse.ArgumentParser:
    """The parser of `certify`, the alias of `cnode certify`."""
    p = OneLineParser(prog="certify", description="Certified robustness radii of a ConvNODE checkpoint "
                      "(the same as `cnode certify`).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    certifying.add_certify_flags(p)
    return p


def certify_main(argv: Sequence[str] | None = None) -> int:
    """`certify MODEL --eps E ...`: the alias of `cnode certify`."""
    return run_cli(build_certify_parser(), argv)
