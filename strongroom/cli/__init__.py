"""The ``strongroom`` command: server processes (``server.py``) and the client (``client.py``)."""

from __future__ import annotations

import argparse
import sys

from strongroom.cli import admin, client, server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.register(sub)
    client.register(sub)
    admin.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
