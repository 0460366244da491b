"""The notes app's tasks, found by skivi.contrib.django's autodiscovery (an app's tasks.py).

Two kinds, side by side: Skivi's typed tasks (``@task`` of skivi.contrib.django:
``index_note.defer(note_id=...)``) and a django.tasks task (``@django.tasks.task``:
``summarize.enqueue(...)``, run by the SkiviBackend of settings.TASKS).
"""

from typing import Any

from django.tasks import task as django_task

from notes.models import Note
from skivi.contrib.django import task


@task(store_result=True)
def index_note(note_id: int) -> dict[str, Any]:
    """Count a note's words (a sync handler: Django's ORM as in a view)."""
    note = Note.objects.get(id=note_id)
    note.words = len(note.text.split())
    note.save(update_fields=["words"])
    return {"note_id": note_id, "words": note.words}


@task
async def shout_note(note_id: int) -> None:
    """Upper-case a note (an async handler: Django's async ORM API)."""
    note = await Note.objects.aget(id=note_id)
    note.shouted = note.text.upper()
    await note.asave(update_fields=["shouted"])


@django_task(priority=10)
def summarize(note_id: int) -> dict[str, Any]:
    """A django.tasks task: its TaskResult says SUCCESSFUL with this return value."""
    note = Note.objects.get(id=note_id)
    return {"note_id": note_id, "first_word": note.text.split()[0] if note.text else ""}
