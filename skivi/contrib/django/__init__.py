"""Skivi in a Django project (Django 6; the ``django`` extra). See docs/django.md.

::

    INSTALLED_APPS = [..., "skivi.contrib.django"]
    SKIVI = {"database": {"schema_name": "jobs"}, "worker": {"concurrency": 8}}
    TASKS = {"default": {"BACKEND": "skivi.contrib.django.SkiviBackend"}}   # django.tasks

    python manage.py skivi_migrate            # Skivi's schema (not a Django migration)
    python manage.py skivi_worker             # the engine, Django set up in every child

In code, every enqueue goes through Django's connection, in the caller's
``transaction.atomic()``:

    from skivi.contrib.django import system, task

    @task                                    # a typed task of the project (any app's
    def send_welcome(user_id: int) -> None:  # tasks.py; skivi.Tasks collections work too)
        ...

    with transaction.atomic():
        user = User.objects.create(...)
        send_welcome.defer(user_id=user.id)          # the typed task
        skivi.add_job(system(), "audit", {"id": user.id})   # by name
        welcome.enqueue(user.id)                     # a django.tasks @task

Modules: ``conf`` (settings.SKIVI), ``dbapi`` (Django's connection as Skivi's), ``relay``
(the system's enqueues through it), ``project`` (the system and its tasks), ``jobs``
(handlers in the worker's children), ``backend`` (the django.tasks backend), ``checks``,
``models`` and ``admin`` (read-only), ``management.commands`` (skivi_worker,
skivi_migrate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skivi.contrib.django.project import TASKS, system, task

if TYPE_CHECKING:
    from skivi.contrib.django.backend import SkiviBackend

__all__ = ["TASKS", "SkiviBackend", "system", "task"]


def __getattr__(name: str) -> Any:
    # Imported on use: importing django.tasks here would make the app's import depend on
    # the settings of TASKS.
    if name == "SkiviBackend":
        from skivi.contrib.django.backend import SkiviBackend

        return SkiviBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
