"""Readers of the Grafana dashboard and the Prometheus alert rules in grafana/ (the contract
tests check their metric names; the Prometheus test runs every expression)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["ALERT_RULES", "DASHBOARD", "dashboard_expressions", "rule_expressions"]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "dashboards" / "skivi.json"
ALERT_RULES = REPO / "grafana" / "alerts" / "skivi-rules.yml"


def dashboard_expressions() -> list[str]:
    """The PromQL of every panel target (rows included) and of every query variable."""
    board = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or []:
                found.append(target["expr"])
            walk(panel.get("panels") or [])

    walk(board["panels"])
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def rule_expressions(text: str) -> list[str]:
    """The ``expr:`` values of a Prometheus rules file: plain one-line scalars and ``|`` /
    ``>`` block scalars (the two forms the rules file uses). The Prometheus test checks this
    reader against Prometheus's own parse of the file."""
    lines = text.splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?expr:\s*(.*?)\s*$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2)
        if value and value[0] in "|>":
            block = []
            for following in lines[i + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following.strip())
            found.append(" ".join(part for part in block if part))
        elif value[:1] in ("'", '"'):
            found.append(value[1:-1])
        else:
            found.append(value)
    return found
