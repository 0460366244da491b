"""History pruning against a real PostgreSQL: ``HistoryPruner`` and job_history_prune.sql.

Old rows (completed and exhausted) go, recent ones stay, in bounded batches; and one engine
at a time prunes: a round that does not get the transaction-level advisory lock deletes
nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from skivi.db.queries import (
    engine_register,
    for_schema,
    job_history_prune,
    migration_lock,
)
from skivi.engine.connection import Reconnecting
from skivi.engine.maintenance import HistoryPruner
from tests.support.db import SCHEMA, connect

DAY = 86400.0
T = TypeVar("T")


def add_history(url: str, count: int, age: float, outcome: str = "completed",
                first_id: int = 1) -> list[int]:
    """``count`` history rows finished ``age`` seconds ago; returns their ids."""
    ids = list(range(first_id, first_id + count))
    with connect(url) as c:
        c.execute(
            "insert into skivi.job_history (id, task_identifier, payload, priority, run_at, "
            "attempts, max_attempts, created_at, finished_at, outcome) "
            "select g, 't', '{}', 0, now(), 1, 25, now(), "
            "now() - make_interval(secs => %s), %s from unnest(%s::bigint[]) g",
            [age, outcome, ids])
    return ids


def history_ids(url: str) -> set[int]:
    with connect(url) as c:
        return {int(r[0]) for r in c.execute("select id from skivi.job_history").fetchall()}


def run(database: str, body: Callable[[Callable[[], HistoryPruner]], Awaitable[T]]) -> T:
    """Run ``body(make_pruner)`` on a new event loop; every pruner's connection is closed at
    the end."""

    async def main() -> T:
        made: list[Reconnecting] = []

        def make_pruner(**options: Any) -> HistoryPruner:
            db = Reconnecting(database, f"skivi-prune-test-{len(made)}")
            made.append(db)
            return HistoryPruner(db, for_schema(SCHEMA), **{"retention": DAY, **options})

        try:
            return await asyncio.wait_for(body(make_pruner), timeout=60)
        finally:
            for db in made:
                await db.close()

    return asyncio.run(main())


def test_prune_deletes_nothing_when_another_session_holds_the_lock(database: str) -> None:
    add_history(database, 20, 2 * DAY)
    q = for_schema(SCHEMA)

    with connect(database, autocommit=False) as holder:
        # A round of "another engine", its transaction still open: it holds the lock.
        row = job_history_prune.run(holder, q, lock_class=HistoryPruner.LOCK_CLASS,
                                    schema=SCHEMA, retention=1000 * DAY, batch=1)
        assert (row.held, row.deleted) == (True, 0)

        async def blocked(make: Callable[..., HistoryPruner]) -> tuple[bool, int]:
            return await make().prune()

        assert run(database, blocked) == (False, 0)
        assert len(history_ids(database)) == 20
        holder.commit()

    async def free(make: Callable[..., HistoryPruner]) -> tuple[bool, int]:
        return await make().prune()

    assert run(database, free) == (True, 20)


def test_prune_deletes_old_rows_in_batches_and_keeps_recent_ones_when_the_lock_is_free(
        database: str) -> None:
    old = add_history(database, 25, 2 * DAY)
    old += add_history(database, 5, 2 * DAY, outcome="exhausted", first_id=100)
    recent = add_history(database, 7, DAY - 3600, first_id=200)

    async def body(make: Callable[..., HistoryPruner]) -> list[tuple[bool, int]]:
        pruner = make(batch_size=10)
        return [await pruner.prune() for _ in range(5)]

    assert run(database, body) == [(True, 10), (True, 10), (True, 10), (True, 0), (True, 0)]
    assert history_ids(database) == set(recent)
    assert old


def test_prune_lock_is_not_the_migration_lock_when_that_is_held(database: str) -> None:
    add_history(database, 3, 2 * DAY)
    q = for_schema(SCHEMA)
    with connect(database) as migrator, migrator.transaction(), connect(database) as engine:
        assert migration_lock.run(migrator, q, schema=SCHEMA)
        engine_register.run(engine, q, hostname="h", pid=1, version="v",
                            lease_timeout=30.0, processes=1, concurrency=1)

        async def body(make: Callable[..., HistoryPruner]) -> tuple[bool, int]:
            return await make().prune()

        assert run(database, body) == (True, 3)


def test_pruner_refuses_impossible_settings_when_built() -> None:
    db = Reconnecting("postgresql://unused/x", "unused")  # never connects: refused before
    for options in ({"retention": 0.0}, {"retention": DAY, "interval": 0.0},
                    {"retention": DAY, "batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(options.keys() - {"retention"}),
                                                  "retention")):
            HistoryPruner(db, for_schema(SCHEMA), **options)  # type: ignore[arg-type]


def test_pruner_runs_in_the_background_until_stopped_when_started(database: str) -> None:
    add_history(database, 30, 2 * DAY)
    recent = add_history(database, 2, 60.0, first_id=100)

    async def body(make: Callable[..., HistoryPruner]) -> HistoryPruner:
        pruner = make(batch_size=7, interval=0.05)
        await pruner.stop()  # safe before start
        await pruner.start()
        await pruner.start()  # idempotent: still one task
        deadline = asyncio.get_running_loop().time() + 20
        while pruner.deleted < 30 or pruner.rounds < 7:
            assert asyncio.get_running_loop().time() < deadline, "pruner did not catch up"
            await asyncio.sleep(0.01)
        await pruner.stop()
        await pruner.stop()  # idempotent
        return pruner

    pruner = run(database, body)
    assert pruner.deleted == 30
    assert history_ids(database) == set(recent)


def test_two_pruners_never_both_delete_when_run_concurrently(database: str) -> None:
    old = add_history(database, 240, 2 * DAY)
    recent = add_history(database, 10, 60.0, first_id=1000)
    with connect(database) as c:
        # Every deleted row sleeps 2 ms (a batch of 20: ~40 ms) and records which transaction
        # deleted it and when, so overlapping rounds are certain and can be seen.
        c.execute("create table public.deleted_by (txid bigint, at timestamptz)")
        c.execute("create function public.slow_delete() returns trigger language plpgsql as $$ "
                  "begin insert into public.deleted_by values (txid_current(), "
                  "clock_timestamp()); perform pg_sleep(0.002); return old; end $$")
        c.execute("create trigger slow_delete before delete on skivi.job_history "
                  "for each row execute function public.slow_delete()")

    async def body(make: Callable[..., HistoryPruner]) -> list[tuple[bool, int]]:
        a, b = make(batch_size=20), make(batch_size=20)
        results: list[tuple[bool, int]] = []
        for _ in range(30):
            results.extend(await asyncio.gather(a.prune(), b.prune()))
        return results

    results = run(database, body)
    assert all(held or deleted == 0 for held, deleted in results)
    assert (False, 0) in results, "the two pruners never contended for the lock"
    assert sum(deleted for _, deleted in results) == len(old)
    assert history_ids(database) == set(recent)
    with connect(database) as c:
        spans = c.execute("select min(at), max(at) from public.deleted_by group by txid "
                          "order by 1").fetchall()
    assert len(spans) == len(old) // 20
    for (_, previous_end), (next_start, _) in itertools.pairwise(spans):
        assert next_start > previous_end, "two pruners deleted at the same time"
