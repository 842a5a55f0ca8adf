"""`tokenscale crd`: print the CRD generated from the API models."""

from __future__ import annotations

import argparse
import sys

from tokenscale.api.crd import crd_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write to this file instead of standard output")


def run(args: argparse.Namespace) -> int:
    text = crd_yaml()
    if args.output:
        with open(args.output, "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0
