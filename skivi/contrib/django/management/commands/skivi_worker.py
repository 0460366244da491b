"""``python manage.py skivi_worker [the engine's flags]``: the project's engine.

The flags are ``skivi worker``'s (``--processes``, ``--concurrency``, ``--queues``,
``--once``, ``--no-migrate``, ``--shutdown-timeout``, ``--crontab``, ``--metrics-port``,
``--metrics-host``, ``--log-level``), over settings.SKIVI; the database, the schema and the
tasks come from the project (``skivi.contrib.django.project``). Django is set up in this
process (manage.py did it) and so in every child forked from it (``skivi.contrib.django.
jobs``: the child's hook, and each handler's wrapper). Exit codes are the engine's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from skivi.cli.worker import (
    EPILOG,
    add_engine_options,
    configure_logging,
    engine_overrides,
    run_system,
)
from skivi.contrib.django.jobs import child_started
from skivi.contrib.django.project import build_system, install
from skivi.engine.exits import EXIT_CONFIG
from skivi.errors import ConfigError, RegistryError


class Command(BaseCommand):
    help = ("Run a Skivi worker engine for this project: claim jobs from PostgreSQL and run "
            "them in child processes, Django set up in each.")

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.epilog = EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        add_engine_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        ns = argparse.Namespace(**options)
        configure_logging(ns.log_level)
        try:
            system = install(build_system(engine_overrides(ns)))
            if not len(system.registry()):
                raise ConfigError("no tasks found: none in the installed apps' tasks modules "
                                  "nor in settings.SKIVI[\"tasks\"]")
            if ns.crontab:
                system.add_crontab_file(ns.crontab)
        except (ConfigError, RegistryError) as exc:
            self.stderr.write(f"skivi_worker: {exc}")
            sys.exit(EXIT_CONFIG)
        # The engine and its children never use this process's Django connections; closed
        # now, the children inherit none that is open (see skivi.contrib.django.jobs).
        connections.close_all()
        code = run_system(system, ns, on_child_start=child_started)
        system.close()
        if code:
            sys.exit(code)
