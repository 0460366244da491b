"""The command line: ``skivi`` (also ``python -m skivi``), the operators' command, and the
worker, ``skivi worker`` (also ``python -m skivi.engine``). The cli imports the engine; the
engine never imports the cli (tests/unit/test_imports.py).

Modules, one job each:

- ``admin``: the ``skivi`` command: its parser and every command of it; ``worker`` hands
  what follows it to ``skivi.cli.worker``.
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
# package) does not load the admin command's ~1,000 lines into every engine parent.
def main(argv: Sequence[str] | None = None) -> int:
    from skivi.cli.admin import main as admin_main

    return admin_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from skivi.cli.admin import build_parser as admin_parser

    return admin_parser()
