"""Bad and hostile input (reliability research §6.3): each case ends with a clear error or a
clear job state, and nothing is lost.

Handlers that misbehave run in one real engine for the whole module (``hostile_run``): each
job must end completed, or retried and exhausted with a readable last_error, while the engine
goes on running ordinary jobs. The handlers are defined here and loaded by the engine
through a one-line task file (``from tests.engine.test_hostile import HOSTILE_TASKS``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import skivi
from skivi.registry import task
from skivi.retry import Backoff
from tests.support.db import DATABASE_PREFIX, drop_database, url_for
from tests.support.engines import EngineProcs, Ledger, enqueue, log_of, run_engine
from tests.support.rows import fetch
from tests.support.wait import wait_for

FAST = Backoff(factor=0.01)
MARKER = "PAYLOAD-MARKER-5e1f0c"
ERROR_TEXT_MAX = 64 * 1024


def _record(ctx: Any) -> None:
    """The ledger line of tests/engine/tasks: job id, pid, attempt, event, time."""
    path = os.environ.get("SKIVI_TEST_LEDGER", "/dev/null")
    line = f"{ctx.job.id} {os.getpid()} {ctx.job.attempts} start {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def _exit(ctx: Any) -> None:
    _record(ctx)
    sys.exit(3)


def _os_exit(ctx: Any) -> None:
    _record(ctx)
    os._exit(9)


def _keyboard_interrupt(ctx: Any) -> None:
    _record(ctx)
    raise KeyboardInterrupt


async def _async_exit(ctx: Any) -> None:
    _record(ctx)
    await asyncio.sleep(0)
    sys.exit(4)


async def _async_keyboard_interrupt(ctx: Any) -> None:
    _record(ctx)
    await asyncio.sleep(0)
    raise KeyboardInterrupt


def _broken_str(ctx: Any) -> None:
    _record(ctx)
    raise BrokenStr


def _huge_error(ctx: Any) -> None:
    _record(ctx)
    raise ValueError("e" * (10 * 1024 * 1024))


def _nul_error(ctx: Any) -> None:
    _record(ctx)
    raise ValueError("before\x00after")


def _surrogate_error(ctx: Any) -> None:
    _record(ctx)
    raise ValueError("lone \ud800 surrogate")


def _return_lambda(ctx: Any) -> Any:
    _record(ctx)
    return lambda: None


def _return_socket(ctx: Any) -> Any:
    _record(ctx)
    return socket.socket()


def _return_huge(ctx: Any) -> Any:
    _record(ctx)
    return "x" * (100 * 1024 * 1024)


def _noop(ctx: Any) -> None:
    _record(ctx)


def _fail_quietly(ctx: Any) -> None:
    _record(ctx)
    raise RuntimeError("failing on purpose")


HOSTILE_TASKS = {
    "exit": task(_exit, backoff=FAST),
    "os_exit": task(_os_exit, backoff=FAST),
    "keyboard_interrupt": task(_keyboard_interrupt, backoff=FAST),
    "async_exit": task(_async_exit, backoff=FAST),
    "async_exit_with_timeout": task(_async_exit, backoff=FAST, timeout=30),
    "async_keyboard_interrupt": task(_async_keyboard_interrupt, backoff=FAST),
    "async_keyboard_interrupt_with_timeout": task(_async_keyboard_interrupt, backoff=FAST,
                                                  timeout=30),
    "broken_str": task(_broken_str, backoff=FAST),
    "huge_error": task(_huge_error, backoff=FAST),
    "nul_error": task(_nul_error, backoff=FAST),
    "surrogate_error": task(_surrogate_error, backoff=FAST),
    "return_lambda": task(_return_lambda, backoff=FAST),
    "return_socket": task(_return_socket, backoff=FAST),
    "return_huge": task(_return_huge, backoff=FAST),
    "noop": _noop,
    "fail_quietly": task(_fail_quietly, backoff=FAST),
}


def hostile_task_dir(tmp: Path) -> Path:
    directory = tmp / "tasks"
    directory.mkdir()
    (directory / "hostile.py").write_text(
        "from tests.engine.test_hostile import HOSTILE_TASKS as TASKS  # noqa: F401\n")
    return directory


# -- misbehaving handlers, all in one engine run --------------------------------------------------


@dataclass
class HostileRun:
    jobs: dict[str, int]
    ordinary: list[int]
    runs: dict[int, int]
    starts: list[tuple[int, int, int, str, float]]  # (job, pid, attempt, event, time)
    history: dict[int, tuple[str, str, int, str]]  # id -> (outcome, reason, attempts, error)
    left: int
    alive: bool
    exit_code: int | None
    log: str


_numbers = itertools.count(90_000)


@pytest.fixture(scope="module")
def hostile_run(admin: psycopg.Connection[Any], server_dsn: str, template_database: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRun]:
    name = f"{DATABASE_PREFIX}{next(_numbers)}"
    admin.execute(sql.SQL("create database {} template {}").format(
        sql.Identifier(name), sql.Identifier(template_database)))
    url = url_for(server_dsn, name)
    tmp = tmp_path_factory.mktemp("hostile")
    procs = EngineProcs(url, Ledger(tmp / "ledger.txt"))
    try:
        hostile = [t for t in HOSTILE_TASKS if t not in ("noop", "fail_quietly")]
        # One serial queue: one hostile job at a time in the whole engine, retries included,
        # so what each does shows in its own row. A child holds an async and a sync job at
        # once (its two lanes), and a child that dies fails every job it was running (see
        # the sibling test below, which runs ordinary jobs beside the killers).
        ids = enqueue(url, [{"task": t, "max_attempts": 2, "queue_name": "hostile"}
                            for t in hostile])
        ordinary = enqueue(url, [{"task": "noop"} for _ in range(50)])
        engine = procs.start("--tasks", str(hostile_task_dir(tmp)), processes=2,
                             concurrency=1)
        wait_for(lambda: fetch(url, "select count(*) from skivi.job_live")[0][0] == 0, timeout=60,
                 what="every hostile and ordinary job to end")
        alive = engine.poll() is None
        # The engine still takes new work after all that.
        ordinary += enqueue(url, [{"task": "noop"} for _ in range(20)])
        wait_for(lambda: fetch(url, "select count(*) from skivi.job_live")[0][0] == 0, timeout=30,
                 what="the jobs enqueued afterwards")
        history = {r[0]: (r[1], r[2], r[3], r[4]) for r in fetch(
            url, "select id, outcome, reason, attempts, last_error from skivi.job_history")}
        left = fetch(url, "select count(*) from skivi.job_live")[0][0]
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(timeout=30)
        yield HostileRun(dict(zip(hostile, ids, strict=True)), ordinary,
                         dict(procs.ledger.runs_per_job()), procs.ledger.starts(), history,
                         left, alive, code, log_of(engine))
    finally:
        procs.kill_all()
        drop_database(admin, name)


# (task, expected outcome: "completed" or "exhausted", text the last error must contain)
HOSTILE_CASES = [
    ("exit", "exhausted", "SystemExit: 3"),
    ("keyboard_interrupt", "exhausted", "KeyboardInterrupt"),
    ("async_exit", "exhausted", "SystemExit: 4"),
    ("async_exit_with_timeout", "exhausted", "SystemExit: 4"),
    ("async_keyboard_interrupt", "exhausted", "KeyboardInterrupt"),
    ("async_keyboard_interrupt_with_timeout", "exhausted", "KeyboardInterrupt"),
    ("os_exit", "exhausted", "died: exit code 9"),
    ("broken_str", "exhausted", "BrokenStr"),
    ("huge_error", "exhausted", "[truncated]"),
    ("nul_error", "exhausted", "before\\x00after"),
    ("surrogate_error", "exhausted", "lone \\ud800 surrogate"),
    ("return_lambda", "completed", ""),
    ("return_socket", "completed", ""),
    ("return_huge", "completed", ""),
]


@pytest.mark.parametrize(("name", "outcome", "text"), HOSTILE_CASES,
                         ids=[c[0] for c in HOSTILE_CASES])
def test_job_ends_in_a_clear_state_and_the_engine_goes_on_when_its_handler_misbehaves(
        hostile_run: HostileRun, name: str, outcome: str, text: str) -> None:
    job = hostile_run.jobs[name]
    if outcome == "completed":
        assert job not in hostile_run.history, hostile_run.history.get(job)
        assert hostile_run.runs.get(job) == 1
    else:
        assert job in hostile_run.history, f"{name}: no history row"
        got, reason, attempts, error = hostile_run.history[job]
        assert (got, reason, attempts) == ("exhausted", "max_attempts", 2)
        assert hostile_run.runs.get(job) == 2, "the failed attempt was not retried"
        assert text in error, error[:2000]
        assert "\x00" not in error and len(error) <= ERROR_TEXT_MAX + 100
        error.encode("utf-8")  # readable: valid UTF-8, no lone surrogates
    assert hostile_run.left == 0
    assert hostile_run.alive, hostile_run.log[-3000:]
    assert hostile_run.exit_code == 0, hostile_run.log[-3000:]


def test_other_jobs_run_once_unless_their_child_died_when_handlers_misbehave(
        hostile_run: HostileRun) -> None:
    killers = {hostile_run.jobs[name] for name in ("os_exit", "async_exit_with_timeout",
                                                   "async_keyboard_interrupt_with_timeout")}
    died = {pid for job, pid, *_ in hostile_run.starts if job in killers}
    for job in hostile_run.ordinary:
        runs = [r for r in hostile_run.starts if r[0] == job]
        assert runs, f"ordinary job {job} never ran"
        assert all(r[1] in died for r in runs[:-1]), f"job {job} ran again: {runs}"
        assert job not in hostile_run.history


def test_jobs_queued_behind_a_poison_job_keep_their_attempts_when_it_kills_their_child(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    """Jobs handed to a child but not started when it dies never ran: like jobs a graceful
    stop hands back, they should not be charged an attempt (nor wait a backoff)."""
    [poison] = enqueue(database, [{"task": "os_exit", "max_attempts": 1}])
    queued = enqueue(database, [{"task": "noop", "max_attempts": 1} for _ in range(3)])
    # One child, four slots, sync handlers: the child gets all four in one frame and runs
    # them one at a time, the poison job first.
    engine = engines.start("--tasks", str(hostile_task_dir(tmp_path)), processes=1,
                           concurrency=4)
    wait_for(lambda: fetch(database, "select count(*) from skivi.job_live")[0][0] == 0, timeout=30,
             what="every job to end")
    assert engine.poll() is None, log_of(engine)
    history = fetch(database, "select id, reason, last_error from skivi.job_history order by id")
    assert [h[0] for h in history] == [poison], \
        f"jobs that never started were exhausted: {history[1:]}"
    assert engines.ledger.runs_per_job() == {poison: 1, **dict.fromkeys(queued, 1)}


# -- payloads refused at enqueue ------------------------------------------------------------------


def _nested(depth: int, leaf: Any, as_dict: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


def _cycle() -> Any:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize(("payload", "match"), [
    (_nested(10_000, 1, as_dict=False), "nested more than"),
    (_nested(10_000, 1, as_dict=True), "nested more than"),
    ({"ok": [{"deep": [1.0, {"x": math.nan}]}]}, "NaN"),
    ({"ok": {"v": -math.inf}}, "Infinity"),
    ({"\ud800": 1}, "surrogate|encod|serializ"),
    ({"list": ["fine", "bad \udfff"]}, "surrogate|encod|serializ"),
    (_cycle(), "nested more than|cycle"),
], ids=["list-nesting-10000", "dict-nesting-10000", "nan-deep-inside", "minus-infinity",
        "surrogate-in-key", "surrogate-in-list", "reference-cycle"])
def test_hostile_payload_is_refused_and_nothing_written_when_enqueued(
        system: skivi.System, database: str, payload: Any, match: str) -> None:
    with pytest.raises(skivi.PayloadError, match=match):
        skivi.add_job(system, "t", payload)
    with pytest.raises(skivi.PayloadError, match=match):
        skivi.add_jobs(system, [{"task": "fine"}, {"task": "t", "payload": payload}])
    assert fetch(database, "select count(*) from skivi.job_live")[0][0] == 0


# -- scheduling far away --------------------------------------------------------------------------


def test_job_is_stored_and_not_run_when_run_at_is_in_year_9999(
        engines: EngineProcs, database: str) -> None:
    at = dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC)
    [late] = enqueue(database, [{"task": "noop", "run_at": at}])
    now = enqueue(database, [{"task": "noop"}])
    engine = engines.start("--once")
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert set(engines.ledger.runs_per_job()) == set(now)
    assert fetch(database, "select id, run_at, attempts, locked_by from skivi.job_live") == [
        (late, at, 0, None)]


# -- configuration the engine refuses -------------------------------------------------------------


@pytest.mark.parametrize(("toml", "key"), [
    ("[worker]\nheartbeat_interval = 60.0\nlease_timeout = 30.0\n", "worker.lease_timeout"),
    ("[worker]\nconcurrency = 0\n", "worker.concurrency"),
    ('[[cron]]\nidentifier = "nightly"\nschedule = "0 3 * * *"\ntimezone = "Mars/Olympus"\n',
     "timezone"),
], ids=["heartbeat-longer-than-lease", "concurrency-0", "unknown-cron-time-zone"])
def test_engine_exits_2_naming_the_key_when_the_configuration_is_bad(
        tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "skivi.toml"
    config.write_text(toml)
    result = run_engine(
        [sys.executable, "-m", "skivi.engine", "--config", str(config), "--database-url",
         "postgresql://nobody@127.0.0.1:1/none", "--tasks", str(hostile_task_dir(tmp_path))],
        timeout=60)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# -- task files outside the directory -------------------------------------------------------------


def test_task_file_symlinked_from_outside_is_not_loaded_when_the_engine_starts(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    imported = tmp_path / "imported-outside-file"
    (outside / "evil.py").write_text(
        f"open({str(imported)!r}, 'w').close()\n"
        "TASKS = {'evil': lambda ctx: None}\n")
    directory = hostile_task_dir(tmp_path)
    (directory / "evil.py").symlink_to(outside / "evil.py")
    [evil] = enqueue(database, [{"task": "evil", "max_attempts": 5}])
    [fine] = enqueue(database, [{"task": "noop"}])
    engine = engines.start("--once", "--tasks", str(directory))
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert fetch(database, "select outcome, reason, attempts from skivi.job_history "
                           "where id = %s", evil) == [("exhausted", "no_handler", 1)]
    assert engines.ledger.runs_per_job() == {fine: 1}
    assert not imported.exists(), "the file outside the task directory was executed"
    log = log_of(engine)
    assert "skipping task file" in log and "evil.py" in log and "outside the task directory" \
        in log, log


# -- payloads never reach the log -----------------------------------------------------------------


def test_payload_contents_never_appear_in_the_log_when_jobs_complete_fail_or_are_exhausted(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    secret = {"card": MARKER, "nested": [MARKER, {MARKER: MARKER}]}
    specs = ([{"task": "noop", "payload": secret}] * 5
             + [{"task": "fail_quietly", "payload": secret, "max_attempts": 2}] * 3
             + [{"task": "os_exit", "payload": secret, "max_attempts": 1}]
             + [{"task": "no-such-task", "payload": secret}]
             + [{"task": "noop", "payload": [MARKER, MARKER]}])
    ids = enqueue(database, specs)
    engine = engines.start("--tasks", str(hostile_task_dir(tmp_path)), processes=2,
                           concurrency=2)
    wait_for(lambda: fetch(database, "select count(*) from skivi.job_live")[0][0] == 0, timeout=60,
             what="every job to end")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)
    exhausted = fetch(database, "select count(*) from skivi.job_history")[0][0]
    assert exhausted == 5, "the failing, crashing and unknown jobs must all be exhausted"
    assert set(engines.ledger.runs_per_job()) <= set(ids)
    log = log_of(engine)
    assert "INFO" in log and "died" in log  # the log did speak about these jobs
    assert MARKER not in log, [line for line in log.splitlines() if MARKER in line][:5]
