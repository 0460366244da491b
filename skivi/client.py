"""Enqueueing: the ``Client`` of an instance, ``add_job`` / ``add_jobs`` and their async twins.

A ``Client`` holds an instance's connection pools (made on first use) and nothing else;
the module functions take a client, or anything that has one (``skivi.System``), so this
module imports nothing of the system or the engine.

Every call runs in three steps:

1. check (pure Python, no I/O): each spec is checked (``JobSpec.check``), its payload is
   validated against the task's schema and encoded once with orjson (``skivi.payload``); a
   bad spec raises before any SQL runs, so nothing is ever half-written;
2. statements for the specs without a job key (``job_insert_many.sql``, up to CHUNK_SIZE
   jobs each; ``job_insert_one.sql`` for a lone one, the commonest call) and one for those
   with a key (``job_insert_keyed_many.sql``), on the caller's
   connection when one is given, so the jobs commit or roll back with the caller's
   transaction; otherwise on a pooled autocommit connection (a single statement is its own
   transaction: one round trip; several are pipelined in one transaction). The caller's
   connection may be a SQLAlchemy session or connection (``skivi.db.connections``). A
   client with a ``relay`` (an engine child's, see ``skivi.engine.relay``) has no pool: the
   checked batch goes to its engine's parent, which runs these statements on its own
   connection;
3. the answers become ``Job`` objects in spec order, each with its ``outcome``.

The client never relies on ``search_path``: every query is schema-qualified.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from skivi.db import pool as dbpool
from skivi.db.connections import (
    AsyncConnectionLike,
    ConnectionLike,
    async_connection,
    jsonb_as_text,
    sync_connection,
)
from skivi.db.queries import (
    InsertedOneRow,
    InsertedRow,
    KeyedInsertRow,
    Queries,
    job_insert_keyed_many,
    job_insert_many,
    job_insert_one,
    job_insert_one_ready,
)
from skivi.instance import Instance
from skivi.job import MAX_ATTEMPTS_DEFAULT, PRIORITY_DEFAULT, EnqueueOutcome, Job, JobSpec
from skivi.job import TASK_IDENTIFIER_MAX as _TASK_MAX
from skivi.payload import PayloadGate

__all__ = ["Client", "HasClient", "Interceptor", "add_job", "add_job_async", "add_jobs",
           "add_jobs_async"]

SpecLike = JobSpec | Mapping[str, Any]

APPLICATION_NAME = "skivi-client"


class Relay(Protocol):
    """Where a client sends its checked batches made without ``conn=``, for someone else to
    run: an engine child's client, its parent (``skivi.engine.relay``); a Django project's
    system, Django's connection (``skivi.contrib.django``)."""

    joins_transaction: bool
    """Whether the batches are written in the caller's own transaction (Django's
    connection: inside ``atomic()``, the jobs commit or roll back with it), which typed
    tasks then prefer to the running job's engine (``skivi.tasks``)."""

    def run(self, batch: _Batch) -> list[Job]: ...

    async def run_async(self, batch: _Batch) -> list[Job]: ...


class Client:
    """Enqueueing for one instance: a small pool of autocommit connections for calls made
    without a connection, made on first use, and one async pool per event loop; or, given
    a ``relay``, no pool at all: calls made without a connection go through it."""

    def __init__(self, instance: Instance, *, max_size: int | None = None,
                 relay: Relay | None = None) -> None:
        self.instance = instance
        self.relay = relay
        # A child's pooled client (ctx.add_job) is sized by database.child_pool_size instead.
        self.max_size = instance.config.database.pool_max_size if max_size is None \
            else max_size
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._async_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = {}
        self.interceptors: list[Interceptor] = []
        # Whether the schema has insert_job (migration 0009) and this role may run it:
        # asked once, so a client newer than its schema (or than its roles.sql grants)
        # keeps enqueueing through insert_jobs. None: not asked yet.
        self.insert_one: bool | None = None
        """What sees each enqueue before it is written, innermost last (skivi.testing's
        capture and immediate modes); empty outside tests, which costs one check a call."""

    @property
    def client(self) -> Client:
        return self

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The pool, made after one connection was opened and closed: a pool retries in the
        background and would only time out (after 30 s), with the cause in a log line, so
        an unreachable database or a refused login raises DatabaseUnavailable (naming the
        server and the cause) within ``database.connect_timeout`` instead, and no pool is
        kept: the next call tries again."""
        with self._lock:
            if self._pool is None:
                url, db = self.instance.database_url, self.instance.config.database
                dbpool.check_reachable(url, application_name=APPLICATION_NAME,
                                       connect_timeout=db.connect_timeout)
                self._pool = dbpool.make_pool(
                    url, max_size=self.max_size, application_name=APPLICATION_NAME,
                    connect_timeout=db.connect_timeout,
                    prepared_statements=db.prepared_statements)
            return self._pool

    @contextlib.contextmanager
    def pooled_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """``pool.connection()``, but when the pool times out one direct attempt tells a
        database gone away (DatabaseUnavailable, with the cause) from a busy pool (the
        pool's own PoolTimeout)."""
        pool = self.pool
        try:
            conn = pool.getconn()
        except PoolTimeout:
            dbpool.check_reachable(self.instance.database_url,
                                   application_name=APPLICATION_NAME,
                                   connect_timeout=self.instance.config.database.connect_timeout)
            raise
        try:
            with conn:  # commit, or roll back on error, as pool.connection() does
                yield conn
        finally:
            pool.putconn(conn)

    async def async_pool(self) -> AsyncConnectionPool[Any]:
        """The async twin of ``pool``, one per event loop (a pool is bound to its loop)."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            url, db = self.instance.database_url, self.instance.config.database
            await dbpool.check_reachable_async(url, application_name=APPLICATION_NAME,
                                               connect_timeout=db.connect_timeout)
            pool = dbpool.make_async_pool(
                url, max_size=self.max_size, application_name=APPLICATION_NAME,
                connect_timeout=db.connect_timeout, prepared_statements=db.prepared_statements)
            self._async_pools[loop] = pool
            await pool.open()
        return pool

    @contextlib.asynccontextmanager
    async def async_pooled_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The async twin of ``pooled_connection``."""
        pool = await self.async_pool()
        try:
            conn = await pool.getconn()
        except PoolTimeout:
            await dbpool.check_reachable_async(
                self.instance.database_url, application_name=APPLICATION_NAME,
                connect_timeout=self.instance.config.database.connect_timeout)
            raise
        try:
            async with conn:
                yield conn
        finally:
            await pool.putconn(conn)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for loop, apool in list(self._async_pools.items()):
            if not loop.is_closed() and loop.is_running():
                loop.create_task(apool.close())
        self._async_pools.clear()


class Interceptor(Protocol):
    """Sees every enqueue of a client once its specs are checked, before any SQL runs, and
    may answer it itself: then nothing is written and its jobs are what the call returns.
    Each spec's payload is as the database would store it (JSON, decoded)."""

    def intercept(self, specs: list[JobSpec]) -> list[Job] | None:
        """The jobs to return instead of writing, or None to let the write happen."""

    async def intercept_async(self, specs: list[JobSpec]) -> list[Job] | None:
        """The twin of ``intercept`` for ``add_jobs_async``."""


def _stored_specs(client: Client, batch: _Batch) -> list[JobSpec]:
    batch.materialize(client.instance.payload_gate.check)
    out = []
    for spec, payload in zip(batch.specs, batch.payloads, strict=True):
        body = orjson.loads(payload)
        out.append(dataclasses.replace(spec, payload=body) if isinstance(spec, JobSpec)
                   else JobSpec(spec, body))
    return out


def _intercept(client: Client, batch: _Batch) -> list[Job] | None:
    specs = _stored_specs(client, batch)
    answer: list[Job] | None = None
    for interceptor in reversed(client.interceptors):
        got = interceptor.intercept(specs)
        if answer is None:
            answer = got
    return answer


async def _intercept_async(client: Client, batch: _Batch) -> list[Job] | None:
    specs = _stored_specs(client, batch)
    answer: list[Job] | None = None
    for interceptor in reversed(client.interceptors):
        got = await interceptor.intercept_async(specs)
        if answer is None:
            answer = got
    return answer


class HasClient(Protocol):
    """What the enqueue functions take: a ``Client``, or what has one (``skivi.System``)."""

    @property
    def client(self) -> Client: ...


@dataclass(slots=True)
class _Batch:
    """A checked enqueue: what to send and how to pair the answers with the specs.

    ``specs[i]`` is the checked JobSpec, or just the task identifier for the common plain
    ``{"task": ..., "payload": ...}`` dict (no JobSpec is built for those: bulk enqueues of
    100,000 jobs feel every microsecond per spec). ``payloads[i]`` is the encoded payload.

    ``wires``: when every spec is such a dict of a task without a validator, the wire JSON
    of each statement (unkeyed slice of CHUNK_SIZE), encoded in one call per slice by
    ``_check`` (PayloadGate.encode_proven), and ``payloads`` is empty: the payloads exist
    only inside those. ``materialize`` encodes them one by one for what needs them apart
    (interceptors, the engine's relay)."""

    specs: list[JobSpec | str]
    payloads: list[bytes]
    unkeyed: list[int]
    keyed: list[int]
    wires: list[bytes] | None = None
    bodies: list[Any] | None = None  # with wires: the payloads as given

    def unkeyed_chunks(self) -> Iterator[tuple[list[int], Jsonb]]:
        """The unkeyed specs in slices of CHUNK_SIZE, each with its wire JSON, built only
        when asked for (unless ``_check`` built them): the next slice is encoded while the
        server inserts the last."""
        for k, start in enumerate(range(0, len(self.unkeyed), CHUNK_SIZE)):
            part = self.unkeyed[start:start + CHUNK_SIZE]
            if self.wires is not None:
                yield part, _raw_json(self.wires[k])
            else:
                yield part, _raw_json(orjson.dumps([self._wire(i) for i in part]))

    def materialize(self, check: Callable[[str, Any], bytes]) -> None:
        """Encode each payload apart (``payloads``), when only the wires hold them."""
        if self.wires is None or self.bodies is None:
            return
        self.payloads = _encode_each(check, self.specs, self.bodies)
        self.wires = self.bodies = None

    def keyed_json(self) -> Jsonb:
        wires = []
        for i in self.keyed:
            spec = self.specs[i]
            assert isinstance(spec, JobSpec)
            wire = self._wire(i)
            wire["job_key"] = spec.job_key
            if spec.job_key_mode is not None:
                wire["job_key_mode"] = str(spec.job_key_mode)
            wires.append(wire)
        return _raw_json(orjson.dumps(wires))

    def _wire(self, i: int) -> dict[str, Any]:
        spec = self.specs[i]
        payload = orjson.Fragment(self.payloads[i])
        if type(spec) is str:
            return {"task": spec, "payload": payload}
        assert isinstance(spec, JobSpec)
        out: dict[str, Any] = {"task": spec.task, "payload": payload}
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

    def lone_args(self) -> dict[str, Any]:
        """job_insert_one.sql's parameters for the one spec (unkeyed)."""
        spec = self.specs[0]
        payload = self.payloads[0].decode()
        if type(spec) is str:
            return {"task": spec, "payload": payload, "queue_name": None, "run_at": None,
                    "max_attempts": None, "priority": None, "flags": None}
        assert isinstance(spec, JobSpec)
        return {"task": spec.task, "payload": payload, "queue_name": spec.queue_name,
                "run_at": spec.run_at, "max_attempts": spec.max_attempts,
                "priority": spec.priority,
                "flags": None if spec.flags is None else list(spec.flags)}

    @property
    def statements(self) -> int:
        return -(-len(self.unkeyed) // CHUNK_SIZE) + (1 if self.keyed else 0)


# Unkeyed specs go in statements of at most this many jobs. With more than one statement
# they are pipelined (psycopg pipeline mode) in one transaction, so the client encodes and
# builds while the server inserts: measured here, 100,000 jobs went from ~75k to ~120k
# jobs/s with statements of 10,000 (without pipeline mode, libpq before 14, they go one
# after the other in the same transaction). Smaller statements overlap more: one add_jobs
# of 10,000 (the first in its process) 102-106k jobs/s in one statement, 131-133k in
# statements of 5,000, 136-143k of 1,250; of 100,000, 141-143k against 148-149k.
# Atomicity is unchanged: every statement commits or rolls back together.
CHUNK_SIZE = 1_250
_PLAIN_KEYS = frozenset({"task", "payload"})
# Stands for "the statement's now()" in a drafted Job until the answer arrives.
_PENDING = dt.datetime.min.replace(tzinfo=dt.UTC)


def _raw_json(data: bytes) -> Jsonb:
    """Already-encoded JSON, sent as jsonb without being decoded and encoded again."""
    return Jsonb(data, dumps=_identity)


def _identity(data: bytes) -> bytes:
    return data


def _check(client: Client, raw: Iterable[SpecLike]) -> _Batch:
    """Check every spec and encode every payload. Raises before any SQL runs.

    Plain dicts of tasks without a validator are checked first only for their task; their
    payloads are then encoded a statement's worth at a time (_plain_wires), one call per
    slice instead of one per payload: measured here, one add_jobs of 10,000 tiny payloads,
    the first in its process, spent 24-27 ms encoding them one by one."""
    gate = client.instance.payload_gate
    check_payload = gate.check
    specs: list[JobSpec | str] = []
    payloads: list[bytes] = []
    bodies: list[Any] | None = []  # the plain dicts' payloads, until one spec is not plain
    # The plain dicts themselves while each holds its payload (not None): encoded as given,
    # with no copy of each built to encode.
    given: list[dict[str, Any]] | None = []
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
            if body is None:
                body = {}
                given = None
            if bodies is not None and not gate.has_validator(task):
                bodies.append(body)
                if given is not None:
                    given.append(item)
            else:
                if bodies:
                    payloads = _encode_each(check_payload, specs, bodies)
                bodies = None
                payloads.append(check_payload(task, body))
            specs.append(task)
            unkeyed.append(i)
            continue
        if bodies:
            payloads = _encode_each(check_payload, specs, bodies)
        bodies = None
        spec = JobSpec.coerce(item)
        spec.check()
        payloads.append(check_payload(spec.task, {} if spec.payload is None else spec.payload))
        specs.append(spec)
        (unkeyed if spec.job_key is None else keyed).append(i)
    if bodies and len(specs) > 1:
        return _Batch(specs, [], unkeyed, keyed, _plain_wires(gate, specs, bodies, given),
                      bodies)
    if bodies:  # a lone job goes as parameters (lone_args)
        payloads = _encode_each(check_payload, specs, bodies)
    return _Batch(specs, payloads, unkeyed, keyed)


def _encode_each(check: Callable[[str, Any], bytes], tasks: Sequence[JobSpec | str],
                 bodies: Sequence[Any]) -> list[bytes]:
    """The payloads of plain specs (``tasks`` holds their task identifiers) checked and
    encoded one by one: the error, if any, names the offending one."""
    return [check(cast(str, t), b) for t, b in zip(tasks, bodies, strict=True)]


def _plain_wires(gate: PayloadGate, specs: list[JobSpec | str], bodies: list[Any],
                 given: list[dict[str, Any]] | None) -> list[bytes]:
    """The wire JSON of each statement of plain specs, in one encoding per slice when that
    proves every payload in it acceptable (PayloadGate.encode_proven); a slice it does not
    is checked payload by payload, which raises naming the offender, or encodes them.
    ``given``: the specs' own dicts, when each is ``{"task": ..., "payload": not None}``,
    already what a statement sends (10,000 dicts built only to be encoded cost a cold
    add_jobs about a fifth of its time here, most of it the garbage collections they set
    off)."""
    wires = []
    for start in range(0, len(specs), CHUNK_SIZE):
        tasks, part = specs[start:start + CHUNK_SIZE], bodies[start:start + CHUNK_SIZE]
        wire = gate.encode_proven(
            given[start:start + CHUNK_SIZE] if given is not None
            else [{"task": t, "payload": b} for t, b in zip(tasks, part, strict=True)])
        if wire is None:
            checked = _encode_each(gate.check, tasks, part)
            wire = orjson.dumps([{"task": t, "payload": orjson.Fragment(c)}
                                 for t, c in zip(tasks, checked, strict=True)])
        wires.append(wire)
    return wires


def _draft_inserted(batch: _Batch, jobs: list[Job | None]) -> None:
    """The Job objects of the unkeyed specs, but for what only the database knows (ids and
    the statement's now()). Built while the server inserts the pipelined statements, so the
    client's share of a bulk enqueue overlaps the server's."""
    specs, payloads, loads = batch.specs, batch.payloads, orjson.loads
    pending, inserted_outcome = _PENDING, EnqueueOutcome.INSERTED
    if batch.wires is not None:
        # Plain specs only: each statement's payloads decoded in one call, from its wire.
        i = 0
        for wire in batch.wires:
            for sent in loads(wire):
                jobs[i] = Job(0, sent["task"], sent["payload"], None, PRIORITY_DEFAULT,
                              pending, 0, MAX_ATTEMPTS_DEFAULT, None, None, (), None, None, 0,
                              pending, pending, inserted_outcome)
                i += 1
        return
    for i in batch.unkeyed:
        spec = specs[i]
        if type(spec) is str:
            jobs[i] = Job(0, spec, loads(payloads[i]), None, PRIORITY_DEFAULT, pending, 0,
                          MAX_ATTEMPTS_DEFAULT, None, None, (), None, None, 0, pending, pending,
                          inserted_outcome)
            continue
        assert isinstance(spec, JobSpec)
        jobs[i] = Job(
            0, spec.task, loads(payloads[i]), spec.queue_name,
            PRIORITY_DEFAULT if spec.priority is None else spec.priority,
            pending if spec.run_at is None else spec.run_at, 0,
            MAX_ATTEMPTS_DEFAULT if spec.max_attempts is None else spec.max_attempts,
            None, None, tuple(spec.flags) if spec.flags is not None else (),
            None, None, 0, pending, pending, inserted_outcome)


def _finish_inserted(part: list[int], inserted: InsertedRow, jobs: list[Job | None]) -> None:
    """Complete the drafts of one unkeyed statement with its answer, one row: the new ids
    (in spec order) and the statement's now(), which every defaulted timestamp holds."""
    ids_text, now = inserted
    ids = [int(x) for x in ids_text[1:-1].split(",")] if ids_text else []
    if len(ids) != len(part):
        raise RuntimeError("enqueue stored a different number of jobs than specs sent")
    pending = _PENDING
    for i, job_id in zip(part, ids, strict=True):
        job = jobs[i]
        assert job is not None
        job.id = job_id
        job.created_at = job.updated_at = now
        if job.run_at is pending:
            job.run_at = now


def _assemble_keyed(batch: _Batch, rows: Sequence[KeyedInsertRow],
                    jobs: list[Job | None], *, payload_text: bool = False) -> None:
    if len(rows) != len(batch.keyed):
        raise RuntimeError("enqueue returned a different number of rows than specs sent")
    keyed = batch.keyed
    for r in rows:
        # r[0] is the position among the keyed specs. A deduplicated job (or one whose stored
        # array payload was appended to) comes back without a payload: it is not the caller's.
        payload = r[5]
        if payload_text and payload is not None:
            payload = orjson.loads(payload)
        jobs[keyed[r[0]]] = Job(r[2], r[3], payload, r[4], r[6], r[7], r[8], r[9], r[10],
                                r[11], tuple(r[12] or ()), r[13], r[14], r[15], r[16], r[17],
                                EnqueueOutcome(r[1]))


def _atomic(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether several statements need a transaction block of their own to be atomic.

    Not on a connection that is not autocommit and idle (a SQLAlchemy session's, before its
    first statement): there psycopg's ``transaction()`` would BEGIN and COMMIT, committing
    the caller's transaction on their behalf. Its first statement starts the transaction
    the caller commits or rolls back, which makes them atomic already. Elsewhere a block is
    a transaction (autocommit) or a savepoint (in a transaction)."""
    return conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _lone(client: Client, batch: _Batch) -> bool:
    """One job without a key, and insert_job not known to be missing."""
    return len(batch.specs) == 1 and not batch.keyed and client.insert_one is not False


def _run_one(conn: psycopg.Connection[Any], client: Client, batch: _Batch) -> list[Job] | None:
    """A lone unkeyed job through job_insert_one.sql; None when the schema cannot."""
    q = client.instance.queries
    if client.insert_one is None:
        client.insert_one = bool(job_insert_one_ready.run(conn, q, schema=q.schema))
        if not client.insert_one:
            return None
    jobs: list[Job | None] = [None]
    _draft_inserted(batch, jobs)
    _finish_one(jobs, job_insert_one.run(conn, q, **batch.lone_args()))
    return cast(list[Job], jobs)


async def _run_one_async(conn: psycopg.AsyncConnection[Any], client: Client,
                         batch: _Batch) -> list[Job] | None:
    q = client.instance.queries
    if client.insert_one is None:
        client.insert_one = bool(await job_insert_one_ready.run_async(conn, q,
                                                                      schema=q.schema))
        if not client.insert_one:
            return None
    jobs: list[Job | None] = [None]
    _draft_inserted(batch, jobs)
    _finish_one(jobs, await job_insert_one.run_async(conn, q, **batch.lone_args()))
    return cast(list[Job], jobs)


def _finish_one(jobs: list[Job | None], inserted: InsertedOneRow) -> None:
    job = jobs[0]
    assert job is not None
    job.id, now = inserted
    job.created_at = job.updated_at = now
    if job.run_at is _PENDING:
        job.run_at = now


def _run(conn: psycopg.Connection[Any], q: Queries, batch: _Batch) -> list[Job]:
    jobs: list[Job | None] = [None] * len(batch.specs)
    sent: list[tuple[list[int], psycopg.Cursor[Any]]] = []
    keyed: psycopg.Cursor[Any] | None = None
    with contextlib.ExitStack() as stack:
        if batch.statements > 1:
            if _atomic(conn):
                stack.enter_context(conn.transaction())
            if psycopg.Pipeline.is_supported():  # libpq 14 or later
                stack.enter_context(conn.pipeline())
        # Sent now, read after the pipeline: see CHUNK_SIZE.
        for part, wire in batch.unkeyed_chunks():
            sent.append((part, job_insert_many.execute(conn, q, specs=wire)))
        if batch.keyed:
            keyed = job_insert_keyed_many.execute(conn, q, specs=batch.keyed_json())
        _draft_inserted(batch, jobs)
    for part, cur in sent:
        _finish_inserted(part, job_insert_many.fetch(cur), jobs)
    if keyed is not None:
        _assemble_keyed(batch, job_insert_keyed_many.fetch(keyed), jobs,
                        payload_text=jsonb_as_text(conn))
    return [j for j in jobs if j is not None]


async def _run_async(conn: psycopg.AsyncConnection[Any], q: Queries,
                     batch: _Batch) -> list[Job]:
    jobs: list[Job | None] = [None] * len(batch.specs)
    sent: list[tuple[list[int], psycopg.AsyncCursor[Any]]] = []
    keyed: psycopg.AsyncCursor[Any] | None = None
    async with contextlib.AsyncExitStack() as stack:
        if batch.statements > 1:
            if _atomic(conn):
                await stack.enter_async_context(conn.transaction())
            if psycopg.AsyncPipeline.is_supported():  # libpq 14 or later
                await stack.enter_async_context(conn.pipeline())
        # Sent now, read after the pipeline: see CHUNK_SIZE.
        for part, wire in batch.unkeyed_chunks():
            sent.append((part, await job_insert_many.execute_async(conn, q, specs=wire)))
        if batch.keyed:
            keyed = await job_insert_keyed_many.execute_async(conn, q,
                                                              specs=batch.keyed_json())
        _draft_inserted(batch, jobs)
    for part, cur in sent:
        _finish_inserted(part, await job_insert_many.fetch_async(cur), jobs)
    if keyed is not None:
        _assemble_keyed(batch, await job_insert_keyed_many.fetch_async(keyed), jobs)
    return [j for j in jobs if j is not None]


def add_jobs(target: HasClient, specs: Iterable[SpecLike], *,
             conn: ConnectionLike | None = None) -> list[Job]:
    """Enqueue many jobs; returns them as stored, in the order given.

    Each spec is a ``JobSpec`` or a mapping with the same fields. With ``conn`` (a psycopg
    connection, or a SQLAlchemy ``Session`` or ``Connection`` on the psycopg driver), the
    jobs are written in its current transaction (they exist if and only if it commits;
    nothing is committed here); without, they commit before this returns. Every spec is
    checked before any SQL runs; the jobs are written all together or not at all.
    """
    client = target.client
    batch = _check(client, specs)
    if not batch.specs:
        return []
    if client.interceptors and (held := _intercept(client, batch)) is not None:
        return held
    q = client.instance.queries
    if conn is not None:
        given = sync_connection(conn)
        if _lone(client, batch) and (done := _run_one(given, client, batch)) is not None:
            return done
        return _run(given, q, batch)
    if client.relay is not None:
        batch.materialize(client.instance.payload_gate.check)
        return client.relay.run(batch)
    with client.pooled_connection() as pooled:
        if _lone(client, batch) and (done := _run_one(pooled, client, batch)) is not None:
            return done
        return _run(pooled, q, batch)


async def add_jobs_async(target: HasClient, specs: Iterable[SpecLike], *,
                         conn: AsyncConnectionLike | None = None) -> list[Job]:
    """The async twin of ``add_jobs``; ``conn`` is a psycopg ``AsyncConnection``, or a
    SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` on the psycopg driver."""
    client = target.client
    batch = _check(client, specs)
    if not batch.specs:
        return []
    if client.interceptors and (held := await _intercept_async(client, batch)) is not None:
        return held
    q = client.instance.queries
    if conn is not None:
        given = await async_connection(conn)
        if _lone(client, batch) and (
                done := await _run_one_async(given, client, batch)) is not None:
            return done
        return await _run_async(given, q, batch)
    if client.relay is not None:
        batch.materialize(client.instance.payload_gate.check)
        return await client.relay.run_async(batch)
    async with client.async_pooled_connection() as pooled:
        if _lone(client, batch) and (
                done := await _run_one_async(pooled, client, batch)) is not None:
            return done
        return await _run_async(pooled, q, batch)


def add_job(target: HasClient, task: str, payload: Any = None, *,
            conn: ConnectionLike | None = None, **options: Any) -> Job:
    """Enqueue one job; returns it as stored.

    Options (all optional): ``queue_name``, ``run_at``, ``max_attempts``, ``priority``,
    ``job_key``, ``job_key_mode``, ``flags``. ``job.outcome`` tells whether the job was
    inserted, replaced a pending job with the same key, or was deduplicated (an existing job
    was kept and nothing added).
    """
    spec = JobSpec.coerce({"task": task, "payload": payload, **options})
    return add_jobs(target, [spec], conn=conn)[0]


async def add_job_async(target: HasClient, task: str, payload: Any = None, *,
                        conn: AsyncConnectionLike | None = None,
                        **options: Any) -> Job:
    """The async twin of ``add_job``."""
    spec = JobSpec.coerce({"task": task, "payload": payload, **options})
    return (await add_jobs_async(target, [spec], conn=conn))[0]
