"""Grants: who may start which agent, until when, with which quotas.

A grant source is chosen by configuration (``STRONGROOM_GRANTS_SOURCE``) and answers one narrow question,
``grant_for(address, agent, now)``, so an on-chain source can be added later without touching its callers:

- ``open``: everyone may run everything, with no quota (today's behaviour; development's default, and in
  production only when set explicitly, with a warning at start);
- ``static``: a YAML or JSON file of grants (a mounted ConfigMap in the chart), re-read when it changes. A bad file
  at start-up is a configuration error; a bad file later keeps the last good grants and logs why.

The decision rules live here once, for the API (create and every read) and the worker (cleanup): no grant is
``no_grant``; an agent outside the grant is ``agent_not_granted``; a grant past ``expires_at`` is ``grant_expired``;
an operation whose grantee no longer has a grant is ``grant_revoked``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import layout
from shared.errors import ConfigError, GrantDenied, ValidationFailed
from shared.logging import get_logger
from shared.models import Quotas

if TYPE_CHECKING:
    from shared.settings import Settings

log = get_logger("strongroom.grants")

WILDCARD = "*"
MAX_FILE_BYTES = 4 * 1024 * 1024  # a grants file is configuration, not data
RELOAD_CHECK_SECONDS = 1.0  # how often a lookup may stat the file

GrantsSource = Literal["open", "static"]


class Grant(BaseModel):
    """One entry of a grants file: ``address`` (or ``*``) may run ``agents`` (or ``["*"]``) until ``expires_at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    agents: tuple[str, ...] = Field(min_length=1)
    expires_at: datetime | None = None
    max_retention_days: int | None = Field(default=None, ge=1)
    quotas: Quotas = Quotas()

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value == WILDCARD:
            return value
        try:
            return layout.normalize_address(value)
        except ValidationFailed:
            raise ValueError(f"{value!r} is not an Ethereum address (0x and 40 hex digits) or '*'") from None

    @field_validator("agents")
    @classmethod
    def _agents(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for agent in value:
            if agent != WILDCARD and not layout.is_agent_name(agent):
                raise ValueError(f"{agent!r} is not an agent name (lowercase letters, digits and '-') or '*'")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        return value.astimezone(UTC) if value is not None else None

    def allows_agent(self, agent: str) -> bool:
        return WILDCARD in self.agents or agent in self.agents

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class GrantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    grants: tuple[Grant, ...]

    @field_validator("grants")
    @classmethod
    def _unique(cls, value: tuple[Grant, ...]) -> tuple[Grant, ...]:
        seen: set[str] = set()
        for grant in value:
            if grant.address in seen:
                raise ValueError(f"{grant.address} has more than one grant")
            seen.add(grant.address)
        return value


OPEN_GRANT = Grant(address=WILDCARD, agents=(WILDCARD,))


class GrantSource(Protocol):
    """Where grants come from. ``lookup`` is the only thing a source must answer."""

    name: str

    def lookup(self, address: str) -> Grant | None:
        """The grant that applies to ``address`` (its own, else the ``*`` grant), or None."""


def grant_for(source: GrantSource, address: str, agent: str, now: datetime) -> Grant:
    """The grant under which ``address`` may start ``agent`` now; ``GrantDenied`` naming the rule otherwise."""
    grant = source.lookup(address)
    if grant is None:
        raise GrantDenied("this address has no grant on this server", code="no_grant")
    if grant.expired(now):
        raise GrantDenied("this address's grant has expired", code="grant_expired")
    if not grant.allows_agent(agent):
        raise GrantDenied(f"the grant does not include the agent {agent!r}", code="agent_not_granted")
    return grant


def standing(source: GrantSource, address: str, now: datetime) -> Grant:
    """The grant under which ``address`` may still read what it stored; ``grant_revoked``/``grant_expired``."""
    grant = source.lookup(address)
    if grant is None:
        raise GrantDenied("the grant for this address was revoked", code="grant_revoked")
    if grant.expired(now):
        raise GrantDenied("this address's grant has expired", code="grant_expired")
    return grant


def operation_expiry(retention_expiry: datetime, grant: Grant) -> datetime:
    """An operation expires at the earlier of its retention and its grant's end."""
    if grant.expires_at is None:
        return retention_expiry
    return min(retention_expiry, grant.expires_at.replace(microsecond=0))


class OpenGrants:
    """Everyone may run every agent, with no quota."""

    name = "open"

    def lookup(self, address: str) -> Grant | None:
        del address
        return OPEN_GRANT


def parse_grants(text: str, *, filename: str = "grants") -> dict[str, Grant]:
    """Parse a grants document (YAML, of which JSON is a subset); ``ValueError`` with a readable reason."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{filename} is not valid YAML/JSON{where}") from None
    if not isinstance(document, Mapping):
        raise ValueError(f'{filename} must be a mapping with a "grants" list')
    try:
        parsed = GrantsFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ValueError(f"{filename}: {where or 'document'}: {first.get('msg', 'invalid')}") from None
    return {grant.address: grant for grant in parsed.grants}


@dataclass
class _Loaded:
    grants: dict[str, Grant]
    stamp: tuple[int, int, int]
    checked: float
    rejected: tuple[int, int, int] | None = None  # the bad file last complained about, to say it once


class StaticGrants:
    """Grants from a file, re-read when its inode, size or mtime change (a ConfigMap update swaps a symlink)."""

    name = "static"

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            grants, stamp = self._read()
        except (OSError, ValueError) as exc:
            raise ConfigError("STRONGROOM_GRANTS_FILE", _reason(exc)) from None
        self._loaded = _Loaded(grants, stamp, self._clock())

    def _read(self) -> tuple[dict[str, Grant], tuple[int, int, int]]:
        st = os.stat(self._path)
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{self._path.name} is larger than {MAX_FILE_BYTES} bytes")
        text = self._path.read_text(encoding="utf-8")
        return parse_grants(text, filename=self._path.name), (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_if_changed(self) -> None:
        """Re-read the file if it changed; a bad file keeps the last good grants (and says so once)."""
        now = self._clock()
        with self._lock:
            loaded = self._loaded
            if now - loaded.checked < RELOAD_CHECK_SECONDS:
                return
            loaded.checked = now
            try:
                st = os.stat(self._path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp == loaded.stamp:
                    return
                grants, stamp = self._read()
            except (OSError, ValueError) as exc:
                bad = _stamp_or_none(self._path)
                if loaded.rejected != bad:
                    log.error("grants file rejected; keeping the last good grants", reason=_reason(exc))
                    loaded.rejected = bad
                return
            self._loaded = _Loaded(grants, stamp, now)
            log.info("grants reloaded", grants=len(grants))

    def lookup(self, address: str) -> Grant | None:
        self.reload_if_changed()
        grants = self._loaded.grants
        return grants.get(address.lower()) or grants.get(WILDCARD)


def _stamp_or_none(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    return str(exc)


def build_grant_source(source: str, path: Path | None) -> GrantSource:
    """The configured source; ``ConfigError`` for a static source without a readable, valid file."""
    if source == "static":
        if path is None:
            raise ConfigError("STRONGROOM_GRANTS_FILE", "is required when STRONGROOM_GRANTS_SOURCE=static")
        return StaticGrants(path)
    return OpenGrants()


OPEN_IN_PRODUCTION = (
    "STRONGROOM_GRANTS_SOURCE=open in production: anyone with a key can run every agent (keys are free); "
    "a public deployment uses static grants (docs/grants.md)"
)


def grant_source_at_start(settings: Settings, *, process: str) -> GrantSource:
    """The grant source of a process that is starting (the API, the worker), validated before it serves anything.

    ``ConfigError`` for production without ``STRONGROOM_GRANTS_SOURCE`` and for a static file that is missing or
    invalid; an explicit ``open`` in production starts, with a warning in the log.
    """
    settings.require_grants_source()
    source = build_grant_source(settings.resolved_grants_source, settings.grants_file)
    if settings.env == "production" and isinstance(source, OpenGrants):
        log.warning(OPEN_IN_PRODUCTION, process=process)
    return source
