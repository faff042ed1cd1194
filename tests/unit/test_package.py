"""``strongroom`` is the package users import: the SDK at the top, loaded only when used."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_the_sdk_is_importable_from_the_top() -> None:
    from strongroom import Client, Identity
    from strongroom.client import StrongroomClient, load_identity

    assert Client is StrongroomClient
    assert Identity.__module__ == "strongroom.client.identity"
    assert callable(load_identity)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import strongroom

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        strongroom.Nope  # noqa: B018


def test_importing_the_package_loads_no_http_or_crypto_library() -> None:
    code = "import sys, strongroom; print(sorted(m for m in ('httpx', 'coincurve', 'eth_account') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
