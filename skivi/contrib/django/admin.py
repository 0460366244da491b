"""The Django admin's read-only view of Skivi: jobs (table ``job``) and finished jobs
(``job_history``), filtered by task, queue and state, with one action, retry, on
exhausted jobs (Skivi's named query ``job_history_retry_many``, as ``skivi history retry``
runs it; in the request's transaction, on Django's connection). Nothing can be added,
changed or deleted here: the engine owns job state.

It is registered with the default admin site when ``django.contrib.admin`` is installed
(the admin autodiscovers this module); ``register(site)`` puts it on another site.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from skivi.contrib.django.models import Job, JobHistory

__all__ = ["JobAdmin", "JobHistoryAdmin", "register"]


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("waiting", "waiting"), ("failed", "failed (will retry)"),
                ("running", "running")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        errored = Q(attempts__gt=0, last_error__isnull=False)
        match self.value():
            case "running":
                return queryset.filter(locked_by__isnull=False)
            case "failed":
                return queryset.filter(errored, locked_by__isnull=True)
            case "waiting":
                return queryset.filter(locked_by__isnull=True).exclude(errored)
        return queryset


class _ReadOnly(admin.ModelAdmin):
    list_per_page = 50
    show_full_result_count = False  # no count(*) over a large job table on every page

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # Skivi's tables are in the database of settings.SKIVI's alias.
        return super().get_queryset(request).using(_alias())

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class JobAdmin(_ReadOnly):
    list_display = ("id", "task_identifier", "queue_name", "state", "priority", "run_at",
                    "attempts", "max_attempts", "last_error")
    list_filter = ("task_identifier", "queue_name", StateFilter)
    search_fields = ("=id", "=key")


class JobHistoryAdmin(_ReadOnly):
    list_display = ("id", "task_identifier", "queue_name", "outcome", "reason", "attempts",
                    "finished_at", "last_error")
    list_filter = ("task_identifier", "queue_name", "outcome", "reason")
    search_fields = ("=id",)
    actions = ("retry",)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(self.has_view_permission(request))

    @admin.action(description="Retry the selected exhausted jobs", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        from skivi.contrib.django.dbapi import psycopg_connection
        from skivi.contrib.django.project import system
        from skivi.db.queries import job_history_retry_many

        s = system()
        ids = list(queryset.values_list("id", flat=True))
        conn = psycopg_connection(connections[_alias()])
        rows = job_history_retry_many.run(conn, s.queries, ids=ids)
        moved = [r.id for r in rows if r.result == "changed"]
        skipped = [r.id for r in rows if r.result != "changed"]
        if moved:
            self.message_user(request, f"{len(moved)} job(s) back in the queue: "
                              f"{', '.join(map(str, moved))}", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"not retried (completed, or not exhausted any more): "
                              f"{', '.join(map(str, skipped))}", messages.WARNING)


def _alias() -> str:
    from skivi.contrib.django import conf

    return conf.read().alias


def register(site: admin.AdminSite) -> None:
    site.register(Job, JobAdmin)
    site.register(JobHistory, JobHistoryAdmin)


register(admin.site)
