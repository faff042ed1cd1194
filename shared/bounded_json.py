"""``json.loads`` for JSON we did not write (request bodies, agent output): nesting depth is bounded first.

CPython's JSON parser recurses once per nested array or object. How deep it may go is the interpreter's
recursion limit, which a library can raise (py_ecc, pulled in by eth-account and web3, sets it to 100000): a
body of 100000 ``[`` then overflows the C stack and the process dies with SIGSEGV instead of raising
``RecursionError``. So the depth is measured before parsing, without recursion, and anything deeper than
``MAX_JSON_DEPTH`` is refused (``JsonTooDeep``, 422 ``json_too_deep`` at the API). ``shared.runtime_limits``
restores the recursion limit as a second line of defence.

The measurement runs in C (a regular expression, ``bytes.translate`` and ``itertools.accumulate``), so it costs
a small fraction of the parse for the sizes the API accepts.
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from typing import Any

from shared.errors import JsonTooDeep

MAX_JSON_DEPTH = 64

# A JSON string, escapes included. The closing quote is optional so an unterminated string matches to the end in
# one pass (a failing match retried from every later quote would be quadratic); json.loads refuses it afterwards.
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"?')
# '[' and '{' open a level (+1), ']' and '}' close one (-1 as a signed byte); every other byte is deleted.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(raw: bytes | str) -> int:
    """How deeply arrays and objects nest in ``raw`` (0 for a scalar), counting brackets outside strings only.

    Bytes are read in the encoding ``json.loads`` would detect (UTF-8, -16 or -32) and scanned as UTF-8, where no
    byte of a multi-byte character can pass for a quote or a bracket (in UTF-16 one could).
    """
    text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    data = text.encode("utf-8", "surrogatepass")
    steps = array("b", _STRING.sub(b"", data).translate(_STEPS, _NOT_BRACKETS))
    return max(0, max(accumulate(steps), default=0))


def loads(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises ``JsonTooDeep`` for nesting deeper than ``max_depth`` before it parses."""
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonTooDeep(f"JSON may nest arrays and objects at most {max_depth} levels deep")
    return json.loads(raw)
