"""Kept results against real engines (``python -m skivi.engine`` subprocesses) and the real
PostgreSQL: values stored and returned by get_result / wait_for, failures, exhaustion,
values JSON cannot carry, retention, and tasks that keep nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skivi
from tests.support.engines import (
    REPO,
    EngineGroup,
    EngineProcess,
    child_env,
    engine_argv,
    log_of,
)
from tests.support.rows import fetch
from tests.support.wait import wait_for

RESULT_TASKS = REPO / "tests" / "engine" / "result_tasks"


@pytest.fixture
def group(tmp_path: Path) -> Iterator[EngineGroup]:
    with EngineGroup(tmp_path) as g:
        yield g


def start(group: EngineGroup, url: str, *args: str) -> EngineProcess:
    return group.spawn(engine_argv(url, RESULT_TASKS, *args, processes=1, concurrency=4),
                       child_env())


def run_once(group: EngineGroup, url: str, *args: str) -> None:
    engine = start(group, url, "--once", *args)
    assert engine.wait_or_kill(120) == 0, log_of(engine)


def kept(url: str) -> dict[int, tuple[str, str, object, str | None]]:
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in fetch(
        url, "select id, task_identifier, outcome, value, error from skivi.job_result")}


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "skivi.toml"
    path.write_text(text)
    return str(path)


def test_value_is_stored_and_returned_when_the_task_keeps_results(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    sync_job = skivi.add_job(system, "add", {"a": 2, "b": 3})
    async_job = skivi.add_job(system, "async_add", {"a": 1, "b": 1})
    before = skivi.get_result(system, sync_job.id)
    assert before.state is skivi.ResultState.WAITING and not before.done
    run_once(group, database)
    result = skivi.get_result(system, sync_job.id)
    assert result.state is skivi.ResultState.COMPLETED and result.done
    assert result.value == {"sum": 5, "attempt": 1} and result.error is None
    assert result.task_identifier == "add" and result.finished_at is not None
    other = asyncio.run(skivi.get_result_async(system, async_job.id))
    assert (other.state, other.value) == (skivi.ResultState.COMPLETED, [2])
    assert kept(database)[sync_job.id][:2] == ("add", "completed")


def test_failure_is_reported_then_the_value_when_a_retry_succeeds(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    waiting = skivi.add_job(system, "fail_slowly", {})  # retried in an hour
    run_once(group, database)
    failed = skivi.get_result(system, waiting.id)
    assert failed.state is skivi.ResultState.FAILED and not failed.done
    assert failed.error == "boom on attempt 1" and failed.attempts == 1
    assert waiting.id not in kept(database)  # not finished: nothing kept yet

    engine = start(group, database)
    job = skivi.add_job(system, "flaky", {})
    result = skivi.wait_for_sync(system, job.id, timeout=60)
    assert (result.state, result.value, result.error) == (
        skivi.ResultState.COMPLETED, "ok on attempt 2", None)
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_exhausted_job_keeps_its_last_error_when_its_attempts_run_out(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    engine = start(group, database)
    job = skivi.add_job(system, "fail", {}, max_attempts=2)
    result = asyncio.run(skivi.wait_for(system, job.id, timeout=60))
    assert result.state is skivi.ResultState.EXHAUSTED
    assert result.error == "boom on attempt 2" and result.value is None
    # Kept as a result, not only in the history (which is pruned on its own schedule).
    assert kept(database)[job.id] == ("fail", "exhausted", None, "boom on attempt 2")
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_value_json_cannot_carry_completes_the_job_and_says_why_when_returned(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    job = skivi.add_job(system, "unjsonable", {})
    run_once(group, database)
    result = skivi.get_result(system, job.id)
    assert result.state is skivi.ResultState.COMPLETED and result.value is None
    assert result.error is not None
    assert "return value was not kept" in result.error and "set" in result.error
    assert fetch(database, "select count(*) from skivi.job_live")[0][0] == 0  # not retried


def test_nothing_is_kept_when_the_task_does_not_keep_results(
        group: EngineGroup, system: skivi.System, database: str, tmp_path: Path) -> None:
    plain = skivi.add_job(system, "plain", {})
    never = skivi.add_job(system, "never", {})
    run_once(group, database)
    assert kept(database) == {}
    assert skivi.get_result(system, plain.id).state is skivi.ResultState.UNKNOWN

    # worker.store_results keeps the values of the tasks that say nothing; store_result=False
    # still wins.
    config = config_file(tmp_path, "[worker]\nstore_results = true\n")
    plain = skivi.add_job(system, "plain", {})
    never = skivi.add_job(system, "never", {})
    run_once(group, database, "--config", config)
    assert set(kept(database)) == {plain.id}
    assert skivi.get_result(system, plain.id).value == {"not": "kept"}
    assert skivi.get_result(system, never.id).state is skivi.ResultState.UNKNOWN


def test_kept_results_are_pruned_when_their_retention_ends(
        group: EngineGroup, system: skivi.System, database: str, tmp_path: Path) -> None:
    config = config_file(tmp_path, "[worker]\nresult_retention = 1.0\n")
    engine = start(group, database, "--config", config)
    job = skivi.add_job(system, "add", {"a": 1, "b": 2})
    assert skivi.wait_for_sync(system, job.id, timeout=60).value == {"sum": 3, "attempt": 1}
    wait_for(lambda: job.id not in kept(database), timeout=30,
             what=f"the result of job {job.id} to be pruned")
    assert skivi.get_result(system, job.id).state is skivi.ResultState.UNKNOWN
    assert engine.stop(timeout=30) == 0, log_of(engine)
    assert "pruned 1 kept results" in log_of(engine)


def test_wait_for_wakes_on_the_notification_when_listening(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    engine = start(group, database)
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    job = skivi.add_job(system, "add", {"a": 4, "b": 4}, run_at=run_at)
    started = time.monotonic()
    # Polling every minute: only the notification can end this wait within 30 s.
    result = asyncio.run(skivi.wait_for(system, job.id, timeout=30, poll_interval=60))
    took = time.monotonic() - started
    assert result.value == {"sum": 8, "attempt": 1}
    assert 1.0 < took < 30
    sync_job = skivi.add_job(system, "add", {"a": 1, "b": 0},
                             run_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
    assert skivi.wait_for_sync(system, sync_job.id, timeout=30,
                               poll_interval=60).value == {"sum": 1, "attempt": 1}
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_wait_for_polls_alone_when_not_listening(
        group: EngineGroup, system: skivi.System, database: str) -> None:
    job = skivi.add_job(system, "add", {"a": 1, "b": 1})
    with pytest.raises(skivi.ResultTimeout) as info:  # no engine yet: it never finishes
        asyncio.run(skivi.wait_for(system, job.id, timeout=0.5, poll_interval=0.1,
                                   listen=False))
    assert isinstance(info.value, TimeoutError) and str(job.id) in str(info.value)
    assert info.value.last.state is skivi.ResultState.WAITING
    engine = start(group, database)
    result = asyncio.run(skivi.wait_for(system, job.id, timeout=60, poll_interval=0.2,
                                        listen=False))
    assert result.value == {"sum": 2, "attempt": 1}
    assert skivi.wait_for_sync(system, job.id, timeout=5, listen=False).done
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_wait_for_returns_unknown_when_the_job_is_nowhere(system: skivi.System) -> None:
    result = skivi.wait_for_sync(system, 987654321, timeout=5)
    assert result.state is skivi.ResultState.UNKNOWN and result.done
