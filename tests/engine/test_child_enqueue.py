"""Handlers' ctx.add_job / ctx.add_job_async in a real engine: through the engine's parent
(database.child_enqueue = "parent", the default; skivi.engine.relay) or through a pool of
each child's own ("pool"). The follow-ups are stored as asked and run, the Jobs returned
are the stored ones, a refused spec fails the handler's job with the usual error, and a
parent that stops answering fails the handler's enqueue in bounded time instead of
hanging it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import skivi
from tests.support.engines import EngineProcs, enqueue, log_of, wait_registered
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for


def _config(tmp_path: Path, **sections: dict[str, Any]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in values.items()]
    path = tmp_path / "skivi.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _kept(path: Path) -> list[dict[str, Any]]:
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def _exhausted_error(url: str, job: int) -> str:
    [(outcome, error)] = fetch(url, "select outcome, last_error from skivi.job_history "
                                    "where id = %s", job)
    assert outcome == "exhausted", (outcome, error)
    return str(error)


@pytest.mark.parametrize(("child_enqueue", "sync_threads"),
                         [("parent", 1), ("parent", 2), ("pool", 1)])
def test_follow_ups_of_sync_and_async_handlers_are_stored_as_asked_and_run(
        engines: EngineProcs, database: str, tmp_path: Path, child_enqueue: str,
        sync_threads: int) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)
    parents = {}
    for task, tag in (("add_as_told", "s"), ("add_as_told_async", "a")):
        specs = [
            {"task": "noop", "payload": {"n": 1, "by": tag}},
            {"task": "noop", "payload": {"n": 2}, "job_key": f"later-{tag}",
             "run_at": later.isoformat(), "priority": 3, "max_attempts": 7,
             "queue_name": f"q-{tag}", "flags": ["f"]},
            {"task": "noop", "payload": {"n": 3}, "job_key": f"later-{tag}",
             "job_key_mode": "unsafe_dedupe"},
        ]
        out = tmp_path / f"{tag}.json"
        [parents[tag]] = enqueue(database, [{"task": task, "payload": {
            "out": str(out), "specs": specs}}])
    config = _config(tmp_path, database={"child_enqueue": child_enqueue},
                     worker={"sync_threads": sync_threads})
    engine = engines.start("--once", "--config", config, processes=1, concurrency=4)
    assert engine.wait(timeout=60) == 0, log_of(engine)
    ran = engines.ledger.runs_per_job()
    for tag in ("s", "a"):
        now, keyed, again = _kept(tmp_path / f"{tag}.json")
        # Run at once: stored, ran, returned as stored.
        assert (now["task_identifier"], now["payload"], now["outcome"]) == (
            "noop", {"n": 1, "by": tag}, "inserted")
        assert ran[now["id"]] == 1 and ran[parents[tag]] == 1
        # Every option honoured, and the returned Job is the stored row.
        assert keyed["outcome"] == "inserted"
        [row] = fetch(database, "select id, task_identifier, payload, queue_name, priority, "
                                "run_at, max_attempts, key, flags, created_at from skivi.job_live "
                                "where key = %s", f"later-{tag}")
        assert row == (keyed["id"], "noop", {"n": 2}, f"q-{tag}", 3, later, 7,
                       f"later-{tag}", ["f"], dt.datetime.fromisoformat(keyed["created_at"]))
        assert dt.datetime.fromisoformat(keyed["run_at"]) == later
        assert (keyed["priority"], keyed["max_attempts"], keyed["key"], keyed["queue_name"],
                keyed["flags"]) == (3, 7, f"later-{tag}", f"q-{tag}", ["f"])
        # The same key again, deduplicated: the stored job is returned, nothing added.
        assert (again["id"], again["outcome"]) == (keyed["id"], "deduplicated")
        assert keyed["id"] not in ran
    assert live_jobs(database) == 2  # the two keyed jobs, due in an hour


@pytest.mark.parametrize("task", ["add_as_told", "add_as_told_async"])
def test_a_refused_follow_up_fails_the_handlers_job_with_the_usual_error(
        engines: EngineProcs, database: str, tmp_path: Path, task: str) -> None:
    bad = {"task": "noop", "max_attempts": 0}
    with pytest.raises(skivi.JobSpecError) as usual:
        skivi.JobSpec.coerce(bad).check()
    big = {"task": "noop", "payload": {"pad": "x" * 400}}
    [checked, refused] = enqueue(database, [
        {"task": task, "payload": {"out": str(tmp_path / "1.json"), "specs": [bad]},
         "max_attempts": 1},
        {"task": task, "payload": {"out": str(tmp_path / "2.json"), "specs": [big]},
         "max_attempts": 1}])
    # The database's own limit (the child's, validation.max_payload_bytes, is 1 MiB): a
    # spec the child lets through and the database refuses. --no-migrate keeps it.
    fetch(database, "update skivi.limits set max_payload_bytes = 200 returning 1")
    engine = engines.start("--once", "--no-migrate", processes=1, concurrency=4)
    assert engine.wait(timeout=60) == 0, log_of(engine)
    assert _exhausted_error(database, checked) == str(usual.value)
    error = _exhausted_error(database, refused)
    assert error.startswith("the database refused the enqueue of 1 job of task 'noop': "
                            "add_jobs: spec 1 has a payload of "), error
    assert "limits.max_payload_bytes" in error and error.endswith("(SQLSTATE 22023)"), error
    assert not fetch(database, "select id from skivi.job_live where task_identifier = 'noop'")
    assert not (tmp_path / "1.json").exists() and not (tmp_path / "2.json").exists()


def test_an_enqueue_the_parent_never_answers_fails_in_bounded_time_and_is_not_stored(
        engines: EngineProcs, database: str, tmp_path: Path) -> None:
    """The parent is stopped (SIGSTOP) while its handlers enqueue: each enqueue gives up
    after database.connect_timeout + the statement bound + 2 s, the job fails with
    EnqueueTimeout, and the parent, once continued, does not run the stale requests."""
    go = tmp_path / "go"
    follow = {"task": "noop", "payload": {"never": True}}
    ids = enqueue(database, [
        {"task": task, "payload": {"out": str(tmp_path / f"{task}.json"), "specs": [follow],
                                   "wait_for": str(go)}, "max_attempts": 1}
        for task in ("add_as_told", "add_as_told_async")])
    # Bounds: 1 s to start + (lease - heartbeat) / 2 = 1.5 s to run + 2 s = 4.5 s. A lease
    # longer than the stop, so the engine is still alive when continued.
    config = _config(tmp_path, database={"connect_timeout": 1.0},
                     worker={"lease_timeout": 20.0, "heartbeat_interval": 17.0})
    engine = engines.start("--config", config, processes=1, concurrency=4)
    wait_registered(database, [engine.pid])
    wait_for(lambda: {r[0] for r in engines.ledger.starts()} >= set(ids), timeout=30,
             what="both handlers to start")
    os.kill(engine.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        go.touch()
        time.sleep(6.5)
    finally:
        os.kill(engine.pid, signal.SIGCONT)
    wait_for(lambda: len(fetch(database, "select 1 from skivi.job_history where id = any(%s)",
                               ids)) == 2, timeout=30, what="both jobs to fail")
    # The sync handler (on the child's loop thread: sync_threads = 1) waited for the answer
    # until its bound. The async one could only send once the loop was free again, and so
    # may have been answered by the continued parent: too late to start, not run.
    sync_error, async_error = (_exhausted_error(database, job) for job in ids)
    unanswered = "the enqueue of 1 job of task 'noop' got no answer from the engine within 4.5 s"
    assert sync_error.startswith(unanswered), sync_error
    assert async_error.startswith(unanswered) or async_error.startswith(
        "the enqueue of 1 job of task 'noop' could not start within 1 s "
        "(database.connect_timeout)"), async_error
    time.sleep(1)  # the stale requests, read after the continue, are answered and dropped
    assert not fetch(database, "select id from skivi.job_live where task_identifier = 'noop'")
    assert time.monotonic() - stopped_at < 30
    assert engine.poll() is None, log_of(engine)
    assert engine.stop(timeout=30) == 0, log_of(engine)
