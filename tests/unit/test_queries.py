"""The named queries' declarations (skivi.db.queries): each one checked against its file's
placeholders at load, and every call's parameters against the declaration."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from psycopg.rows import scalar_row

from skivi.db import queries
from skivi.db.queries import STATEMENTS, Queries, check_statements, declare, placeholders

ROOT = Path(__file__).resolve().parents[2]
QUERY_FILES = ROOT / "skivi" / "sql" / "queries"
CALLS = {"execute", "execute_async", "run", "run_async"}


def _texts() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in QUERY_FILES.glob("*.sql")}


def test_every_declaration_has_its_files_placeholders_when_loaded() -> None:
    check_statements(STATEMENTS, _texts())
    loaded = Queries("skivi")
    assert loaded.texts.keys() == STATEMENTS.keys()
    assert loaded.texts == queries.for_schema("skivi").texts
    assert b'"skivi".claim_jobs(' in loaded.texts["job_claim"]


def test_load_fails_when_a_file_has_a_placeholder_the_declaration_lacks() -> None:
    texts = _texts()
    texts["job_queue_prune"] += "\n-- and %(tenant)s"
    with pytest.raises(RuntimeError, match=r"job_queue_prune: .*not declared \['tenant'\]"):
        check_statements(STATEMENTS, texts)


def test_load_fails_when_a_declared_parameter_is_not_in_the_file() -> None:
    texts = _texts()
    texts["job_queue_prune"] = texts["job_queue_prune"].replace("%(batch)s", "1000")
    with pytest.raises(RuntimeError, match=r"job_queue_prune: declared parameters not in "
                                           r"job_queue_prune.sql \['batch'\]"):
        check_statements(STATEMENTS, texts)


def test_load_fails_when_a_file_or_a_declaration_is_alone() -> None:
    texts = _texts()
    texts["job_frobnicate"] = "select 1"
    del texts["job_stats"]
    with pytest.raises(RuntimeError, match=r"missing files \['job_stats'\], undeclared files "
                                           r"\['job_frobnicate'\]"):
        check_statements(STATEMENTS, texts)


def test_placeholders_are_psycopgs_when_read() -> None:
    text = "-- %(documented)s\nselect 100%% where a = %(a)s and b = %(b)b or a = %(a)s"
    assert placeholders(text) == {"documented", "a", "b"}
    with pytest.raises(ValueError, match="not a named placeholder"):
        placeholders("select %s")


class _Pair(NamedTuple):
    a: int
    b: str


def test_the_return_annotation_decides_how_rows_are_read_when_declared() -> None:
    def raw(*, x: int) -> list[tuple[int, str]]:
        """Rows as psycopg's tuples."""
        return []

    def named(*, x: int) -> _Pair | None:
        """The first row, as a NamedTuple."""

    def scalar(*, x: int = 1) -> dt.datetime:
        """The one row's first column."""
        return dt.datetime.now(dt.UTC)

    def nothing() -> None:
        """No answer."""

    rows, first, one, none = (declare(f) for f in (raw, named, scalar, nothing))
    assert (rows.row_factory, rows.params) == (None, {"x"})
    assert first.row is _Pair and first.row_factory(None)((1, "b")) == _Pair(1, "b")
    assert (one.row_factory, one.defaults) == (scalar_row, {"x": 1})
    assert (none.row, none.params) == (None, frozenset())
    assert [type(s).__name__ for s in (rows, first, one, none)] == [
        "_Rows", "_FirstRow", "_OneRow", "_NoAnswer"]


def test_declaring_positional_parameters_fails() -> None:
    def job_thing(engine: int) -> None:
        """Not keyword-only."""

    with pytest.raises(TypeError, match="keyword-only"):
        declare(job_thing)


def test_a_call_with_other_parameters_fails_before_sending() -> None:
    q = queries.for_schema("skivi")
    conn: Any = None  # never reached: the parameters are checked first
    with pytest.raises(TypeError, match=r"missing parameters \['limit', 'max_bytes', "
                                        r"'serial_limit'\], unknown parameters \['lmit'\]"):
        queries.job_claim.run(conn, q, engine=1, lmit=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="by name"):
        queries.job_queue_prune.run(conn, q, 10)  # type: ignore[call-arg]
def _statement_calls(path: Path) -> list[tuple[str, int, str, set[str], bool]]:
    """(file, line, statement, keywords, has **) of every call of a statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in CALLS):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name in STATEMENTS:
            keywords = {k.arg for k in node.keywords if k.arg is not None}
            spread = any(k.arg is None for k in node.keywords)
            found.append((str(path.relative_to(ROOT)), node.lineno, name, keywords, spread))
    return found


def test_every_call_passes_its_statements_parameters_when_read() -> None:
    # What mypy checks in skivi/, checked in every file, tests included, without running
    # them: a parameter added to a file and its declaration fails here for each old caller.
    calls = [c for folder in ("skivi", "tests") for p in sorted((ROOT / folder).rglob("*.py"))
             if p != Path(__file__).resolve()  # whose wrong calls are on purpose
             for c in _statement_calls(p)]
    assert calls
    problems = []
    for where, line, name, keywords, spread in calls:
        s = STATEMENTS[name]
        required = s.params - s.defaults.keys()
        if not keywords <= s.params or (not spread and not required <= keywords):
            problems.append(f"{where}:{line}: {name}({sorted(keywords)}), declared "
                            f"{sorted(s.params)}")
    assert not problems


def test_only_the_statements_take_a_rendered_text_when_parsed() -> None:
    # A caller sending Queries.texts[name] itself would be back to building its own parameter
    # dict and reading rows by position, unchecked: every call goes through a Statement.
    # tests/db/test_queries.py only has the server describe each text.
    allowed = {ROOT / "skivi" / "db" / "queries.py", ROOT / "tests" / "db" / "test_queries.py",
               Path(__file__).resolve()}
    readers = [f"{p.relative_to(ROOT)}:{node.lineno}"
               for folder in ("skivi", "tests", "bench")
               for p in sorted((ROOT / folder).rglob("*.py")) if p not in allowed
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
               and node.value.attr == "texts"]
    assert not readers, f"Queries.texts[...] taken outside the statements: {readers}"
