"""Contracts between files (STYLE.md §8.5): the dashboard and the alert rules use only
metrics that skivi/metrics.py declares and exports; every event type is catalogued; every
SQL file is a named query; test modules import from tests/support, never from each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from skivi import events, metrics
from skivi.db.queries import STATEMENTS, Queries
from skivi.events import EventKind
from tests.support.grafana import ALERT_RULES, dashboard_expressions, rule_expressions

METRIC_NAME = re.compile(r"\bskivi_[a-z_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expression: str) -> set[str]:
    """The skivi_ metric names in a PromQL expression, histogram series mapped to their
    histogram (``skivi_x_bucket`` -> ``skivi_x``)."""
    names = set()
    for name in METRIC_NAME.findall(expression):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            stem = name.removesuffix(suffix)
            if stem != name and metrics.METRICS.get(stem, ("",))[0] == "histogram":
                base = stem
        names.add(base)
    return names


def test_dashboard_uses_only_catalogued_metrics_when_parsed() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    used = set().union(*(metric_names(e) for e in expressions))
    assert used - set(metrics.METRICS) == set()
    # Every metric is on the dashboard somewhere (build_info through the job variable).
    assert set(metrics.METRICS) - used == set()


def test_alert_rules_use_only_catalogued_metrics_when_parsed() -> None:
    expressions = rule_expressions(ALERT_RULES.read_text())
    assert len(expressions) == ALERT_RULES.read_text().count("- alert:")
    used = set().union(*(metric_names(e) for e in expressions))
    assert used
    assert used - set(metrics.METRICS) == set()


def test_rule_reader_reads_block_and_plain_scalars_when_given_both() -> None:
    text = ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n"
            "        for: 1m\n      - alert: B\n        expr: |\n          a\n          > 1\n"
            "        labels: {}\n      - record: c\n        expr: \"rate(x[1m])\"\n")
    assert rule_expressions(text) == ["up == 0", "a > 1", "rate(x[1m])"]


def test_histogram_suffixes_map_to_their_histogram_when_named_in_promql() -> None:
    assert metric_names("rate(skivi_job_run_seconds_bucket[5m]) / skivi_jobs_total") == {
        "skivi_job_run_seconds", "skivi_jobs_total"}
    # Not a histogram: the suffix stays (and so is reported as unknown).
    assert metric_names("skivi_jobs_in_flight_count") == {"skivi_jobs_in_flight_count"}


def test_metrics_catalogue_matches_what_the_registry_exports_when_created() -> None:
    registry_metrics = metrics.EngineMetrics("0.0.0", emitter=events.Emitter())
    exported: dict[str, str] = {}
    for family in registry_metrics.registry.collect():
        if family.name.startswith("process_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert exported == {name: kind for name, (kind, _) in metrics.METRICS.items()}
    doc = metrics.__doc__ or ""
    for name in metrics.METRICS:
        assert re.search(rf"^{name}\s", doc, re.MULTILINE), f"{name} missing from the catalogue"


@pytest.mark.parametrize("kind", list(EventKind))
def test_event_kind_is_catalogued_when_declared(kind: EventKind) -> None:
    doc = events.__doc__ or ""
    assert f"``{kind.value}``" in doc


def test_catalogue_lists_only_declared_kinds_when_read() -> None:
    doc = events.__doc__ or ""
    table = doc.split("Catalogue", 1)[1].split("Every finished attempt", 1)[0]
    listed = set(re.findall(r"^``([a-z]+/[a-z-]+)``", table, re.MULTILINE))
    assert listed == {k.value for k in EventKind}


def test_every_sql_file_is_a_named_query_when_loaded() -> None:
    # Queries refuses to load when a file has no declaration or a declaration no file, or
    # when a declaration's parameters are not its file's placeholders.
    assert Queries("skivi").texts.keys() == STATEMENTS.keys()


def test_test_modules_import_no_other_test_module_when_parsed() -> None:
    """What tests share lives in tests/support (fixtures in conftest.py files): a test that
    imports another drags in its fixtures and module-level set-up, and couples the two."""
    tests = Path(__file__).resolve().parents[1]
    problems = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            problems += [f"{path.relative_to(tests.parent)}:{node.lineno}: imports {name}"
                         for name in names
                         if name.startswith("tests.") and not name.startswith("tests.support")]
    assert problems == []


def test_dashboard_marks_no_data_safe_when_its_templates_are_read() -> None:
    """Every value the dashboard shows is escaped by Jinja2's autoescape: no template turns
    it off or marks a value safe, and no module builds Markup."""
    package = Path(__file__).resolve().parents[2] / "skivi" / "dashboard"
    templates = sorted((package / "templates").glob("*.html"))
    assert templates
    for path in templates:
        text = re.sub(r"\s+", "", path.read_text(encoding="utf-8"))
        assert "|safe" not in text, path.name
        assert "autoescapefalse" not in text, path.name
    for path in sorted(package.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert "Markup" not in source, path.name
        assert "autoescape=False" not in source, path.name
