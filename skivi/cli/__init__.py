"""The command line: ``skivi`` (also ``python -m skivi``), the operators' command.

Modules, one job each:

- ``admin``: the ``skivi`` command: its parser and every command of it.

The ``skivi`` script and ``python -m skivi`` call ``main``.
"""

from __future__ import annotations

from skivi.cli.admin import build_parser, main

__all__ = ["build_parser", "main"]
