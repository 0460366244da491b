"""The relay of a Django project's system (``skivi.client.Relay``): its enqueues made
without ``conn=`` go to Django's connection (``skivi.contrib.django.dbapi``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import connections

from skivi.client import _run
from skivi.contrib.django.dbapi import psycopg_connection

if TYPE_CHECKING:
    from skivi.client import _Batch
    from skivi.db.queries import Queries
    from skivi.job import Job

__all__ = ["DjangoRelay"]


class DjangoRelay:
    """The ``relay`` of a Django project's system (``skivi.client.Relay``): enqueues made
    without ``conn=`` are written on Django's connection for ``alias``, of the calling
    thread, in its current transaction."""

    joins_transaction = True

    def __init__(self, alias: str, queries: Queries) -> None:
        self.alias = alias
        self.queries = queries

    def run(self, batch: _Batch) -> list[Job]:
        return _run(psycopg_connection(connections[self.alias]), self.queries, batch)

    async def run_async(self, batch: _Batch) -> list[Job]:
        # Django's rule for its connections in async code: the call goes to the thread
        # that holds them (thread_sensitive), where the request's atomic() is, if any.
        jobs: list[Job] = await sync_to_async(self.run, thread_sensitive=True)(batch)
        return jobs
