"""The dashboard tests' harness: a database with jobs in every state (``seed``), the real
``skivi dashboard`` process serving it (``DashboardProc``), and a headless Chromium driven by
Selenium with Debian's binaries (``browser``; nothing downloaded: the driver's path is given,
so Selenium Manager never runs).

Where the browser is missing, ``browser_missing`` says why; the browser tests skip with that
reason, except with ``SKIVI_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.support.wait import wait_for

__all__ = ["CHROMEDRIVER", "CHROMIUM", "REQUIRE_BROWSER", "DashboardProc", "Seeded",
           "browser", "browser_missing", "free_port", "seed"]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SKIVI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SKIVI_CHROMEDRIVER", "/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("SKIVI_REQUIRE_BROWSER") == "1"
XSS_TASK = "<script>window.__xss=1</script>"
XSS_PAYLOAD = {"html": "<img src=x onerror=\"window.__xss=2\">", "quote": "\"'&"}
XSS_ERROR = "<b onmouseover=\"window.__xss=3\">boom</b>"
CRONTAB = """
[[cron]]
identifier = "nightly-report"
schedule = "0 2 * * *"
task = "report"
backfill = "2h"
"""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (f"{path} not found: apt-get install chromium chromium-driver "
                    f"(Debian's {package}; ./run-tests installs them when run as root)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in skivi's test extra)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Seeded:
    """The ids of the jobs ``seed`` made, by what they are."""

    waiting: list[int]
    resize: list[int]
    scheduled: int
    running: int
    failed: int
    exhausted: int
    exhausted_other: int
    completed: int
    xss: int
    engine: int


def _add(conn: psycopg.Connection[Any], task: str, payload: Any, **columns: Any) -> int:
    names = ["task_identifier", "payload", *columns]
    # A claimed job lives in job_running (migration 0015).
    table = "job_running" if columns.get("locked_by") is not None else "job"
    row = conn.execute(
        f"insert into skivi.{table} ({', '.join(names)}) values "
        f"({', '.join(['%s'] * len(names))}) returning id",
        [task, Jsonb(payload), *columns.values()]).fetchone()
    assert row is not None
    return int(row[0])


def _finished(conn: psycopg.Connection[Any], job_id: int, task: str, outcome: str,
              error: str | None, traceback: str | None) -> None:
    conn.execute(
        "insert into skivi.job_history (id, task_identifier, payload, priority, run_at,"
        " attempts, max_attempts, last_error, created_at, finished_at, outcome, reason,"
        " last_error_traceback) values (%s, %s, %s, 0, now() - interval '10 minutes',"
        " %s, 3, %s, now() - interval '10 minutes', now() - interval '1 minute', %s, %s, %s)",
        [job_id, task, Jsonb({"order": job_id}), 3 if outcome == "exhausted" else 1, error,
         outcome, "max_attempts" if outcome == "exhausted" else None, traceback])


def seed(url: str) -> Seeded:
    """Jobs in every state in the ``skivi`` schema of ``url``: waiting (send_email and
    resize), scheduled, running (claimed by a fake engine row that reported it started),
    failed and waiting for a retry, exhausted and completed in history, a cron entry's row,
    and one job whose task, payload and error are HTML."""
    with psycopg.connect(url, autocommit=True) as conn:
        waiting = [_add(conn, "send_email", {"to": f"user{i}@example.com"}) for i in range(3)]
        resize = [_add(conn, "resize", {"image": f"img{i}.png"}) for i in range(2)]
        scheduled = _add(conn, "send_email", {"to": "later@example.com"},
                         run_at="2100-01-01T00:00:00Z")
        row = conn.execute(
            "insert into skivi.engine (hostname, pid, version, lease_timeout, processes,"
            " concurrency, in_flight, heartbeat_at) values ('test-host', 4242, 'test', 60,"
            " 2, 8, 1, now() - interval '1 hour') returning id").fetchone()
        assert row is not None
        engine = int(row[0])
        running = _add(conn, "transcode", {"video": "a.mp4"}, locked_by=engine,
                       locked_at="now", lease=1)
        conn.execute("update skivi.engine set running = array[%s]::bigint[] where id = %s",
                     [running, engine])
        failed = _add(conn, "charge_card", {"amount": 12}, attempts=1, max_attempts=5,
                      last_error="card declined", run_at="2100-01-01T00:00:00Z")
        conn.execute("insert into skivi.job_traceback (id, traceback) values (%s, %s)",
                     [failed, "Traceback (most recent call last):\n  ...\nCardError: card "
                      "declined"])
        xss = _add(conn, XSS_TASK, XSS_PAYLOAD, attempts=1, last_error=XSS_ERROR,
                   run_at="2100-01-01T00:00:00Z")
        row = conn.execute("select nextval('skivi.job_id_seq'), nextval('skivi.job_id_seq'),"
                           " nextval('skivi.job_id_seq')").fetchone()
        assert row is not None
        exhausted, exhausted_other, completed = (int(v) for v in row)
        _finished(conn, exhausted, "sync_crm", "exhausted", "CRM timed out",
                  "Traceback (most recent call last):\nTimeoutError: CRM timed out")
        _finished(conn, exhausted_other, "sync_crm", "exhausted", "CRM timed out", None)
        _finished(conn, completed, "send_email", "completed", None, None)
        conn.execute("insert into skivi.cron (identifier, known_since, last_execution)"
                     " values ('nightly-report', now() - interval '2 days',"
                     " date_trunc('day', now()) + interval '2 hours' - interval '1 day')")
    return Seeded(waiting=waiting, resize=resize, scheduled=scheduled, running=running,
                  failed=failed, exhausted=exhausted, exhausted_other=exhausted_other,
                  completed=completed, xss=xss, engine=engine)


class DashboardProc:
    """``skivi dashboard`` on a free local port, as a subprocess; ``stop()`` ends it."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="skivi-dashboard-")
        crontab = Path(self._dir.name) / "crontab.toml"
        crontab.write_text(CRONTAB, encoding="utf-8")
        self.log = Path(self._dir.name) / "dashboard.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SKIVI_") and k != "DATABASE_URL"}
        command = [sys.executable, "-m", "skivi", "--database-url", url, "--schema", "skivi",
                   "dashboard", "--port", str(self.port), "--crontab", str(crontab)]
        if read_only:
            command.append("--read-only")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=30, what=f"skivi dashboard on port {self.port}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"skivi dashboard exited {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(self.base + "/static/live.js", timeout=2):
                return True
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, jar: CookieJar | None = None) -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        try:
            with opener.open(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, fields: dict[str, str], jar: CookieJar | None = None
             ) -> tuple[int, str]:
        from urllib.parse import urlencode

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        request = urllib.request.Request(self.base + path, data=urlencode(fields).encode(),
                                         method="POST")
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (Debian's, through its chromedriver), quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions",
                "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="skivi-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
