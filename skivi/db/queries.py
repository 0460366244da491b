"""Named queries: one statement per file in ``skivi/sql/queries``.

Each file is read once, composed with the instance's schema through
``psycopg.sql.Identifier`` (never string pasting) and rendered once to bytes, so the text
sent for a query is identical on every call, psycopg's prepared-statement cache works for
the hot ones, and no call pays for composing (measured: ~25 us per execute otherwise).
``Queries`` declares one attribute per file, and loading fails if a file has no attribute
or an attribute has no file: dead SQL cannot accumulate.
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
    """The rendered named queries of one schema. Attribute name = file name without .sql."""

    cron_fire: bytes
    cron_known: bytes
    cron_list: bytes
    engine_deregister: bytes
    engine_heartbeat: bytes
    engine_list: bytes
    engine_register: bytes
    engine_relock: bytes
    job_claim: bytes
    job_complete_many: bytes
    job_count_by_queue: bytes
    job_fail_many: bytes
    job_history_list: bytes
    job_history_prune: bytes
    job_history_retry_many: bytes
    job_history_retry_matching: bytes
    job_insert_keyed_many: bytes
    job_insert_many: bytes
    job_list: bytes
    job_permanently_fail_many: bytes
    job_queue_prune: bytes
    job_release_many: bytes
    job_remove_many: bytes
    job_reschedule_many: bytes
    job_rescue: bytes
    job_retry_many: bytes
    job_stats: bytes
    limits_get: bytes
    limits_set: bytes
    migration_applied: bytes
    migration_bootstrap: bytes
    migration_lock: bytes
    migration_lock_holder: bytes
    migration_record: bytes
    migration_schema_state: bytes
    migration_table_exists: bytes
    migration_unlock: bytes

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
            composed = compose(load_text("queries", name + ".sql"), schema)
            setattr(self, name, composed.as_bytes(None))


@functools.cache
def for_schema(schema: str) -> Queries:
    return Queries(schema)
