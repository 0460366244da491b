"""The migration runner.

Migrations are forward-only, numbered SQL files in ``skivi/sql/migrations``
(``NNNN_slug.sql``), composed with the instance's schema. ``migrate`` takes a session-level
advisory lock for the schema, so any number of processes starting at once migrate exactly
once: the first applies what is pending, the others wait, then find nothing to do. Each
migration runs in its own transaction and records itself first. A database that has
migrations this code does not know was migrated by a newer Skivi and is refused.

The schema must be Skivi's (it has Skivi's migration table), or empty, or not exist yet:
``information_schema``, ``pg_*`` and a schema holding anything else (``public`` with an
application's tables) are refused before anything is created. On a fresh schema the schema
and the migration table are created in the first migration's transaction, so a first
migration that fails leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from skivi.db import queries
from skivi.errors import MigrationError, SchemaTooNew, shown

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


def _check_name(schema: str) -> None:
    # PostgreSQL's own schemas: never an instance's, whatever they hold.
    if schema == "information_schema" or schema.startswith("pg_"):
        raise MigrationError(
            f"schema {shown(schema)} belongs to PostgreSQL; choose another "
            "database.schema_name (default: skivi)")


def _check_schema_is_ours(schema: str, state: tuple[Any, ...]) -> None:
    exists, has_migration_table, object_count, some_objects = state
    if exists and not has_migration_table and object_count:
        names = ", ".join(some_objects)
        more = f" and {object_count - len(some_objects)} more" if object_count > len(
            some_objects) else ""
        raise MigrationError(
            f"schema {shown(schema)} already holds {object_count} object(s) that are not "
            f"Skivi's ({names}{more}) and has no Skivi migration table; nothing was "
            "created. Give Skivi a schema of its own (database.schema_name), new or empty.")


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
    _check_name(schema)
    # Read-only first: an up-to-date schema needs no lock and no CREATE privilege, so an
    # engine connected as a role without DDL rights starts fine once the owner migrated.
    if not pending_migrations(conn, schema):
        return []
    q = queries.for_schema(schema)
    params = {"schema": schema}
    conn.execute(q.migration_lock, params)
    try:
        with conn.transaction():
            state = conn.execute(q.migration_schema_state, params).fetchone()
            assert state is not None
            applied = _applied(conn, q)
        _check_schema_is_ours(schema, state)
        _check_not_newer(applied, schema)
        # Fresh: the schema and migration table are created with the first migration, in
        # its transaction, so its failure rolls them back too (nothing is left behind).
        bootstrap = not state[1]
        done = []
        for m in known_migrations():
            if m.version in applied:
                continue
            text = queries.load_text("migrations", m.name)
            try:
                with conn.transaction():
                    if bootstrap:
                        conn.execute(q.migration_bootstrap)
                    conn.execute(q.migration_record, {"id": m.version, "name": m.name})
                    conn.execute(queries.compose(text, schema))
            except psycopg.Error as exc:
                left = "; nothing was left behind" if bootstrap else ""
                raise MigrationError(
                    f"migration {m.name} failed on schema {shown(schema)}: {exc}{left}"
                ) from exc
            bootstrap = False
            logger.info("applied migration %s to schema %s", m.name, schema,
                        extra={"action": "apply_migration", "migration": m.name})
            done.append(m)
        return done
    finally:
        conn.execute(q.migration_unlock, params)
