"""Readers of the deployment files in deploy/ (tests/deploy checks them; the role tests run
KEDA's query as the role it names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEPLOY", "K8S", "documents", "k8s_object", "k8s_objects", "keda_query"]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in documents(p)]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_objects()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, got {len(found)}"
    return found[0]


def keda_query() -> str:
    """The SQL of the KEDA ScaledObject's PostgreSQL trigger."""
    trigger = k8s_object("ScaledObject")["spec"]["triggers"][0]
    query: str = trigger["metadata"]["query"]
    return query
