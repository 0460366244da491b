"""A short tour of Skivi: ``./run-demo`` (or ``python -m skivi.demo``).

1. Finds a database: ``SKIVI_DATABASE_URL``, else ``DATABASE_URL``; with neither set, it starts
   an embedded PostgreSQL in ``.pgdata/demo`` (``pip install 'skivi[embedded]'``) and stops it
   again at the end.
2. Creates a system with two example tasks, applies pending migrations and starts it.
3. Enqueues jobs with ``skivi.add_jobs``, then one inside a transaction (it exists because the
   transaction commits) and one inside a transaction that rolls back (it never existed).
4. Runs the worker engine in the foreground until no job is runnable.
5. Prints what is left in the job table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import skivi
from skivi.db.embedded import embedded_running, start_embedded, stop_embedded
from skivi.engine import run

EMBEDDED_DIR = Path(".pgdata") / "demo"
JOBS_DEFAULT = 20

# Payloads of send-email are checked at enqueue against this JSON Schema.
SEND_EMAIL_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["to", "subject"],
    "properties": {"to": {"type": "string", "pattern": "@"}, "subject": {"type": "string"}},
}


# Handlers receive the job's context, a skivi.JobContext: ``ctx.job`` (id, payload, attempts,
# ...), ``ctx.logger`` and ``ctx.add_job`` for follow-up jobs.


def send_email(ctx: skivi.JobContext) -> None:
    """Example task: pretend to send an email."""
    payload = ctx.job.payload
    print(f"  job {ctx.job.id}: send-email to {payload['to']}: {payload['subject']}")


def welcome(ctx: skivi.JobContext) -> None:
    """Example task: greet a new user."""
    print(f"  job {ctx.job.id}: welcome {ctx.job.payload['email']}")


TASKS = {"send-email": send_email, "welcome": welcome}


def _database_url() -> tuple[str, bool]:
    """The database to use, and whether this run started the embedded server."""
    for name in ("SKIVI_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            print(f"Using the database in {name}.")
            return os.environ[name], False
    where = EMBEDDED_DIR.resolve()
    print(f"Neither SKIVI_DATABASE_URL nor DATABASE_URL is set: starting an embedded "
          f"PostgreSQL in {where}.")
    was_running = embedded_running(where)
    return start_embedded(where), not was_running


def _enqueue(system: skivi.System, count: int) -> None:
    specs = [{"task": "send-email",
              "payload": {"to": f"user{i}@example.com", "subject": f"Hello #{i}"}}
             for i in range(1, count + 1)]
    jobs = skivi.add_jobs(system, specs)
    print(f"\nEnqueued {len(jobs)} jobs with one add_jobs call:")
    for job in jobs:
        print(f"  job {job.id}: {job.task_identifier} to {job.payload['to']} ({job.outcome})")

    url = system.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create temporary table signup (email text primary key)")
        with conn.transaction():
            conn.execute("insert into signup values ('ada@example.com')")
            job = skivi.add_job(system, "welcome", {"email": "ada@example.com"}, conn=conn)
        print(f"\nIn a transaction with a signup row: job {job.id} ({job.task_identifier}), "
              "committed with it.")
        with conn.transaction():
            conn.execute("insert into signup values ('bob@example.com')")
            ghost = skivi.add_job(system, "welcome", {"email": "bob@example.com"}, conn=conn)
            raise psycopg.Rollback()
        query = sql.SQL("select count(*) from {}.job where id = %s").format(
            sql.Identifier(system.schema))
        row = conn.execute(query, [ghost.id]).fetchone()
        print(f"In a transaction that rolled back: job {ghost.id}; "
              f"rows with that id now: {row[0] if row else 0}.")

    try:
        skivi.add_job(system, "send-email", {"to": "nobody", "subject": "Hi"})
    except skivi.PayloadError as exc:
        print(f"Refused at enqueue, before any SQL: {exc}")


def _run_engine(system: skivi.System) -> int:
    print("\nRunning the engine until no job is runnable:")
    code = run(system.instance, system.emitter, once=True)
    if code:
        print(f"  the engine stopped with exit code {code} (see its log above).")
    return code


def _summary(system: skivi.System) -> None:
    query = sql.SQL(
        "select task_identifier, count(*) from {}.job group by 1 order by 1"
    ).format(sql.Identifier(system.schema))
    with psycopg.connect(system.database_url) as conn:
        rows = conn.execute(query).fetchall()
    total = sum(n for _, n in rows)
    detail = ", ".join(f"{task}: {n}" for task, n in rows)
    print(f"\nJobs left in {system.schema}.job: {total}" + (f" ({detail})" if detail else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skivi.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=JOBS_DEFAULT,
                        help=f"how many send-email jobs to enqueue (default {JOBS_DEFAULT})")
    args = parser.parse_args(argv)

    url, started = _database_url()
    try:
        config = {"database": {"connection_string": url},
                  "validation": {"tasks": {"send-email": SEND_EMAIL_SCHEMA}}}
        with skivi.create_system(config, TASKS) as system:
            applied = system.migrate()
            print(f"Schema {system.schema!r}: "
                  + (f"applied {', '.join(m.name for m in applied)}." if applied
                     else "up to date."))
            # start() applies pending migrations (none are left) and would start the engine in
            # a background process; the demo runs it in the foreground instead, below.
            system.start(engine=False)
            _enqueue(system, args.jobs)
            code = _run_engine(system)
            _summary(system)
    finally:
        if started:
            stop_embedded(EMBEDDED_DIR)
            print(f"Stopped the embedded PostgreSQL (its data stays in {EMBEDDED_DIR}/).")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
