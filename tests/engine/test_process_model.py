"""The engine's process model: a finished job stays finished, and one job's trouble stays with
that job (what a handler does in its child: crash, fork, daemonise, hang, log, return an
awaitable). Real engines, real processes and signals, a real PostgreSQL."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import skivi
from skivi.errors import SchemaNotMigrated
from tests.support.db import connect
from tests.support.engines import (
    TASKS_DIR,
    EngineProcess,
    EngineProcs,
    Ledger,
    enqueue,
    log_of,
    run_engine,
)
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for


def start_engine(procs: EngineProcs, *args: str, **kwargs: Any) -> EngineProcess:
    """An engine that keeps completed jobs in history, where these tests look."""
    return procs.start(*args, env={"SKIVI_HISTORY": "true"}, **kwargs)


def history(url: str, ids: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
    """job id -> (outcome, reason, last_error) from job_history."""
    rows = fetch(url, "select id, outcome, reason, last_error from skivi.job_history "
                      "where id = any(%s)", ids)
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def wait_finished(url: str, ids: list[int], timeout: float = 30) -> dict[int, Any]:
    return wait_for(lambda: h if len(h := history(url, ids)) == len(ids) else None,
                    timeout=timeout, what=f"jobs {ids} to reach history")


def stop(engine: EngineProcess, timeout: float = 30) -> int:
    return engine.stop(timeout=timeout)


# -- 1. a job that returned is completed, whatever happens next to its child ----------------

@pytest.mark.parametrize("killer", ["poison", "async_poison"])
def test_finished_jobs_stay_completed_when_a_sibling_kills_their_child(
        engines: EngineProcs, database: str, killer: str) -> None:
    # One child: the fast jobs' results are still batched in it when the killer runs.
    noops = enqueue(database, [{"task": "noop", "max_attempts": 1} for _ in range(5)])
    bad = enqueue(database, [{"task": killer, "max_attempts": 1}])
    engine = start_engine(engines, processes=1)
    done = wait_finished(database, noops + bad)
    assert {i: done[i][0] for i in noops} == dict.fromkeys(noops, "completed"), done
    assert done[bad[0]][0] == "exhausted"
    assert engines.ledger.runs_per_job() == {**dict.fromkeys(noops, 1), bad[0]: 1}
    assert stop(engine) == 0, log_of(engine)


def test_finished_jobs_stay_completed_when_results_are_batched_and_the_child_dies(
        engines: EngineProcs, database: str) -> None:
    """Many short jobs (handed over in batches once measured short) and killers among them:
    no job whose handler returned is ever run twice or exhausted."""
    specs = [{"task": "async_poison" if i % 50 == 49 else "noop", "max_attempts": 1}
             for i in range(400)]
    ids = enqueue(database, specs)
    engine = start_engine(engines, processes=1)
    done = wait_finished(database, ids, timeout=60)
    noops = [i for i, s in zip(ids, specs, strict=True) if s["task"] == "noop"]
    assert [i for i in noops if done[i][0] != "completed"] == []
    runs = engines.ledger.runs_per_job()
    assert [i for i in noops if runs[i] != 1] == []
    assert stop(engine) == 0, log_of(engine)


# -- 2. an application's files, sockets and connections survive system.start() -------------

def test_the_applications_log_files_sockets_and_connections_keep_working_after_start(
        database: str, tmp_path: Path) -> None:
    logs = [tmp_path / f"app-{i}.log" for i in range(3)]
    app_logger = logging.getLogger("skivi-test-app")
    handlers = [logging.FileHandler(p) for p in logs]
    for h in handlers:
        app_logger.addHandler(h)
    app_logger.setLevel(logging.INFO)
    app_logger.propagate = False
    left, right = socket.socketpair()
    app_db = connect(database)
    ledger = tmp_path / "ran"

    def logs_a_lot(ctx: Any) -> None:
        for i in range(20):
            app_logger.info("from job %s line %d", ctx.job.id, i)
        ctx.logger.info("through ctx.logger")
        with open(ledger, "a") as f:
            f.write(f"{ctx.job.id}\n")

    system = skivi.create_system({"database": {"connection_string": database},
                                  "worker": {"processes": 2, "concurrency": 4,
                                             "history": True}},
                                 {"logs_a_lot": logs_a_lot})
    try:
        app_logger.info("before start")
        system.start()
        app_logger.info("after start")
        ids = [j.id for j in skivi.add_jobs(system, [{"task": "logs_a_lot"}] * 10)]
        done = wait_finished(database, ids)
        assert {v[0] for v in done.values()} == {"completed"}, done
        # The application's own descriptors still work in the application.
        left.sendall(b"ping")
        assert right.recv(4) == b"ping"
        assert app_db.execute("select 42").fetchone() == (42,)
        app_logger.info("at the end")
    finally:
        code = system.stop()
        for h in handlers:
            app_logger.removeHandler(h)
            h.close()
        left.close()
        right.close()
        app_db.close()
    assert code == 0
    for p in logs:
        text = p.read_text()
        for line in ("before start", "after start", "at the end"):
            assert line in text, (p, text[-2000:])
        for i in ids:
            assert f"from job {i} line 19" in text, (p, i)
    assert sorted(map(int, ledger.read_text().split())) == sorted(ids)


# -- 3. shutdown always finishes, whatever handlers spawned ---------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_engine_when_a_handler_forked_and_returned_in_both_copies(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "fork_both", "payload": {"linger": 300}},
                             {"task": "fork_both"}])
    engine = start_engine(engines, "--shutdown-timeout", "3", processes=1)
    done = wait_finished(database, ids)
    assert {v[0] for v in done.values()} == {"completed"}
    # Each job ran once: the copies never acted as the engine's child.
    assert engines.ledger.runs_per_job() == dict.fromkeys(ids, 1)
    t0 = time.monotonic()
    assert stop(engine, timeout=15) == 0, log_of(engine)
    assert time.monotonic() - t0 < 3 + 5


def test_a_daemon_a_handler_started_is_ended_with_the_engine(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    ids = enqueue(database, [{"task": "daemon", "payload": {"pidfile": str(pidfile)}}])
    engine = start_engine(engines, "--shutdown-timeout", "3", processes=1)
    wait_finished(database, ids)
    daemon_pid = int(wait_for(pidfile.read_text, what="the daemon's pid"))
    assert _pid_alive(daemon_pid)
    t0 = time.monotonic()
    assert stop(engine, timeout=15) == 0, log_of(engine)
    assert time.monotonic() - t0 < 3 + 5
    wait_for(lambda: not _pid_alive(daemon_pid), timeout=5, what="the daemon to be killed")


def test_once_exits_when_a_handler_left_a_forked_copy_running(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "fork_both", "payload": {"linger": 300}}])
    engine = start_engine(engines, "--once", processes=1)
    assert engine.wait(timeout=30) == 0, log_of(engine)
    assert history(database, ids)[ids[0]][0] == "completed"


# -- 4. CPU-bound sync jobs use every child --------------------------------------------------

def test_a_burst_of_sync_jobs_runs_on_every_child(engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.3}} for _ in range(8)])
    engine = start_engine(engines, processes=2, concurrency=16)  # the defaults: 16, 1 sync thread
    wait_finished(database, ids)
    starts = engines.ledger.starts()
    per_child: dict[int, int] = {}
    for r in starts:
        per_child[r[1]] = per_child.get(r[1], 0) + 1
    assert sorted(per_child.values()) == [4, 4], per_child
    assert stop(engine) == 0


def test_a_hung_sync_job_holds_no_other_job_behind_it(
        engines: EngineProcs, database: str) -> None:
    hung = enqueue(database, [{"task": "sleep", "payload": {"s": 60}}])  # first in line
    others = enqueue(database, [{"task": "sleep", "payload": {"s": 0.05}} for _ in range(15)])
    engine = start_engine(engines, "--shutdown-timeout", "1", processes=2, concurrency=16)
    wait_for(lambda: len(history(database, others)) == 15, timeout=20,
             what="the jobs enqueued after the hung one to finish")
    # They ran on the other child, while the hung one held only its own slot.
    hung_pid = next(r[1] for r in engines.ledger.starts() if r[0] == hung[0])
    assert all(r[1] != hung_pid for r in engines.ledger.starts() if r[0] in others)
    running = fetch(database, "select id from skivi.job_live where locked_by is not null")
    assert running == [(hung[0],)]
    assert stop(engine) == 0


def test_jobs_list_never_shows_as_running_a_job_that_has_not_started(
        engines: EngineProcs, database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from skivi.cli import main

    hung = enqueue(database, [{"task": "sleep", "payload": {"s": 60}}])  # first in line
    behind = enqueue(database, [{"task": "sleep", "payload": {"s": 60}} for _ in range(5)])
    config = tmp_path / "skivi.toml"
    config.write_text("[worker]\nheartbeat_interval = 0.2\n")
    # One child, one sync thread: the hung job runs, the five wait claimed in the parent.
    engine = start_engine(engines, "--config", str(config), "--shutdown-timeout", "1",
                          processes=1, concurrency=16)

    def states() -> dict[int, str] | None:
        assert main(["jobs", "list", "--json", "--database-url", database]) == 0
        listed = {j["id"]: j["state"] for j in orjson.loads(capsys.readouterr().out)["jobs"]}
        return listed if listed.get(hung[0]) == "running" else None

    listed = wait_for(states, timeout=10, what="the hung job to be reported running")
    assert listed == {hung[0]: "running", **{i: "claimed" for i in behind}}, listed
    assert len(engines.ledger.starts()) == 1  # the five never started
    assert main(["queues", "--json", "--database-url", database]) == 0
    (queue,) = orjson.loads(capsys.readouterr().out)["queues"]
    assert (queue["running"], queue["claimed"]) == (1, 5), queue
    assert stop(engine) == 0


# -- 5. a timeout kills only what it must ---------------------------------------------------

def test_a_timeout_kill_gives_the_childs_other_jobs_back_without_losing_an_attempt(
        engines: EngineProcs, database: str) -> None:
    hung = enqueue(database, [{"task": "sync_hang", "max_attempts": 1}])
    others = enqueue(database, [{"task": "async_sleep", "payload": {"s": 3}, "max_attempts": 1}
                                for _ in range(3)])
    engine = start_engine(engines, processes=1, concurrency=8)
    done = wait_finished(database, hung + others, timeout=40)
    assert done[hung[0]][0] == "exhausted"
    assert "timeout" in (done[hung[0]][2] or ""), done[hung[0]]
    assert {i: done[i][0] for i in others} == dict.fromkeys(others, "completed"), done
    assert stop(engine) == 0


# -- 6. a sync handler that returns an awaitable has it awaited ----------------------------

def test_an_awaitable_returned_by_a_sync_handler_is_awaited(
        engines: EngineProcs, database: str) -> None:
    ok, bad = enqueue(database, [{"task": "returns_awaitable"},
                                 {"task": "returns_awaitable", "payload": {"fail": True},
                                  "max_attempts": 1}])
    engine = start_engine(engines, processes=1)
    done = wait_finished(database, [ok, bad])
    assert done[ok][0] == "completed"
    assert done[bad][0] == "exhausted"
    assert "failed after being awaited" in (done[bad][2] or "")
    awaited = [r[0] for r in engines.ledger.rows() if r[3] == "awaited"]
    assert sorted(awaited) == sorted([ok, bad])
    assert stop(engine) == 0
    assert "never awaited" not in log_of(engine)


# -- 7. --once runs everything runnable before it exits ------------------------------------

def test_once_runs_every_job_of_a_serial_queue_before_it_exits(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "noop", "queue_name": "q"} for _ in range(25)])
    engine = start_engine(engines, "--once", processes=1, concurrency=1)
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert live_jobs(database) == 0
    assert len(history(database, ids)) == 25


def observed(ledger: Ledger) -> dict[int, dict[str, Any]]:
    """What the `observe` handler saw, per job id (the last run of each)."""
    path = ledger.path.with_name(ledger.path.name + ".observed")
    if not path.exists():
        return {}
    return {(d := orjson.loads(line))["id"]: d for line in path.read_text().splitlines()}


# -- 7b. a row stored with a run_at Python cannot hold runs like any other -------------------

@pytest.mark.parametrize("task", ["observe", "async_sleep", "no_such_task"])
def test_a_job_stored_with_run_at_minus_infinity_runs_and_frees_its_slot(
        engines: EngineProcs, database: str, task: str) -> None:
    """Such a row comes from SQL (add_job('x', run_at => '-infinity')); the claim message
    spells it "-infinity", which once crashed the dispatch in the child and held the slot.
    One child, one slot: the ordinary job behind it runs only if the slot was freed."""
    rows = fetch(database, "insert into skivi.job (task_identifier, run_at, max_attempts) "
                           "values (%s, '-infinity', 1) returning id", task)
    odd = int(rows[0][0])
    engine = start_engine(engines, processes=1, concurrency=1)
    after = enqueue(database, [{"task": "noop", "max_attempts": 1}])
    done = wait_finished(database, [odd, *after])
    expected = "exhausted" if task == "no_such_task" else "completed"
    assert done[odd][0] == expected, done
    assert done[after[0]][0] == "completed", done
    if task == "observe":
        assert observed(engines.ledger)[odd]["run_at"] == "0001-01-01T00:00:00+00:00"
    assert stop(engine) == 0, log_of(engine)
    assert "Traceback" not in log_of(engine)


def test_a_null_payload_from_sql_reaches_the_handler_as_python_none_does(
        engines: EngineProcs, database: str) -> None:
    """skivi.add_job(system, task) with payload=None stores {}; from SQL, 'null'::jsonb is a
    JSON null. Both mean "no payload", and a handler sees {} for each."""
    from_sql = [int(r[0]) for r in fetch(
        database, "select id from skivi.add_job('observe', 'null'::jsonb) "
                  "union all select id from skivi.add_job('observe', null) "
                  "union all select id from skivi.add_jobs("
                  "'[{\"task\": \"observe\", \"payload\": null}]'::jsonb)")]
    from_sql += [int(r[0]) for r in fetch(
        database, "insert into skivi.job (task_identifier, payload) "
                  "values ('observe', 'null') returning id")]
    from_python = enqueue(database, [{"task": "observe", "payload": None},
                                     {"task": "observe", "queue_name": "q", "payload": None}])
    engine = start_engine(engines, processes=1)
    ids = [*from_sql, *from_python]
    done = wait_finished(database, ids)
    assert {i: done[i][0] for i in ids} == dict.fromkeys(ids, "completed"), done
    seen = observed(engines.ledger)
    assert {i: seen[i]["payload"] for i in ids} == {i: {} for i in ids}
    assert stop(engine) == 0, log_of(engine)


# -- 8. serial queues do not starve other engines -------------------------------------------

def test_serial_queues_are_shared_between_engines(engines: EngineProcs, database: str) -> None:
    a = start_engine(engines, processes=1, concurrency=1)
    b = start_engine(engines, processes=1, concurrency=1)
    for p in (a, b):
        wait_for(lambda p=p: "started" in log_of(p), timeout=30, what="the engines to start")
    t0 = time.time()
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 1}, "queue_name": f"q{i}"}
                             for i in range(5)])
    wait_finished(database, ids, timeout=20)
    took = max(r[4] for r in engines.ledger.rows() if r[3] == "end") - t0
    assert len({r[1] for r in engines.ledger.starts()}) == 2  # both engines' children ran
    assert took < 4.5, took  # two at a time: ~3 s; one engine taking all five: 5 s
    assert stop(a) == 0 and stop(b) == 0


# -- 9. an unmigrated schema fails fast ------------------------------------------------------

def test_start_without_migrating_an_unmigrated_schema_fails_fast(make_database: Any) -> None:
    url = make_database(template=None)
    system = skivi.create_system({"database": {"connection_string": url}},
                                 {"noop": lambda ctx: None})
    t0 = time.monotonic()
    with pytest.raises(SchemaNotMigrated, match="skivi migrate"):
        system.start(migrate=False)
    assert time.monotonic() - t0 < 10
    assert system.engine_pid is None
    system.stop()


def test_the_engine_with_no_migrate_exits_3_on_an_unmigrated_schema(
        make_database: Any, tmp_path: Path) -> None:
    url = make_database(template=None)
    procs = EngineProcs(url, Ledger(tmp_path / "ledger.txt"))
    engine = start_engine(procs, "--no-migrate", processes=1)
    assert engine.wait(timeout=30) == 3
    assert "skivi migrate" in log_of(engine)


# -- 10. the log tells what happened to jobs -------------------------------------------------

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \d+ [\w.]+: ")


def test_the_log_says_what_happened_to_failed_exhausted_and_unhandled_jobs(
        engines: EngineProcs, database: str) -> None:
    failing = enqueue(database, [{"task": "fail", "max_attempts": 2}])
    missing = enqueue(database, [{"task": "no-such-task"} for _ in range(7)])
    logging_job = enqueue(database, [{"task": "log_lines", "payload": {"n": 1}}])
    engine = start_engine(engines, processes=1)
    wait_finished(database, failing + missing + logging_job)
    log = log_of(engine)
    job = failing[0]
    assert re.search(rf"WARNING .*job {job} \(fail\) failed, attempt 1 of 2: "
                     r"ValueError: boom on attempt 1; runs again at ", log), log
    assert re.search(rf"ERROR .*job {job} \(fail\) exhausted after attempt 2 of 2 "
                     r"\(max_attempts\): ValueError: boom on attempt 2", log), log
    # Unhandled: named, counted, at most one line per task per minute while running.
    assert len(re.findall(r"no-such-task", log)) <= 1, log
    assert f"job {logging_job[0]} (log_lines): line 0" in log
    assert stop(engine) == 0
    log = log_of(engine)
    counts = [int(n) for n in re.findall(r"(\d+) job\(s\) of task 'no-such-task' exhausted", log)]
    assert sum(counts) == 7 and len(counts) <= 2, log


def test_the_no_handler_log_stays_bounded_when_thousands_of_jobs_have_distinct_unknown_tasks(
        engines: EngineProcs, database: str) -> None:
    from skivi.engine.observer import NO_HANDLER_TASKS_MAX

    n = 3000
    ids = enqueue(database, [{"task": f"no-such-task-{i}"} for i in range(n)])
    t0 = time.monotonic()
    engine = start_engine(engines, processes=1)
    wait_for(lambda: len(history(database, ids)) == n, timeout=90,
             what=f"{n} unhandled jobs to reach history")
    assert stop(engine) == 0
    minutes = int((time.monotonic() - t0) // 60)
    log = log_of(engine)
    named = [int(c) for c in re.findall(r"(\d+) job\(s\) of task 'no-such-task-\d+' "
                                        r"exhausted", log)]
    others = re.findall(r"(\d+) job\(s\) of (?:over )?(\d+) other tasks without a handler "
                        r"exhausted \(e\.g\. 'no-such-task-\d+'", log)
    # One line per tracked name, and the rest together: once at first, at most once a
    # minute after, and what is left at shutdown.
    assert len(named) <= NO_HANDLER_TASKS_MAX, len(named)
    assert 1 <= len(others) <= 2 + minutes, others
    assert sum(named) + sum(int(c) for c, _ in others) == n
    assert len(log.splitlines()) < NO_HANDLER_TASKS_MAX + 50, len(log.splitlines())


def test_log_lines_of_several_children_never_interleave(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "log_lines", "payload": {"n": 200, "width": 3000}}
                             for _ in range(4)])
    engine = start_engine(engines, processes=2, concurrency=2)
    wait_finished(database, ids, timeout=60)
    assert stop(engine) == 0
    lines = log_of(engine).splitlines()
    job_lines = [ln for ln in lines if "(log_lines): line" in ln]
    assert len(job_lines) == 800
    bad = [ln[:200] for ln in job_lines
           if not LOG_LINE.match(ln) or not ln.endswith("x" * 3000)]
    assert bad == []


# -- 11. bad engine arguments get a clear error ---------------------------------------------

def run_bad_engine(database: str, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "skivi.engine", "--tasks", str(TASKS_DIR), *args]
    if "--database-url" not in args:
        cmd += ["--database-url", database]
    return run_engine(cmd, env=env, timeout=timeout)


@pytest.mark.parametrize(("args", "env"), [
    (["--queues", ","], {}),
    (["--queues", ""], {}),
    (["--queues", "a,,b"], {}),
    ([], {"SKIVI_QUEUES": ""}),
    ([], {"SKIVI_QUEUES": ","}),
    (["--database-url", "not a url"], {}),
    (["--database-url", "postgresql://localhost/x?bogus=1"], {}),
    (["--database-url", "postgresql://postgres@127.0.0.1:notaport/test"], {}),
])
def test_bad_engine_arguments_exit_2_with_one_clear_line(
        database: str, args: list[str], env: dict[str, str]) -> None:
    done = run_bad_engine(database, *args, "--once", env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip(), "no error message"


def test_an_authentication_failure_is_not_retried(database: str) -> None:
    bad = re.sub(r"user=\S+", "user=nobody_skivi_test", database)
    if bad == database:
        bad = database.replace("://", "://nobody_skivi_test@", 1)
    t0 = time.monotonic()
    done = run_bad_engine(database, "--database-url", bad, "--once")
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - t0 < 15
    assert "nobody_skivi_test" in done.stderr
    assert "retrying" not in done.stderr


def test_the_start_line_shows_the_queue_filter_and_processes_over_cpus_are_warned(
        engines: EngineProcs, database: str) -> None:
    engine = start_engine(engines, "--queues", "mail,reports", processes=4 * os.cpu_count() + 1,
                           concurrency=1)
    wait_for(lambda: "started" in log_of(engine), timeout=60, what="the start line")
    log = log_of(engine)
    assert "queues mail,reports" in log
    assert "CPUs are usable" in log
    assert stop(engine) == 0


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.mark.skipif(not os.access(PIDS_CGROUP, os.W_OK),
                    reason="needs a writable cgroup v1 pids controller to limit forks")
def test_a_fork_failure_at_start_is_one_clear_line_and_exit_1(database: str) -> None:
    group = PIDS_CGROUP / f"skivi-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("1")  # the engine itself, nothing more

        def in_the_group() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        cmd = [sys.executable, "-m", "skivi.engine", "--tasks", str(TASKS_DIR),
               "--database-url", database, "--processes", "2", "--no-migrate"]
        done = run_engine(cmd, timeout=60, preexec_fn=in_the_group)
    finally:
        group.rmdir()
    assert done.returncode == 1, done.stderr
    assert "cannot start child process 0 of 2" in done.stderr
    assert "Traceback" not in done.stderr
