"""The benchmark end to end: one short ``bench/run.py drain`` against the test server, as a
user runs it (its pure parts are tests/unit/test_bench_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.db import is_local
from tests.support.engines import REPO, child_env

BENCH = REPO / "bench" / "run.py"


def test_drain_with_two_engines_verifies_and_reports_cpu_per_job_when_run(
        database: str, tmp_path: Path) -> None:
    out = tmp_path / "drain.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "drain", "--jobs", "200", "--engines", "2", "--no-floor",
         "--json", str(out), "--database-url", database, "--schema", "skivi_bench_test"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 engines at once" in done.stdout
    assert "PG us/job" in done.stdout and "worker us/job (parent + children)" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["verified"] and doc["settings"]["engines"] == 2
    drain = doc["results"]["runs"][0]["drain"]
    assert drain["engine_count"] == 2 and len(drain["engines"]) == 2
    assert [e["exit_code"] for e in drain["engines"]] == [0, 0]
    assert sum(e["stats"]["completed"] for e in drain["engines"]) == 200
    assert drain["jobs_per_s"] > 0
    for key in ("parent_cpu_us_per_job", "children_cpu_us_per_job"):
        assert drain[key] > 0, key
    assert drain["worker_cpu_us_per_job"] == (
        drain["parent_cpu_us_per_job"] + drain["children_cpu_us_per_job"])
    for engine in drain["engines"]:
        assert engine["cpu"]["window_s"] > 0
        # Gated: both engines were up before GO, and their windows opened after it.
        assert engine["started_at"] < drain["go_at"] <= engine["cpu"]["go"]["t"]
    assert drain["seconds"] == max(e["last_completion_at"] for e in drain["engines"]) \
        - drain["go_at"]
    if is_local(database):
        assert drain["pg_cpu_source"] == "proc"
        assert drain["pg_cpu_us_per_job"] > 0
        assert drain["pg_cpu_us_per_job_engine_backends"] > 0
