"""``skivi worker`` is ``python -m skivi.engine`` by another name (skivi.cli.worker): the
same help, the same engine, and the global options of ``skivi`` given before the command
reach it. Each runs the real program in a subprocess, from the repo root, without SKIVI_*
leftovers, against a real PostgreSQL where it needs one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.engines import TASKS_DIR, Ledger, enqueue
from tests.support.rows import fetch, live_jobs

REPO = Path(__file__).resolve().parents[2]
SKIVI_WORKER = ("-m", "skivi", "worker")
ENGINE = ("-m", "skivi.engine")


def run(*argv: str, ledger: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SKIVI_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO)
    if ledger is not None:
        env["SKIVI_TEST_LEDGER"] = str(ledger)
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def split_help(text: str) -> tuple[list[str], str]:
    """The usage paragraph's words after ``usage: PROG`` (argparse wraps them to the name's
    length), and the rest of the help as it is."""
    usage, rest = text.split("\n\n", 1)
    words = usage.split()
    assert words[0] == "usage:", usage
    first_option = next(i for i, w in enumerate(words) if w.startswith("["))
    return words[first_option:], rest


def test_worker_help_is_the_engines_when_called_as_skivi_worker() -> None:
    worker, engine = run(*SKIVI_WORKER, "--help"), run(*ENGINE, "--help")
    assert worker.returncode == engine.returncode == 0, worker.stderr + engine.stderr
    assert worker.stdout.startswith("usage: skivi worker [-h] "), worker.stdout
    assert engine.stdout.startswith("usage: python -m skivi.engine [-h] "), engine.stdout
    assert split_help(worker.stdout) == split_help(engine.stdout)
    # and the admin command's own help lists it
    listed = run("-m", "skivi", "--help")
    assert re.search(r"^    worker +run a worker engine", listed.stdout, re.MULTILINE), \
        listed.stdout


def test_worker_refuses_a_bad_flag_as_the_engine_does_when_given_one() -> None:
    worker, engine = run(*SKIVI_WORKER, "--bogus"), run(*ENGINE, "--bogus")
    assert worker.returncode == engine.returncode == 2
    assert worker.stderr.endswith("skivi worker: error: unrecognized arguments: --bogus\n"), \
        worker.stderr
    assert engine.stderr.endswith(
        "python -m skivi.engine: error: unrecognized arguments: --bogus\n"), engine.stderr


def test_global_options_reach_the_worker_when_given_before_the_command() -> None:
    # A malformed URL is refused (exit 2, naming it) before any database is tried, so what
    # the worker was given shows in its message.
    before = run("-m", "skivi", "--database-url", "before=1", "worker", "--tasks",
                 str(TASKS_DIR))
    assert before.returncode == 2, before.stderr
    assert 'database.connection_string: invalid connection option "before"' in before.stderr
    # given on both sides, the one after the command wins, as for every command
    both = run("-m", "skivi", "--database-url", "before=1", "worker", "--tasks",
               str(TASKS_DIR), "--database-url", "after=1")
    assert both.returncode == 2, both.stderr
    assert 'invalid connection option "after"' in both.stderr, both.stderr


def test_skivi_worker_once_drains_the_queue_as_python_m_skivi_engine_does(
        database: str, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    flags = ("--tasks", str(TASKS_DIR), "--processes", "2", "--concurrency", "4", "--once")
    for command in (("-m", "skivi", "--database-url", database, "worker"),
                    (*ENGINE, "--database-url", database)):
        ids = enqueue(database, [{"task": "noop", "payload": {"i": i}} for i in range(50)])
        done = run(*command, *flags, ledger=ledger.path)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        runs = ledger.runs_per_job()
        assert all(runs[i] == 1 for i in ids), f"{command}: {runs}"
        assert live_jobs(database) == 0, command
        assert fetch(database, "select count(*) from skivi.engine")[0][0] == 0, command
    assert len(ledger.runs_per_job()) == 100
