"""``skivi dashboard``: serve the web dashboard (skivi.dashboard) of an instance with uvicorn.

The dashboard's dependencies are the ``dashboard`` extra; they are imported only when this
command runs, so the rest of the command line never loads them, and without them the command
says which package is missing and how to install it (exit 2).
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from skivi.cli.context import Context, Refused
from skivi.engine.exits import EXIT_OK
from skivi.system import create_system

__all__ = ["HOST_DEFAULT", "PORT_DEFAULT", "REQUIRED_MODULES", "cmd_dashboard",
           "missing_modules"]

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 8089
REQUIRED_MODULES = {"starlette": "starlette", "jinja2": "jinja2",
                    "multipart": "python-multipart", "uvicorn": "uvicorn"}
"""Module -> the package of the ``dashboard`` extra that provides it."""

logger = logging.getLogger(__name__)


def missing_modules() -> list[str]:
    """The packages of the ``dashboard`` extra that are not installed."""
    return [package for module, package in REQUIRED_MODULES.items()
            if importlib.util.find_spec(module) is None]


def cmd_dashboard(ctx: Context) -> int:
    args = ctx.args
    missing = missing_modules()
    if missing:
        raise Refused(f"the dashboard needs the dashboard extra, missing here: "
                      f"{', '.join(missing)}; install it with: pip install 'skivi[dashboard]'")
    import uvicorn

    from skivi.dashboard import create_app

    system = create_system(ctx.config)
    if args.crontab:
        system.add_crontab_file(args.crontab)
    # Refuse an unmigrated schema now, not as an error on every page.
    system.check_migrated("the dashboard reads it")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(system, read_only=args.read_only)
    mode = " (read-only)" if args.read_only else ""
    logger.info("dashboard of schema %s at http://%s:%d/%s", system.schema, args.host,
                args.port, mode, extra={"action": "start_dashboard"})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="on")
    return EXIT_OK
