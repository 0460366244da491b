"""The schema's commands: ``skivi migrate [--check]`` (through ``skivi.db.migrate``) and
``skivi roles --print`` (the grants to run after every migration).
"""

from __future__ import annotations

import sys

from skivi.cli import output
from skivi.cli.context import Context
from skivi.db.migrate import migrate, pending_migrations, set_limits
from skivi.db.queries import load_text
from skivi.engine.exits import EXIT_OK, EXIT_UNCHANGED

__all__ = ["ROLES_FILE", "cmd_migrate", "cmd_roles"]

ROLES_FILE = "roles.sql"
"""The roles script, in the skivi.sql package (``skivi roles --print``)."""


def cmd_migrate(ctx: Context) -> int:
    as_json = ctx.args.json
    with ctx.connect() as conn:
        if ctx.args.check:
            pending = pending_migrations(conn, ctx.schema)
            if as_json:
                output.emit_json({"schema": ctx.schema, "pending": [m.name for m in pending]})
            elif pending:
                output.emit(f"schema {ctx.schema!r}: {len(pending)} pending migration(s):")
                for m in pending:
                    output.emit(f"  {m.name}")
            else:
                output.emit(f"schema {ctx.schema!r} is up to date")
            return EXIT_UNCHANGED if pending else EXIT_OK
        applied = migrate(conn, ctx.schema,
                          lock_timeout=ctx.config.database.migration_lock_timeout)
        set_limits(conn, ctx.queries, ctx.config.validation.max_payload_bytes)
    if as_json:
        output.emit_json({"schema": ctx.schema, "applied": [m.name for m in applied]})
    elif applied:
        for m in applied:
            output.emit(f"applied {m.name}")
        output.emit(f"schema {ctx.schema!r} is up to date")
    else:
        output.emit(f"schema {ctx.schema!r} is up to date; nothing to apply")
    return EXIT_OK


def cmd_roles(ctx: Context) -> int:
    # From the installed package (hatch ships every file under skivi/), so it matches the
    # migrations of this version whatever the working directory.
    sys.stdout.write(load_text("", ROLES_FILE))
    return EXIT_OK
