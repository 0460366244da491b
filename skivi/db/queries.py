# The declarations below are never called (``@statement`` reads their signatures), so
# their bodies are only docstrings.
# mypy: disable-error-code="empty-body"
"""Named queries: one statement per file in ``skivi/sql/queries``, one typed call per file.

Text. Each file is read once, composed with the instance's schema through
``psycopg.sql.Identifier`` (never string pasting) and rendered once to bytes (``Queries``,
one per schema), so the text sent for a query is identical on every call, psycopg's
prepared-statement cache works for the hot ones, and no call pays for composing (measured:
~25 us per execute otherwise).

Calls. Each file is declared once, below, as a function with the file's name: its
keyword-only parameters are the file's ``%(name)s`` placeholders, its return annotation is
what a run returns (River's sqlc-generated ``JobGetAvailable(ctx, params) -> []*RiverJob``,
without generating code). ``@statement`` makes the declaration a ``Statement``; the body is
never run::

    @statement
    def engine_heartbeat(*, engine: int, in_flight: int, stopping: bool,
                         running: list[int]) -> HeartbeatRow | None:
        '''Refresh this engine's heartbeat; its row, or None if it was declared dead.'''

    alive = await engine_heartbeat.run_async(conn, q, engine=engine_id, in_flight=3,
                                             stopping=False, running=[])

``run`` / ``run_async`` execute and read the answer; ``execute`` / ``execute_async`` only
send (the cursor comes back unread: pipelines, answers nobody needs) and ``fetch`` /
``fetch_async`` read such a cursor later. The return annotation says how the answer is read:

    ``list[Row]``    every row
    ``Row | None``   the first row, or None when there is none
    ``Row``          the one row (a statement that answers none raises RuntimeError)
    ``None``         nothing is read

and the row type how each row is built:

    ``tuple[...]``   psycopg's own tuples, as they come: nothing is built per row. The hot
                     statements' rows, read by the index constants declared beside them.
    a NamedTuple     one per row, from its values (``_make``): operator and cold statements
    anything else    the first column (psycopg's ``scalar_row``): ``int``, ``bool``, ...

Checks. ``Queries`` refuses to load when a file has no declaration, a declaration no file,
or a declaration's parameters are not exactly its file's placeholders (as psycopg finds
them: comments included), so neither dead SQL nor a drifted parameter can accumulate.
Mypy checks each call's keywords and their types against the declaration; at run time a
call with other keywords raises TypeError before anything is sent (one set comparison).
``tests/db/test_queries.py`` checks each declared row type against the columns the server
says the statement returns.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Final, Generic, NamedTuple, ParamSpec, TypeVar, cast, overload

import psycopg
from psycopg import sql
from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb

__all__ = [
    "CLAIM_CUT", "CLAIM_ID", "CLAIM_LEASE", "CLAIM_MESSAGE", "CLAIM_TASK", "COMPLETED_ID",
    "COMPLETED_LEASE", "FAILED_ATTEMPTS", "FAILED_ID", "FAILED_LEASE", "FAILED_MAX_ATTEMPTS",
    "FAILED_OUTCOME", "FAILED_REASON", "FAILED_RUN_AT", "LIMITED_BLOCKED", "LIMITED_CUT",
    "LIMITED_WAKE_AT", "STATEMENTS", "BigintArray", "CancelledRow", "ChangeRow", "ClaimRow",
    "CompletedRow", "ControlRow", "CronFireRow", "CronKnownRow", "CronListRow",
    "DashboardHistoryListRow", "DashboardHistoryRateRow", "DashboardJobCountsRow",
    "DashboardJobListRow", "DashboardQueueRow", "EngineListRow", "FailedRow", "HeartbeatRow",
    "HistoryPruneRow", "HistoryRetryRow", "InsertedOneRow", "InsertedRow", "JobCountRow",
    "JobHistoryRow",
    "JobLimitRow", "JobListRow", "JobRescueRow", "JobResultRow", "JobStatsRow",
    "KeyedInsertRow", "LimitedClaimRow", "LockHolderRow", "MigrationRow", "PauseRow", "Queries",
    "ResultPruneRow", "SchemaStateRow", "Statement", "TaskRow", "channel_name",
    "check_statements",
    "declare", "done_channel_name", "for_schema", "load_text", "migration_files",
    "placeholders", "statement",
]

SQL_PACKAGE = "skivi.sql"

P = ParamSpec("P")
R = TypeVar("R")


def channel_name(schema: str) -> str:
    """The NOTIFY channel on which an instance's engines are woken."""
    return f"{schema}:jobs"


def done_channel_name(schema: str) -> str:
    """The NOTIFY channel on which the ids of finished jobs that keep results are sent
    (skivi.wait_for). Short: a schema name of 57 characters still fits the 63 of a name."""
    return f"{schema}:done"


def load_text(folder: str, name: str) -> str:
    return (resources.files(SQL_PACKAGE) / folder / name).read_text(encoding="utf-8")


def compose(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(
        schema=sql.Identifier(schema), channel=sql.Literal(channel_name(schema)),
        done_channel=sql.Literal(done_channel_name(schema)),
    )


def migration_files() -> list[tuple[int, str]]:
    """(version, file name) of every migration, in order."""
    found = []
    for entry in (resources.files(SQL_PACKAGE) / "migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name))
    found.sort()
    return found


def _query_files() -> set[str]:
    folder = resources.files(SQL_PACKAGE) / "queries"
    return {e.name[:-4] for e in folder.iterdir() if e.name.endswith(".sql")}


# -- statements ----------------------------------------------------------------------------

# A placeholder as psycopg's query parser reads one (psycopg/_queries.py): "%" then a name in
# parentheses and a format, or any one character ("%%" is a literal percent sign).
_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\)(.)|(.))", re.DOTALL)


def placeholders(text: str) -> frozenset[str]:
    """The ``%(name)s`` parameter names of a query text, comments included: psycopg reads
    those too, so a name mentioned in a header comment must be passed as well.

    Raises:
        ValueError: on a positional placeholder (``%s``) or an unknown format.
    """
    names: set[str] = set()
    for m in _PLACEHOLDER.finditer(text):
        name, fmt, other = m.groups()
        if name is not None and fmt in "sbt":
            names.add(name)
        elif other != "%":
            raise ValueError(f"not a named placeholder: {m.group(0)!r} (write %% for %)")
    return frozenset(names)


class Statement(Generic[P, R]):
    """One named query: the call its declaration describes (see the module docstring).

    ``P`` is the declaration's parameters and ``R`` what a run returns, so mypy checks every
    call as if it called the declaration. The subclass (one per way of reading the answer)
    is chosen by ``declare`` from the declaration's return annotation.
    """

    __slots__ = ("defaults", "name", "params", "prepare", "returns", "row", "row_factory")

    def __init__(self, name: str, params: frozenset[str], defaults: Mapping[str, Any], *,
                 returns: Any, row: Any, row_factory: Any, prepare: bool | None) -> None:
        self.name = name
        """The file's name (without .sql), by which ``Queries.texts`` holds its text."""
        self.params = params
        """The parameter names, which must be the file's placeholders."""
        self.defaults = dict(defaults)
        """Values of the parameters a caller may leave out."""
        self.returns = returns
        """The declaration's return annotation, resolved."""
        self.row = row
        """The type of one row (or of the one column, for scalar rows); None if no answer."""
        self.row_factory = row_factory
        """The psycopg row factory, or None for the connection's own (tuples)."""
        self.prepare = prepare
        """psycopg's ``prepare``: True prepares on first use, None after a few uses."""

    def __repr__(self) -> str:
        return f"<Statement {self.name}({', '.join(sorted(self.params))})>"

    def _params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if args or kwargs.keys() != self.params:
            if args or not self.defaults:
                raise self._misuse(args, kwargs)
            kwargs = {**self.defaults, **kwargs}
            if kwargs.keys() != self.params:
                raise self._misuse(args, kwargs)
        # No parameters: the text goes as it is (simple protocol, "%%" untouched), as
        # psycopg sends a query given no parameters.
        return kwargs or None

    def _misuse(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TypeError:
        if args:
            return TypeError(f"{self.name}: parameters go by name, got {len(args)} "
                             "positional")
        missing = sorted(self.params - kwargs.keys())
        unknown = sorted(kwargs.keys() - self.params)
        return TypeError(f"{self.name}: missing parameters {missing}, unknown parameters "
                         f"{unknown} (declared: {sorted(self.params)})")

    def execute(self, conn: psycopg.Connection[Any], q: Queries, /,
                *args: P.args, **kwargs: P.kwargs) -> psycopg.Cursor[Any]:
        """Send the statement; its answer is left unread on the cursor (see ``fetch``)."""
        params = self._params(args, kwargs)
        # A connection's execute() is its cursor()'s: the same path as a plain
        # conn.execute() when the rows are psycopg's tuples.
        on: Any = conn if self.row_factory is None else conn.cursor(
            row_factory=self.row_factory)
        cur: psycopg.Cursor[Any] = on.execute(q.texts[self.name], params,
                                              prepare=_prepare(self, conn))
        return cur

    async def execute_async(self, conn: psycopg.AsyncConnection[Any], q: Queries, /,
                            *args: P.args, **kwargs: P.kwargs) -> psycopg.AsyncCursor[Any]:
        """The async twin of ``execute``."""
        params = self._params(args, kwargs)
        on: Any = conn if self.row_factory is None else conn.cursor(
            row_factory=self.row_factory)
        cur: psycopg.AsyncCursor[Any] = await on.execute(q.texts[self.name], params,
                                                         prepare=_prepare(self, conn))
        return cur

    def fetch(self, cur: psycopg.Cursor[Any]) -> R:
        """The answer of a cursor ``execute`` returned, read as declared."""
        raise NotImplementedError

    def fetch_async(self, cur: psycopg.AsyncCursor[Any]) -> Awaitable[R]:
        """The async twin of ``fetch``."""
        raise NotImplementedError

    def run(self, conn: psycopg.Connection[Any], q: Queries, /,
            *args: P.args, **kwargs: P.kwargs) -> R:
        """Execute the statement and read its answer as declared."""
        return self.fetch(self.execute(conn, q, *args, **kwargs))

    async def run_async(self, conn: psycopg.AsyncConnection[Any], q: Queries, /,
                        *args: P.args, **kwargs: P.kwargs) -> R:
        """The async twin of ``run``."""
        # Written out rather than through execute_async: one coroutine less on the hot path.
        params = self._params(args, kwargs)
        on: Any = conn if self.row_factory is None else conn.cursor(
            row_factory=self.row_factory)
        return await self.fetch_async(await on.execute(q.texts[self.name], params,
                                                       prepare=_prepare(self, conn)))


def _prepare(st: Statement[Any, Any],
             conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool | None:
    """The statement's ``prepare``, unless its connection may not prepare at all: a
    connection made with prepare_threshold None (database.prepared_statements false, for a
    transaction-mode pooler that cannot keep prepared statements) never prepares, and an
    explicit prepare=True would prepare anyway."""
    if conn.prepare_threshold is None:
        return False
    return st.prepare


class _Rows(Statement[P, R]):
    __slots__ = ()

    def fetch(self, cur: psycopg.Cursor[Any]) -> R:
        return cast(R, cur.fetchall())

    def fetch_async(self, cur: psycopg.AsyncCursor[Any]) -> Awaitable[R]:
        return cast(Awaitable[R], cur.fetchall())


class _FirstRow(Statement[P, R]):
    __slots__ = ()

    def fetch(self, cur: psycopg.Cursor[Any]) -> R:
        return cast(R, cur.fetchone())

    def fetch_async(self, cur: psycopg.AsyncCursor[Any]) -> Awaitable[R]:
        return cast(Awaitable[R], cur.fetchone())


class _OneRow(Statement[P, R]):
    __slots__ = ()

    def fetch(self, cur: psycopg.Cursor[Any]) -> R:
        row = cur.fetchone()
        if row is None:
            raise RuntimeError(f"{self.name} answered no row")
        return cast(R, row)

    async def fetch_async(self, cur: psycopg.AsyncCursor[Any]) -> R:
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"{self.name} answered no row")
        return cast(R, row)


class _NoAnswer(Statement[P, R]):
    __slots__ = ()

    def fetch(self, cur: psycopg.Cursor[Any]) -> R:
        return cast(R, None)

    async def fetch_async(self, cur: psycopg.AsyncCursor[Any]) -> R:
        return cast(R, None)


def _row_factory(row: Any) -> Any:
    """How psycopg builds one row of type ``row`` (see the module docstring)."""
    if typing.get_origin(row) is tuple:
        return None
    if isinstance(row, type) and issubclass(row, tuple) and hasattr(row, "_fields"):
        make = cast(Any, row)._make
        return lambda cursor: make
    if isinstance(row, type):
        return scalar_row
    raise TypeError(f"not a row type: {row!r} (a tuple[...], a NamedTuple or a column type)")


def declare(fn: Callable[P, R], *, prepare: bool | None = None) -> Statement[P, R]:
    """The ``Statement`` a declaration describes, not registered (``statement`` is)."""
    name = fn.__name__
    params = inspect.signature(fn).parameters.values()
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    if positional:
        raise TypeError(f"{name}: declare parameters keyword-only (after *), not {positional}")
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    returns = typing.get_type_hints(fn)["return"]
    kind: type[Statement[P, R]]
    if returns is type(None):
        kind, row = _NoAnswer, None
    elif typing.get_origin(returns) is list:
        kind, row = _Rows, typing.get_args(returns)[0]
    elif typing.get_origin(returns) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(returns) if a is not type(None)]
        if len(others) != 1 or len(typing.get_args(returns)) != 2:
            raise TypeError(f"{name}: return one row type or one row type | None")
        kind, row = _FirstRow, others[0]
    else:
        kind, row = _OneRow, returns
    return kind(name, frozenset(p.name for p in params), defaults, returns=returns, row=row,
                row_factory=None if row is None else _row_factory(row), prepare=prepare)


STATEMENTS: dict[str, Statement[..., Any]] = {}
"""Every declared statement, by name."""


@overload
def statement(fn: Callable[P, R], /) -> Statement[P, R]: ...


@overload
def statement(*, prepare: bool | None = None
              ) -> Callable[[Callable[P, R]], Statement[P, R]]: ...


def statement(fn: Callable[P, R] | None = None, /, *, prepare: bool | None = None) -> Any:
    """Declare the named query of the file with the function's name (see the module
    docstring). ``prepare=True``: prepared on first use, for the hot statements."""
    def register(fn: Callable[P, R]) -> Statement[P, R]:
        made = declare(fn, prepare=prepare)
        if made.name in STATEMENTS:
            raise TypeError(f"{made.name} is declared twice")
        STATEMENTS[made.name] = made
        return made

    return register if fn is None else register(fn)


def check_statements(declared: Mapping[str, Statement[..., Any]],
                     texts: Mapping[str, str]) -> None:
    """Refuse declarations out of step with the files' texts (by name).

    Raises:
        RuntimeError: naming every file without a declaration, declaration without a file,
            and declaration whose parameters are not its file's placeholders.
    """
    problems = []
    missing = sorted(declared.keys() - texts.keys())
    undeclared = sorted(texts.keys() - declared.keys())
    if missing or undeclared:
        problems.append(f"missing files {missing}, undeclared files {undeclared}")
    for name in sorted(declared.keys() & texts.keys()):
        try:
            found = placeholders(texts[name])
        except ValueError as exc:
            problems.append(f"{name}.sql: {exc}")
            continue
        params = declared[name].params
        if found != params:
            problems.append(
                f"{name}: declared parameters not in {name}.sql {sorted(params - found)}, "
                f"placeholders not declared {sorted(found - params)}")
    if problems:
        raise RuntimeError("named queries out of step with skivi/sql/queries: "
                           + "; ".join(problems))


class Queries:
    """The named queries of one schema, rendered: what each ``Statement`` sends for it.

    Callers pass it to a statement's call, which looks its own text up in ``texts``;
    nothing else sends a text (tests/db/test_queries.py only has the server describe each).
    """

    __slots__ = ("schema", "texts")

    def __init__(self, schema: str) -> None:
        self.schema = schema
        """The schema every text names (through ``{schema}``)."""
        texts = {name: load_text("queries", name + ".sql") for name in _query_files()}
        check_statements(STATEMENTS, texts)
        self.texts: Mapping[str, bytes] = {
            name: compose(texts[name], schema).as_bytes(None) for name in sorted(STATEMENTS)}
        """Statement name -> the text it sends: one per declared statement."""


@functools.cache
def for_schema(schema: str) -> Queries:
    return Queries(schema)


# -- the named queries, by file name -------------------------------------------------------
#
# Parameter and column types are what psycopg adapts and loads: text[] and bigint[] are
# lists (psycopg sends no tuple as an array), timestamptz is an aware datetime.

BigintArray = list[int] | str
"""A bigint[] parameter: a list, or a literal such as '{1,2,3}', far cheaper to build than
adapting a list element by element (the statement casts it)."""


class ControlRow(NamedTuple):
    paused_queues: list[str] | None
    paused_tasks: list[str] | None
    limited_tasks: list[str] | None


@statement
def control_get() -> ControlRow:
    """The paused queues and tasks and the tasks under a limit, for the claims."""


class CronFireRow(NamedTuple):
    identifier: str
    ts: dt.datetime
    claimed: bool
    outcome: str | None
    job_id: int | None


@statement
def cron_fire(*, ticks: str | Jsonb) -> list[CronFireRow]:
    """Claim and enqueue cron ticks (``ticks``: a JSON array); one row per tick."""


class CronKnownRow(NamedTuple):
    identifier: str
    known_since: dt.datetime
    last_execution: dt.datetime | None
    created: bool


@statement
def cron_known(*, identifiers: list[str], now: dt.datetime) -> list[CronKnownRow]:
    """Register cron entries; where each known one stands."""


class CronListRow(NamedTuple):
    identifier: str
    known_since: dt.datetime
    last_execution: dt.datetime | None


@statement
def cron_list(*, identifiers: list[str]) -> list[CronListRow]:
    """Where the given cron entries stand (read-only)."""


# The dashboard's statements (skivi.dashboard) are sent unprepared: their filters are
# "is null or" tests that the planner folds away only when it sees the parameters.


@statement(prepare=False)
def dashboard_cron_list(*, limit: int) -> list[CronListRow]:
    """Every registered cron entry, by identifier (read-only)."""


class DashboardHistoryListRow(NamedTuple):
    id: int
    task_identifier: str
    queue_name: str | None
    outcome: str
    reason: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    key: str | None
    run_at: dt.datetime
    created_at: dt.datetime
    finished_at: dt.datetime
    payload_preview: str
    matched: bool
    boundary: bool


@statement(prepare=False)
def dashboard_history_list(*, before_at: dt.datetime | None, before_id: int | None,
                           task: str | None, outcome: str | None, reason: str | None,
                           search: str | None, scan: int, limit: int
                           ) -> list[DashboardHistoryListRow]:
    """A page of finished jobs, newest first, from a keyset cursor, scanning at most
    ``scan`` rows (the last one scanned flagged ``boundary``)."""


@statement(prepare=False)
def dashboard_history_match(*, task: str | None, reason: str | None, search: str | None,
                            limit: int) -> list[int]:
    """The ids of exhausted jobs matching a history filter, by id, at most ``limit``."""


class DashboardHistoryRateRow(NamedTuple):
    completed: int
    exhausted: int
    history_estimate: int


@statement(prepare=False)
def dashboard_history_rate(*, window: float, cap: int) -> DashboardHistoryRateRow:
    """Jobs finished in the last ``window`` seconds, by outcome, each up to ``cap``."""


class DashboardJobCountsRow(NamedTuple):
    waiting: int
    scheduled: int
    failed: int
    running: int
    claimed: int
    truncated: bool
    total_estimate: int


@statement(prepare=False)
def dashboard_job_counts(*, cap: int) -> DashboardJobCountsRow:
    """Live jobs by state, reading at most ``cap`` rows of pending and of claimed jobs."""


@statement(prepare=False)
def dashboard_job_estimate() -> Any:
    """The planner's plan (JSON) estimating the pending jobs of each state."""


class DashboardJobListRow(NamedTuple):
    id: int
    task_identifier: str
    queue_name: str | None
    state: str
    priority: int
    run_at: dt.datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    key: str | None
    locked_by: int | None
    created_at: dt.datetime
    payload_preview: str
    matched: bool
    boundary: bool


@statement(prepare=False)
def dashboard_job_list_newest(*, before: int | None, task: str | None, queue: str | None,
                              key: str | None, search: str | None, state: str | None,
                              locked: bool | None, scan: int, limit: int
                              ) -> list[DashboardJobListRow]:
    """A page of live jobs, highest id first, below ``before``, scanning at most ``scan``
    rows (the last one scanned flagged ``boundary``)."""


@statement(prepare=False)
def dashboard_job_list_oldest(*, after: int | None, task: str | None, queue: str | None,
                              key: str | None, search: str | None, state: str | None,
                              locked: bool | None, scan: int, limit: int
                              ) -> list[DashboardJobListRow]:
    """A page of live jobs, lowest id first, above ``after`` (as the newest-first one)."""


@statement(prepare=False)
def dashboard_job_match(*, task: str | None, queue: str | None, key: str | None,
                        search: str | None, state: str | None, limit: int) -> list[int]:
    """The ids of live jobs matching a jobs filter, by id, at most ``limit``."""


class DashboardQueueRow(NamedTuple):
    queue_name: str | None
    waiting: int
    scheduled: int
    running: int
    claimed: int
    oldest_runnable_age: float | None
    waiting_capped: bool
    scheduled_capped: bool
    running_capped: bool
    lock_job: int | None
    lock_engine: int | None
    lock_age: float | None


@statement(prepare=False)
def dashboard_queue_list(*, cap: int, max_groups: int) -> list[DashboardQueueRow]:
    """Every queue's depth, latency and serial lock holder, without scanning the table."""


@statement
def engine_deregister(*, engine: int) -> None:
    """Remove a cleanly stopped engine's row."""


class HeartbeatRow(NamedTuple):
    id: int
    cancel_ids: list[int]
    """This engine's claims with a cancel request (pairwise with ``cancel_leases``)."""
    cancel_leases: list[int]
    strays: bool
    """Some request's job is no longer claimed: job_cancel_sweep settles it."""


@statement
def engine_heartbeat(*, engine: int, in_flight: int, stopping: bool,
                     running: list[int]) -> HeartbeatRow | None:
    """Refresh an engine's heartbeat and read its cancel requests; None if it was declared
    dead."""


class EngineListRow(NamedTuple):
    id: int
    hostname: str
    pid: int
    version: str
    started_at: dt.datetime
    heartbeat_age: float
    lease_timeout: float
    processes: int
    concurrency: int
    in_flight: int
    stopping: bool
    alive: bool


@statement
def engine_list() -> list[EngineListRow]:
    """The engines registered in the schema, by id."""


@statement
def engine_register(*, hostname: str, pid: int, version: str,
                    lease_timeout: float, processes: int, concurrency: int) -> int:
    """A new engine identity (its lease row, heartbeat now); its id."""


@statement
def job_advance(*, tasks: list[str] | None = None, queues: list[str] | None = None) -> int:
    """Make the scheduled jobs (of these tasks, queues) runnable now; how many."""


class ChangeRow(NamedTuple):
    """What one of the operator's changes did to one id."""

    id: int
    result: str
    locked_by: int | None


class CancelledRow(NamedTuple):
    id: int
    lease: int
    reason: str | None
    cancelled_by: str | None


# Not prepared: it finds its rows in job_running by id, and a generic plan made while
# job_running was nearly empty scans the whole table ever after (see complete_claims,
# migration 0015); planned each time it fits the table's size then.
@statement(prepare=False)
def job_cancel_many(*, engine: int, ids: list[int], leases: list[int],
                    errors: list[str | None], tracebacks: list[str | None]
                    ) -> list[CancelledRow]:
    """Record cancelled claims (pairwise arrays); those actually recorded, with their
    requests' why and who."""


@statement
def job_cancel_request_many(*, ids: list[int], reason: str | None = None,
                            cancelled_by: str | None = None) -> list[ChangeRow]:
    """Cancel jobs (cancel_jobs): what happened to each id, in order."""


@statement
def job_cancel_sweep() -> int:
    """Settle the cancel requests of jobs no longer claimed; how many."""


ClaimRow = tuple[int, int, str, str, bool]
"""job_claim's row, read by the CLAIM_* indices: id, lease, message (the job as JSON text,
see skivi.engine.wire), task_identifier, cut (jobs were left for the byte limit)."""
CLAIM_ID: Final = 0
CLAIM_LEASE: Final = 1
CLAIM_MESSAGE: Final = 2
CLAIM_TASK: Final = 3
CLAIM_CUT: Final = 4


@statement(prepare=True)
def job_claim(*, engine: int, limit: int, serial_limit: int, max_bytes: int,
              tasks: list[str] | None = None, forbidden: list[str] | None = None,
              queues: list[str] | None = None, paused_queues: list[str] | None = None,
              paused_tasks: list[str] | None = None, lock_timeout: str = "0"
              ) -> list[ClaimRow]:
    """Claim up to ``limit`` runnable jobs for ``engine``, in claim order (None: no filter);
    one autocommit statement (claim_jobs, migration 0010). ``lock_timeout`` in ms, "0" (no
    timeout, PostgreSQL's default) unless given: the engine gives its own."""


LimitedClaimRow = tuple[int | None, int | None, str | None, str | None, bool, bool | None,
                        float | None]
"""job_claim_limited's row: a ClaimRow (read by the CLAIM_* indices) and two more columns;
its last row is the status row (id None), read by the LIMITED_* indices."""
LIMITED_CUT: Final = 4
LIMITED_BLOCKED: Final = 5
LIMITED_WAKE_AT: Final = 6


@statement(prepare=False)
def job_claim_limited(*, engine: int, limit: int, lookahead: int, max_bytes: int,
                      tasks: list[str] | None = None, forbidden: list[str] | None = None,
                      paused_queues: list[str] | None = None,
                      paused_tasks: list[str] | None = None) -> list[LimitedClaimRow]:
    """Claim up to ``limit`` jobs without a queue under the declared limits; then the
    status row (cut, blocked, wake_at)."""


CompletedRow = tuple[int, int]
"""job_complete_many's row, read by the COMPLETED_* indices: id, lease."""
COMPLETED_ID: Final = 0
COMPLETED_LEASE: Final = 1


@statement(prepare=True)
def job_complete_many(*, engine: int, ids: BigintArray, leases: BigintArray,
                      history: bool, lock_timeout: str = "0") -> list[CompletedRow]:
    """Finish successful claims (pairwise ``ids``, ``leases``); those actually completed.
    One statement (complete_claims, migration 0011), in autocommit a transaction of its own.
    ``lock_timeout`` in ms, "0" (no timeout) unless given: the engine gives its own."""


class JobLimitRow(NamedTuple):
    name: str
    tasks: list[str]
    key_path: list[str] | None
    slots: int
    period: float | None
    keys: int
    held: int
    recent: int


@statement
def job_limit_list() -> list[JobLimitRow]:
    """The declared limits, with their slots in use."""


@statement
def job_limit_remove(*, name: str) -> bool:
    """Forget a declared limit and its slots; whether it existed."""


@statement
def job_limit_upsert_many(*, names: list[str], tasks: list[str], key_paths: list[str | None],
                          slots: list[int], periods: list[float | None]) -> list[str]:
    """Record declared limits (pairwise arrays); the names inserted or changed."""


class JobCountRow(NamedTuple):
    queue_name: str | None
    task_identifier: str
    waiting: int
    scheduled: int
    running: int
    claimed: int
    oldest_runnable_age: float | None
    truncated: bool


@statement
def job_count_by_queue(*, scan_limit: int) -> list[JobCountRow]:
    """Queue depth per queue and task, for an operator."""


FailedRow = tuple[int, str, int, int, int, dt.datetime | None, str | None]
"""job_fail_many's row, read by the FAILED_* indices: id, outcome ('failed' or 'exhausted'),
lease, attempts, max_attempts, run_at (None when exhausted), reason (None when failed)."""
FAILED_ID: Final = 0
FAILED_OUTCOME: Final = 1
FAILED_LEASE: Final = 2
FAILED_ATTEMPTS: Final = 3
FAILED_MAX_ATTEMPTS: Final = 4
FAILED_RUN_AT: Final = 5
FAILED_REASON: Final = 6


# Not prepared, as job_cancel_many (it finds its rows in job_running by id).
@statement(prepare=False)
def job_fail_many(*, engine: int, ids: list[int], leases: list[int], errors: list[str | None],
                  delays: list[float], finals: list[str | None], payloads: list[str | None],
                  attempts: list[int | None], tracebacks: list[str | None]
                  ) -> list[FailedRow]:
    """Record failed attempts (pairwise arrays); the claims actually recorded."""


class JobHistoryRow(NamedTuple):
    id: int
    task_identifier: str
    queue_name: str | None
    outcome: str
    reason: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    key: str | None
    flags: list[str] | None
    priority: int
    run_at: dt.datetime
    created_at: dt.datetime
    finished_at: dt.datetime
    payload: Any
    last_error_traceback: str | None


@statement
def job_history_list(*, limit: int, payload: bool = False, task: str | None = None,
                     outcome: str | None = None, id: int | None = None
                     ) -> list[JobHistoryRow]:
    """Finished jobs, most recently finished first (None: no filter)."""


class HistoryPruneRow(NamedTuple):
    held: bool
    deleted: int


@statement
def job_history_prune(*, lock_class: int, schema: str, retention: float,
                      batch: int) -> HistoryPruneRow:
    """One round of history pruning, if this session gets the lock."""


class HistoryRetryRow(NamedTuple):
    id: int
    result: str


@statement
def job_history_retry_many(*, ids: list[int]) -> list[HistoryRetryRow]:
    """Put exhausted jobs back in the queue; what happened to each id, in order."""


@statement
def job_history_retry_matching(*, task: str | None, reason: str | None
                               ) -> list[HistoryRetryRow]:
    """Put every exhausted job of a task and/or reason back in the queue, by id."""


KeyedInsertRow = tuple[int, str, int, str, str | None, Any, int, dt.datetime, int, int,
                       str | None, str | None, list[str] | None, int | None,
                       dt.datetime | None, int, dt.datetime, dt.datetime]
"""job_insert_keyed_many's row: ord (0-based position in specs), outcome, then the job's
columns in the table's order (id ... updated_at)."""


@statement
def job_insert_keyed_many(*, specs: Jsonb) -> list[KeyedInsertRow]:
    """Enqueue jobs with a job key; one row per spec, in spec order."""


InsertedRow = tuple[str, dt.datetime]
"""job_insert_many's one row: ids (a bigint[] literal, in spec order), inserted_at."""


@statement
def job_insert_many(*, specs: Jsonb) -> InsertedRow:
    """Enqueue jobs without a job key."""


InsertedOneRow = tuple[int, dt.datetime]
"""job_insert_one's row: the new job's id, and inserted_at (the statement's now())."""


@statement
def job_insert_one(*, task: str, payload: str, queue_name: str | None,
                   run_at: dt.datetime | None, max_attempts: int | None,
                   priority: int | None, flags: list[str] | None) -> InsertedOneRow:
    """Enqueue one job without a job key (insert_job, migration 0009)."""


@statement
def job_insert_one_ready(*, schema: str) -> bool:
    """Whether insert_job exists in the schema and the current role may run it."""


class JobListRow(NamedTuple):
    id: int
    task_identifier: str
    queue_name: str | None
    state: str
    priority: int
    run_at: dt.datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    key: str | None
    flags: list[str] | None
    locked_by: int | None
    locked_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    payload: Any
    last_error_traceback: str | None


@statement
def job_list(*, limit: int, payload: bool = False, task: str | None = None,
             queue: str | None = None, state: str | None = None, id: int | None = None
             ) -> list[JobListRow]:
    """Live jobs, oldest id first (None: no filter)."""


@statement
def job_permanently_fail_many(*, ids: list[int], reason: str | None = None
                              ) -> list[ChangeRow]:
    """Give up on pending jobs; what happened to each id, in order."""


@statement
def job_queue_prune(*, batch: int) -> int:
    """Remove up to ``batch`` rows of serial queues without jobs; how many."""


# Not prepared, as job_cancel_many (it finds its rows in job_running by id).
@statement(prepare=False)
def job_release_many(*, engine: int, ids: BigintArray, leases: BigintArray) -> list[int]:
    """Give back unstarted claims (pairwise ``ids``, ``leases``); the ids released."""


@statement
def job_remove_many(*, ids: list[int]) -> list[ChangeRow]:
    """Delete pending jobs; what happened to each id, in order."""


@statement
def job_reschedule_many(*, ids: list[int], run_at: dt.datetime | None = None,
                        priority: int | None = None, attempts: int | None = None,
                        max_attempts: int | None = None) -> list[ChangeRow]:
    """Change pending jobs (None: keep); what happened to each id, in order."""


class JobRescueRow(NamedTuple):
    engines: list[int]
    retried: int
    exhausted: int
    fleet: int


@statement
def job_rescue(*, engine: int, restart_grace: float, orphans: bool) -> JobRescueRow:
    """Make the jobs of dead engines runnable again; the engines and the counts."""


class JobResultRow(NamedTuple):
    state: str
    task_identifier: str
    value: Any
    error: str | None
    attempts: int | None
    max_attempts: int | None
    finished_at: dt.datetime | None


@statement
def job_result_get(*, id: int) -> JobResultRow | None:
    """Where one job stands (live, kept result, history); None: nowhere."""


class ResultPruneRow(NamedTuple):
    held: bool
    deleted: int


@statement
def job_result_prune(*, lock_class: int, schema: str, retention: float,
                     batch: int) -> ResultPruneRow:
    """One round of result pruning, if this session gets the lock."""


@statement
def job_result_store_many(*, ids: list[int], tasks: list[str], outcomes: list[str],
                          vals: list[str | None], errors: list[str | None],
                          notice: str) -> None:
    """Keep the results of finished jobs (pairwise arrays) and notify their waiters."""


@statement
def job_retry_many(*, ids: list[int]) -> list[ChangeRow]:
    """Make pending jobs runnable now; what happened to each id, in order."""


class JobStatsRow(NamedTuple):
    queue_name: str
    waiting: int
    scheduled: int
    running: int
    claimed: int
    oldest_runnable_age: float | None
    estimated: bool


@statement
def job_stats(*, engine: int, cap: int, max_groups: int) -> list[JobStatsRow]:
    """Queue depth by state, for the leader engine only (no rows for the others)."""


class TaskRow(NamedTuple):
    state: str
    task_identifier: str
    payload: str | None
    value: str | None
    error: str | None
    traceback: str | None
    attempts: int | None
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


@statement
def job_task_get(*, id: int) -> TaskRow | None:
    """One job with its arguments and times (the Django tasks backend); None: nowhere."""


@statement(prepare=True)
def limit_key_drop_many(*, holds: str) -> int:
    """Give back these holds (JSON text, as limit_key_held_many and limit_key_stale return
    them); how many key rows changed."""


@statement(prepare=True)
def limit_key_held_many(*, ids: BigintArray, leases: BigintArray) -> str | None:
    """The concurrency keys these claims hold (pairwise; before the statements that finish
    them), as limit_key_drop_many takes them, or None."""


@statement
def limit_key_stale() -> str | None:
    """The holds of claims that are over, or of engines that are gone (JSON text), or
    None."""


@statement
def limits_get() -> int | None:
    """The database's max_payload_bytes."""


@statement
def limits_set(*, max_payload_bytes: int) -> None:
    """Set the database's max_payload_bytes (writes only a change)."""


@statement
def pause_change(*, kind: str, name: str, pause: bool) -> bool:
    """Pause (or resume) a queue or a task; whether it changed."""


class PauseRow(NamedTuple):
    kind: str
    name: str
    paused_at: dt.datetime


@statement
def pause_list() -> list[PauseRow]:
    """The paused queues and tasks."""


class MigrationRow(NamedTuple):
    id: int
    name: str


@statement
def transaction_settings_local(*, ms: str) -> str:
    """Bound the current transaction's lock waits to ``ms`` milliseconds, and plan its
    prepared statements once (generic plans)."""


@statement
def relay_bounds_local(*, ms: str) -> str:
    """Bound the current transaction's lock waits and each of its statements to ``ms``
    milliseconds."""


@statement
def migration_applied() -> list[MigrationRow]:
    """The migrations recorded, oldest first."""


@statement
def migration_bootstrap() -> None:
    """Create the schema and its migration table if missing."""


@statement
def migration_lock(*, schema: str) -> bool:
    """Try to take the migration lock of ``schema`` in this transaction: whether it holds it."""


class LockHolderRow(NamedTuple):
    pid: int
    application_name: str
    client: str | None
    backend_start: dt.datetime
    state: str | None
    state_change: dt.datetime | None
    state_age: float | None
    query: str


@statement
def migration_lock_holder(*, schema: str) -> LockHolderRow | None:
    """Who holds the migration lock of ``schema``, if anyone still does."""


@statement
def migration_record(*, id: int, name: str) -> None:
    """Record a migration as applied."""


class SchemaStateRow(NamedTuple):
    schema_exists: bool
    has_migration_table: bool
    object_count: int
    some_objects: list[str]


@statement
def migration_schema_state(*, schema: str) -> SchemaStateRow:
    """What ``schema`` holds before a migration creates anything in it."""


@statement
def migration_table_exists(*, schema: str) -> bool:
    """Whether ``schema`` has a migration table yet."""


