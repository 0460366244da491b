"""One-shot readers of rows: each opens its own connection to ``url``, reads, and closes it
(for tests whose engines write in other processes)."""

from __future__ import annotations

from typing import Any

from tests.support.db import connect

__all__ = ["fetch", "live_jobs"]


def fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with connect(url) as c:
        return c.execute(query, args or None).fetchall()  # type: ignore[arg-type]


def live_jobs(url: str) -> int:
    return int(fetch(url, "select count(*) from skivi.job")[0][0])
