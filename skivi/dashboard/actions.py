"""The dashboard's actions (POST), each answered with a page of what happened to each job.

    /jobs/{id}/action     run now, reschedule, permanently fail, remove or cancel one live
                          job (cancel is the one action that reaches a running job: its
                          engine stops it, see skivi.cancel; the user is recorded as who)
    /jobs/selected        the same for the jobs ticked on a page
    /jobs/bulk            the same for every job matching a filter (at most BULK_MAX), after
                          the confirmation page (/jobs/bulk, GET) showed how many match
    /history/{id}/retry   put one exhausted job back in the queue
    /history/selected     the same for the jobs ticked on a page
    /history/bulk         the same for every exhausted job matching a filter (at most BULK_MAX)

They reach here only past the guard (skivi.dashboard.site.guarded: the auth hook, refused in
read-only mode, CSRF token checked). Each runs the statement the ``skivi`` command runs for it
(skivi.dashboard.store.Store.act), so running jobs are never changed and every skipped id
says why; each is logged at INFO with the auth hook's user, the action and the ids.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from skivi.dashboard import params
from skivi.dashboard.site import Site
from skivi.dashboard.store import BULK_MAX
from skivi.db.queries import ChangeRow, HistoryRetryRow

__all__ = ["history_bulk", "history_one", "history_selected", "job_one", "jobs_bulk",
           "jobs_selected"]

logger = logging.getLogger(__name__)

DONE = frozenset({"changed", "cancelled", "requested"})
"""The results that mean the action was taken (a cancel answers cancelled or requested)."""
IDS_LOGGED = 20
"""Most ids one log line names (the count is always there)."""
REASONS = {
    "completed": "completed jobs cannot be retried (only exhausted ones)",
    "finished": "already finished",
    "not_found": "not found (finished, removed or retried meanwhile)",
    "running": "claimed by an engine (running jobs are never changed)",
}


def _fields(form: FormData | None) -> Mapping[str, str]:
    return {} if form is None else {k: v for k, v in form.items() if isinstance(v, str)}


async def _apply(site: Site, request: Request, action: str, ids: list[int], *,
                 run_at: dt.datetime | None = None, reason: str | None = None,
                 back: str, how: str) -> Response:
    rows: list[ChangeRow] | list[HistoryRetryRow] = []
    user = request.state.user
    if ids:
        async def work(conn: psycopg.AsyncConnection[Any]
                       ) -> list[ChangeRow] | list[HistoryRetryRow]:
            return await site.store.act(conn, action, ids, run_at=run_at, reason=reason,
                                        by=None if user is None else str(user))

        rows = await site.store.write(work)
    changed = [r.id for r in rows if r.result in DONE]
    logger.info("dashboard: %s %s: %d of %d job(s) changed (%s)%s by %s", how, action,
                len(changed), len(rows), ", ".join(str(i) for i in ids[:IDS_LOGGED]),
                "..." if len(ids) > IDS_LOGGED else "", user,
                extra={"action": f"dashboard_{action}", "user": user, "ids": ids[:IDS_LOGGED],
                       "changed": len(changed), "requested": len(rows)})
    results = []
    for r in rows:
        if r.result in DONE:
            done = params.ACTIONS[action]
            if isinstance(r, ChangeRow) and r.result == "requested":
                done = f"cancel requested: engine {r.locked_by} stops it"
            results.append((r.id, True, done))
            continue
        why = REASONS.get(r.result, r.result)
        if isinstance(r, ChangeRow) and r.locked_by is not None:
            why += f" (engine {r.locked_by})"
        results.append((r.id, False, why))
    return site.render(request, "result.html", action=action, results=results,
                       changed=len(changed), back=back, actions=params.ACTIONS)


def _reason(fields: Mapping[str, str]) -> str | None:
    reason = fields.get("reason", "").strip()
    return reason or None


async def job_one(site: Site, request: Request, form: FormData | None) -> Response:
    fields = _fields(form)
    job_id = params.ids([request.path_params["id"]])[0]
    action = params.action(fields)
    run_at = params.run_at(fields) if action == "reschedule" else None
    return await _apply(site, request, action, [job_id], run_at=run_at,
                        reason=_reason(fields), back=f"/jobs/{job_id}", how="one job")


async def jobs_selected(site: Site, request: Request, form: FormData | None) -> Response:
    fields = _fields(form)
    action = params.action(fields)
    ids = params.ids([v for v in (form.getlist("id") if form else []) if isinstance(v, str)])
    run_at = params.run_at(fields) if action == "reschedule" else None
    f = params.job_filter(fields)
    return await _apply(site, request, action, ids, run_at=run_at, reason=_reason(fields),
                        back="/jobs?" + params.job_query(f), how="selected jobs")


async def jobs_bulk(site: Site, request: Request, form: FormData | None) -> Response:
    fields = _fields(form)
    action = params.action(fields)
    run_at = params.run_at(fields) if action == "reschedule" else None
    f = params.job_filter(fields)
    ids = await site.store.read(lambda conn: site.store.match_jobs(conn, f, BULK_MAX))
    return await _apply(site, request, action, ids, run_at=run_at, reason=_reason(fields),
                        back="/jobs?" + params.job_query(f), how="every job matching")


async def history_one(site: Site, request: Request, form: FormData | None) -> Response:
    job_id = params.ids([request.path_params["id"]])[0]
    return await _apply(site, request, "retry", [job_id], back=f"/jobs/{job_id}",
                        how="one job")


async def history_selected(site: Site, request: Request, form: FormData | None) -> Response:
    fields = _fields(form)
    ids = params.ids([v for v in (form.getlist("id") if form else []) if isinstance(v, str)])
    f = params.history_filter(fields)
    return await _apply(site, request, "retry", ids,
                        back="/history?" + params.history_query(f), how="selected jobs")


async def history_bulk(site: Site, request: Request, form: FormData | None) -> Response:
    f = params.history_filter(_fields(form))
    ids = await site.store.read(lambda conn: site.store.match_history(conn, f, BULK_MAX))
    return await _apply(site, request, "retry", ids,
                        back="/history?" + params.history_query(f),
                        how="every exhausted job matching")
