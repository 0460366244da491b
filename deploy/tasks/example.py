"""An example task file for the docker-compose demo (mounted at /app/tasks).

Enqueue a job for it from the PostgreSQL container:

    docker compose -f deploy/docker-compose.yml exec postgres \
        psql -U skivi -c "select id from skivi.add_job('hello', '{\"name\": \"world\"}')"
"""

from __future__ import annotations

from typing import Any


def hello(ctx: Any) -> None:
    ctx.logger.info("hello, %s", ctx.job.payload.get("name", "stranger"))


TASKS = {"hello": hello}
