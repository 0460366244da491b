"""``create_app``: the dashboard as an ASGI application (Starlette), to serve with
``skivi dashboard`` or to mount in an application (docs/dashboard.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from skivi.dashboard import actions, pages
from skivi.dashboard.security import Auth
from skivi.dashboard.site import Handler, Site, guarded
from skivi.dashboard.store import Store
from skivi.instance import Instance

if TYPE_CHECKING:
    from skivi.system import System

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(system: System | Instance, read_only: bool = False, auth: Auth | None = None,
               prefix: str = "/") -> Starlette:
    """The dashboard of ``system``'s schema, as an ASGI app.

    ``read_only``: show no action and refuse every POST (403). ``auth``: a callable given
    each request, deciding who may see and act (skivi.dashboard.security). ``prefix``: the
    path the app serves under when it is handed full paths (a Django ASGI router, a proxy
    that keeps the prefix); when mounted with Starlette's ``Mount`` (FastAPI's
    ``app.mount``), leave it "/": the mount's path is the request's root_path.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', got {prefix!r}")
    instance: Instance = system if isinstance(system, Instance) else system.instance
    store = Store(instance)
    site = Site(store=store, read_only=read_only, auth=auth, prefix=prefix.rstrip("/"))

    def page(path: str, handler: Handler, name: str) -> Route:
        return Route(path, guarded(site, handler), methods=["GET"], name=name)

    def action(path: str, handler: Handler, name: str) -> Route:
        return Route(path, guarded(site, handler), methods=["POST"], name=name)

    routes: list[BaseRoute] = [
        page("/", pages.overview, "overview"),
        page("/jobs", pages.jobs, "jobs"),
        page("/jobs/bulk", pages.jobs_bulk, "jobs_bulk"),
        page("/jobs/{id}", pages.job, "job"),
        page("/history", pages.history, "history"),
        page("/history/bulk", pages.history_bulk, "history_bulk"),
        page("/queues", pages.queues, "queues"),
        page("/engines", pages.engines, "engines"),
        page("/cron", pages.cron, "cron"),
        action("/jobs/selected", actions.jobs_selected, "jobs_selected"),
        action("/jobs/bulk", actions.jobs_bulk, "jobs_bulk_do"),
        action("/jobs/{id}/action", actions.job_one, "job_action"),
        action("/history/selected", actions.history_selected, "history_selected"),
        action("/history/bulk", actions.history_bulk, "history_bulk_do"),
        action("/history/{id}/retry", actions.history_one, "history_retry"),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if site.prefix:
        routes = [Mount(site.prefix, routes=routes)]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Served on its own (skivi dashboard): close the pool on shutdown. Mounted in
        # another app, this never runs, and the pool lives as long as the process.
        yield
        await store.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.store = store
    return app
