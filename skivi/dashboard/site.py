"""The dashboard's shared parts: the ``Site`` every page and action is handed (the store,
the templates, read-only mode, the auth hook), how a page is rendered, and the guard every
request passes (auth, CSRF, read-only, bad parameters).

Rendering: Jinja2 with autoescape on for every template, so every value from the database
(payloads, errors, task and queue names, keys) is escaped; no template marks data safe.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from skivi.cli import output
from skivi.dashboard.params import BadParameter
from skivi.dashboard.security import (
    CSRF_FIELD,
    Auth,
    authorize,
    csrf_token,
    csrf_valid,
    set_csrf_cookie,
)
from skivi.dashboard.store import Store

__all__ = ["Handler", "Site", "guarded"]

logger = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # Scripts and styles only from the dashboard's own files: a value that escaped escaping
    # still could not run. No framing (its buttons change jobs), forms post only to itself.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages are live data and carry the CSRF token: never cached.
    "Cache-Control": "no-store",
}

REFRESH_INTERVAL = 5
"""Seconds between two refreshes of a live page (skivi/dashboard/static/live.js)."""


def _count(value: int, capped: bool = False, estimated: bool = False) -> str:
    text = f"{value:,}"
    if estimated:
        return "≈" + text
    return text + ("+" if capped else "")


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("skivi.dashboard", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=output.when_text, age=output.age_text, line=output.error_text,
                       text=output.text, count=_count, pretty=_pretty)
    return env


@dataclasses.dataclass(slots=True)
class Site:
    store: Store
    read_only: bool
    auth: Auth | None
    prefix: str
    env: Environment = dataclasses.field(default_factory=_environment)

    def root(self, request: Request) -> str:
        """The dashboard's URL path, without a trailing slash ("" at the server's root)."""
        # Where it is mounted (Starlette's Mount, or create_app's own for ``prefix``: either
        # way the scope's root_path).
        root_path: str = request.scope.get("root_path", "")
        return root_path.rstrip("/")

    def render(self, request: Request, template: str, status: int = 200, *,
               refresh: bool = False, **values: Any) -> HTMLResponse:
        page = self.env.get_template(template).render(
            root=self.root(request), csrf=request.state.csrf, csrf_field=CSRF_FIELD,
            read_only=self.read_only, user=request.state.user, schema=self.store.instance.schema,
            refresh=REFRESH_INTERVAL if refresh else 0, nav=template.split(".")[0], **values)
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


Handler = Callable[[Site, Request, FormData | None], Awaitable[Response]]
"""A page (form None) or an action (its form, CSRF already checked)."""


def guarded(site: Site, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint running ``handler`` after the auth hook, and for a POST after the
    read-only and CSRF checks; a BadParameter is answered 400 with its message."""
    async def endpoint(request: Request) -> Response:
        allowed = await authorize(site.auth, request)
        if isinstance(allowed, Response):
            return allowed
        request.state.user = allowed
        token, new = csrf_token(request)
        request.state.csrf = token
        form: FormData | None = None
        if request.method == "POST":
            if site.read_only:
                logger.warning("dashboard: refused a %s to %s by %s: read-only mode",
                               request.method, request.url.path, allowed,
                               extra={"action": "refuse_dashboard_change", "user": allowed})
                return site.render(request, "error.html", 403,
                                   message="This dashboard is read-only: it changes nothing.")
            form = await request.form()
            if not csrf_valid(request, form.get(CSRF_FIELD)):
                logger.warning("dashboard: refused a POST to %s by %s: CSRF token missing or "
                               "wrong", request.url.path, allowed,
                               extra={"action": "refuse_dashboard_change", "user": allowed})
                return site.render(request, "error.html", 403,
                                   message="The form's CSRF token is missing or does not "
                                           "match this browser's: reload the page and retry.")
        try:
            response = await handler(site, request, form)
        except BadParameter as exc:
            response = site.render(request, "error.html", 400, message=str(exc))
        if new:
            set_csrf_cookie(response, token, site.root(request) or "/")
        return response

    return endpoint
