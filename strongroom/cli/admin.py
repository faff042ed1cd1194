"""`strongroom audit verify` and `strongroom keys usage|check-remove|reencrypt`: operator commands on stored data.

They run against the configured Redis, S3 and keyring, or those a running `strongroom dev` recorded in its data
dir (``--data-dir``, or ``./.strongroom`` when nothing is configured: ``strongroom.connection``). They print
JSON on stdout, and exit 0 when all is well, 1 when a check fails (a broken chain, a key still in use, an
incomplete rotation), 2 on a configuration error. Worker code is imported lazily, inside the commands that need
it. Nothing secret is printed: key ids only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from strongroom.cli.server import add_data_dir_option, fails_cleanly, load_settings


def _services(args: argparse.Namespace) -> Any:
    """The Redis, S3 and keyring of the environment, completed from a running `strongroom dev` when one applies."""
    from strongroom.connection import admin_environ
    from worker_service.services import Services

    environ = admin_environ(args.data_dir, os.environ, Path.cwd())
    return Services.from_settings(load_settings("admin", environ))


def _print(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


@fails_cleanly
def run_audit_verify(args: argparse.Namespace) -> int:
    from shared import audit_log, layout

    target = None if args.operation_id == "global" else args.operation_id
    if target is not None:
        layout.operation_prefix(target)  # refuse a malformed id before touching S3
    services = _services(args)
    anchor = audit_log.read_anchor(services.redis, target)  # before the listing: it is written last
    report = audit_log.verify_chain(services.records, target, anchor=anchor)
    doc = report.as_dict()
    ok = report.ok
    if args.anchor:
        from worker_service.pipeline.audit import anchor_problems

        sequence, _, digest = args.anchor.partition(":")
        if not (sequence.isascii() and sequence.isdigit() and len(digest) == 64):
            usage = "--anchor takes SEQUENCE:SHA256 (from an audit_head log line)"
            print(f"strongroom audit verify: {usage}", file=sys.stderr)
            return 2
        doc["anchor_problems"] = anchor_problems(services, target, int(sequence), digest)
        ok = ok and not doc["anchor_problems"]
    _print(doc)
    return 0 if ok else 1


@fails_cleanly
def run_keys_usage(args: argparse.Namespace) -> int:
    from worker_service.pipeline.rotation import key_usage

    services = _services(args)
    _print({"primary": services.keyring.primary_id, "usage": key_usage(services)})
    return 0


@fails_cleanly
def run_keys_check_remove(args: argparse.Namespace) -> int:
    from worker_service.pipeline.rotation import check_removable

    check_removable(_services(args), args.key_id)  # KeyringError -> one line on stderr, exit 1
    _print({"key_id": args.key_id, "removable": True})
    return 0


@fails_cleanly
def run_keys_reencrypt(args: argparse.Namespace) -> int:
    from worker_service.pipeline.rotation import rotate_keys

    report = rotate_keys(_services(args), batch_size=args.batch_size, limit=args.limit)
    _print(report)
    return 0 if report["complete"] else 1


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="inspect the hash-chained access logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser("verify", help="verify an operation's access log chain (or `global`)")
    verify.add_argument("operation_id", help="operation id, or `global` for events that name no operation")
    verify.add_argument(
        "--anchor",
        metavar="SEQUENCE:SHA256",
        help="a head recorded outside S3 (the worker's audit_head log line): detects a rolled-back head",
    )
    add_data_dir_option(verify)
    verify.set_defaults(handler=run_audit_verify)

    keys = sub.add_parser("keys", help="what the server keyring protects; re-encrypt under the primary")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    usage = keys_sub.add_parser("usage", help="count stored blobs per key id")
    usage.set_defaults(handler=run_keys_usage)
    check = keys_sub.add_parser("check-remove", help="exit 0 only if KEY_ID protects nothing and is not primary")
    check.add_argument("key_id")
    check.set_defaults(handler=run_keys_check_remove)
    reencrypt = keys_sub.add_parser("reencrypt", help="re-encrypt sealed blobs under the primary key now")
    reencrypt.add_argument("--batch-size", type=int, default=100)
    reencrypt.add_argument("--limit", type=int, default=None, help="stop after this many blobs (resume later)")
    reencrypt.set_defaults(handler=run_keys_reencrypt)
    for parser in (usage, check, reencrypt):
        add_data_dir_option(parser)


def main(argv: list[str] | None = None) -> int:
    """``python -m strongroom.cli.admin ...``: the same commands before (or without) the main dispatcher."""
    parser = argparse.ArgumentParser(prog="strongroom", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
