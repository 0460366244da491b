"""Enqueueing from Django code joins transaction.atomic(): a rollback leaves no job, a
commit one, savepoints behave; typed tasks, add_job / add_jobs (with and without conn=) and
the django.tasks backend alike; ATOMIC_REQUESTS and async code too."""

from __future__ import annotations

import asyncio

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test import override_settings
from notes.models import Note
from notes.tasks import index_note, shout_note, summarize

import skivi
from skivi.contrib.django import system
from skivi.errors import SkiviError
from tests.support.django_harness import fetch
from tests.support.django_probe.models import Event


class Rollback(Exception):
    pass


def jobs(url: str) -> list[tuple[str, object]]:
    return [(r[0], r[1]) for r in fetch(url, "select task_identifier, payload from skivi.job_live "
                                             "order by id")]


def test_a_rollback_leaves_no_job_and_a_commit_one_when_deferred_in_atomic(db: str) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        index_note.defer(note_id=1)
        skivi.add_job(system(), "record", {"label": "by name"})
        summarize.enqueue(1)
        assert len(jobs(db)) == 0  # not committed yet: nobody else sees them
        raise Rollback
    assert jobs(db) == []
    with transaction.atomic():
        index_note.defer(note_id=2)
        skivi.add_jobs(system(), [{"task": "record", "payload": {"label": "a"}},
                                  {"task": "record", "payload": {"label": "b"}}])
        summarize.enqueue(2)
    assert jobs(db) == [("index_note", {"note_id": 2}), ("record", {"label": "a"}),
                        ("record", {"label": "b"}),
                        ("notes.tasks.summarize", {"args": [2], "kwargs": {}})]


def test_a_result_is_read_in_the_callers_transaction_when_looked_up_in_it(db: str) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        result = summarize.enqueue(3)
        # Read on Django's connection: this transaction's own job, not committed yet.
        assert summarize.get_result(result.id).status == "READY"
        raise Rollback


def test_a_rolled_back_savepoint_takes_only_its_own_jobs_when_nested(db: str) -> None:
    with transaction.atomic():
        index_note.defer(note_id=1)
        with pytest.raises(Rollback), transaction.atomic():
            index_note.defer(note_id=2)
            summarize.enqueue(2)
            raise Rollback
        with transaction.atomic():
            index_note.defer(note_id=3)
    assert jobs(db) == [("index_note", {"note_id": 1}), ("index_note", {"note_id": 3})]


def test_a_job_commits_at_once_when_enqueued_outside_atomic(db: str) -> None:
    job = index_note.defer(note_id=5)
    assert jobs(db) == [("index_note", {"note_id": 5})]
    assert job.id == fetch(db, "select id from skivi.job_live")[0][0]


def test_conn_takes_djangos_connection_when_given(db: str) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        skivi.add_job(system(), "record", {"label": "x"}, conn=connection)
        index_note.configure(conn=connection).defer(note_id=1)
        raise Rollback
    assert jobs(db) == []
    skivi.add_job(system(), "record", {"label": "y"}, conn=connection)
    assert jobs(db) == [("record", {"label": "y"})]


def test_a_keyed_job_comes_back_decoded_when_written_on_djangos_connection(db: str) -> None:
    # Django's connection reads jsonb as text; what Skivi returns is decoded all the same.
    with transaction.atomic():
        job = skivi.add_job(system(), "record", {"label": "k"}, job_key="once")
    assert job.payload == {"label": "k"} and job.key == "once"


def test_the_job_and_the_models_rows_go_together_when_the_block_fails(db: str) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Note.objects.create(text="kept?")
        index_note.defer(note_id=1)
        with connection.cursor() as cur:
            cur.execute("insert into notes_note (id, text) values (1, 'a'), (1, 'b')")
    assert fetch(db, "select count(*) from notes_note") == [(0,)]
    assert jobs(db) == []


def test_enqueueing_in_a_broken_atomic_block_is_refused_when_django_would_refuse(
        db: str) -> None:
    with transaction.atomic():
        Note.objects.create(text="first")
        try:
            with transaction.atomic(savepoint=False):
                with connection.cursor() as cur:
                    cur.execute("select 1/0")
        except Exception:  # noqa: BLE001 - the block is now broken, as Django marks it
            pass
        with pytest.raises(TransactionManagementError):
            index_note.defer(note_id=1)
        transaction.set_rollback(True)
    assert jobs(db) == []


def test_async_code_enqueues_through_sync_to_async_when_awaited(db: str) -> None:
    async def view() -> tuple[int, str]:
        job = await shout_note.defer_async(note_id=1)
        result = await summarize.aenqueue(1)
        await skivi.add_job_async(system(), "record", {"label": "async"})
        return job.id, result.id

    job_id, result_id = asyncio.run(view())
    assert [r[0] for r in fetch(db, "select id from skivi.job_live order by id")][:2] == [
        job_id, int(result_id)]
    assert len(jobs(db)) == 3


def test_an_async_call_refuses_djangos_connection_when_given_as_conn(db: str) -> None:
    with pytest.raises(SkiviError, match="sync_to_async"):
        asyncio.run(skivi.add_job_async(system(), "record", {}, conn=connection))


def test_the_request_transaction_holds_the_jobs_when_atomic_requests_is_on(db: str) -> None:
    from django.test import Client

    response = Client(raise_request_exception=False).post("/notes/explode")
    assert response.status_code == 500
    assert fetch(db, "select count(*) from notes_note") == [(0,)]
    assert jobs(db) == []
    assert Event.objects.count() == 0


def test_jobs_follow_the_alias_of_skivi_when_it_names_another(db: str) -> None:
    with override_settings(SKIVI={"alias": "jobs", "database": {"schema_name": "skivi"}}):
        # The jobs are in the "jobs" connection's transactions, not the default one's.
        with pytest.raises(Rollback), transaction.atomic(using="jobs"):
            index_note.defer(note_id=1)
            raise Rollback
        assert jobs(db) == []
        with pytest.raises(Rollback), transaction.atomic():
            index_note.defer(note_id=2)
            raise Rollback
        assert jobs(db) == [("index_note", {"note_id": 2})]
