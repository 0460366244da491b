"""Event handlers registered on the engine's own process (``python -m skivi.engine`` style:
no application in front) run in the parent, and one that raises never stops the engine."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import skivi
from skivi import monitoring
from tests.support.db import connect
from tests.support.engines import TASKS_DIR, run_engine
from tests.support.wait import wait_for

SCRIPT = textwrap.dedent("""
    import json, sys
    import skivi
    from skivi import monitoring
    from skivi.engine import run

    system = skivi.create_system({"database": {"connection_string": sys.argv[1]},
                                  "worker": {"task_directory": sys.argv[2], "processes": 2}})
    seen = []

    def boom(event):
        seen.append(event["type"])
        raise RuntimeError("a broken event handler")

    monitoring.on(system.emitter, "all", boom)
    code = run(system.instance, system.emitter, once=True)
    print(json.dumps({"code": code, "seen": seen, "errors": system.emitter.handler_errors}))
""")


def test_raising_handler_never_stops_the_engine_when_registered_in_its_process(
        database: str) -> None:
    system = skivi.create_system({"database": {"connection_string": database}})
    try:
        skivi.add_jobs(system, [{"task": "noop"} for _ in range(200)])
    finally:
        system.stop()
    out = run_engine([sys.executable, "-c", SCRIPT, database, str(TASKS_DIR)], timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert report["seen"].count("job/completed") == 200
    assert report["seen"][0] == "pool/start" and report["seen"][-1] == "pool/stop"
    assert report["errors"] == len(report["seen"])
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.job_live").fetchone() == (0,)


def test_exhausted_event_says_superseded_when_a_running_job_lost_its_key_and_then_failed(
        database: str, tmp_path: Path) -> None:
    go = tmp_path / "fail-now"
    system = skivi.create_system({"database": {"connection_string": database},
                                  "worker": {"task_directory": str(TASKS_DIR),
                                             "processes": 1, "concurrency": 4}})
    seen = monitoring.collecting_emitter()
    monitoring.on(system.emitter, "job/exhausted", lambda ev: seen.replay([ev]))
    try:
        system.start()
        [old, other] = [j.id for j in skivi.add_jobs(system, [
            {"task": "fail_when_told", "payload": {"path": str(go)}, "job_key": "report",
             "max_attempts": 5},
            {"task": "fail_when_told", "payload": {"path": str(go)}, "max_attempts": 1}])]
        with connect(database) as c:
            wait_for(lambda: c.execute(
                "select count(*) from skivi.job_live where id = any(%s) and locked_by is not null",
                [[old, other]]).fetchone() == (2,), what="both jobs claimed")
        # A new job takes the key: the running one keeps running, without key or retries.
        skivi.add_jobs(system, [{"task": "noop", "job_key": "report"}])
        go.touch()
        wait_for(lambda: len(seen.of("job/exhausted")) == 2, timeout=30,
                 what="two job/exhausted events in the application")
    finally:
        assert system.stop() == 0
    reasons = {d["job_id"]: d["reason"] for d in seen.of("job/exhausted")}
    with connect(database) as c:
        history = dict(c.execute("select id, reason from skivi.job_history").fetchall())
    # What the event says is what the history says.
    assert reasons == history == {old: "superseded", other: "max_attempts"}
