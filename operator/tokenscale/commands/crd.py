"""`tokenscale crd`: print the CRD (or the configuration reference) generated from the API models."""

from __future__ import annotations

import argparse
import sys

from tokenscale.api.crd import crd_yaml
from tokenscale.api.reference import reference_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write to this file instead of standard output")
    parser.add_argument(
        "--reference", action="store_true", help="print the configuration reference (Markdown) instead"
    )


def run(args: argparse.Namespace) -> int:
    text = reference_markdown() if args.reference else crd_yaml()
    if args.output:
        with open(args.output, "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0
