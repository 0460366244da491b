"""Metrics and events of a running engine, judged the way operators see them: scraped over
HTTP, stored and queried by a real Prometheus (Debian's ``prometheus`` package), with every
expression of the Grafana dashboard and of the alert rules evaluated against real data.

Two sources are scraped: the real engine (``python -m skivi.engine --metrics-port``), and a
harness (a subprocess running ``EngineObserver`` + ``start_exporter`` + ``QueueStatsPoller``
against a real database, fed with synthetic completion flushes) that drives the series a
real run cannot produce on demand (exhaustions, partial successes, rescues).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import skivi
from skivi import monitoring
from skivi.config import SYNC_PREFETCH_DEFAULT
from skivi.engine import wire
from skivi.engine.observer import EngineObserver
from skivi.events import Emitter
from skivi.metrics import OTHER, EngineMetrics, start_exporter, stop_exporter
from tests.support.engines import REPO, EngineProcs, child_env, log_of
from tests.support.grafana import ALERT_RULES, dashboard_expressions, rule_expressions
from tests.support.wait import wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS = ("Debian's prometheus package is not installed (no prometheus/promtool on "
                 "PATH): apt-get install -y prometheus")
# CI sets this: there the Prometheus tests must run, never be skipped.
REQUIRE_PROMETHEUS = os.environ.get("SKIVI_REQUIRE_PROMETHEUS") == "1"


def _no_prometheus() -> None:
    if REQUIRE_PROMETHEUS:
        pytest.fail(NO_PROMETHEUS + " (SKIVI_REQUIRE_PROMETHEUS=1)")
    pytest.skip(NO_PROMETHEUS)
HARNESS_JOBS = 300
HARNESS_BATCH = 20


# -- in-process: the observer feeding the metrics ------------------------------------------

def _row(job_id: int, code: int, task: str, queue: str | None = None, run: float = 0.004,
         wait: float = 0.5, payload: str | None = None, final: str | None = None) -> list[Any]:
    if code == wire.RESULT_COMPLETED:
        return wire.completed_row(job_id=job_id, lease=1, task=task, queue_name=queue,
                                     run_seconds=run, wait_seconds=wait, slot=0)
    return wire.failed_row(job_id=job_id, lease=1, task=task, queue_name=queue,
                              run_seconds=run, error="boom", delay=1.0, final=final,
                              payload=payload, wait_seconds=wait, slot=0, attempt=1)


def test_counts_and_histograms_follow_the_flushes_when_fed_by_the_observer() -> None:
    emitter = Emitter()
    m = EngineMetrics("1.2.3", emitter, tasks=["a"])  # "b" has no handler here
    observer = EngineObserver(emitter, m)
    done = [_row(i, wire.RESULT_COMPLETED, "a", run=0.004 if i % 2 else 20.0)
            for i in range(10)]
    failed = [_row(10, wire.RESULT_FAILED, "a", queue="mail"),
              _row(11, wire.RESULT_FAILED, "a", payload="[1]"),
              _row(12, wire.RESULT_FAILED, "b", final="no_handler"),
              _row(13, wire.RESULT_FAILED, "b")]  # refused
    observer.flushed(done, failed, {(i, 1) for i in range(9)},
                     {(10, 1): "failed", (11, 1): "failed", (12, 1): "exhausted"})
    value = m.registry.get_sample_value

    assert value("skivi_jobs_total", {"task": "a", "queue": "", "outcome": "completed"}) == 9
    assert value("skivi_jobs_total", {"task": "a", "queue": "mail", "outcome": "failed"}) == 1
    assert value("skivi_jobs_total", {"task": "a", "queue": "", "outcome": "partial"}) == 1
    assert value("skivi_jobs_total", {"task": OTHER, "queue": "", "outcome": "exhausted"}) == 1
    assert value("skivi_jobs_total", {"task": "b", "queue": "", "outcome": "exhausted"}) is None
    assert value("skivi_job_results_stale_total") == 2
    assert value("skivi_job_run_seconds_count", {"task": "a"}) == 11
    assert value("skivi_job_run_seconds_bucket", {"task": "a", "le": "0.005"}) == 6
    assert value("skivi_job_run_seconds_bucket", {"task": "a", "le": "10.0"}) == 6
    assert value("skivi_job_run_seconds_bucket", {"task": "a", "le": "30.0"}) == 11
    assert value("skivi_job_run_seconds_bucket", {"task": "a", "le": "+Inf"}) == 11
    assert value("skivi_job_run_seconds_sum", {"task": "a"}) == pytest.approx(
        4 * 0.004 + 5 * 20.0 + 2 * 0.004)
    assert value("skivi_job_wait_seconds_count", {"task": OTHER}) == 1
    assert value("skivi_completion_batch_size_count") == 1
    assert value("skivi_completion_batch_size_sum") == 14
    assert value("skivi_build_info", {"version": "1.2.3"}) == 1

    emitter.on("job/completed", lambda ev: 1 / 0)
    observer.flushed(done[:1], [], {(0, 1)}, {})
    assert value("skivi_event_handler_errors_total") == 1
    assert value("skivi_jobs_total", {"task": "a", "queue": "", "outcome": "completed"}) == 10


def test_unregistered_tasks_and_queues_past_the_cap_share_other_when_flushed() -> None:
    emitter = Emitter()
    m = EngineMetrics("1.2.3", emitter, tasks=["a", OTHER], queues=["mail"],
                      max_queue_labels=2)
    observer = EngineObserver(emitter, m)
    # Queues in order of appearance: mail (configured), q0 (first seen), then the cap.
    names = [("a", "q0"), ("a", "q1"), ("x", "q2"), ("y", None), ("a", "mail"),
             ("a", OTHER), ("z", "q0"), (OTHER, "mail")]
    rows = [_row(i, wire.RESULT_COMPLETED, task, queue=queue, run=0.001 * (i + 1))
            for i, (task, queue) in enumerate(names)]
    observer.flushed(rows, [], {(r[wire.RESULT_ID], r[wire.RESULT_LEASE]) for r in rows}, {})
    value = m.registry.get_sample_value
    series = {tuple(sorted(s.labels.items())): s.value
              for family in m.registry.collect() if family.name == "skivi_jobs"
              for s in family.samples if s.name == "skivi_jobs_total"}

    def key(task: str, queue: str) -> tuple[tuple[str, str], ...]:
        return (("outcome", "completed"), ("queue", queue), ("task", task))

    # A task or queue really named like the overflow value is counted with the overflow.
    assert series == {key("a", "q0"): 1, key("a", OTHER): 2, key(OTHER, OTHER): 1,
                      key(OTHER, ""): 1, key("a", "mail"): 1, key(OTHER, "q0"): 1,
                      key(OTHER, "mail"): 1}
    assert value("skivi_job_run_seconds_count", {"task": "a"}) == 4
    assert value("skivi_job_run_seconds_count", {"task": OTHER}) == 4
    assert value("skivi_job_run_seconds_sum", {"task": OTHER}) == pytest.approx(
        0.003 + 0.004 + 0.007 + 0.008)
    assert value("skivi_job_run_seconds_count", {"task": "x"}) is None

    m.queue_stats([("", 5, 0, 0, 0, 1.0), ("mail", 1, 2, 3, 4, None),
                   ("q0", 1, 0, 0, 0, 2.0), ("q3", 1, 1, 0, 0, 30.0),
                   ("q4", 2, 0, 1, 1, None), ("q5", 0, 4, 0, 0, 7.0)])
    assert value("skivi_queue_jobs", {"queue": OTHER, "state": "waiting"}) == 3
    assert value("skivi_queue_jobs", {"queue": OTHER, "state": "scheduled"}) == 5
    assert value("skivi_queue_jobs", {"queue": OTHER, "state": "running"}) == 1
    assert value("skivi_queue_jobs", {"queue": OTHER, "state": "claimed"}) == 1
    assert value("skivi_queue_oldest_job_age_seconds", {"queue": OTHER}) == 30.0
    assert value("skivi_queue_jobs", {"queue": "mail", "state": "claimed"}) == 4
    assert value("skivi_queue_oldest_job_age_seconds", {"queue": "mail"}) == 0.0
    assert value("skivi_queue_jobs", {"queue": "q0", "state": "waiting"}) == 1
    assert value("skivi_queue_jobs", {"queue": "", "state": "waiting"}) == 5
    assert value("skivi_queue_jobs", {"queue": "q3", "state": "waiting"}) is None


def test_exporter_serves_the_registry_over_http_when_started_on_any_port() -> None:
    m = EngineMetrics("1.2.3")
    EngineObserver(Emitter(), m).pool_start(1, 2, 4, 8)
    server = start_exporter("127.0.0.1", 0, m.registry)
    try:
        text = _get(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        stop_exporter(server)
        stop_exporter(server)
    samples = _samples(text)
    assert samples[("skivi_jobs_capacity", ())] == 8
    assert samples[("skivi_child_processes", ())] == 2
    assert samples[("skivi_build_info", (("version", "1.2.3"),))] == 1
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=2)


# -- the harness: an engine parent's observer and exporter, fed synthetic flushes ----------

def harness_main(argv: list[str]) -> None:
    """``python -c 'from tests.engine.test_metrics import harness_main; ...' URL DIR``:
    writes DIR/port once serving, DIR/done after the last flush (with its totals), and
    serves until its standard input closes."""
    asyncio.run(_harness(argv[0], Path(argv[1])))


async def _harness(url: str, out: Path) -> None:
    from skivi.db.queries import engine_register, for_schema
    from skivi.engine.connection import Reconnecting
    from skivi.engine.observer import QueueStatsPoller
    from tests.support.db import connect

    emitter = Emitter()
    m = EngineMetrics(skivi.__version__, emitter, tasks=["resize", "send_email"])
    observer = EngineObserver(emitter, m)
    server = start_exporter("127.0.0.1", 0, m.registry)
    q = for_schema("skivi")
    with connect(url) as conn:  # holds the engine's liveness lock while the harness runs
        engine_id = engine_register.run(
            conn, q, hostname="harness", pid=os.getpid(), version="0",
            lease_timeout=30.0, processes=2, concurrency=4)
        db = Reconnecting(url, "skivi-stats")
        poller = QueueStatsPoller(db, q, m, lambda: engine_id, interval=0.2)
        await poller.start()
        (out / "port").write_text(str(server.server_port))
        observer.pool_start(engine_id, 2, 4, 8)
        observer.connection_lost("skivi-claim", "server closed the connection")
        observer.connection_regained("skivi-claim")
        observer.connection_regained("skivi-complete")
        observer.child_replaced(1, 4242, "killed by SIGKILL", 1)
        observer.rescued([engine_id + 1000], 2, 1)
        for reason in ("fired", "previous_run_active"):  # as the cron process sends them
            observer.cron_fired({"type": "cron/fired", "data": {
                "identifier": "nightly", "task": "noop", "ts": "2026-01-01T02:00:00Z",
                "backfilled": False, "skipped": reason != "fired", "reason": reason,
                "job_id": 1}})
        completed = 0
        next_id = 1
        # Spread over a few seconds, so Prometheus (1 s scrapes) sees the counters move.
        while completed < HARNESS_JOBS:
            n = min(HARNESS_BATCH, HARNESS_JOBS - completed)
            rows = [_row(next_id + i, wire.RESULT_COMPLETED, "send_email" if i % 2 else
                         "resize", queue=None if i % 3 else "mail", run=0.002 * (i + 1),
                         wait=0.1 * i) for i in range(n)]
            failed = [_row(next_id + n, wire.RESULT_FAILED, "resize"),
                      _row(next_id + n + 1, wire.RESULT_FAILED, "resize", payload="[1]"),
                      _row(next_id + n + 2, wire.RESULT_FAILED, "send_email")]
            observer.claimed(n + 3)
            observer.dispatched(n + 3)
            observer.set_gauges(n + 3, 8, 2)
            observer.flushed(rows, failed,
                             {(r[wire.RESULT_ID], r[wire.RESULT_LEASE]) for r in rows},
                             {(next_id + n, 1): "failed", (next_id + n + 1, 1): "failed",
                              (next_id + n + 2, 1): "exhausted"})
            completed += n
            next_id += n + 3
            await asyncio.sleep(0.2)
        observer.set_gauges(0, 8, 2)
        await asyncio.sleep(0.5)  # a stats poll or two after the jobs were inserted
        (out / "done").write_text(json.dumps({"completed": completed,
                                              "stats_polls": poller.polls}))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await poller.stop()
        await db.close()
    stop_exporter(server)


@dataclass
class Harness:
    proc: subprocess.Popen[bytes]
    out: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def done(self) -> dict[str, Any]:
        path = self.out / "done"
        _wait_for(lambda: path.exists() and path.read_text(), 60, "the harness to finish",
                  self.log)
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def log(self) -> str:
        path = self.out / "harness.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def harness(database: str, tmp_path: Path) -> Iterator[Harness]:
    _enqueue_backlog(database)
    out = tmp_path / "harness"
    out.mkdir()
    code = ("import sys; from tests.engine.test_metrics import harness_main; "
            "harness_main(sys.argv[1:])")
    with open(out / "harness.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, database, str(out)], cwd=REPO,
                                stdin=subprocess.PIPE, stderr=log, stdout=log,
                                env=child_env())
    try:
        port_file = out / "port"
        wait_for(lambda: (port_file.exists() and port_file.read_text()) or proc.poll() is not None,
                 timeout=30, what="the harness's exporter")
        assert proc.poll() is None, (out / "harness.log").read_text()
        yield Harness(proc, out, int(port_file.read_text()))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _enqueue_backlog(url: str) -> None:
    """What the depth metrics must show: 5 waiting and 3 scheduled jobs without a queue,
    2 waiting in "mail", the oldest of them runnable for an hour; "mail" and "idle" paused."""
    now = dt.datetime.now(dt.UTC)
    system = skivi.create_system({"database": {"connection_string": url}})
    try:
        skivi.add_jobs(system, [
            *({"task": "noop"} for _ in range(5)),
            *({"task": "noop", "run_at": now + dt.timedelta(hours=1)} for _ in range(3)),
            {"task": "noop", "queue_name": "mail", "run_at": now - dt.timedelta(hours=1)},
            {"task": "noop", "queue_name": "mail"},
        ])
        skivi.pause_queue(system, "mail")
        skivi.pause_queue(system, "idle")  # paused, with no job
    finally:
        system.stop()


def test_exporter_counts_what_the_flushes_wrote_when_scraped(harness: Harness) -> None:
    totals = harness.done()
    samples = _samples(_get(harness.url))

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, lbl), v in samples.items()
                   if n == name and labels.items() <= dict(lbl).items())

    assert total("skivi_jobs_total", outcome="completed") == totals["completed"] == HARNESS_JOBS
    flushes = HARNESS_JOBS // HARNESS_BATCH
    assert total("skivi_jobs_total", outcome="failed") == flushes
    assert total("skivi_jobs_total", outcome="partial") == flushes
    assert total("skivi_jobs_total", outcome="exhausted") == flushes
    assert total("skivi_jobs_total", queue="mail") > 0
    assert total("skivi_job_run_seconds_count") == HARNESS_JOBS + 3 * flushes
    assert total("skivi_cron_fires_total", identifier="nightly") == 2
    assert total("skivi_db_connection_up", connection="skivi-claim") == 1
    assert total("skivi_db_connection_losses_total") == 1
    # The depth figures, from job_stats.sql on the harness's engine (the only one: leader).
    assert totals["stats_polls"] >= 1
    assert total("skivi_queue_stats_leader") == 1
    assert total("skivi_queue_jobs", queue="", state="waiting") == 5
    assert total("skivi_queue_jobs", queue="", state="scheduled") == 3
    assert total("skivi_queue_jobs", queue="", state="running") == 0
    assert total("skivi_queue_jobs", queue="mail", state="waiting") == 2
    assert 3500 < total("skivi_queue_oldest_job_age_seconds", queue="mail") < 3700
    assert 0 <= total("skivi_queue_oldest_job_age_seconds", queue="") < 60
    assert total("skivi_queue_paused", queue="mail") == 1
    assert total("skivi_queue_paused", queue="idle") == 1
    assert ("skivi_queue_paused", (("queue", ""),)) in samples
    assert total("skivi_queue_paused", queue="") == 0


# -- a real Prometheus ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus server of the test's own, scraping ``targets`` every second as job
    "skivi", with the alert rules loaded."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        assert PROMETHEUS is not None
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": [{"job_name": "skivi",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log_path = tmp / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=log, cwd=tmp)
        _wait_for(self._ready, 60, "Prometheus to be ready", self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited: {self.log()}")
        try:
            return _get(f"{self.base}/-/ready", timeout=2) != ""
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = _get(url, timeout=10)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        answer = json.loads(body)
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" \
            else [{"value": data["result"]}]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        _no_prometheus()
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        folder = tmp_path / f"prometheus-{len(started)}"
        folder.mkdir()
        server = Prometheus(folder, targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "job": ".*", "task": ".*",
                     "queue": ".*"}


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables given values; a variable's
    ``label_values(selector, label)`` becomes its selector."""
    expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr.strip())
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], expr)


def as_bool(expr: str) -> str:
    """An alert expression whose comparisons keep every series (``> bool``), so it returns
    data whether or not the alert would fire."""
    return re.sub(r"(==|!=|>=|<=|>|<)\s*(?=[-0-9.])", r"\1 bool ", expr)


@pytest.mark.slow
def test_every_dashboard_and_alert_expression_returns_data_when_prometheus_scrapes(
        harness: Harness, prometheus_factory: Any) -> None:
    prom: Prometheus = prometheus_factory([f"127.0.0.1:{harness.port}"])
    totals = harness.done()
    _wait_for(lambda: prom.value('sum(skivi_jobs_total{outcome="completed"})')
              == totals["completed"], 60, "Prometheus to scrape every completion", prom.log)
    # rate() needs two samples in its window: let a few more scrapes land.
    wait_for(lambda: (prom.value("count_over_time(skivi_build_info[1m])") or 0) >= 4,
             timeout=30, what="a few scrapes")
    assert prom.value('sum(skivi_jobs_total{outcome="completed"})') == HARNESS_JOBS
    assert prom.value('up{job="skivi"}') == 1

    empty = [e for e in dashboard_expressions() if not prom.query(as_promql(e))]
    assert empty == [], "dashboard expressions without data"

    rules = _loaded_rules(prom)
    assert len(rules) == len(rule_expressions(ALERT_RULES.read_text()))
    without_data = []
    for rule in rules:
        expr = rule["query"]
        if "absent(" in expr:
            # Fires when the metric is missing: with the engine up it must be empty.
            assert prom.query(expr) == [], rule["name"]
        elif not prom.query(as_bool(expr)):
            without_data.append(rule["name"])
    assert without_data == [], "alert expressions without data"
    # Prometheus evaluated every rule without error. The harness exhausts and fails jobs
    # and left a job waiting for an hour on purpose: only those alerts may be active.
    wait_for(lambda: all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2")
                         for r in _loaded_rules(prom)), timeout=30,
             what="every rule to be evaluated")
    firing = {r["name"] for r in _loaded_rules(prom) if r["state"] != "inactive"}
    assert firing <= {"SkiviHighFailureRate", "SkiviJobsExhausted", "SkiviOldestJobTooOld"}, \
        firing


def _loaded_rules(prom: Prometheus) -> list[dict[str, Any]]:
    groups = prom.api("rules")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_when_checked() -> None:
    if PROMTOOL is None:
        _no_prometheus()
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERT_RULES)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions(ALERT_RULES.read_text()))} rules found" in \
        result.stdout


# -- the real engine (once the supervisor calls the observer) ------------------------------

@pytest.mark.slow
def test_engine_exports_the_jobs_it_processed_when_run_with_a_metrics_port(
        engines: EngineProcs, database: str, prometheus_factory: Any) -> None:
    n = 200
    system = skivi.create_system({"database": {"connection_string": database}})
    try:
        skivi.add_jobs(system, [{"task": "noop"} for _ in range(n)])
    finally:
        system.stop()
    port = _free_port()
    proc = engines.start("--metrics-port", str(port), processes=2, concurrency=4)
    url = f"http://127.0.0.1:{port}/metrics"

    def completed() -> float:
        try:
            samples = _samples(_get(url, timeout=2))
        except OSError:
            assert proc.poll() is None, log_of(proc)
            return -1
        return sum(v for (name, labels), v in samples.items()
                   if name == "skivi_jobs_total" and ("outcome", "completed") in labels)

    wait_for(lambda: completed() >= 0, timeout=15, what="the exporter to answer")
    wait_for(lambda: completed() == n, timeout=30, what="the exporter to count every job")
    assert len(engines.ledger.starts()) == n
    samples = _samples(_get(url))
    assert samples[("skivi_child_processes", ())] == 2
    # The test tasks are sync and async: each child has 4 async slots and a sync lane of
    # worker.sync_prefetch (more than the concurrency of 4).
    assert samples[("skivi_jobs_capacity", ())] == 2 * (4 + SYNC_PREFETCH_DEFAULT)
    assert samples[("skivi_queue_stats_leader", ())] == 1

    prom: Prometheus = prometheus_factory([f"127.0.0.1:{port}"])
    wait_for(lambda: prom.value('sum(skivi_jobs_total{outcome="completed"})') == n,
             timeout=30, what="Prometheus to scrape the engine")
    for expr in dashboard_expressions():
        prom.query(as_promql(expr))  # each one valid against the real engine's series
    for rule in _loaded_rules(prom):
        prom.query(rule["query"])


BOUNDED_UNKNOWN = 3000  # the reproduction: 3,000 jobs of distinct unknown tasks
BOUNDED_SCHEDULED = 300
BOUNDED_KNOWN = 50
BOUNDED_QUEUE_LABELS = 20
BOUNDED_MAX_LINES = 600


def test_series_stay_bounded_when_producers_send_thousands_of_task_and_queue_names(
        engines: EngineProcs, database: str) -> None:
    """Producers choose task and queue names; the exporter must not make a series of each.
    Jobs of tasks the engine has no handler for are counted under ``other`` (they are
    exhausted as no_handler), and queues past ``metrics.max_queue_labels`` too, both in the
    job counters and in the depth gauges, and the ``other`` series carry their jobs."""
    from tests.support.engines import enqueue

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    enqueue(database, [
        *({"task": f"unknown-{i}", "queue_name": f"q-{i}"} for i in range(BOUNDED_UNKNOWN)),
        *({"task": "noop"} for _ in range(BOUNDED_KNOWN)),
        # Still scheduled while the test scrapes: what the depth gauges must show, bounded.
        *({"task": "noop", "queue_name": f"later-{i}", "run_at": later}
          for i in range(BOUNDED_SCHEDULED)),
    ])
    port = _free_port()
    proc = engines.start("--metrics-port", str(port), processes=2, concurrency=8, env={
        "SKIVI_METRICS_MAX_QUEUE_LABELS": str(BOUNDED_QUEUE_LABELS)})
    url = f"http://127.0.0.1:{port}/metrics"
    finished = BOUNDED_UNKNOWN + BOUNDED_KNOWN

    def scrape() -> str | None:
        try:
            return _get(url, timeout=5)
        except OSError:
            assert proc.poll() is None, log_of(proc)
            return None

    def settled() -> str | None:
        text = scrape()
        if text is None:
            return None
        samples = _samples(text)
        jobs = sum(v for (n, _), v in samples.items() if n == "skivi_jobs_total")
        scheduled = sum(v for (n, lbl), v in samples.items()
                        if n == "skivi_queue_jobs" and ("state", "scheduled") in lbl)
        return text if jobs == finished and scheduled == BOUNDED_SCHEDULED else None

    text = wait_for(settled, timeout=120, what="every job counted and the scheduled depth")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) < BOUNDED_MAX_LINES, (
        f"{len(lines)} series lines ({len(text)} bytes) for {BOUNDED_UNKNOWN} task names")
    samples = _samples(text)

    def values(name: str, label: str) -> set[str]:
        return {dict(lbl)[label] for (n, lbl), _ in samples.items()
                if n == name and label in dict(lbl)}

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, lbl), v in samples.items()
                   if n == name and labels.items() <= dict(lbl).items())

    for name in ("skivi_jobs_total", "skivi_job_run_seconds_count",
                 "skivi_job_wait_seconds_count"):
        assert values(name, "task") == {"noop", OTHER}, name
    assert total("skivi_jobs_total", task=OTHER, outcome="exhausted") == BOUNDED_UNKNOWN
    assert total("skivi_jobs_total", task="noop", outcome="completed") == BOUNDED_KNOWN
    assert total("skivi_job_run_seconds_count", task=OTHER) == BOUNDED_UNKNOWN
    # Named queues up to the cap, plus "" (no queue) and other.
    for name in ("skivi_jobs_total", "skivi_queue_jobs", "skivi_queue_oldest_job_age_seconds"):
        queues = values(name, "queue")
        assert len(queues - {"", OTHER}) <= BOUNDED_QUEUE_LABELS, (name, sorted(queues))
    assert OTHER in values("skivi_jobs_total", "queue")
    assert total("skivi_jobs_total", queue="") == BOUNDED_KNOWN
    assert OTHER in values("skivi_queue_jobs", "queue")
    assert total("skivi_queue_jobs", state="scheduled") == BOUNDED_SCHEDULED
    assert total("skivi_queue_jobs", queue=OTHER, state="scheduled") >= \
        BOUNDED_SCHEDULED - BOUNDED_QUEUE_LABELS


def test_application_handlers_get_the_engines_events_when_the_system_started_it(
        database: str) -> None:
    from tests.support.engines import TASKS_DIR

    system = skivi.create_system({"database": {"connection_string": database},
                                  "worker": {"task_directory": str(TASKS_DIR),
                                             "processes": 1, "concurrency": 2}})
    try:
        system.start()
        # Events the engine sent before anyone subscribed are in the ring buffer.
        wait_for(lambda: any(e["type"] == "pool/start" for e in system.emitter.recent()),
                 timeout=15, what="pool/start from the engine process")
        seen = monitoring.collecting_emitter()
        monitoring.on(system.emitter, "all", lambda ev: seen.replay([ev]))
        ids = [j.id for j in skivi.add_jobs(system, [{"task": "noop"} for _ in range(5)])]
        wait_for(lambda: len(seen.of("job/completed")) == 5, timeout=30,
                 what="five job/completed events in the application")
        assert sorted(d["job_id"] for d in seen.of("job/completed")) == sorted(ids)
    finally:
        assert system.stop() == 0
    # The engine's last event arrives before stop() returns.
    assert seen.types()[-1] == "pool/stop"


# -- helpers -------------------------------------------------------------------------------

def _wait_for(predicate: Callable[[], object], timeout: float, what: str,
              log: Callable[[], str]) -> None:
    """``wait_for``, with the end of a process's log in the failure message."""
    try:
        wait_for(predicate, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log ---\n{log()}") from None


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- health probes ----------------------------------------------------------------------------


def _probe(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode().strip()


def test_exporter_answers_probes_from_its_health_check_and_metrics_elsewhere() -> None:
    state = {"ok": True}

    def health(path: str) -> tuple[bool, str]:
        if path == "/readyz" and not state["ok"]:
            raise RuntimeError("no database")
        return state["ok"], f"{path} says {state['ok']}"

    m = EngineMetrics("1.2.3", Emitter())
    server = start_exporter("127.0.0.1", 0, m.registry, health=health)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert _probe(base + "/healthz") == (200, "/healthz says True")
        assert _probe(base + "/readyz") == (200, "/readyz says True")
        state["ok"] = False
        assert _probe(base + "/healthz") == (503, "/healthz says False")
        assert _probe(base + "/readyz") == \
            (503, "health check failed: RuntimeError('no database')")
        status, text = _probe(base + "/metrics")
        assert status == 200 and 'skivi_build_info{version="1.2.3"} 1.0' in text
    finally:
        stop_exporter(server)


def test_engine_probes_say_ready_then_stopping_while_it_drains(
        engines: EngineProcs, database: str) -> None:
    import signal

    from tests.support.db import connect
    from tests.support.engines import enqueue

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with connect(database, autocommit=False) as holder:
        # Not registered yet (the engine table is locked): alive, not ready.
        holder.execute("lock table skivi.engine in access exclusive mode")
        proc = engines.start("--metrics-port", str(port), "--shutdown-timeout", "30",
                             processes=1, concurrency=2)
        wait_for(lambda: _probe_or_none(base + "/readyz") == (
            503, "starting: waiting to register with the database"), timeout=30,
            what="/readyz to say the engine waits to register")
        assert _probe(base + "/healthz") == (200, "ok")
        holder.rollback()
    _, text = wait_for(lambda: _ready(base), timeout=30, what="/readyz to say ready")
    assert text.startswith("ready: engine ")
    job = enqueue(database, [{"task": "async_sleep", "payload": {"s": 3.0}}])[0]
    wait_for(lambda: [r for r in engines.ledger.starts() if r[0] == job], timeout=30,
             what="the long job to start")
    proc.send_signal(signal.SIGTERM)
    # Draining the running job: still alive, no longer ready.
    wait_for(lambda: _probe_or_none(base + "/readyz") == (503, "stopping"), timeout=10,
             what="/readyz to say stopping")
    assert _probe(base + "/healthz") == (200, "ok")
    assert proc.wait(timeout=30) == 0, log_of(proc)


def _probe_or_none(url: str) -> tuple[int, str] | None:
    try:
        return _probe(url)
    except OSError:
        return None


def _ready(base: str) -> tuple[int, str] | None:
    found = _probe_or_none(base + "/readyz")
    return found if found is not None and found[0] == 200 else None
