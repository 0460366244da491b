"""Enqueueing: ``add_job`` / ``add_jobs`` and their async twins.

Every call runs in three steps:

1. prepare (pure Python, no I/O): each spec is checked (``JobSpec.check``), its payload is
   validated against the task's schema and encoded once with orjson (``skivi.payload``); a
   bad spec raises before any SQL runs, so nothing is ever half-written;
2. one statement for the specs without a job key (``job_insert_many.sql``) and one for those
   with a key (``job_insert_keyed_many.sql``), on the caller's connection when one is given,
   so the jobs commit or roll back with the caller's transaction; otherwise on a pooled
   autocommit connection (a single statement is its own transaction: one round trip);
3. the rows come back as ``Job`` objects in spec order, each with its ``outcome``.

The client never relies on ``search_path``: every query is schema-qualified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from skivi.job import MAX_ATTEMPTS_DEFAULT, PRIORITY_DEFAULT, EnqueueOutcome, Job, JobSpec

if TYPE_CHECKING:
    from skivi.system import System

__all__ = ["add_job", "add_job_async", "add_jobs", "add_jobs_async"]

SpecLike = JobSpec | Mapping[str, Any]


@dataclass(slots=True)
class _Batch:
    """A prepared enqueue: what to send and how to pair the answers with the specs.

    ``specs[i]`` is the checked JobSpec, or just the task identifier for the common plain
    ``{"task": ..., "payload": ...}`` dict (no JobSpec is built for those: bulk enqueues of
    100,000 jobs feel every microsecond per spec)."""

    specs: list[JobSpec | str]
    payloads: list[bytes]
    unkeyed: list[int]
    keyed: list[int]
    unkeyed_json: Jsonb | None
    keyed_json: Jsonb | None


_PLAIN_KEYS = frozenset({"task", "payload"})
_TASK_MAX = 128


def _raw_json(data: bytes) -> Jsonb:
    """Already-encoded JSON, sent as jsonb without being decoded and encoded again."""
    return Jsonb(data, dumps=_identity)


def _identity(data: bytes) -> bytes:
    return data


def _wire(spec: JobSpec, payload: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"task": spec.task, "payload": orjson.Fragment(payload)}
    if spec.queue_name is not None:
        out["queue_name"] = spec.queue_name
    if spec.run_at is not None:
        out["run_at"] = spec.run_at
    if spec.max_attempts is not None:
        out["max_attempts"] = spec.max_attempts
    if spec.priority is not None:
        out["priority"] = spec.priority
    if spec.flags is not None:
        out["flags"] = list(spec.flags)
    return out


def _prepare(system: System, raw: Iterable[SpecLike]) -> _Batch:
    check_payload = system.payload_gate.check
    specs: list[JobSpec | str] = []
    payloads: list[bytes] = []
    unkeyed_wire: list[dict[str, Any]] = []
    keyed_wire: list[dict[str, Any]] = []
    unkeyed: list[int] = []
    keyed: list[int] = []
    for i, item in enumerate(raw):
        if type(item) is dict and item.keys() <= _PLAIN_KEYS:
            # The fast path: the same checks as JobSpec.check() for the only option given.
            task = item.get("task")
            if type(task) is not str or not 0 < len(task) <= _TASK_MAX or "\x00" in task:
                JobSpec.coerce(item).check()  # raises the usual, precise error
            assert isinstance(task, str)
            body = item.get("payload")
            payload = check_payload(task, {} if body is None else body)
            unkeyed.append(i)
            unkeyed_wire.append({"task": task, "payload": orjson.Fragment(payload)})
            specs.append(task)
            payloads.append(payload)
            continue
        spec = JobSpec.coerce(item)
        spec.check()
        payload = check_payload(spec.task, {} if spec.payload is None else spec.payload)
        wire = _wire(spec, payload)
        if spec.job_key is None:
            unkeyed.append(i)
            unkeyed_wire.append(wire)
        else:
            wire["ord"] = i
            wire["job_key"] = spec.job_key
            if spec.job_key_mode is not None:
                wire["job_key_mode"] = str(spec.job_key_mode)
            keyed.append(i)
            keyed_wire.append(wire)
        specs.append(spec)
        payloads.append(payload)
    return _Batch(
        specs, payloads, unkeyed, keyed,
        _raw_json(orjson.dumps(unkeyed_wire)) if unkeyed_wire else None,
        _raw_json(orjson.dumps(keyed_wire)) if keyed_wire else None,
    )


def _assemble(batch: _Batch, inserted: Sequence[Any] | None,
              keyed_rows: Sequence[Sequence[Any]]) -> list[Job]:
    jobs: list[Job | None] = [None] * len(batch.specs)
    if inserted is not None:
        # One row: the new ids (in spec order) and the statement's now(), which every
        # defaulted timestamp of these jobs holds; the rest is what was sent.
        ids_text, now = inserted
        ids = [int(x) for x in ids_text[1:-1].split(",")] if ids_text else []
        if len(ids) != len(batch.unkeyed):
            raise RuntimeError("enqueue stored a different number of jobs than specs sent")
        specs, payloads, loads = batch.specs, batch.payloads, orjson.loads
        inserted_outcome = EnqueueOutcome.INSERTED
        for i, job_id in zip(batch.unkeyed, ids, strict=True):
            spec = specs[i]
            if type(spec) is str:
                jobs[i] = Job(job_id, spec, loads(payloads[i]), None, PRIORITY_DEFAULT, now, 0,
                              MAX_ATTEMPTS_DEFAULT, None, None, (), None, None, 0, now, now,
                              inserted_outcome)
                continue
            assert isinstance(spec, JobSpec)
            jobs[i] = Job(
                job_id, spec.task, loads(payloads[i]), spec.queue_name,
                PRIORITY_DEFAULT if spec.priority is None else spec.priority,
                now if spec.run_at is None else spec.run_at, 0,
                MAX_ATTEMPTS_DEFAULT if spec.max_attempts is None else spec.max_attempts,
                None, None, tuple(spec.flags) if spec.flags is not None else (),
                None, None, 0, now, now, inserted_outcome)
    if len(keyed_rows) != len(batch.keyed):
        raise RuntimeError("enqueue returned a different number of rows than specs sent")
    for r in keyed_rows:
        jobs[r[0]] = Job(r[2], r[3], r[5], r[4], r[6], r[7], r[8], r[9], r[10], r[11],
                         tuple(r[12] or ()), r[13], r[14], r[15], r[16], r[17],
                         EnqueueOutcome(r[1]))
    return [j for j in jobs if j is not None]


def _run(conn: psycopg.Connection[Any], system: System, batch: _Batch) -> list[Job]:
    q = system.queries
    inserted: Any = None
    keyed_rows: list[Any] = []
    if batch.unkeyed_json is not None:
        inserted = conn.execute(q.job_insert_many, {"specs": batch.unkeyed_json}).fetchone()
    if batch.keyed_json is not None:
        keyed_rows = conn.execute(q.job_insert_keyed_many, {"specs": batch.keyed_json}).fetchall()
    return _assemble(batch, inserted, keyed_rows)


async def _run_async(conn: psycopg.AsyncConnection[Any], system: System,
                     batch: _Batch) -> list[Job]:
    q = system.queries
    inserted: Any = None
    keyed_rows: list[Any] = []
    if batch.unkeyed_json is not None:
        cur = await conn.execute(q.job_insert_many, {"specs": batch.unkeyed_json})
        inserted = await cur.fetchone()
    if batch.keyed_json is not None:
        cur = await conn.execute(q.job_insert_keyed_many, {"specs": batch.keyed_json})
        keyed_rows = await cur.fetchall()
    return _assemble(batch, inserted, keyed_rows)


def _needs_transaction(batch: _Batch) -> bool:
    return batch.unkeyed_json is not None and batch.keyed_json is not None


def add_jobs(system: System, specs: Iterable[SpecLike], *,
             conn: psycopg.Connection[Any] | None = None) -> list[Job]:
    """Enqueue many jobs; returns them as stored, in the order given.

    Each spec is a ``JobSpec`` or a mapping with the same fields. With ``conn``, the jobs
    are written in that connection's current transaction (they exist if and only if it
    commits); without, they commit before this returns.
    """
    batch = _prepare(system, specs)
    if not batch.specs:
        return []
    if conn is not None:
        if _needs_transaction(batch):
            with conn.transaction():
                return _run(conn, system, batch)
        return _run(conn, system, batch)
    with system.pool.connection() as pooled:
        if _needs_transaction(batch):
            with pooled.transaction():
                return _run(pooled, system, batch)
        return _run(pooled, system, batch)


async def add_jobs_async(system: System, specs: Iterable[SpecLike], *,
                         conn: psycopg.AsyncConnection[Any] | None = None) -> list[Job]:
    """The async twin of ``add_jobs``."""
    batch = _prepare(system, specs)
    if not batch.specs:
        return []
    if conn is not None:
        if _needs_transaction(batch):
            async with conn.transaction():
                return await _run_async(conn, system, batch)
        return await _run_async(conn, system, batch)
    pool = await system.async_pool()
    async with pool.connection() as pooled:
        if _needs_transaction(batch):
            async with pooled.transaction():
                return await _run_async(pooled, system, batch)
        return await _run_async(pooled, system, batch)


def add_job(system: System, task: str, payload: Any = None, *,
            conn: psycopg.Connection[Any] | None = None, **options: Any) -> Job:
    """Enqueue one job; returns it as stored.

    Options (all optional): ``queue_name``, ``run_at``, ``max_attempts``, ``priority``,
    ``job_key``, ``job_key_mode``, ``flags``. ``job.outcome`` tells whether the job was
    inserted, replaced a pending job with the same key, or was deduplicated (an existing job
    was kept and nothing added).
    """
    spec = JobSpec.coerce({"task": task, "payload": payload, **options})
    return add_jobs(system, [spec], conn=conn)[0]


async def add_job_async(system: System, task: str, payload: Any = None, *,
                        conn: psycopg.AsyncConnection[Any] | None = None,
                        **options: Any) -> Job:
    """The async twin of ``add_job``."""
    spec = JobSpec.coerce({"task": task, "payload": payload, **options})
    return (await add_jobs_async(system, [spec], conn=conn))[0]
