"""`strongroom client ...`: the command line on top of the SDK (``strongroom.client``).

Every command prints a short human summary, or one JSON document with ``--json``. Expected failures print one
line on stderr (``error: <what happened and what to do>``) and exit with a code naming the kind of failure
(``EXIT_CODES``, described to users by ``EXIT_MEANINGS``); no tracebacks. The SDK (httpx, pydantic, the crypto
libraries) is imported inside the commands that use it, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import (
    AuthError,
    Conflict,
    CryptoError,
    NotFound,
    NotGrantee,
    RateLimited,
    StorageError,
    StrongroomError,
    Unavailable,
    ValidationFailed,
)
from shared.layout import validate_artifact_name
from strongroom.client.defaults import API_URL_ENV, DEFAULT_API_URL, default_identity_path
from strongroom.client.errors import ClientError, IdentityError, WaitTimeout
from strongroom.client.progress import ProgressBar, human_size

if TYPE_CHECKING:
    from shared.models import GetOperationResponse, GrantView
    from strongroom.client.sdk import StrongroomClient

# Most specific first: the first matching class decides the exit code.
EXIT_CODES: tuple[tuple[type[StrongroomError], int], ...] = (
    (NotGrantee, 4),
    (AuthError, 3),
    (NotFound, 5),
    (Conflict, 6),
    (ValidationFailed, 7),
    (RateLimited, 8),
    (Unavailable, 8),
    (StorageError, 8),
    (CryptoError, 9),
    (IdentityError, 10),
    (WaitTimeout, 11),
)
EXIT_NOT_SUCCEEDED = 12  # `wait`: the operation finished, but failed or was cancelled
EXIT_INTERRUPTED = 130
EXIT_OTHER = 1
EXIT_USAGE = 2  # argparse's own

# What each exit code means, for people: `strongroom client --help` prints it and docs/cli.md's table must list
# exactly these codes (tests/unit/client/test_client_help.py).
EXIT_MEANINGS: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (EXIT_OTHER, "another error: bad input on the command line, an existing file, an unexpected answer"),
    (EXIT_USAGE, "usage error: an unknown command or option, a missing argument"),
    (3, "the server refused the signature (expired: check your clock; replayed; invalid)"),
    (4, "your identity is not the grantee of this operation"),
    (5, "no such operation or artifact, or the operation has expired"),
    (6, "conflict: the operation is already finished (nothing to cancel)"),
    (7, "refused input: an unknown agent, a retention out of range, a request too large, an unsafe artifact name"),
    (8, "try again later: rate limited, server unavailable, storage error, API unreachable, download interrupted"),
    (9, "integrity or decryption failure (a tampered or swapped artifact); for `log`, a broken hash chain"),
    (10, "the identity file is missing, unreadable, readable by others, or already exists"),
    (11, "`wait` timed out"),
    (EXIT_NOT_SUCCEEDED, "`wait`: the operation finished but failed or was cancelled"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

DESCRIPTION = """\
Talk to a strongroom API. Every request is signed with your identity (create
one with `strongroom client keygen`); artifacts are verified and decrypted on
your machine, never by the server.

Each command prints a short summary, or one JSON document with --json. A
failure prints one line on stderr, starting with "error: ", that says what went
wrong and what to do, and exits with a code naming the kind of failure."""


def exit_code_epilog(width: int = 79) -> str:
    lines = ["exit codes:"]
    for code, meaning in EXIT_MEANINGS:
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
    return "\n".join(lines)


Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "client",
        help="talk to a strongroom API: keys, operations, artifacts",
        description=DESCRIPTION,
        epilog=exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(suppress=False)],
    )
    commands = parser.add_subparsers(dest="client_command", metavar="COMMAND")
    parser.set_defaults(handler=lambda args: _usage(parser))
    for name, help_text, build, handler in _COMMANDS:
        command = commands.add_parser(name, help=help_text, description=help_text, parents=[_common(suppress=True)])
        build(command)
        command.set_defaults(handler=_guarded(handler))


def _common(*, suppress: bool) -> argparse.ArgumentParser:
    """The global options, accepted before or after the command (``suppress`` keeps a later copy from
    overwriting an earlier value with its default)."""
    common = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common.add_argument(
        "--api",
        default=default(None),
        help=f"API base URL (default ${API_URL_ENV} or {DEFAULT_API_URL})",
    )
    common.add_argument(
        "--identity",
        type=Path,
        default=default(None),
        help="identity file (default $STRONGROOM_IDENTITY or ~/.config/strongroom/identity.json)",
    )
    common.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    return common


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except StrongroomError as exc:
            print(f"error: {terminal_safe(exc.detail)}", file=sys.stderr)
            return exit_code(exc)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as exc:
            print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            return EXIT_OTHER

    return run


def exit_code(error: StrongroomError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(error, cls)), EXIT_OTHER)


# --- plumbing ---


def _identity_path(args: argparse.Namespace) -> Path:
    return Path(args.identity).expanduser() if args.identity else default_identity_path()


def _client(args: argparse.Namespace) -> StrongroomClient:
    from strongroom.client.identity import load_identity
    from strongroom.client.sdk import StrongroomClient

    api = args.api or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    return StrongroomClient(api, load_identity(_identity_path(args)))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Agent-written text (a summary, a log line) must not drive the terminal: control characters become U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def _emit(args: argparse.Namespace, document: Any, human: str) -> None:
    print(json.dumps(document, indent=2) if args.json else terminal_safe(human))


def _operation_lines(op: GetOperationResponse) -> str:
    lines = [f"{op.id}  {op.status}"]
    lines.append(f"  created {_time(op.created_at)}  expires {_time(op.expires_at)}")
    if op.result:
        lines.append(f"  result  {op.result.status}: {op.result.summary} ({op.result.execution_time:.1f}s)")
    for artifact in op.artifacts.artifacts:
        lines.append(f"  {artifact.name}  {human_size(artifact.size)}  {artifact.checksum}")
    return "\n".join(lines)


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(value, "strftime") else str(value)


def _dump(op: GetOperationResponse) -> dict[str, Any]:
    return op.model_dump(mode="json", exclude_none=True)


# --- commands ---


def _keygen(args: argparse.Namespace) -> int:
    path = _identity_path(args)
    from strongroom.client.identity import create_identity, create_wallet_identity

    changed = True
    if args.from_wallet_key:
        identity, changed = create_wallet_identity(path, force=args.force)
    else:
        identity = create_identity(path, force=args.force)
    document: dict[str, Any] = {
        "address": identity.address,
        "encryption_public_key": identity.encryption_public_key,
        "path": str(path),
    }
    if args.from_wallet_key:
        document |= {"encryption_key": "wallet-derived", "changed": changed}
    written = f"identity written to {path} (mode 0600)" if changed else f"identity at {path} unchanged"
    derived = ""
    if args.from_wallet_key:
        derived = "\nencryption key derived from the signing key: a wallet holding it derives the same one"
    _emit(
        args,
        document,
        f"{written}\n"
        f"address:               {identity.address}\n"
        f"encryption public key: {identity.encryption_public_key}{derived}",
    )
    return 0


def _build_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default="privacy-audit", help="agent name (default privacy-audit)")
    parser.add_argument("--text", help="text input (input.text)")
    parser.add_argument(
        "--file", dest="files", type=Path, nargs="+", action="extend", default=[], help="input files (input.files)"
    )
    parser.add_argument("--retention-days", type=int, help="keep the artifacts this many days")


def _create(args: argparse.Namespace) -> int:
    if args.text is None and not args.files:
        raise ClientError("give the input with --text and/or --file", code="input_missing")
    agent_input: dict[str, Any] = {}
    if args.text is not None:
        agent_input["text"] = args.text
    if args.files:
        agent_input["files"] = {
            validate_artifact_name(path.name): base64.b64encode(path.read_bytes()).decode("ascii")
            for path in args.files
        }
    with _client(args) as client:
        created = client.create(args.agent, agent_input, retention_days=args.retention_days)
    _emit(args, created.model_dump(mode="json"), f"{created.id}  {created.status}")
    return 0


def _build_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="operation id")


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        op = client.get(args.id)
    _emit(args, _dump(op), _operation_lines(op))
    return 0


def _build_wait(parser: argparse.ArgumentParser) -> None:
    _build_id(parser)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        op = client.wait(args.id, timeout=args.timeout)
    _emit(args, _dump(op), _operation_lines(op))
    return 0 if op.status == "succeeded" else EXIT_NOT_SUCCEEDED


def _build_ls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", help="only operations with this status")
    parser.add_argument("--limit", type=int, default=50, help="show at most this many (default 50)")


def _ls(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with _client(args) as client:
        for summary in client.iter_operations(status=args.status, page_size=min(max(args.limit, 1), 100)):
            rows.append(summary.raw)
            if len(rows) >= args.limit:
                break
    human = "\n".join(
        f"{row['id']}  {row['status']:<9}  {row.get('created_at', '')}  "
        f"{(row.get('artifacts') or {}).get('count', 0)} artifact(s)"
        for row in rows
    )
    _emit(args, {"operations": rows}, human or "no operations")
    return 0


def _build_get(parser: argparse.ArgumentParser) -> None:
    _build_id(parser)
    parser.add_argument("names", nargs="*", metavar="NAME", help="artifacts to download (default: all)")
    parser.add_argument("-o", "--output", type=Path, default=Path("."), help="directory to write into")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _get(args: argparse.Namespace) -> int:
    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    for name in args.names:  # refused before asking the server: a name that could leave the output directory
        validate_artifact_name(name)
    with _client(args) as client:
        available = {a.name: a for a in client.artifacts(args.id).artifacts}
        names = args.names or sorted(available)
        missing = [n for n in names if n not in available]
        if missing:
            raise NotFound(f"no artifact named {', '.join(map(repr, missing))} in {args.id}")
        for name in names:  # the names come from the server: none may pick a path outside the output directory
            validate_artifact_name(name)  # all checked before the first file is written
        for name in names:
            dest = out_dir / name
            if dest.exists() and not args.force:
                raise ClientError(f"{dest} exists; use --force to overwrite it", code="file_exists")
            bar = ProgressBar(name) if not args.json else None
            try:
                result = client.download(args.id, name, dest, progress=bar)
            finally:
                if bar:
                    bar.close()
            written.append({"name": name, "path": str(dest), "size": result.size, "checksum": result.checksum})
    human = "\n".join(f"{w['path']}  {human_size(w['size'])}  {w['checksum']}  verified" for w in written)
    _emit(args, {"artifacts": written}, human or "no artifacts")
    return 0


def _build_rm(parser: argparse.ArgumentParser) -> None:
    _build_id(parser)
    parser.add_argument("names", nargs="+", metavar="NAME", help="artifacts to delete")


def _rm(args: argparse.Namespace) -> int:
    for name in args.names:
        validate_artifact_name(name)
    with _client(args) as client:
        for name in args.names:
            client.delete(args.id, name)
    _emit(args, {"deleted": args.names}, "\n".join(f"deleted {name}" for name in args.names))
    return 0


def _log(args: argparse.Namespace) -> int:
    with _client(args) as client:
        log = client.access_log(args.id)
    verdict = {True: "hash chain verified", False: "HASH CHAIN BROKEN", None: "hash chain not reported"}
    lines = [_event_line(e) for e in log.events]
    lines.append(f"{len(log.events)} event(s), {verdict[log.chain_verified]}")
    lines += [f"  {problem}" for problem in log.problems]
    doc = {"events": log.events, "chain_verified": log.chain_verified, "problems": log.problems}
    _emit(args, doc, "\n".join(lines))
    return 0 if log.chain_verified is not False else 9


def _event_line(event: dict[str, Any]) -> str:
    """One access-log line: when, what, the result, who, which artifact and, for a refusal, its reason code."""
    reason = f"({event['reason']})" if event.get("reason") else ""
    return (
        f"{event.get('time', '')}  {event.get('action', ''):<18} {event.get('result', ''):<8} "
        f"{event.get('actor') or '-'}  {event.get('artifact') or ''}  {reason}"
    ).rstrip()


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.cancel(args.id)
    _emit(args, answer, f"{args.id}  {answer.get('status', 'cancel requested')}")
    return 0


def _build_nothing(parser: argparse.ArgumentParser) -> None:
    del parser


def _whoami(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.grant()
    _emit(args, view.model_dump(mode="json"), grant_lines(view))
    return 0


def grant_lines(view: GrantView) -> str:
    """The grant as people read it: what may be run, until when, and each quota as used/limit."""
    lines = [f"{view.address}  grant: {view.status} ({view.source})"]
    if view.status == "none":
        return "\n".join([*lines, "this address may not start operations here"])
    lines.append("agents: " + ("all" if view.agents == ["*"] else ", ".join(view.agents)))
    lines.append("expires: " + (_time(view.expires_at) if view.expires_at else "never"))
    if view.max_retention_days:
        lines.append(f"max retention: {view.max_retention_days} days")
    usage = view.usage.model_dump() if view.usage else {}
    used = {"concurrent_operations": "concurrent_operations", "operations_per_hour": "operations_last_hour"}
    for quota, limit in view.quotas.model_dump().items():
        count = usage.get(used.get(quota, quota))
        shown = "unlimited" if limit is None else str(limit)
        lines.append(f"{quota}: {count if count is not None else '-'} / {shown}")
    return "\n".join(lines)


def _build_keygen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing identity (its artifacts are lost)")
    parser.add_argument(
        "--from-wallet-key",
        action="store_true",
        help="derive the encryption key from the signing key's signature over strongroom's key message, as the "
        "browser page does from a wallet holding that key; an existing identity keeps its signing key "
        "(docs/encryption.md section 4)",
    )


_COMMANDS: Sequence[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = (
    ("keygen", "create a signing key and an encryption key", _build_keygen, _keygen),
    ("whoami", "show your address, what your grant lets you run and your quota usage", _build_nothing, _whoami),
    ("create", "start an operation", _build_create, _create),
    ("status", "show an operation", _build_id, _status),
    ("wait", "wait until an operation finishes", _build_wait, _wait),
    ("ls", "list your operations, newest first", _build_ls, _ls),
    ("get", "download, verify and decrypt artifacts", _build_get, _get),
    ("rm", "delete artifacts", _build_rm, _rm),
    ("log", "show an operation's access log", _build_id, _log),
    ("cancel", "cancel a pending or running operation", _build_id, _cancel),
)
