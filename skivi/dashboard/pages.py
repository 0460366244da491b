"""The dashboard's pages (GET), one function each: what each reads, in one read-only
transaction, and the template it renders.

    /                overview: counts by state, the last hour's throughput and failure
                     rate, each queue's latency, the live engines
    /jobs            live jobs: filters, order, keyset pages, bulk selection
    /jobs/{id}       one job (live, or finished from history)
    /jobs/bulk       the confirmation of a bulk action over every job matching a filter
    /history         finished jobs: filters, keyset pages, retention
    /history/bulk    the confirmation of "retry every exhausted job matching"
    /queues          depth, oldest runnable job, serial lock holder
    /engines         heartbeat, capacity, in flight, version
    /cron            entries, last and next tick, backfill window
"""

from __future__ import annotations

from typing import Any

import psycopg
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from skivi.control import PARALLEL_QUEUE
from skivi.dashboard import params
from skivi.dashboard.site import Site
from skivi.dashboard.store import (
    BULK_MAX,
    COUNT_CAP,
    HISTORY_OUTCOMES,
    HISTORY_REASONS,
    JOB_STATES,
    PAGE_SIZE,
    QUEUE_CAP,
    QUEUE_GROUPS_MAX,
    RATE_WINDOW,
    SCAN_MAX,
)
from skivi.db.queries import EngineListRow

__all__ = ["cron", "engines", "history", "history_bulk", "job", "jobs", "jobs_bulk",
           "overview", "queues"]


def engine_status(engine: EngineListRow) -> str:
    """As ``skivi workers`` says it."""
    if not engine.alive:
        return "dead"
    return "stopping" if engine.stopping else "alive"


async def overview(site: Site, request: Request, form: FormData | None) -> Response:
    store = site.store

    async def read(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        rate = await store.rate(conn)
        finished = rate.completed + rate.exhausted
        # A capped count is a lower bound, so the rate is one too, or an upper one.
        bound = {(False, False): "", (True, False): "≤", (False, True): "≥"}.get(
            (rate.completed >= COUNT_CAP, rate.exhausted >= COUNT_CAP))
        return {
            "counts": await store.counts(conn), "rate": rate, "cap": COUNT_CAP,
            "window": RATE_WINDOW, "rate_bound": bound,
            "failure_rate": (None if finished == 0 or bound is None
                             else rate.exhausted / finished),
            "queues": await store.queues(conn), "queue_cap": QUEUE_CAP,
            "engines": await store.engines(conn),
            "history_kept": store.instance.config.worker.history,
        }

    return site.render(request, "overview.html", refresh=True, status_of=engine_status,
                       **await store.read(read))


async def jobs(site: Site, request: Request, form: FormData | None) -> Response:
    query = request.query_params
    f = params.job_filter(query)
    cursor = params.job_cursor(query)
    page = await site.store.read(lambda conn: site.store.jobs(conn, f, cursor))
    return site.render(request, "jobs.html", refresh=True, f=f, page=page,
                       cursor=cursor, states=JOB_STATES, scan=SCAN_MAX, page_size=PAGE_SIZE,
                       query=params.job_query, bulk_max=BULK_MAX)


async def job(site: Site, request: Request, form: FormData | None) -> Response:
    job_id = params.ids([request.path_params["id"]])[0]
    store = site.store

    async def read(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        live, done = await store.job(conn, job_id)
        engine = None
        if live is not None and live.locked_by is not None:
            engine = next((e for e in await store.engines(conn) if e.id == live.locked_by),
                          None)
        return {"live": live, "done": done, "engine": engine}

    found = await store.read(read)
    if found["live"] is None and found["done"] is None:
        return site.render(request, "error.html", 404,
                           message=f"No job {job_id}: not in the queue, not in history.")
    return site.render(request, "job.html", refresh=True, job_id=job_id,
                       status_of=engine_status, **found)


def _read_only(site: Site, request: Request) -> Response:
    return site.render(request, "error.html", 403,
                       message="This dashboard is read-only: it changes nothing.")


async def jobs_bulk(site: Site, request: Request, form: FormData | None) -> Response:
    if site.read_only:  # a confirmation of a change: there is none to confirm
        return _read_only(site, request)
    query = request.query_params
    f = params.job_filter(query)
    action = params.action(query)
    run_at = params.run_at(query) if action == "reschedule" else None
    matched = await site.store.read(lambda conn: site.store.match_jobs(conn, f, BULK_MAX + 1))
    fields = [(n, label, v) for n, label, v in (
        ("task", "task", f.task), ("queue", "queue", f.queue), ("state", "state", f.state),
        ("key", "key", f.key), ("q", "payload contains", f.search)) if v is not None]
    return site.render(request, "confirm.html", fields=fields, action=action, run_at=run_at,
                       matched=len(matched), bulk_max=BULK_MAX, kind="jobs",
                       query=params.job_query(f), actions=params.ACTIONS,
                       reason=query.get("reason", ""))


async def history(site: Site, request: Request, form: FormData | None) -> Response:
    query = request.query_params
    f = params.history_filter(query)
    cursor = params.history_cursor(query)
    page = await site.store.read(lambda conn: site.store.history(conn, f, cursor))
    w = site.store.instance.config.worker
    return site.render(request, "history.html", refresh=True, f=f, page=page, cursor=cursor,
                       outcomes=HISTORY_OUTCOMES, reasons=HISTORY_REASONS, scan=SCAN_MAX,
                       query=params.history_query, history_kept=w.history,
                       retention=w.history_retention, bulk_max=BULK_MAX)


async def history_bulk(site: Site, request: Request, form: FormData | None) -> Response:
    if site.read_only:
        return _read_only(site, request)
    f = params.history_filter(request.query_params)
    matched = await site.store.read(
        lambda conn: site.store.match_history(conn, f, BULK_MAX + 1))
    fields = [(n, label, v) for n, label, v in (
        ("task", "task", f.task), ("reason", "reason", f.reason),
        ("q", "payload contains", f.search)) if v is not None]
    return site.render(request, "confirm.html", fields=fields, action="retry", run_at=None,
                       matched=len(matched), bulk_max=BULK_MAX, kind="history",
                       query=params.history_query(f), actions=params.ACTIONS, reason="")


async def queues(site: Site, request: Request, form: FormData | None) -> Response:
    rows = await site.store.read(site.store.queues)
    pauses = await site.store.read(site.store.pauses)
    paused = {p.name for p in pauses if p.kind == "queue"}
    return site.render(request, "queues.html", refresh=True, queues=rows, cap=QUEUE_CAP,
                       groups_max=QUEUE_GROUPS_MAX, pauses=pauses, paused=paused,
                       parallel=PARALLEL_QUEUE)


async def engines(site: Site, request: Request, form: FormData | None) -> Response:
    rows = await site.store.read(site.store.engines)
    return site.render(request, "engines.html", refresh=True, engines=rows,
                       status_of=engine_status)


async def cron(site: Site, request: Request, form: FormData | None) -> Response:
    rows = await site.store.read(site.store.cron)
    return site.render(request, "cron.html", refresh=True, entries=rows)
