"""How the ``skivi`` command prints: one JSON document or aligned text on stdout, messages
signed with the program's name on stderr, and the cell texts every listing shares (times,
ages, errors, payloads), so the same value reads the same in every command.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

__all__ = ["CELL_MAX", "PROG", "age_text", "emit", "emit_json", "error_text", "escaped",
           "indent", "payload_text", "table", "text", "warn", "when_text"]

PROG = "skivi"
CELL_MAX = 60
"""Longest error text shown in a table cell (JSON output has it whole)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")


def emit_json(document: Any) -> None:
    emit(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def warn(message: str) -> None:
    """``skivi: message`` on stderr (what went wrong, or what a result does not say)."""
    print(f"{PROG}: {message}", file=sys.stderr)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns; control characters (a newline in a key, say) are shown escaped, so a
    row stays one line."""
    lines = [list(headers), *[[escaped(cell) for cell in r] for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def escaped(text: str) -> str:
    """``text`` with its control characters as Python escapes (``\\n``, ``\\x01``)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def when_text(value: dt.datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # a time Python cannot hold (skivi.cli.context)
        return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):  # the oldest runnable job has run_at = '-infinity'
        return "infinity"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def error_text(error: str | None) -> str:
    """The first non-empty line of an error (its message; `jobs show` gives it all), or
    the exception line of a traceback (as engines before migration 0005 stored), shortened."""
    if not error:
        return "-"
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    last = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines \
        else error.strip()
    return last if len(last) <= CELL_MAX else last[:CELL_MAX - 3] + "..."


def payload_text(payload: Any) -> str:
    return orjson.dumps(payload).decode()


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").splitlines())
