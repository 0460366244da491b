"""The example project (examples/django, docs/django.md) as its guide runs it: real HTTP
requests through Django's test client, then the worker as a real `manage.py skivi_worker
--once` process with the example's own settings."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client
from notes.models import Note

from tests.support.django_harness import fetch, work


def post(client: Client, path: str, text: str) -> Any:
    return client.post(path, json.dumps({"text": text}), content_type="application/json")


def test_a_note_and_its_jobs_are_written_together_and_run_when_posted(db: str) -> None:
    client = Client()
    created = post(client, "/notes", "hello from the web")
    assert created.status_code == 200, created.content
    note_id, job_id, result_id = (created.json()[k] for k in ("id", "job_id", "result_id"))
    assert fetch(db, "select task_identifier from skivi.job_live order by id") == [
        ("index_note",), ("notes.tasks.summarize",)]
    assert client.get(f"/jobs/{job_id}").json()["state"] == "waiting"
    assert client.get(f"/results/{result_id}").json()["status"] == "READY"

    # The rollback path: refused after its enqueues, in the same atomic(); nothing is left.
    refused = post(client, "/notes", "a forbidden note")
    assert refused.status_code == 400
    assert Note.objects.filter(text__contains="forbidden").count() == 0
    assert fetch(db, "select count(*) from skivi.job_live") == [(2,)]

    shouted = post(client, "/notes/async", "quiet please")
    assert shouted.status_code == 200, shouted.content

    log = work(db, env={"DJANGO_SETTINGS_MODULE": "example.settings"})
    assert client.get(f"/jobs/{job_id}").json() == {
        "state": "completed", "value": {"note_id": note_id, "words": 4}, "error": None}, log
    assert client.get(f"/results/{result_id}").json() == {
        "status": "SUCCESSFUL", "return_value": {"note_id": note_id, "first_word": "hello"},
        "errors": []}
    assert Note.objects.get(id=note_id).words == 4
    assert Note.objects.get(id=shouted.json()["id"]).shouted == "QUIET PLEASE"
    assert fetch(db, "select count(*) from skivi.job_live") == [(0,)]
