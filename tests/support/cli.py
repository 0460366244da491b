"""The admin command line in-process, for the CLI tests: ``skivi ARGS --database-url URL``
(``cli``), and its ``--json`` document (``cli_json``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from skivi.cli.admin import main

__all__ = ["cli", "cli_json"]


def cli(database: str, *args: str) -> int:
    """``skivi ARGS --database-url DATABASE`` in-process (global option after the command)."""
    return main([*args, "--database-url", database])


def cli_json(database: str, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert cli(database, *args, "--json") == 0
    return orjson.loads(capsys.readouterr().out)
