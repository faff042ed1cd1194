"""The Helm chart's values.yaml obeys values.schema.json, and the schema rejects unsafe or malformed values.

Rendering needs the `helm` binary: ``test_helm_lint_and_template`` runs when `helm` is on PATH (or
STRONGROOM_HELM points at one) and is skipped otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "strongroom"


def load() -> tuple[dict[str, Any], dict[str, Any]]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    return values, schema


@pytest.mark.unit
def test_default_values_match_schema() -> None:
    values, schema = load()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)


@pytest.mark.unit
def test_secure_defaults() -> None:
    values, _ = load()
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["allowPrivilegeEscalation"] is False
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("podSecurityContext", "runAsNonRoot"), False),
        (("config", "STRONGROOM_KEYRING"), "{}"),  # secrets belong in the Secret, never in plain config
        (("config", "lowercase"), "x"),
        (("worker", "pool"), "gevent"),
        (("api", "replicas"), 0),
        (("redisUrl",), "http://redis"),
        (("beat", "replicas"), 2),  # beat is always exactly one
        (("unknownTopLevel",), True),
    ],
)
def test_schema_rejects(path: tuple[str, ...], bad: object) -> None:
    values, schema = load()
    changed = copy.deepcopy(values)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(changed, schema)


@pytest.mark.unit
def test_templates_never_template_beat_replicas() -> None:
    beat = (CHART / "templates" / "beat.yaml").read_text()
    assert "replicas: 1" in beat and "type: Recreate" in beat and ".Values.beat.replicas" not in beat


@pytest.mark.integration
def test_helm_lint_and_template() -> None:
    helm = os.environ.get("STRONGROOM_HELM") or shutil.which("helm")
    if not helm:
        pytest.skip("helm not installed (set STRONGROOM_HELM to a helm binary)")
    overrides = ["--set", "secret.keyring={}", "--set", "redis.enabled=true", "--set", "networkPolicy.enabled=true"]
    subprocess.run([helm, "lint", "--strict", str(CHART), *overrides], check=True, capture_output=True)
    rendered = subprocess.run(
        [helm, "template", "sr", str(CHART), *overrides], check=True, capture_output=True, text=True
    ).stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered) if doc]
    for kind in ("Deployment", "Service", "Job", "StatefulSet", "Secret", "ServiceAccount", "PodDisruptionBudget"):
        assert kind in kinds
    failing = subprocess.run([helm, "template", "sr", str(CHART)], capture_output=True, text=True)
    assert failing.returncode != 0 and "secret.keyring" in failing.stderr
