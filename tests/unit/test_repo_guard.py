"""Tests read nothing beside the checkout: a user's clone has no ``../shared``."""

from pathlib import Path

import pytest

from tests.helpers.repo_guard import OutsideRepositoryError, forbidden

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


def test_a_sibling_of_the_checkout_is_forbidden() -> None:
    assert forbidden(ROOT.parent / "shared" / "vectors" / "x.json", ROOT)
    assert forbidden(str(ROOT / ".." / "shared"), ROOT)


def test_the_checkout_hidden_siblings_and_other_places_are_allowed() -> None:
    assert not forbidden(ROOT / "tests" / "vectors" / "README.md", ROOT)
    assert not forbidden(ROOT.parent / ".cache" / "pip", ROOT)
    assert not forbidden("/tmp/anything", Path("/work/main"))


def test_a_checkout_in_the_filesystem_root_has_no_siblings_to_guard() -> None:
    assert not forbidden("/shared/vectors", Path("/repo"))


def test_the_guard_is_active_in_this_session(tmp_path: Path) -> None:
    if ROOT.parent == Path(ROOT.anchor):
        pytest.skip("a checkout directly under / has no siblings to guard")
    sibling = ROOT.parent / "strongroom-guard-probe-does-not-exist"
    with pytest.raises(OutsideRepositoryError):
        sibling.open()
