"""structlog set-up for every process: JSON in production, readable console output in development.

Standard-library loggers (uvicorn, celery, botocore) are routed through the same processors, so one process
writes one format. Context such as ``request_id`` or ``task_id`` is bound with ``structlog.contextvars`` by the
API middleware and the Celery signals. The redaction processor is the last line of defence: code should never pass
secrets to a logger, but if it does, known-secret keys and secret-looking values are masked before output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"(secret|private|passw|token|credential|authorization|signature|keyring|data_key|wrapped_key|"
    r"access_key|api_key|^dk$|^key$|_key$)",
    re.IGNORECASE,
)
_SAFE_KEYS = frozenset({"event", "logger", "level", "timestamp", "request_id", "task_id", "operation_id"})
_SECRET_VALUE = re.compile(
    r"(0x[0-9a-fA-F]{64,}"  # private keys, signatures
    r"|:[A-Za-z0-9+/]{40,}={0,2}:"  # RFC 9421 / 9530 byte sequences (Signature, Content-Digest)
    r"|[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])"  # base64 of 32 bytes (keys)
    r"|(?<=AWS4-HMAC-SHA256 Credential=)\S+|(?<=X-Amz-Signature=)[0-9a-f]+|(?<=X-Amz-Credential=)[^&\s]+)"
)


_known_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values wherever they appear (configured credentials whose shape no pattern knows)."""
    _known_secrets.update(v for v in values if v and len(v) >= 8)


def _mask_known(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, key: str = "") -> Any:
    """Mask secret-named fields, configured secret values and secret-looking strings, recursively."""
    if key and key not in _SAFE_KEYS and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, _mask_known(value))
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    for key in list(event_dict):
        event_dict[key] = redact(event_dict[key], key)
    return event_dict


def _process_name(process: str | None) -> Any:
    """Tag every line with the process's name, from any thread (a Celery pool thread has no copy of the context)."""

    def add(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if process:
            event_dict.setdefault("process", process)
        return event_dict

    return add


def _shared_processors(process: str | None = None) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        _process_name(process),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


def configure(log_format: str = "json", level: str = "INFO", process: str | None = None) -> None:
    """Configure structlog and the standard library once per process."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    final = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        redact_processor,
        renderer,
    ]
    structlog.configure(
        processors=[
            *_shared_processors(process),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_shared_processors(process), processors=final)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "web3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    if process:
        structlog.contextvars.bind_contextvars(process=process)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
