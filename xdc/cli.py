"""The ``xdc`` command line: thin, typed functions over the library."""

from __future__ import annotations

import argparse
import sys

from xdc.errors import XdcError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdc", description=__doc__)
    parser.add_subparsers(dest="command", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except XdcError as err:
        print(f"xdc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
