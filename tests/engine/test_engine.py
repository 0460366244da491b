"""The engine as a user runs it: subprocesses, real signals, real PostgreSQL."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from skivi.engine.process import children_of
from tests.support.engines import EngineProcs, engine_id, enqueue, log_of
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for


def test_three_engines_handle_every_job_exactly_once_when_sharing_a_database(
        engines: EngineProcs, database: str) -> None:
    n = 20_000
    ids = enqueue(database, [{"task": "noop", "payload": {"i": i}} for i in range(n)])
    procs = [engines.start("--once", concurrency=16) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=180) == 0, log_of(p)
    runs = engines.ledger.runs_per_job()
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1, "a job ran twice without any fault"
    assert live_jobs(database) == 0
    assert fetch(database, "select count(*) from skivi.job_history")[0][0] == 0
    assert fetch(database, "select count(*) from skivi.engine")[0][0] == 0
    assert len({r[1] for r in engines.ledger.starts()}) >= 3, "work was not shared"


def test_killed_engines_jobs_run_again_elsewhere_within_5s_when_sigkilled(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.3}} for _ in range(80)])
    victim = engines.start(concurrency=4)
    engine_id(database, victim.pid)
    survivor = engines.start(concurrency=4)
    engine_id(database, survivor.pid)
    victim_pids = {victim.pid, *children_of(victim.pid)}

    def victim_mid_job() -> bool:
        # A job of 0.3 s started under 0.15 s ago: the kill lands well before it ends (a
        # job near its end could finish between this look and the kill, and prove nothing).
        rows = [r for r in engines.ledger.rows() if r[1] in victim_pids]
        ended = {r[0] for r in rows if r[3] == "end"}
        now = time.time()
        return any(r[3] == "start" and r[0] not in ended and now - r[4] < 0.15
                   for r in rows)

    wait_for(victim_mid_job, what="the victim in the middle of a job")
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait()
    # The victim is dead: its ledger lines are final. A job it started and never ended
    # cannot have been completed, so it must run again, on the survivor.
    rows = [r for r in engines.ledger.rows() if r[1] in victim_pids]
    victim_started = {r[0] for r in rows if r[3] == "start"}
    must_rerun = victim_started - {r[0] for r in rows if r[3] == "end"}
    assert must_rerun

    def reruns() -> dict[int, float]:
        first: dict[int, float] = {}
        for job, pid, _attempt, event, at in engines.ledger.rows():
            if event == "start" and pid not in victim_pids and job in must_rerun:
                first[job] = min(at, first.get(job, at))
        return first

    rerun_at = wait_for(lambda: len(reruns()) == len(must_rerun) and reruns(), timeout=10,
                        what="the killed engine's unfinished jobs to run again")
    assert max(rerun_at.values()) - killed_at < 5.0
    wait_for(lambda: live_jobs(database) == 0, timeout=60, what="every job to finish")
    runs = engines.ledger.runs_per_job()
    assert set(runs) == set(ids), "a job was lost"
    twice = {job for job, count in runs.items() if count > 1}
    assert twice <= victim_started, f"jobs ran twice that the killed engine never ran: " \
                                    f"{twice - victim_started}"
    assert survivor.poll() is None


def test_killed_child_is_replaced_and_its_jobs_retried_when_sigkilled(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.2}} for _ in range(40)])
    engine = engines.start(processes=2, concurrency=2)
    kids = wait_for(lambda: len(children_of(engine.pid)) == 2 and children_of(engine.pid),
                    what="two children")
    wait_for(lambda: {r[1] for r in engines.ledger.starts()} >= set(kids),
             what="both children running jobs")
    victim, sibling = kids
    victim_jobs = {r[0] for r in engines.ledger.starts() if r[1] == victim}
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    replacement = wait_for(lambda: [p for p in children_of(engine.pid) if p not in kids],
                           what="a replacement child")[0]
    wait_for(lambda: live_jobs(database) == 0, timeout=60, what="every job to finish")
    starts = engines.ledger.starts()
    unfinished = victim_jobs - {r[0] for r in engines.ledger.rows()
                                if r[3] == "end" and r[1] == victim}
    assert unfinished, "the victim had no job in flight"
    rerun = {r[0] for r in starts if r[1] != victim and r[4] > killed_at}
    assert unfinished <= rerun
    assert sibling in children_of(engine.pid), "the sibling child stopped"
    assert any(r[1] == sibling and r[4] > killed_at for r in starts)
    assert any(r[1] == replacement for r in starts)
    assert set(engines.ledger.runs_per_job()) == set(ids)
    crashed = fetch(database, "select count(*) from skivi.job_history")[0][0]
    assert crashed == 0


def test_poison_job_is_exhausted_after_exactly_max_attempts_when_it_kills_its_child(
        engines: EngineProcs, database: str) -> None:
    [poison] = enqueue(database, [{"task": "poison", "max_attempts": 3}])
    others = enqueue(database, [{"task": "noop"} for _ in range(20)])
    engine = engines.start(processes=2, concurrency=1)
    wait_for(lambda: fetch(database, "select 1 from skivi.job_history where id = %s", poison),
             timeout=30, what="the poison job to be exhausted")
    runs = engines.ledger.runs_per_job()
    assert runs[poison] == 3
    row = fetch(database, "select attempts, outcome, reason, last_error from "
                          "skivi.job_history where id = %s", poison)[0]
    assert row[0] == 3 and row[1] == "exhausted" and row[2] == "max_attempts"
    assert "died" in row[3]
    wait_for(lambda: live_jobs(database) == 0, what="the other jobs")
    assert all(runs[i] >= 1 for i in others) or set(engines.ledger.runs_per_job()) >= set(others)
    assert engine.poll() is None, "the engine died with its child"


def test_sigterm_drains_and_exits_0_leaving_nothing_locked_when_busy(
        engines: EngineProcs, database: str) -> None:
    enqueue(database, [{"task": "sleep", "payload": {"s": 0.2}} for _ in range(200)])
    engine = engines.start("--shutdown-timeout", "10", processes=2, concurrency=4)
    eid = engine_id(database, engine.pid)
    wait_for(lambda: len(engines.ledger.starts()) >= 8, what="a busy engine")
    engine.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert engine.wait(timeout=15) == 0, log_of(engine)
    assert time.monotonic() - started < 10
    assert fetch(database, "select count(*) from skivi.job_live where locked_by = "
                           "%s", eid)[0][0] == 0
    # Everything that started finished; the rest went back untouched.
    rows = engines.ledger.rows()
    started_ids = {r[0] for r in rows if r[3] == "start"}
    ended_ids = {r[0] for r in rows if r[3] == "end"}
    assert started_ids == ended_ids
    back = fetch(database, "select count(*) from skivi.job_live where attempts = 0")[0][0]
    assert back == 200 - len(started_ids)


def test_missing_handler_exhausts_the_job_at_once_when_no_task_matches(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "nobody-handles-this", "max_attempts": 5}])
    engine = engines.start("--once")
    assert engine.wait(timeout=60) == 0, log_of(engine)
    row = fetch(database, "select attempts, reason, last_error from skivi.job_history "
                          "where id = %s", job)
    assert row and row[0][0] == 1 and row[0][1] == "no_handler"
    assert "nobody-handles-this" in row[0][2]


def test_unknown_tasks_stay_queued_when_unknown_tasks_is_skip(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "nobody-handles-this"}])
    known = enqueue(database, [{"task": "noop"}])
    engine = engines.start("--once", env={"SKIVI_UNKNOWN_TASKS": "skip"})
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert fetch(database, "select attempts, locked_by from skivi.job_live") == [(0, None)]
    assert engines.ledger.runs_per_job()[known[0]] == 1 and job not in engines.ledger.runs_per_job()


def test_batch_job_keeps_only_failed_items_when_partially_successful(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "batch", "payload": [1, -1, 2, -2],
                                "max_attempts": 1}])
    engine = engines.start("--once")
    assert engine.wait(timeout=60) == 0, log_of(engine)
    row = fetch(database, "select payload, last_error from skivi.job_history where id = %s",
                job)[0]
    assert row[0] == [-1, -2]
    assert "partial success: 2 of 4 items failed" in row[1]


def test_partial_success_error_names_items_by_their_payload_position_when_items_fail(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "batch", "payload": [1, -1, 2, -3, 4, -5],
                                "max_attempts": 1}])
    engine = engines.start("--once")
    assert engine.wait(timeout=60) == 0, log_of(engine)
    [(payload, error)] = fetch(database, "select payload, last_error from skivi.job_history "
                                         "where id = %s", job)
    assert payload == [-1, -3, -5]
    named = re.findall(r"^item (\d+): .*?item (-\d+) failed", error, re.MULTILINE)
    assert named == [("1", "-1"), ("3", "-3"), ("5", "-5")], error


def test_history_says_superseded_when_a_running_job_loses_its_key_and_then_fails(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    go = tmp_path / "fail-now"
    [old] = enqueue(database, [{"task": "fail_when_told", "payload": {"path": str(go)},
                                "job_key": "report", "max_attempts": 5}])
    [other] = enqueue(database, [{"task": "fail_when_told", "payload": {"path": str(go)},
                                  "max_attempts": 1}])
    engine = engines.start(concurrency=4)
    wait_for(lambda: {old, other} <= {r[0] for r in engines.ledger.starts()},
             what="both jobs running")
    # A new job takes the key: the running one keeps running, without key or retries.
    [new] = enqueue(database, [{"task": "noop", "job_key": "report"}])
    assert new != old
    assert fetch(database, "select key, attempts, max_attempts from skivi.job_live where id = %s",
                 old) == [(None, 5, 5)]
    go.touch()
    wait_for(lambda: fetch(database, "select count(*) from skivi.job_history")[0][0] == 2,
             what="both failures recorded")
    history = dict(fetch(database, "select id, reason from skivi.job_history"))
    # The unkeyed job on its only attempt is exhausted by max_attempts, as before.
    assert history == {old: "superseded", other: "max_attempts"}
    # The log line gives the reason the history has (written just after the flush).
    for job, attempts, reason in ((old, "5 of 5", "superseded"), (other, "1 of 1", "max_attempts")):
        line = re.compile(rf"ERROR .*job {job} \(fail_when_told\) exhausted after attempt "
                          rf"{attempts} \({reason}\): RuntimeError: told to fail")
        wait_for(lambda line=line: line.search(log_of(engine)), timeout=10,
                 what=f"the exhaustion line of job {job} saying {reason}")
    wait_for(lambda: new in {r[0] for r in engines.ledger.starts()}, what="the new job")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)


def test_last_error_is_the_message_and_traceback_is_kept_apart_when_a_handler_raises(
        engines: EngineProcs, database: str) -> None:
    [retrying, exhausted] = enqueue(database, [{"task": "fail", "max_attempts": 3},
                                               {"task": "fail", "max_attempts": 1}])
    engine = engines.start()
    wait_for(lambda: fetch(database, "select 1 from skivi.job_history where id = %s",
                           exhausted), what="the exhausted job in history")
    [(error, traceback)] = fetch(database, "select last_error, last_error_traceback "
                                           "from skivi.job_history where id = %s", exhausted)
    assert error == "boom on attempt 1"  # the message only, as Graphile stores it
    assert traceback.startswith("Traceback (most recent call last):")
    assert "engine_tasks.py" in traceback and traceback.rstrip().endswith(
        "ValueError: boom on attempt 1")
    wait_for(lambda: fetch(database, "select 1 from skivi.job_live where id = %s and attempts >= 1"
                                     " and locked_by is null and last_error is not null",
                           retrying), what="the first failure of the retrying job")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)
    [(error, traceback)] = fetch(database, "select j.last_error, t.traceback from skivi.job_live j "
                                           "join skivi.job_traceback t using (id) "
                                           "where j.id = %s", retrying)
    assert re.fullmatch(r"boom on attempt \d", error)
    assert traceback.rstrip().endswith("ValueError: " + error)


def test_failed_job_waits_for_its_backoff_when_retried(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "slow_fail", "max_attempts": 5}])
    engine = engines.start()
    wait_for(lambda: fetch(database, "select 1 from skivi.job_live where id = %s and attempts = 1 "
                                     "and locked_by is null", job), what="the first failure")
    row = fetch(database, "select extract(epoch from run_at - updated_at), last_error "
                          "from skivi.job_live where id = %s", job)[0]
    # Default backoff: exp(1) seconds after the first attempt (Graphile Worker's schedule).
    assert abs(float(row[0]) - 2.718) < 0.1
    assert "boom on attempt 1" in row[1]
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0


def test_serial_queue_runs_one_job_at_a_time_in_order_when_prefetching(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "async_sleep", "payload": {"s": 0.03},
                              "queue_name": "serial"} for _ in range(15)])
    enqueue(database, [{"task": "noop"} for _ in range(200)])
    # Two engines share the queue; each stops once it finds nothing runnable (a job held by
    # the other engine is not runnable for it), so wait for the table to empty instead.
    for _ in range(2):
        engines.start(processes=2, concurrency=8)
    wait_for(lambda: live_jobs(database) == 0, timeout=60, what="every job to finish")
    rows = [r for r in engines.ledger.rows() if r[0] in set(ids)]
    spans: dict[int, list[float]] = {}
    for job, _pid, _attempt, event, at in rows:
        spans.setdefault(job, [0.0, 0.0])[0 if event == "start" else 1] = at
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    assert [job for job, _ in ordered] == ids, "serial jobs ran out of order"
    for (_, (_s1, end1)), (_, (start2, _e2)) in itertools.pairwise(ordered):
        assert start2 >= end1, "two jobs of one serial queue overlapped"


def test_engine_of_long_jobs_prefetches_few_so_another_engine_gets_the_rest(
        engines: EngineProcs, database: str) -> None:
    # 400 jobs of 50 ms on one child with 4 async slots: about 80 a second. The prefetch
    # follows that rate (0.2 s of it, at least 16 jobs), so the engine holds its children's
    # capacity (4 async + 64 sync slots) and a few more, not a claim batch (4,000, more
    # than the 400 here), and an engine started later finds work.
    ids = enqueue(database, [{"task": "async_sleep", "payload": {"s": 0.05}}
                             for _ in range(400)])
    first = engines.start(processes=1, concurrency=4)
    wait_for(lambda: len(engines.ledger.starts()) >= 20, timeout=30,
             what="the first engine to run jobs: " + log_of(first)[-2000:])
    held = []
    for _ in range(10):
        held.append(fetch(database, "select count(*) from skivi.job_live "
                                    "where locked_by is not null")[0][0])
        time.sleep(0.1)
    assert max(held) <= 4 + 64 + 32, f"jobs held by one engine of long jobs: {held}"
    second = engines.start(processes=1, concurrency=4)
    wait_for(lambda: len({r[1] for r in engines.ledger.starts()}) >= 2, timeout=30,
             what="the second engine to run jobs: " + log_of(second)[-2000:])
    wait_for(lambda: live_jobs(database) == 0, timeout=60, what="every job to finish")
    assert set(engines.ledger.runs_per_job()) == set(ids)


def test_handler_can_enqueue_follow_up_jobs_when_running(
        engines: EngineProcs, database: str) -> None:
    [parent] = enqueue(database, [{"task": "spawn"}])
    engine = engines.start("--once")
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert len(engines.ledger.starts()) == 2
    assert live_jobs(database) == 0
    assert parent in engines.ledger.runs_per_job()


def test_engine_survives_and_finishes_every_job_when_postgres_restarts(
        private_server: Any, private_engines: EngineProcs) -> None:
    url = private_server.url
    procs = private_engines
    ids = enqueue(url, [{"task": "sleep", "payload": {"s": 0.01}} for _ in range(600)])
    engine = procs.start(processes=2, concurrency=4)
    wait_for(lambda: len(procs.ledger.starts()) >= 50, what="a busy engine")
    private_server.restart()
    restarted_at = time.time()
    wait_for(lambda: live_jobs(url) == 0, timeout=90, what="every job to finish")
    assert engine.poll() is None, log_of(engine)
    assert any(r[4] > restarted_at for r in procs.ledger.starts()), "no work after restart"
    assert set(procs.ledger.runs_per_job()) == set(ids)
    assert fetch(url, "select count(*) from skivi.job_history")[0][0] == 0
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)


def test_job_past_its_timeout_has_its_child_killed_and_fails_as_timeout(
        engines: EngineProcs, database: str) -> None:
    [job] = enqueue(database, [{"task": "hang", "max_attempts": 1}])
    others = enqueue(database, [{"task": "noop"} for _ in range(5)])
    engine = engines.start(processes=1, concurrency=1)
    row = wait_for(lambda: fetch(database, "select reason, last_error from skivi.job_history "
                                           "where id = %s", job), timeout=20,
                   what="the hanging job to time out")[0]
    assert row[0] == "max_attempts" and "timeout" in row[1] and "killed" in row[1]
    wait_for(lambda: live_jobs(database) == 0, what="the other jobs, in a new child")
    assert set(others) <= set(engines.ledger.runs_per_job())
    assert engine.poll() is None


def test_cron_process_fires_each_tick_once_and_is_restarted_when_killed(
        engines: EngineProcs, database: str, tmp_path: Any) -> None:
    crontab = tmp_path / "crontab.toml"
    crontab.write_text('[[cron]]\nidentifier = "every-second"\nschedule = "* * * * * *"\n'
                       'task = "cron_tick"\n')
    engine = engines.start("--crontab", str(crontab))

    def ticks() -> list[str]:
        return [r[3] for r in engines.ledger.rows() if r[3].startswith("tick:")]

    wait_for(lambda: len(ticks()) >= 2, timeout=15, what="two cron ticks")
    found = wait_for(lambda: re.findall(r"cron process started \(pid (\d+)", log_of(engine)),
                     what="the cron process's pid in the engine log")
    before = len(ticks())
    os.kill(int(found[0]), signal.SIGKILL)
    wait_for(lambda: len(ticks()) >= before + 3, timeout=20, what="ticks after the restart")
    assert engine.poll() is None
    seen = ticks()
    assert len(seen) == len(set(seen)), "a cron tick fired twice"
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)


def test_engines_keep_their_identity_and_jobs_run_once_when_postgres_restarts(
        private_server: Any, private_engines: EngineProcs) -> None:
    """A restart leaves every engine's heartbeat stale at once. The first engine back must
    not declare the others dead (they heartbeat again within the restart grace, and it
    waits a lease after reconnecting): no identity lost, no job run twice, although every
    job was running at the restart."""
    url = private_server.url
    procs = private_engines
    ids = enqueue(url, [{"task": "async_sleep", "payload": {"s": 6.0}} for _ in range(8)])
    first, second = (procs.start(processes=1, concurrency=4) for _ in range(2))
    wait_for(lambda: len(procs.ledger.starts()) == len(ids), timeout=30,
             what="every job running")
    private_server.restart()
    wait_for(lambda: live_jobs(url) == 0, timeout=60, what="every job to finish")
    logs = log_of(first) + log_of(second)
    assert "lost its identity" not in logs and "rescued the jobs" not in logs, logs
    assert procs.ledger.runs_per_job() == {job: 1 for job in ids}
    for engine in (first, second):
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 0, log_of(engine)


def test_an_engine_killed_during_the_restart_grace_is_rescued_when_the_grace_ends(
        private_server: Any, private_engines: EngineProcs) -> None:
    url = private_server.url
    procs = private_engines
    victim = procs.start(processes=1, concurrency=4)
    ids = enqueue(url, [{"task": "async_sleep", "payload": {"s": 60.0}} for _ in range(4)])
    wait_for(lambda: len(procs.ledger.starts()) == len(ids), timeout=30,
             what="the victim running every job")
    survivor = procs.start(processes=1, concurrency=4)
    engine_id(url, survivor.pid)
    private_server.restart()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.time()
    wait_for(lambda: procs.ledger.runs_per_job() == {job: 2 for job in ids}, timeout=40,
             what="the victim's jobs to run again elsewhere")
    took = max(r[4] for r in procs.ledger.starts()) - killed_at
    # The grace (10 s) plus a rescue round.
    assert took < 20, f"rescued {took:.1f} s after the kill"
    assert "rescued the jobs of dead engines" in log_of(survivor)


def test_engine_exits_3_when_no_migrate_and_migrations_are_pending(
        engines: EngineProcs, make_database: Any) -> None:
    empty = make_database(template=None)
    procs = EngineProcs(empty, engines.ledger)
    try:
        proc = procs.start("--no-migrate", "--once")
        assert proc.wait(timeout=60) == 3
        assert "pending migrations" in log_of(proc)
    finally:
        procs.kill_all()


def test_engine_exits_2_naming_the_directory_when_it_holds_no_tasks(
        engines: EngineProcs, tmp_path: Any) -> None:
    empty = tmp_path / "no-tasks"
    empty.mkdir()
    proc = engines.start("--once", "--tasks", str(empty))
    assert proc.wait(timeout=60) == 2
    assert "no tasks found" in log_of(proc) and str(empty) in log_of(proc)
