"""An object store that counts the S3 requests each call would make: what the "work follows change" tests
(the monitor's ledger, cleanup's expiry index, the orphan sweep) measure instead of time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from shared.storage import ObjectInfo
from shared.storage.memory import MemoryObjectStore

PAGE = 1000  # objects (or prefixes) per LIST request, as S3 pages them


class CountingStore:
    """Wraps a ``MemoryObjectStore``: one request per call, and a LIST costs one per page consumed."""

    def __init__(self, inner: MemoryObjectStore | None = None) -> None:
        self.inner = inner if inner is not None else MemoryObjectStore()
        self.requests: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.requests[name] += 1
            return attribute(*args, **kwargs)

        return counted

    def list(self, prefix: str, **kwargs: Any) -> Iterator[ObjectInfo]:
        return self._paged("list", self.inner.list(prefix, **kwargs))

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        return self._paged("list_prefixes", self.inner.list_prefixes(prefix))

    def _paged(self, name: str, items: Iterator[Any]) -> Iterator[Any]:
        self.requests[name] += 1
        for seen, item in enumerate(items, start=1):
            if seen % PAGE == 0:
                self.requests[name] += 1
            yield item

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def take(self) -> int:
        """The requests since the last ``take`` (the counter starts again)."""
        total = self.total
        self.requests.clear()
        return total
