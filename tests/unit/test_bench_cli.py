"""Unit tests for bench/run.py's pure parts: task specs, options, percentiles, medians, and
the contract between run.py and bench/sql (every statement it runs is a file there, every
file there is run).

The scenarios themselves need a database and minutes of CPU; they are run by hand (see
bench/README.md), not here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "run.py"
BENCH_SQL = BENCH.parent / "sql"
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


# ------------------------------------------------------------------------------------------------
# bench/run.py <-> bench/sql


def sql_files() -> list[Path]:
    return sorted(BENCH_SQL.glob("*.sql"))


def run_py_tree() -> ast.Module:
    return ast.parse(BENCH.read_text(encoding="utf-8"), filename=str(BENCH))


def enclosing(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node -> the name of the outermost function or class it is in ('' at top level)."""
    owner: dict[ast.AST, str] = {}
    for top in tree.body:
        name = top.name if isinstance(top, ast.FunctionDef | ast.ClassDef) else ""
        for node in ast.walk(top):
            owner[node] = name
    return owner


def test_every_bench_sql_file_has_a_header_naming_it_when_read() -> None:
    assert sql_files(), f"no .sql file in {BENCH_SQL}"
    for path in sql_files():
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"-- {path.stem}: "), f"{path.name}: header must name the file"


def test_every_bench_sql_file_is_a_declared_query_when_loaded(bench: ModuleType) -> None:
    # Queries refuses to load when a file has no attribute or an attribute no file.
    q = bench.Queries("skivi_bench")
    for path in sql_files():
        rendered = getattr(q, path.stem).as_string(None)
        if "{schema}" in path.read_text(encoding="utf-8"):
            assert '"skivi_bench"' in rendered, path.name


def test_every_bench_sql_file_is_run_by_run_py_when_parsed() -> None:
    tree = run_py_tree()
    owner = enclosing(tree)
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and owner[node] != "Queries"}
    unused = sorted(path.stem for path in sql_files() if path.stem not in used)
    assert not unused, f"bench/sql files run.py never uses: {unused}"


def test_run_py_executes_only_bench_sql_statements_when_parsed() -> None:
    """Every execute() and scalar() in run.py runs a Queries attribute (a bench/sql file),
    and psycopg.sql objects are built only by the loader: no SQL text in Python."""
    tree = run_py_tree()
    owner = enclosing(tree)
    declared = {path.stem for path in sql_files()}
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"run.py:{node.lineno}"
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "sql" and owner[node] != "Queries"):
            problems.append(f"{where}: sql.{func.attr}() outside the Queries loader")
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called not in ("execute", "executemany", "scalar") or not node.args:
            continue
        query = node.args[1] if called == "scalar" else node.args[0]
        if isinstance(query, ast.Attribute) and query.attr in declared:
            continue
        if owner[node] == "scalar" and isinstance(query, ast.Name) and query.id == "query":
            continue  # scalar() runs the query its caller passed (checked at that call)
        problems.append(f"{where}: {called}() of {ast.unparse(query)}, not a bench/sql query")
    assert not problems, "\n".join(sorted(problems, key=lambda p: int(p.split(":")[1])))


# ------------------------------------------------------------------------------------------------
# bench/run.py runs without the test dependencies


def modules_only_the_tests_need() -> set[str]:
    """The top-level modules of the packages only the test extra installs (the optional
    runtime extras, such as the embedded server, may be there when the bench runs)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r)[0]).lower()  # type: ignore[index]
                for r in requirements}

    runtime_extras = set().union(*(names(v) for k, v in extras.items() if k != "test"))
    test_only = names(extras["test"]) - runtime_extras
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if any(re.sub(r"[-_.]+", "-", d).lower() in test_only for d in dists)}


def test_run_py_starts_when_no_test_dependency_is_importable() -> None:
    """Users run the bench from a checkout with only Skivi installed, and it imports the
    engine harness from tests/support: neither may need pytest or any other test package."""
    blocked = sorted(modules_only_the_tests_need())
    assert "pytest" in blocked and "hypothesis" in blocked
    code = (f"import runpy, sys\n"
            f"for name in {blocked!r}:\n"
            f"    sys.modules[name] = None  # import name: ImportError\n"
            f"sys.argv = [{str(BENCH)!r}, '--help']\n"
            f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: python bench/run.py" in done.stdout
