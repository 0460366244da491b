"""Enqueueing against a real PostgreSQL: the API's snippets, job options and bad input."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import socket
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import skivi
from skivi.db import pool as dbpool
from skivi.db.queries import (
    CLAIM_CUT,
    CLAIM_ID,
    ClaimRow,
    channel_name,
    for_schema,
    job_claim,
    job_complete_many,
    job_queue_prune,
)
from tests.support.db import SCHEMA, connect
from tests.support.rows import Database, fetch, reading

UTC = dt.UTC


def count_jobs(db: Database, where: str = "true") -> int:
    return int(fetch(db, f"select count(*) from skivi.job_live where {where}")[0][0])


def claim(db: Database, limit: int = 100, engine: int = 1, **filters: Any) -> list[int]:
    """Claim like an engine does (job_claim.sql); returns the claimed ids in claim order."""
    with reading(db) as c:
        return [r[CLAIM_ID] for r in job_claim.run(c, for_schema(SCHEMA), engine=engine,
                                                   limit=limit, serial_limit=limit,
                                                   max_bytes=1 << 40, **filters)]


def test_add_job_returns_the_stored_job_when_called_without_start(system: skivi.System,
                                                                  database: str) -> None:
    job = skivi.add_job(system, "send-email", {"to": "user@example.com", "subject": "Hello"})
    assert job.id > 0
    assert job.task_identifier == "send-email"
    assert job.payload == {"to": "user@example.com", "subject": "Hello"}
    assert job.attempts == 0 and job.max_attempts == 25 and job.priority == 0
    assert job.outcome is skivi.EnqueueOutcome.INSERTED
    with connect(database) as c:
        row = c.execute("select payload, task_identifier from skivi.job_live where id = %s",
                        (job.id,)).fetchone()
    assert row == ({"to": "user@example.com", "subject": "Hello"}, "send-email")


def test_a_lone_add_job_stores_what_a_batch_of_one_stores_when_every_option_is_given(
        system: skivi.System, database: str) -> None:
    """A lone add_job goes through insert_job (job_insert_one.sql, migration 0009), a batch
    through insert_jobs: the rows they write must not differ."""
    at = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    options = {"queue_name": "q1", "run_at": at, "max_attempts": 3, "priority": -2,
               "flags": ["a", "b"]}
    lone = skivi.add_job(system, "t", {"x": 1}, **options)
    pair = skivi.add_jobs(system, [{"task": "t", "payload": {"x": 1}, **options},
                                   {"task": "u"}])
    assert system.client.insert_one is True
    columns = ("task_identifier, queue_name, payload, priority, run_at, attempts, "
               "max_attempts, key, flags, locked_by")
    rows = {r[0]: r[1:] for r in fetch(database, f"select id, {columns} from skivi.job_live")}
    assert rows[lone.id] == rows[pair[0].id] == (
        "t", "q1", {"x": 1}, -2, at, 0, 3, None, ["a", "b"], None)
    # What add_job returns is what was stored, as for a batch.
    for job in (lone, pair[0]):
        assert (job.queue_name, job.run_at, job.max_attempts, job.priority, job.flags) == (
            "q1", at, 3, -2, ("a", "b"))
    plain = skivi.add_job(system, "v")
    stored = fetch(database, "select run_at, created_at, payload from skivi.job_live where id = %s",
                   plain.id)[0]
    assert (plain.run_at, plain.created_at, plain.payload) == stored
    # The serial queue got its row, as insert_jobs gives it.
    assert fetch(database, "select count(*) from skivi.job_queue where queue_name = 'q1'") \
        == [(1,)]


def test_a_lone_add_job_enqueues_through_insert_jobs_when_the_schema_lacks_insert_job(
        system: skivi.System, database: str) -> None:
    """A client newer than its schema (migration 0009 not applied yet, or a producer role
    not granted insert_job yet) keeps enqueueing, through insert_jobs."""
    with connect(database) as c:
        c.execute("drop function skivi.insert_job")
    job = skivi.add_job(system, "t", {"x": 1})
    assert system.client.insert_one is False
    again = asyncio.run(skivi.add_job_async(system, "t", {"x": 2}))
    assert fetch(database, "select id, payload from skivi.job_live order by id") == [
        (job.id, {"x": 1}), (again.id, {"x": 2})]


def test_add_job_commits_with_the_callers_transaction_when_given_conn(
        system: skivi.System, database: str) -> None:
    with psycopg.connect(database) as conn, conn.transaction():
        conn.execute("create table users (name text)")
        conn.execute("insert into users values ('ada')")
        job = skivi.add_job(system, "send-email", {"to": "ada@example.com"}, conn=conn)
        with connect(database) as other:  # not visible before commit
            assert other.execute("select count(*) from skivi.job_live").fetchone() == (0,)
    assert count_jobs(database, f"id = {job.id}") == 1


def test_add_job_leaves_no_job_when_the_transaction_rolls_back(system: skivi.System,
                                                               database: str) -> None:
    with psycopg.connect(database) as conn, pytest.raises(RuntimeError), conn.transaction():
        skivi.add_job(system, "send-email", {"to": "x@example.com"}, conn=conn)
        skivi.add_jobs(system, [{"task": "a"}, {"task": "b", "job_key": "k"}], conn=conn)
        raise RuntimeError("roll back")
    assert count_jobs(database) == 0


def test_start_migrates_and_add_job_works_when_started(make_database: Any) -> None:
    url = make_database(template=None)
    system = skivi.create_system({"database": {"connection_string": url}})
    try:
        system.start()
        job = skivi.add_job(system, "t", {"n": 1})
        assert count_jobs(url) == 1 and job.id > 0
    finally:
        system.stop()


def test_add_job_async_enqueues_when_given_async_conn(system: skivi.System,
                                                      database: str) -> None:
    async def main() -> tuple[skivi.Job, list[skivi.Job]]:
        conn = await dbpool.connect_async(database, autocommit=False)
        async with conn, conn.transaction():
            one = await skivi.add_job_async(system, "a", {"x": 1}, conn=conn)
        many = await skivi.add_jobs_async(system, [skivi.JobSpec("b"), {"task": "c"}])
        return one, many

    one, many = asyncio.run(main())
    assert one.payload == {"x": 1}
    assert [j.task_identifier for j in many] == ["b", "c"]
    assert count_jobs(database) == 3


def test_add_jobs_keeps_spec_order_when_keyed_and_unkeyed_mix(system: skivi.System) -> None:
    specs: list[Any] = [
        {"task": "a", "payload": {"i": 0}},
        skivi.JobSpec("b", {"i": 1}, job_key="k1"),
        {"task": "c", "payload": [1, 2], "queue_name": "q", "priority": 5},
        {"task": "d", "job_key": "k2", "job_key_mode": "unsafe_dedupe"},
    ]
    jobs = skivi.add_jobs(system, specs)
    assert [j.task_identifier for j in jobs] == ["a", "b", "c", "d"]
    assert jobs[2].queue_name == "q" and jobs[2].priority == 5 and jobs[2].payload == [1, 2]
    assert jobs[1].key == "k1" and jobs[3].key == "k2"
    assert len({j.id for j in jobs}) == 4


def test_bulk_add_jobs_stores_every_job_when_given_many(system: skivi.System,
                                                        database: str) -> None:
    jobs = skivi.add_jobs(system, ({"task": "bulk", "payload": {"i": i}} for i in range(5000)))
    assert [j.payload["i"] for j in jobs] == list(range(5000))
    assert jobs == sorted(jobs, key=lambda j: j.id)
    assert count_jobs(database, "task_identifier = 'bulk'") == 5000


def test_job_key_replace_updates_the_pending_job_when_the_key_exists(
        system: skivi.System, database: str) -> None:
    later = dt.datetime(2100, 1, 1, tzinfo=UTC)
    first = skivi.add_job(system, "t", {"v": 1}, job_key="k", run_at=later)
    soon = dt.datetime(2099, 1, 1, tzinfo=UTC)
    second = skivi.add_job(system, "t", {"v": 2}, job_key="k", run_at=soon)
    assert second.id == first.id
    assert second.outcome is skivi.EnqueueOutcome.UPDATED
    assert second.payload == {"v": 2} and second.run_at == soon  # debounce: run_at moves
    assert count_jobs(database) == 1


def test_job_key_preserve_run_at_keeps_run_at_when_the_key_exists(
        system: skivi.System) -> None:
    first_at = dt.datetime(2100, 1, 1, tzinfo=UTC)
    first = skivi.add_job(system, "t", {"v": 1}, job_key="k", run_at=first_at)
    second = skivi.add_job(system, "t", {"v": 2}, job_key="k", job_key_mode="preserve_run_at",
                           run_at=dt.datetime(2099, 1, 1, tzinfo=UTC))
    assert second.id == first.id and second.run_at == first_at  # throttle
    assert second.payload == {"v": 2}


def test_job_key_unsafe_dedupe_keeps_the_existing_job_when_the_key_exists(
        system: skivi.System, database: str) -> None:
    first = skivi.add_job(system, "t", {"v": 1}, job_key="k")
    second = skivi.add_job(system, "t", {"v": 2}, job_key="k", job_key_mode="unsafe_dedupe")
    assert second.id == first.id
    assert second.deduplicated and second.outcome is skivi.EnqueueOutcome.DEDUPLICATED
    # The existing job's payload is not the caller's to read (a key may be guessed).
    assert second.payload is None
    assert count_jobs(database) == 1
    with connect(database) as c:
        stored = c.execute("select payload from skivi.job_live where id = "
                           "%s", [first.id]).fetchone()
    assert stored == ({"v": 1},)


def test_job_key_concatenates_array_payloads_when_both_are_arrays(
        system: skivi.System, database: str) -> None:
    first = skivi.add_job(system, "batch", [1, 2], job_key="b")
    job = skivi.add_job(system, "batch", [3], job_key="b")
    # Stored appended; returned without the items the caller did not send.
    assert job.id == first.id and job.payload is None
    with connect(database) as c:
        stored = c.execute("select payload from skivi.job_live where id = %s", [job.id]).fetchone()
    assert stored == ([1, 2, 3],)


def test_job_key_replace_adds_a_new_job_when_the_keyed_job_is_running(
        system: skivi.System, database: str) -> None:
    running = skivi.add_job(system, "t", {"v": 1}, job_key="k")
    assert claim(database) == [running.id]
    fresh = skivi.add_job(system, "t", {"v": 2}, job_key="k")
    assert fresh.id != running.id and fresh.outcome is skivi.EnqueueOutcome.INSERTED
    with connect(database) as c:
        old = c.execute("select key, attempts, max_attempts from skivi.job_live where id = %s",
                        (running.id,)).fetchone()
    assert old is not None and old[0] is None and old[1] == old[2]  # never retried


def test_job_key_leaves_exactly_one_job_when_producers_race_and_some_roll_back(
        system: skivi.System, database: str) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            with psycopg.connect(database) as conn:
                barrier.wait()
                for i in range(20):
                    try:
                        with conn.transaction():
                            skivi.add_job(system, "race", {"n": n, "i": i}, conn=conn,
                                          job_key="same")
                            if (n + i) % 3 == 0:
                                raise RuntimeError("roll back")
                    except RuntimeError:
                        pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count_jobs(database, "key = 'same'") == 1
    assert count_jobs(database) == 1


def test_claim_follows_priority_then_run_at_when_jobs_wait(
        conn_system: skivi.System, conn: psycopg.Connection[Any]) -> None:
    past = dt.datetime(2000, 1, 1, tzinfo=UTC)
    low = skivi.add_job(conn_system, "t", priority=10, run_at=past, conn=conn)
    early = skivi.add_job(conn_system, "t", priority=0, run_at=past, conn=conn)
    late = skivi.add_job(conn_system, "t", priority=0, conn=conn)
    future = skivi.add_job(conn_system, "t", priority=-5,
                           run_at=dt.datetime(2100, 1, 1, tzinfo=UTC), conn=conn)
    assert claim(conn) == [early.id, late.id, low.id]
    assert future.id not in claim(conn)


def test_claim_takes_one_job_per_serial_queue_when_prefetching(
        conn_system: skivi.System, conn: psycopg.Connection[Any]) -> None:
    q1 = [skivi.add_job(conn_system, "t", {"i": i}, queue_name="q1", conn=conn)
          for i in range(3)]
    q2 = skivi.add_job(conn_system, "t", queue_name="q2", conn=conn)
    free = skivi.add_job(conn_system, "t", conn=conn)
    assert sorted(claim(conn, limit=500)) == sorted([q1[0].id, q2.id, free.id])
    # q1's head is in flight: nothing more from q1, even for another engine.
    assert claim(conn, limit=500, engine=2) == []
    lease = conn.execute("select lease from skivi.job_live where id = %s", (q1[0].id,)).fetchone()
    assert lease is not None
    done = job_complete_many.run(conn, conn_system.queries, engine=1, ids=[q1[0].id],
                                 leases=[lease[0]], history=False)
    assert [r[0] for r in done] == [q1[0].id]
    assert claim(conn, limit=500, engine=2) == [q1[1].id]


def test_claim_skips_jobs_with_forbidden_flags_when_asked(
        conn_system: skivi.System, conn: psycopg.Connection[Any]) -> None:
    flagged = skivi.add_job(conn_system, "t", flags=["gpu"], conn=conn)
    plain = skivi.add_job(conn_system, "t", conn=conn)
    assert claim(conn, forbidden=["gpu"]) == [plain.id]
    assert claim(conn) == [flagged.id]


def test_insert_notifies_listeners_only_when_committed(system: skivi.System,
                                                       database: str) -> None:
    with connect(database) as listener:
        listener.execute(f'listen "{channel_name("skivi")}"')
        with (psycopg.connect(database) as conn, pytest.raises(RuntimeError),
              conn.transaction()):
            skivi.add_job(system, "t", conn=conn)
            raise RuntimeError
        assert list(listener.notifies(timeout=0.2)) == []
        skivi.add_job(system, "t")
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
        assert len(notes) == 1 and notes[0].payload == ""
        skivi.add_job(system, "t", run_at=dt.datetime(2100, 1, 1, tzinfo=UTC))
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
        assert float(notes[0].payload) == dt.datetime(2100, 1, 1, tzinfo=UTC).timestamp()


def test_sql_add_job_enqueues_when_called_from_plain_sql(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("select outcome, id, payload from skivi.add_job("
                       "'send-email', '{\"to\": \"a@example.com\"}'::jsonb)").fetchone()
    assert row is not None and row[0] == "inserted"
    again = conn.execute("select outcome, id from skivi.add_job('x', job_key => 'k')").fetchone()
    dedup = conn.execute("select outcome, id from skivi.add_job('x', job_key => 'k', "
                         "job_key_mode => 'unsafe_dedupe')").fetchone()
    assert again is not None and dedup == ("deduplicated", again[1])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="job_key_mode"):
        conn.execute("select * from skivi.add_job('x', job_key => 'k', job_key_mode => 'bogus')")


def test_sql_admin_functions_change_pending_jobs_when_called(
        conn: psycopg.Connection[Any]) -> None:
    ids = [conn.execute("select id from skivi.add_job('t')").fetchone()[0]  # type: ignore[index]
           for _ in range(4)]
    conn.execute("select skivi.complete_jobs(%s)", ([ids[0]],))
    conn.execute("select skivi.permanently_fail_jobs(%s, 'bad data')", ([ids[1]],))
    conn.execute("select skivi.reschedule_jobs(%s, run_at => '2100-01-01', priority => 3)",
                 ([ids[2]],))
    conn.execute("select skivi.add_job('t', job_key => 'rm')")
    removed = conn.execute("select id from skivi.remove_job('rm')").fetchall()
    assert len(removed) == 1
    left = conn.execute("select id, priority from skivi.job_live order by id").fetchall()
    assert left == [(ids[2], 3), (ids[3], 0)]
    hist = conn.execute("select id, outcome, reason, last_error, attempts, max_attempts "
                        "from skivi.job_history").fetchall()
    # Never attempted, but exhausted: its record says it has no attempt left (Graphile).
    assert hist == [(ids[1], "exhausted", "permanently_failed", "bad data", 25, 25)]
    back = conn.execute("select id, attempts from skivi.retry_jobs(%s)", ([ids[1]],)).fetchall()
    assert back == [(ids[1], 0)]
    assert conn.execute("select count(*) from skivi.job_history").fetchone() == (0,)


@pytest.mark.parametrize(("options", "match"), [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": -1}, "max_attempts"),
    ({"job_key_mode": "bogus", "job_key": "k"}, "job_key_mode"),
    ({"job_key_mode": "replace"}, "needs a job_key"),
    ({"priority": 40000}, "priority"),
    ({"run_at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
    # Year 10000 and year 0 once in UTC: PostgreSQL stores them, Python can never read them.
    ({"run_at": dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=1)))},
     "run_at.*outside the years 1 to 9999"),
    ({"run_at": dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))),
      "job_key": "k"}, "run_at.*outside the years 1 to 9999"),
    ({"flags": [None]}, r"flags\[0\] must be a non-empty string.*None"),
    ({"flags": ["ok", ""]}, r"flags\[1\] must be a non-empty string.*''"),
    ({"queue_name": ""}, "queue_name"),
    ({"job_key": "a\x00b"}, "job_key"),
    ({"flags": "gpu"}, "flags"),
    ({"unknown_option": 1}, "unknown_option"),
])
def test_bad_options_are_refused_and_nothing_written_when_enqueueing(
        conn_system: skivi.System, conn: psycopg.Connection[Any], options: dict[str, Any],
        match: str) -> None:
    with pytest.raises(skivi.JobSpecError, match=match):
        skivi.add_job(conn_system, "t", {"ok": True}, conn=conn, **options)
    with pytest.raises(skivi.JobSpecError, match=match):
        skivi.add_jobs(conn_system, [{"task": "fine"}, {"task": "t", **options}], conn=conn)
    assert count_jobs(conn) == 0


@pytest.mark.parametrize(("payload", "match"), [
    ({"x": math.nan}, "NaN"),
    ({"x": [1, math.inf]}, "Infinity"),
    ({"x": "a\x00b"}, "U\\+0000"),
    ({"x": "\ud800"}, "surrogate|serialis|encod"),
    ({"x": object()}, "not JSON serializable"),
    ({"big": "x" * (1024 * 1024 + 1)}, "bytes|size|limit"),
])
def test_bad_payloads_are_refused_and_nothing_written_when_enqueueing(
        conn_system: skivi.System, conn: psycopg.Connection[Any], payload: Any,
        match: str) -> None:
    with pytest.raises(skivi.PayloadError, match=match) as info:
        skivi.add_jobs(conn_system, [{"task": "fine"}, {"task": "t", "payload": payload}],
                       conn=conn)
    assert "'t'" in str(info.value)
    assert count_jobs(conn) == 0


def test_payload_schema_names_the_field_and_writes_nothing_when_invalid(
        database: str) -> None:
    schema = {"type": "object", "required": ["to"],
              "properties": {"to": {"type": "string", "format": "email"},
                             "subject": {"type": "string"}}}
    system = skivi.create_system({
        "database": {"connection_string": database},
        "validation": {"tasks": {"send-email": schema}},
    })
    try:
        skivi.add_job(system, "send-email", {"to": "a@example.com", "subject": "hi"})
        with pytest.raises(skivi.PayloadError, match="subject") as info:
            skivi.add_job(system, "send-email", {"to": "a@example.com", "subject": 5})
        assert info.value.task == "send-email" and info.value.field == "subject"
        assert count_jobs(database) == 1
    finally:
        system.stop()


def test_bad_schema_name_is_refused_when_creating_a_system() -> None:
    # Refused before anything connects: no database needed.
    with pytest.raises(skivi.ConfigError, match="schema_name"):
        skivi.create_system({"database": {"connection_string": "postgresql://unused/x",
                                          "schema_name": 'a"; drop table x; --'}})


def test_far_future_run_at_is_stored_when_year_9999(system: skivi.System) -> None:
    at = dt.datetime(9999, 12, 31, tzinfo=UTC)
    assert skivi.add_job(system, "t", run_at=at).run_at == at


def test_returned_jobs_equal_the_stored_rows_when_enqueued(system: skivi.System,
                                                           database: str) -> None:
    jobs = skivi.add_jobs(system, [
        {"task": "a", "payload": {"x": [1, 2]}},
        {"task": "b", "queue_name": "q", "priority": -3, "max_attempts": 2, "flags": ["f"],
         "run_at": dt.datetime(2030, 1, 1, tzinfo=UTC)},
        {"task": "c", "job_key": "k"},
    ])
    with connect(database) as c:
        rows = c.execute(
            "select id, task_identifier, payload, queue_name, priority, run_at, attempts, "
            "max_attempts, last_error, key, coalesce(flags, '{}'), locked_by, locked_at, lease, "
            "created_at, updated_at from skivi.job_live order by id").fetchall()
    stored = [(*r[:10], tuple(r[10]), *r[11:]) for r in rows]
    returned = [(j.id, j.task_identifier, j.payload, j.queue_name, j.priority, j.run_at,
                 j.attempts, j.max_attempts, j.last_error, j.key, j.flags, j.locked_by,
                 j.locked_at, j.lease, j.created_at, j.updated_at) for j in jobs]
    assert returned == stored


def test_bulk_add_jobs_pipelines_chunks_in_order_when_larger_than_a_chunk(
        system: skivi.System, database: str) -> None:
    from skivi.client import CHUNK_SIZE

    n = 2 * CHUNK_SIZE + 500
    specs: list[Any] = [{"task": "bulk", "payload": {"i": i}} for i in range(n)]
    specs.insert(CHUNK_SIZE + 7, {"task": "keyed", "payload": {"i": -1}, "job_key": "k"})
    jobs = skivi.add_jobs(system, specs)
    assert [j.payload["i"] for j in jobs] == [s["payload"]["i"] for s in specs]
    assert jobs[CHUNK_SIZE + 7].key == "k"
    assert count_jobs(database) == n + 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_bulk_add_jobs_writes_every_chunk_in_order_when_libpq_has_no_pipeline_mode(
        system: skivi.System, database: str, monkeypatch: pytest.MonkeyPatch,
        asynchronous: bool) -> None:
    from skivi.client import CHUNK_SIZE

    # libpq before 14 has no pipeline mode: psycopg says so, and entering one raises.
    def no_pipeline(check: bool = False) -> bool:
        if check:
            raise psycopg.NotSupportedError("pipeline mode needs libpq 14 (simulated)")
        return False

    monkeypatch.setattr(psycopg.capabilities, "has_pipeline", no_pipeline)
    n = 2 * CHUNK_SIZE + 3
    specs: list[Any] = [{"task": "bulk", "payload": {"i": i}} for i in range(n)]
    jobs = (asyncio.run(skivi.add_jobs_async(system, specs)) if asynchronous
            else skivi.add_jobs(system, specs))
    assert [j.payload["i"] for j in jobs] == list(range(n))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert count_jobs(database) == n


def test_bulk_add_jobs_writes_nothing_when_a_late_spec_is_bad(system: skivi.System,
                                                              database: str) -> None:
    from skivi.client import CHUNK_SIZE

    specs: list[Any] = [{"task": "bulk", "payload": {"i": i}} for i in range(3 * CHUNK_SIZE)]
    specs[-1] = {"task": "bulk", "payload": {"i": math.nan}}
    with pytest.raises(skivi.PayloadError, match="NaN"):
        skivi.add_jobs(system, specs)
    assert count_jobs(database) == 0


def test_bulk_add_jobs_async_pipelines_chunks_when_larger_than_a_chunk(
        system: skivi.System, database: str) -> None:
    from skivi.client import CHUNK_SIZE

    n = CHUNK_SIZE + 10
    jobs = asyncio.run(skivi.add_jobs_async(
        system, [{"task": "bulk", "payload": {"i": i}} for i in range(n)]))
    assert [j.payload["i"] for j in jobs] == list(range(n))
    assert count_jobs(database) == n


@pytest.mark.parametrize("prepared", [True, False])
def test_internal_pool_prepares_statements_only_when_allowed_by_configuration(
        database: str, prepared: bool) -> None:
    """database.prepared_statements = false is for producers behind a transaction-mode
    pooler: their sessions must never hold a prepared statement."""
    system = skivi.create_system({"database": {
        "connection_string": database, "pool_max_size": 1, "prepared_statements": prepared}})
    try:
        for i in range(8):  # psycopg prepares on the 5th run of a statement
            skivi.add_job(system, "t", {"i": i})
        with system.pool.connection() as conn:
            held = conn.execute("select count(*) from pg_prepared_statements").fetchone()
    finally:
        system.stop()
    assert held is not None
    assert (held[0] > 0) is prepared, held


def test_internal_async_pool_never_prepares_when_configured_not_to(database: str) -> None:
    system = skivi.create_system({"database": {
        "connection_string": database, "pool_max_size": 1, "prepared_statements": False}})

    async def main() -> tuple[Any, ...] | None:
        for i in range(8):
            await skivi.add_job_async(system, "t", {"i": i})
        pool = await system.async_pool()
        async with pool.connection() as conn:
            cur = await conn.execute("select count(*) from pg_prepared_statements")
            return await cur.fetchone()

    try:
        held = asyncio.run(main())
    finally:
        system.stop()
    assert held == (0,)


def test_a_claim_is_bounded_by_payload_bytes_and_says_when_it_left_jobs(
        conn_system: skivi.System, conn: psycopg.Connection[Any]) -> None:
    big = "x" * 100_000  # compressible: the claim measures its text, not its stored size
    ids = [j.id for j in skivi.add_jobs(conn_system, [{"task": "t", "payload": {"b": big}}
                                                      for _ in range(10)], conn=conn)]
    q = conn_system.queries

    def claim(max_bytes: int) -> list[ClaimRow]:
        return job_claim.run(conn, q, engine=1, limit=100, serial_limit=100,
                             max_bytes=max_bytes)

    rows = claim(250_000)
    # 0, 100 kB and 200 kB before them are under the limit; the fourth is not.
    assert [r[CLAIM_ID] for r in rows] == ids[:3] and all(r[CLAIM_CUT] for r in rows)
    one = claim(1)
    assert [r[CLAIM_ID] for r in one] == [ids[3]]  # at least one job, however large
    rest = claim(1 << 40)
    assert [r[CLAIM_ID] for r in rest] == ids[4:] and not any(r[CLAIM_CUT] for r in rest)


# --- an unusable database: a clear error within database.connect_timeout --------------------

CONNECT_TIMEOUT = 2.0


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unusable_system(url: str) -> skivi.System:
    return skivi.create_system({"database": {"connection_string": url,
                                             "connect_timeout": CONNECT_TIMEOUT}})


def enqueue_fails(system: skivi.System, how: str) -> tuple[skivi.DatabaseUnavailable, float]:
    """Enqueue ``how`` (add_job, add_jobs, add_job_async); the error raised, and how long
    it took."""
    start = time.monotonic()
    with pytest.raises(skivi.DatabaseUnavailable) as raised:
        if how == "add_job":
            skivi.add_job(system, "t", {})
        elif how == "add_jobs":
            skivi.add_jobs(system, [{"task": "t"}, {"task": "u"}])
        else:
            asyncio.run(skivi.add_job_async(system, "t", {}))
    return raised.value, time.monotonic() - start


@pytest.mark.parametrize("how", ["add_job", "add_jobs", "add_job_async"])
def test_enqueue_raises_database_unavailable_naming_the_host_when_nothing_listens(
        how: str) -> None:
    port = unused_port()
    system = unusable_system(f"postgresql://postgres@127.0.0.1:{port}/nowhere")
    try:
        error, took = enqueue_fails(system, how)
    finally:
        system.stop()
    assert took < CONNECT_TIMEOUT + 1.0, f"took {took:.1f}s"
    assert isinstance(error, skivi.SkiviError)
    assert isinstance(error, psycopg.OperationalError)  # what callers already catch
    assert f"127.0.0.1:{port}" in str(error) and "refused" in str(error).lower(), str(error)
    assert not error.refused  # not reached: the server never answered
    assert system.client._pool is None  # nothing kept: the next call tries again


@pytest.mark.parametrize("how", ["add_job", "add_jobs", "add_job_async"])
def test_enqueue_raises_database_unavailable_with_the_cause_when_the_login_is_refused(
        server_dsn: str, how: str) -> None:
    """The test server trusts every login on 127.0.0.1, so no password can be wrong; the
    refusal that authentication gives here is an unknown role (SQLSTATE 28000,
    invalid_authorization_specification), the same path as a wrong password. (The login
    is refused before any database is opened: the server's URL will do.)"""
    role = f"skivi_no_such_role_{os.getpid()}"
    system = unusable_system(make_conninfo(server_dsn, user=role))
    try:
        error, took = enqueue_fails(system, how)
    finally:
        system.stop()
    assert took < CONNECT_TIMEOUT + 1.0, f"took {took:.1f}s"
    assert error.refused
    assert dbpool.describe_server(server_dsn) in str(error)
    assert f'role "{role}" does not exist' in str(error), str(error)


# --- serial-queue rows: removed when empty, never under a job about to commit ---------------


def prune_queues(url: str, batch: int = 1000) -> int:
    q = skivi.create_system({"database": {"connection_string": url}}).queries
    with connect(url) as c:
        return job_queue_prune.run(c, q, batch=batch)


def queue_rows(url: str) -> list[str]:
    with connect(url) as c:
        return [r[0] for r in c.execute("select queue_name from skivi.job_queue order by 1")]


def test_empty_queue_rows_are_pruned_and_come_back_with_the_next_job(
        system: skivi.System, database: str) -> None:
    skivi.add_jobs(system, [{"task": "t", "queue_name": f"tenant-{i}"} for i in range(50)])
    ids = claim(database, limit=100)
    assert len(ids) == 50
    assert prune_queues(database) == 0  # every queue has a running job
    with connect(database) as c:
        c.execute("delete from skivi.job_running")
        c.execute("update skivi.job_queue set job_id = null, locked_by = null, "
                  "locked_at = null")
    assert prune_queues(database, batch=30) == 30
    assert prune_queues(database) == 20 and queue_rows(database) == []
    again = skivi.add_job(system, "t", queue_name="tenant-7")
    assert queue_rows(database) == ["tenant-7"]
    assert claim(database) == [again.id]


def test_a_queue_row_held_by_an_uncommitted_enqueue_is_not_pruned(
        system: skivi.System, database: str) -> None:
    skivi.add_job(system, "t", queue_name="q")
    with connect(database) as c:
        c.execute("delete from skivi.job")  # the row stays, its queue empty
    with connect(database, autocommit=False) as producer:
        job = skivi.add_job(system, "t", {"late": True}, queue_name="q", conn=producer)
        # Not committed: the pruner sees no job in the queue, but the row is held.
        assert prune_queues(database) == 0 and queue_rows(database) == ["q"]
        producer.commit()
    assert prune_queues(database) == 0
    assert claim(database) == [job.id]  # claimable: its queue row is there


def test_an_enqueue_after_a_prune_took_the_row_inserts_it_again(
        system: skivi.System, database: str) -> None:
    skivi.add_job(system, "t", queue_name="q")
    with connect(database) as c:
        c.execute("delete from skivi.job")
    pruner = connect(database, autocommit=False)
    try:
        # Deleted, not committed: an enqueue now has to wait for it.
        assert job_queue_prune.run(pruner, system.queries, batch=10) == 1
        done: list[int] = []
        thread = threading.Thread(
            target=lambda: done.append(skivi.add_job(system, "t", queue_name="q").id))
        thread.start()
        time.sleep(0.5)
        assert done == []  # waiting on the pruner's lock
        pruner.commit()
        thread.join(10)
        assert len(done) == 1
    finally:
        pruner.close()
    assert queue_rows(database) == ["q"]
    assert claim(database) == done


def test_bulk_add_jobs_of_plain_specs_stores_every_payload_as_given(
        system: skivi.System, database: str) -> None:
    # Plain {"task", "payload"} specs are encoded a statement at a time; a slice whose one
    # encoding proves nothing (a null, an escape) is checked payload by payload. Either way
    # each job is stored, and returned, with its own payload.
    from skivi.client import CHUNK_SIZE

    n = 3 * CHUNK_SIZE
    payloads: list[Any] = [{"i": i} for i in range(n)]
    payloads[CHUNK_SIZE + 5] = {"i": CHUNK_SIZE + 5, "none": None, "q": 'say "hi"\n',
                                "u": "żółw", "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}
    jobs = skivi.add_jobs(system, [{"task": "bulk", "payload": p} for p in payloads])
    stored = dict(fetch(database, f"select id, payload from {SCHEMA}.job_live"))
    assert len(stored) == n
    expected = [dict(p, when="2026-01-02T00:00:00+00:00") if "when" in p else p
                for p in payloads]
    assert [j.payload for j in jobs] == expected
    assert [stored[j.id] for j in jobs] == expected
    assert {j.task_identifier for j in jobs} == {"bulk"}


def test_bulk_add_jobs_sends_plain_dicts_as_given_in_either_key_order(
        system: skivi.System, database: str) -> None:
    # Dicts that each hold a payload are encoded themselves (key order is theirs); one that
    # holds none, or None, is sent as {} and its neighbours are encoded from their parts.
    from skivi.client import CHUNK_SIZE

    n = 2 * CHUNK_SIZE
    given: list[Any] = [{"payload": {"i": i}, "task": "bulk"} if i % 2 else
                        {"task": "bulk", "payload": {"i": i}} for i in range(n)]
    jobs = skivi.add_jobs(system, given)
    assert [(j.task_identifier, j.payload) for j in jobs] == [("bulk", {"i": i})
                                                              for i in range(n)]
    assert given[3] == {"payload": {"i": 3}, "task": "bulk"}  # the caller's dicts untouched
    mixed: list[Any] = [{"task": "bulk", "payload": {"i": i}} for i in range(n)]
    mixed[CHUNK_SIZE + 1] = {"task": "bare"}
    mixed[CHUNK_SIZE + 2] = {"task": "none", "payload": None}
    jobs = skivi.add_jobs(system, mixed)
    stored = dict(fetch(database, f"select id, payload from {SCHEMA}.job_live"))
    expected = [{} if i in (CHUNK_SIZE + 1, CHUNK_SIZE + 2) else {"i": i} for i in range(n)]
    assert [j.payload for j in jobs] == expected
    assert [stored[j.id] for j in jobs] == expected
    assert [j.task_identifier for j in jobs][CHUNK_SIZE:CHUNK_SIZE + 4] == [
        "bulk", "bare", "none", "bulk"]


def test_bulk_add_jobs_mixing_plain_and_full_specs_keeps_the_order(
        system: skivi.System, database: str) -> None:
    from skivi.client import CHUNK_SIZE

    specs: list[Any] = [{"task": "bulk", "payload": {"i": i}} for i in range(CHUNK_SIZE + 3)]
    specs.append({"task": "later", "payload": {"i": -1}, "priority": 5})
    jobs = skivi.add_jobs(system, specs)
    assert [j.payload["i"] for j in jobs] == [*range(CHUNK_SIZE + 3), -1]
    assert jobs[-1].task_identifier == "later" and jobs[-1].priority == 5
    assert fetch(database, f"select count(*) from {SCHEMA}.job_live") == [(CHUNK_SIZE + 4,)]


@pytest.mark.parametrize(("specs", "match"), [
    ('[{"task": "t"}, {"task": "t", "job_key": "k"}]', "specs with a job_key go through add_jobs"),
    ('[{"task": "t"}, {"task": "t"}, {"task": "t", "flags": [""]}]', "spec 3 has an empty flag"),
    ('[{"task": "t", "job_key": "k"}, {"payload": {}}]', "spec 2 has no task"),
    ('[{"task": "t", "queue_name": "q"}, {"task": "t", "run_at": "infinity"}]',
     "spec 2 has run_at infinity"),
    ('{"task": "t"}', "specs must be a JSON array, got object"),
])
def test_insert_jobs_refuses_a_bad_spec_in_its_one_pass_and_writes_nothing(
        database: str, specs: str, match: str) -> None:
    # insert_jobs checks each row as it inserts it (migration 0012); the refusal is
    # check_specs' (the first bad spec by position) or, failing that, the job key's.
    with connect(database) as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=match):
            c.execute(f"select * from {SCHEMA}.insert_jobs(%s::jsonb)", [specs])
        assert c.execute(f"select count(*) from {SCHEMA}.job_live").fetchone() == (0,)
        assert c.execute(f"select count(*) from {SCHEMA}.job_queue").fetchone() == (0,)
