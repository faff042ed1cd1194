"""Small HTTP header parsers the artifact endpoints need: ``Accept`` preference and a single ``Range``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from api_service.errors import RangeNotSatisfiable

JSON = "application/json"
# RFC 9110 section 14.1.1 byte positions are ASCII DIGITs; str.isdigit() would also pass '²', which int() rejects.
_DIGITS = re.compile(r"[0-9]+")
# Positions longer than this exceed any object we store; capping them keeps int() cheap (and under Python's
# 4300-digit conversion limit) without changing how they compare against the object's size.
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def _quality(accept: str, media_type: str) -> float:
    """q of the most specific range in ``accept`` that matches ``media_type`` (RFC 9110 section 12.5.1)."""
    major = media_type.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        candidate = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = max(0.0, min(1.0, float(value)))
                except ValueError:
                    q = 0.0
        if candidate == media_type:
            specificity = 2
        elif candidate == f"{major}/*":
            specificity = 1
        elif candidate == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def prefers_json(accept: str | None) -> bool:
    """True when the client ranks JSON strictly above a raw download (browsers asking for the URL)."""
    if not accept:
        return False
    json_q = _quality(accept, JSON)
    return json_q > 0 and json_q > _quality(accept, "application/octet-stream")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range resolved against ``size``; ``None`` means "send it all" (no header, or one we ignore).

    Multi-range and malformed headers are ignored as RFC 9110 section 14.2 allows; a well-formed range that
    selects nothing raises ``RangeNotSatisfiable`` (416).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    start_text, dash, end_text = spec.strip().partition("-")
    first, last = _position(start_text), _position(end_text)
    if not dash or (first is None and last is None):
        return None
    if (start_text and first is None) or (end_text and last is None):
        return None
    if first is None and last is not None:  # suffix: the last N bytes
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - last), size - 1)
    if first is None:
        return None
    if last is not None and last < first:
        return None  # invalid range-spec: ignored, the whole object is sent
    if first >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(first, size - 1 if last is None else min(last, size - 1))


def _position(text: str) -> int | None:
    """An ASCII decimal byte position (capped, see ``_MAX_DIGITS``), or ``None`` if ``text`` is not one."""
    if not _DIGITS.fullmatch(text):
        return None
    significant = text.lstrip("0") or "0"
    return _HUGE if len(significant) > _MAX_DIGITS else int(significant)
