"""An engine identity as the engine's own statements see it, for tests that drive those
statements (skivi.db.queries) by hand: the claim guard, rescues, late writes, cancel."""

from __future__ import annotations

from skivi.db import queries
from skivi.db.queries import Queries
from tests.support.db import connect

__all__ = ["FakeEngine"]


class FakeEngine:
    """An engine identity as job_claim.sql and friends see it: a row in skivi.engine (its
    lease), and a connection of its own."""

    def __init__(self, url: str, q: Queries) -> None:
        self.q = q
        self.conn = connect(url)
        self.id = queries.engine_register.run(
            self.conn, q, hostname="test", pid=0, version="test",
            lease_timeout=30.0, processes=1, concurrency=1)

    def claim(self, limit: int = 10) -> list[tuple[int, int]]:
        rows = queries.job_claim.run(self.conn, self.q, engine=self.id, limit=limit,
                                     serial_limit=limit, max_bytes=1 << 40)
        return [(r[queries.CLAIM_ID], r[queries.CLAIM_LEASE]) for r in rows]

    def complete(self, pairs: list[tuple[int, int]]) -> list[int]:
        return [r[queries.COMPLETED_ID] for r in queries.job_complete_many.run(
            self.conn, self.q, engine=self.id, ids=[p[0] for p in pairs],
            leases=[p[1] for p in pairs], history=False)]

    def fail(self, pairs: list[tuple[int, int]], final: str | None = None) -> list[int]:
        n = len(pairs)
        return [r[queries.FAILED_ID] for r in queries.job_fail_many.run(
            self.conn, self.q, engine=self.id, ids=[p[0] for p in pairs],
            leases=[p[1] for p in pairs], errors=["late"] * n, delays=[0.0] * n,
            finals=[final] * n, payloads=[None] * n, attempts=[None] * n,
            tracebacks=[None] * n)]

    def release(self, pairs: list[tuple[int, int]]) -> list[int]:
        return queries.job_release_many.run(self.conn, self.q, engine=self.id,
                                            ids=[p[0] for p in pairs],
                                            leases=[p[1] for p in pairs])

    def rescue(self) -> tuple[list[int], int, int]:
        row = queries.job_rescue.run(self.conn, self.q, engine=self.id, restart_grace=0.0,
                                     orphans=True)
        return list(row.engines), row.retried, row.exhausted
