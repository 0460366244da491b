"""The finished jobs' commands: ``skivi history list | show | retry``, printed as the live
jobs' are (``skivi.cli.jobs``).
"""

from __future__ import annotations

from skivi.cli import output
from skivi.cli.context import Context, Refused
from skivi.cli.jobs import listing, report, requested_ids, show
from skivi.db.queries import job_history_list, job_history_retry_many, job_history_retry_matching

__all__ = ["cmd_list", "cmd_retry", "cmd_show"]


def cmd_list(ctx: Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        rows = job_history_list.run(conn, ctx.queries, task=args.task, outcome=args.outcome,
                                    limit=args.limit, payload=args.payload)
    return listing(ctx, rows, "history", "no finished jobs",
                   ["id", "task", "queue", "outcome", "reason", "attempts", "finished_at",
                    "last_error"],
                   lambda r: [str(r.id), r.task_identifier, output.text(r.queue_name),
                              r.outcome, output.text(r.reason),
                              f"{r.attempts}/{r.max_attempts}",
                              output.when_text(r.finished_at), output.error_text(r.last_error)])


def cmd_show(ctx: Context) -> int:
    with ctx.connect() as conn:
        rows = job_history_list.run(conn, ctx.queries, id=ctx.args.id, limit=1, payload=True)
    return show(ctx, rows, "job", f"no job {ctx.args.id} in history (see skivi jobs show)")


def cmd_retry(ctx: Context) -> int:
    args = ctx.args
    done = "back in the queue (runnable now)"
    given = any(args.ids)
    if args.task is None and args.reason is None:
        if not given:
            raise Refused("nothing to retry: give job IDS, or --task and/or --reason to "
                          "retry every exhausted job that matches")
        ids = requested_ids(ctx)
        with ctx.connect() as conn:
            retried = job_history_retry_many.run(conn, ctx.queries, ids=ids)
        return report(ctx, retried, done)
    if given:
        raise Refused("give either job IDS or --task/--reason, not both")
    if args.task is not None and not args.task:
        raise Refused("--task: an empty task identifier matches no job")
    with ctx.connect() as conn:
        retried = job_history_retry_matching.run(conn, ctx.queries, task=args.task,
                                                 reason=args.reason)
    return report(ctx, retried, done, none="no exhausted jobs match")
