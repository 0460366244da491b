"""``skivi queues pause | resume``, ``skivi tasks pause | resume`` and ``skivi limits``
against a real database: what each command changes, says and exits with, and the pauses in
``skivi queues``."""

from __future__ import annotations

import pytest

import skivi
from tests.support.cli import cli, cli_json
from tests.support.db import connect


def pauses(database: str) -> list[tuple[str, str]]:
    with connect(database) as c:
        return [(r[0], r[1]) for r in
                c.execute("select kind, name from skivi.pause order by 1, 2").fetchall()]


def test_queues_and_tasks_pause_and_resume_when_asked(
        database: str, system: skivi.System, capsys: pytest.CaptureFixture[str]) -> None:
    skivi.add_jobs(system, [{"task": "send", "queue_name": "mail"}, {"task": "report"}])
    assert cli(database, "queues", "pause", "mail") == 0
    assert capsys.readouterr().out == "queue mail paused\n"
    assert cli(database, "queues", "pause", "mail") == 0
    assert capsys.readouterr().out == "queue mail was already paused\n"
    assert cli_json(database, capsys, "tasks", "pause", "report") == {
        "kind": "task", "name": "report", "paused": True, "changed": True}
    assert cli(database, "queues", "pause", "@parallel") == 0
    capsys.readouterr()
    assert pauses(database) == [("queue", "@parallel"), ("queue", "mail"), ("task", "report")]

    listed = cli_json(database, capsys, "queues")
    assert {(q["queue_name"], q["task_identifier"]): q["paused"] for q in listed["queues"]} \
        == {("mail", "send"): True, (None, "report"): True}
    assert [(p["kind"], p["name"]) for p in listed["paused"]] == pauses(database)
    assert cli(database, "queues") == 0
    table = capsys.readouterr().out
    assert "paused: queue @parallel (since " in table
    assert table.splitlines()[0].endswith("paused")

    assert cli(database, "queues", "resume", "@parallel") == 0
    assert cli(database, "tasks", "resume", "report") == 0
    assert cli(database, "tasks", "resume", "report") == 0
    assert capsys.readouterr().out.splitlines() == [
        "queue @parallel resumed", "task report resumed", "task report was already not paused"]
    assert pauses(database) == [("queue", "mail")]


def test_limits_lists_and_removes_declared_limits_when_asked(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "limits") == 0
    assert capsys.readouterr().out == "no limits declared\n"
    with connect(database) as c:
        c.execute("insert into skivi.job_limit (name, tasks, key_path, slots, period) values "
                  "('per-tenant', '{sync}', '{tenant}', 2, null), "
                  "('api', '{sync,report}', null, 10, 1.0)")
        c.execute("insert into skivi.limit_key (limit_name, key, held_ids, held_leases, "
                  "held_by) values ('per-tenant', 't1', '{1}', '{1}', '{7}')")
    listed = cli_json(database, capsys, "limits")["limits"]
    assert [(r["name"], r["slots"], r["period"], r["keys"], r["held"]) for r in listed] == [
        ("api", 10, 1.0, 0, 0), ("per-tenant", 2, None, 1, 1)]
    assert cli(database, "limits") == 0
    table = capsys.readouterr().out
    assert "per-tenant  sync         tenant  concurrency 2  1     1" in table
    assert "rate 10/1s" in table
    assert cli(database, "limits", "remove", "per-tenant") == 0
    assert capsys.readouterr().out == "limit per-tenant removed\n"
    assert cli(database, "limits", "remove", "per-tenant") == 1
    assert "no limit named per-tenant" in capsys.readouterr().err
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.limit_key").fetchone() == (0,)
