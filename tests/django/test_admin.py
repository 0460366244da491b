"""The admin's read-only view of Skivi: unmanaged models that match the schema (checked
against tests/db/schema_snapshot.sql), lists filtered by task, queue and state, and retry
on exhausted jobs through Skivi's named query."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

import skivi
from skivi.contrib.django import system
from skivi.contrib.django.models import Job, JobHistory
from tests.support.django_harness import fetch, work
from tests.support.django_probe.tasks import refuse

SNAPSHOT = Path(__file__).resolve().parents[1] / "db" / "schema_snapshot.sql"


def snapshot_columns(table: str) -> dict[str, tuple[str, bool]]:
    """column -> (type, nullable) of ``skivi.<table>`` in the schema snapshot."""
    text = SNAPSHOT.read_text()
    body = re.search(rf"^create table skivi\.{table} \((.*?)^\)", text, re.M | re.S)
    assert body is not None, f"no table {table} in {SNAPSHOT}"
    out = {}
    for line in body.group(1).splitlines():
        m = re.match(r"    (\w+) (.+?)(?: not null)?(?: default .*| generated .*)?,?$", line)
        if m and m.group(1) != "constraint":
            out[m.group(1)] = (m.group(2).removesuffix(" not null"), "not null" not in line)
    return out


# Job reads the view job_live (job and job_running, migration 0015): job's columns.
@pytest.mark.parametrize(("model", "table", "columns_of"),
                         [(Job, "job_live", "job"), (JobHistory, "job_history", "job_history")])
def test_the_admins_models_match_the_schema_when_compared_with_the_snapshot(
        model: type, table: str, columns_of: str) -> None:
    columns = snapshot_columns(columns_of)
    assert model._meta.db_table == f'skivi"."{table}'
    for field in model._meta.concrete_fields:
        assert field.column in columns, f"{table}.{field.column} is not in the schema"
        kind, nullable = columns[field.column]
        assert field.db_type(connection) == kind, (field.column, kind)
        assert field.null == nullable or field.primary_key, (field.column, nullable)


@pytest.fixture
def staff(db: str) -> Iterator[Client]:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(user)
    yield client
    user.delete()


def ids_in(html: str, model: str) -> set[int]:
    return {int(i) for i in re.findall(rf'href="/admin/skivi/{model}/(\d+)/change/', html)}


def test_jobs_are_listed_and_filtered_by_task_queue_and_state_when_viewed(
        db: str, staff: Client) -> None:
    waiting = skivi.add_job(system(), "record", {"label": "w"})
    queued = skivi.add_job(system(), "index_note", {"note_id": 1}, queue_name="mail")
    failed = skivi.add_job(system(), "record", {"label": "f"})
    fetch(db, "update skivi.job set attempts = 1, last_error = 'boom' where id = %s "
              "returning id", failed.id)
    page = staff.get("/admin/skivi/job/")
    assert page.status_code == 200
    assert ids_in(page.content.decode(), "job") == {waiting.id, queued.id, failed.id}
    by_task = staff.get("/admin/skivi/job/", {"task_identifier": "record"}).content.decode()
    assert ids_in(by_task, "job") == {waiting.id, failed.id}
    by_queue = staff.get("/admin/skivi/job/", {"queue_name": "mail"}).content.decode()
    assert ids_in(by_queue, "job") == {queued.id}
    by_state = staff.get("/admin/skivi/job/", {"state": "failed"}).content.decode()
    assert ids_in(by_state, "job") == {failed.id}
    assert "boom" in by_state
    detail = staff.get(f"/admin/skivi/job/{failed.id}/change/")
    assert detail.status_code == 200 and b"boom" in detail.content


def test_nothing_can_be_added_changed_or_deleted_when_the_admin_shows_jobs(
        db: str, staff: Client) -> None:
    job = skivi.add_job(system(), "record", {"label": "w"})
    assert staff.get("/admin/skivi/job/add/").status_code == 403
    assert staff.post(f"/admin/skivi/job/{job.id}/delete/").status_code == 403
    staff.post(f"/admin/skivi/job/{job.id}/change/", {"priority": 5})
    assert fetch(db, "select priority from skivi.job_live") == [(0,)]


def test_an_exhausted_job_is_retried_when_the_action_is_run(db: str, staff: Client) -> None:
    result = refuse.enqueue("no")
    work(db)
    job_id = int(result.id)
    listed = staff.get("/admin/skivi/jobhistory/", {"outcome": "exhausted"})
    assert ids_in(listed.content.decode(), "jobhistory") == {job_id}
    done = staff.post("/admin/skivi/jobhistory/", {
        "action": "retry", "_selected_action": [str(job_id)]}, follow=True)
    assert done.status_code == 200
    assert b"back in the queue" in done.content
    assert fetch(db, "select id, attempts from skivi.job_live") == [(job_id, 0)]
