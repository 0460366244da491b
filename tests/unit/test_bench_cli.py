"""Unit tests for bench/run.py's pure parts: task specs, options, percentiles, medians, and
the contract between run.py and bench/sql (every statement it runs is a file there, every
file there is run).

The scenarios themselves need a database and minutes of CPU; they are run by hand (see
bench/README.md), apart from one short drain in tests/engine/test_bench.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
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


def test_options_take_engines_when_the_scenario_drains(bench: ModuleType) -> None:
    assert bench.parse_options(["drain", *URL]).engines == 1
    assert bench.parse_options(["drain", *URL, "--engines", "3"]).engines == 3
    assert bench.parse_options(["backlog", *URL, "--engines", "2"]).engines == 2


@pytest.mark.parametrize("argv", [["drain", "--engines", "0"], ["steady", "--engines", "2"],
                                  ["enqueue", "--engines", "2"]])
def test_options_reject_engines_when_out_of_place(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_options([*argv, *URL])


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


# ------------------------------------------------------------------------------------------------
# CPU per job: the /proc readers and the figures made from the engines' samples


def test_tree_cpu_keeps_the_time_of_a_child_that_ended_when_reaped(bench: ModuleType) -> None:
    before = bench.tree_cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.2\n"
                              "while time.process_time() < end: pass\ninput()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.pid in bench.child_pids(os.getpid())
    finally:
        child.communicate(b"\n", timeout=30)
    assert child.pid not in bench.child_pids(os.getpid())
    # Its CPU (0.2 s and its start-up) moved to this process's reaped time.
    assert bench.tree_cpu(os.getpid()) - before >= 0.2
    assert bench.own_cpu(os.getpid()) > 0
    assert bench.own_cpu(2**22 + 1) == 0.0  # above the kernel's pid_max: no such process


def sample(t: float, parent: float, children: float, server: float | None = None,
           backends: dict[str, float] | None = None,
           started: dict[str, float] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"t": t, "parent_s": parent, "children_s": children}
    if server is not None:
        out["server_s"] = server
        out["backends_s"] = backends or {}
    if started is not None:
        out["backends_started_s"] = started
    return out


def report(go: dict[str, object] | None, end: dict[str, object] | None, *, started: float,
           completed: int, last: float) -> dict[str, object]:
    return {"started_at": started, "done_at": None, "last_completion_at": last,
            "stats": {"completed": completed, "claimed": completed}, "processes": 2,
            "concurrency": 16, "cpu": {"go": go, "end": end}}


def test_cpu_figures_sum_the_engines_and_span_the_server_when_two_ran(
        bench: ModuleType) -> None:
    local = bench.ServerCpu(pid=1, statements=False, how="local")
    reports = [
        report(sample(10.0, 1.0, 0.5, server=100.0, backends={"7": 1.0}),
               sample(11.0, 1.5, 0.7, server=101.5, backends={"7": 1.4, "8": 0.1},
                      started={"8": 0.02}),
               started=9.9, completed=600, last=10.9),
        report(sample(10.2, 2.0, 0.1, server=100.1, backends={"9": 0.0}),
               sample(11.5, 2.3, 0.2, server=102.0, backends={"9": 0.5}),
               started=9.8, completed=400, last=11.4),
    ]
    drain = bench.drain_result(reports, [0, 0], 1000, 9.0, False, local, {})
    assert drain["seconds"] == pytest.approx(11.4 - 9.8)  # first start to last job done
    assert drain["stats"]["completed"] == 1000 and drain["processes"] == 4
    assert drain["cpu_window_s"] == pytest.approx(1.5)  # first go to last end
    assert drain["parent_cpu_us_per_job"] == pytest.approx((0.5 + 0.3) / 1000 * 1e6)
    assert drain["children_cpu_us_per_job"] == pytest.approx((0.2 + 0.1) / 1000 * 1e6)
    assert drain["worker_cpu_us_per_job"] == pytest.approx(1100.0)
    # The server: one counter, from the first go (100.0) to the last end (102.0), less the
    # start-up of the backend whose connection opened in the window ("8": 0.02 s).
    assert drain["pg_cpu_us_per_job"] == pytest.approx((2.0 - 0.02) / 1000 * 1e6)
    # Own backends: each engine's in its own window; "8" from when its connection was ready.
    assert drain["pg_cpu_us_per_job_engine_backends"] == pytest.approx(
        (0.4 + 0.08 + 0.5) / 1000 * 1e6)
    assert [e["stats"]["completed"] for e in drain["engines"]] == [600, 400]


def test_gated_drain_is_timed_and_its_server_read_from_go(bench: ModuleType) -> None:
    # Gated engines (the default) open their windows after GO without reading the server:
    # the bench's own read at GO (100.4) is the server's start, and the clock runs from GO
    # (10.1), not from the first engine's start (9.8).
    local = bench.ServerCpu(pid=1, statements=False, how="local")
    reports = [
        report(sample(10.1, 1.0, 0.5),
               sample(11.0, 1.5, 0.7, server=101.5, backends={"7": 1.4}),
               started=9.8, completed=600, last=10.9),
        report(sample(10.2, 2.0, 0.1),
               sample(11.5, 2.3, 0.2, server=102.0, backends={"9": 0.5}),
               started=9.9, completed=400, last=11.4),
    ]
    drain = bench.drain_result(reports, [0, 0], 1000, 9.0, False, local, {},
                               {"t": 10.1, "server_s": 100.4})
    assert drain["go_at"] == 10.1
    assert drain["seconds"] == pytest.approx(11.4 - 10.1)
    assert drain["pg_cpu_us_per_job"] == pytest.approx((102.0 - 100.4) / 1000 * 1e6)


def test_cpu_figures_use_statements_when_the_server_is_not_local(bench: ModuleType) -> None:
    remote = bench.ServerCpu(pid=None, statements=True, how="remote")
    reports = [report(sample(10.0, 1.0, 0.5), sample(11.0, 1.5, 0.7), started=9.9,
                      completed=1000, last=10.9)]
    drain = bench.drain_result(reports, [0], 1000, 9.0, False, remote,
                               {"go": 500.0, "end": 530.0})
    assert drain["pg_cpu_source"] == "pg_stat_statements"
    assert drain["pg_cpu_us_per_job"] is None
    assert drain["pg_exec_us_per_job"] == pytest.approx(30.0)  # 30 ms over 1000 jobs


def test_cpu_figures_are_missing_when_an_engine_never_opened_its_window(
        bench: ModuleType) -> None:
    local = bench.ServerCpu(pid=1, statements=False, how="local")
    reports = [report(sample(10.0, 1.0, 0.5, server=1.0), sample(11.0, 1.5, 0.7, server=2.0),
                      started=9.9, completed=1000, last=10.9),
               report(None, None, started=9.9, completed=0, last=0.0)]
    drain = bench.drain_result(reports, [0, 1], 1000, 9.0, False, local, {})
    assert drain["exit_code"] == 1
    assert drain["worker_cpu_us_per_job"] is None and drain["pg_cpu_us_per_job"] is None
    assert "cpu_note" in drain


def test_drain_summary_shows_the_cpu_columns_when_printed(
        bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    drain = {"seconds": 1.0, "jobs_per_s": 1000.0, "pg_cpu_source": "proc",
             "pg_cpu_us_per_job": 25.04, "pg_cpu_us_per_job_engine_backends": 24.0,
             "worker_cpu_us_per_job": 16.0, "parent_cpu_us_per_job": 10.0,
             "children_cpu_us_per_job": 6.0, "engines": [{}]}
    runs = [{"run": 1, "verified": True, "enqueue": {"jobs_per_s": 5.0}, "drain": drain}]
    med = bench.print_drain_summary("summary", runs)
    out = capsys.readouterr().out
    assert "PG us/job" in out and "own backends" in out
    assert "25.0" in out and "24.0" in out and "16.0 (10.0 + 6.0)" in out
    assert med["drain.pg_cpu_us_per_job"] == 25.04
