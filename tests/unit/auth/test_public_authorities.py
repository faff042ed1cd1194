"""Pinned public authorities (review finding 6): required for a production API, set by `strongroom dev`.

A signature binds ``@authority``; a server that accepts whatever ``Host`` arrives would accept a request captured
for another deployment. These tests pin the start-up rule, the values `strongroom dev` signs under, and which
forwarded entry a trusted proxy's request is verified against.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from strongroom.dev.stack import _prepare_env, dev_authorities

pytestmark = pytest.mark.unit

BASE = {"REDIS_URL": "redis://127.0.0.1:1/0"}


def test_production_api_requires_public_authorities() -> None:
    settings = Settings.from_env({**BASE, "STRONGROOM_ENV": "production"})
    with pytest.raises(ConfigError) as info:
        settings.validate_api()
    assert info.value.variable == "STRONGROOM_PUBLIC_AUTHORITIES"
    assert "STRONGROOM_PUBLIC_AUTHORITIES" in info.value.detail


def test_pinned_or_development_is_accepted() -> None:
    production = {**BASE, "STRONGROOM_PUBLIC_AUTHORITIES": "API.example.com", "STRONGROOM_GRANTS_SOURCE": "open"}
    Settings.from_env(production).validate_api()
    Settings.from_env({**BASE, "STRONGROOM_ENV": "development"}).validate_api()


def test_only_the_api_needs_it() -> None:
    """Worker and beat share the environment but never verify a signature: their settings still load."""
    assert Settings.from_env({**BASE, "STRONGROOM_ENV": "production"}).public_authorities == ()


def test_authorities_are_lowercased() -> None:
    settings = Settings.from_env({**BASE, "STRONGROOM_PUBLIC_AUTHORITIES": "API.example.com, 127.0.0.1:8080"})
    assert settings.public_authorities == ("api.example.com", "127.0.0.1:8080")


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8080, ["127.0.0.1:8080", "localhost:8080"]),
        ("127.0.0.1", 80, ["127.0.0.1", "localhost"]),  # the default port is never part of @authority
        ("0.0.0.0", 9000, ["127.0.0.1:9000", "localhost:9000"]),
        ("::1", 8080, ["[::1]:8080", "localhost:8080"]),
        ("api.local", 8443, ["api.local:8443"]),
    ],
)
def test_dev_authorities(host: str, port: int, expected: list[str]) -> None:
    assert dev_authorities(host, port) == expected


def test_dev_sets_them_unless_configured(tmp_path: Path) -> None:
    args = argparse.Namespace(host="127.0.0.1", port=8123)
    env = _prepare_env(args, tmp_path, {})
    assert env["STRONGROOM_PUBLIC_AUTHORITIES"] == "127.0.0.1:8123,localhost:8123"
    settings = Settings.from_env({**env, **BASE})
    assert settings.public_authorities == ("127.0.0.1:8123", "localhost:8123")
    settings.validate_api()
    mine = _prepare_env(args, tmp_path, {"STRONGROOM_PUBLIC_AUTHORITIES": "dev.example:8123"})
    assert mine["STRONGROOM_PUBLIC_AUTHORITIES"] == "dev.example:8123"
