"""The command line: ``skivi`` (also ``python -m skivi``), the operators' command, and the
worker, ``skivi worker`` (also ``python -m skivi.engine``). The cli imports the engine; the
engine never imports the cli (tests/unit/test_imports.py).

Modules, one job each:

- ``admin``: the ``skivi`` command: its parser (every command's arguments and help) and its
  dispatch to the commands below, mapping each failure to its exit code; ``worker`` hands
  what follows it to ``skivi.cli.worker``.
- ``schema``: ``skivi migrate`` and ``skivi roles``.
- ``jobs``: ``skivi add-job`` and ``skivi jobs ...`` (live jobs); how one job, and what a
  change did to each id, are printed.
- ``history``: ``skivi history ...`` (finished jobs), printed as ``jobs`` prints.
- ``status``: ``skivi queues``, ``skivi workers`` and ``skivi cron list``, read-only.
- ``dashboard``: ``skivi dashboard``, the web dashboard (skivi.dashboard) served with
  uvicorn; its dependencies (the ``dashboard`` extra) are imported only when it runs.
- ``context``: what every ``skivi`` command is handed (arguments, configuration, named
  queries, a connection) and ``Refused``, its way of refusing a command line.
- ``output``: how the ``skivi`` commands print: JSON or aligned tables, and the cell texts
  (times, ages, errors, payloads) they share.
- ``worker``: the worker's command line: flags -> configuration -> migrations ->
  ``skivi.engine.run``.
- ``options``: what both share: the SKIVI_* environment lookups, the options naming the
  instance (``--config``, ``--database-url``, ``--schema``) and ``--crontab``, finding and
  loading the configuration.

The exit codes of both are ``skivi.engine.exits``. The ``skivi`` script and ``python -m
skivi`` call ``main``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


# Deferred, so that ``python -m skivi.engine`` (which imports skivi.cli.worker, and so this
# package) does not load the admin command's modules into every engine parent.
def main(argv: Sequence[str] | None = None) -> int:
    from skivi.cli.admin import main as admin_main

    return admin_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from skivi.cli.admin import build_parser as admin_parser

    return admin_parser()
