"""Named queries: one statement per file in ``skivi/sql/queries``.

Each file is read once, composed with the instance's schema through
``psycopg.sql.Identifier`` (never string pasting) and kept as a ``Composed`` object, so the
text sent for a query is identical on every call and psycopg's prepared-statement cache
works for the hot ones. ``Queries`` declares one attribute per file, and loading fails if a
file has no attribute or an attribute has no file: dead SQL cannot accumulate.
"""

from __future__ import annotations

import functools
from importlib import resources

from psycopg import sql

__all__ = ["Queries", "channel_name", "for_schema", "load_text", "migration_files"]

SQL_PACKAGE = "skivi.sql"


def channel_name(schema: str) -> str:
    """The NOTIFY channel on which an instance's engines are woken."""
    return f"{schema}:jobs"


def load_text(folder: str, name: str) -> str:
    return (resources.files(SQL_PACKAGE) / folder / name).read_text(encoding="utf-8")


def compose(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(
        schema=sql.Identifier(schema), channel=sql.Literal(channel_name(schema))
    )


def migration_files() -> list[tuple[int, str]]:
    """(version, file name) of every migration, in order."""
    found = []
    for entry in (resources.files(SQL_PACKAGE) / "migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name))
    found.sort()
    return found


class Queries:
    """The composed named queries of one schema. Attribute name = file name without .sql."""

    cron_fire: sql.Composed
    cron_known: sql.Composed
    engine_deregister: sql.Composed
    engine_heartbeat: sql.Composed
    engine_register: sql.Composed
    engine_relock: sql.Composed
    job_claim: sql.Composed
    job_complete_many: sql.Composed
    job_fail_many: sql.Composed
    job_insert_keyed_many: sql.Composed
    job_insert_many: sql.Composed
    job_release_many: sql.Composed
    job_rescue: sql.Composed
    migration_applied: sql.Composed
    migration_bootstrap: sql.Composed
    migration_lock: sql.Composed
    migration_record: sql.Composed
    migration_table_exists: sql.Composed
    migration_unlock: sql.Composed

    def __init__(self, schema: str) -> None:
        self.schema = schema
        declared = set(self.__annotations__) - {"schema"}
        folder = resources.files(SQL_PACKAGE) / "queries"
        present = {e.name[:-4] for e in folder.iterdir() if e.name.endswith(".sql")}
        if declared != present:
            raise RuntimeError(
                "named queries out of step with skivi/sql/queries: "
                f"missing files {sorted(declared - present)}, "
                f"undeclared files {sorted(present - declared)}"
            )
        for name in sorted(declared):
            setattr(self, name, compose(load_text("queries", name + ".sql"), schema))


@functools.cache
def for_schema(schema: str) -> Queries:
    return Queries(schema)
