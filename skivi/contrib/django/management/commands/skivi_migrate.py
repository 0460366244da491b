"""``python manage.py skivi_migrate [--check]``: apply Skivi's migrations to the project's
schema (settings.SKIVI's ``database.schema_name``, in the database of its alias).

Skivi's schema is not a Django migration (its migrations are Skivi's, numbered, each in its
own transaction under an advisory lock; see skivi.db.migrate). ``--check`` lists the
pending ones and exits 1 if there are any, applying nothing. Run it in a deploy beside
``manage.py migrate``, or from a Django migration (docs/django.md).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from skivi.contrib.django.project import build_system
from skivi.engine.exits import EXIT_UNCHANGED
from skivi.errors import ConfigError, SkiviError


class Command(BaseCommand):
    help = "Apply Skivi's migrations to this project's Skivi schema (--check: only list them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true",
                            help="list pending migrations and exit 1 if there are any; apply "
                                 "nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            system = build_system()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        try:
            if options["check"]:
                pending = system.pending_migrations()
                if not pending:
                    self.stdout.write(f"schema {system.schema!r} is up to date")
                    return
                self.stdout.write(f"schema {system.schema!r}: {len(pending)} pending "
                                  "migration(s):")
                for m in pending:
                    self.stdout.write(f"  {m.name}")
                sys.exit(EXIT_UNCHANGED)
            applied = system.migrate()
        except SkiviError as exc:
            raise CommandError(str(exc)) from None
        finally:
            system.close()
        if options["verbosity"] < 1:
            return
        for m in applied:
            self.stdout.write(f"applied {m.name}")
        self.stdout.write(f"schema {system.schema!r} is up to date"
                          + ("" if applied else "; nothing to apply"))
