"""Pure helpers of the API: header parsing, problem mapping, request ids, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from api_service import errors
from api_service.errors import RangeNotSatisfiable
from api_service.http import ByteRange, parse_range, prefers_json
from api_service.middleware import request_id_from
from api_service.openapi import openapi_document
from shared.errors import NotGrantee, RateLimited

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=5-", ByteRange(5, 99)),
        ("bytes=90-500", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),
        ("bytes=9-3", None),  # invalid: ignored
        ("bytes=0-1,5-6", None),  # multi-range: ignored, whole object
        ("items=0-1", None),
        ("bytes=a-b", None),
        ("bytes=\u00b2-", None),  # '²' passes str.isdigit() but not int(): ignored, never a 500
        ("bytes=-\u00b2", None),
        ("bytes=0-\u00b2", None),
        ("bytes=\u0663-", None),  # Arabic-Indic 3: int() would take it, RFC 9110 does not
        ("bytes= 1-2", ByteRange(1, 2)),  # whitespace around the spec was always tolerated
        ("bytes=1 -2", None),
        ("bytes=90-" + "9" * 5000, ByteRange(90, 99)),  # past Python's 4300-digit int() limit
        ("bytes=-" + "9" * 5000, ByteRange(0, 99)),
        ("bytes=" + "0" * 5000 + "5-6", ByteRange(5, 6)),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-1", 0)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", True),
        ("application/json, */*;q=0.5", True),
        ("application/octet-stream, application/json;q=0.9", False),
        ("application/json;q=0", False),
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),
    ],
)
def test_prefers_json(accept: str | None, expected: bool) -> None:
    assert prefers_json(accept) is expected


def test_request_id_accepts_only_sane_values() -> None:
    assert request_id_from([(b"x-request-id", b"req-1.2:3_4")]) == "req-1.2:3_4"
    for hostile in (b"a b", b"x" * 129, b"\xff\xfe", b"a\r\nInjected: 1"):
        generated = request_id_from([(b"x-request-id", hostile)])
        assert generated != hostile.decode("latin-1") and len(generated) == 32


def _problem(handler: Any, exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    class _Request:
        class app:
            class state:
                metrics = None

        class state:
            request_id = "rid-1"

    response = asyncio.run(handler(_Request(), exc))
    return response.status_code, json.loads(response.body), dict(response.headers)


def test_problem_mapping_keeps_codes_and_hides_internals() -> None:
    status, body, headers = _problem(errors.strongroom_error, RateLimited("slow down", retry_after=7))
    assert status == 429 and body["code"] == "rate_limited" and headers["retry-after"] == "7"
    assert headers["content-type"] == "application/problem+json"
    status, body, _ = _problem(errors.strongroom_error, NotGrantee("nope"))
    assert (status, body["code"]) == (403, "not_grantee")
    status, body, _ = _problem(errors.unexpected_error, RuntimeError("secret 0xdeadbeef key material"))
    assert status == 500 and body["code"] == "internal_error" and "secret" not in json.dumps(body)
    assert "rid-1" in body["detail"]
    status, body, headers = _problem(errors.http_error, HTTPException(404, headers={"X-Kept": "1"}))
    assert (status, body["code"], headers["x-kept"]) == (404, "not_found", "1")


def test_validation_problem_never_echoes_input() -> None:
    class Body(BaseModel):
        n: int

    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"n": "my-secret-value"})
    status, body, _ = _problem(errors.validation_error, caught.value)
    assert status == 422 and body["code"] == "body_invalid" and "my-secret-value" not in json.dumps(body)


def test_openapi_document_is_valid_and_names_the_design_schemas() -> None:
    document = openapi_document()
    validate(document)  # OpenAPI 3.1 meta-schema
    schemas = document["components"]["schemas"]
    for name in ("GetOperationResponse", "OperationResult", "ArtifactCollection", "ArtifactMetadata", "Problem"):
        assert name in schemas
    assert document["openapi"].startswith("3.1")
    get_artifact = document["paths"]["/api/v1/operations/{operation_id}/artifacts/{name}"]["get"]
    assert {"200", "206", "307", "401", "403", "404", "416", "429", "503"} <= set(get_artifact["responses"])
    assert document["components"]["securitySchemes"]["erc8128"]["name"] == "Signature"
