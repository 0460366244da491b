"""Django's connection as the one Skivi writes in: what ``conn=`` (``skivi.db.connections``)
and the project's system (``skivi.contrib.django.relay``) enqueue through.

Django (with psycopg 3, its default PostgreSQL driver since 4.2) holds one psycopg
``Connection`` per alias and thread, and its transaction management is that connection's
state: inside ``transaction.atomic()`` it is in a transaction (a savepoint for a nested
block), outside it is in autocommit. A job written on it therefore commits or rolls back
with the block around it, and ``ATOMIC_REQUESTS`` puts a view's jobs in the request's
transaction. Nothing here commits, rolls back or closes it.

Django's connections are sync only: from async code, Django's own rule applies (wrap the
call in ``asgiref.sync.sync_to_async``); ``DjangoRelay.run_async`` does so.

This module imports nothing of Skivi's but its errors: ``skivi.db.connections`` calls it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy

from skivi.errors import SkiviError

__all__ = ["django_wrapper", "psycopg_connection"]


def django_wrapper(conn: object) -> BaseDatabaseWrapper | None:
    """The Django connection ``conn`` is (``django.db.connection`` is a proxy of the
    default alias's), or None if it is none."""
    if isinstance(conn, ConnectionProxy):
        # The proxy forwards attribute access to the alias's connection of this thread.
        conn = connections[object.__getattribute__(conn, "_alias")]
    return conn if isinstance(conn, BaseDatabaseWrapper) else None


def psycopg_connection(wrapper: BaseDatabaseWrapper) -> psycopg.Connection[Any]:
    """The psycopg connection under ``wrapper``, made if need be, in the transaction state
    Django has it in.

    Raises:
        SkiviError: the alias is not PostgreSQL, or Django uses psycopg2 there.
        django.db.transaction.TransactionManagementError: inside an atomic block that must
            roll back (a query in it failed), as Django raises for its own queries.
    """
    if wrapper.vendor != "postgresql":
        raise SkiviError(f"conn is Django's connection {wrapper.alias!r}, a {wrapper.vendor} "
                         "database: Skivi's jobs live in PostgreSQL")
    wrapper.validate_no_broken_transaction()
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise SkiviError(
            f"Django's connection {wrapper.alias!r} uses {type(raw).__module__}: Skivi writes "
            "jobs through psycopg 3, which Django uses when it is installed (pip install "
            "'psycopg[binary]'; psycopg2 cannot be used)")
    return raw
