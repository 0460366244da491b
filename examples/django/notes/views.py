"""The example's views: a note and its jobs written in one transaction.

``POST /notes`` writes a note and enqueues two jobs, a typed task's and a django.tasks
task's, inside one ``transaction.atomic()``: the three exist, or none does (a note with the
word "forbidden" is refused after the enqueues, and they go with the rollback). With
ATOMIC_REQUESTS the request's transaction holds them too (``/notes/explode`` fails after
enqueueing: nothing is left). ``POST /notes/async`` is the async view's way.
"""

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse

import skivi
from notes.models import Note
from notes.tasks import index_note, shout_note, summarize
from skivi.contrib.django import system


class Refused(Exception):
    pass


def create_note(request: HttpRequest) -> JsonResponse:
    text = json.loads(request.body)["text"]
    try:
        with transaction.atomic():
            note = Note.objects.create(text=text)
            job = index_note.defer(note_id=note.id)
            result = summarize.enqueue(note.id)
            if "forbidden" in text:
                raise Refused  # rolls back the note and both jobs
    except Refused:
        return JsonResponse({"error": "forbidden word"}, status=400)
    return JsonResponse({"id": note.id, "job_id": job.id, "result_id": result.id})


@transaction.non_atomic_requests  # Django runs no async view in ATOMIC_REQUESTS
async def create_note_async(request: HttpRequest) -> JsonResponse:
    text = json.loads(request.body)["text"]
    note = await Note.objects.acreate(text=text)
    job = await shout_note.defer_async(note_id=note.id)
    result = await summarize.aenqueue(note.id)
    return JsonResponse({"id": note.id, "job_id": job.id, "result_id": result.id})


def explode(request: HttpRequest) -> JsonResponse:
    note = Note.objects.create(text="never kept")
    index_note.defer(note_id=note.id)
    raise RuntimeError("the request fails after its writes: ATOMIC_REQUESTS rolls them back")


def job_status(request: HttpRequest, job_id: int) -> JsonResponse:
    result = skivi.get_result(system(), job_id)
    return JsonResponse({"state": result.state, "value": result.value, "error": result.error})


def task_status(request: HttpRequest, result_id: str) -> JsonResponse:
    result = summarize.get_result(result_id)
    value = result.return_value if result.status == "SUCCESSFUL" else None
    return JsonResponse({"status": result.status, "return_value": value,
                         "errors": [e.exception_class_path for e in result.errors]})
