"""``skivi worker`` and ``python -m skivi.engine`` (one command, two names): run a worker
engine. The command line only; the engine itself is ``skivi.engine.run``. Exit codes are
listed in ``skivi.engine``'s docstring and in --help; their values in ``skivi.engine.exits``.

Precedence: defaults < skivi.toml (--config) < SKIVI_* environment < command-line flags
(``skivi.cli.options``, shared with the admin command).

Being the program, it is the one place that configures logging handlers (``LineHandler``);
the library only logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from skivi.cli.options import add_crontab_option, add_instance_options, env, env_flag, load
from skivi.db.retry import RetryBackoff, is_retryable, unusable_url
from skivi.engine import run
from skivi.engine.exits import EXIT_CONFIG, EXIT_DATABASE
from skivi.errors import ConfigError, MigrationError, RegistryError, SchemaNotMigrated
from skivi.system import System, create_system

__all__ = ["PROG", "add_engine_options", "build_parser", "configure_logging",
           "engine_overrides", "main", "run_system", "start"]

T = TypeVar("T")

PROG = "python -m skivi.engine"

STARTUP_RETRY_SECONDS = 30.0
"""How long an engine starting keeps trying to reach the database before it gives up with
exit code 3: fleets start with (or during a restart or failover of) their database."""
STARTUP_RETRY_DELAY_INITIAL = 0.25
STARTUP_RETRY_DELAY_MAX = 4.0

EPILOG = """\
Every flag can also be set in the environment (in brackets); flags win over the
environment, which wins over the configuration file.

exit codes:
  0  stopped cleanly (SIGTERM/SIGINT, or --once with nothing left to run)
  1  stopped with errors (a shutdown step failed; some results could not be written)
  2  bad command line or configuration, or a task file that does not load
  3  the database could not be reached (for 30 s), refused the login, or could not be
     migrated at start (the migration lock waited for past
     database.migration_lock_timeout included)

signals: SIGTERM or SIGINT drain gracefully (stop claiming, finish running jobs up to
--shutdown-timeout, write every result); a second signal stops at once, and the jobs still
running are put back to run again.
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The worker's parser; ``prog`` is the name it was called by (``skivi worker``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run a Skivi worker engine: claim jobs from PostgreSQL and run them in "
                    "child processes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_instance_options(p)
    p.add_argument("--tasks", metavar="DIR",
                   help="directory of task files, each defining a TASKS dict [SKIVI_TASKS]")
    add_engine_options(p)
    return p


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The engine's own flags (all but which instance and which tasks), on ``p``: the
    worker's, and ``manage.py skivi_worker``'s (skivi.contrib.django)."""
    p.add_argument("--processes", metavar="N", type=int,
                   help="child processes (default: the CPUs this process may use, container "
                        "limits included) [SKIVI_PROCESSES]")
    p.add_argument("--concurrency", metavar="N", type=int,
                   help="jobs at once per child process (default: 16) [SKIVI_CONCURRENCY]")
    add_crontab_option(p)
    p.add_argument("--queues", metavar="Q1,Q2",
                   help="only run jobs of these named queues [SKIVI_QUEUES]")
    p.add_argument("--once", action="store_true", default=env_flag("SKIVI_ONCE"),
                   help="run until no job is runnable, then exit [SKIVI_ONCE]")
    p.add_argument("--no-migrate", action="store_true", default=env_flag("SKIVI_NO_MIGRATE"),
                   help="do not apply pending migrations at start [SKIVI_NO_MIGRATE]")
    p.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                   help="how long a graceful stop waits for running jobs (default: 30) "
                        "[SKIVI_SHUTDOWN_TIMEOUT]")
    p.add_argument("--metrics-port", metavar="PORT", type=int,
                   help="serve Prometheus metrics on this port; 0 disables (default: 0) "
                        "[SKIVI_METRICS_PORT]")
    p.add_argument("--metrics-host", metavar="HOST",
                   help="address the metrics server binds (default: 127.0.0.1) "
                        "[SKIVI_METRICS_HOST]")
    p.add_argument("--log-level", metavar="LEVEL", default=env("SKIVI_LOG_LEVEL") or "INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   type=str.upper, help="DEBUG, INFO, WARNING or ERROR (default: INFO) "
                                        "[SKIVI_LOG_LEVEL]")


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    return start(build_parser(prog).parse_args(argv))


def start(args: argparse.Namespace) -> int:
    """Run the engine the parsed command line ``args`` describes, until it stops; returns
    its exit code."""
    configure_logging(args.log_level)
    try:
        overrides = {"worker.task_directory": args.tasks, **engine_overrides(args)}
        config = load(args, overrides)
        system = create_system(config)
        if config.worker.task_directory is None:
            raise ConfigError("worker.task_directory: no tasks to run; give --tasks DIR, "
                              "SKIVI_TASKS, or worker.task_directory in the configuration")
        _check_url(system.database_url)
        if not len(system.registry()):
            # An engine without tasks would exhaust every job it claims as "no handler".
            raise ConfigError(f"worker.task_directory: no tasks found in "
                              f"{config.worker.task_directory!r} (no file defines TASKS)")
        if args.crontab:
            system.add_crontab_file(args.crontab)
    except (ConfigError, RegistryError) as exc:
        print(f"skivi.engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run_system(system, args)


def configure_logging(level: str) -> None:
    """One line per record on stderr (``LineHandler``), at ``level``."""
    handler = LineHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys the flags of ``add_engine_options`` set (None: not given).
    Raises ConfigError for a bad --queues."""
    return {
        "worker.processes": args.processes,
        "worker.concurrency": args.concurrency,
        "worker.queues": _queues(args.queues, os.environ.get("SKIVI_QUEUES")),
        "worker.shutdown_timeout": args.shutdown_timeout,
        "metrics.port": args.metrics_port,
        "metrics.host": args.metrics_host,
    }


def run_system(system: System, args: argparse.Namespace,
               on_child_start: Callable[[], None] | None = None) -> int:
    """Migrate ``system``'s schema (or, with --no-migrate, check it is migrated), then run
    its engine until it stops; the exit code. ``on_child_start`` runs in every worker child
    (``skivi.engine.run``)."""
    log = logging.getLogger("skivi.engine")
    try:
        if args.no_migrate:
            # Someone else migrates (an owner role, at deploy time): still refuse to run
            # against a schema this version does not match.
            _retrying(lambda: system.check_migrated("--no-migrate was given"), log)
        else:
            _retrying(system.migrate, log)
    except psycopg.Error as exc:
        if unusable_url(exc):
            print(f"skivi.engine: database.connection_string: {str(exc).strip()}",
                  file=sys.stderr)
            return EXIT_CONFIG
        log.error("cannot migrate schema %s: %s", system.schema, str(exc).strip(),
                  extra={"action": "migrate_failed"})
        return EXIT_DATABASE
    except SchemaNotMigrated as exc:
        log.error("%s", exc, extra={"action": "migrations_pending"})
        return EXIT_DATABASE
    except MigrationError as exc:
        log.error("cannot migrate schema %s: %s", system.schema, exc,
                  extra={"action": "migrate_failed"})
        return EXIT_DATABASE
    return run(system.instance, system.emitter, once=args.once,
               on_child_start=on_child_start)


class LineHandler(logging.Handler):
    """Writes each record to stderr with one write(2), so the lines of the parent and of
    every child (which inherit this handler and stderr) never interleave within a line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            view = memoryview(data)
            while view:
                view = view[os.write(2, view):]
        except Exception:  # noqa: BLE001 - logging must never take a job or engine down
            self.handleError(record)


def _queues(flag: str | None, env: str | None) -> list[str] | None:
    """--queues (else SKIVI_QUEUES) as a list. Given but naming no queue, or with an empty
    name in it, is an error: it would claim nothing (',') or everything ('')."""
    source, text = ("--queues", flag) if flag is not None else ("SKIVI_QUEUES", env)
    if text is None:
        return None
    names = [q.strip() for q in text.split(",")]
    if not text.strip() or any(not q for q in names):
        raise ConfigError(f"{source}: {text!r} must be a comma-separated list of queue names "
                          "without empty ones (leave it out to run jobs of every queue)")
    return names


def _check_url(url: str) -> None:
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"database.connection_string: {str(exc).strip()}") from None


def _retrying(step: Callable[[], T], log: logging.Logger) -> T:
    """``step()``, retried while the database cannot be reached (``is_retryable``: the
    connection failed or was lost, the server is starting or shutting down, too many
    connections), 0.25 s at first, doubling up to 4 s, for up to STARTUP_RETRY_SECONDS.
    Anything else (a refused login, a failed migration, a schema too new) is not retried. A
    migration cut off by a lost connection rolled back: running it again is safe."""
    deadline = time.monotonic() + STARTUP_RETRY_SECONDS
    backoff = RetryBackoff(STARTUP_RETRY_DELAY_INITIAL, STARTUP_RETRY_DELAY_MAX)
    while True:
        try:
            return step()
        except psycopg.Error as exc:
            wait = backoff.next()
            if time.monotonic() + wait > deadline or not is_retryable(exc):
                raise
            log.warning("cannot reach the database (%s); retrying in %.1fs",
                        str(exc).strip(), wait, extra={"action": "start_retry"})
            time.sleep(wait)
