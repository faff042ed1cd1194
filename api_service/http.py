"""Small HTTP header parsers the artifact endpoints need: ``Accept`` preference and a single ``Range``."""

from __future__ import annotations

from dataclasses import dataclass

from api_service.errors import RangeNotSatisfiable

JSON = "application/json"


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
    if not dash or not (start_text.isdigit() or end_text.isdigit()):
        return None
    if (start_text and not start_text.isdigit()) or (end_text and not end_text.isdigit()):
        return None
    if not start_text:  # suffix: the last N bytes
        suffix = int(end_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(start_text)
    if end_text and int(end_text) < first:
        return None  # invalid range-spec: ignored, the whole object is sent
    if first >= size:
        raise RangeNotSatisfiable(size)
    last = int(end_text) if end_text else size - 1
    return ByteRange(first, min(last, size - 1))
