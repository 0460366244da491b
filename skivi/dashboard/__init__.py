"""The web dashboard: see and act on every job of an instance, served by ``skivi dashboard``
or mounted in an application (``create_app``; docs/dashboard.md). Needs the ``dashboard``
extra (``pip install skivi[dashboard]``: Starlette, Jinja2, python-multipart, uvicorn).

Server-rendered pages (Jinja2, autoescaped), usable without JavaScript: plain links and
forms. One small hand-written script (static/live.js, no build step, nothing fetched from
elsewhere) refreshes the live parts of a page every few seconds, and pauses while the tab is
hidden or the user is selecting text, ticking jobs or typing.

Modules, one job each:

- ``app``: ``create_app``: the routes, the static files.
- ``site``: the ``Site`` every handler is handed, rendering, and the guard every request
  passes (auth hook, read-only mode, CSRF).
- ``security``: the auth hook's contract, the CSRF token.
- ``params``: the request parameters (filters, cursors, forms), checked.
- ``pages``: the pages (GET). ``actions``: the actions (POST).
- ``store``: what they read and change, through the named queries only
  (``skivi/sql/queries/dashboard_*.sql`` and the statements the ``skivi`` command uses).
"""

from skivi.dashboard.app import create_app
from skivi.dashboard.security import Auth, AuthAnswer

__all__ = ["Auth", "AuthAnswer", "create_app"]
