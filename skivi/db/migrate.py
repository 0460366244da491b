"""The migration runner.

Migrations are forward-only, numbered SQL files in ``skivi/sql/migrations``
(``NNNN_slug.sql``), composed with the instance's schema. Each migration is one transaction
that first takes a transaction-level advisory lock for the schema, so any number of
processes starting at once migrate exactly once: the first applies what is pending, the
others wait, then find nothing to do. Nothing is held by the session, so migrating works
through a transaction-mode pooler, and a killed migrator's lock ends with its transaction. A
migrator never waits silently or for ever: while another session holds the lock it logs
which backend holds it, what that session is doing and since when (action
``migration_lock_wait``), and after ``lock_timeout`` seconds (``database.
migration_lock_timeout``, 300 by default) it gives up with a MigrationError naming the
holder. A holder whose session is idle in its transaction is called out: a migrator that
died while its backend lives on (a connection the server has not noticed is gone) holds the
lock until that backend is ended with ``pg_terminate_backend``. Each migration records
itself first. A database that has
migrations this code does not know was migrated by a newer Skivi and is refused.

The schema must be Skivi's (it has Skivi's migration table), or empty, or not exist yet:
``information_schema``, ``pg_*`` and a schema holding anything else (``public`` with an
application's tables) are refused before anything is created. On a fresh schema the schema
and the migration table are created in the first migration's transaction, so a first
migration that fails leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from skivi.config import MIGRATION_LOCK_TIMEOUT_DEFAULT
from skivi.db import queries
from skivi.db.queries import (
    LockHolderRow,
    SchemaStateRow,
    limits_get,
    limits_set,
    migration_applied,
    migration_bootstrap,
    migration_lock,
    migration_lock_holder,
    migration_record,
    migration_schema_state,
    migration_table_exists,
)
from skivi.errors import MigrationError, SchemaTooNew, shown

__all__ = ["Migration", "known_migrations", "migrate", "pending_migrations"]

logger = logging.getLogger(__name__)

LOCK_POLL_INTERVAL = 0.5
"""Seconds between two tries of the migration lock."""
LOCK_REPORT_INTERVAL = 10.0
"""Seconds between two log lines about a lock still held by someone else."""
IDLE_HOLDER_SECONDS = 5.0
"""A lock holder idle in its transaction this long is not migrating: a live migrator runs
statements back to back while it holds the lock."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str


def known_migrations() -> list[Migration]:
    return [Migration(v, name) for v, name in queries.migration_files()]


def _applied(conn: psycopg.Connection[Any], q: queries.Queries) -> dict[int, str]:
    if not migration_table_exists.run(conn, q, schema=q.schema):
        return {}
    return {int(r.id): str(r.name) for r in migration_applied.run(conn, q)}


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


def _check_schema_is_ours(schema: str, state: SchemaStateRow) -> None:
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


def _describe_holder(holder: LockHolderRow) -> str:
    client = f", client {holder.client}" if holder.client else ", local socket"
    text = (f"backend pid {holder.pid} (application {holder.application_name!r}"
            f"{client}, connected since {holder.backend_start:%Y-%m-%d %H:%M:%S%z}), "
            f"{holder.state or 'state unknown'} for {holder.state_age or 0:.0f}s")
    if (holder.state or "").startswith("idle") and (
            holder.state_age or 0) >= IDLE_HOLDER_SECONDS:
        text += (f": a session idle this long is not migrating; probably a migrator that "
                 f"was killed while its backend lives on (last statement: {holder.query!r}). If no "
                 f"migration is running, end it with select pg_terminate_backend"
                 f"({holder.pid})")
    return text


@dataclass(slots=True)
class _Wait:
    """A migrator waiting for the lock: says who holds it every LOCK_REPORT_INTERVAL and
    gives up at ``deadline`` (monotonic) with a MigrationError naming the holder."""

    schema: str
    started: float
    deadline: float
    next_report: float = 0.0
    waited: bool = False

    def taken(self) -> None:
        if self.waited:
            logger.info("took the migration lock of schema %s after %.1fs", self.schema,
                        time.monotonic() - self.started,
                        extra={"action": "migration_lock_taken"})
            self.waited = False

    def missed(self, conn: psycopg.Connection[Any], q: queries.Queries) -> None:
        """The lock was held elsewhere: report, give up, or sleep before the next try.
        Called outside any transaction, so the holder's state and age are read fresh."""
        found = migration_lock_holder.run(conn, q, schema=self.schema)
        self.waited = True
        now = time.monotonic()
        who = _describe_holder(found) if found else "a session that has just let it go"
        timeout = self.deadline - self.started
        if now >= self.deadline:
            raise MigrationError(
                f"gave up waiting for the migration lock of schema {self.schema!r} after "
                f"{timeout:g}s (database.migration_lock_timeout): it is held by {who}")
        if now >= self.next_report:
            logger.warning(
                "waiting for the migration lock of schema %s (%.0fs so far, giving up after "
                "%gs): held by %s", self.schema, now - self.started, timeout, who,
                extra={"action": "migration_lock_wait",
                       "holder_pid": found.pid if found else None})
            self.next_report = now + LOCK_REPORT_INTERVAL
        time.sleep(max(0.0, min(LOCK_POLL_INTERVAL, self.deadline - now)))


def migrate(conn: psycopg.Connection[Any], schema: str, *,
            lock_timeout: float = MIGRATION_LOCK_TIMEOUT_DEFAULT) -> list[Migration]:
    """Apply every pending migration to ``schema``; returns those applied.

    ``conn`` must be in autocommit mode, outside any transaction: each migration is its
    own transaction, which takes the migration lock (a transaction-level advisory lock, so
    this works through a transaction-mode pooler and a killed migrator's lock goes with its
    transaction), reads what is applied, and applies the next pending one. The lock is
    waited for at most ``lock_timeout`` seconds in all (MigrationError after that, naming
    who holds it).
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode")
    _check_name(schema)
    # Read-only first: an up-to-date schema needs no lock and no CREATE privilege, so an
    # engine connected as a role without DDL rights starts fine once the owner migrated.
    if not pending_migrations(conn, schema):
        return []
    q = queries.for_schema(schema)
    started = time.monotonic()
    wait = _Wait(schema, started, started + lock_timeout)
    done: list[Migration] = []
    while True:
        m = _apply_next(conn, q, schema, wait)
        if m is None:
            return done
        done.append(m)


def _apply_next(conn: psycopg.Connection[Any], q: queries.Queries, schema: str,
                wait: _Wait) -> Migration | None:
    """One transaction: the lock, then the first pending migration; None if none is."""
    while True:
        with conn.transaction():
            if migration_lock.run(conn, q, schema=schema):
                wait.taken()
                return _apply_first_pending(conn, q, schema)
        wait.missed(conn, q)


def _apply_first_pending(conn: psycopg.Connection[Any], q: queries.Queries,
                         schema: str) -> Migration | None:
    """In the locked transaction: apply the first pending migration; None if none is."""
    state = migration_schema_state.run(conn, q, schema=schema)
    _check_schema_is_ours(schema, state)
    applied = _applied(conn, q) if state.has_migration_table else {}
    _check_not_newer(applied, schema)
    pending = [m for m in known_migrations() if m.version not in applied]
    if not pending:
        return None
    m = pending[0]
    # Fresh: the schema and migration table are created with the first migration, in
    # its transaction, so its failure rolls them back too (nothing is left behind).
    bootstrap = not state.has_migration_table
    text = queries.load_text("migrations", m.name)
    try:
        with conn.transaction():
            if bootstrap:
                migration_bootstrap.run(conn, q)
            migration_record.run(conn, q, id=m.version, name=m.name)
            conn.execute(queries.compose(text, schema))
    except psycopg.errors.InsufficientPrivilege as exc:
        # A role without CREATE (a worker or producer role): a refusal of this
        # deployment's design, not a database error, so it is reported as one.
        raise MigrationError(
            f"role {conn.info.user!r} may not migrate schema {shown(schema)} "
            f"({str(exc).strip().splitlines()[0]}); run `skivi migrate` as the role "
            "that owns the schema (docs/operations.md, Database roles), and start "
            "engines connected as other roles with --no-migrate") from exc
    except psycopg.Error as exc:
        left = "; nothing was left behind" if bootstrap else ""
        raise MigrationError(
            f"migration {m.name} failed on schema {shown(schema)}: {exc}{left}"
        ) from exc
    logger.info("applied migration %s to schema %s", m.name, schema,
                extra={"action": "apply_migration", "migration": m.name})
    return m


def set_limits(conn: psycopg.Connection[Any], q: queries.Queries,
               max_payload_bytes: int) -> None:
    """Give the database's limits (what the SQL enqueue functions enforce) the values of the
    configuration that migrates. A role that may not write them (the worker role) is told,
    in a warning, what the database enforces instead; that is not an error."""
    current = limits_get.run(conn, q)
    if current is None or current == max_payload_bytes:
        return
    try:
        limits_set.run(conn, q, max_payload_bytes=max_payload_bytes)
    except psycopg.errors.InsufficientPrivilege:
        logger.warning(
            "validation.max_payload_bytes is %d but the database's limits.max_payload_bytes "
            "is %d, and this role may not change it: the SQL enqueue functions refuse "
            "payloads over %d bytes (an owner can set it: skivi migrate with this "
            "configuration)", max_payload_bytes, current, current,
            extra={"action": "limits_unchanged"})
