"""What every command of ``skivi`` is handed and may raise: the ``Context`` (its parsed
arguments, the configuration, the instance's named queries and a connection to open) and
``Refused``. A command is a ``Handler``: a context in, an exit code out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.types.datetime import TimestamptzLoader

from skivi.config import Config
from skivi.db import pool as dbpool
from skivi.db.queries import Queries, for_schema
from skivi.errors import ConfigError

__all__ = ["APPLICATION_NAME", "Context", "Handler", "Refused", "TimestamptzOrText"]

APPLICATION_NAME = "skivi-cli"


class Refused(Exception):
    """A command refused before touching the database: exit 2 with this message."""


@dataclasses.dataclass(slots=True)
class Context:
    args: argparse.Namespace
    config: Config

    @property
    def schema(self) -> str:
        return self.config.database.schema_name

    @property
    def queries(self) -> Queries:
        return for_schema(self.schema)

    def connect(self) -> psycopg.Connection[Any]:
        url = self.config.database.connection_string
        if not url:
            raise ConfigError(
                "database.connection_string: no database configured; give --database-url, "
                "set SKIVI_DATABASE_URL or DATABASE_URL, or set it in skivi.toml")
        conn = dbpool.connect(url, application_name=APPLICATION_NAME,
                              connect_timeout=self.config.database.connect_timeout)
        conn.adapters.register_loader("timestamptz", TimestamptzOrText)
        return conn


class TimestamptzOrText(Loader):
    """A timestamptz as a datetime, or as PostgreSQL's own text when Python cannot hold it.

    psycopg raises DataError on 'infinity', '-infinity' and years outside 1..9999, which
    would make a whole listing fail on one row written from SQL. Text rather than clamping
    to datetime.max/min: an operator must see that the row says infinity, not year 9999."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._datetime = TimestamptzLoader(oid, context)

    def load(self, data: Buffer) -> dt.datetime | str:
        try:
            return self._datetime.load(data)
        except psycopg.DataError:
            return bytes(data).decode()


Handler = Callable[[Context], int]
