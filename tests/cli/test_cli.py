"""The admin command line against a real PostgreSQL.

A few cases run the real program (``python -m skivi``) in a subprocess, end to end; the rest
call ``skivi.cli.main(argv)`` in-process (its return value is the exit code) and read what it
printed with ``capsys``. Every command that is refused is checked three ways: the exit code,
the message on stderr naming the bad thing, and a snapshot of every table, unchanged.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import skivi
from skivi.cli import main
from skivi.db.migrate import known_migrations
from skivi.db.queries import CLAIM_ID, engine_register, for_schema, job_claim, migration_lock
from tests.support.cli import cli, cli_json
from tests.support.db import SCHEMA, MakeDatabase, connect, login_role

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"
TABLES = ("cron", "engine", "job", "job_history", "job_queue")
SECRET = "s3cret-payload-value"


# --- helpers --------------------------------------------------------------------------------


def run_module(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m skivi ARGS`` in a subprocess, from the repo root, without SKIVI_* leftovers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SKIVI_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "skivi", *args], cwd=REPO, env=env,
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


def snapshot(url: str) -> list[Any]:
    """Every row of every table, so a refused command can be shown to have changed nothing."""
    with connect(url) as c:
        rows = []
        for table in TABLES:
            row = c.execute(f"select coalesce(jsonb_agg(to_jsonb(t) order by t::text), '[]') "
                            f"from skivi.{table} t").fetchone()
            assert row is not None
            rows.append(row[0])
        return rows


def job_row(url: str, job_id: int) -> dict[str, Any] | None:
    with connect(url) as c:
        row = c.execute("select to_jsonb(j) from skivi.job_live j where id = "
                        "%s", [job_id]).fetchone()
    return None if row is None else dict(row[0])


def history_row(url: str, job_id: int) -> dict[str, Any] | None:
    with connect(url) as c:
        row = c.execute("select to_jsonb(h) from skivi.job_history h where id = %s",
                        [job_id]).fetchone()
    return None if row is None else dict(row[0])


def claim_all(url: str, engine: int = 7) -> list[int]:
    """Claim every runnable job as engine ``engine`` would (job_claim.sql): they are running."""
    with connect(url) as c:
        return [r[CLAIM_ID] for r in job_claim.run(c, for_schema(SCHEMA), engine=engine,
                                                   limit=1000, serial_limit=1000,
                                                   max_bytes=1 << 40)]


def make_failed(url: str, job_id: int, attempts: int = 2) -> None:
    """As after a failed attempt: attempts counted, an error recorded, retry in an hour."""
    with connect(url) as c:
        c.execute("update skivi.job set attempts = %s, last_error = %s, "
                  "run_at = now() + interval '1 hour' where id = %s",
                  [attempts, "Traceback ...\nValueError: boom", job_id])


def exhaust(url: str, job_id: int) -> None:
    with connect(url) as c:
        c.execute("select skivi.permanently_fail_jobs(array[%s]::bigint[], 'gave up')", [job_id])


def record_completed(url: str, job_id: int, task: str = "done") -> None:
    with connect(url) as c:
        c.execute("insert into skivi.job_history (id, task_identifier, payload, priority, "
                  "run_at, attempts, max_attempts, created_at, outcome) "
                  "values (%s, %s, '{}', 0, now(), 1, 25, now(), 'completed')", [job_id, task])


def report_started(url: str, engine: int, ids: list[int]) -> None:
    """Engine ``engine`` as its heartbeat would leave it, having started ``ids``."""
    with connect(url) as c:
        c.execute("insert into skivi.engine (id, hostname, pid, version, lease_timeout, "
                  "processes, concurrency, running) overriding system value "
                  "values (%s, 'host', 1, 'test', 30, 1, 1, %s)", [engine, ids])


@pytest.fixture
def jobs(system: skivi.System, database: str) -> dict[str, int]:
    """One job in each state: waiting, scheduled, failed (retry pending), running (claimed
    and reported started by its engine) and claimed (not reported started)."""
    running = skivi.add_job(system, "run-me", {"n": 0}).id
    claimed = skivi.add_job(system, "run-me", {"n": 1}).id
    assert claim_all(database) == [running, claimed]
    report_started(database, 7, [running])
    waiting = skivi.add_job(system, "send-email", {"to": SECRET}, queue_name="mail").id
    scheduled = skivi.add_job(system, "report", {}, run_at=dt.datetime.now(UTC)
                              + dt.timedelta(hours=2)).id
    failed = skivi.add_job(system, "send-email", {"to": "b"}).id
    make_failed(database, failed)
    return {"waiting": waiting, "scheduled": scheduled, "failed": failed, "running": running,
            "claimed": claimed}


@pytest.fixture
def held_engine(database: str) -> Iterator[int]:
    """A registered engine with a fresh heartbeat."""
    with connect(database) as c:
        yield engine_register.run(c, for_schema(SCHEMA), hostname="host-a",
                                  pid=4242, version="9.9.9", lease_timeout=30.0, processes=2,
                                  concurrency=16)


# --- tests ----------------------------------------------------------------------------------


def test_add_job_enqueues_with_every_option_when_given(database: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    before = dt.datetime.now(UTC)
    code = cli(database, "add-job", "send-email", '{"to": "a@example.com"}', "--queue", "mail",
               "--run-at", "+2h", "--max-attempts", "3", "--priority", "-5", "--job-key",
               "mail:a", "--job-key-mode", "preserve_run_at", "--flag", "gpu", "--flag", "big")
    out = capsys.readouterr().out
    assert code == 0
    job_id = int(out.splitlines()[1].split()[0])
    assert "inserted" in out and "a@example.com" not in out
    row = job_row(database, job_id)
    assert row is not None
    assert (row["task_identifier"], row["queue_name"], row["max_attempts"], row["priority"],
            row["key"], row["flags"], row["payload"]) == (
        "send-email", "mail", 3, -5, "mail:a", ["gpu", "big"], {"to": "a@example.com"})
    run_at = dt.datetime.fromisoformat(row["run_at"])
    assert before + dt.timedelta(hours=2) <= run_at <= dt.datetime.now(UTC) + dt.timedelta(
        hours=2)


def test_add_job_reads_stdin_and_lists_without_payload_when_run_as_module(
        database: str) -> None:
    added = run_module("--database-url", database, "add-job", "t", "-", "--json",
                       stdin=orjson.dumps({"secret": SECRET}).decode())
    assert added.returncode == 0, added.stderr
    job = orjson.loads(added.stdout)["job"]
    assert job["outcome"] == "inserted" and job["task_identifier"] == "t"
    assert "payload" not in job
    listed = run_module("jobs", "list", "--json", "--database-url", database)
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in orjson.loads(listed.stdout)["jobs"]] == [job["id"]]
    assert SECRET not in listed.stdout
    table = run_module("jobs", "list", "--payload", "--database-url", database)
    assert table.returncode == 0 and SECRET in table.stdout


def test_add_job_reads_the_payload_from_stdin_when_given_dash(
        database: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('[1, 2, 3]'))
    job = cli_json(database, capsys, "add-job", "batch", "-")["job"]
    row = job_row(database, job["id"])
    assert row is not None and row["payload"] == [1, 2, 3]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli(database, "add-job", "batch", "-") == 2
    assert "PAYLOAD (stdin) is not valid JSON" in capsys.readouterr().err


def test_add_job_reports_deduplicated_when_the_key_exists_in_unsafe_dedupe_mode(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = cli_json(database, capsys, "add-job", "t", "{}", "--job-key", "k")["job"]
    again = cli_json(database, capsys, "add-job", "t", '{"n": 2}', "--job-key", "k",
                     "--job-key-mode", "unsafe_dedupe")["job"]
    assert first["outcome"] == "inserted"
    assert again == {**first, "outcome": "deduplicated"}
    row = job_row(database, first["id"])
    assert row is not None and row["payload"] == {}


def test_add_job_validates_the_payload_against_the_task_schema_when_configured(
        database: str, working_directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (working_directory / "skivi.toml").write_text(
        '[validation.tasks]\n"send-email" = { type = "object", required = ["to"] }\n')
    before = snapshot(database)
    assert cli(database, "add-job", "send-email", '{"subject": "hi"}') == 2
    err = capsys.readouterr().err
    assert "send-email" in err and "to" in err
    assert snapshot(database) == before
    assert cli(database, "add-job", "send-email", '{"to": "x"}') == 0


@pytest.mark.parametrize(("args", "message"), [
    (["add-job", "", "{}"], "task"),
    (["add-job", "t", "{not json"], "PAYLOAD is not valid JSON"),
    (["add-job", "t", '{"a": "\\u0000"}'], "U+0000"),
    (["add-job", "t", "{}", "--job-key-mode", "replace"], "needs a job_key"),
    (["add-job", "t", "{}", "--max-attempts", "0"], "argument --max-attempts"),
    (["add-job", "t", "{}", "--priority", "40000"], "argument --priority"),
    (["add-job", "t", "{}", "--queue", "q" * 129], "queue_name"),
    (["add-job", "t", "{}", "--run-at", "+5x"], "'+5x' is not a relative time"),
    (["add-job", "t", "{}", "--run-at", "2030-01-01T00:00:00"], "has no time zone"),
    (["add-job", "t", "{}", "--run-at", "tomorrow"], "'tomorrow' is not an ISO-8601 time"),
    (["history", "list", "--limit", "0"], "argument --limit"),
    (["history", "list", "--outcome", "lost"], "argument --outcome: invalid choice"),
    (["history", "retry"], "nothing to retry: give job IDS, or --task and/or --reason"),
    (["history", "retry", "{h}", "--task", "t"], "either job IDS or --task/--reason, not both"),
    (["history", "retry", "--reason", "lost"], "argument --reason: invalid choice"),
    (["history", "retry", "--task", ""], "--task: an empty task identifier"),
    (["history", "retry", "{h},99999999999999999999"], "is not a job id"),
    (["jobs", "cancel", "{a},abc"], "'abc' is not a job id"),
    (["jobs", "cancel", "1.5"], "'1.5' is not a job id"),
    (["jobs", "fail", "{a},-3", "--reason", "x"], "'-3' is not a job id"),
    (["jobs", "list", "--state", "done"], "argument --state: invalid choice"),
    (["jobs", "remove", ","], "no job id given"),
    (["jobs", "remove", "{a},abc"], "'abc' is not a job id"),
    (["jobs", "reschedule", "{a}"], "nothing to change"),
    (["jobs", "reschedule", "{a}", "--attempts", "-1"], "argument --attempts"),
    (["jobs", "reschedule", "{a}", "--priority", "1.5"], "argument --priority"),
    (["jobs", "reschedule", "{a}", "--run-at", "12:00"], "'12:00' is not an ISO-8601 time"),
    (["jobs", "retry", "{a}", "0"], "'0' is not a job id"),
    (["jobs", "frobnicate", "{a}"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_and_change_nothing_when_given(
        args: list[str], message: str, system: skivi.System, database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    pending = skivi.add_job(system, "t", {}).id
    exhausted = skivi.add_job(system, "t", {}).id
    exhaust(database, exhausted)
    before = snapshot(database)
    argv = [a.replace("{a}", str(pending)).replace("{h}", str(exhausted)) for a in args]
    assert cli(database, *argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
    assert snapshot(database) == before


def test_config_file_in_the_working_directory_is_read_when_no_config_is_given(
        database: str, working_directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (working_directory / "skivi.toml").write_text(
        f'[database]\nconnection_string = "{database}"\n')
    assert main(["jobs", "list"]) == 0
    assert capsys.readouterr().out == "no jobs\n"


def test_connection_errors_are_reported_without_a_traceback_when_raised(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "remove", "1", "--database-url", UNREACHABLE]) == 3
    err = capsys.readouterr().err
    assert err.startswith("skivi: cannot reach the database:")
    assert "Traceback" not in err


def test_cron_list_exits_2_naming_the_file_when_the_crontab_is_invalid(
        database: str, working_directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crontab = working_directory / "crontab.toml"
    crontab.write_text('[[cron]]\nidentifier = "bad"\nschedule = "61 * * * *"\n')
    assert cli(database, "cron", "list", "--crontab", str(crontab)) == 2
    err = capsys.readouterr().err
    assert "crontab.toml" in err and "'bad'" in err and "schedule" in err


def test_cron_list_shows_last_execution_and_next_tick_when_entries_are_configured(
        database: str, working_directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = working_directory / "app.toml"
    config.write_text('[[cron]]\nidentifier = "nightly"\nschedule = "0 3 * * *"\n'
                      'timezone = "Europe/Berlin"\n')
    crontab = working_directory / "crontab.toml"
    crontab.write_text('[[cron]]\nidentifier = "hourly"\nschedule = "0 * * * *"\n'
                       'task = "cleanup"\nspec = { job_key = "cleanup" }\n')
    with connect(database) as c:
        c.execute("insert into skivi.cron (identifier, known_since, last_execution) values "
                  "('hourly', '2024-01-01T00:00:00Z', '2024-01-02T05:00:00Z')")
    before = dt.datetime.now(UTC)
    listed = cli_json(database, capsys, "cron", "list", "--config", str(config), "--crontab",
                      str(crontab))["cron"]
    assert [(c["identifier"], c["task"], c["schedule"]) for c in listed] == [
        ("nightly", "nightly", "0 3 * * *"), ("hourly", "cleanup", "0 * * * *")]
    nightly, hourly = listed
    assert (nightly["job_key"], nightly["job_key_mode"]) == ("cron:nightly", "unsafe_dedupe")
    assert (hourly["job_key"], hourly["job_key_mode"]) == ("cleanup", "replace")
    assert nightly["last_execution"] is None and nightly["known_since"] is None
    assert dt.datetime.fromisoformat(hourly["last_execution"]) == dt.datetime(
        2024, 1, 2, 5, tzinfo=UTC)
    for entry in listed:
        tick = dt.datetime.fromisoformat(entry["next_tick"])
        assert before < tick <= before + dt.timedelta(days=1)
    assert dt.datetime.fromisoformat(hourly["next_tick"]).minute == 0
    assert cli(database, "cron", "list", "--config", str(config), "--crontab",
               str(crontab)) == 0
    table = capsys.readouterr().out
    assert "Europe/Berlin" in table and "2024-01-02 05:00:00Z" in table
    assert "cleanup (replace)" in table and "cron:nightly (unsafe_dedupe)" in table


def test_environment_is_overridden_by_flags_when_both_are_set(
        database: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SKIVI_DATABASE_URL", database)
    monkeypatch.setenv("SKIVI_SCHEMA", "elsewhere")
    assert main(["jobs", "list"]) == 3  # the environment's schema: not migrated there
    err = capsys.readouterr().err
    assert "'elsewhere'" in err and "skivi migrate" in err
    assert main(["--schema", "skivi", "jobs", "list"]) == 0
    assert main(["jobs", "list", "--database-url", UNREACHABLE]) == 3


def test_exit_code_is_2_when_the_configuration_is_invalid(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "jobs", "list", "--schema", "Bad-Name") == 2
    assert "database.schema_name" in capsys.readouterr().err
    assert main(["jobs", "list"]) == 2  # no database configured anywhere
    assert "database.connection_string" in capsys.readouterr().err
    assert main(["--config", "missing.toml", "workers"]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err


def test_exit_code_is_3_when_the_database_is_unreachable() -> None:
    result = run_module("queues", "--database-url", UNREACHABLE)
    assert result.returncode == 3
    assert "cannot reach the database" in result.stderr and result.stdout == ""


def test_help_is_printed_when_asked_for_any_command(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    commands = [["migrate"], ["add-job"], ["jobs"], ["jobs", "list"], ["jobs", "retry"],
                ["jobs", "remove"], ["jobs", "fail"], ["jobs", "reschedule"], ["history"],
                ["history", "list"], ["history", "retry"], ["queues"], ["workers"],
                ["cron"], ["cron", "list"]]
    for command in commands:
        assert main([*command, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: skivi {' '.join(command)}")
    result = run_module("--help")
    assert result.returncode == 0
    for name in ("migrate", "add-job", "jobs", "history", "queues", "workers", "cron"):
        assert name in result.stdout
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_history_list_filters_by_outcome_and_task_newest_first_when_asked(
        system: skivi.System, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = skivi.add_job(system, "resize", {"secret": SECRET}).id
    second = skivi.add_job(system, "mail", {}).id
    exhaust(database, first)
    exhaust(database, second)
    record_completed(database, 9001, "resize")
    listed = cli_json(database, capsys, "history", "list")["history"]
    assert [h["id"] for h in listed] == [9001, second, first]
    assert all("payload" not in h for h in listed)
    exhausted = cli_json(database, capsys, "history", "list", "--outcome", "exhausted",
                         "--task", "resize")["history"]
    assert [(h["id"], h["reason"], h["last_error"]) for h in exhausted] == [
        (first, "permanently_failed", "gave up")]
    assert [h["id"] for h in cli_json(database, capsys, "history", "list",
                                      "--limit", "1")["history"]] == [9001]
    assert cli(database, "history", "list", "--payload", "--task", "resize") == 0
    assert SECRET in capsys.readouterr().out


def test_history_retry_requeues_exhausted_jobs_and_refuses_the_rest_when_mixed(
        system: skivi.System, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    exhausted = skivi.add_job(system, "t", {}, queue_name="serial").id
    exhaust(database, exhausted)
    record_completed(database, 9001)
    assert cli(database, "history", "retry", f"{exhausted},9001", "424242") == 1
    captured = capsys.readouterr()
    assert "completed jobs cannot be retried" in captured.out
    assert "424242  not changed: not found" in captured.out
    assert "2 of 3 job(s) not changed" in captured.err
    row = job_row(database, exhausted)
    assert row is not None and row["attempts"] == 0 and row["queue_name"] == "serial"
    assert history_row(database, exhausted) is None
    assert history_row(database, 9001) is not None
    assert job_row(database, 9001) is None


def test_history_retry_requeues_every_match_when_given_a_task_and_a_reason(
        system: skivi.System, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    a_gone, a_failed, b_gone = (skivi.add_job(system, t, {}).id for t in ("a", "a", "b"))
    for job_id in (a_gone, a_failed, b_gone):
        exhaust(database, job_id)
    with connect(database) as c:  # as the engine records a job it has no handler for
        c.execute("update skivi.job_history set reason = 'no_handler' where id = any(%s)",
                  [[a_gone, b_gone]])
    record_completed(database, 9001, task="a")

    assert cli(database, "history", "retry", "--task", "a", "--reason", "no_handler") == 0
    assert re.search(rf"^{a_gone} +back in the queue", capsys.readouterr().out, re.M)
    assert job_row(database, a_gone) is not None
    assert history_row(database, a_failed) is not None and history_row(database, b_gone)

    assert cli_json(database, capsys, "history", "retry", "--task", "a") == {
        "changed": [a_failed], "unchanged": []}  # the completed one is never picked
    assert history_row(database, 9001) is not None

    assert cli(database, "history", "retry", "--reason", "no_handler") == 0
    assert re.search(rf"^{b_gone} +back in the queue", capsys.readouterr().out, re.M)
    assert cli(database, "history", "retry", "--task", "a") == 0
    assert capsys.readouterr().out == "no exhausted jobs match\n"


def test_jobs_fail_moves_pending_jobs_to_history_when_given_a_reason(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_json(database, capsys, "jobs", "fail", str(jobs["waiting"]),
                      "--reason", "bad data")
    assert result == {"changed": [jobs["waiting"]], "unchanged": []}
    assert job_row(database, jobs["waiting"]) is None
    row = history_row(database, jobs["waiting"])
    assert row is not None
    assert (row["outcome"], row["reason"], row["last_error"]) == (
        "exhausted", "permanently_failed", "bad data")
    assert row["attempts"] == row["max_attempts"]  # no attempt left, though it never ran


def test_jobs_cancel_reports_each_id_when_given_waiting_running_finished_and_unknown(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "jobs", "fail", str(jobs["failed"])) == 0
    capsys.readouterr()
    ids = [jobs["waiting"], jobs["running"], jobs["failed"], 987654321]
    code = cli(database, "jobs", "cancel", ",".join(map(str, ids)), "--reason", "dup order",
               "--by", "alice")
    captured = capsys.readouterr()
    assert code == 1  # two ids were not changed
    lines = [" ".join(line.split()) for line in captured.out.splitlines()]
    assert lines == [
        "id result",
        f"{jobs['waiting']} cancelled (it was waiting)",
        f"{jobs['running']} cancel requested: engine 7 stops it",
        f"{jobs['failed']} not changed: already finished",
        "987654321 not changed: not found",
    ]
    assert "2 of 4 job(s) not changed" in captured.err
    row = history_row(database, jobs["waiting"])
    assert row is not None
    assert (row["outcome"], row["reason"], row["cancelled_by"]) == (
        "cancelled", "dup order", "alice")
    assert job_row(database, jobs["running"]) is not None  # its engine ends it
    # Again, as JSON: the running job's request is pending, the waiting one is finished now.
    again = orjson.loads(cli_output(database, capsys, "jobs", "cancel",
                                              *map(str, ids[:2])))
    assert again == {"cancelled": [], "requested": [{"id": jobs["running"], "engine": 7}],
                     "unchanged": [{"id": jobs["waiting"], "reason": "finished"}]}


def cli_output(database: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``cli`` with --json, whatever its exit code; what it printed."""
    cli(database, *args, "--json")
    return capsys.readouterr().out


def test_jobs_and_history_show_print_payload_error_and_traceback_when_given_an_id(
        system: skivi.System, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    live = skivi.add_job(system, "send-email", {"to": SECRET}).id
    trace = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: boom\n'
    with connect(database) as c:
        c.execute("update skivi.job set attempts = 1, last_error = 'boom' where id = %s", [live])
        c.execute("insert into skivi.job_traceback (id, traceback) values (%s, %s)",
                  [live, trace])
    shown = cli_json(database, capsys, "jobs", "show", str(live))["job"]
    assert (shown["id"], shown["payload"], shown["last_error"]) == (live, {"to": SECRET}, "boom")
    assert shown["last_error_traceback"] == trace
    listed = cli_json(database, capsys, "jobs", "list")["jobs"]
    assert [j["last_error_traceback"] for j in listed] == [trace]
    assert cli(database, "jobs", "show", str(live)) == 0
    text = capsys.readouterr().out
    assert SECRET in text and "last_error:\n  boom" in text
    assert '  File "t.py", line 1' in text and "state: failed" in text
    exhaust(database, live)  # the operator's reason replaces the error and its traceback
    done = cli_json(database, capsys, "history", "show", str(live))["job"]
    assert (done["reason"], done["last_error"], done["last_error_traceback"]) == (
        "permanently_failed", "gave up", None)
    assert done["payload"] == {"to": SECRET}
    assert fetch_count(database, "select count(*) from skivi.job_traceback") == 0
    assert [h["id"] for h in cli_json(database, capsys, "history", "list")["history"]] == [live]
    assert cli(database, "jobs", "show", str(live)) == 1
    assert f"no live job {live}" in capsys.readouterr().err
    assert cli(database, "history", "show", "424242") == 1
    assert "no job 424242 in history" in capsys.readouterr().err


def fetch_count(url: str, query: str) -> int:
    with connect(url) as c:
        row = c.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_jobs_list_filters_by_state_task_and_queue_when_asked(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    listed = cli_json(database, capsys, "jobs", "list")["jobs"]
    assert {j["id"]: j["state"] for j in listed} == {v: k for k, v in jobs.items()}
    assert [j["id"] for j in listed] == sorted(jobs.values())
    for state, job_id in jobs.items():
        only = cli_json(database, capsys, "jobs", "list", "--state", state)["jobs"]
        assert [j["id"] for j in only] == [job_id]
    running = cli_json(database, capsys, "jobs", "list", "--state", "running")["jobs"][0]
    assert running["locked_by"] == 7
    by_task = cli_json(database, capsys, "jobs", "list", "--task", "send-email")["jobs"]
    assert [j["id"] for j in by_task] == sorted([jobs["waiting"], jobs["failed"]])
    by_queue = cli_json(database, capsys, "jobs", "list", "--queue", "mail")["jobs"]
    assert [j["id"] for j in by_queue] == [jobs["waiting"]]
    limited = cli_json(database, capsys, "jobs", "list", "--limit", "2")["jobs"]
    assert [j["id"] for j in limited] == sorted(jobs.values())[:2]
    failed = cli_json(database, capsys, "jobs", "list", "--state", "failed")["jobs"][0]
    assert failed["attempts"] == 2 and failed["last_error"].endswith("ValueError: boom")


def test_jobs_history_and_queues_print_rows_whose_times_python_cannot_hold_when_stored(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows written from SQL may hold run_at = 'infinity' / '-infinity' or a year past 9999,
    which psycopg cannot load into a datetime; they are printed as PostgreSQL spells them."""
    with connect(database) as c:
        ids = [r[0] for r in c.execute(
            "insert into skivi.job (task_identifier, run_at) values ('never', 'infinity'), "
            "('first', '-infinity'), ('far', '10000-01-01T00:00:00Z') returning id").fetchall()]
        c.execute("insert into skivi.job_history (id, task_identifier, payload, priority, "
                  "run_at, attempts, max_attempts, created_at, outcome) values "
                  "(9001, 'old', '{}', 0, '-infinity', 1, 25, now(), 'completed')")
    listed = cli_json(database, capsys, "jobs", "list")["jobs"]
    assert [(j["id"], j["run_at"]) for j in listed] == [
        (ids[0], "infinity"), (ids[1], "-infinity"), (ids[2], "10000-01-01 00:00:00+00")]
    assert cli(database, "jobs", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[6] for line in table[1:]] == ["infinity", "-infinity", "10000-01-01"]
    history = cli_json(database, capsys, "history", "list")["history"]
    assert [(h["id"], h["run_at"]) for h in history] == [(9001, "-infinity")]
    assert cli(database, "history", "list") == 0
    assert "9001" in capsys.readouterr().out
    queues = {q["task_identifier"]: q for q in cli_json(database, capsys, "queues")["queues"]}
    assert queues["first"]["waiting"] == 1
    assert queues["first"]["oldest_runnable_age"] == "infinity"
    assert queues["never"]["scheduled"] == 1
    assert cli(database, "queues") == 0
    table = capsys.readouterr().out.splitlines()
    assert next(line for line in table if " first " in line).split()[-1] == "infinity"


def test_jobs_list_prints_payloads_only_when_asked(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "jobs", "list") == 0
    table = capsys.readouterr().out
    assert SECRET not in table
    assert "ValueError: boom" in table and "Traceback" not in table  # the error's last line
    assert "payload" not in cli_json(database, capsys, "jobs", "list")["jobs"][0]
    assert cli(database, "jobs", "list", "--payload") == 0
    assert SECRET in capsys.readouterr().out
    with_payload = cli_json(database, capsys, "jobs", "list", "--payload", "--queue", "mail")
    assert with_payload["jobs"][0]["payload"] == {"to": SECRET}


def test_jobs_remove_deletes_pending_jobs_and_refuses_running_ones_when_mixed(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    running = job_row(database, jobs["running"])
    code = cli(database, "jobs", "remove", f"{jobs['waiting']},{jobs['running']}",
               str(jobs["failed"]), "999999", str(jobs["waiting"]))
    assert code == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1:] == [
        f"{jobs['waiting']:<6}  removed",
        f"{jobs['running']:<6}  not changed: claimed by engine 7",
        f"{jobs['failed']:<6}  removed",
        "999999  not changed: not found",
    ]
    assert "2 of 4 job(s) not changed" in captured.err
    assert job_row(database, jobs["waiting"]) is None
    assert job_row(database, jobs["failed"]) is None
    assert job_row(database, jobs["running"]) == running
    assert history_row(database, jobs["waiting"]) is None


def test_jobs_reschedule_changes_only_the_given_fields_when_pending(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = job_row(database, jobs["failed"])
    assert before is not None
    code = cli(database, "jobs", "reschedule", str(jobs["failed"]), str(jobs["running"]),
               "--run-at", "2030-01-01T12:00:00+02:00", "--priority", "3",
               "--max-attempts", "9", "--json")
    assert code == 1
    assert orjson.loads(capsys.readouterr().out) == {"changed": [jobs["failed"]],
                      "unchanged": [{"id": jobs["running"], "reason": "running", "engine": 7}]}
    after = job_row(database, jobs["failed"])
    assert after is not None
    assert dt.datetime.fromisoformat(after["run_at"]) == dt.datetime(2030, 1, 1, 10,
                                                                     tzinfo=UTC)
    assert (after["priority"], after["max_attempts"], after["attempts"]) == (3, 9, 2)
    assert after["last_error"] == before["last_error"]
    assert cli(database, "jobs", "reschedule", str(jobs["failed"]), "--attempts", "0") == 0
    changed = job_row(database, jobs["failed"])
    assert changed is not None and changed["attempts"] == 0 and changed["priority"] == 3


def test_jobs_retry_makes_pending_jobs_runnable_now_and_keeps_attempts_when_asked(
        jobs: dict[str, int], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    running = job_row(database, jobs["running"])
    code = cli(database, "jobs", "retry", str(jobs["failed"]), str(jobs["scheduled"]),
               str(jobs["running"]), "31337", "--json")
    assert code == 1
    assert orjson.loads(capsys.readouterr().out) == {
        "changed": [jobs["failed"], jobs["scheduled"]],
        "unchanged": [{"id": jobs["running"], "reason": "running", "engine": 7},
                      {"id": 31337, "reason": "not_found"}]}
    now = dt.datetime.now(UTC)
    for name in ("failed", "scheduled"):
        row = job_row(database, jobs[name])
        assert row is not None and dt.datetime.fromisoformat(row["run_at"]) <= now
    failed = job_row(database, jobs["failed"])
    assert failed is not None and failed["attempts"] == 2
    assert job_row(database, jobs["running"]) == running
    assert claim_all(database, engine=8) == sorted([jobs["waiting"], jobs["failed"],
                                                    jobs["scheduled"]])


def test_migrate_applies_pending_migrations_when_run_as_module(
        make_database: MakeDatabase) -> None:
    empty = make_database(template=None)
    check = run_module("migrate", "--check", "--database-url", empty)
    assert check.returncode == 1
    assert "0001_initial.sql" in check.stdout
    applied = run_module("migrate", "--json", "--database-url", empty)
    assert applied.returncode == 0, applied.stderr
    assert orjson.loads(applied.stdout) == {
        "schema": "skivi", "applied": [m.name for m in known_migrations()]}
    again = run_module("migrate", "--check", "--json", "--database-url", empty)
    assert again.returncode == 0
    assert orjson.loads(again.stdout) == {"schema": "skivi", "pending": []}


def test_migrate_check_exits_0_and_changes_nothing_when_up_to_date(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(database)
    assert cli(database, "migrate", "--check") == 0
    assert "up to date" in capsys.readouterr().out
    assert cli(database, "migrate") == 0
    assert "nothing to apply" in capsys.readouterr().out
    assert snapshot(database) == before


def test_migrate_exits_3_when_the_schema_was_migrated_by_a_newer_skivi(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    with connect(database) as c:
        c.execute("insert into skivi.migration (id, name) values (9999, '9999_future.sql')")
    assert cli(database, "migrate", "--check") == 3
    assert "9999" in capsys.readouterr().err


def test_migrate_exits_3_naming_the_role_when_the_role_may_not_create_the_schema(
        admin: psycopg.Connection[Any], make_database: MakeDatabase,
        capsys: pytest.CaptureFixture[str]) -> None:
    """README: exit 3 when the schema cannot be migrated; a role without CREATE on the
    database (a worker's) is the common case. It was exit 1 (a bare database error)."""
    empty = make_database(template=None)
    with login_role(admin) as role:
        assert cli(make_conninfo(empty, user=role), "migrate") == 3
        err = capsys.readouterr().err
    assert f"role {role!r} may not migrate schema 'skivi'" in err, err
    assert "permission denied" in err, err


def test_migrate_exits_3_naming_the_holder_when_the_migration_lock_stays_taken(
        make_database: MakeDatabase, working_directory: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    empty = make_database(template=None)
    (working_directory / "skivi.toml").write_text(
        "[database]\nmigration_lock_timeout = 1.0\n")
    with connect(empty) as holder, holder.transaction():
        assert migration_lock.run(holder, for_schema(SCHEMA), schema=SCHEMA)
        assert cli(empty, "migrate") == 3
        err = capsys.readouterr().err
        assert f"backend pid {holder.info.backend_pid}" in err, err
    assert "migration_lock_timeout" in err, err


def test_queues_counts_jobs_by_state_per_queue_and_task_when_jobs_exist(
        jobs: dict[str, int], system: skivi.System, database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    skivi.add_job(system, "send-email", {}, queue_name="mail")
    with connect(database) as c:
        c.execute("update skivi.job set run_at = now() - interval '90 seconds' where id = %s",
                  [jobs["waiting"]])
    result = cli_json(database, capsys, "queues")
    assert result["truncated"] is False
    counts = {(q["queue_name"], q["task_identifier"]): (q["waiting"], q["scheduled"],
                                                        q["running"], q["claimed"])
              for q in result["queues"]}
    assert counts == {
        (None, "report"): (0, 1, 0, 0),
        (None, "run-me"): (0, 0, 1, 1),
        (None, "send-email"): (0, 1, 0, 0),  # the failed job: retry in an hour
        ("mail", "send-email"): (2, 0, 0, 0),
    }
    mail = next(q for q in result["queues"] if q["queue_name"] == "mail")
    assert 90 <= mail["oldest_runnable_age"] < 150
    report = next(q for q in result["queues"] if q["task_identifier"] == "report")
    assert report["oldest_runnable_age"] is None
    assert cli(database, "queues") == 0
    table = capsys.readouterr().out
    assert "mail   send-email  2" in table and "1m3" in table


def test_queues_says_the_figures_are_lower_bounds_when_the_scan_limit_is_reached(
        system: skivi.System, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    skivi.add_jobs(system, [{"task": "t"} for _ in range(5)])
    skivi.add_jobs(system, [{"task": "u", "queue_name": "q"} for _ in range(2)])
    assert cli(database, "queues", "--scan-limit", "3") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].split() == ["-", "t", "3", "0", "0", "0", "0s"]
    assert "lower bounds" in captured.err
    truncated = cli_json(database, capsys, "queues", "--scan-limit", "6")
    assert truncated["truncated"] is True
    # Said once, for the whole scan: no row carries it (every row, not only the first).
    assert len(truncated["queues"]) == 2
    assert all("truncated" not in q for q in truncated["queues"]), truncated
    assert cli_json(database, capsys, "queues", "--scan-limit", "7")["truncated"] is True
    assert cli_json(database, capsys, "queues", "--scan-limit", "8")["truncated"] is False


def test_schema_without_tables_exits_3_and_says_to_migrate_when_not_migrated(
        make_database: MakeDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    empty = make_database(template=None)
    assert cli(empty, "jobs", "retry", "1") == 3
    err = capsys.readouterr().err
    assert "'skivi'" in err and "skivi migrate" in err


def test_workers_and_queues_report_nothing_when_the_instance_is_idle(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "workers") == 0
    assert capsys.readouterr().out == "no engines registered\n"
    assert cli(database, "queues") == 0
    assert capsys.readouterr().out == "no jobs\n"
    assert cli(database, "cron", "list") == 0
    assert capsys.readouterr().out == "no cron entries configured\n"


def test_workers_shows_whether_each_engine_is_alive_when_engines_are_registered(
        held_engine: int, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    with connect(database) as gone:  # registers, then stops heartbeating
        dead = engine_register.run(gone, for_schema(SCHEMA), hostname="host-b",
                                   pid=1, version="9.9.9", lease_timeout=30.0, processes=1,
                                   concurrency=4)
    with connect(database) as c:
        c.execute("update skivi.engine set in_flight = 3 where id = %s", [held_engine])
        c.execute("update skivi.engine set heartbeat_at = now() - interval '31 seconds' "
                  "where id = %s", [dead])
    workers = cli_json(database, capsys, "workers")["workers"]
    assert [(w["id"], w["hostname"], w["alive"], w["status"]) for w in workers] == [
        (held_engine, "host-a", True, "alive"),
        (dead, "host-b", False, "dead (heartbeat older than its lease; awaiting rescue)")]
    alive = workers[0]
    assert (alive["pid"], alive["version"], alive["processes"], alive["concurrency"],
            alive["in_flight"], alive["stopping"]) == (4242, "9.9.9", 2, 16, 3, False)
    assert 0 <= alive["heartbeat_age"] < 60
    assert cli(database, "workers") == 0
    table = capsys.readouterr().out
    assert "host-a" in table and "alive" in table and "dead" in table


def test_roles_print_writes_the_installed_roles_script_when_asked(tmp_path: Path) -> None:
    result = run_module("roles", "--print")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "skivi" / "sql" / "roles.sql").read_text()
    assert run_module("roles").returncode == 2  # --print is the only thing it does
