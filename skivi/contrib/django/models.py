"""Read-only views of Skivi's tables for the Django admin (``skivi.contrib.django.admin``).

Unmanaged models: Django never creates, alters or migrates these tables (Skivi's own
migrations do: ``manage.py skivi_migrate``), and the app has no Django migrations, so
``makemigrations`` leaves it alone. Their ``db_table`` is schema-qualified with
settings.SKIVI's ``database.schema_name``, read when the app loads. Only the columns the
admin shows are declared; ``tests/django`` checks each against Skivi's schema snapshot, so
a migration that changes one cannot go unnoticed. Nothing writes through them: the admin's
only action (retry) runs Skivi's named query.
"""

from __future__ import annotations

from django.db import models

from skivi.config import SCHEMA_NAME_DEFAULT

__all__ = ["Job", "JobHistory"]


def _schema() -> str:
    from skivi.contrib.django import conf

    try:
        database = conf.read().config.get("database", {})
    except Exception:  # noqa: BLE001 - bad settings are the system check's to report
        return SCHEMA_NAME_DEFAULT
    name = database.get("schema_name") if isinstance(database, dict) else None
    return name if isinstance(name, str) and name else SCHEMA_NAME_DEFAULT


def _table(name: str) -> str:
    # Django quotes db_table as one identifier: 'skivi"."job' becomes "skivi"."job".
    return f'{_schema()}"."{name}'


class _JobColumns(models.Model):
    """The columns ``job`` and ``job_history`` share."""

    id = models.BigIntegerField(primary_key=True)
    task_identifier = models.TextField("task")
    queue_name = models.TextField("queue", null=True)
    payload = models.JSONField()
    priority = models.SmallIntegerField()
    attempts = models.IntegerField()
    max_attempts = models.IntegerField()
    last_error = models.TextField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        abstract = True


class Job(_JobColumns):
    """A job still to finish (view ``job_live``: the tables ``job`` and ``job_running``):
    waiting, failed and waiting for a retry, or running."""

    run_at = models.DateTimeField()
    key = models.TextField(null=True)
    locked_by = models.BigIntegerField("engine", null=True)
    locked_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = _table("job_live")
        ordering = ("-id",)
        verbose_name = "job"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"job {self.id} ({self.task_identifier})"

    @property
    def state(self) -> str:
        if self.locked_by is not None:
            return "running"
        if self.attempts > 0 and self.last_error is not None:
            return "failed"
        return "waiting"


class JobHistory(_JobColumns):
    """A finished job (table ``job_history``): completed (with worker.history on) or
    exhausted (always kept)."""

    last_error_traceback = models.TextField(null=True)
    finished_at = models.DateTimeField()
    outcome = models.TextField()
    reason = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = _table("job_history")
        ordering = ("-finished_at", "-id")
        verbose_name = "finished job"
        verbose_name_plural = "job history"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"job {self.id} ({self.task_identifier}, {self.outcome})"
