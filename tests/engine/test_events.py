"""Event handlers registered on the engine's own process (``python -m skivi.engine`` style:
no application in front) run in the parent, and one that raises never stops the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import skivi
from tests.engine.conftest import REPO, TASKS_DIR
from tests.helpers import connect

SCRIPT = textwrap.dedent("""
    import json, sys
    import skivi
    from skivi import monitoring
    from skivi.engine import run

    system = skivi.create_system({"database": {"connection_string": sys.argv[1]},
                                  "worker": {"task_directory": sys.argv[2], "processes": 2}})
    seen = []

    def boom(event):
        seen.append(event["type"])
        raise RuntimeError("a broken event handler")

    monitoring.on(system.emitter, "all", boom)
    code = run(system, once=True)
    print(json.dumps({"code": code, "seen": seen, "errors": system.emitter.handler_errors}))
""")


def test_raising_handler_never_stops_the_engine_when_registered_in_its_process(
        database: str) -> None:
    system = skivi.create_system({"database": {"connection_string": database}})
    try:
        skivi.add_jobs(system, [{"task": "noop"} for _ in range(200)])
    finally:
        system.stop()
    out = subprocess.run([sys.executable, "-c", SCRIPT, database, str(TASKS_DIR)],
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert report["seen"].count("job/completed") == 200
    assert report["seen"][0] == "pool/start" and report["seen"][-1] == "pool/stop"
    assert report["errors"] == len(report["seen"])
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.job").fetchone() == (0,)
