"""``skivi`` (also ``python -m skivi``): the operators' command line.

The command line only: every statement is a named query (``skivi/sql/queries``), enqueueing
goes through ``skivi.add_job``, migrations through ``skivi.db.migrate``, cron maths through
``skivi.cron``. Commands::

    skivi migrate [--check]                       apply (or list) pending migrations
    skivi add-job TASK PAYLOAD [options]          enqueue one job (PAYLOAD: JSON, - = stdin)
    skivi jobs list [--task --queue --state --limit --payload]
    skivi jobs show ID                            one job: payload, last error, traceback
    skivi jobs retry IDS                          run pending jobs now (attempts kept)
    skivi jobs remove IDS                         delete pending jobs
    skivi jobs fail IDS [--reason TEXT]           move pending jobs to history, exhausted
    skivi jobs reschedule IDS [--run-at --priority --attempts --max-attempts]
    skivi history list [--task --outcome --limit --payload]
    skivi history show ID                         one finished job, as jobs show
    skivi history retry IDS | --task T --reason R exhausted jobs back into the queue
    skivi queues [--scan-limit N]                 depth and oldest runnable job per queue/task
    skivi workers                                 live engines and their liveness locks
    skivi cron list [--crontab PATH]              cron entries, last execution, next tick
    skivi roles --print                           the database roles script (roles.sql)
    skivi worker [flags]                          run a worker engine: python -m skivi.engine

Global options (before or after the command): ``--config PATH`` (default ``./skivi.toml``
if it exists, or ``SKIVI_CONFIG``), ``--database-url``, ``--schema``, with the engine's
precedence: file < SKIVI_* environment < flags. Every command takes ``--json`` (one JSON
document on stdout) and ``--help``, except ``worker``: it is the worker's own command line
(``skivi.cli.worker``), its flags, help and exit codes those of ``python -m skivi.engine``.

Times Python cannot hold (``infinity``, ``-infinity``, years past 9999 or BC), which rows
written from SQL may carry, are printed as PostgreSQL spells them (``"run_at": "infinity"``
in JSON too), and an infinitely old runnable job's age is ``infinity``: a listing never fails
on such a row.

Safety: every argument is checked before the database is touched, so a bad command changes
nothing (``jobs remove 1,abc`` removes no job). Job payloads are never printed unless
``--payload`` is given. Running jobs are never changed: the SQL functions skip them, and each
skipped id is reported with the reason.

Exit codes: 0 done; 1 some of the given jobs were not changed (each is reported), pending
migrations found by ``migrate --check``, or another database error; 2 bad command line or
configuration; 3 the database could not be reached, or the schema is not (or cannot be)
migrated.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.types.datetime import TimestamptzLoader

from skivi.cli import worker
from skivi.cli.options import add_crontab_option, add_instance_options, load
from skivi.client import add_job
from skivi.config import Config
from skivi.cron import (
    CronEntry,
    ensure_unique,
    load_crontab_file,
    next_tick,
    parse_crontabs,
    parse_window,
)
from skivi.db import pool as dbpool
from skivi.db.migrate import migrate, pending_migrations, set_limits
from skivi.db.queries import (
    ChangeRow,
    CronListRow,
    EngineListRow,
    HistoryRetryRow,
    JobHistoryRow,
    JobListRow,
    Queries,
    cron_list,
    engine_list,
    for_schema,
    job_count_by_queue,
    job_history_list,
    job_history_retry_many,
    job_history_retry_matching,
    job_list,
    job_permanently_fail_many,
    job_remove_many,
    job_reschedule_many,
    job_retry_many,
    load_text,
)
from skivi.engine.exits import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNCHANGED,
)
from skivi.errors import ConfigError, JobSpecError, MigrationError, PayloadError
from skivi.job import INT4_MAX, PRIORITY_MAX, PRIORITY_MIN, JobKeyMode, JobSpec
from skivi.system import create_system

__all__ = ["build_parser", "main"]

PROG = "skivi"
WORKER_COMMAND = "worker"
"""``skivi worker ...``: ``python -m skivi.engine ...`` (skivi.cli.worker) under this name."""

APPLICATION_NAME = "skivi-cli"
ROLES_FILE = "roles.sql"
"""The roles script, in the skivi.sql package (``skivi roles --print``)."""
BIGINT_MAX = 2**63 - 1
LIST_LIMIT_DEFAULT = 100
SCAN_LIMIT_DEFAULT = 1_000_000
CELL_MAX = 60
"""Longest error text shown in a table cell (JSON output has it whole)."""
JOB_STATES = ("waiting", "scheduled", "running", "claimed", "failed")
HISTORY_OUTCOMES = ("completed", "exhausted")
HISTORY_REASONS = ("max_attempts", "no_handler", "permanently_failed", "superseded")
"""Why a job was exhausted (job_history.reason, migration 0001)."""
UNDEFINED_OBJECT_SQLSTATES = frozenset({
    "3F000",  # invalid_schema_name
    "42P01",  # undefined_table
    "42883",  # undefined_function
})

EPILOG = """\
global options (--config, --database-url, --schema) may be given before or after the
command; flags win over SKIVI_* environment variables, which win over the configuration
file (default ./skivi.toml if it exists, or SKIVI_CONFIG).

exit codes:
  0  done
  1  some of the given jobs were not changed (each is reported), migrate --check found
     pending migrations, or another database error
  2  bad command line or configuration (nothing was changed)
  3  the database could not be reached, or the schema is not (or cannot be) migrated
"""

IDS_HELP = "job ids, separated by spaces or commas (e.g. 12 13,14)"


class _Refused(Exception):
    """A command refused before touching the database: exit 2 with this message."""


@dataclasses.dataclass(slots=True)
class _Context:
    args: argparse.Namespace
    config: Config

    @property
    def schema(self) -> str:
        return self.config.database.schema_name

    @property
    def queries(self) -> Queries:
        return for_schema(self.schema)

    def connect(self) -> psycopg.Connection[Any]:
        url = self.config.database.connection_string
        if not url:
            raise ConfigError(
                "database.connection_string: no database configured; give --database-url, "
                "set SKIVI_DATABASE_URL or DATABASE_URL, or set it in skivi.toml")
        conn = dbpool.connect(url, application_name=APPLICATION_NAME,
                              connect_timeout=self.config.database.connect_timeout)
        conn.adapters.register_loader("timestamptz", _TimestamptzOrText)
        return conn


class _TimestamptzOrText(Loader):
    """A timestamptz as a datetime, or as PostgreSQL's own text when Python cannot hold it.

    psycopg raises DataError on 'infinity', '-infinity' and years outside 1..9999, which
    would make a whole listing fail on one row written from SQL. Text rather than clamping
    to datetime.max/min: an operator must see that the row says infinity, not year 9999."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._datetime = TimestamptzLoader(oid, context)

    def load(self, data: Buffer) -> dt.datetime | str:
        try:
            return self._datetime.load(data)
        except psycopg.DataError:
            return bytes(data).decode()


Handler = Callable[[_Context], int]


# --- argument types (each raises ArgumentTypeError naming the bad value) ------------------------


def _job_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"[0-9]+", part) or not 1 <= int(part) <= BIGINT_MAX:
            raise argparse.ArgumentTypeError(f"{part!r} is not a job id (a positive integer)")
        ids.append(int(part))
    return ids


def _job_id(text: str) -> int:
    ids = _job_ids(text)
    if len(ids) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one job id (a positive integer)")
    return ids[0]


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {low} to {high}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def _when(text: str) -> dt.datetime:
    """An ISO-8601 time with a time zone, ``now``, or ``+<window>`` (``+10m``, ``+2h``,
    ``+1d12h``) from this machine's clock."""
    value = text.strip()
    now = dt.datetime.now(dt.UTC)
    if value == "now":
        return now
    if value.startswith("+"):
        try:
            return now + dt.timedelta(seconds=parse_window(value[1:]))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a relative time like +30s, +10m, +2h or +1d ({exc})"
            ) from None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time with a time zone (2024-05-01T12:00:00+02:00, "
            "2024-05-01T10:00:00Z), 'now', or a relative time like +10m") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone; add one (Z or +02:00) so the time is unambiguous")
    return when


_positive = _int_in(1, INT4_MAX)


# --- the parser -------------------------------------------------------------------------------


def _global_options() -> argparse.ArgumentParser:
    """The options every parser accepts. SUPPRESS: a parser where an option is not given
    leaves the attribute alone, so it may be given before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    add_instance_options(p.add_argument_group("global options"), default=argparse.SUPPRESS)
    return p


def _output_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of a table")
    return p


def _list_options(p: argparse.ArgumentParser) -> None:
    """The options every job listing takes."""
    p.add_argument("--task", metavar="TASK", help="only jobs of this task")
    p.add_argument("--limit", metavar="N", type=_positive, default=LIST_LIMIT_DEFAULT,
                   help=f"at most N jobs (default: {LIST_LIMIT_DEFAULT})")
    p.add_argument("--payload", action="store_true", help="also print the payloads")


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    output = _output_options()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], formatter_class=formatter, epilog=EPILOG,
        description="Administer a Skivi instance: migrations, jobs, history, queues, "
                    "engines and cron.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group: Any, name: str, handler: Handler, help_text: str,
             description: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, parents=[common, output], help=help_text, formatter_class=formatter,
            description=description or help_text, epilog=EPILOG)
        p.set_defaults(handler=handler, parser=p)
        return p

    def branch(name: str, help_text: str) -> Any:
        p = commands.add_parser(name, parents=[common], help=help_text,
                                description=help_text, formatter_class=formatter)
        return p.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = leaf(commands, "migrate", _cmd_migrate, "apply pending migrations",
             "Apply the pending migrations of the schema (creating it if needed), under the "
             "migration lock. With --check, only report them.")
    p.add_argument("--check", action="store_true",
                   help="report pending migrations without applying them; exit 1 if any")

    p = leaf(commands, "add-job", _cmd_add_job, "enqueue one job",
             "Enqueue one job with skivi.add_job: the payload is validated (size, JSON "
             "limits, the task's schema in [validation.tasks]) before anything is written.")
    p.add_argument("task", metavar="TASK", help="task identifier")
    p.add_argument("payload", metavar="PAYLOAD",
                   help="the payload as JSON text, or - to read it from stdin")
    p.add_argument("--queue", metavar="NAME", help="serial queue name")
    p.add_argument("--run-at", metavar="WHEN", type=_when,
                   help="ISO-8601 time with a time zone, 'now', or relative: +30s, +10m, "
                        "+2h, +1d (default: now)")
    p.add_argument("--max-attempts", metavar="N", type=_positive,
                   help="attempts before the job is exhausted (default: 25)")
    p.add_argument("--priority", metavar="N", type=_int_in(PRIORITY_MIN, PRIORITY_MAX),
                   help="lower runs first (default: 0)")
    p.add_argument("--job-key", metavar="KEY", help="unique key among live jobs")
    p.add_argument("--job-key-mode", choices=[m.value for m in JobKeyMode],
                   help="what the key does when a job with it exists (default: replace)")
    p.add_argument("--flag", metavar="FLAG", action="append", dest="flags",
                   help="a flag (repeatable); engines may refuse jobs carrying some flags")

    jobs = branch("jobs", "list and change live jobs")
    p = leaf(jobs, "list", _cmd_jobs_list, "list live jobs (oldest id first)",
             "List live jobs, oldest id first. States: waiting (runnable now), scheduled "
             "(run_at in the future), running (its engine reported it started, with its "
             "heartbeat), claimed (taken by an engine, not reported started: in its buffer or "
             "started since its last heartbeat), failed (attempted and failed, waiting for its "
             "next attempt).")
    _list_options(p)
    p.add_argument("--queue", metavar="NAME", help="only jobs of this serial queue")
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")

    p = leaf(jobs, "show", _cmd_jobs_show, "one live job, in full",
             "One live job with every field: its payload, its last error (the exception's "
             "message) and that error's traceback.")
    p.add_argument("id", metavar="ID", type=_job_id, help="the job's id")

    p = leaf(jobs, "retry", _cmd_jobs_retry, "run pending jobs now (attempts kept)",
             "Make pending jobs runnable now (run_at = now), keeping their attempts. Running "
             "jobs are not changed; each id not changed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)

    p = leaf(jobs, "remove", _cmd_jobs_remove, "delete pending jobs",
             "Delete pending jobs (nothing is kept in history). Running jobs are refused; "
             "each id not removed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)

    p = leaf(jobs, "fail", _cmd_jobs_fail, "permanently fail pending jobs",
             "Give up on pending jobs: they leave the queue and are recorded in history as "
             "exhausted (reason permanently_failed, attempts = max_attempts). Running jobs "
             "are not changed; each id not changed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)
    p.add_argument("--reason", metavar="TEXT",
                   help="recorded as the jobs' last error (default: 'permanently failed by an "
                        "operator')")

    p = leaf(jobs, "reschedule", _cmd_jobs_reschedule, "change when and how pending jobs run",
             "Change when and how pending jobs run; options not given are left as they are. "
             "Running jobs are not changed; each id not changed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)
    p.add_argument("--run-at", metavar="WHEN", type=_when,
                   help="ISO-8601 time with a time zone, 'now', or relative: +30s, +10m, +2h")
    p.add_argument("--priority", metavar="N", type=_int_in(PRIORITY_MIN, PRIORITY_MAX),
                   help="new priority (lower runs first)")
    p.add_argument("--attempts", metavar="N", type=_int_in(0, INT4_MAX),
                   help="new attempt count")
    p.add_argument("--max-attempts", metavar="N", type=_positive, help="new max attempts")

    history = branch("history", "list finished jobs, retry exhausted ones")
    p = leaf(history, "list", _cmd_history_list, "list finished jobs (newest first)",
             "List finished jobs, most recently finished first: exhausted ones, and completed "
             "ones when worker.history is on.")
    _list_options(p)
    p.add_argument("--outcome", choices=HISTORY_OUTCOMES, help="only this outcome")

    p = leaf(history, "show", _cmd_history_show, "one finished job, in full",
             "One finished job with every field: its payload, outcome and reason, its last "
             "error (the exception's message) and that error's traceback.")
    p.add_argument("id", metavar="ID", type=_job_id, help="the job's id")

    p = leaf(history, "retry", _cmd_history_retry, "put exhausted jobs back in the queue",
             "Put exhausted jobs back in the queue, runnable now, with their attempts reset: "
             "those given by id, or every exhausted job of a task and/or a reason "
             "(--task T --reason no_handler: the jobs of a task that had no handler). "
             "Completed jobs cannot be retried; each id retried, or not, is reported.")
    p.add_argument("ids", metavar="IDS", nargs="*", type=_job_ids, help=IDS_HELP)
    p.add_argument("--task", metavar="TASK",
                   help="every exhausted job of this task (instead of IDS)")
    p.add_argument("--reason", choices=HISTORY_REASONS,
                   help="every exhausted job with this reason (instead of IDS)")

    p = leaf(commands, "queues", _cmd_queues, "queue depth per queue and task",
             "Jobs waiting (runnable now), scheduled, running and claimed (see jobs list), "
             "and the age of the oldest "
             "runnable job, per queue and task. Reads every pending job once (a sequential "
             "scan), up to --scan-limit rows: an operator command, not one to poll.")
    p.add_argument("--scan-limit", metavar="N", type=_positive, default=SCAN_LIMIT_DEFAULT,
                   help=f"read at most N jobs (default: {SCAN_LIMIT_DEFAULT}); past it the "
                        "figures are lower bounds and say so")

    leaf(commands, "workers", _cmd_workers, "live engines",
         "The engines registered in the schema: identity, heartbeat age, capacity, load, and "
         "whether each one's liveness lock is held (an engine whose lock is free is dead: "
         "its jobs are rescued by the others).")

    p = leaf(commands, "roles", _cmd_roles, "print the database roles script (roles.sql)",
             "Print skivi/sql/roles.sql, the grants of the owner, worker and producer roles "
             "(docs/operations.md, Database roles), as installed with this Skivi, to run "
             "with psql as the schema's owner after every migration. Touches no database.")
    p.add_argument("--print", action="store_true", dest="print_script", required=True,
                   help="write the script to stdout")

    cron = branch("cron", "cron entries")
    p = leaf(cron, "list", _cmd_cron_list, "cron entries, last execution and next tick",
             "The configuration's cron entries ([[cron]] in the configuration and the "
             "--crontab file), each with its last execution and its next tick.")
    add_crontab_option(p)

    # No options of its own here: what follows the command is the worker's command line,
    # left unparsed for its own parser (main), so its --help is the worker's.
    commands.add_parser(WORKER_COMMAND, add_help=False,
                        help="run a worker engine: the same command as python -m skivi.engine "
                             f"(see {PROG} {WORKER_COMMAND} --help)")
    return parser


# --- output -------------------------------------------------------------------------------------


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")


def _emit_json(document: Any) -> None:
    _emit(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns; control characters (a newline in a key, say) are shown escaped, so a
    row stays one line."""
    lines = [list(headers), *[[_CONTROL.sub(_escape, cell) for cell in r] for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _when_text(value: dt.datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # a time Python cannot hold (_TimestamptzOrText)
        return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):  # the oldest runnable job has run_at = '-infinity'
        return "infinity"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _seconds(value: float | str | None) -> float | None:
    return math.inf if value == "infinity" else None if value is None else float(value)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _error_text(error: str | None) -> str:
    """The first non-empty line of an error (its message; `jobs show` gives it all), or
    the exception line of a traceback (as engines before migration 0005 stored), shortened."""
    if not error:
        return "-"
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    last = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines \
        else error.strip()
    return last if len(last) <= CELL_MAX else last[:CELL_MAX - 3] + "..."


def _payload_text(payload: Any) -> str:
    return orjson.dumps(payload).decode()


# --- commands -----------------------------------------------------------------------------------


def _cmd_migrate(ctx: _Context) -> int:
    as_json = ctx.args.json
    with ctx.connect() as conn:
        if ctx.args.check:
            pending = pending_migrations(conn, ctx.schema)
            if as_json:
                _emit_json({"schema": ctx.schema, "pending": [m.name for m in pending]})
            elif pending:
                _emit(f"schema {ctx.schema!r}: {len(pending)} pending migration(s):")
                for m in pending:
                    _emit(f"  {m.name}")
            else:
                _emit(f"schema {ctx.schema!r} is up to date")
            return EXIT_UNCHANGED if pending else EXIT_OK
        applied = migrate(conn, ctx.schema,
                          lock_timeout=ctx.config.database.migration_lock_timeout)
        set_limits(conn, ctx.queries, ctx.config.validation.max_payload_bytes)
    if as_json:
        _emit_json({"schema": ctx.schema, "applied": [m.name for m in applied]})
    elif applied:
        for m in applied:
            _emit(f"applied {m.name}")
        _emit(f"schema {ctx.schema!r} is up to date")
    else:
        _emit(f"schema {ctx.schema!r} is up to date; nothing to apply")
    return EXIT_OK


def _read_payload(text: str) -> Any:
    where = "PAYLOAD"
    if text == "-":
        text = sys.stdin.read()
        where = "PAYLOAD (stdin)"
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Refused(f"{where} is not valid JSON: {exc}") from None


def _cmd_add_job(ctx: _Context) -> int:
    args = ctx.args
    payload = _read_payload(args.payload)
    options = {
        key: value for key, value in {
            "queue_name": args.queue, "run_at": args.run_at,
            "max_attempts": args.max_attempts, "priority": args.priority,
            "job_key": args.job_key, "job_key_mode": args.job_key_mode, "flags": args.flags,
        }.items() if value is not None
    }
    # Everything add_job would refuse is refused here, before connecting: the options, and
    # the payload against the task's schema and the size limit.
    system = create_system(ctx.config)
    try:
        JobSpec.coerce({"task": args.task, "payload": payload, **options}).check()
        system.payload_gate.check(args.task, payload)
    except (JobSpecError, PayloadError) as exc:
        raise _Refused(str(exc)) from None
    with ctx.connect() as conn:
        job = add_job(system, args.task, payload, conn=conn, **options)
    # The fields of `jobs list --json`, under the same names; never the payload.
    record = {
        "id": job.id, "outcome": str(job.outcome), "task_identifier": job.task_identifier,
        "queue_name": job.queue_name, "priority": job.priority, "run_at": job.run_at,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "key": job.key,
        "flags": list(job.flags), "created_at": job.created_at,
    }
    if args.json:
        _emit_json({"job": record})
    else:
        _emit(_table(("id", "outcome", "task", "queue", "run_at", "priority", "max_attempts",
                      "key"),
                     [(str(job.id), str(job.outcome), job.task_identifier,
                       _text(job.queue_name), _when_text(job.run_at), str(job.priority),
                       str(job.max_attempts), _text(job.key))]))
    return EXIT_OK


def _cmd_jobs_list(ctx: _Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        rows = job_list.run(conn, ctx.queries, task=args.task, queue=args.queue,
                            state=args.state, limit=args.limit, payload=args.payload)
    if args.json:
        _emit_json({"jobs": [_record(r, args.payload) for r in rows]})
        return EXIT_OK
    if not rows:
        _emit("no jobs")
        return EXIT_OK
    headers = ["id", "task", "queue", "state", "priority", "attempts", "run_at", "engine",
               "key", "last_error"]
    if args.payload:
        headers.append("payload")
    table = []
    for r in rows:
        line = [str(r.id), r.task_identifier, _text(r.queue_name), r.state, str(r.priority),
                f"{r.attempts}/{r.max_attempts}", _when_text(r.run_at), _text(r.locked_by),
                _text(r.key), _error_text(r.last_error)]
        if args.payload:
            line.append(_payload_text(r.payload))
        table.append(line)
    _emit(_table(headers, table))
    return EXIT_OK


def _cmd_history_list(ctx: _Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        rows = job_history_list.run(conn, ctx.queries, task=args.task, outcome=args.outcome,
                                    limit=args.limit, payload=args.payload)
    if args.json:
        _emit_json({"history": [_record(r, args.payload) for r in rows]})
        return EXIT_OK
    if not rows:
        _emit("no finished jobs")
        return EXIT_OK
    headers = ["id", "task", "queue", "outcome", "reason", "attempts", "finished_at",
               "last_error"]
    if args.payload:
        headers.append("payload")
    table = []
    for r in rows:
        line = [str(r.id), r.task_identifier, _text(r.queue_name), r.outcome, _text(r.reason),
                f"{r.attempts}/{r.max_attempts}", _when_text(r.finished_at),
                _error_text(r.last_error)]
        if args.payload:
            line.append(_payload_text(r.payload))
        table.append(line)
    _emit(_table(headers, table))
    return EXIT_OK


def _cmd_jobs_show(ctx: _Context) -> int:
    with ctx.connect() as conn:
        rows = job_list.run(conn, ctx.queries, id=ctx.args.id, limit=1, payload=True)
    return _show(ctx, rows, "job", f"no live job {ctx.args.id} (see skivi history show)")


def _cmd_history_show(ctx: _Context) -> int:
    with ctx.connect() as conn:
        rows = job_history_list.run(conn, ctx.queries, id=ctx.args.id, limit=1, payload=True)
    return _show(ctx, rows, "job", f"no job {ctx.args.id} in history (see skivi jobs show)")


def _record(row: JobListRow | JobHistoryRow, payload: bool) -> dict[str, Any]:
    """A listed job as its JSON object: the columns by name, the flags always a list, the
    payload only when asked for (the statement reads it only then)."""
    record = row._asdict()
    record["flags"] = list(row.flags or [])
    if not payload:
        del record["payload"]
    return record


def _show(ctx: _Context, rows: Sequence[JobListRow | JobHistoryRow], key: str,
          missing: str) -> int:
    """One job, every field: ``name: value`` lines, then the payload, the last error and
    its traceback in full (they may span lines)."""
    if not rows:
        return _fail(EXIT_ERROR, missing)
    row = _record(rows[0], payload=True)
    if ctx.args.json:
        _emit_json({key: row})
        return EXIT_OK
    long = ("payload", "last_error", "last_error_traceback")
    lines = []
    for name, value in row.items():
        if name in long:
            continue
        shown = (_when_text(value) if isinstance(value, dt.datetime)
                 else ",".join(value) or "-" if isinstance(value, list) else _text(value))
        lines.append(f"{name}: {_CONTROL.sub(_escape, shown)}")
    lines.append(f"payload: {_payload_text(row['payload'])}")
    lines.append("last_error:" + (f"\n{_indent(row['last_error'])}" if row["last_error"]
                                  else " -"))
    traceback = row["last_error_traceback"]
    lines.append("last_error_traceback:" + (f"\n{_indent(traceback)}" if traceback else " -"))
    _emit("\n".join(lines))
    return EXIT_OK


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").splitlines())


def _ids(ctx: _Context) -> list[int]:
    """The IDS arguments, flattened, each once, in the order given."""
    ids = list(dict.fromkeys(i for group in ctx.args.ids for i in group))
    if not ids:
        raise _Refused("IDS: no job id given")
    return ids


_REASONS = {
    "completed": "completed jobs cannot be retried (only exhausted ones)",
    "not_found": "not found",
    # Locked by an engine: running, or claimed and about to run (the statements cannot tell).
    "running": "claimed",
}


def _report(ctx: _Context, rows: Sequence[ChangeRow] | Sequence[HistoryRetryRow], done: str,
            none: str | None = None) -> int:
    """Print what one of the statements that answer each id's result did; ``none`` is
    what to say when a selection by filter matched no job."""
    if not rows and none is not None and not ctx.args.json:
        _emit(none)
        return EXIT_OK
    changed = [r.id for r in rows if r.result == "changed"]
    unchanged: list[dict[str, Any]] = []
    lines: list[tuple[str, str]] = []
    for r in rows:
        if r.result == "changed":
            lines.append((str(r.id), done))
            continue
        item: dict[str, Any] = {"id": r.id, "reason": r.result}
        why = _REASONS.get(r.result, r.result)
        if isinstance(r, ChangeRow) and r.result == "running":
            item["engine"] = r.locked_by
            if r.locked_by is not None:
                why += f" by engine {r.locked_by}"
        unchanged.append(item)
        lines.append((str(r.id), f"not changed: {why}"))
    if ctx.args.json:
        _emit_json({"changed": changed, "unchanged": unchanged})
    else:
        _emit(_table(("id", "result"), lines))
    if unchanged:
        print(f"{PROG}: {len(unchanged)} of {len(rows)} job(s) not changed",
              file=sys.stderr)
        return EXIT_UNCHANGED
    return EXIT_OK


def _cmd_jobs_retry(ctx: _Context) -> int:
    ids = _ids(ctx)
    with ctx.connect() as conn:
        rows = job_retry_many.run(conn, ctx.queries, ids=ids)
    return _report(ctx, rows, "retried (runnable now)")


def _cmd_jobs_remove(ctx: _Context) -> int:
    ids = _ids(ctx)
    with ctx.connect() as conn:
        rows = job_remove_many.run(conn, ctx.queries, ids=ids)
    return _report(ctx, rows, "removed")


def _cmd_jobs_fail(ctx: _Context) -> int:
    ids = _ids(ctx)
    with ctx.connect() as conn:
        rows = job_permanently_fail_many.run(conn, ctx.queries, ids=ids,
                                             reason=ctx.args.reason)
    return _report(ctx, rows, "failed permanently")


def _cmd_jobs_reschedule(ctx: _Context) -> int:
    args = ctx.args
    ids = _ids(ctx)
    if all(v is None for v in (args.run_at, args.priority, args.attempts, args.max_attempts)):
        raise _Refused("nothing to change: give at least one of --run-at, --priority, "
                       "--attempts, --max-attempts")
    with ctx.connect() as conn:
        rows = job_reschedule_many.run(conn, ctx.queries, ids=ids, run_at=args.run_at,
                                       priority=args.priority, attempts=args.attempts,
                                       max_attempts=args.max_attempts)
    return _report(ctx, rows, "rescheduled")


def _cmd_history_retry(ctx: _Context) -> int:
    args = ctx.args
    done = "back in the queue (runnable now)"
    given = any(args.ids)
    if args.task is None and args.reason is None:
        if not given:
            raise _Refused("nothing to retry: give job IDS, or --task and/or --reason to "
                           "retry every exhausted job that matches")
        ids = _ids(ctx)
        with ctx.connect() as conn:
            retried = job_history_retry_many.run(conn, ctx.queries, ids=ids)
        return _report(ctx, retried, done)
    if given:
        raise _Refused("give either job IDS or --task/--reason, not both")
    if args.task is not None and not args.task:
        raise _Refused("--task: an empty task identifier matches no job")
    with ctx.connect() as conn:
        retried = job_history_retry_matching.run(conn, ctx.queries, task=args.task,
                                                 reason=args.reason)
    return _report(ctx, retried, done, none="no exhausted jobs match")


def _cmd_queues(ctx: _Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        counts = job_count_by_queue.run(conn, ctx.queries, scan_limit=args.scan_limit)
    truncated = any(c.truncated for c in counts)
    rows: list[dict[str, Any]] = []
    for c in counts:
        r = c._asdict()
        del r["truncated"]  # one flag for the whole scan, not per row
        if c.oldest_runnable_age is not None and math.isinf(c.oldest_runnable_age):
            # orjson would write null, which means "nothing runnable".
            r["oldest_runnable_age"] = "infinity"
        rows.append(r)
    if args.json:
        _emit_json({"queues": rows, "truncated": truncated})
    elif not rows:
        _emit("no jobs")
    else:
        _emit(_table(("queue", "task", "waiting", "scheduled", "running", "claimed",
                      "oldest_runnable"),
                     [(_text(r["queue_name"]), r["task_identifier"], str(r["waiting"]),
                       str(r["scheduled"]), str(r["running"]), str(r["claimed"]),
                       _age_text(_seconds(r["oldest_runnable_age"]))) for r in rows]))
    if truncated:
        print(f"{PROG}: the scan stopped after {args.scan_limit} jobs: the figures are lower "
              "bounds (raise --scan-limit to read more)", file=sys.stderr)
    return EXIT_OK


def _engine_status(engine: EngineListRow) -> str:
    if not engine.lock_held:
        return "dead (lock free; awaiting rescue)"
    if engine.heartbeat_age > engine.lease_timeout:
        return "stale (heartbeat older than its lease)"
    return "stopping" if engine.stopping else "alive"


def _cmd_workers(ctx: _Context) -> int:
    with ctx.connect() as conn:
        engines = engine_list.run(conn, ctx.queries, schema=ctx.schema)
    rows = [{**e._asdict(), "status": _engine_status(e)} for e in engines]
    if ctx.args.json:
        _emit_json({"workers": rows})
    elif not rows:
        _emit("no engines registered")
    else:
        _emit(_table(
            ("id", "hostname", "pid", "version", "started_at", "heartbeat", "processes",
             "concurrency", "in_flight", "stopping", "lock", "status"),
            [(str(r["id"]), r["hostname"], str(r["pid"]), r["version"],
              _when_text(r["started_at"]), _age_text(r["heartbeat_age"]) + " ago",
              str(r["processes"]), str(r["concurrency"]), str(r["in_flight"]),
              "yes" if r["stopping"] else "no", "held" if r["lock_held"] else "free",
              r["status"]) for r in rows]))
    return EXIT_OK


def _cmd_roles(ctx: _Context) -> int:
    # From the installed package (hatch ships every file under skivi/), so it matches the
    # migrations of this version whatever the working directory.
    sys.stdout.write(load_text("", ROLES_FILE))
    return EXIT_OK


def _cron_entries(ctx: _Context) -> list[CronEntry]:
    entries = parse_crontabs(ctx.config.cron)
    if ctx.args.crontab:
        entries = [*entries, *load_crontab_file(ctx.args.crontab)]
    ensure_unique(entries)
    return entries


def _cmd_cron_list(ctx: _Context) -> int:
    entries = _cron_entries(ctx)
    known: dict[str, CronListRow] = {}
    if entries:
        with ctx.connect() as conn:
            rows = cron_list.run(conn, ctx.queries,
                                 identifiers=[e.identifier for e in entries])
        known = {r.identifier: r for r in rows}
    now = dt.datetime.now(dt.UTC)
    listed: list[dict[str, Any]] = []
    for e in entries:
        row = known.get(e.identifier)
        listed.append({
            "identifier": e.identifier, "schedule": e.schedule, "task": e.task,
            "timezone": e.timezone, "backfill": e.backfill,
            "job_key": e.job_key, "job_key_mode": e.job_key_mode,
            "known_since": None if row is None else row.known_since,
            "last_execution": None if row is None else row.last_execution,
            "next_tick": next_tick(e, now),
        })
    if ctx.args.json:
        _emit_json({"cron": listed})
    elif not listed:
        _emit("no cron entries configured")
    else:
        _emit(_table(("identifier", "schedule", "timezone", "task", "job_key",
                      "last_execution", "next_tick"),
                     [(c["identifier"], c["schedule"], c["timezone"], c["task"],
                       f"{c['job_key']} ({c['job_key_mode']})" if c["job_key"] else "-",
                       _when_text(c["last_execution"]), _when_text(c["next_tick"]))
                      for c in listed]))
    return EXIT_OK


# --- main ---------------------------------------------------------------------------------------


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        # parse_args is parse_known_args refusing what is left over; left over after
        # `worker` is the worker's command line.
        args, rest = parser.parse_known_args(argv)
        worker_args = _worker_args(args, rest) if args.command == WORKER_COMMAND else None
        if rest and worker_args is None:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # --help (0) and usage errors (2), printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if worker_args is not None:
        return worker.start(worker_args)
    handler: Handler = args.handler
    command: argparse.ArgumentParser = args.parser
    try:
        config = load(args)
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    try:
        return handler(_Context(args, config))
    except _Refused as exc:  # as argparse reports a usage error
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except MigrationError as exc:
        return _fail(EXIT_DATABASE, str(exc))
    except psycopg.OperationalError as exc:
        return _fail(EXIT_DATABASE, f"cannot reach the database: {_first_line(exc)}")
    except psycopg.Error as exc:
        if exc.sqlstate in UNDEFINED_OBJECT_SQLSTATES:
            return _fail(EXIT_DATABASE, (
                f"schema {config.database.schema_name!r} is missing Skivi's tables or "
                f"functions in this database; run `{PROG} migrate` ({_first_line(exc)})"))
        return _fail(EXIT_ERROR, f"database error: {_first_line(exc)}")


def _worker_args(args: argparse.Namespace, rest: list[str]) -> argparse.Namespace:
    """``skivi [global options] worker ARGS``, parsed by the worker's own parser: the global
    options given before the command, then ARGS (so those given after it win, as for every
    command)."""
    given = [f"--{name.replace('_', '-')}={getattr(args, name)}"
             for name in ("config", "database_url", "schema") if hasattr(args, name)]
    return worker.build_parser(f"{PROG} {WORKER_COMMAND}").parse_args([*given, *rest])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
