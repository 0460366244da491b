"""The dashboard's page times on a large table: ``python bench/dashboard.py --jobs 1000000
--database-url URL`` (see bench/README.md).

It fills a scratch schema (--schema, default skivi_bench_dashboard: created fresh, dropped
at the end unless --keep) in a few bulk statements (bench/sql/dashboard: --jobs live jobs in
every state, ten tasks and ten serial queues, --history finished jobs), vacuums and analyzes
it as autovacuum would, starts the real ``skivi dashboard`` on a free local port, and times
each page over HTTP: --requests requests each, one after the other, after one warm-up
request; it prints the median and the slowest of each, in milliseconds. Exit 1 when a page
answers anything but 200.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = Path(__file__).resolve().parent / "sql" / "dashboard"

PAGES = [
    ("overview", "/"),
    ("jobs", "/jobs"),
    ("jobs, oldest first", "/jobs?sort=oldest"),
    ("jobs, page 2 (cursor)", "/jobs?cursor={middle}"),
    ("jobs ?task= (common)", "/jobs?task=task_3"),
    ("jobs ?task= (1 in 1000)", "/jobs?task=task_9"),
    ("jobs ?queue=", "/jobs?queue=q_4"),
    ("jobs ?state=failed", "/jobs?state=failed"),
    ("jobs ?state=scheduled", "/jobs?state=scheduled"),
    ("jobs ?state=claimed", "/jobs?state=claimed"),
    ("jobs ?key=", "/jobs?key=key_{key}"),
    ("jobs ?q= (payload text)", "/jobs?q=user_4321"),
    ("job page", "/jobs/{middle}"),
    ("history", "/history"),
    ("history ?outcome=exhausted", "/history?outcome=exhausted"),
    ("history ?task=", "/history?task=task_2"),
    ("queues", "/queues"),
    ("engines", "/engines"),
    ("cron", "/cron"),
]
"""(name, path) of every page timed; {middle}: a job id halfway through the table."""
CONFIRM_PAGES = [
    ("bulk confirmation ?task= (1 in 1000)", "/jobs/bulk?action=remove&task=task_9"),
]
"""Timed too, but not a page an operator polls: it counts every match (up to 10,001)."""


def statement(name: str, schema: str) -> sql.Composed:
    text = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
    return sql.SQL(text).format(schema=sql.Identifier(schema))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, (time.perf_counter() - start) * 1000


def fill(url: str, schema: str, jobs: int, history: int) -> None:
    skivi = [sys.executable, "-m", "skivi", "--database-url", url, "--schema", schema]
    with psycopg.connect(url, autocommit=True, application_name="skivi-bench") as conn:
        conn.execute(statement("schema_drop", schema))
    subprocess.run([*skivi, "migrate"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    with psycopg.connect(url, autocommit=True, application_name="skivi-bench") as conn:
        t = time.perf_counter()
        conn.execute(statement("job_fill", schema), {"count": jobs})
        conn.execute(statement("job_lock_some", schema), {"count": 40, "engine": 1})
        conn.execute(statement("job_history_fill", schema),
                     {"count": history, "offset": jobs})
        print(f"filled {jobs:,} jobs and {history:,} finished jobs in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        conn.execute(statement("job_vacuum", schema))
        print(f"vacuum analyze: {time.perf_counter() - t:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("SKIVI_DATABASE_URL"),
                   required="SKIVI_DATABASE_URL" not in os.environ)
    p.add_argument("--schema", default="skivi_bench_dashboard")
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--history", type=int, default=200_000)
    p.add_argument("--requests", type=int, default=7, help="timed requests per page")
    p.add_argument("--keep", action="store_true", help="keep the schema (and skip the fill "
                   "next time with --no-fill)")
    p.add_argument("--no-fill", action="store_true", help="use the schema as it is")
    a = p.parse_args(argv)
    if not a.no_fill:
        fill(a.database_url, a.schema, a.jobs, a.history)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "skivi", "--database-url", a.database_url, "--schema", a.schema,
         "dashboard", "--port", str(port), "--log-level", "WARNING"], cwd=ROOT)
    failed = False
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch(base + "/static/live.js")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the dashboard did not start") from None
                time.sleep(0.2)
        values: dict[str, Any] = {"middle": a.jobs // 2, "key": 1 + 1000 * (a.jobs // 2000)}
        print(f"\n{a.jobs:,} jobs, {a.history:,} finished; {a.requests} requests per page "
              "after one warm-up (ms)")
        print(f"{'page':40} {'median':>8} {'max':>8}")
        for name, path in PAGES + CONFIRM_PAGES:
            url = base + path.format(**values)
            fetch(url)
            times = []
            for _ in range(a.requests):
                status, ms = fetch(url)
                if status != 200:
                    print(f"{name}: HTTP {status} for {url}", file=sys.stderr)
                    failed = True
                times.append(ms)
            print(f"{name:40} {statistics.median(times):8.1f} {max(times):8.1f}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not a.keep:
            with psycopg.connect(a.database_url, autocommit=True) as conn:
                conn.execute(statement("schema_drop", a.schema))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
