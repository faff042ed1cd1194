"""``StrongroomClient``: a small synchronous SDK for the strongroom API (issue 6), used by the CLI.

Every request is signed (ERC-8128) over the exact URL and body bytes that go on the wire, with a fresh nonce per
attempt, so a retry is never a replay. Errors arrive as the typed exceptions of ``shared.errors`` (see
``strongroom.client.errors``); ``429`` answers are retried a bounded number of times, honouring ``Retry-After``.

Usage::

    with StrongroomClient("http://127.0.0.1:8080", load_identity(path)) as client:
        created = client.create("privacy-audit", {"text": "..."})
        done = client.wait(created.id, timeout=120)
        for artifact in done.artifacts.artifacts:
            client.download(created.id, artifact.name, Path(artifact.name))
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared.auth.signer import sign_request
from shared.errors import NotFound, RateLimited, StorageError, StrongroomError, Unavailable
from shared.models import (
    ENCRYPTION_SCHEME,
    TERMINAL_STATUSES,
    ArtifactCollection,
    CreateOperationResponse,
    GetOperationResponse,
    GrantView,
)
from strongroom.client.download import (
    DownloadResult,
    DownloadTicket,
    Progress,
    RangeAnswer,
    RangeSource,
    download_artifact,
    fetch_range,
)
from strongroom.client.errors import (
    ProtocolError,
    WaitTimeout,
    error_from_response,
    unreachable,
)
from strongroom.client.identity import Identity

API_PREFIX = "/api/v1"
LONG_POLL_MAX = 30  # seconds: the longest ?wait= the API accepts
LONG_POLL_SLACK = 15.0  # seconds of read timeout beyond a long poll's bound (a loaded server, a slow network)
WAIT_APPLIED = "x-wait-applied"  # the API's answer header saying it held a ?wait= request
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class OperationSummary:
    """One row of ``GET /operations``; ``raw`` keeps any field this SDK version does not know yet."""

    id: str
    status: str
    created_at: str | None
    expires_at: str | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class OperationPage:
    operations: list[OperationSummary]
    next_cursor: str | None


@dataclass(frozen=True)
class AccessLog:
    events: list[dict[str, Any]]
    chain_verified: bool | None  # None when the server did not say
    raw: dict[str, Any] = field(repr=False)
    problems: list[str] = field(default_factory=list)  # what the server found wrong with the chain, every page


class StrongroomClient:
    """Synchronous client; one ``httpx.Client`` underneath (pass ``transport`` to test against a mock)."""

    def __init__(
        self,
        api_url: str,
        identity: Identity,
        *,
        chain_id: int = 1,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_after: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.identity = identity
        self.chain_id = chain_id
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> StrongroomClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- operations ---

    def create(
        self, agent: str, input: Mapping[str, Any] | None = None, *, retention_days: int | None = None
    ) -> CreateOperationResponse:
        """Start an operation; its artifacts will be wrapped for this identity's public encryption key."""
        body: dict[str, Any] = {
            "agent": agent,
            "input": dict(input or {}),
            "encryption_public_key": self.identity.encryption_public_key,
        }
        if retention_days is not None:
            body["retention_days"] = retention_days
        response = self._request("POST", "/operations", json_body=body)
        return _model(CreateOperationResponse, response)

    def get(self, operation_id: str, *, wait: int | None = None) -> GetOperationResponse:
        """The operation; with ``wait`` (1-30 s) a long poll: the server answers once the status differs from the
        one it had when the request arrived, or after ``wait`` seconds (docs/api.md). A server that does not know
        ``wait`` answers at once."""
        return self._get(operation_id, wait)[0]

    def grant(self) -> GrantView:
        """What this identity may do on the server (agents, expiry, quotas) and how much of each quota it uses."""
        return _model(GrantView, self._request("GET", "/grant"))

    def wait(
        self,
        operation_id: str,
        *,
        timeout: float = 300.0,
        initial_interval: float = 0.5,
        max_interval: float = 5.0,
        on_poll: Callable[[GetOperationResponse], None] | None = None,
        long_poll: bool = True,
    ) -> GetOperationResponse:
        """Until a terminal status; ``WaitTimeout`` past ``timeout``.

        Long-polls (``GET ?wait=``): each answer is a change of status or the server's bound, so the end is seen
        as soon as the worker records it and nothing is asked in between. Against a server that ignores ``wait``
        (its answer lacks ``X-Wait-Applied``), or with ``long_poll=False``, it polls instead, backing off
        exponentially with jitter from ``initial_interval`` to ``max_interval``; so it does after a long poll that
        came back early without a change (a server shutting down).
        """
        deadline = self._clock() + timeout
        interval = initial_interval
        holds: bool | None = None if long_poll else False  # does the server hold ?wait= requests (None: unknown)
        seen: str | None = None
        while True:
            bound = max(0, min(LONG_POLL_MAX, int(deadline - self._clock()))) if holds is not False else 0
            asked = self._clock()
            operation, applied = self._get(operation_id, bound or None)
            if bound:
                holds = applied
            if on_poll:
                on_poll(operation)
            if operation.status in TERMINAL_STATUSES:
                return operation
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(
                    f"operation {operation_id} is still {operation.status} after {timeout:g}s; "
                    f"`strongroom client wait {operation_id}` keeps waiting"
                )
            changed, seen = operation.status != seen, operation.status
            if holds and bound and (changed or self._clock() - asked >= bound - 1):
                interval = initial_interval
                continue  # a change or the full bound: ask again at once
            # Jitter spreads many clients' polls apart; never sleep past the deadline.
            self._sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
            interval = min(max_interval, interval * 2)

    def _get(self, operation_id: str, wait: int | None) -> tuple[GetOperationResponse, bool]:
        """The operation and whether the server applied ``wait`` (it said so with ``X-Wait-Applied``)."""
        if wait is None:
            return _model(GetOperationResponse, self._request("GET", _op(operation_id))), False
        response = self._request("GET", _op(operation_id), params={"wait": str(wait)}, timeout=wait + LONG_POLL_SLACK)
        return _model(GetOperationResponse, response), WAIT_APPLIED in response.headers

    def list(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None) -> OperationPage:
        """One page of this identity's operations, newest first."""
        params: dict[str, str] = {"limit": str(limit)}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        data = _json_object(self._request("GET", "/operations", params=params))
        rows = data.get("operations", data.get("items"))
        if not isinstance(rows, list):
            raise ProtocolError("the operations list has no 'operations' array")
        next_cursor = data.get("next_cursor")
        return OperationPage([_summary(row) for row in rows], str(next_cursor) if next_cursor else None)

    def iter_operations(self, *, status: str | None = None, page_size: int = 50) -> Iterator[OperationSummary]:
        """Every operation of this identity across all pages."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.operations
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def cancel(self, operation_id: str) -> dict[str, Any]:
        """Cancel a pending or running operation; ``Conflict`` if it already finished."""
        response = self._request("POST", f"{_op(operation_id)}/cancel", json_body=None)
        return _json_object(response) if response.content else {}

    def access_log(self, operation_id: str, *, max_pages: int = 10_000) -> AccessLog:
        """The whole access log, oldest first, following ``next_cursor`` page by page.

        The chain counts as verified only if the server said so for every page (it verifies each page against
        the last batch of the page before).
        """
        events: list[dict[str, Any]] = []
        verified: bool | None = None
        problems: list[str] = []
        params: dict[str, str] = {}
        data: dict[str, Any] = {}
        for _ in range(max_pages):
            data = _json_object(self._request("GET", f"{_op(operation_id)}/access-log", params=params or None))
            page = data.get("events")
            if not isinstance(page, list):
                raise ProtocolError("the access log has no 'events' array")
            events += [e for e in page if isinstance(e, dict)]
            said = next((data[k] for k in ("chain_valid", "chain_verified") if isinstance(data.get(k), bool)), None)
            if said is not None:
                verified = said if verified is None else verified and said
            problems += [p for p in data.get("problems") or () if isinstance(p, str)]
            cursor = data.get("next_cursor")
            if cursor is None or cursor == "":
                break
            params = {"after": str(cursor)}
        else:
            raise ProtocolError(f"the access log did not end within {max_pages} pages")
        return AccessLog(events, verified, data, problems)

    # --- artifacts ---

    def artifacts(self, operation_id: str) -> ArtifactCollection:
        return _model(ArtifactCollection, self._request("GET", f"{_op(operation_id)}/artifacts"))

    def delete(self, operation_id: str, name: str) -> None:
        self._request("DELETE", _artifact(operation_id, name))

    def ticket(self, operation_id: str, name: str) -> DownloadTicket:
        """Where and how to fetch one artifact: the JSON download answer (both delivery modes; in proxy mode its
        ``url`` is the API's own artifact path). Older servers that answer a redirect or the bytes themselves fall
        back to the artifact list's metadata."""
        path = _artifact(operation_id, name)
        with self._stream("GET", path, headers={"Accept": JSON}) as response:
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            location = response.headers.get("location")
            if response.status_code == 200 and kind == JSON:
                response.read()
                return _ticket(operation_id, name, _json_object(response), self.api_url)
        if response.status_code in (301, 302, 303, 307, 308) and location:
            return self._ticket_from_metadata(operation_id, name, str(response.url.join(location)))
        # Proxy mode answering the bytes directly: the API itself is the source.
        return self._ticket_from_metadata(operation_id, name, None)

    def download(
        self, operation_id: str, name: str, dest: Path | str, *, progress: Progress | None = None
    ) -> DownloadResult:
        """Fetch, verify and decrypt one artifact into ``dest`` atomically; resumes an interrupted download."""
        ticket = self.ticket(operation_id, name)
        return download_artifact(
            ticket, self.identity.encryption_secret_key, Path(dest), self._source(ticket), progress=progress
        )

    def fetch_range(self, operation_id: str, name: str, start: int, end: int) -> bytes:
        """Plaintext bytes ``start..end`` inclusive, fetching only the chunks that cover them."""
        ticket = self.ticket(operation_id, name)
        return fetch_range(ticket, self.identity.encryption_secret_key, start, end, self._source(ticket))

    # --- plumbing ---

    def _ticket_from_metadata(self, operation_id: str, name: str, url: str | None) -> DownloadTicket:
        for meta in self.artifacts(operation_id).artifacts:
            if meta.name == name:
                return _ticket(operation_id, name, meta.model_dump(mode="json") | {"url": url}, self.api_url)
        raise NotFound(f"no artifact named {name!r} in operation {operation_id}")

    def _source(self, ticket: DownloadTicket) -> RangeSource:
        @contextmanager
        def open_range(first: int, last: int | None) -> Iterator[RangeAnswer]:
            headers = {"Range": f"bytes={first}-{'' if last is None else last}"} if first or last is not None else {}
            if ticket.url is None:
                # Ask for the bytes: a proxy-mode API answers JSON (the ticket) to a client that prefers it.
                headers["Accept"] = OCTET_STREAM
                context = self._stream("GET", _artifact(ticket.operation_id, ticket.name), headers=headers)
            else:
                context = self._plain_stream(ticket.url, headers)
            with context as response:
                yield RangeAnswer(*_range_of(response), _body(response, ticket.name))

        return open_range

    @contextmanager
    def _plain_stream(self, url: str, headers: Mapping[str, str]) -> Iterator[httpx.Response]:
        """An unsigned GET of a presigned URL: S3 errors are storage errors, not API errors."""
        try:
            with self._http.stream("GET", url, headers=dict(headers)) as response:
                if response.status_code == 404:
                    raise NotFound("the artifact's object is missing from storage")
                if response.status_code == 403:
                    raise StorageError("storage refused the presigned URL (expired? clock skew?); try again")
                if response.status_code not in (200, 206):
                    raise StorageError(f"storage answered HTTP {response.status_code} for the presigned URL")
                yield response
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach storage for the download: {type(exc).__name__}") from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        with self._stream(method, path, body=body, params=params, headers=headers, timeout=timeout) as response:
            response.read()
            return response

    @contextmanager
    def _stream(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """Send a signed request (re-signed on every retry) and yield the successful, still-open response;
        ``timeout`` raises the read timeout for this request (a long poll) above the client's."""
        attempt = 0
        while True:
            response = self._send_signed(method, path, body, params, headers, timeout)
            try:
                if response.status_code < 400 or response.status_code in (301, 302, 303, 307, 308):
                    yield response
                    return
                response.read()
                error = error_from_response(response.status_code, response.content, response.headers)
            finally:
                response.close()
            delay = self._retry_delay(error, method, attempt)
            if delay is None:
                raise error
            attempt += 1
            self._sleep(delay)

    def _send_signed(
        self,
        method: str,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None = None,
    ) -> httpx.Response:
        base_headers = {"Accept": JSON, **(headers or {})}
        if body:
            base_headers["Content-Type"] = JSON
        limits = self._http.timeout
        if timeout is not None and (limits.read is None or limits.read < timeout):
            limits = httpx.Timeout(limits.connect, read=timeout, write=limits.write, pool=limits.pool)
        request = self._http.build_request(
            method,
            f"{self.api_url}{API_PREFIX}{path}",
            content=body,
            params=params,
            headers=base_headers,
            timeout=limits,
        )
        # Sign the URL httpx will actually send, so encoding differences cannot break @path or @query.
        request.headers.update(
            sign_request(self.identity.account, method, str(request.url), body, chain_id=self.chain_id)
        )
        try:
            return self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise unreachable(self.api_url, type(exc).__name__) from None

    def _retry_delay(self, error: StrongroomError, method: str, attempt: int) -> float | None:
        if attempt >= self.max_retries:
            return None
        if isinstance(error, RateLimited):
            if error.code == "quota_exceeded":  # a grant's quota: retrying would only count against it again
                return None
            wait = float(max(error.retry_after or 1, 1))
        elif isinstance(error, Unavailable) and method == "GET":
            wait = min(2.0**attempt, self.max_retry_after)
        else:
            return None
        return wait if wait <= self.max_retry_after else None


# --- response parsing ---


def _op(operation_id: str) -> str:
    return f"/operations/{quote(operation_id, safe='')}"


def _artifact(operation_id: str, name: str) -> str:
    return f"{_op(operation_id)}/artifacts/{quote(name, safe='')}"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise ProtocolError(f"expected JSON from {response.request.url.path}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object from {response.request.url.path}")
    return data


def _model(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate(_json_object(response))
    except ValidationError as exc:
        problems = exc.error_count()
        raise ProtocolError(f"the API's answer is not a valid {model.__name__}: {problems} problem(s)") from None


def _summary(row: Any) -> OperationSummary:
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("status"), str):
        raise ProtocolError("an operations list row has no id or status")
    created, expires = row.get("created_at"), row.get("expires_at")
    return OperationSummary(
        row["id"], row["status"], str(created) if created else None, str(expires) if expires else None, row
    )


def _ticket(operation_id: str, name: str, data: Mapping[str, Any], api_url: str) -> DownloadTicket:
    encryption = data.get("encryption")
    if not isinstance(encryption, dict) or encryption.get("scheme") != ENCRYPTION_SCHEME:
        raise ProtocolError(f"artifact {name!r} uses an encryption scheme this client does not support")
    try:
        url = data.get("url")
        if isinstance(url, str) and url.startswith("/"):
            url = f"{api_url}{url}"
        if isinstance(url, str) and _is_api_url(url, api_url):
            url = None  # proxy mode: the API serves the bytes, with a signed request
        return DownloadTicket(
            operation_id=operation_id,
            name=name,
            size=int(data["size"]),
            content_type=str(data.get("content_type") or "application/octet-stream"),
            checksum=str(data["checksum"]),
            ciphertext_checksum=str(data["ciphertext_checksum"]),
            wrapped_key=dict(encryption["wrapped_key"]),
            url=url if isinstance(url, str) else None,
        )
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"the download answer for {name!r} is missing fields") from None


def _is_api_url(url: str, api_url: str) -> bool:
    """``url`` is under the API's base URL at a path boundary (``http://api.test`` is not a prefix of
    ``http://api.test.evil``: such a URL is fetched unsigned, like any presigned URL)."""
    base = api_url.rstrip("/")
    return url == base or url.startswith(base + "/")


def _is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts characters such as '²' that ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _range_of(response: httpx.Response) -> tuple[int, int | None]:
    """(where the body starts, the whole object's size if known): ``Content-Range`` for a 206, else 0 and
    ``Content-Length``."""
    if response.status_code != 206:
        length = response.headers.get("content-length", "")
        return 0, int(length) if _is_digits(length) else None
    unit, _, spec = response.headers.get("content-range", "").partition(" ")
    span, _, size = spec.partition("/")
    try:
        if unit.strip().lower() != "bytes":
            raise ValueError(unit)
        return int(span.split("-", 1)[0]), int(size) if _is_digits(size) else None
    except ValueError:
        raise ProtocolError("a 206 answer without a valid Content-Range") from None


def _body(response: httpx.Response, name: str) -> Iterator[bytes]:
    """The body's pieces; a connection lost midway keeps the partial file for a resume."""
    try:
        yield from response.iter_bytes()
    except httpx.TransportError as exc:
        raise Unavailable(
            f"download of {name!r} was interrupted ({type(exc).__name__}); run it again to resume",
            code="download_incomplete",
        ) from None
