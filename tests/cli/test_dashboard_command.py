"""``skivi dashboard``: the command around skivi.dashboard (its pages and actions are
tests/dashboard): its dependencies stay out of the plain command line, a missing one is named
with the install command, and an unmigrated schema is refused before serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.dashboard import DashboardProc

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_MODULES = ("jinja2", "multipart", "starlette", "uvicorn")


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SKIVI_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plain_command_line_loads_no_dashboard_dependency_when_imported() -> None:
    done = _python("import sys; from skivi.cli import build_parser; build_parser(); "
                   "import skivi.cli.admin; "
                   f"print(sorted(m for m in {DASHBOARD_MODULES!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_dependency_is_named_with_the_extra_when_served(database: str) -> None:
    # A module set to None in sys.modules cannot be imported (find_spec answers None).
    done = _python("import sys; sys.modules['uvicorn'] = None; "
                   "from skivi.cli import main; sys.exit(main(sys.argv[1:]))",
                   "dashboard", "--database-url", database)
    assert done.returncode == 2, done.stderr
    assert "missing here: uvicorn" in done.stderr
    assert "pip install 'skivi[dashboard]'" in done.stderr


def test_unmigrated_schema_is_refused_with_exit_3_when_served(database: str) -> None:
    done = _python("import sys; from skivi.cli import main; sys.exit(main(sys.argv[1:]))",
                   "dashboard", "--database-url", database, "--schema", "nothing_here",
                   "--port", "1")
    assert done.returncode == 3, done.stderr
    assert "schema nothing_here has pending migrations" in done.stderr


def test_serves_until_sigterm_when_started(database: str) -> None:
    proc = DashboardProc(database)
    try:
        status, page = proc.get("/")
        assert status == 200 and "<h1>Overview</h1>" in page
        output = proc.output()
    finally:
        proc.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (its exit status
    # is the signal's, as for any program ended by one).
    assert proc.proc.returncode in (0, -signal.SIGTERM)
    assert "dashboard of schema skivi at http://127.0.0.1:" in output
    assert "Traceback" not in output
