"""RFC 9421 signature bases and RFC 9530 digests: the bytes both the signer and the verifier must agree on.

Both sides call the same functions so the client and the server cannot drift apart. Only what strongroom needs is
implemented: the derived components ``@method``, ``@authority``, ``@path`` and ``@query`` (RFC 9421 section 2.2)
and plain HTTP fields without component parameters (section 2.1).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from http_sf.innerlist import ser_innerlist

# What strongroom's own signers cover: always all five (``@query`` is ``?`` without a query, the digest is the empty
# body's), so one shape fits every request. The verifier asks only what ERC-8128 section 3.1.1 asks (see below).
REQUIRED_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path", "@query", "content-digest")
# ERC-8128 section 3.1.1, Request-Bound: always these three, plus ``@query`` when the request has a query and
# ``content-digest`` when it has a body (``request_bound_components``).
REQUEST_BOUND_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path")
DERIVED_COMPONENTS: frozenset[str] = frozenset({"@method", "@authority", "@path", "@query"})
DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443}

# RFC 3986 port: ASCII digits only (str.isdigit() also accepts '²', which int() rejects), bounded in length.
_PORT_RE = re.compile(r"[0-9]{1,5}")

# RFC 9651: printable ASCII without the two characters a string must escape (DQUOTE, backslash); a key; an integer.
_PLAIN_STRING_RE = re.compile(r"[ !#-\[\]-~]*")
_KEY_RE = re.compile(r"[a-z*][a-z0-9_.*-]*")
_MAX_SF_INTEGER = 999_999_999_999_999

# RFC 9530 algorithms this server can check; sha-256 is the one signers must send.
DIGEST_ALGORITHMS: Mapping[str, str] = {"sha-256": "sha256", "sha-512": "sha512"}


@dataclass(frozen=True)
class RequestParts:
    """The request as the signer sent it (or as the server reconstructs it): the inputs of a signature base.

    ``path`` and ``query`` are the raw, still percent-encoded request target (``query`` starts with ``?``);
    ``headers`` must have lowercase names.
    """

    method: str
    authority: str
    path: str
    query: str
    headers: Mapping[str, str]


class ComponentError(ValueError):
    """A covered component cannot be resolved from the request (absent field, unsupported derived component)."""


class AuthorityError(ValueError):
    """A host[:port] whose port is not a decimal number: it cannot name any authority a client signed."""


def normalize_authority(host: str, scheme: str) -> str:
    """RFC 9421 section 2.2.3: lowercase host, port only when it is not the scheme's default.

    Raises ``AuthorityError`` when a port is present but is not 1-5 ASCII digits (``host:`` with an empty port
    means the default port, as RFC 3986 section 3.2.3 allows).
    """
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: the port, if any, follows the closing bracket
        end = host.find("]")
        name, separator, port = host[: end + 1], host[end + 1 : end + 2], host[end + 2 :]
        if end < 0 or separator not in ("", ":"):
            raise AuthorityError("malformed IPv6 authority")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    if not port:
        return name
    if not _PORT_RE.fullmatch(port):
        raise AuthorityError("the port is not a decimal number")
    if DEFAULT_PORTS.get(scheme.lower()) != int(port):
        return f"{name}:{int(port)}"
    return name


def normalize_query(query: str) -> str:
    """``@query`` is ``?`` followed by the raw query, and just ``?`` when there is none (section 2.2.7)."""
    return query if query.startswith("?") else f"?{query}"


def request_bound_components(query: str, body: bytes) -> tuple[str, ...]:
    """The components a Request-Bound signature must cover for this request (ERC-8128 section 3.1.1).

    ``query`` is the raw query with or without its ``?``; an empty one is no query (an ASGI server cannot tell
    ``/path?`` from ``/path``, and RFC 9421 gives both the same ``@query`` value, ``?``). An empty body is no body.
    """
    required = REQUEST_BOUND_COMPONENTS
    if query not in ("", "?"):
        required += ("@query",)
    if body:
        required += ("content-digest",)
    return required


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` value strongroom signers send: ``sha-256=:<base64>:`` (also for an empty body)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def component_value(name: str, request: RequestParts) -> str:
    """The canonical value of one covered component (RFC 9421 sections 2.1 and 2.2)."""
    if name == "@method":
        return request.method.upper()
    if name == "@authority":
        return request.authority
    if name == "@path":
        return request.path or "/"
    if name == "@query":
        return normalize_query(request.query)
    if name.startswith("@"):
        raise ComponentError(f"derived component {name} is not supported")
    value = request.headers.get(name)
    if value is None:
        raise ComponentError(f"covered field {name} is absent")
    # Section 2.1: strip leading/trailing whitespace; obs-fold is not accepted by HTTP parsers we run behind.
    return value.strip()


def serialize_params(covered: Sequence[str], params: Mapping[str, object]) -> str:
    """``@signature-params``: the inner list exactly as it is serialized into ``Signature-Input`` (section 2.3).

    Every request pays for this, so the shapes ERC-8128 uses (plain strings, integers) take a direct path that
    writes what ``http-sf`` writes; anything else (escapes, tokens, booleans, out-of-range numbers) is left to
    ``http-sf``, which also raises for what cannot be serialized. A unit test compares both on arbitrary input.
    """
    fast = _serialize_simple(covered, params)
    if fast is not None:
        return fast
    return ser_innerlist(([(name, {}) for name in covered], dict(params)))  # type: ignore[arg-type]


def _serialize_simple(covered: Sequence[str], params: Mapping[str, object]) -> str | None:
    """RFC 9651 sections 4.1.1.1-3 for strings without escapes and integers; ``None`` for anything else."""
    items = []
    for name in covered:
        if type(name) is not str or not _PLAIN_STRING_RE.fullmatch(name):
            return None
        items.append(f'"{name}"')
    out = [f"({' '.join(items)})"]
    for key, value in params.items():
        if type(key) is not str or not _KEY_RE.fullmatch(key):
            return None
        if type(value) is int and -_MAX_SF_INTEGER <= value <= _MAX_SF_INTEGER:
            out.append(f";{key}={value}")
        elif type(value) is str and _PLAIN_STRING_RE.fullmatch(value):
            out.append(f';{key}="{value}"')
        else:
            return None
    return "".join(out)


def signature_base(covered: Sequence[str], params: Mapping[str, object], request: RequestParts) -> str:
    """RFC 9421 section 2.5: one ``"name": value`` line per component, then ``"@signature-params"``; no final LF."""
    lines = [f'"{name}": {component_value(name, request)}' for name in covered]
    lines.append(f'"@signature-params": {serialize_params(covered, params)}')
    return "\n".join(lines)
