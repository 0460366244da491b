"""Skivi's pytest plugin: registered through its entry point, inert unless enabled, and
its fixtures working once enabled (pytest runs in subprocesses, on a project of their own
in a temp dir, against the real PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.engines import REPO

CONFTEST = '''
import os
import pytest
import skivi

TASKS = skivi.Tasks()


@TASKS.task
def send_email(to: str) -> str:
    return "sent " + to


@pytest.fixture
def skivi_system():
    system = skivi.create_system(
        {"database": {"connection_string": os.environ["PLUGIN_TEST_DATABASE"]}}, TASKS)
    yield system
    system.stop()
'''

TESTS = '''
from conftest import send_email


def test_jobs(skivi_jobs):
    send_email.defer(to="a@b.c")
    assert skivi_jobs.enqueued("send_email", to="a@b.c")


def test_drain(skivi_system, skivi_drain):
    send_email.defer(to="d@b.c")
    assert [r.value for r in skivi_drain()] == ["sent d@b.c"]


def test_immediate(skivi_immediate):
    send_email.defer(to="i@b.c")
    assert skivi_immediate[0].value == "sent i@b.c"
'''


def _pytest(project: Path, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLUGIN_TEST_DATABASE": database}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _project(tmp_path: Path, ini: str = "", conftest: str = CONFTEST) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    (tmp_path / "conftest.py").write_text(textwrap.dedent(conftest))
    (tmp_path / "test_app.py").write_text(textwrap.dedent(TESTS))
    return tmp_path


def test_plugin_is_loaded_but_inert_when_not_enabled(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    assert manager.has_plugin("skivi")  # this very run: through the entry point
    assert manager.get_plugin("skivi-fixtures") is None
    with pytest.raises(pytest.FixtureLookupError):
        request.getfixturevalue("skivi_jobs")


def test_fixtures_are_missing_when_a_project_does_not_enable_them(
        tmp_path: Path, database: str) -> None:
    done = _pytest(_project(tmp_path), database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fixture 'skivi_jobs' not found" in done.stdout
    assert "3 errors" in done.stdout


def test_fixtures_work_when_enabled_on_the_command_line(tmp_path: Path,
                                                        database: str) -> None:
    done = _pytest(_project(tmp_path), database, "--skivi-fixtures")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_fixtures_work_when_enabled_in_the_ini_file(tmp_path: Path, database: str) -> None:
    done = _pytest(_project(tmp_path, ini="skivi_fixtures = true\n"), database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_fixtures_say_what_is_missing_when_the_project_has_no_system(
        tmp_path: Path, database: str) -> None:
    project = _project(tmp_path, conftest=CONFTEST.split("@pytest.fixture")[0])
    done = _pytest(project, database, "--skivi-fixtures", "-k", "jobs")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "need a skivi_system fixture returning your skivi.System" in done.stdout


def test_plugin_is_gone_when_disabled_with_no(tmp_path: Path, database: str) -> None:
    done = _pytest(_project(tmp_path), database, "-p", "no:skivi", "--skivi-fixtures")
    assert done.returncode == 4, done.stdout + done.stderr  # usage error: unknown option
    assert "unrecognized arguments: --skivi-fixtures" in done.stderr
