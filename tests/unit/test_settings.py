"""Settings: every bad value stops start-up with one line naming the variable; README documents every option."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings, options
from tests.helpers.config_table import render

ROOT = Path(__file__).resolve().parents[2]
BASE = {"REDIS_URL": "redis://127.0.0.1:6379/0"}

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_typed() -> None:
    s = Settings.from_env(BASE)
    assert s.api_port == 8080
    assert s.env == "production"
    assert s.resolved_log_format == "json"
    assert s.allowed_chain_ids == (1,)
    assert s.s3_endpoint_url is None


def test_development_defaults_to_console_logs() -> None:
    assert Settings.from_env({**BASE, "STRONGROOM_ENV": "development"}).resolved_log_format == "console"


def test_lists_and_numbers_are_parsed() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "STRONGROOM_ALLOWED_CHAIN_IDS": "1, 8453",
            "STRONGROOM_S3_CORS_ORIGINS": "http://a.test, http://b.test",
            "STRONGROOM_API_PORT": "9000",
        }
    )
    assert s.allowed_chain_ids == (1, 8453)
    assert s.s3_cors_origins == ("http://a.test", "http://b.test")
    assert s.api_port == 9000


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("STRONGROOM_API_PORT", "eighty", "integer"),
        ("STRONGROOM_API_PORT", "0", "at least 1"),
        ("STRONGROOM_ENV", "staging", "one of"),
        ("STRONGROOM_LOG_LEVEL", "LOUD", "one of"),
        ("REDIS_URL", "http://nope", "redis://"),
        ("STRONGROOM_S3_ENDPOINT_URL", "ftp://x", "http"),
        ("STRONGROOM_TRUSTED_PROXIES", "not-a-cidr", "IP network"),
        ("STRONGROOM_AGENTS", "{", "JSON"),
        ("STRONGROOM_PRESIGN_TTL", "9999999", "between"),
        ("STRONGROOM_ETH_RPC_TIMEOUT", "-1", "positive"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, variable: value})
    assert info.value.variable == variable
    message = str(info.value)
    assert message.startswith(variable)
    assert problem in message
    assert "\n" not in message


def test_missing_redis_url_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({})
    assert info.value.variable == "REDIS_URL"


def test_repr_hides_secrets() -> None:
    s = Settings.from_env({**BASE, "AWS_SECRET_ACCESS_KEY": "hunter2-very-secret", "STRONGROOM_KEYRING": "{}"})
    assert "hunter2" not in repr(s)


def test_readme_table_lists_every_option() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\|\s*`([A-Z0-9_]+)`\s*\|", readme, re.MULTILINE))
    missing = [o.name for o in options() if o.name not in documented]
    assert not missing, f"README.md configuration table lacks {missing}: run `make docs`"
    assert render() in readme, "README.md configuration table is stale: run `make docs`"


@pytest.mark.parametrize("command", ["api", "worker", "beat", "init"])
def test_process_with_bad_value_exits_with_one_line(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_", "REDIS_"))}
    env.update(BASE, STRONGROOM_API_PORT="eighty")
    result = subprocess.run(
        [sys.executable, "-m", "strongroom", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STRONGROOM_API_PORT" in lines[0]
    assert "Traceback" not in result.stderr


def test_every_option_is_parsed_to_its_declared_type() -> None:
    """A regression: STRONGROOM_EMBEDDED_MAX_SIZE stayed a string and broke the size comparison in legacy modes."""
    import dataclasses

    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_EMBEDDED_MAX_SIZE": "2048"})
    assert settings.embedded_max_size == 2048
    expected = {"int": int, "float": float, "str": str, "tuple[str, ...]": tuple, "tuple[int, ...]": tuple}
    for field in dataclasses.fields(Settings):
        kind = expected.get(str(field.type))
        if kind is not None:
            assert isinstance(getattr(settings, field.name), kind), field.name
    with pytest.raises(ConfigError, match="STRONGROOM_EMBEDDED_MAX_SIZE"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_EMBEDDED_MAX_SIZE": "big"})
