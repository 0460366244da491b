"""A fleet of engines through a real PgBouncer in transaction mode.

Short mode (the default, in ./run-tests): 20 engines x 1 child, 20,000 jobs from 2 producers
through the pooler while the engines run, 2 engines SIGKILLed mid-run, cron on every engine.
Long mode (``SKIVI_FLEET_LONG=1``): 100 engines, 100,000 jobs. What must hold either way:
every job runs, none is recorded finished twice, the killed engines' jobs run again within
10 s, cron fires each tick once across the fleet, every survivor exits 0 on SIGTERM, and
PostgreSQL never sees more connections for the database than the pooler's pool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

import skivi
from skivi.engine.process import children_of
from tests.support.db import MakeDatabase, connect
from tests.support.engines import (
    REPO,
    EngineProcs,
    Ledger,
    child_env,
    log_of,
    wait_registered,
)
from tests.support.pgbouncer import PgBouncer, free_port, pgbouncer_binary
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for

LONG = os.environ.get("SKIVI_FLEET_LONG") == "1"
ENGINES = 100 if LONG else 20
JOBS = 100_000 if LONG else 20_000
PRODUCERS = 2
POOL = 10
KILLED = 2
RESCUE_BOUND = 10.0
SLOW_EVERY = 50  # one job in this many sleeps, so that jobs are in flight at the kill
OBSERVER = "fleet-observer"

pytestmark = pytest.mark.slow

PRODUCER = """
import sys, skivi
url, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
system = skivi.create_system({"database": {"connection_string": url,
                                           "prepared_statements": False}})
every = int(sys.argv[4])
ids = []
for start in range(first, first + count, 500):
    specs = [{"task": "async_sleep", "payload": {"s": 1.0, "n": n}} if n % every == 0
             else {"task": "noop", "payload": {"n": n}}
             for n in range(start, min(start + 500, first + count))]
    ids += [j.id for j in skivi.add_jobs(system, specs)]
system.stop()
print(len(ids))
"""


@pytest.fixture
def bouncer(server_dsn: str) -> Iterator[PgBouncer]:
    if pgbouncer_binary() is None:
        if os.environ.get("SKIVI_REQUIRE_PGBOUNCER") == "1":
            pytest.fail("pgbouncer is not installed but SKIVI_REQUIRE_PGBOUNCER=1")
        pytest.skip("Debian's pgbouncer package is not installed: apt-get install pgbouncer")
    if (conninfo_to_dict(server_dsn).get("host") or "/").startswith("/"):
        pytest.skip("the test server is reached by a Unix socket (the embedded PostgreSQL): "
                    "PgBouncer, running as nobody, needs it on TCP (set SKIVI_TEST_DSN)")
    with PgBouncer(server_dsn, pool_size=POOL) as b:
        yield b


class Sampler:
    """The most server connections the database had at once, sampled every 0.1 s from a
    direct connection (itself not counted). ``most`` holds for two samples in a row: a
    server connection PgBouncer closed (its client, an engine SIGKILLed mid-transaction,
    left it dirty) lingers a moment in pg_stat_activity while its backend exits, beside
    the one the pooler opens to replace it; ``peak`` is the raw highest sample."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.most = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def _run(self) -> None:
        last = 0
        with connect(self.url) as c:
            c.execute("select set_config('application_name', %s, false)", [OBSERVER])
            while not self._stop.is_set():
                row = c.execute(
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and pid <> pg_backend_pid() and backend_type = 'client backend'"
                    " and application_name not like 'skivi-test%%'").fetchone()
                n = int(row[0]) if row else 0
                self.peak = max(self.peak, n)
                self.most = max(self.most, min(n, last))
                last = n
                self.samples += 1
                time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.timeout(1800 if LONG else 300)
def test_a_fleet_runs_every_job_once_through_pgbouncer_in_transaction_mode(
        make_database: MakeDatabase, bouncer: PgBouncer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    direct = make_database()
    pooled = bouncer.url(direct)
    config = tmp_path / "skivi.toml"
    # A small batch, as docs/operations.md advises for many engines: a rescued job waits
    # for an engine with room, and a batch of 500 no-ops prefetched by each of 20 engines
    # sharing 2 cores would hold it back for seconds.
    # Long mode: 100 engines and their children on 2 cores connect slowly through one
    # PgBouncer, so the connect timeout is longer, and cron runs on 20 of them (20 is what
    # the cron guarantee is tested with; a cron process per engine is 100 more processes).
    timeout = "connect_timeout = 60\n" if LONG else ""
    config.write_text(f"[database]\nprepared_statements = false\nlisten = false\n{timeout}"
                      "[worker]\nhistory = true\nbatch_size = 50\n")
    crontab = tmp_path / "crontab.toml"
    crontab.write_text('[[cron]]\nidentifier = "every-second"\nschedule = "* * * * * *"\n'
                       'task = "cron_tick"\n')
    ledger = Ledger(tmp_path / "ledger.txt")
    procs = EngineProcs(pooled, ledger)
    started = time.monotonic()
    # worker.concurrency at its default (16). The rescued jobs of a dead engine are mostly its
    # slow ones (what was in flight when it died) and one claim takes them all, so with 4
    # slots an engine ran them in waves a second apart: 3.4-6.0 s after the kill under a
    # CPU hog here, 6.8-10.9 s on one CI run; with 16, 2.6-3.8 s under the same hog.
    with procs, Sampler(direct) as sampler:
        engines = [procs.start("--config", str(config),
                               *(("--crontab", str(crontab)) if i < 20 else ()),
                               processes=1, concurrency=16) for i in range(ENGINES)]
        try:
            ids_of = wait_registered(direct, [e.pid for e in engines],
                                     timeout=60 + 3 * ENGINES)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_of(engines[0])}\n{bouncer.log()[-3000:]}"
                                 ) from None
        up = time.monotonic() - started
        share = JOBS // PRODUCERS
        producers = [subprocess.Popen(
            [sys.executable, "-c", PRODUCER, pooled, str(i * share), str(share),
             str(SLOW_EVERY)],
            env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(PRODUCERS)]
        # Kill two engines while jobs are still coming in and some are running.
        # Long mode: 100 engines, 220 processes on 2 cores, the producers' share of them small.
        wait_for(lambda: len(ledger.starts()) >= JOBS // 4, timeout=900 if LONG else 120,
                 what="a quarter of the jobs to start")
        # The victims: engines running a slow job now. Taken as they come, an engine of 100
        # finishing ~20 jobs a second (one in SLOW_EVERY slow) is running none about half
        # the time, and the kill would prove nothing.
        busy: list[tuple[Any, set[int]]] = []
        # Each engine's process family, read once: a scan of /proc per engine per look took
        # 4 s with 100 engines, by which time the slow jobs seen running had ended.
        families = [(e, {e.pid, *children_of(e.pid)}) for e in engines]

        looked_at = [0.0]

        def engines_running_slow() -> bool:
            looked_at[0] = time.time()
            slow = {int(r[0]) for r in fetch(direct, "select id from skivi.job_live "
                                                     "where task_identifier = 'async_sleep' "
                                                     "and locked_by is not null")}
            rows = ledger.rows()
            ended = {(j, pid) for j, pid, _a, e, _t in rows if e == "end"}
            # Started in the last half second, so still running (1 s) at the kill, which
            # follows this at once: a look takes ~0.5 s with 100 engines' ledger.
            recent = time.time() - 0.5
            running = {pid for j, pid, _a, e, t in rows
                       if e == "start" and j in slow and (j, pid) not in ended and t >= recent}
            busy.clear()
            busy.extend((e, family) for e, family in families if family & running)
            return len(busy) >= KILLED

        wait_for(engines_running_slow, timeout=60, what="engines running slow jobs")
        victims = [e for e, _family in busy[:KILLED]]
        victim_pids = set().union(*(family for _e, family in busy[:KILLED]))
        for v in victims:
            v.send_signal(signal.SIGKILL)
        killed_at = time.time()
        looked = killed_at - looked_at[0]
        for v in victims:
            v.wait(timeout=10)
        for p in producers:
            out, err = p.communicate(timeout=1200 if LONG else 300)
            assert p.returncode == 0, err.decode()
            assert int(out.split()[-1]) == share
        wait_for(lambda: live_jobs(direct) == 0, timeout=1200 if LONG else 300,
                 what="every job to finish")
        drained = time.monotonic() - started
        survivors = [e for e in engines if e not in victims]
        codes = procs.stop(survivors, timeout=60)
        most, peak = sampler.most, sampler.peak
    logs = "".join(log_of(e) for e in survivors)
    assert set(codes.values()) == {0}, (codes, logs[-5000:])

    starts = ledger.starts()
    runs: dict[int, list[tuple[int, float]]] = {}
    for job, pid, _attempt, _event, at in starts:
        runs.setdefault(job, []).append((pid, at))
    enqueued = {int(r[0]) for r in fetch(direct, "select id from skivi.job_history "
                                                 "where task_identifier <> 'cron_tick'")}
    job_runs = {j: r for j, r in runs.items() if j in enqueued}
    assert len(enqueued) == JOBS, "jobs missing from history"
    assert set(job_runs) == enqueued, "a job never ran"
    # Recorded finished once: history's primary key is the job id, and the engines' guards
    # accept one result per claim; every job is in history exactly once and none is left.
    [(rows, distinct)] = fetch(direct, "select count(*), count(distinct id) "
                                       "from skivi.job_history")
    assert rows == distinct
    # What the victims were running when they died runs again elsewhere, soon: the slow
    # jobs (they record their end; a no-op's run is over as soon as it is recorded).
    ends = {(j, pid) for j, pid, _a, e, _t in ledger.rows() if e == "end"}
    slow = {int(r[0]) for r in fetch(direct, "select id from skivi.job_history "
                                             "where task_identifier = 'async_sleep'")}
    cut = [j for j, r in job_runs.items()
           if j in slow and any(pid in victim_pids and (j, pid) not in ends
                                and at <= killed_at for pid, at in r)]
    assert cut, (f"no job was in flight on the killed engines (they were seen running one "
                 f"{looked:.2f} s before the kill)")
    late: dict[int, float] = {}
    rerun_by: dict[int, int] = {}  # cut job -> the process that ran it again first
    for j in cut:
        again = [(at, pid) for pid, at in job_runs[j] if pid not in victim_pids]
        assert again, f"job {j} of a killed engine never ran again"
        at, rerun_by[j] = min(again)
        late[j] = at - killed_at
    rescued = [line for line in logs.splitlines() if "rescued the jobs of dead engines" in line]
    assert max(late.values()) <= RESCUE_BOUND, (
        f"rescued too late: {sorted((round(t, 2), rerun_by[j]) for j, t in late.items())} "
        f"(seconds after the kill, the process that ran it again); killed at {killed_at:.2f}; "
        f"{rescued}")
    # A job runs twice only if a killed engine had it.
    twice = [j for j, r in job_runs.items() if len(r) > 1]
    assert all(any(pid in victim_pids for pid, _ in job_runs[j]) for j in twice), twice
    # Cron: every tick fired once across the fleet.
    ticks = [e for _j, _p, _a, e, _t in ledger.rows() if e.startswith("tick:")]
    assert ticks and len(ticks) == len(set(ticks)), "a cron tick fired twice"
    dead_ids = {ids_of[v.pid] for v in victims}
    for line in rescued:  # only the killed engines were ever declared dead
        named = {int(x) for x in line.split("[", 1)[1].split("]", 1)[0].split(",")}
        assert named <= dead_ids, line
    assert "declared dead" not in logs, "a live engine lost its identity"
    assert most <= POOL, f"PostgreSQL saw {most} connections through a pool of {POOL}"
    with capsys.disabled():
        print(f"\n  fleet: {ENGINES} engines up in {up:.1f}s, {JOBS} jobs drained "
              f"{drained:.1f}s after start; {len(cut)} jobs cut by the kill ran again "
              f"{min(late.values()):.1f}-{max(late.values()):.1f}s after it (victims picked "
              f"{looked:.2f}s before); "
              f"{len(ticks)} cron ticks, none twice; at most {most} server connections "
              f"(peak sample {peak}; {sampler.samples} samples, pool {POOL})")


def _connections(url: str) -> dict[str, int]:
    rows = fetch(url, "select application_name, count(*) from pg_stat_activity "
                      "where datname = current_database() and pid <> pg_backend_pid() "
                      "and backend_type = 'client backend' group by 1")
    return {str(name): int(n) for name, n in rows if not str(name).startswith("skivi-test")}


@pytest.mark.parametrize("child_enqueue", ["parent", "pool"])
def test_an_engine_stays_within_its_connection_budget_idle_and_busy(
        make_database: MakeDatabase, tmp_path: Path, child_enqueue: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = make_database()
    ledger = Ledger(tmp_path / "ledger.txt")
    config = tmp_path / "skivi.toml"
    config.write_text(f'[database]\nchild_enqueue = "{child_enqueue}"\n')
    procs = EngineProcs(url, ledger)
    with procs:
        engine = procs.start("--metrics-port", str(free_port()), "--config", str(config),
                             processes=2, concurrency=4)
        wait_registered(url, [engine.pid])
        time.sleep(3)  # a few heartbeats, rescue rounds and polls
        idle = _connections(url)
        # Busy: handlers that enqueue a follow-up each (ctx.add_job). Enqueued on a
        # connection named for tests: the public API's own pool ("skivi-client", the name
        # the children's pools have too) would still be in pg_stat_activity for a moment
        # after it closed, and counted.
        system = skivi.create_system({"database": {"connection_string": url}})
        with connect(url) as c:
            parents = [j.id for j in skivi.add_jobs(system, [{"task": "spawn"}] * 400,
                                                    conn=c)]
        system.stop()
        seen: dict[str, int] = {}

        def busy_and_sampled() -> bool:
            for name, n in _connections(url).items():
                seen[name] = max(seen.get(name, 0), n)
            return live_jobs(url) == 0 and len(ledger.starts()) >= 800

        wait_for(busy_and_sampled, timeout=60, what="the spawned jobs to run")
        assert engine.stop(timeout=30) == 0, log_of(engine)
    with capsys.disabled():
        print(f"\n  connections ({child_enqueue}): idle {idle}; busy (most at once) {seen}")
    # Every follow-up was enqueued (once) and ran.
    ran = set(ledger.runs_per_job())
    assert set(parents) <= ran and len(ran) == 800, len(ran)
    assert idle == {"skivi-engine": 1, "skivi-claim": 1}, idle
    assert seen.get("skivi-engine") == 1 and seen.get("skivi-claim") == 1, seen
    if child_enqueue == "parent":
        # The children's ctx.add_job goes through the parent's connection: nothing more.
        assert set(seen) == {"skivi-engine", "skivi-claim"}, seen
    else:
        # A pool of database.child_pool_size (1) per child, opened by its first enqueue.
        assert set(seen) == {"skivi-engine", "skivi-claim", "skivi-client"}, seen
        assert seen["skivi-client"] <= 2, seen
