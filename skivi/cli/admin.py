"""``skivi`` (also ``python -m skivi``): the operators' command line.

The command line only: every statement is a named query (``skivi/sql/queries``), enqueueing
goes through ``skivi.add_job``, migrations through ``skivi.db.migrate``, cron maths through
``skivi.cron``. This module is its shape: the parser (every command's arguments and help)
and ``main`` (dispatch, and the exit code of each failure). The commands are those of
``skivi.cli.schema``, ``jobs``, ``history`` and ``status``, each handed a
``skivi.cli.context.Context``, printing through ``skivi.cli.output``. Commands::

    skivi migrate [--check]                       apply (or list) pending migrations
    skivi add-job TASK PAYLOAD [options]          enqueue one job (PAYLOAD: JSON, - = stdin)
    skivi jobs list [--task --queue --state --limit --payload]
    skivi jobs show ID                            one job: payload, last error, traceback
    skivi jobs retry IDS                          run pending jobs now (attempts kept)
    skivi jobs remove IDS                         delete pending jobs
    skivi jobs fail IDS [--reason TEXT]           move pending jobs to history, exhausted
    skivi jobs cancel IDS [--reason --by]         cancel jobs, waiting or running
    skivi jobs reschedule IDS [--run-at --priority --attempts --max-attempts]
    skivi history list [--task --outcome --limit --payload]
    skivi history show ID                         one finished job, as jobs show
    skivi history retry IDS | --task T --reason R exhausted jobs back into the queue
    skivi queues [--scan-limit N]                 depth and oldest runnable job per queue/task
    skivi queues pause | resume NAME              pause a queue on every engine (@parallel:
                                                  the jobs without a queue)
    skivi tasks pause | resume ID                 pause a task on every engine
    skivi limits [remove NAME]                    declared concurrency and rate limits
    skivi workers                                 live engines and their liveness locks
    skivi cron list [--crontab PATH]              cron entries, last execution, next tick
    skivi dashboard [--host --port --read-only]   serve the web dashboard (skivi[dashboard])
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
import datetime as dt
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from skivi.cli import controls, dashboard, history, jobs, schema, status, worker
from skivi.cli.context import Context, Handler, Refused
from skivi.cli.options import add_crontab_option, add_instance_options, load
from skivi.cli.output import PROG, warn
from skivi.cron import parse_window
from skivi.engine.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_ERROR
from skivi.errors import ConfigError, MigrationError
from skivi.job import INT4_MAX, PRIORITY_MAX, PRIORITY_MIN, JobKeyMode

__all__ = ["build_parser", "main"]

WORKER_COMMAND = "worker"
"""``skivi worker ...``: ``python -m skivi.engine ...`` (skivi.cli.worker) under this name."""

BIGINT_MAX = 2**63 - 1
LIST_LIMIT_DEFAULT = 100
SCAN_LIMIT_DEFAULT = 1_000_000
JOB_STATES = ("waiting", "scheduled", "running", "claimed", "failed")
HISTORY_OUTCOMES = ("cancelled", "completed", "exhausted")
PARALLEL_HELP = ("@parallel is the queue of the jobs without a queue name (the parallel "
                 "queue).")
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

    p = leaf(commands, "migrate", schema.cmd_migrate, "apply pending migrations",
             "Apply the pending migrations of the schema (creating it if needed), under the "
             "migration lock. With --check, only report them.")
    p.add_argument("--check", action="store_true",
                   help="report pending migrations without applying them; exit 1 if any")

    p = leaf(commands, "add-job", jobs.cmd_add_job, "enqueue one job",
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

    jobs_actions = branch("jobs", "list and change live jobs")
    p = leaf(jobs_actions, "list", jobs.cmd_list, "list live jobs (oldest id first)",
             "List live jobs, oldest id first. States: waiting (runnable now), scheduled "
             "(run_at in the future), running (its engine reported it started, with its "
             "heartbeat), claimed (taken by an engine, not reported started: in its buffer or "
             "started since its last heartbeat), failed (attempted and failed, waiting for its "
             "next attempt).")
    _list_options(p)
    p.add_argument("--queue", metavar="NAME", help="only jobs of this serial queue")
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")

    p = leaf(jobs_actions, "show", jobs.cmd_show, "one live job, in full",
             "One live job with every field: its payload, its last error (the exception's "
             "message) and that error's traceback.")
    p.add_argument("id", metavar="ID", type=_job_id, help="the job's id")

    p = leaf(jobs_actions, "retry", jobs.cmd_retry, "run pending jobs now (attempts kept)",
             "Make pending jobs runnable now (run_at = now), keeping their attempts. Running "
             "jobs are not changed; each id not changed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)

    p = leaf(jobs_actions, "remove", jobs.cmd_remove, "delete pending jobs",
             "Delete pending jobs (nothing is kept in history). Running jobs are refused; "
             "each id not removed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)

    p = leaf(jobs_actions, "fail", jobs.cmd_fail, "permanently fail pending jobs",
             "Give up on pending jobs: they leave the queue and are recorded in history as "
             "exhausted (reason permanently_failed, attempts = max_attempts). Running jobs "
             "are not changed; each id not changed is reported.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)
    p.add_argument("--reason", metavar="TEXT",
                   help="recorded as the jobs' last error (default: 'permanently failed by an "
                        "operator')")

    p = leaf(jobs_actions, "cancel", jobs.cmd_cancel, "cancel jobs, waiting or running",
             "Cancel jobs. A waiting job leaves the queue at once and is recorded in history "
             "as cancelled. A running (or claimed) job is stopped where it runs: its engine "
             "is told at once (and by its next heartbeat without LISTEN); an async handler "
             "gets asyncio.CancelledError, a sync one sees ctx.cancelled, and one still "
             "running worker.cancel_grace seconds later is killed. It is never retried and "
             "ends in history as cancelled (or completed, if its handler had returned "
             "before its engine learned of the request). Each id's result is reported; "
             "finished and unknown ids are not changed.")
    p.add_argument("ids", metavar="IDS", nargs="+", type=_job_ids, help=IDS_HELP)
    p.add_argument("--reason", metavar="TEXT", help="why, recorded in history")
    p.add_argument("--by", metavar="WHO",
                   help="who, recorded in history (default: the database role)")

    p = leaf(jobs_actions, "reschedule", jobs.cmd_reschedule,
             "change when and how pending jobs run",
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

    history_actions = branch("history", "list finished jobs, retry exhausted ones")
    p = leaf(history_actions, "list", history.cmd_list, "list finished jobs (newest first)",
             "List finished jobs, most recently finished first: exhausted ones, and completed "
             "ones when worker.history is on.")
    _list_options(p)
    p.add_argument("--outcome", choices=HISTORY_OUTCOMES, help="only this outcome")

    p = leaf(history_actions, "show", history.cmd_show, "one finished job, in full",
             "One finished job with every field: its payload, outcome and reason, its last "
             "error (the exception's message) and that error's traceback.")
    p.add_argument("id", metavar="ID", type=_job_id, help="the job's id")

    p = leaf(history_actions, "retry", history.cmd_retry, "put exhausted jobs back in the queue",
             "Put exhausted jobs back in the queue, runnable now, with their attempts reset: "
             "those given by id, or every exhausted job of a task and/or a reason "
             "(--task T --reason no_handler: the jobs of a task that had no handler). "
             "Completed jobs cannot be retried; each id retried, or not, is reported.")
    p.add_argument("ids", metavar="IDS", nargs="*", type=_job_ids, help=IDS_HELP)
    p.add_argument("--task", metavar="TASK",
                   help="every exhausted job of this task (instead of IDS)")
    p.add_argument("--reason", choices=HISTORY_REASONS,
                   help="every exhausted job with this reason (instead of IDS)")

    p = leaf(commands, "queues", status.cmd_queues, "queue depth per queue and task",
             "Jobs waiting (runnable now), scheduled, running and claimed (see jobs list), "
             "and the age of the oldest "
             "runnable job, per queue and task. Reads every pending job once (a sequential "
             "scan), up to --scan-limit rows: an operator command, not one to poll.")
    p.add_argument("--scan-limit", metavar="N", type=_positive, default=SCAN_LIMIT_DEFAULT,
                   help=f"read at most N jobs (default: {SCAN_LIMIT_DEFAULT}); past it the "
                        "figures are lower bounds and say so")
    queue_actions = p.add_subparsers(dest="action", metavar="ACTION", required=False)
    for name, handler, verb in (("pause", controls.cmd_queue_pause, "pause"),
                                ("resume", controls.cmd_queue_resume, "resume")):
        sub = leaf(queue_actions, name, handler, f"{verb} a queue on every engine",
                   f"{verb.capitalize()} a queue on every engine of the schema (within one "
                   "poll interval; at once where engines LISTEN). A paused queue's jobs are "
                   "not claimed; running ones finish. " + PARALLEL_HELP)
        sub.add_argument("name", metavar="NAME", help="the queue name, or @parallel")

    task_actions = branch("tasks", "pause and resume tasks")
    for name, handler, verb in (("pause", controls.cmd_task_pause, "pause"),
                                ("resume", controls.cmd_task_resume, "resume")):
        sub = leaf(task_actions, name, handler, f"{verb} a task on every engine",
                   f"{verb.capitalize()} every job of a task, in every queue, on every engine "
                   "of the schema (within one poll interval). A serial queue whose next job "
                   "is of a paused task waits behind it.")
        sub.add_argument("name", metavar="ID", help="the task identifier")

    p = leaf(commands, "limits", controls.cmd_limits, "the declared concurrency and rate limits",
             "The limits engines recorded from their configurations ([[limits]], typed "
             "tasks' limits=), the keys met so far and the slots in use (concurrency: jobs "
             "running; rate: starts within the period).")
    limit_actions = p.add_subparsers(dest="action", metavar="ACTION", required=False)
    sub = leaf(limit_actions, "remove", controls.cmd_limit_remove, "forget a declared limit",
               "Forget a limit and its slots: claims stop enforcing it. An engine whose "
               "configuration still declares it records it again when it starts.")
    sub.add_argument("name", metavar="NAME", help="the limit's name")

    leaf(commands, "workers", status.cmd_workers, "live engines",
         "The engines registered in the schema: identity, heartbeat age, capacity, load, and "
         "whether each one's liveness lock is held (an engine whose lock is free is dead: "
         "its jobs are rescued by the others).")

    p = leaf(commands, "roles", schema.cmd_roles, "print the database roles script (roles.sql)",
             "Print skivi/sql/roles.sql, the grants of the owner, worker and producer roles "
             "(docs/operations.md, Database roles), as installed with this Skivi, to run "
             "with psql as the schema's owner after every migration. Touches no database.")
    p.add_argument("--print", action="store_true", dest="print_script", required=True,
                   help="write the script to stdout")

    cron_actions = branch("cron", "cron entries")
    p = leaf(cron_actions, "list", status.cmd_cron_list,
             "cron entries, last execution and next tick",
             "The configuration's cron entries ([[cron]] in the configuration and the "
             "--crontab file), each with its last execution and its next tick.")
    add_crontab_option(p)

    p = commands.add_parser(
        "dashboard", parents=[common], formatter_class=formatter, epilog=EPILOG,
        help="serve the web dashboard",
        description="Serve the web dashboard of the schema (needs the dashboard extra: pip "
                    "install 'skivi[dashboard]'): jobs, history, queues, engines and cron, "
                    "with actions (retry, run now, reschedule, fail, remove) unless "
                    "--read-only. It has no login of its own: bind it to a private address, "
                    "or mount skivi.dashboard.create_app in an application with an auth "
                    "hook (docs/dashboard.md).")
    p.set_defaults(handler=dashboard.cmd_dashboard, parser=p)
    p.add_argument("--host", default=dashboard.HOST_DEFAULT,
                   help=f"the address to bind (default: {dashboard.HOST_DEFAULT})")
    p.add_argument("--port", type=_int_in(1, 65535), default=dashboard.PORT_DEFAULT,
                   help=f"the port to listen on (default: {dashboard.PORT_DEFAULT})")
    p.add_argument("--read-only", action="store_true",
                   help="show no action and refuse every change (403)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   default="INFO", help="log level of the dashboard's log on stderr "
                                        "(default: INFO: every action, with its user)")
    add_crontab_option(p)

    # No options of its own here: what follows the command is the worker's command line,
    # left unparsed for its own parser (main), so its --help is the worker's.
    commands.add_parser(WORKER_COMMAND, add_help=False,
                        help="run a worker engine: the same command as python -m skivi.engine "
                             f"(see {PROG} {WORKER_COMMAND} --help)")
    return parser


# --- main ---------------------------------------------------------------------------------------


def _fail(code: int, message: str) -> int:
    warn(message)
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
        return handler(Context(args, config))
    except Refused as exc:  # as argparse reports a usage error
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
