"""The Django tests' processes: the example project's ``manage.py`` run with the tests'
settings (tests/support/django_settings.py) on a database, to its end (``manage``,
``work``: a ``skivi_worker --once``) or left running (``spawn``); and ``fetch``, a query on
a connection of its own. Nothing here imports Django: it runs in other processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["EXAMPLE", "SETTINGS", "fetch", "manage", "manage_env", "spawn", "work"]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "django"
SETTINGS = "tests.support.django_settings"


def fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of ``query`` on ``url`` (autocommit, a connection of its own)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, args or None).fetchall()


def manage_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``manage.py`` process of the tests on ``url``."""
    return {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": SETTINGS,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLE)]), **(extra or {})}


def manage(url: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` of the example project, with the tests' settings, to its
    end; output captured."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE,
                          env=manage_env(url, env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def work(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """A ``skivi_worker --once`` run to its end (it must exit 0); its log."""
    done = manage(url, "skivi_worker", "--once", "--processes", "1", *args, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stderr


def spawn(url: str, args: Sequence[str], log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A ``manage.py`` process left running (stop it with SIGTERM), its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "manage.py", *args], cwd=EXAMPLE,
                                env=manage_env(url, env), stdout=out, stderr=out)
