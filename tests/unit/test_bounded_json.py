"""Untrusted JSON: nesting is measured without recursion and bounded before ``json.loads`` runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import bounded_json
from shared.bounded_json import MAX_JSON_DEPTH, nesting_depth
from shared.errors import JsonTooDeep, ValidationFailed

pytestmark = pytest.mark.unit

# Strings full of what could fool a bracket counter: brackets, quotes, backslashes, escapes, non-ASCII.
_TRICKY = st.text(alphabet=st.sampled_from('[]{}"\\\\/ aé\n\u2028'), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_JSON, st.booleans())
def test_depth_is_the_documents_nesting(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_depth(text) == _depth(value)
    assert nesting_depth(text.encode()) == _depth(value)


@given(_JSON, st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32"]))
def test_every_encoding_json_loads_accepts_is_measured_the_same(value: Any, encoding: str) -> None:
    """In UTF-16 a character inside a string can hold a 0x22 byte; measured as bytes it would hide brackets."""
    assert nesting_depth(json.dumps(value, ensure_ascii=False).encode(encoding)) == _depth(value)


def test_a_quote_byte_inside_a_utf16_character_hides_nothing() -> None:
    """U+5B22 is the bytes 22 5B in UTF-16-LE: a quote and a bracket to a byte scanner."""
    text = '["\u5b22", ' + "[" * 100 + "]" * 100 + "]"
    assert "\u5b22" in text and b'"[' in "\u5b22".encode("utf-16-le")
    assert nesting_depth(text.encode("utf-16-le")) == 101
    with pytest.raises(JsonTooDeep):
        bounded_json.loads(text.encode("utf-16-le"))


def test_the_limit_is_inclusive_and_refusal_is_a_422_and_a_value_error() -> None:
    assert bounded_json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(JsonTooDeep) as info:
        bounded_json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert isinstance(info.value, ValidationFailed) and isinstance(info.value, ValueError)
    assert (info.value.status, info.value.code) == (422, "json_too_deep")


def test_the_issue_body_is_refused_before_parsing() -> None:
    """Issue 10, item 1: 100000 nested arrays inside the input (about 200 KB)."""
    body = b'{"agent":"privacy-audit","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert nesting_depth(body) == 100_001
    with pytest.raises(JsonTooDeep):
        bounded_json.loads(body)


@pytest.mark.parametrize(
    "text",
    ['"[[[[', '"\\"' * 50_000, '["\\\\", [[[', "[" * 10 + '"' + "]" * 10, "]]]][[", "[" * 100 + '"'],
)
def test_malformed_documents_are_refused(text: str) -> None:
    """Unterminated strings and stray brackets: measured in one pass (a lone quote never makes the string
    pattern retry from every later quote), then refused as too deep or by json.loads, both ValueErrors."""
    assert nesting_depth(text) >= 0
    with pytest.raises(ValueError):
        bounded_json.loads(text)
