"""The migration runner.

Migrations are forward-only, numbered SQL files in ``skivi/sql/migrations``
(``NNNN_slug.sql``), composed with the instance's schema. ``migrate`` takes a session-level
advisory lock for the schema, so any number of processes starting at once migrate exactly
once: the first applies what is pending, the others wait, then find nothing to do. Each
migration runs in its own transaction and records itself first. A database that has
migrations this code does not know was migrated by a newer Skivi and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from skivi.db import queries
from skivi.errors import MigrationError, SchemaTooNew

__all__ = ["Migration", "known_migrations", "migrate", "pending_migrations"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str


def known_migrations() -> list[Migration]:
    return [Migration(v, name) for v, name in queries.migration_files()]


def _applied(conn: psycopg.Connection[Any], q: queries.Queries) -> dict[int, str]:
    exists = conn.execute(q.migration_table_exists, {"schema": q.schema}).fetchone()
    if not exists or not exists[0]:
        return {}
    rows: list[tuple[Any, ...]] = conn.execute(q.migration_applied).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def _check_not_newer(applied: dict[int, str], schema: str) -> None:
    known = {m.version for m in known_migrations()}
    unknown = sorted(set(applied) - known)
    if unknown:
        names = ", ".join(f"{v:04d} ({applied[v]})" for v in unknown)
        raise SchemaTooNew(
            f"schema {schema!r} has migrations this version of Skivi does not know: {names}; "
            "it was migrated by a newer Skivi. Upgrade Skivi on this host before running it."
        )


def pending_migrations(conn: psycopg.Connection[Any], schema: str) -> list[Migration]:
    """Migrations not yet applied to ``schema`` (read-only; takes no lock)."""
    q = queries.for_schema(schema)
    with conn.transaction():
        applied = _applied(conn, q)
    _check_not_newer(applied, schema)
    return [m for m in known_migrations() if m.version not in applied]


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[Migration]:
    """Apply every pending migration to ``schema``; returns those applied.

    ``conn`` must be in autocommit mode, outside any transaction: each migration commits on
    its own and the lock is held by the session.
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode")
    # Read-only first: an up-to-date schema needs no lock and no CREATE privilege, so an
    # engine connected as a role without DDL rights starts fine once the owner migrated.
    if not pending_migrations(conn, schema):
        return []
    q = queries.for_schema(schema)
    params = {"schema": schema}
    conn.execute(q.migration_lock, params)
    try:
        with conn.transaction():
            conn.execute(q.migration_bootstrap)
            applied = _applied(conn, q)
        _check_not_newer(applied, schema)
        done = []
        for m in known_migrations():
            if m.version in applied:
                continue
            text = queries.load_text("migrations", m.name)
            try:
                with conn.transaction():
                    conn.execute(q.migration_record, {"id": m.version, "name": m.name})
                    conn.execute(queries.compose(text, schema))
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {m.name} failed on schema {schema!r}: {exc}"
                ) from exc
            logger.info("applied migration %s to schema %s", m.name, schema,
                        extra={"action": "apply_migration", "migration": m.name})
            done.append(m)
        return done
    finally:
        conn.execute(q.migration_unlock, params)


def set_limits(conn: psycopg.Connection[Any], q: queries.Queries,
               max_payload_bytes: int) -> None:
    """Give the database's limits (what the SQL enqueue functions enforce) the values of the
    configuration that migrates. A role that may not write them (the worker role) is told,
    in a warning, what the database enforces instead; that is not an error."""
    row = conn.execute(q.limits_get).fetchone()
    if row is None or row[0] == max_payload_bytes:
        return
    try:
        conn.execute(q.limits_set, {"max_payload_bytes": max_payload_bytes})
    except psycopg.errors.InsufficientPrivilege:
        logger.warning(
            "validation.max_payload_bytes is %d but the database's limits.max_payload_bytes "
            "is %d, and this role may not change it: the SQL enqueue functions refuse "
            "payloads over %d bytes (an owner can set it: skivi migrate with this "
            "configuration)", max_payload_bytes, row[0], row[0],
            extra={"action": "limits_unchanged"})
