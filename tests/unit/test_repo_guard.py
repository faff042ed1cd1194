"""Tests read nothing beside the checkout: a user's clone has nothing there."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.repo_guard import OutsideRepositoryError, forbidden

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


def test_a_sibling_of_the_checkout_is_forbidden() -> None:
    root, temp = Path("/work/main"), Path("/tmp")  # a checkout outside the temp dir, as on a developer's machine
    assert forbidden(root.parent / "elsewhere" / "vectors" / "x.json", root, temp)
    assert forbidden(str(root / ".." / "elsewhere"), root, temp)


def test_the_checkout_hidden_siblings_and_other_places_are_allowed() -> None:
    assert not forbidden(ROOT / "tests" / "vectors" / "README.md", ROOT)
    assert not forbidden(ROOT.parent / ".cache" / "pip", ROOT)
    assert not forbidden("/tmp/anything", Path("/work/main"))


def test_a_checkout_in_the_temp_dir_leaves_other_temp_files_alone() -> None:
    """CI may clone into /tmp, where every test's tmp_path is a sibling of the checkout."""
    root, temp = Path("/tmp/clone"), Path("/tmp")
    assert not forbidden("/tmp/pytest-of-root/pytest-0/test_x/file", root, temp)
    assert forbidden("/work/elsewhere/vectors", Path("/work/main"), temp)


def test_a_checkout_in_the_filesystem_root_has_no_siblings_to_guard() -> None:
    assert not forbidden("/elsewhere/vectors", Path("/repo"))


def test_the_guard_is_active_in_this_session(tmp_path: Path) -> None:
    if ROOT.parent == Path(ROOT.anchor):
        pytest.skip("a checkout directly under / has no siblings to guard")
    temp = Path(os.path.realpath(tempfile.gettempdir()))
    if ROOT.parent == temp or temp in ROOT.parent.parents:
        pytest.skip("a checkout in the temporary directory: its siblings are temporary files")
    sibling = ROOT.parent / "strongroom-guard-probe-does-not-exist"
    with pytest.raises(OutsideRepositoryError):
        sibling.open()


def test_installing_before_the_temp_dir_is_known_does_not_hang() -> None:
    """``pytest -s`` installs the guard before anything asked for the temp dir; the first ``gettempdir()`` then
    opens probe files under tempfile's lock, which a hook calling ``gettempdir()`` again waited on forever."""
    script = (
        "import sys, tempfile; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from tests.helpers import repo_guard; tempfile.tempdir = None; "
        "repo_guard.install(Path(sys.argv[1])); print(tempfile.gettempdir())"
    )
    done = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
