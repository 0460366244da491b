"""Prometheus metrics of a worker engine. The only module that imports prometheus_client.

The engine's parent process owns one :class:`EngineMetrics` (its own ``CollectorRegistry``,
never the global one) and serves it with :func:`start_exporter` on ``metrics.host``:
``metrics.port`` (``--metrics-port``; 0 disables). Children never touch prometheus_client:
job counts and timings come from the result rows the parent's completer wrote, so with any
number of children the figures are the jobs actually processed, and no multiprocess mode,
shared directory or per-pid file is involved. The engine feeds these metrics through
:class:`skivi.engine.observer.EngineObserver`, aggregated per completion flush (one counter
increment per (task, queue, outcome) and one locked histogram update per task and flush).

Catalogue
---------

Counters (``rate()`` them):

==================================  ========================  ================================
name                                labels                    meaning
==================================  ========================  ================================
skivi_jobs_total                    task, queue, outcome      finished attempts written to the
                                                              database; outcome is completed,
                                                              failed (will retry), partial
                                                              (batch job, failed items retry),
                                                              exhausted (moved to history) or
                                                              cancelled (its cancel was
                                                              requested while it was claimed)
skivi_job_results_stale_total                                 results the database refused: the
                                                              job had been rescued from this
                                                              engine (its claim was lost)
skivi_jobs_dispatched_total                                   jobs handed to child processes
skivi_jobs_rescued_total            outcome                   jobs of dead engines this engine's
                                                              rescuer handled: retried or
                                                              exhausted
skivi_child_replacements_total                                child processes that died and were
                                                              replaced
skivi_cron_fires_total              identifier, outcome       cron ticks this engine's cron
                                                              process sent to the database, by
                                                              outcome: fired (job enqueued),
                                                              already_fired (another engine
                                                              won the tick),
                                                              previous_run_active (skipped)
skivi_db_connection_losses_total    connection                times a parent connection broke
skivi_event_handler_errors_total                              event handlers that raised
==================================  ========================  ================================

Histograms (``_bucket``, ``_sum``, ``_count``):

==================================  ========================  ================================
skivi_job_run_seconds               task                      handler run time of every
                                                              finished attempt; buckets 1 ms
                                                              to 10 min
skivi_job_wait_seconds              task                      queue wait: from run_at to the
                                                              start of the attempt (measured by
                                                              the child); buckets 1 ms to 1 h
skivi_claim_batch_size                                        jobs per claim that found any
skivi_completion_batch_size                                   results per completion flush
==================================  ========================  ================================

Gauges:

==================================  ========================  ================================
skivi_jobs_in_flight                                          jobs handed to children and not
                                                              yet reported finished
skivi_jobs_capacity                                           job slots of the live children:
                                                              per child, concurrency async
                                                              slots and max(sync_threads,
                                                              concurrency, sync_prefetch)
                                                              sync ones, for the
                                                              lanes its tasks use
skivi_child_processes                                         child processes alive
skivi_db_connection_up              connection                1 while that parent connection
                                                              works, 0 while it is lost
skivi_queue_jobs                    queue, state              jobs by state: waiting (runnable
                                                              now), scheduled (run_at in the
                                                              future), running (started, as
                                                              reported by its engine's
                                                              heartbeat), claimed (claimed by
                                                              an engine, not reported started)
skivi_queue_oldest_job_age_seconds  queue                     now - run_at of the oldest
                                                              runnable job (0 when none)
skivi_queue_paused                  queue                     1 while the queue is paused
                                                              (skivi queues pause; queue ""
                                                              is the parallel queue,
                                                              @parallel), 0 for the other
                                                              queues with jobs
skivi_queue_stats_leader                                      1 if this engine computed the
                                                              queue_* metrics on its last poll
skivi_build_info                    version                   always 1
==================================  ========================  ================================

Plus the standard ``process_*`` metrics of the engine's parent (CPU, memory, open files).

Labels stay bounded whatever producers enqueue, since producers choose task and queue names
and a series per name would grow the scrape without limit:

- ``task``: the tasks registered with this engine. Jobs of any other task (exhausted as
  no_handler) are counted under ``__other__``
  (:data:`OTHER`).
- ``queue``: ``""`` for jobs without a queue (the empty string can never clash with a real
  queue, whose names have at least one character, as "default" could), then at most
  ``metrics.max_queue_labels`` (default 100) queue names: those of ``worker.queues`` first,
  then the first ones this engine sees, in results or in the depth poll, kept until it
  restarts. Every further queue is counted under ``__other__``: its jobs are summed, its
  oldest age is the oldest of them. The same names apply to the job counters and to the
  ``skivi_queue_*`` gauges, so both show the same queues.
- ``outcome`` and ``state``: fixed sets written by the engine, never by producers.
- ``identifier``: the cron entries of the engine's configuration (operators write them).
- ``connection``: the parent's connection names; ``version``: one.

Never a job id, a payload or an error text. The collision rule: ``__other__`` is a legal
task identifier and queue name (both accept any 1 to 128 characters), so a task or queue
really named ``__other__`` is counted with the others rather than on a series of its own.
Mapping a name is a dict lookup per (task, queue, outcome) group of a completion flush,
never per job.

The ``skivi_queue_*`` depth metrics come from ``job_stats.sql``, polled every few seconds by
one engine at a time (the leader: the live engine with the smallest id); the others export
none of them, so ``max by (queue, state)`` or ``sum`` over engines both give the figures. The
query's header documents its cost and when the waiting count becomes an estimate.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from skivi.config import MAX_QUEUE_LABELS_DEFAULT

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from skivi.events import Emitter

__all__ = [
    "BATCH_BUCKETS",
    "METRICS",
    "OTHER",
    "RUN_BUCKETS",
    "WAIT_BUCKETS",
    "EngineMetrics",
    "QueueStats",
    "start_exporter",
    "stop_exporter",
]

RUN_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0)
"""Seconds: 1 ms to 10 minutes."""
WAIT_BUCKETS: tuple[float, ...] = (*RUN_BUCKETS, 1800.0, 3600.0)
"""Seconds: 1 ms to 1 hour (a backlog waits longer than a job runs)."""
BATCH_BUCKETS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

METRICS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "skivi_build_info": ("gauge", ("version",)),
    "skivi_child_processes": ("gauge", ()),
    "skivi_child_replacements_total": ("counter", ()),
    "skivi_claim_batch_size": ("histogram", ()),
    "skivi_completion_batch_size": ("histogram", ()),
    "skivi_cron_fires_total": ("counter", ("identifier", "outcome")),
    "skivi_db_connection_losses_total": ("counter", ("connection",)),
    "skivi_db_connection_up": ("gauge", ("connection",)),
    "skivi_event_handler_errors_total": ("counter", ()),
    "skivi_job_results_stale_total": ("counter", ()),
    "skivi_job_run_seconds": ("histogram", ("task",)),
    "skivi_job_wait_seconds": ("histogram", ("task",)),
    "skivi_jobs_capacity": ("gauge", ()),
    "skivi_jobs_dispatched_total": ("counter", ()),
    "skivi_jobs_in_flight": ("gauge", ()),
    "skivi_jobs_rescued_total": ("counter", ("outcome",)),
    "skivi_jobs_total": ("counter", ("task", "queue", "outcome")),
    "skivi_queue_jobs": ("gauge", ("queue", "state")),
    "skivi_queue_oldest_job_age_seconds": ("gauge", ("queue",)),
    "skivi_queue_paused": ("gauge", ("queue",)),
    "skivi_queue_stats_leader": ("gauge", ()),
}
"""Every metric this module exports: name -> (type, label names). The catalogue above
describes each; a contract test checks that dashboards and alert rules use only these."""

QueueStats = Sequence[tuple[str, int, int, int, int, float | None]]
"""Rows of job_stats.sql: (queue, waiting, scheduled, running, claimed, oldest runnable
age)."""

OTHER = "__other__"
"""The ``task`` label of jobs of unregistered tasks, and the ``queue`` label of queues past
``metrics.max_queue_labels`` (see the module docstring for the collision rule)."""

_STATES = ("waiting", "scheduled", "running", "claimed")


class _LabelValues:
    """Producer-chosen task and queue names -> a bounded set of label values.

    Called only on the engine's event loop (the observer and the stats poller), so the
    check-then-insert on ``_queues`` needs no lock. Queues past the cap are not remembered:
    memory stays bounded too, and their lookup is one dict miss and a length check.
    """

    def __init__(self, tasks: Iterable[str], queues: Iterable[str], max_queues: int) -> None:
        self._tasks = {t: t for t in tasks if t != OTHER}
        self._queues: dict[str, str] = {"": ""}
        self._max_queues = max_queues
        for queue in queues:
            self.queue(queue)

    def task(self, name: str) -> str:
        return self._tasks.get(name, OTHER)

    def queue(self, name: str) -> str:
        label = self._queues.get(name)
        if label is not None:
            return label
        # "" is in the dict from the start and does not count against the cap.
        if len(self._queues) > self._max_queues or name == OTHER:
            return OTHER
        self._queues[name] = name
        return name


class _BatchHistogram:
    """A histogram with one label, fed a whole batch of observations per call.

    prometheus_client's Histogram takes a lock per observation (~0.8 us); the engine
    observes two values per job at tens of thousands of jobs a second, so here a batch is
    bucketed without a lock (bisect, ~0.15 us a value) and merged under one lock.
    """

    def __init__(self, name: str, documentation: str, label: str,
                 buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = tuple(sorted(buckets))
        self._le = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # as prometheus_client
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe_many(self, value: str, observations: Iterable[float]) -> None:
        bounds = self.bounds
        counts = [0] * (len(bounds) + 1)
        total = 0.0
        where = bisect.bisect_left
        for x in observations:
            counts[where(bounds, x)] += 1
            total += x
        with self._lock:
            series = self._series.get(value)
            if series is None:
                self._series[value] = (counts, [total])
                return
            mine, sums = series
            for i, n in enumerate(counts):
                if n:
                    mine[i] += n
            sums[0] += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [(v, list(c), s[0]) for v, (c, s) in self._series.items()]
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, counts, total in snapshot:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._le, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric([value], buckets, total)
        yield family


class _QueueStatsCollector:
    """The database-derived gauges, replaced whole on every poll (a scrape never sees half
    of one poll and half of the next)."""

    def __init__(self) -> None:
        self.rows: tuple[tuple[str, int, int, int, int, float | None], ...] = ()
        self.paused: frozenset[str] = frozenset()  # queue labels
        self.leader = False

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("skivi_queue_jobs", _DOC["skivi_queue_jobs"],
                                labels=["queue", "state"])
        yield GaugeMetricFamily("skivi_queue_oldest_job_age_seconds",
                                _DOC["skivi_queue_oldest_job_age_seconds"], labels=["queue"])
        yield GaugeMetricFamily("skivi_queue_paused", _DOC["skivi_queue_paused"],
                                labels=["queue"])
        yield GaugeMetricFamily("skivi_queue_stats_leader", _DOC["skivi_queue_stats_leader"])

    def collect(self) -> Iterator[Metric]:
        rows, paused, leader = self.rows, self.paused, self.leader
        jobs = GaugeMetricFamily("skivi_queue_jobs", _DOC["skivi_queue_jobs"],
                                 labels=["queue", "state"])
        age = GaugeMetricFamily("skivi_queue_oldest_job_age_seconds",
                                _DOC["skivi_queue_oldest_job_age_seconds"], labels=["queue"])
        for queue, waiting, scheduled, running, claimed, oldest in rows:
            for state, n in zip(_STATES, (waiting, scheduled, running, claimed), strict=True):
                jobs.add_metric([queue, state], n)
            age.add_metric([queue], oldest or 0.0)
        yield jobs
        yield age
        flags = GaugeMetricFamily("skivi_queue_paused", _DOC["skivi_queue_paused"],
                                  labels=["queue"])
        for queue in sorted({row[0] for row in rows} | paused):
            flags.add_metric([queue], 1.0 if queue in paused else 0.0)
        yield flags
        yield GaugeMetricFamily("skivi_queue_stats_leader", _DOC["skivi_queue_stats_leader"],
                                value=1.0 if leader else 0.0)


class _HandlerErrorsCollector:
    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("skivi_event_handler_errors",
                                  _DOC["skivi_event_handler_errors_total"])

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("skivi_event_handler_errors",
                                  _DOC["skivi_event_handler_errors_total"],
                                  value=self.emitter.handler_errors)


_DOC = {
    "skivi_event_handler_errors_total": "Event handlers that raised.",
    "skivi_queue_jobs": "Jobs by queue and state (waiting, scheduled, running), from the "
                        "database; exported by one engine at a time.",
    "skivi_queue_oldest_job_age_seconds": "Seconds since run_at of the oldest runnable job "
                                          "of the queue (0 when none); from the database.",
    "skivi_queue_paused": "1 while the queue is paused (queue \"\": the parallel queue).",
    "skivi_queue_stats_leader": "1 if this engine computed skivi_queue_* on its last poll.",
}


class EngineMetrics:
    """Every metric of one engine, in a registry of its own (``registry``)."""

    def __init__(self, version: str, emitter: Emitter | None = None,
                 registry: CollectorRegistry | None = None, *, tasks: Iterable[str] = (),
                 queues: Iterable[str] = (),
                 max_queue_labels: int = MAX_QUEUE_LABELS_DEFAULT) -> None:
        """``tasks``: the registered task identifiers (every other task is :data:`OTHER`);
        ``queues``: queue names to label first (``worker.queues``); ``max_queue_labels``:
        the ``metrics.max_queue_labels`` cap."""
        self.label_values = _LabelValues(tasks, queues, max_queue_labels)
        r = self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=r)
        self.build_info = Gauge("skivi_build_info", "Skivi version of this engine; always 1.",
                                ["version"], registry=r)
        self.build_info.labels(version).set(1)
        self.jobs = Counter("skivi_jobs_total", "Finished attempts written to the database, "
                            "by outcome (completed, failed, partial, exhausted, cancelled).",
                            ["task", "queue", "outcome"], registry=r)
        self.stale = Counter("skivi_job_results_stale_total", "Results refused by the "
                             "database because the job had been rescued from this engine.",
                             registry=r)
        self.dispatched = Counter("skivi_jobs_dispatched_total",
                                  "Jobs handed to child processes.", registry=r)
        self.rescued = Counter("skivi_jobs_rescued_total", "Jobs of dead engines handled by "
                               "this engine's rescuer (retried or exhausted).", ["outcome"],
                               registry=r)
        self.child_replacements = Counter("skivi_child_replacements_total",
                                          "Child processes that died and were replaced.",
                                          registry=r)
        self.cron_fires = Counter("skivi_cron_fires_total", "Cron ticks sent to the database, by "
                                  "entry and outcome (fired, already_fired, "
                                  "previous_run_active).", ["identifier", "outcome"],
                                  registry=r)
        self.connection_losses = Counter("skivi_db_connection_losses_total",
                                         "Times a parent database connection broke.",
                                         ["connection"], registry=r)
        self.connection_up = Gauge("skivi_db_connection_up", "1 while the parent database "
                                   "connection works, 0 while it is lost.", ["connection"],
                                   registry=r)
        self.run_seconds = _BatchHistogram("skivi_job_run_seconds", "Handler run time of "
                                           "finished attempts, in seconds.", "task",
                                           RUN_BUCKETS)
        self.wait_seconds = _BatchHistogram("skivi_job_wait_seconds", "Seconds from a job's "
                                            "run_at to the start of its attempt.", "task",
                                            WAIT_BUCKETS)
        r.register(self.run_seconds)
        r.register(self.wait_seconds)
        self.claim_batch = Histogram("skivi_claim_batch_size",
                                     "Jobs per claim query that found any.",
                                     buckets=BATCH_BUCKETS, registry=r)
        self.completion_batch = Histogram("skivi_completion_batch_size",
                                          "Results per completion flush.",
                                          buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("skivi_jobs_in_flight", "Jobs handed to children and not yet "
                               "reported finished.", registry=r)
        self.capacity = Gauge("skivi_jobs_capacity", "Jobs the live children can run at "
                              "once.", registry=r)
        self.children = Gauge("skivi_child_processes", "Child processes alive.", registry=r)
        self._queue_stats = _QueueStatsCollector()
        r.register(self._queue_stats)
        if emitter is not None:
            r.register(_HandlerErrorsCollector(emitter))

    # -- fed by the observer ---------------------------------------------------------
    def jobs_finished(self, counts: Mapping[tuple[str, str, str], int],
                      run_seconds: Mapping[str, list[float]],
                      wait_seconds: Mapping[str, list[float]], stale: int,
                      batch: bool = True) -> None:
        """One completion flush: attempts per (task, queue, outcome), run and wait times
        per task, and the number of results the database refused. Tasks and queues are
        the names in the results; they are mapped to bounded label values here, once per
        group, so the work per flush grows with its groups, never with the names seen."""
        task, queue = self.label_values.task, self.label_values.queue
        merged: dict[tuple[str, str, str], int] = {}
        for (t, q, outcome), n in counts.items():
            key = (task(t), queue(q), outcome)
            merged[key] = merged.get(key, 0) + n
        jobs = self.jobs
        for labels, n in merged.items():
            jobs.labels(*labels).inc(n)
        for label, parts in _by_label(run_seconds, task).items():
            self.run_seconds.observe_many(label, _joined(parts))
        for label, parts in _by_label(wait_seconds, task).items():
            self.wait_seconds.observe_many(label, _joined(parts))
        if stale:
            self.stale.inc(stale)
        if batch:  # not for a flush's cancelled claims: the flush was counted already
            self.completion_batch.observe(sum(counts.values()) + stale)

    def queue_stats(self, rows: QueueStats | None, paused: Iterable[str] = ()) -> None:
        """The latest job_stats.sql figures; None when this engine is not the leader (its
        queue_* series disappear). Queues past the cap are summed into :data:`OTHER`, with
        the oldest of their ages. ``paused``: the paused queues' names ("" for the parallel
        queue)."""
        stats = self._queue_stats
        stats.rows = _merge_queue_rows(rows or (), self.label_values.queue)
        stats.paused = frozenset(map(self.label_values.queue, paused)) if rows is not None \
            else frozenset()
        stats.leader = rows is not None

    def gauges(self, in_flight: int, capacity: int, children: int) -> None:
        self.in_flight.set(in_flight)
        self.capacity.set(capacity)
        self.children.set(children)


def _by_label(values: Mapping[str, list[float]],
              label: Callable[[str], str]) -> dict[str, list[list[float]]]:
    """Observations per task -> their lists per label value, unconcatenated: many tasks can
    share :data:`OTHER`, and joining their lists one by one would copy quadratically."""
    out: dict[str, list[list[float]]] = {}
    for name, observed in values.items():
        key = label(name)
        parts = out.get(key)
        if parts is None:
            out[key] = [observed]
        else:
            parts.append(observed)
    return out


def _joined(parts: list[list[float]]) -> Iterable[float]:
    # The usual case is one list: iterating it directly is faster than through a chain.
    return parts[0] if len(parts) == 1 else itertools.chain.from_iterable(parts)


def _merge_queue_rows(rows: QueueStats, label: Callable[[str], str]
                      ) -> tuple[tuple[str, int, int, int, int, float | None], ...]:
    merged: dict[str, tuple[str, int, int, int, int, float | None]] = {}
    for queue, waiting, scheduled, running, claimed, oldest in rows:
        key = label(queue)
        have = merged.get(key)
        if have is None:
            merged[key] = (key, waiting, scheduled, running, claimed, oldest)
            continue
        ages = [a for a in (have[5], oldest) if a is not None]
        merged[key] = (key, have[1] + waiting, have[2] + scheduled, have[3] + running,
                       have[4] + claimed, max(ages) if ages else None)
    return tuple(merged.values())


Health = Callable[[str], tuple[bool, str]]
"""Answers a probe path ("/healthz" or "/readyz") with (healthy, one line saying why)."""

HEALTH_PATHS = ("/healthz", "/readyz")


def start_exporter(host: str, port: int, registry: CollectorRegistry,
                   health: Health | None = None) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the
    server (its ``server_port`` is the port bound: pass 0 for any free one). With
    ``health``, ``/healthz`` and ``/readyz`` answer 200 or 503 with its one-line reason.
    Stop it with :func:`stop_exporter`. Raises OSError when the address is taken."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    if health is not None:
        metrics_app = server.get_app()
        assert metrics_app is not None

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = environ.get("PATH_INFO", "")
            if path not in HEALTH_PATHS:
                return metrics_app(environ, start_response)
            try:
                ok, why = health(path)
            except Exception as exc:  # noqa: BLE001 - a probe answers, it never raises
                ok, why = False, f"health check failed: {exc!r}"
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode() + b"\n"]

        server.set_app(app)
    return server


def stop_exporter(server: Any) -> None:
    """Stop serving and close the listening socket. Idempotent."""
    try:
        server.shutdown()
    finally:
        server.server_close()
