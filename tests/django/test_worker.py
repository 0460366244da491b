"""`manage.py skivi_worker` and `manage.py skivi_migrate`: real processes on the session's
database. Django is set up in every child; its connections are never shared across the
fork; each job runs between close_old_connections; sync handlers use the ORM."""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
from notes.models import Note
from notes.tasks import index_note

import skivi
from skivi.contrib.django import system
from tests.support.db import MakeDatabase
from tests.support.django_harness import fetch, manage, work
from tests.support.django_probe.models import Event
from tests.support.django_probe.tasks import break_connection, defer_inside, record, whoami


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_sync_handler_uses_the_orm_when_run_by_the_worker(db: str, threads: str) -> None:
    note = Note.objects.create(text="three little words")
    job = index_note.defer(note_id=note.id)
    record.defer(label="orm")
    log = work(db, env={"PROBE_SYNC_THREADS": threads})
    assert "SynchronousOnlyOperation" not in log
    note.refresh_from_db()
    assert note.words == 3, log
    assert skivi.get_result(system(), job.id).value == {"note_id": note.id, "words": 3}
    assert Event.objects.get(name="record").value["label"] == "orm"


def test_a_broken_connection_does_not_fail_the_next_job_when_jobs_follow(db: str) -> None:
    break_connection.defer()
    record.defer(label="after")
    log = work(db, "--concurrency", "1")
    assert fetch(db, "select task_identifier, outcome from skivi.job_history") == [
        ("break_connection", "exhausted")], log
    assert Event.objects.filter(name="record").count() == 1, log
    assert fetch(db, "select count(*) from skivi.job_live") == [(0,)]


def test_children_have_connections_of_their_own_when_the_parent_had_one(db: str) -> None:
    for n in range(40):
        whoami.defer(n=n)
    log = work(db, "--processes", "2", "--concurrency", "1",
               env={"PROBE_CONNECT_AT_START": "1", "PROBE_PERSISTENT_CONNECTIONS": "1"})
    seen = [e.value for e in Event.objects.filter(name="whoami")]
    assert len(seen) == 40, log
    backends: dict[int, set[int]] = defaultdict(set)
    for v in seen:
        backends[v["backend"]].add(v["pid"])
    # One database session per process: none shared by two children, nor the parent's.
    assert all(len(pids) == 1 for pids in backends.values()), backends
    assert os.getpid() not in {v["pid"] for v in seen}


def test_a_deferral_in_the_handlers_atomic_goes_with_it_when_it_rolls_back(db: str) -> None:
    defer_inside.defer(label="kept", fail=False)
    defer_inside.defer(label="dropped", fail=True)
    log = work(db, "--concurrency", "1")
    labels = sorted(e.value["label"] for e in Event.objects.filter(name="record"))
    # The follow-up of the handler that failed was rolled back with its atomic() block.
    assert labels == ["kept"], log
    assert [e.value["label"] for e in Event.objects.filter(name="defer_inside")] == ["kept"]


def test_tasks_of_modules_in_skivi_tasks_run_when_listed(db: str) -> None:
    Note.objects.create(text="")
    Note.objects.create(text="stays")
    job = skivi.add_job(system(), "purge_empty_notes")
    work(db)
    assert list(Note.objects.values_list("text", flat=True)) == ["stays"]
    assert fetch(db, "select outcome from skivi.job_history where id = %s", job.id) in (
        [], [("completed",)])
    assert fetch(db, "select count(*) from skivi.job_live") == [(0,)]


def test_the_worker_refuses_bad_flags_with_the_engines_exit_codes_when_started(
        db: str) -> None:
    done = manage(db, "skivi_worker", "--once", "--queues", ",")
    assert done.returncode == 2, done.stderr
    assert "--queues" in done.stderr
    done = manage(db, "skivi_worker", "--help")
    assert done.returncode == 0
    for flag in ("--processes", "--concurrency", "--queues", "--once", "--no-migrate",
                 "--shutdown-timeout", "--metrics-port", "--crontab", "exit codes"):
        assert flag in done.stdout


def test_the_worker_stops_at_a_bad_setting_when_checks_run(db: str) -> None:
    done = manage(db, "skivi_worker", "--once", env={"PROBE_SYNC_THREADS": "0"})
    assert done.returncode != 0
    assert "skivi.E001" in done.stderr and "worker.sync_threads" in done.stderr


def test_skivi_migrate_applies_and_checks_the_schema_when_run(
        make_database: MakeDatabase) -> None:
    empty = make_database(template=None)
    done = manage(empty, "skivi_migrate", "--check")
    assert done.returncode == 1, done.stderr
    assert "0001_initial.sql" in done.stdout
    done = manage(empty, "skivi_worker", "--once", "--no-migrate")
    assert done.returncode == 3, done.stderr
    assert "pending migrations" in done.stderr
    done = manage(empty, "skivi_migrate")
    assert done.returncode == 0, done.stderr
    assert "applied 0001_initial.sql" in done.stdout
    done = manage(empty, "skivi_migrate", "--check")
    assert done.returncode == 0 and "up to date" in done.stdout
    assert fetch(empty, "select count(*) > 0 from skivi.migration") == [(True,)]


def test_djangos_migrate_applies_skivis_schema_when_a_migration_calls_skivi_migrate(
        make_database: MakeDatabase) -> None:
    empty = make_database(template=None)
    done = manage(empty, "migrate", "-v", "0")
    assert done.returncode == 0, done.stderr
    assert fetch(empty, "select count(*) > 0 from skivi.migration") == [(True,)]
    done = manage(empty, "skivi_migrate", "--check")
    assert done.returncode == 0 and "up to date" in done.stdout
