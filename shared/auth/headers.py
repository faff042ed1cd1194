"""Parsing ``Signature-Input`` and ``Signature`` (RFC 9421 section 4) into one ERC-8128 signature, strictly.

Structured fields are parsed with ``http-sf`` (RFC 9651); this module adds the ERC-8128 profile on top: size and
ASCII limits, the mandatory parameters, the ``keyid`` format and the nonce format. Every refusal is an
``AuthError`` with a stable ``code``; details never echo header values back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import http_sf

from shared.errors import AuthError

MAX_HEADER_BYTES = 4096
PREFERRED_LABEL = "eth"
KEYID_PREFIX = "erc8128:"
ALLOWED_PARAMS = frozenset({"created", "expires", "nonce", "keyid", "tag"})
REQUIRED_PARAMS = ("created", "expires", "nonce", "keyid")

_KEYID_RE = re.compile(r"^erc8128:(?P<chain>[1-9][0-9]{0,19}):(?P<address>0x[0-9a-fA-F]{40})$")
# ERC-8128 leaves the nonce's form to the signer (an sf-string; base64url recommended): any 1-128 printable ASCII
# characters. Only the length is ours, so nonce keys in Redis stay small. How guessable a nonce is matters to
# nobody but its signer: another party cannot sign with it, and (keyid, nonce) is what is consumed.
_NONCE_RE = re.compile(r"^[ -~]{1,128}$")
_FIELD_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_VISIBLE_ASCII_RE = re.compile(r"[ -~]*")  # SP to "~": one C-level scan instead of a Python loop per character


@dataclass(frozen=True)
class ParsedSignature:
    """One signature selected from the request headers, with its parameters already validated for shape."""

    label: str
    covered: tuple[str, ...]
    params: Mapping[str, Any]  # in received order: ``@signature-params`` is rebuilt from it
    created: int
    expires: int
    nonce: str
    keyid: str
    chain_id: int
    address: str  # lowercase 0x
    signature: bytes


def malformed(detail: str) -> AuthError:
    return AuthError(detail, code="signature_malformed")


def check_header_value(name: str, value: str) -> bytes:
    """Bound the size and refuse anything but visible ASCII before any parser sees the value."""
    if len(value) > MAX_HEADER_BYTES:
        raise malformed(f"{name} is larger than {MAX_HEADER_BYTES} bytes")
    if not _VISIBLE_ASCII_RE.fullmatch(value):
        raise malformed(f"{name} must be printable ASCII")
    return value.encode("ascii")


def parse_dictionary(name: str, value: str) -> dict[str, Any]:
    data = check_header_value(name, value)

    def duplicate(key: str, _context: str) -> None:
        raise malformed(f"{name} repeats a key")

    try:
        parsed = http_sf.parse(data, tltype="dictionary", on_duplicate_key=duplicate)
    except http_sf.StructuredFieldError:
        raise malformed(f"{name} is not a valid structured-field dictionary") from None
    assert isinstance(parsed, dict)
    return parsed


@lru_cache(maxsize=4096)
def parse_keyid(keyid: str) -> tuple[int, str]:
    """``erc8128:<chain id>:<address>`` -> (chain id, lowercase address).

    Cached: a signer sends the same keyid on every request (refusals raise and are not cached)."""
    match = _KEYID_RE.fullmatch(keyid)
    if match is None:
        raise malformed('keyid must be "erc8128:<chain id>:<0x address>"')
    return int(match["chain"]), match["address"].lower()


def parse_signature(headers: Mapping[str, str]) -> ParsedSignature:
    """Select and validate the ERC-8128 signature carried by ``headers`` (lowercase names)."""
    raw_input, raw_signature = headers.get("signature-input"), headers.get("signature")
    if raw_input is None and raw_signature is None:
        raise AuthError("the request is not signed", code="signature_missing")
    if raw_input is None or raw_signature is None:
        raise AuthError("Signature-Input and Signature must both be present", code="signature_missing")
    inputs = parse_dictionary("Signature-Input", raw_input)
    signatures = parse_dictionary("Signature", raw_signature)
    label = _select_label(inputs)
    if label not in signatures:
        raise malformed("Signature has no member for the Signature-Input label")
    covered, params = _inner_list(inputs[label])
    signature = signatures[label]
    if not (isinstance(signature, tuple) and isinstance(signature[0], bytes) and not signature[1]):
        raise malformed("Signature member must be a byte sequence")
    return _validated(label, covered, params, signature[0])


def _select_label(inputs: Mapping[str, Any]) -> str:
    """Any label is accepted (RFC 9421); ``eth`` wins, else the first member whose keyid is ERC-8128."""
    if not inputs:
        raise malformed("Signature-Input is empty")
    if PREFERRED_LABEL in inputs:
        return PREFERRED_LABEL
    for label, member in inputs.items():
        keyid = member[1].get("keyid") if isinstance(member, tuple) and isinstance(member[1], dict) else None
        if type(keyid) is str and keyid.startswith(KEYID_PREFIX):
            return label
    raise malformed("no Signature-Input member carries an erc8128 keyid")


def _inner_list(member: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    if not (isinstance(member, tuple) and isinstance(member[0], list)):
        raise malformed("Signature-Input member must be an inner list")
    covered: list[str] = []
    for item in member[0]:
        name, component_params = item
        if type(name) is not str or component_params:
            raise malformed("covered components must be plain strings without parameters")
        if not (name.startswith("@") or _FIELD_NAME_RE.fullmatch(name)):
            raise malformed("covered component names must be lowercase")
        if name in covered:
            raise malformed("a covered component is repeated")
        covered.append(name)
    return tuple(covered), dict(member[1])


def _validated(label: str, covered: tuple[str, ...], params: dict[str, Any], signature: bytes) -> ParsedSignature:
    unknown = set(params) - ALLOWED_PARAMS
    if unknown:
        # ERC-8128 asks verifiers to refuse ``alg`` until an algorithm is registered; anything else is unknown.
        raise malformed(f"unsupported signature parameter(s): {', '.join(sorted(unknown))}")
    for name in REQUIRED_PARAMS:
        if name not in params:
            raise malformed(f"the {name} parameter is required")
    created, expires, nonce, keyid = (params[name] for name in REQUIRED_PARAMS)
    if type(created) is not int or type(expires) is not int or created < 0:
        raise malformed("created and expires must be integer Unix times")
    if expires <= created:
        raise malformed("expires must be later than created")
    if type(nonce) is not str or not _NONCE_RE.fullmatch(nonce):
        raise malformed("nonce must be 1 to 128 printable ASCII characters")
    if type(keyid) is not str:
        raise malformed("keyid must be a string")
    if "tag" in params and type(params["tag"]) is not str:
        raise malformed("tag must be a string")
    chain_id, address = parse_keyid(keyid)
    if not signature:
        raise malformed("the signature is empty")
    return ParsedSignature(
        label=label,
        covered=covered,
        params=params,
        created=created,
        expires=expires,
        nonce=nonce,
        keyid=keyid,
        chain_id=chain_id,
        address=address,
        signature=signature,
    )


def claimed_address(headers: Mapping[str, str]) -> str | None:
    """The address a request claims to be signed by, for audit records of refusals; ``None`` if unreadable."""
    try:
        return parse_signature(headers).address
    except AuthError:
        return None
