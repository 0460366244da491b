"""The chaos test: the guarantees of README.md ("Guarantees") under faults, judged by a ledger.

Three engines (``python -m skivi.engine``, 2 children each) and two producers share a
PostgreSQL server of the test's own. The producers commit jobs in their own transactions
(some rolled back, some with job keys) and write every committed job id to
``chaos_ledger.committed`` in the SAME transaction, so the ledger of committed jobs is exact.
Every handler writes its execution to ``chaos_ledger.exec`` before it works (see
tests/chaos/tasks). Triggers record every removal of a job row (a final state) and every
attempt to write a history row (tests/chaos/conftest.py).

While the producers run, the test injects faults: SIGKILL a random child every few seconds,
SIGKILL a random engine (and start a new one), SIGTERM an engine (and start a new one once it
has exited), terminate every Skivi backend with pg_terminate_backend, restart PostgreSQL.

Then it drains, stops the engines and checks, from the ledger and the database:
    lost                 committed jobs without a final state            must be 0
    double finals        jobs removed twice or with two history writes   must be 0
    completed unrun      jobs completed without any execution            must be 0
    same claim twice     two executions under one claim (job, lease)     must be 0
    unexplained repeats  a job ran again although no process running it
                         was killed or lost, and it did not raise        must be 0
    unexpected exhausted exhausted jobs that are neither poison nor a
                         keyed job superseded while running             must be 0
    left locked          rows still in skivi.job                         must be 0
and reports the time from each engine SIGKILL to its unfinished jobs running again.

CI mode: 20,000 jobs over about a minute. Soak mode (tests/chaos/conftest.py): 10x both.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import skivi
from skivi.engine.process import children_of
from tests.support.engines import (
    EngineGroup,
    EngineProcess,
    child_env,
    engine_argv,
    log_of,
    wait_registered,
)
from tests.support.servers import PrivateServer
from tests.support.soak import soak_mode
from tests.support.wait import wait_for

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SEED = 20_260_808

# An engine's children may be replaced; an engine's identity may change after it was declared
# dead. How long after a connection fault an execution may still start on a claim taken before
# it (the engine notices at its next heartbeat, worker.heartbeat_interval = 1 s, then its buffer
# of claimed jobs drains) and how long before it one may still have been running or have its
# result waiting to be written.
FAULT_AFTER = 15.0
FAULT_BEFORE = 5.0
MAX_RESCUE_SECONDS = 10.0
# Keyed jobs get their own max_attempts: one replaced while it runs has its attempts raised to
# it, which the oracle must tell from a later claim (reached only after 20 claims).
KEYED_MAX_ATTEMPTS = 20
RESTART_AFTER = 3.0  # seconds from an engine SIGKILL to starting a new engine


@dataclass(frozen=True)
class Settings:
    jobs: int
    produce_seconds: float
    cycles: int  # the fault pattern (FAULT_PATTERN) repeats once per cycle
    cycle_seconds: float
    child_kill_every: float
    drain_timeout: float
    engines: int = 3
    processes: int = 2
    concurrency: int = 4
    poison: int = 5
    producers: int = 2


CI = Settings(jobs=20_000, produce_seconds=60.0, cycles=1, cycle_seconds=60.0,
              child_kill_every=3.0, drain_timeout=120.0)
SOAK = Settings(jobs=200_000, produce_seconds=600.0, cycles=10, cycle_seconds=60.0,
                child_kill_every=3.0, drain_timeout=600.0, poison=50)

# (seconds into a cycle, fault)
FAULT_PATTERN = [
    (10.0, "engine_kill"),
    (20.0, "sigterm"),
    (27.0, "terminate_backends"),
    (35.0, "engine_kill"),
    (42.0, "postgres_restart"),
    (50.0, "sigterm"),
]


# -- the fleet of engines ---------------------------------------------------------------------


@dataclass(eq=False)
class Engine:
    """An engine of the fleet, and what the injector did to it."""

    proc: EngineProcess
    stopping: bool = False  # SIGTERMed by the injector
    ended: float | None = None  # when the injector saw it exit

    @property
    def pid(self) -> int:
        return self.proc.pid


class Fleet(EngineGroup):
    """The chaos engines (tests/chaos/tasks), each logging to a file in ``log_dir``; leaving
    the ``with`` block SIGKILLs any still running."""

    def __init__(self, url: str, log_dir: Path, settings: Settings) -> None:
        super().__init__(log_dir)
        self.url = url
        self.settings = settings
        self.engines: list[Engine] = []

    def start(self) -> Engine:
        s = self.settings
        argv = engine_argv(self.url, TASKS_DIR, "--shutdown-timeout", "20",
                           processes=s.processes, concurrency=s.concurrency)
        engine = Engine(self.spawn(argv, child_env({"CHAOS_LEDGER_URL": self.url})))
        self.engines.append(engine)
        return engine

    def running(self) -> list[Engine]:
        return [e for e in self.engines if e.proc.poll() is None and not e.stopping]


# -- faults -----------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    at: float
    pid: int = 0  # the process signalled (engine or child)
    engine_pid: int = 0  # the engine a killed child belonged to
    pids: frozenset[int] = frozenset()  # for an engine SIGKILL: the engine and its children
    until: float = 0.0  # end of a PostgreSQL restart; exit time of a SIGTERMed engine; when
    # the children of a SIGKILLed engine were all gone
    exit_code: int | None = None
    detail: str = ""


class Injector:
    """Injects the faults, from the test's main thread, on a schedule."""

    def __init__(self, server: PrivateServer, fleet: Fleet, settings: Settings,
                 rng: random.Random) -> None:
        self.server = server
        self.fleet = fleet
        self.settings = settings
        self.rng = rng
        self.faults: list[Fault] = []
        self.restarts: list[float] = []  # when to start an engine again (monotonic)
        self._conn: psycopg.Connection[Any] | None = None

    def query(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        for _ in range(100):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.server.url, autocommit=True,
                                                 application_name="chaos-injector")
                return self._conn.execute(text, args or None).fetchall()  # type: ignore[arg-type]
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        self._conn.close()
                self._conn = None
                threading.Event().wait(0.1)
        raise AssertionError("the injector cannot reach the database")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def schedule(self) -> list[tuple[float, str]]:
        s = self.settings
        events = [(c * s.cycle_seconds + t, kind) for c in range(s.cycles)
                  for t, kind in FAULT_PATTERN]
        t = 2.0
        while t < s.produce_seconds:
            events.append((t, "child_kill"))
            t += s.child_kill_every
        return sorted(e for e in events if e[0] < s.produce_seconds)

    def run(self, start: float) -> None:
        pending = collections.deque(self.schedule())
        tick = threading.Event()
        give_up = self.settings.produce_seconds + 120
        while pending or self.restarts or any(e.stopping and e.ended is None
                                              for e in self.fleet.engines):
            self._reap_stopped()
            for due in [t for t in self.restarts if t <= time.monotonic()]:
                self.restarts.remove(due)
                self.fleet.start()
            now = time.monotonic() - start
            assert now < give_up, "a SIGTERMed engine did not exit"
            while pending and pending[0][0] <= now:
                _, kind = pending.popleft()
                getattr(self, kind)()
            tick.wait(0.05)
        self._reap_stopped()

    # One method per fault kind.
    def child_kill(self) -> None:
        engines = self.fleet.running()
        self.rng.shuffle(engines)
        for engine in engines:
            kids = children_of(engine.pid)
            if kids:
                victim = self.rng.choice(kids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    self.faults.append(Fault("child_kill", time.time(), victim, engine.pid))
                return

    def engine_kill(self) -> None:
        """SIGKILL an engine with a job started and not finished if there is one within a
        few seconds (so the rescue time is measured), else a random one."""
        engines = self.fleet.running()
        if len(engines) < 2:
            return
        by_pid = {e.pid: e for e in engines}
        busy: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + 5.0
        while not busy and time.monotonic() < deadline:
            busy = [r for r in self.query(
                "select en.pid from skivi.job_live j join skivi.engine en on en.id = j.locked_by "
                "join chaos_ledger.exec x on x.job_id = j.id and x.ppid = en.pid "
                "and x.attempt = j.attempts") if r[0] in by_pid]
            if not busy:
                threading.Event().wait(0.01)
        victim = by_pid[busy[0][0]] if busy else self.rng.choice(engines)
        pids = frozenset({victim.pid, *children_of(victim.pid)})
        victim.proc.kill()
        at = time.time()
        victim.proc.wait()
        victim.ended = time.time()
        # Its children die with it (PR_SET_PDEATHSIG), a moment later: until then they may
        # still start a job they were given.
        wait_for(lambda: not any(_running(p) for p in pids), timeout=10,
                 what="the killed engine's children to die")
        self.faults.append(Fault("engine_kill", at, victim.pid, pids=pids, exit_code=-9,
                                 until=time.time()))
        # Started again a little later, so the jobs are rescued by the surviving engines
        # (within worker.rescue_interval), not by the new engine's first rescue round.
        self.restarts.append(time.monotonic() + RESTART_AFTER)

    def sigterm(self) -> None:
        engines = self.fleet.running()
        if len(engines) < 2:
            return
        victim = self.rng.choice(engines)
        victim.stopping = True
        victim.proc.send_signal(signal.SIGTERM)
        self.faults.append(Fault("sigterm", time.time(), victim.pid,
                                 pids=frozenset({victim.pid, *children_of(victim.pid)})))

    def _reap_stopped(self) -> None:
        for engine in self.fleet.engines:
            if engine.stopping and engine.ended is None and engine.proc.poll() is not None:
                engine.ended = time.time()
                for f in self.faults:
                    if f.kind == "sigterm" and f.pid == engine.pid:
                        f.until, f.exit_code = engine.ended, engine.proc.returncode
                self.fleet.start()

    def terminate_backends(self) -> None:
        rows = self.query(
            "select pg_terminate_backend(pid), application_name from pg_stat_activity "
            "where application_name like 'skivi%%' and pid <> pg_backend_pid()")
        names = collections.Counter(r[1] for r in rows)
        self.faults.append(Fault("terminate_backends", time.time(),
                                 detail=", ".join(f"{n} x{c}" for n, c in sorted(names.items()))))

    def postgres_restart(self) -> None:
        at = time.time()
        self.server.restart()
        self.faults.append(Fault("postgres_restart", at, until=time.time()))


# -- producers --------------------------------------------------------------------------------


@dataclass
class ProducerStats:
    transactions: int = 0
    rolled_back: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def make_spec(rng: random.Random, keyed: bool) -> dict[str, Any]:
    r = rng.random()
    if r < 0.01:
        return {"task": "flaky", "payload": {"ms": 1}}
    if r < 0.03:
        ms = rng.uniform(50, 200)
    else:
        ms = rng.uniform(0, 5)
    spec: dict[str, Any] = {"task": "work" if rng.random() < 0.7 else "work_async",
                            "payload": {"ms": round(ms, 2)}}
    if keyed:
        spec["max_attempts"] = KEYED_MAX_ATTEMPTS
        spec["job_key"] = f"key-{rng.randrange(200)}"
        spec["job_key_mode"] = rng.choice(["replace", "preserve_run_at", "unsafe_dedupe"])
    return spec


def produce(url: str, index: int, count: int, seconds: float, poison: int, keyed_share: float,
            stats: ProducerStats, stop: threading.Event) -> None:
    """Commit about ``count`` jobs over ``seconds``, in transactions of 1-20 jobs, 10% of
    them rolled back; each committed id goes to the ledger in the same transaction."""
    rng = random.Random(SEED + index)
    system = skivi.create_system({"database": {"connection_string": url}})
    conn: psycopg.Connection[Any] | None = None
    poison_at = sorted(rng.sample(range(count), poison)) if poison else []
    done = 0
    start = time.monotonic()
    rate = count / seconds
    pause = threading.Event()
    try:
        while done < count and not stop.is_set():
            ahead = start + done / rate - time.monotonic()
            if ahead > 0:
                pause.wait(ahead)
            size = min(rng.randint(1, 20), count - done)
            specs = [make_spec(rng, rng.random() < keyed_share) for _ in range(size)]
            poisoned = sum(1 for p in poison_at if p < done + size)
            specs += [{"task": "poison", "max_attempts": 3}] * poisoned
            rollback = rng.random() < 0.1
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(url, application_name="chaos-producer")
                with conn.transaction():
                    jobs = skivi.add_jobs(system, specs, conn=conn)
                    conn.execute(
                        "insert into chaos_ledger.committed (job_id, producer, keyed, at) "
                        "select unnest(%s::bigint[]), %s, unnest(%s::bool[]), %s",
                        ([j.id for j in jobs], index, ["job_key" in s for s in specs],
                         time.time()))
                    if rollback:
                        raise psycopg.Rollback()
                stats.transactions += 1
                if rollback:
                    stats.rolled_back += 1
                    continue
                del poison_at[:poisoned]
            except psycopg.Error as exc:
                # Committed or not, the ledger says which: it is in the same transaction.
                stats.errors[type(exc).__name__] += 1
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                pause.wait(0.05)
            done += size
    finally:
        if conn is not None:
            conn.close()
        system.stop()


# -- the oracle -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exec:
    job: int
    task: str
    pid: int
    ppid: int
    attempt: int
    at: float
    holder: int | None
    lease: int | None
    row_attempts: int | None
    row_max_attempts: int | None


@dataclass
class Verdict:
    jobs: int = 0
    executions: int = 0
    completed: int = 0
    exhausted: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: list[int] = field(default_factory=list)
    left_in_table: int = 0
    left_locked: int = 0
    double_final: list[int] = field(default_factory=list)
    completed_unrun: list[int] = field(default_factory=list)
    same_claim_twice: list[list[Exec]] = field(default_factory=list)
    repeats: collections.Counter[str] = field(default_factory=collections.Counter)
    unexplained: list[tuple[Exec, list[Exec]]] = field(default_factory=list)
    unexpected_exhausted: list[tuple[int, str, str]] = field(default_factory=list)
    zombies: int = 0
    rescue_seconds: list[tuple[int, float, int]] = field(default_factory=list)
    engine_rows_left: int = 0


def judge(url: str, faults: list[Fault]) -> Verdict:
    v = Verdict()
    with psycopg.connect(url, autocommit=True, application_name="chaos-oracle") as c:
        committed = {r[0]: r[1] for r in c.execute(
            "select job_id, bool_or(keyed) from chaos_ledger.committed group by job_id")}
        execs = [Exec(*r) for r in c.execute(
            "select job_id, task, pid, ppid, attempt, at, holder, holder_lease, "
            "holder_attempts, holder_max_attempts from chaos_ledger.exec order by at")]
        final_rows: dict[int, list[tuple[int, int | None]]] = collections.defaultdict(list)
        for job, attempts, locked_by in c.execute(
                "select job_id, attempts, locked_by from chaos_ledger.final"):
            final_rows[job].append((attempts, locked_by))
        history_writes = collections.Counter(r[0] for r in c.execute(
            "select job_id from chaos_ledger.history_attempt"))
        history = {r[0]: (r[1], r[2], r[3]) for r in c.execute(
            "select id, outcome, reason, task_identifier from skivi.job_history")}
        v.left_in_table, v.left_locked = c.execute(
            "select count(*), count(locked_by) from skivi.job_live").fetchone()  # type: ignore[misc]
        engine_ids: dict[int, set[int]] = collections.defaultdict(set)
        for eid, pid in c.execute("select id, pid from chaos_ledger.engine"):
            engine_ids[pid].add(eid)
        # Identities given up by a live process: declared dead (rescued) while it ran on.
        replaced = {r[0] for r in c.execute(
            "select a.id from chaos_ledger.engine a join chaos_ledger.engine b "
            "on b.pid = a.pid and b.id > a.id")}
        v.engine_rows_left = c.execute("select count(*) from skivi.engine").fetchone()[0]  # type: ignore[index]

    v.jobs = len(committed)
    v.executions = len(execs)
    by_job: dict[int, list[Exec]] = collections.defaultdict(list)
    for e in execs:
        by_job[e.job].append(e)
    v.lost = sorted(set(committed) - set(final_rows))
    v.double_final = sorted({j for j, rows in final_rows.items() if len(rows) > 1}
                            | {j for j, n in history_writes.items() if n > 1})
    completed = (set(final_rows) - set(history)) & set(committed)
    v.completed = len(completed)
    v.completed_unrun = sorted(completed - set(by_job))
    for job, (outcome, reason, task) in history.items():
        v.exhausted[f"{task} ({reason})"] += 1
        if outcome == "exhausted" and task != "poison" and not committed.get(job, False):
            v.unexpected_exhausted.append((job, task, str(reason)))

    def superseded(e: Exec) -> bool:
        """A keyed job replaced while it ran keeps running, its attempts raised to its
        max_attempts (no retry): its claim still holds."""
        return committed.get(e.job, False) and e.row_attempts == e.row_max_attempts

    def is_zombie(e: Exec) -> bool:
        """Whether e ran on a claim that was no longer its engine's when it started: the job
        row was held by another engine, by nobody, or by its engine under a later claim (every
        claim counts an attempt, so a later claim has a larger attempt number)."""
        return (e.holder is None or e.holder not in engine_ids.get(e.ppid, set())
                or (e.row_attempts != e.attempt and not superseded(e)))

    claims: dict[tuple[int, int | None], list[Exec]] = collections.defaultdict(list)
    for e in execs:
        if not is_zombie(e):
            claims[(e.job, e.lease)].append(e)
    v.same_claim_twice = [runs for runs in claims.values() if len(runs) > 1]
    v.zombies = sum(1 for e in execs if is_zombie(e))

    child_kills = {f.pid: f.at for f in faults if f.kind == "child_kill"}
    engine_kills = {f.pid: f.until for f in faults if f.kind == "engine_kill"}
    sigterms = {f.pid: f.at for f in faults if f.kind == "sigterm"}
    connection_faults = [(f.at, f.until or f.at, f.kind) for f in faults
                         if f.kind in ("terminate_backends", "postgres_restart")]
    poison_deaths = {e.pid: e.at for e in execs if e.task == "poison"}

    def near_connection_fault(e: Exec) -> str | None:
        for start, end, kind in connection_faults:
            if start - FAULT_BEFORE <= e.at <= end + FAULT_AFTER:
                return "backends terminated" if kind == "terminate_backends" \
                    else "PostgreSQL restarted"
        return None

    def why(e: Exec) -> str | None:
        """Why execution e, not the one that finished its job, happened or did not count:
        None if nothing explains it."""
        if e.task == "flaky" and e.attempt <= 2:
            return "raised (flaky job, by design)"
        if e.task == "poison":
            return "poison job (killed its own child)"
        fault = near_connection_fault(e)
        if is_zombie(e):
            return f"{fault}: ran a claim already rescued from its engine" if fault else None
        if child_kills.get(e.pid, 0.0) >= e.at:
            return "its child was SIGKILLed"
        if engine_kills.get(e.ppid, 0.0) >= e.at:
            return "its engine was SIGKILLed"
        if poison_deaths.get(e.pid, 0.0) >= e.at:
            return "its child was killed by a poison job"
        if fault and e.holder in replaced:
            return f"{fault} while it ran (its engine was declared dead)"
        if sigterms.get(e.ppid, 0.0) >= e.at:
            return "its engine was SIGTERMed"
        return None

    for job, runs in by_job.items():
        # The execution whose result finished the job: it ran on the claim (engine, attempt)
        # that the final write removed (the trigger kept the row's locked_by and attempts).
        final: Exec | None = None
        for attempts, locked_by in final_rows.get(job, [])[:1]:
            mine = [e for e in runs if not is_zombie(e) and e.holder == locked_by]
            exact = [e for e in mine if e.attempt == attempts]
            final = exact[-1] if exact else (mine[-1] if mine and superseded(mine[-1])
                                             else None)
        for e in runs:
            if e is final:
                continue
            reason = why(e)
            if reason is None:
                v.unexplained.append((e, runs))
                v.repeats["UNEXPLAINED"] += 1
            else:
                v.repeats[reason] += 1

    # Rescue time: from an engine SIGKILL to the first new execution of each job whose last
    # execution before the kill ran under that engine (and did not fail on purpose).
    for f in faults:
        if f.kind != "engine_kill":
            continue
        worst = 0.0
        count = 0
        for runs in by_job.values():
            before = [e for e in runs if e.at <= f.at]
            after = [e for e in runs if e.at > f.at]
            if not before or not after or before[-1].ppid != f.pid:
                continue
            if before[-1].task in ("poison", "flaky"):
                continue
            count += 1
            worst = max(worst, after[0].at - f.at)
        if count:
            v.rescue_seconds.append((f.pid, worst, count))
    return v


def summary(settings: Settings, v: Verdict, faults: list[Fault], producers: list[ProducerStats],
            elapsed: float, drain: float, logs: str) -> str:
    kinds = collections.Counter(f.kind for f in faults)
    lines = [
        "",
        "=" * 78,
        f"CHAOS SUMMARY ({'soak' if settings.cycles > 1 else 'CI'} mode, {elapsed:.0f} s, "
        f"drained {drain:.1f} s after the producers stopped)",
        f"  jobs committed {v.jobs}; executions {v.executions}; completed {v.completed}; "
        f"exhausted {sum(v.exhausted.values())} {dict(v.exhausted)}",
        "  producers: " + "; ".join(
            f"#{i}: {p.transactions} transactions, {p.rolled_back} rolled back, "
            f"errors {dict(p.errors)}" for i, p in enumerate(producers)),
        "  faults: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())),
    ]
    for f in faults:
        if f.kind == "sigterm":
            lines.append(f"    sigterm engine {f.pid}: exit {f.exit_code} after "
                         f"{(f.until - f.at) if f.until else float('nan'):.1f} s")
        elif f.kind == "postgres_restart":
            lines.append(f"    postgres restart: down {f.until - f.at:.1f} s")
        elif f.kind == "terminate_backends":
            lines.append(f"    terminated backends: {f.detail}")
    lines += [
        f"  lost {len(v.lost)}; double final records {len(v.double_final)}; "
        f"completed without running {len(v.completed_unrun)}; one claim run twice "
        f"{len(v.same_claim_twice)}; left in job table {v.left_in_table} "
        f"({v.left_locked} locked); engine rows left {v.engine_rows_left}",
        f"  executions besides the one that finished each job: {sum(v.repeats.values())} "
        f"(on a claim already rescued: {v.zombies}), by cause:",
        *(f"    {n:6d}  {reason}" for reason, n in v.repeats.most_common()),
        f"  unexpected exhausted {len(v.unexpected_exhausted)}",
        "  rescue time after engine SIGKILL: " + (", ".join(
            f"engine {pid}: {s:.2f} s ({n} jobs)" for pid, s, n in v.rescue_seconds)
            or "no unfinished jobs at the kills") +
        (f"; max {max(s for _, s, _ in v.rescue_seconds):.2f} s" if v.rescue_seconds else ""),
        "  engine logs: " + ", ".join(f"{what} x{logs.count(what)}" for what in (
            "completion flush failed", "claim failed", "rescued the jobs of dead engines",
            "lost its identity", "was declared dead", "died (", "Traceback")),
        "=" * 78,
    ]
    return "\n".join(lines)


# -- the test ---------------------------------------------------------------------------------


def stuck_state(url: str) -> str:
    """What the database holds when jobs did not finish: the unfinished jobs, the serial
    queues in use, the engines, and the Skivi backends."""
    queries = {
        "unfinished jobs (committed, no final record)": """
            select c.job_id, j.task_identifier, j.queue_name, j.locked_by, j.lease,
                   j.attempts, j.max_attempts, j.run_at - now() as runnable_in,
                   left(j.last_error, 120)
            from chaos_ledger.committed c left join skivi.job_live j on j.id = c.job_id
            where not exists (select 1 from chaos_ledger.final f where f.job_id = c.job_id)
            order by c.job_id limit 20""",
        "jobs left in skivi.job": """
            select id, task_identifier, queue_name, locked_by, lease, attempts, max_attempts,
                   run_at - now(), left(last_error, 120)
            from skivi.job_live order by id limit 20""",
        "serial queues held": "select * from skivi.job_queue where job_id is not null "
                              "or locked_by is not null limit 20",
        "engines": "select id, pid, heartbeat_at, stopping, in_flight from skivi.engine",
        "backends": "select pid, application_name, state, wait_event_type, wait_event, "
                    "left(query, 60) from pg_stat_activity where application_name like "
                    "'skivi%%'",
    }
    out = []
    for title, query in queries.items():
        try:
            rows = _query(url, query)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure
            rows = [(f"query failed: {exc}",)]
        out.append(f"{title}:")
        out += [f"  {row}" for row in rows]
    return "\n".join(out)


def stop_logs(fleet: Fleet, exits: Mapping[int, int | None]) -> str:
    """What the engines that did not stop cleanly logged from the stop request on (and
    every traceback), so a failure in CI says why without the files."""
    out = []
    for engine in fleet.engines:
        log = log_of(engine.proc)
        if exits.get(engine.pid, 0) == 0 or not log:
            continue
        lines = log.splitlines()
        at = next((i for i, line in enumerate(lines) if "received SIG" in line),
                  max(0, len(lines) - 40))
        tracebacks = [i for i, line in enumerate(lines[:at]) if line.startswith("Traceback")]
        keep = sorted({*range(at, len(lines)),
                       *(j for i in tracebacks for j in range(i - 2, min(i + 30, at)))})
        out.append(f"--- engine {engine.pid} (exit {exits[engine.pid]}), "
                   f"{engine.proc.log_path}:")
        out += [lines[j] for j in keep[:200] if j >= 0]
    return "\n".join(out)


@pytest.mark.slow
def test_every_job_reaches_one_final_state_and_repeats_are_explained_when_faults_are_injected(
        chaos_server: PrivateServer, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = SOAK if soak_mode(request.config) else CI
    url = chaos_server.url
    rng = random.Random(SEED)
    began = time.monotonic()
    with Fleet(url, tmp_path, settings) as fleet:
        for _ in range(settings.engines):
            fleet.start()
        wait_registered(url, [e.pid for e in fleet.engines], timeout=30)
        stop = threading.Event()
        stats = [ProducerStats() for _ in range(settings.producers)]
        share = settings.jobs // settings.producers
        threads = [threading.Thread(
            target=produce, name=f"producer-{i}",
            args=(url, i, share, settings.produce_seconds, settings.poison if i == 0 else 0,
                  0.0 if i == 0 else 0.1, stats[i], stop)) for i in range(settings.producers)]
        injector = Injector(chaos_server, fleet, settings, rng)
        start = time.monotonic()
        for t in threads:
            t.start()
        try:
            injector.run(start)
            for t in threads:
                t.join(timeout=settings.produce_seconds + 120)
                assert not t.is_alive(), f"{t.name} did not finish"
        finally:
            stop.set()
            injector.close()
        produced_at = time.monotonic()

        def drained() -> bool:
            left = _query(url, "select count(*) from skivi.job_live")[0][0]
            missing = _query(url, "select count(*) from chaos_ledger.committed c where not "
                                  "exists (select 1 from chaos_ledger.final f "
                                  "where f.job_id = c.job_id)")[0][0]
            return left == 0 and missing == 0

        try:
            wait_for(drained, timeout=settings.drain_timeout,
                     what="every committed job to reach a final state")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stuck_state(url)}") from None
        finally:
            drain = time.monotonic() - produced_at
        live = fleet.running()
        wait_for(lambda: len(_query(url, "select id from skivi.engine")) == len(live),
                 timeout=30, what="the rows of dead engines to be removed by a rescuer")
        exits = fleet.stop([e.proc for e in live], timeout=60)
        # Engines that ended on their own: neither SIGKILLed nor SIGTERMed by the injector.
        died = {e.pid: e.proc.returncode for e in fleet.engines
                if e not in live and not e.stopping and e.ended is None}
        logs = fleet.logs()
    verdict = judge(url, injector.faults)
    text = summary(settings, verdict, injector.faults, stats, time.monotonic() - began, drain,
                   logs)
    with capsys.disabled():
        print(text)
    (tmp_path / "summary.txt").write_text(text)

    assert verdict.jobs >= settings.jobs * 0.8, "the producers committed too few jobs"
    assert verdict.lost == [], f"jobs lost: {verdict.lost[:20]}"
    assert verdict.double_final == [], f"jobs finished twice: {verdict.double_final[:20]}"
    assert verdict.completed_unrun == [], \
        f"jobs completed without running: {verdict.completed_unrun[:20]}"
    assert verdict.same_claim_twice == [], \
        f"one claim executed twice: {verdict.same_claim_twice[:20]}"
    assert verdict.unexplained == [], "executions nothing explains:\n" + "\n".join(
        f"{e} of {runs}" for e, runs in verdict.unexplained[:10])
    assert verdict.unexpected_exhausted == [], \
        f"exhausted without cause: {verdict.unexpected_exhausted[:10]}"
    assert verdict.left_in_table == 0 and verdict.left_locked == 0
    assert verdict.rescue_seconds, "no engine SIGKILL caught a job in flight"
    assert max(s for _, s, _ in verdict.rescue_seconds) < MAX_RESCUE_SECONDS
    sigterm_exits = {f.pid: f.exit_code for f in injector.faults if f.kind == "sigterm"}
    assert sigterm_exits and all(code == 0 for code in sigterm_exits.values()), \
        f"{sigterm_exits}\n" + stop_logs(fleet, sigterm_exits)
    assert all(code == 0 for code in exits.values()), f"{exits}\n" + stop_logs(fleet, exits)
    assert died == {}, f"engines that died by themselves: {died}\n" + stop_logs(fleet, died)
    kinds = {f.kind for f in injector.faults}
    assert kinds >= {"child_kill", "engine_kill", "sigterm", "terminate_backends",
                     "postgres_restart"}, kinds


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _query(url: str, text: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, application_name="chaos-test") as c:
        return c.execute(text).fetchall()
