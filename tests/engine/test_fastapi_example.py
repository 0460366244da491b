"""The FastAPI example (examples/fastapi, docs/fastapi.md), run as its guide says: the app
under a real uvicorn on a free port, the engine beside it on the example's task directory,
real HTTP requests, and the database read to check the note and what became of its job."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.db import sqlalchemy_url
from tests.support.engines import REPO, EngineGroup, child_env, engine_argv, log_of
from tests.support.rows import fetch
from tests.support.wait import wait_for

EXAMPLE = REPO / "examples" / "fastapi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def app_url(database: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = sqlalchemy_url(database).replace("postgresql+psycopg://", "postgresql://", 1)
    log = tmp_path / "uvicorn.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(EXAMPLE),
             "--host", "127.0.0.1", "--port", str(port)],
            env=child_env({"DATABASE_URL": url}), cwd=EXAMPLE, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"uvicorn exited {server.returncode}: {log.read_text()}")
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=60, what="the example app to answer /health")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def job_ids(database: str) -> set[int]:
    rows = fetch(database, "select id from skivi.job_live union all select id from skivi.job_result"
                           " union all select id from skivi.job_history")
    return {int(r[0]) for r in rows}


def test_note_and_its_job_are_written_together_and_the_job_runs_when_posted(
        app_url: str, database: str, tmp_path: Path) -> None:
    url = sqlalchemy_url(database).replace("postgresql+psycopg://", "postgresql://", 1)
    with EngineGroup(tmp_path) as group:
        engine = group.spawn(
            engine_argv(url, EXAMPLE / "tasks", processes=1, concurrency=4),
            child_env({"SKIVI_DATABASE_URL": url}))
        created = httpx.post(f"{app_url}/notes", json={"text": "hello from the web"},
                             timeout=30)
        assert created.status_code == 200, created.text
        note_id, job_id = created.json()["id"], created.json()["job_id"]
        assert fetch(database, "select text from note where id = %s", note_id) == [
            ("hello from the web",)]

        def finished() -> dict[str, Any] | None:
            status = httpx.get(f"{app_url}/jobs/{job_id}", timeout=10).json()
            return status if status["state"] in ("completed", "exhausted") else None

        status = wait_for(finished, timeout=60, what=f"job {job_id} to finish")
        assert status == {"state": "completed", "value": {"note_id": note_id, "words": 4},
                          "error": None}, log_of(engine)

        # The rollback path: the note is refused after its job was enqueued in the same
        # transaction; neither is left.
        refused = httpx.post(f"{app_url}/notes", json={"text": "a forbidden note"},
                             timeout=30)
        assert refused.status_code == 400, refused.text
        assert fetch(database, "select count(*) from note where text like '%forbidden%'"
                     ) == [(0,)]
        assert job_ids(database) == {job_id}
        assert engine.stop(timeout=30) == 0, log_of(engine)
