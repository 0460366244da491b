"""An engine that cannot migrate at start exits 3, as the README says, and says why: the
migration lock held by another session (it says who holds it and since when, and gives up
after database.migration_lock_timeout instead of waiting silently for ever), or a role that
may not migrate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from skivi.db.queries import for_schema, migration_lock
from tests.support.db import SCHEMA, MakeDatabase, connect, login_role
from tests.support.engines import EngineProcs, Ledger, log_of
from tests.support.wait import wait_for

LOCK_TIMEOUT = 7.0
"""Longer than skivi.db.migrate.IDLE_HOLDER_SECONDS (5 s), so the idle holder is called out."""


def test_engine_logs_the_holder_and_exits_3_when_the_migration_lock_stays_taken(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url = make_database(template=None)  # not migrated: the engine must take the lock
    config = tmp_path / "skivi.toml"
    config.write_text(f"[database]\nmigration_lock_timeout = {LOCK_TIMEOUT}\n")
    procs = EngineProcs(url, Ledger(tmp_path / "ledger.txt"))
    # The holder stays idle in its transaction with the lock, as a killed migrator's
    # backend does.
    with connect(url) as holder, holder.transaction():
        assert migration_lock.run(holder, for_schema(SCHEMA), schema=SCHEMA)
        pid = holder.info.backend_pid
        try:
            started = time.monotonic()
            engine = procs.start("--config", str(config))
            wait_for(lambda: "waiting for the migration lock" in log_of(engine), timeout=30,
                     what="the engine's line about waiting for the migration lock")
            code = engine.wait(timeout=LOCK_TIMEOUT + 30)
            took = time.monotonic() - started
        finally:
            procs.kill_all()
        log = log_of(engine)
    assert code == 3, log
    assert took >= LOCK_TIMEOUT, f"gave up after {took:.1f}s, before the bound"
    waiting = next(line for line in log.splitlines() if "waiting for the migration lock" in line)
    assert f"backend pid {pid}" in waiting and "connected since" in waiting, waiting
    assert "migration_lock_timeout" in log and f"after {LOCK_TIMEOUT:g}s" in log, log
    # Idle with the lock for longer than a live migrator ever is: called out as such.
    assert "killed" in log and f"pg_terminate_backend({pid})" in log, log
    with connect(url) as c:  # nothing was migrated behind the holder's back
        row = c.execute("select count(*) from pg_namespace where nspname = %s",
                        [SCHEMA]).fetchone()
    assert row == (0,)


def test_engine_exits_3_naming_the_role_when_the_role_may_not_migrate(
        admin: psycopg.Connection[Any], make_database: MakeDatabase, tmp_path: Path) -> None:
    url = make_database(template=None)
    with login_role(admin) as role:
        procs = EngineProcs(make_conninfo(url, user=role), Ledger(tmp_path / "ledger.txt"))
        try:
            engine = procs.start()
            code = engine.wait(timeout=60)
        finally:
            procs.kill_all()
    log = log_of(engine)
    assert code == 3, log
    assert f"role {role!r} may not migrate schema 'skivi'" in log, log
