"""Who may use the dashboard, and the checks every change passes: the ``auth`` hook, the
CSRF token and read-only mode.

The auth hook is a callable given the request (``starlette.requests.Request``), sync or
async, run before every page and action. It answers:

    a str          allowed, as this user (the name each action is logged with)
    True           allowed, as "anonymous"
    False or None  refused: 403
    a Response     sent as it is instead of the page (a 401 asking for basic auth, a
                   redirect to a login page)

CSRF: a double-submit token. The first response sets a random token in a cookie
(``skivi_csrf``: HttpOnly, SameSite=Strict, path the dashboard's root); every form carries
the same token in a hidden field, and a POST whose field does not equal its cookie is
refused (403) before anything else runs. Another site can make a browser send the cookie
(SameSite aside) but can neither read it nor write the field.

Every page also says (HTTP headers, skivi.dashboard.site) that only the dashboard's own
scripts and styles run, that it may not be framed, and that it is not to be cached.

Read-only mode: the pages show no action, and every POST is refused (403) here, server-side,
whatever the form.
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ANONYMOUS", "CSRF_COOKIE", "CSRF_FIELD", "Auth", "AuthAnswer", "authorize",
           "csrf_token", "csrf_valid", "set_csrf_cookie"]

CSRF_COOKIE = "skivi_csrf"
CSRF_FIELD = "csrf"
ANONYMOUS = "anonymous"

AuthAnswer = str | bool | None | Response
Auth = Callable[[Request], AuthAnswer | Awaitable[AuthAnswer]]
"""The ``auth`` hook of ``create_app`` (see the module docstring)."""


async def authorize(auth: Auth | None, request: Request) -> str | Response:
    """The user the hook allows, or the response refusing the request."""
    if auth is None:
        return ANONYMOUS
    answer = auth(request)
    if inspect.isawaitable(answer):
        answer = await answer
    if isinstance(answer, Response):
        return answer
    if isinstance(answer, str) and answer:
        return answer
    if answer is True:
        return ANONYMOUS
    return Response("Forbidden: the dashboard's auth hook refused this request.\n",
                    status_code=403, media_type="text/plain")


def csrf_token(request: Request) -> tuple[str, bool]:
    """This client's token, and whether it is new (then the response must set it)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) >= 32:
        return token, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, token: str, path: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, path=path, httponly=True, samesite="strict",
                        secure=False)


def csrf_valid(request: Request, submitted: object) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return (isinstance(submitted, str) and len(cookie) >= 32
            and hmac.compare_digest(cookie.encode(), submitted.encode()))
