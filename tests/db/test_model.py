"""A model-based test of the job life cycle (reliability research §5.3, item 16).

Hypothesis drives random sequences of the statements the engine uses (skivi.db.queries:
job_claim, job_complete_many, job_fail_many, job_release_many, job_rescue, engine_register)
against a real database, from up to three fake engines, and compares the database after
every step with a reference model of each job: waiting / running (engine, lease) / done /
exhausted, its attempts, and which serial queue it holds.

Enqueue, claim, succeed, raise (retry), crash (a killed child: the same statement, counted),
give up at once (no handler), release (graceful stop), kill an engine (its connection closes,
its liveness lock goes), rescue, and late writes that carry the old claims of an engine that
was killed or stopped: the model says exactly which rows each statement must touch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from skivi.db import queries
from skivi.db.queries import Queries, for_schema
from tests.support.db import connect

SCHEMA = "skivi"
SLOTS = 3
QUEUES = [None, "q1", "q2"]


@dataclass
class JobModel:
    id: int
    queue: str | None
    max_attempts: int
    state: str = "waiting"  # waiting, running, done, exhausted
    attempts: int = 0
    lease: int = 0
    engine: int | None = None


@dataclass
class EngineSlot:
    id: int
    conn: psycopg.Connection[Any] | None  # holds the liveness lock while the engine lives
    hand: list[tuple[int, int]]  # every (job, lease) this engine was given by a claim

    @property
    def alive(self) -> bool:
        return self.conn is not None


class JobLifeCycle(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.q: Queries = for_schema(SCHEMA)
        self.db = connect(url)
        self.db.execute("truncate skivi.job, skivi.job_running, skivi.job_queue, "
                        "skivi.job_history, "
                        "skivi.engine")
        self.jobs: dict[int, JobModel] = {}
        self.slots: list[EngineSlot | None] = [None] * SLOTS
        self.unrescued: set[int] = set()  # engines killed whose row is still there
        self.retired: list[EngineSlot] = []  # engines killed or stopped: late writers

    def teardown(self) -> None:
        for slot in [*self.slots, *self.retired]:
            if slot is not None and slot.conn is not None:
                slot.conn.close()
        self.db.close()

    # -- helpers --------------------------------------------------------------------------
    def _alive(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None and s.alive]

    def _pick(self, hand: list[tuple[int, int]], picks: list[int]) -> list[tuple[int, int]]:
        if not hand:
            return []
        return sorted({hand[p % len(hand)] for p in picks})

    def _valid(self, engine: int, pairs: list[tuple[int, int]]) -> list[int]:
        """Which of these claims still hold: the job runs under this engine and lease."""
        out = []
        for job, lease in pairs:
            m = self.jobs[job]
            if m.state == "running" and m.engine == engine and m.lease == lease:
                out.append(job)
        return out

    def _finish(self, job: int, state: str) -> None:
        m = self.jobs[job]
        m.state, m.engine = state, None

    # -- rules ----------------------------------------------------------------------------
    @rule(n=st.integers(1, 4), queue=st.sampled_from(QUEUES),
          max_attempts=st.integers(1, 3), priority=st.integers(0, 1))
    def enqueue(self, n: int, queue: str | None, max_attempts: int, priority: int) -> None:
        specs = [{"task": "t", "queue_name": queue, "max_attempts": max_attempts,
                  "priority": priority} for _ in range(n)]
        rows = self.db.execute("select id from skivi.add_jobs(%s::jsonb)",
                               [json.dumps(specs)]).fetchall()
        for (job,) in rows:
            self.jobs[job] = JobModel(job, queue, max_attempts)

    @precondition(lambda self: any(s is None or not s.alive for s in self.slots))
    @rule(data=st.data())
    def start_engine(self, data: st.DataObject) -> None:
        free = [i for i, s in enumerate(self.slots) if s is None or not s.alive]
        i = data.draw(st.sampled_from(free))
        conn = connect(self.url)
        engine = queries.engine_register.run(
            conn, self.q, hostname="model", pid=0, version="test",
            lease_timeout=30.0, processes=1, concurrency=1)
        self.slots[i] = EngineSlot(engine, conn, [])

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data(), limit=st.integers(1, 5))
    def claim(self, data: st.DataObject, limit: int) -> None:
        slot = self.slots[data.draw(st.sampled_from(self._alive()))]
        assert slot is not None
        # The model's answer, ordered by (priority, run_at, id) as the database stores them.
        waiting = {r[0]: (r[1], r[2], r[0]) for r in self.db.execute(
            "select id, priority, run_at from skivi.job_live where locked_by is null")}
        busy = {m.queue for m in self.jobs.values() if m.state == "running" and m.queue}
        heads: dict[str, int] = {}
        candidates = []
        for job, _key in sorted(waiting.items(), key=lambda kv: kv[1]):
            queue = self.jobs[job].queue
            if queue is None:
                candidates.append(job)
            elif queue not in busy and queue not in heads:
                heads[queue] = job
                candidates.append(job)
        expected = candidates[:limit]
        rows = queries.job_claim.run(self.db, self.q, engine=slot.id, limit=limit,
                                     serial_limit=limit, max_bytes=1 << 40)
        got = [(r[queries.CLAIM_ID], r[queries.CLAIM_LEASE]) for r in rows]
        assert sorted(j for j, _ in got) == sorted(expected), (got, expected, waiting)
        for job, lease in got:
            m = self.jobs[job]
            m.state, m.engine, m.attempts, m.lease = "running", slot.id, m.attempts + 1, \
                m.lease + 1
            assert lease == m.lease
            slot.hand.append((job, lease))

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data(), picks=st.lists(st.integers(0, 99), max_size=4))
    def complete(self, data: st.DataObject, picks: list[int]) -> None:
        slot = self.slots[data.draw(st.sampled_from(self._alive()))]
        assert slot is not None
        self._complete(slot.id, self._pick(slot.hand, picks))

    def _complete(self, engine: int, pairs: list[tuple[int, int]]) -> None:
        expected = self._valid(engine, pairs)
        rows = queries.job_complete_many.run(
            self.db, self.q, engine=engine, ids=[p[0] for p in pairs],
            leases=[p[1] for p in pairs], history=False)
        assert sorted(r[queries.COMPLETED_ID] for r in rows) == sorted(expected)
        for job in expected:
            self._finish(job, "done")

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data(), picks=st.lists(st.integers(0, 99), max_size=4),
          final=st.sampled_from([None, None, "no_handler"]))
    def fail(self, data: st.DataObject, picks: list[int], final: str | None) -> None:
        """A handler raised, its child was killed (the same write), or there is no handler."""
        slot = self.slots[data.draw(st.sampled_from(self._alive()))]
        assert slot is not None
        self._fail(slot.id, self._pick(slot.hand, picks), final)

    def _fail(self, engine: int, pairs: list[tuple[int, int]], final: str | None) -> None:
        expected = {}
        for job in self._valid(engine, pairs):
            m = self.jobs[job]
            expected[job] = "failed" if final is None and m.attempts < m.max_attempts \
                else "exhausted"
        n = len(pairs)
        rows = queries.job_fail_many.run(
            self.db, self.q, engine=engine, ids=[p[0] for p in pairs],
            leases=[p[1] for p in pairs], errors=["boom"] * n, delays=[0.0] * n,
            finals=[final] * n, payloads=[None] * n, attempts=[None] * n,
            tracebacks=[None] * n)
        assert {r[queries.FAILED_ID]: r[queries.FAILED_OUTCOME] for r in rows} == expected
        for job, outcome in expected.items():
            self._finish(job, "waiting" if outcome == "failed" else "exhausted")

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data(), picks=st.lists(st.integers(0, 99), max_size=4))
    def release(self, data: st.DataObject, picks: list[int]) -> None:
        slot = self.slots[data.draw(st.sampled_from(self._alive()))]
        assert slot is not None
        self._release(slot.id, self._pick(slot.hand, picks))

    def _release(self, engine: int, pairs: list[tuple[int, int]]) -> None:
        expected = self._valid(engine, pairs)
        released = queries.job_release_many.run(self.db, self.q, engine=engine,
                                                ids=[p[0] for p in pairs],
                                                leases=[p[1] for p in pairs])
        assert sorted(released) == sorted(expected)
        for job in expected:
            m = self.jobs[job]
            self._finish(job, "waiting")
            m.attempts = max(m.attempts - 1, 0)

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data())
    def stop_engine(self, data: st.DataObject) -> None:
        """A graceful stop: every claim in hand goes back, the engine deregisters."""
        i = data.draw(st.sampled_from(self._alive()))
        slot = self.slots[i]
        assert slot is not None and slot.conn is not None
        self._release(slot.id, sorted(set(slot.hand)))
        queries.engine_deregister.run(slot.conn, self.q, engine=slot.id)
        slot.conn.close()
        slot.conn = None
        self.retired.append(slot)

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data())
    def kill_engine(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._alive()))
        slot = self.slots[i]
        assert slot is not None and slot.conn is not None
        slot.conn.close()
        slot.conn = None
        # Dead is a lease run out: no heartbeat for longer than lease_timeout.
        self.db.execute("update skivi.engine set heartbeat_at = now() - interval '1 hour' "
                        "where id = %s", [slot.id])
        self.unrescued.add(slot.id)
        self.retired.append(slot)

    @precondition(lambda self: bool(self._alive()))
    @rule(data=st.data())
    def rescue(self, data: st.DataObject) -> None:
        slot = self.slots[data.draw(st.sampled_from(self._alive()))]
        assert slot is not None
        dead = self.unrescued | {m.engine for m in self.jobs.values()
                                 if m.state == "running" and m.engine is not None
                                 and m.engine not in {s.id for s in self.slots
                                                      if s is not None and s.alive}}
        retried = exhausted = 0
        for m in self.jobs.values():
            if m.state == "running" and m.engine in dead:
                if m.attempts < m.max_attempts:
                    self._finish(m.id, "waiting")
                    retried += 1
                else:
                    self._finish(m.id, "exhausted")
                    exhausted += 1
        row = queries.job_rescue.run(self.db, self.q, engine=slot.id, restart_grace=0.0,
                                     orphans=True)
        assert (sorted(row.engines), row.retried, row.exhausted) == (sorted(dead), retried,
                                                                     exhausted)
        self.unrescued.clear()

    @precondition(lambda self: bool(self.retired))
    @rule(data=st.data(), picks=st.lists(st.integers(0, 99), min_size=1, max_size=4),
          kind=st.sampled_from(["complete", "fail", "release"]))
    def late_write(self, data: st.DataObject, picks: list[int], kind: str) -> None:
        """A write carrying the old claims of an engine that is gone (a result flushed after
        its liveness was lost): it may only touch claims that still hold."""
        slot = data.draw(st.sampled_from(self.retired))
        pairs = self._pick(slot.hand, picks)
        if kind == "complete":
            self._complete(slot.id, pairs)
        elif kind == "fail":
            self._fail(slot.id, pairs, None)
        else:
            self._release(slot.id, pairs)

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def database_matches_the_model(self) -> None:
        live = {r[0]: (r[1], r[2], r[3]) for r in self.db.execute(
            "select id, attempts, locked_by, lease from skivi.job_live")}
        expected = {m.id: (m.attempts, m.engine, m.lease) for m in self.jobs.values()
                    if m.state in ("waiting", "running")}
        assert live == expected
        history = dict(self.db.execute("select id, outcome from skivi.job_history").fetchall())
        assert history == {m.id: "exhausted" for m in self.jobs.values()
                           if m.state == "exhausted"}

    @invariant()
    def each_serial_queue_is_held_by_its_running_job(self) -> None:
        held = {r[0]: (r[1], r[2]) for r in self.db.execute(
            "select queue_name, job_id, locked_by from skivi.job_queue where job_id is not null")}
        running = {m.queue: (m.id, m.engine) for m in self.jobs.values()
                   if m.state == "running" and m.queue}
        assert held == running
        assert sum(1 for m in self.jobs.values() if m.state == "running" and m.queue) == \
            len(running), "two jobs of one serial queue run at once"


def test_job_states_follow_the_model_when_claims_results_stops_kills_and_rescues_interleave(
        database: str) -> None:
    run_state_machine_as_test(
        lambda: JobLifeCycle(database),
        settings=settings(max_examples=15, stateful_step_count=40, deadline=None,
                          database=None, suppress_health_check=[HealthCheck.too_slow]))
