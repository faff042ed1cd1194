"""The Kubernetes types inside the chart's values.schema.json, copied from Kubernetes' own (strict) JSON schemas.

Values such as ``affinity``, ``tolerations``, ``extraVolumes`` or ``networkPolicy.extraEgress`` are passed to the
manifests as they are, so the schema checks them against Kubernetes' definitions, taken from the schemas
``kubernetes-validate`` bundles for the oldest Kubernetes version the chart supports (strict: unknown fields are
errors). Descriptions and ``x-kubernetes-*`` annotations are dropped; ``$ref`` targets are rewritten to the
schema's own ``definitions`` so helm needs nothing outside the chart.

``python -m tests.helpers.chart_schema`` rewrites the ``io.k8s.*`` definitions in values.schema.json; a unit test
fails when they differ from what this produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "charts" / "strongroom" / "values.schema.json"
KUBERNETES_VERSION = "1.30.0"  # the oldest version the chart supports (Chart.yaml kubeVersion; test_chart_features)
ROOTS = (
    "io.k8s.api.core.v1.Affinity",
    "io.k8s.api.core.v1.Toleration",
    "io.k8s.api.core.v1.TopologySpreadConstraint",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.EnvFromSource",
    "io.k8s.api.core.v1.Volume",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.SELinuxOptions",
    "io.k8s.api.networking.v1.NetworkPolicyPeer",
    "io.k8s.api.networking.v1.NetworkPolicyEgressRule",
    "io.k8s.api.networking.v1.IngressTLS",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
)
_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _definitions_file() -> Path:
    package = Path(kubernetes_validate.__file__).parent
    return package / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json"


def _clean(node: Any, needed: set[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" or key.startswith("x-kubernetes-"):
                continue
            prefix = next((p for p in _PREFIXES if isinstance(value, str) and value.startswith(p)), None)
            if key == "$ref" and prefix is not None:
                name = value[len(prefix) :]
                needed.add(name)
                out[key] = f"#/definitions/{name}"
                continue
            out[key] = _clean(value, needed)
        return out
    if isinstance(node, list):
        return [_clean(item, needed) for item in node]
    return node


def kubernetes_definitions() -> dict[str, Any]:
    """The ROOTS and everything they reference, sorted by name."""
    source = json.loads(_definitions_file().read_text())["$defs"]
    result: dict[str, Any] = {}
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name in result:
            continue
        needed: set[str] = set()
        result[name] = _clean(source[name], needed)
        pending.extend(sorted(needed - result.keys()))
    return dict(sorted(result.items()))


def with_kubernetes_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    own = {k: v for k, v in schema.get("definitions", {}).items() if not k.startswith("io.k8s.")}
    return {**schema, "definitions": {**own, **kubernetes_definitions()}}


def dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main() -> None:
    SCHEMA.write_text(dump(with_kubernetes_definitions(json.loads(SCHEMA.read_text()))))
    print(f"{SCHEMA.relative_to(ROOT)}: Kubernetes {KUBERNETES_VERSION} definitions written")


if __name__ == "__main__":
    main()
