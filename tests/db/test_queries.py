"""Each named query's declared row type against the columns the server says it returns."""

from __future__ import annotations

import re
import typing
from typing import Any

import psycopg
from psycopg import pq

from skivi.db.queries import STATEMENTS, Statement, for_schema

_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\).|%)")
ANSWERING = sorted(name for name, s in STATEMENTS.items() if s.row is not None)


def _columns(conn: psycopg.Connection[Any], text: bytes) -> list[str]:
    """The result columns of a statement, as the server describes it once prepared (the
    %(name)s placeholders made $n, as psycopg sends them); nothing is executed."""
    order: list[str] = []

    def numbered(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    query = _PLACEHOLDER.sub(numbered, text.decode()).encode()
    prepared = conn.pgconn.prepare(b"", query)
    assert prepared.status == pq.ExecStatus.COMMAND_OK, prepared.get_error_message()
    described = conn.pgconn.describe_prepared(b"")
    fields = described.nfields
    return [(described.fname(i) or b"").decode() for i in range(fields)]


def test_every_row_type_matches_its_columns_when_described(
        conn: psycopg.Connection[Any]) -> None:
    problems = []
    for name in ANSWERING:
        s: Statement[..., Any] = STATEMENTS[name]
        columns = _columns(conn, for_schema("skivi").texts[name])
        if typing.get_origin(s.row) is tuple:
            ok = len(columns) == len(typing.get_args(s.row))
        elif hasattr(s.row, "_fields"):
            ok = list(s.row._fields) == columns
        else:
            ok = bool(columns)  # a scalar row is the first column
        if not ok:
            problems.append(f"{name}: declared {s.row}, columns {columns}")
    assert not problems
