"""Skivi's configuration: one frozen dataclass per section of ``skivi.toml``.

A value comes from four layers, each overriding the one before:

1. the defaults (the ``<FIELD>_DEFAULT`` constants below);
2. the source: a TOML file, a dict of the same shape, or an existing :class:`Config`;
3. the environment (:data:`ENV_VARIABLES`; only variables that are set and non-empty);
4. ``overrides``, which is how the CLI passes its flags, as dotted keys
   (``{"worker.processes": 2}``).

:func:`load_config` merges the layers first and validates once, at the end. The one
:class:`~skivi.errors.ConfigError` it raises lists every problem, each starting with its dotted
key, so an operator fixes a broken file in one pass instead of one problem per restart.

Validation is driven by the dataclasses themselves: a field's annotation is its type, its
``metadata["check"]`` its value constraint, and a section's ``_rules`` the constraints between its
fields. Adding a setting is adding a field.

Example ``skivi.toml`` (every section shown; every key is optional)::

    [database]
    connection_string = "postgresql://skivi@localhost/app"  # SKIVI_DATABASE_URL wins over this
    schema_name = "skivi"
    pool_max_size = 4
    child_enqueue = "parent"       # handlers' ctx.add_job through the engine's connection

    [worker]
    task_directory = "tasks"
    processes = 0                  # the CPUs this process may use, container limits included
    concurrency = 16
    batch_size = 4000
    queues = ["default", "mail"]
    heartbeat_interval = 0.5
    lease_timeout = 3.0
    job_timeout = 300.0
    cancel_grace = 10.0
    unknown_tasks = "skip"
    history = true
    store_results = false          # a task's store_result wins
    result_retention = 86400.0

    [validation]
    max_payload_bytes = 65536

    [validation.tasks]
    send_email = "myapp.schemas:SEND_EMAIL"  # import path of a schema

    [validation.tasks.resize_image]           # an inline JSON Schema
    type = "object"
    required = ["url"]
    properties.url = { type = "string" }

    [metrics]
    port = 9187
    host = "0.0.0.0"
    max_queue_labels = 100

    [events]
    buffer_size = 1000

    [[cron]]
    task = "send_digest"
    schedule = "0 8 * * *"
    payload = { kind = "daily" }

    [[limits]]                     # see skivi.limit
    name = "per-tenant"
    tasks = ["sync_account"]
    key = "tenant_id"
    concurrency = 2
"""

import dataclasses
import difflib
import functools
import logging
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

from skivi.errors import ConfigError, shown

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_VARIABLES",
    "Config",
    "DatabaseConfig",
    "EventsConfig",
    "MetricsConfig",
    "ValidationConfig",
    "WorkerConfig",
    "load_config",
]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "skivi.toml"

# database
CONNECT_TIMEOUT_DEFAULT = 10.0
CONNECTION_STRING_DEFAULT: str | None = None
MIGRATION_LOCK_TIMEOUT_DEFAULT = 300.0
POOL_MAX_SIZE_DEFAULT = 4
CHILD_ENQUEUE_DEFAULT: Literal["parent", "pool"] = "parent"
CHILD_POOL_SIZE_DEFAULT = 1
PREPARED_STATEMENTS_DEFAULT = True
LISTEN_DEFAULT = True
LISTEN_URL_DEFAULT: str | None = None
SCHEMA_NAME_DEFAULT = "skivi"

# worker
BATCH_SIZE_DEFAULT = 4000
BATCH_MAX_BYTES_DEFAULT = 16 * 1024 * 1024
CANCEL_GRACE_DEFAULT = 10.0
COMPLETION_BATCH_SIZE_DEFAULT = 1000
COMPLETION_INTERVAL_DEFAULT = 0.005
CONCURRENCY_DEFAULT = 16
FILE_EXTENSIONS_DEFAULT: tuple[str, ...] = (".py",)
FORBIDDEN_FLAGS_DEFAULT: tuple[str, ...] = ()
HEARTBEAT_INTERVAL_DEFAULT = 0.5
LIMITS_LOOKAHEAD_DEFAULT = 10_000
HISTORY_DEFAULT = False
HISTORY_RETENTION_DEFAULT = 7 * 86400.0
JOB_TIMEOUT_DEFAULT: float | None = None
LEASE_TIMEOUT_DEFAULT = 3.0
MAX_RESULT_BUFFER_DEFAULT = 10000
POLL_INTERVAL_DEFAULT = 1.0
PROCESSES_DEFAULT = 0
QUEUES_DEFAULT: tuple[str, ...] | None = None
RESCUE_INTERVAL_DEFAULT = 0.5
RESULT_RETENTION_DEFAULT = 86400.0
SHUTDOWN_TIMEOUT_DEFAULT = 30.0
STORE_RESULTS_DEFAULT = False
SYNC_PREFETCH_DEFAULT = 64
SYNC_THREADS_DEFAULT = 1
TASK_DIRECTORY_DEFAULT: str | None = None
UNKNOWN_TASKS_DEFAULT: Literal["exhaust", "skip"] = "exhaust"

# validation
MAX_PAYLOAD_BYTES_DEFAULT = 1024 * 1024
TASKS_DEFAULT: Mapping[str, str | Mapping[str, Any]] = types.MappingProxyType({})

# metrics
HOST_DEFAULT = "127.0.0.1"
MAX_QUEUE_LABELS_DEFAULT = 100
PORT_DEFAULT = 0

# events
BUFFER_SIZE_DEFAULT = 1000

# top level
CRON_DEFAULT: tuple[Mapping[str, Any], ...] = ()
LIMITS_DEFAULT: tuple[Mapping[str, Any], ...] = ()

ENV_VARIABLES: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        # In precedence order: Skivi's own variable first, so an app that shares DATABASE_URL
        # with other tools can still point Skivi elsewhere.
        "database.connection_string": ("SKIVI_DATABASE_URL", "DATABASE_URL"),
        "database.schema_name": ("SKIVI_SCHEMA",),
        "metrics.host": ("SKIVI_METRICS_HOST",),
        "metrics.max_queue_labels": ("SKIVI_METRICS_MAX_QUEUE_LABELS",),
        "metrics.port": ("SKIVI_METRICS_PORT",),
        "worker.concurrency": ("SKIVI_CONCURRENCY",),
        "worker.history": ("SKIVI_HISTORY",),
        "worker.processes": ("SKIVI_PROCESSES",),
        "worker.queues": ("SKIVI_QUEUES",),
        "worker.shutdown_timeout": ("SKIVI_SHUTDOWN_TIMEOUT",),
        "worker.task_directory": ("SKIVI_TASKS",),
        "worker.unknown_tasks": ("SKIVI_UNKNOWN_TASKS",),
    }
)
"""Dotted key -> the environment variables that set it, first present one wins."""


# --- value checks -------------------------------------------------------------------------------

_Problems = list[tuple[str, str]]
"""(dotted key, message) pairs; joined into "key: message" only when raising."""

_Check = Callable[[str, Any], _Problems]

_INVALID: Any = object()
"""What a conversion returns once it has recorded why the value is unusable."""


def _at_least(bound: int) -> _Check:
    def check(key: str, value: Any) -> _Problems:
        return [] if value >= bound else [(key, f"must be at least {bound}, got {shown(value)}")]

    return check


def _greater_than(bound: int) -> _Check:
    def check(key: str, value: Any) -> _Problems:
        return [] if value > bound else [(key, f"must be greater than {bound}, got {shown(value)}")]

    return check


def _between(low: int, high: int) -> _Check:
    def check(key: str, value: Any) -> _Problems:
        if low <= value <= high:
            return []
        return [(key, f"must be between {low} and {high}, got {shown(value)}")]

    return check


def _non_empty(key: str, value: Any) -> _Problems:
    return [] if value else [(key, "must not be empty")]


def _each(check: _Check) -> _Check:
    def check_each(key: str, values: Any) -> _Problems:
        return [problem for i, item in enumerate(values) for problem in check(f"{key}[{i}]", item)]

    return check_each


def _queue_names(key: str, values: Any) -> _Problems:
    if not values:
        # An empty list would claim nothing at all; None (the default) claims every queue.
        return [(key, "must name at least one queue (leave it out to run every queue)")]
    return _each(_non_empty)(key, values)


def _starts_with(prefix: str) -> _Check:
    def check(key: str, value: Any) -> _Problems:
        return [] if value.startswith(prefix) else [(key, f"must start with {prefix!r}")]

    return check


# fullmatch, not ^...$: "$" also matches before a trailing newline.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,56}")


def _check_schema_name(key: str, value: Any) -> _Problems:
    # The name is composed into SQL as an identifier and into NOTIFY channel names; a plain,
    # short, lowercase one never needs quoting and always fits PostgreSQL's 63-byte limit.
    if not _SCHEMA_NAME.fullmatch(value):
        rule = "1 to 57 lowercase letters, digits or underscores, not starting with a digit"
        return [(key, f"{shown(value)} must be {rule}")]
    if value.startswith("pg_"):
        return [(key, f"{shown(value)}: names starting with 'pg_' are reserved by PostgreSQL")]
    if value == "information_schema":
        return [(key, "'information_schema' belongs to PostgreSQL (the SQL-standard catalog "
                      "views); choose a schema of Skivi's own")]
    return []


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _check_tasks(key: str, tasks: Any) -> _Problems:
    # Tables are inline JSON Schemas and are compiled by the registry, which reports their errors
    # with the schema in hand; here only the import-path strings can be checked cheaply.
    return [
        (f"{key}.{task}", f"{shown(spec)} is not an import path like 'package.module:attr'")
        for task, spec in tasks.items()
        if isinstance(spec, str) and not _IMPORT_PATH.fullmatch(spec)
    ]


def _setting(default: Any, check: _Check | None = None) -> Any:
    """Declare a field: its default and the check its value must pass once its type is right."""
    metadata = {"check": check} if check else {}
    if isinstance(default, types.MappingProxyType):
        # dataclasses refuses unhashable defaults; a factory returning the shared read-only
        # mapping is just as safe.
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Rule(NamedTuple):
    """A constraint between fields of one section, reported against the last of ``keys``."""

    keys: tuple[str, ...]
    holds: Callable[..., bool]
    message: str
    """``str.format``-ed with the section's values, by field name."""


# --- sections -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    """``[database]``: where Skivi's tables live and how the parent connects to them."""

    child_enqueue: Literal["parent", "pool"] = _setting(CHILD_ENQUEUE_DEFAULT)
    """How a handler's ``ctx.add_job`` / ``ctx.add_job_async`` without ``conn=`` reaches the
    database. "parent": the child sends the checked jobs to its engine's parent, which
    inserts them on its one shared connection (``skivi.engine.relay``), so the children
    cost the server no connection at all; each such enqueue must finish within half what a
    heartbeat may be late, (worker.lease_timeout - worker.heartbeat_interval) / 2, or it
    fails with nothing stored (the heartbeat waits for that connection). "pool": each
    child opens its own pool of ``child_pool_size`` connections on first use, for handlers
    that enqueue many jobs per call, or so often that their enqueues should not wait behind
    the engine's claims and completions. A ``conn=`` call always uses the handler's own
    connection. Default: "parent"."""

    child_pool_size: int = _setting(CHILD_POOL_SIZE_DEFAULT, _at_least(1))
    """With ``child_enqueue = "pool"``: most connections each engine child opens for
    ``ctx.add_job`` (one pool per kind of handler that enqueues: sync, async), made on first
    use; the engine then costs processes x this (x2 if both kinds enqueue) more. Unused
    with "parent". Default: 1."""

    connect_timeout: float = _setting(CONNECT_TIMEOUT_DEFAULT, _greater_than(0))
    """Seconds to wait for a new connection. Default: 10.0."""

    connection_string: str | None = _setting(CONNECTION_STRING_DEFAULT, _non_empty)
    """libpq connection string or URL. SKIVI_DATABASE_URL, then DATABASE_URL, override it. None
    after :func:`load_config` means none was given anywhere, and the caller decides what to do
    (the CLI starts an embedded PostgreSQL). Default: None."""

    listen: bool = _setting(LISTEN_DEFAULT)
    """Whether an engine LISTENs for wake-ups (a new job, a freed serial queue): on its
    claim connection between claims, or on ``listen_url``'s connection when given. False:
    it polls every worker.poll_interval, and a job waits up to that long when the engine
    is idle (a busy engine claims again as soon as it has room either way). Behind a
    transaction-mode pooler, LISTEN must go straight to the server or through a
    session-mode pool: give ``listen_url``, or set this false. Default: true."""

    listen_url: str | None = _setting(LISTEN_URL_DEFAULT, _non_empty)
    """Where LISTEN goes, on a connection of its own; None: the claim connection LISTENs. A
    direct (or session-mode pooler) URL of the same database, for engines whose
    ``connection_string`` is a transaction-mode pooler. Default: None."""

    migration_lock_timeout: float = _setting(MIGRATION_LOCK_TIMEOUT_DEFAULT, _greater_than(0))
    """Seconds a migrator (``skivi migrate``, an engine or ``start()`` with pending
    migrations) waits for the migration lock another session holds. While it waits it logs
    who holds it (backend pid, application, since when) every 10 s; then it gives up with
    a MigrationError (exit code 3). Raise it if one of your migrations may take longer.
    Default: 300.0."""

    pool_max_size: int = _setting(POOL_MAX_SIZE_DEFAULT, _at_least(1))
    """Most connections in the parent's pool. Default: 4."""

    prepared_statements: bool = _setting(PREPARED_STATEMENTS_DEFAULT)
    """Whether Skivi's connections (the enqueue pools, the engine's, the cron process's) may
    prepare statements (psycopg prepares one after 5 runs on a connection; the claim and
    completion at once). Set false behind a transaction-mode pooler that cannot keep
    prepared statements (PgBouncer before 1.21, or without max_prepared_statements): every
    statement is then sent whole. Default: true."""

    schema_name: str = _setting(SCHEMA_NAME_DEFAULT, _check_schema_name)
    """Schema holding Skivi's tables: a plain lowercase identifier of at most 57 characters, so the
    NOTIFY channels named after it (``<schema>:jobs``) fit PostgreSQL's 63-byte limit.
    Default: "skivi"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsConfig:
    """``[events]``: the in-memory record of recent events."""

    buffer_size: int = _setting(BUFFER_SIZE_DEFAULT, _at_least(0))
    """Recent events kept in the ring buffer; 0 keeps none. Default: 1000."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus exporter."""

    host: str = _setting(HOST_DEFAULT, _non_empty)
    """Address the exporter listens on. Default: "127.0.0.1"."""

    max_queue_labels: int = _setting(MAX_QUEUE_LABELS_DEFAULT, _at_least(0))
    """Most queue names that get series of their own (the ``queue`` label): the first ones this
    engine sees, those of ``worker.queues`` first, kept until it restarts. Jobs of any further
    queue are counted under the label value ``__other__`` (``skivi.metrics.OTHER``), as are jobs
    of tasks without a handler, so producers cannot grow the scrape however many names they
    use. Jobs without a queue (label ``""``) never count against it. 0: every named queue is
    ``__other__``. Default: 100."""

    port: int = _setting(PORT_DEFAULT, _between(0, 65535))
    """Port the exporter listens on; 0 disables the exporter. Default: 0."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationConfig:
    """``[validation]``: what enqueue refuses before a payload reaches the database."""

    max_payload_bytes: int = _setting(MAX_PAYLOAD_BYTES_DEFAULT, _at_least(1))
    """Largest encoded payload accepted. Default: 1048576 (1 MiB)."""

    tasks: Mapping[str, str | Mapping[str, Any]] = _setting(TASKS_DEFAULT, _check_tasks)
    """Payload schema per task identifier: an import path ``"package.module:attr"`` or an inline
    JSON Schema table. Read-only. Only the import paths' shape is checked here; the registry
    loads and compiles them. Default: empty."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """``[worker]``: the engine's processes, how it claims jobs and how it finishes them."""

    batch_size: int = _setting(BATCH_SIZE_DEFAULT, _at_least(1))
    """Most jobs one claim query takes, and most jobs the engine holds beyond what its children
    can run (its prefetch). The prefetch follows the engine's own rate: about 0.2 s of the
    work it has been finishing, so an engine of tiny jobs claims up to this many at once and
    one of long jobs holds few beyond what it runs. Below ``concurrency`` logs a warning,
    since then one claim can never fill a single child. Default: 4000."""

    batch_max_bytes: int = _setting(BATCH_MAX_BYTES_DEFAULT, _at_least(1))
    """Most payload bytes (job messages) the engine holds claimed and not yet started: a
    claim takes at most what is left of it (and always at least one job), so the engine's
    memory stays bounded whatever payloads producers send. Default: 16777216 (16 MiB)."""

    cancel_grace: float = _setting(CANCEL_GRACE_DEFAULT, _greater_than(0))
    """Seconds a running job whose cancel was requested (``skivi.cancel_jobs``) may take to
    end once its process knows (an async handler got CancelledError, a sync one sees
    ``ctx.cancelled``); then its child process is killed, the job is recorded as cancelled
    and the child's other jobs go back without losing an attempt. Default: 10.0."""

    completion_batch_size: int = _setting(COMPLETION_BATCH_SIZE_DEFAULT, _at_least(1))
    """Most results one completion statement writes. Default: 1000."""

    completion_interval: float = _setting(COMPLETION_INTERVAL_DEFAULT, _at_least(0))
    """Seconds the completer waits to gather more results into one write; 0 writes at once.
    Default: 0.005."""

    concurrency: int = _setting(CONCURRENCY_DEFAULT, _at_least(1))
    """Jobs one child process runs at once. Default: 16."""

    file_extensions: tuple[str, ...] = _setting(FILE_EXTENSIONS_DEFAULT, _each(_starts_with(".")))
    """Suffixes of the files in ``task_directory`` that are loaded as tasks. Default: (".py",)."""

    forbidden_flags: tuple[str, ...] = _setting(FORBIDDEN_FLAGS_DEFAULT)
    """Jobs carrying any of these flags are not claimed. Default: ()."""

    heartbeat_interval: float = _setting(HEARTBEAT_INTERVAL_DEFAULT, _greater_than(0))
    """Seconds between the parent's liveness heartbeats (one tiny UPDATE each, on the
    database's clock). Default: 0.5."""

    history: bool = _setting(HISTORY_DEFAULT)
    """Keep completed jobs in the history table instead of only deleting them. Default: False."""

    history_retention: float = _setting(HISTORY_RETENTION_DEFAULT, _greater_than(0))
    """Seconds a history row is kept before it is pruned. Default: 604800.0 (7 days)."""

    job_timeout: float | None = _setting(JOB_TIMEOUT_DEFAULT, _greater_than(0))
    """Seconds a job may run before it fails as timed out; None means no limit. It may exceed
    ``lease_timeout``: the parent keeps heartbeating while its jobs run. Default: None."""

    lease_timeout: float = _setting(LEASE_TIMEOUT_DEFAULT, _greater_than(0))
    """Seconds without a heartbeat after which other engines rescue this engine's running jobs
    (the engine is then dead: its lease expired); must exceed ``heartbeat_interval``. With
    the defaults a killed engine's jobs run again within 4 s (lease plus one rescue
    interval). A parent whose event loop or host stalls longer than this is declared dead
    and its jobs run again elsewhere (its own late results are refused): raise it on hosts
    that stall. Default: 3.0."""

    limits_lookahead: int = _setting(LIMITS_LOOKAHEAD_DEFAULT, _at_least(1))
    """How many runnable jobs a claim reads at most, in claim order, while jobs are held back
    by their limits ([[limits]]): a claim reads one batch while nothing is held back, and
    deepens (x4 per claim, up to this) while jobs are, so another key's job behind a
    saturated key's backlog is found within a claim round or two. Jobs behind a deeper
    backlog of held-back jobs wait until it shrinks. Default: 10000."""

    max_result_buffer: int = _setting(MAX_RESULT_BUFFER_DEFAULT, _at_least(1))
    """Most finished-job results held waiting for the completer before the parent stops handing
    out jobs. Default: 10000."""

    poll_interval: float = _setting(POLL_INTERVAL_DEFAULT, _greater_than(0))
    """Seconds between claims when no notification arrives; the fallback for lost NOTIFYs.
    Default: 1.0."""

    processes: int = _setting(PROCESSES_DEFAULT, _at_least(0))
    """Child processes; 0 means the CPUs this process may use, container limits included
    (its CPU affinity, capped by a cgroup v2 CPU quota: see
    ``skivi.engine.process.available_cpus``). Default: 0."""

    queues: tuple[str, ...] | None = _setting(QUEUES_DEFAULT, _queue_names)
    """Claim only jobs in these queues; None claims from every queue. Default: None."""

    rescue_interval: float = _setting(RESCUE_INTERVAL_DEFAULT, _greater_than(0))
    """Seconds between scans for running jobs of dead engines (the engine table; jobs held
    by an engine without a row are probed every tenth round). Default: 0.5."""

    result_retention: float = _setting(RESULT_RETENTION_DEFAULT, _greater_than(0))
    """Seconds a kept result (``store_results``, a task's ``store_result``) is kept after its
    job finished, then pruned (by the history pruner, every minute, or every half of this
    when it is shorter than two minutes). Default: 86400.0 (1 day)."""

    shutdown_timeout: float = _setting(SHUTDOWN_TIMEOUT_DEFAULT, _at_least(0))
    """Seconds a graceful shutdown waits for running jobs before giving them up. Default: 30.0."""

    store_results: bool = _setting(STORE_RESULTS_DEFAULT)
    """Keep the return value of every task's jobs (JSON), or the last error of those
    exhausted, for ``skivi.get_result`` and ``skivi.wait_for``, ``result_retention``
    seconds; a task's own ``store_result`` wins. Without it, finishing a job writes exactly
    what it did before results existed. Default: False."""

    sync_prefetch: int = _setting(SYNC_PREFETCH_DEFAULT, _at_least(1))
    """Most sync jobs of short tasks (measured under 0.5 ms a run) a child is handed at once,
    waiting there behind the one running, up to 2 ms of their expected work per sync thread:
    a run of tiny jobs then costs the parent one hand-over per this many. Jobs of longer (or
    not yet measured) tasks are handed one per free sync thread whatever this is, and a
    job handed but not started goes back untouched if its child dies. Default: 64."""

    sync_threads: int = _setting(SYNC_THREADS_DEFAULT, _at_least(1))
    """Threads per child that run synchronous handlers. Default: 1."""

    task_directory: str | None = _setting(TASK_DIRECTORY_DEFAULT, _non_empty)
    """Directory whose files are loaded as tasks; None loads none. Default: None."""

    unknown_tasks: Literal["exhaust", "skip"] = _setting(UNKNOWN_TASKS_DEFAULT)
    """What happens to a claimed job whose task this engine lacks: "exhaust" fails it for good,
    "skip" leaves it for an engine that has the task. Default: "exhaust"."""

    _rules: ClassVar[tuple[_Rule, ...]] = (
        _Rule(
            ("heartbeat_interval", "lease_timeout"),
            lambda heartbeat, lease: lease > heartbeat,
            "must be greater than worker.heartbeat_interval ({heartbeat_interval}), or a healthy "
            "engine's jobs are rescued between two heartbeats",
        ),
    )
    _advice: ClassVar[tuple[_Rule, ...]] = (
        _Rule(
            ("concurrency", "batch_size"),
            lambda concurrency, batch: batch >= concurrency,
            "{batch_size} is smaller than worker.concurrency ({concurrency}), so one claim can "
            "never fill even one child",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration: one attribute per ``skivi.toml`` section."""

    cron: tuple[Mapping[str, Any], ...] = _setting(CRON_DEFAULT)
    """The ``[[cron]]`` tables as written, read-only, in file order; :mod:`skivi.cron` validates
    them. Default: ()."""

    database: DatabaseConfig = dataclasses.field(default_factory=DatabaseConfig)
    events: EventsConfig = dataclasses.field(default_factory=EventsConfig)
    limits: tuple[Mapping[str, Any], ...] = _setting(LIMITS_DEFAULT)
    """The ``[[limits]]`` tables as written, read-only, in file order: concurrency and rate
    limits by key; :mod:`skivi.limit` validates them. Default: ()."""
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    worker: WorkerConfig = dataclasses.field(default_factory=WorkerConfig)

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars in the shape of ``skivi.toml``; accepted by
        :func:`load_config`."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


# --- loading ------------------------------------------------------------------------------------


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from defaults < ``source`` < ``env`` < ``overrides``.

    ``source`` is a TOML file path, a dict shaped like the file, a :class:`Config`, or None for
    the defaults. ``env`` defaults to ``os.environ``. ``overrides`` maps dotted keys to values;
    None values are skipped so CLI flags that were not given can be passed as they are.

    The environment overrides a FILE (and the defaults). A dict or Config given in code is
    explicit: there the environment only fills the keys it leaves out (so
    ``{"database": {"schema_name": "x"}}`` still takes its URL from ``DATABASE_URL``, but a
    stray ``SKIVI_SCHEMA`` never moves code that names its schema).

    Raises :class:`~skivi.errors.ConfigError` listing every problem found.
    """
    raw = _read_source(source)
    in_code = isinstance(source, Mapping | Config)
    problems: _Problems = []
    origins: dict[str, str] = {}
    for key, value, origin in _from_env(os.environ if env is None else env, problems):
        if in_code and _present(raw, key):
            continue
        if _assign(raw, key, value):
            origins[key] = origin
    for key, value, origin in _from_overrides(overrides or {}, problems):
        if _assign(raw, key, value):
            origins[key] = origin
    config: Config = _convert(raw, Config, "", problems)
    if problems:
        raise ConfigError([_describe_problem(key, msg, origins) for key, msg in sorted(problems)])
    _advise(config)
    return config


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any] | Config | None) -> Any:
    if source is None:
        return {}
    if isinstance(source, Config):
        return source.as_dict()
    if isinstance(source, Mapping):
        # Copy each section so that env and overrides never write into the caller's dicts.
        return {
            name: dict(value) if isinstance(value, Mapping) else value
            for name, value in source.items()
        }
    path = os.fspath(source)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


@functools.cache
def _settings() -> Mapping[str, Any]:
    """Every settable dotted key -> its type hint."""
    found: dict[str, Any] = {}

    def walk(cls: Any, prefix: str) -> None:
        hints = get_type_hints(cls)
        for field in dataclasses.fields(cls):
            key, hint = f"{prefix}{field.name}", hints[field.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{key}.")
            else:
                found[key] = hint

    walk(Config, "")
    return types.MappingProxyType(found)


def _from_env(env: Mapping[str, str], problems: _Problems) -> list[tuple[str, Any, str]]:
    found: list[tuple[str, Any, str]] = []
    for key, names in ENV_VARIABLES.items():
        # Empty counts as unset: `FOO=` in a compose file or a shell is how people blank a variable.
        name = next((name for name in names if env.get(name)), None)
        if name is None:
            continue
        text = env[name]
        hint = _settings()[key]
        value = _parse_env(text, hint)
        if value is _INVALID:
            problems.append((key, f"{name}={shown(text)} is not {_env_format(hint)}"))
        else:
            found.append((key, value, name))
    return found


def _parse_env(text: str, hint: Any) -> Any:
    hint = _without_none(hint)
    if get_origin(hint) is tuple:
        (item_hint, _) = get_args(hint)
        return [_parse_env(part.strip(), item_hint) for part in text.split(",") if part.strip()]
    if hint is bool:
        return {"true": True, "1": True, "false": False, "0": False}.get(text.lower(), _INVALID)
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            return _INVALID
    return text


def _env_format(hint: Any) -> str:
    hint = _without_none(hint)
    if hint is bool:
        return "a boolean (true, false, 1 or 0)"
    if get_origin(hint) is tuple:
        return "a comma-separated list"
    return _expected(hint)


def _from_overrides(
    overrides: Mapping[str, Any], problems: _Problems
) -> list[tuple[str, Any, str]]:
    found: list[tuple[str, Any, str]] = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _settings():
            found.append((key, value, "overrides"))
        else:
            problems.append((key, _unknown(key, _settings(), "key")))
    return found


def _present(raw: Mapping[str, Any], key: str) -> bool:
    """Whether the raw tree sets the dotted key."""
    table: Any = raw
    for part in key.split("."):
        if not isinstance(table, Mapping) or part not in table:
            return False
        table = table[part]
    return True


def _assign(raw: dict[str, Any], key: str, value: Any) -> bool:
    """Set a dotted key in the raw tree; False when a non-table is in the way (already a problem
    that validation will report)."""
    *sections, name = key.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
        if not isinstance(table, dict):
            return False
    table[name] = value
    return True


def _describe_problem(key: str, message: str, origins: Mapping[str, str]) -> str:
    origin = next(
        (
            origin
            for set_key, origin in origins.items()
            if key == set_key or key.startswith((f"{set_key}.", f"{set_key}["))
        ),
        None,
    )
    return f"{key}: {message}" + (f" (from {origin})" if origin else "")


def _advise(config: Config) -> None:
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        for rule in getattr(value, "_advice", ()):
            values = {name: getattr(value, name) for name in rule.keys}
            if not rule.holds(*values.values()):
                logger.warning(
                    "%s.%s: %s",
                    section.name,
                    rule.keys[-1],
                    rule.message.format(**values),
                    extra={"action": "warn_config"},
                )


# --- type conversion ----------------------------------------------------------------------------


def _convert(value: Any, hint: Any, key: str, problems: _Problems) -> Any:
    """Check ``value`` against the type ``hint``, recording problems under ``key``, and return it
    in the field's own type (lists become tuples, tables become read-only mappings)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, problems)
    if origin in (Union, types.UnionType):
        return _convert_union(value, hint, key, problems)
    if hint is Any:
        return value
    if origin is Literal:
        if isinstance(value, str) and value in get_args(hint):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            (item_hint, _) = get_args(hint)
            items = [
                _convert(item, item_hint, f"{key}[{i}]", problems) for i, item in enumerate(value)
            ]
            # Bad items are already reported; dropping them lets the field's check still judge
            # the good ones, so one bad item does not hide problems in the others.
            return tuple(item for item in items if item is not _INVALID)
    elif origin is Mapping:
        if isinstance(value, Mapping):
            (name_hint, item_hint) = get_args(hint)
            table = {}
            for name, item in value.items():
                where = f"{key}.{name}"
                good_name = _convert(name, name_hint, where, problems)
                good_item = _convert(item, item_hint, where, problems)
                if good_name is not _INVALID and good_item is not _INVALID:
                    table[good_name] = good_item
            return types.MappingProxyType(table)
    elif hint is float:
        # TOML writes whole seconds as integers; nan/inf would slip past every bound check.
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    problems.append((key, f"expected {_expected(hint)}, got {_got(value)}"))
    return _INVALID


def _convert_union(value: Any, hint: Any, key: str, problems: _Problems) -> Any:
    options = get_args(hint)
    if value is None and type(None) in options:
        return None
    candidates = [option for option in options if option is not type(None)]
    if len(candidates) == 1:
        return _convert(value, candidates[0], key, problems)
    for option in candidates:
        scratch: _Problems = []
        result = _convert(value, option, key, scratch)
        if not scratch:
            return result
    problems.append((key, f"expected {_expected(hint)}, got {_got(value)}"))
    return _INVALID


def _build(cls: Any, raw: Any, prefix: str, problems: _Problems) -> Any:
    """Make a ``cls`` from a table, checking names, types, values and the section's rules."""
    if not isinstance(raw, Mapping):
        problems.append((prefix, f"expected a table, got {_got(raw)}"))
        return _INVALID
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    known = [_join(prefix, name) for name in fields]
    what = "key" if prefix else "section"
    for name in raw:
        if name not in fields:
            problems.append((_join(prefix, str(name)), _unknown(str(name), known, what)))
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in raw:
            continue
        key = _join(prefix, name)
        found: _Problems = []
        value = _convert(raw[name], hints[name], key, found)
        check = field.metadata.get("check")
        if check is not None and value is not None and value is not _INVALID:
            found.extend(check(key, value))
        if found:
            problems.extend(found)
        else:
            values[name] = value
    # Fields that failed fall back to their defaults here; a rule is only judged on values the
    # user actually got right, so it never blames a default they did not choose.
    instance = cls(**values)
    failed = {name for name in fields if name in raw and name not in values}
    for rule in getattr(cls, "_rules", ()):
        if failed.intersection(rule.keys):
            continue
        current = {name: getattr(instance, name) for name in rule.keys}
        if not rule.holds(*current.values()):
            problems.append((_join(prefix, rule.keys[-1]), rule.message.format(**current)))
    return instance


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown(name: str, known: Iterable[str], what: str) -> str:
    # Match on the last part only, so a key put in the wrong section ("database.processes")
    # still finds its real home ("worker.processes").
    last = name.rpartition(".")[2]
    candidates = {candidate.rpartition(".")[2]: candidate for candidate in known}
    match = difflib.get_close_matches(last, candidates, n=1)
    hint = f"; did you mean {candidates[match[0]]!r}?" if match else ""
    return f"unknown {what}{hint}"


_NOUNS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _noun(hint: Any) -> str:
    if get_origin(hint) is Mapping or dataclasses.is_dataclass(hint):
        return "table"
    if get_origin(hint) is tuple:
        return f"list of {_noun(get_args(hint)[0])}s"
    return _NOUNS.get(hint, getattr(hint, "__name__", str(hint)))


def _expected(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        return " or ".join(_expected(option) for option in options)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(hint))
    noun = _noun(hint)
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _got(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    for kind, noun in _NOUNS.items():
        if isinstance(value, kind):
            return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} ({shown(value)})"
    return f"a {type(value).__name__}"


def _without_none(hint: Any) -> Any:
    options = [option for option in get_args(hint) if option is not type(None)]
    if get_origin(hint) in (Union, types.UnionType) and len(options) == 1:
        return options[0]
    return hint
