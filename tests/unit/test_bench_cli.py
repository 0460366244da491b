"""Unit tests for bench/run.py's pure parts: task specs, options, percentiles, medians.

The scenarios themselves need a database and minutes of CPU; they are run by hand (see
bench/README.md), not here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
URL = ["--database-url", "postgresql://u:secret@db.invalid:5432/x"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("skivi_bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("spec", "expected"), [
    ("noop", ("noop", 0.0)),
    ("sleep:5", ("sleep", 5.0)),
    ("asleep:0.5", ("asleep", 0.5)),
    ("cpu:20", ("cpu", 20.0)),
])
def test_parse_task_accepts_each_kind(bench: ModuleType, spec: str,
                                      expected: tuple[str, float]) -> None:
    assert bench.parse_task(spec) == expected


@pytest.mark.parametrize("spec", ["", "noop:1", "sleep", "sleep:-1", "cpu:x", "fail"])
def test_parse_task_rejects_malformed_specs(bench: ModuleType, spec: str) -> None:
    with pytest.raises(ValueError, match="--task"):
        bench.parse_task(spec)


def test_options_take_per_scenario_defaults(bench: ModuleType) -> None:
    assert bench.parse_options(["drain", *URL]).jobs == 20_000
    assert bench.parse_options(["enqueue", *URL]).jobs == 5_000
    steady = bench.parse_options(["steady", *URL])
    assert (steady.duration, steady.rate) == (10.0, 200.0)
    assert bench.parse_options(["enqueue", *URL]).duration is None


def test_options_hide_the_password_in_the_url_shown(bench: ModuleType) -> None:
    opts = bench.parse_options(["drain", *URL])
    assert "secret" not in opts.url_shown
    assert opts.url_shown == "postgresql://u:***@db.invalid:5432/x"
    assert opts.url == URL[1]


@pytest.mark.parametrize("argv", [
    ["--jobs", "0"], ["--rate", "-1"], ["--task", "nap:3"], ["--schema", "Bad-Name"],
    ["--repeat", "0"], ["--payload-bytes", "-1"],
])
def test_options_reject_bad_values(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_options(["drain", *URL, *argv])


def test_percentile_is_nearest_rank(bench: ModuleType) -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile(values, 100) == 100.0
    assert bench.percentile([7.0], 95) == 7.0
    assert bench.percentile([], 50) is None


def test_medians_skip_missing_values(bench: ModuleType) -> None:
    runs = [{"drain": {"jobs_per_s": 10.0}}, {"drain": {"jobs_per_s": None}},
            {"drain": {"jobs_per_s": 30.0}}, {}]
    assert bench.medians(runs, ["drain.jobs_per_s", "floor.jobs_per_s"]) == {
        "drain.jobs_per_s": 20.0, "floor.jobs_per_s": None}
