"""The ``strongroom`` command: the server processes (``server``), the client (``client``), admin (``admin``)."""

from __future__ import annotations

import argparse
import sys

from strongroom.cli import admin, client, server

DESCRIPTION = """\
strongroom keeps the files AI agents produce safe: a signed request starts an
operation, a worker runs the agent and encrypts every file it writes for you,
and you fetch and decrypt them yourself.

`strongroom client ...` talks to a strongroom API (start with
`strongroom client keygen`); `strongroom dev` runs everything on this machine;
the other commands run and look after a deployment."""

EPILOG = """\
Run `strongroom COMMAND --help` for a command's options; `strongroom client
--help` lists the client's commands and exit codes.

exit codes of the server and admin commands:
  0    success
  1    the command failed, or a check failed (a broken hash chain, a key
       still in use, an unfinished re-encryption)
  2    usage or configuration error: one line names the option or variable
       to fix"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strongroom",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
