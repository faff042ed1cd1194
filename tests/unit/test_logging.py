"""Logging: secrets passed to a logger by mistake never reach the output; production logs are JSON."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import REDACTED, configure, get_logger

pytestmark = pytest.mark.unit

PRIVATE_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
SIGNATURE = "0x" + "ab" * 65
DATA_KEY = base64.b64encode(bytes(range(32))).decode()
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PRESIGNED = (
    "https://s3.test/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Fus-east-1"
    "&X-Amz-Signature=" + "f" * 64
)
HTTP_SIGNATURE = "sig1=:" + base64.b64encode(b"x" * 65).decode() + ":"
SECRETS = (PRIVATE_KEY, SIGNATURE, DATA_KEY, AWS_SECRET, "f" * 64, "AKIDEXAMPLE", base64.b64encode(b"x" * 65).decode())


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    yield capsys
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers[:] = []


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_secret_named_fields_are_masked(captured: pytest.CaptureFixture[str]) -> None:
    configure("json", "DEBUG", process="test")  # here, once capsys has replaced sys.stderr
    get_logger("t").info(
        "oops",
        private_key=PRIVATE_KEY,
        signature=SIGNATURE,
        aws_secret_access_key=AWS_SECRET,
        keyring={"primary": "k1", "keys": {"k1": DATA_KEY}},
        data_key=DATA_KEY,
        operation_id="privacy-audit_abc",
    )
    (line,) = _lines(captured)
    for name in ("private_key", "signature", "aws_secret_access_key", "keyring", "data_key"):
        assert line[name] == REDACTED
    assert line["operation_id"] == "privacy-audit_abc"


def test_secret_looking_values_are_masked_anywhere(captured: pytest.CaptureFixture[str]) -> None:
    configure("json", "DEBUG", process="test")  # here, once capsys has replaced sys.stderr
    log = get_logger("t")
    log.info(f"signed with {PRIVATE_KEY}", detail=f"sig={SIGNATURE}", url=PRESIGNED, header=HTTP_SIGNATURE)
    log.info("wrapped", items=[DATA_KEY, {"nested": "dk " + DATA_KEY, "credentials": {"secret": AWS_SECRET}}])
    out = captured.readouterr().err
    for secret in SECRETS:
        assert secret not in out
    assert REDACTED in out


def test_stdlib_loggers_are_redacted_too(captured: pytest.CaptureFixture[str]) -> None:
    configure("json", "DEBUG", process="test")  # here, once capsys has replaced sys.stderr
    logging.getLogger("botocore.fake").warning("presigned %s", PRESIGNED)
    logging.getLogger("uvicorn.error").error("key %s", PRIVATE_KEY)
    out = captured.readouterr().err
    assert PRIVATE_KEY not in out and "f" * 64 not in out


def test_exception_text_is_redacted(captured: pytest.CaptureFixture[str]) -> None:
    configure("json", "DEBUG", process="test")  # here, once capsys has replaced sys.stderr
    try:
        raise ValueError(f"bad key {PRIVATE_KEY}")
    except ValueError:
        get_logger("t").exception("failed")
    out = captured.readouterr().err
    assert PRIVATE_KEY not in out
    assert "ValueError" in out


def test_context_ids_are_bound_and_kept(captured: pytest.CaptureFixture[str]) -> None:
    configure("json", "DEBUG", process="test")  # here, once capsys has replaced sys.stderr
    structlog.contextvars.bind_contextvars(request_id="req-123", task_id="task-9")
    get_logger("t").info("hello")
    (line,) = _lines(captured)
    assert line["request_id"] == "req-123"
    assert line["task_id"] == "task-9"
    assert line["process"] == "test"
    assert line["level"] == "info"


def test_production_process_logs_json_without_secrets() -> None:
    """A real `strongroom init` in production with a secret in its environment: JSON lines, no secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_", "REDIS_"))}
    env.update(
        REDIS_URL="redis://127.0.0.1:1/0",
        STRONGROOM_ENV="production",
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        STRONGROOM_S3_ENDPOINT_URL="http://127.0.0.1:1",
    )
    code = (
        "from shared.settings import Settings; from shared.logging import configure, get_logger;"
        "s = Settings.from_env(); configure(s.resolved_log_format, s.log_level, process='api');"
        "get_logger('x').info('started', settings=repr(s), aws_secret_access_key=s.s3_secret_access_key,"
        f" note='key {PRIVATE_KEY}')"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if x.strip()]
    assert line["event"] == "started"
    assert AWS_SECRET not in result.stderr and PRIVATE_KEY not in result.stderr


def test_configured_secrets_are_masked_even_in_free_text(captured: pytest.CaptureFixture[str]) -> None:
    """A 40-character AWS secret has no telling shape: the value itself is registered when settings load."""
    from shared.settings import Settings

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEYq"
    Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "AWS_SECRET_ACCESS_KEY": secret})
    configure("json", "INFO")
    get_logger("t").info(f"connecting with {secret} to s3", detail=[f"x{secret}y"])
    out = captured.readouterr().err
    assert "connecting with" in out
    assert secret not in out


def test_a_thread_without_the_context_still_names_its_process(captured: pytest.CaptureFixture[str]) -> None:
    """Celery's thread pool runs tasks in threads that do not copy the context: their lines are this process's."""
    configure("json", "DEBUG", process="test")
    worker = threading.Thread(target=lambda: get_logger("t").info("from a pool thread"))
    worker.start()
    worker.join()
    logging.getLogger("celery.thread").warning("a stdlib line from the main thread")
    assert [line["process"] for line in _lines(captured)] == ["test", "test"]
