"""Skivi's benchmark: ``python bench/run.py [scenario] [options]`` (see bench/README.md).

Scenarios:
    drain     enqueue N jobs in bulk, then run an engine with --once until all are done
    steady    enqueue at a fixed rate while an engine runs; enqueue-to-start latency
    enqueue   single add_job calls, one bulk add_jobs call, and the single-insert floor
    backlog   drain N jobs while a large backlog scheduled in 2100 waits in the same table
    cpu       N sync jobs each burning MS of CPU time (--task cpu:MS, default 200 x 10 ms):
              efficiency = ideal (N x MS / processes) / measured (first start to last end)
    queues    drain N plain jobs without, then with, --past-queues empty serial-queue rows
              (a queue per tenant, left by past jobs), alternating; the ratio of the two

Every scenario works in a schema of its own (--schema, default skivi_bench), created fresh
and dropped at the end (--keep keeps it). The engine always runs in a subprocess
(``python bench/run.py _engine ...``), never forked from this process, which has threads
and open connections; the subprocess reports progress, timings and memory as JSON lines on
its stdout. It is started and stopped by the engine-subprocess harness the tests use too,
tests/support/engines.py (part of the checkout, and free of test dependencies).

Output: the settings first, a live line every second, then a summary table; --json PATH
writes the same for machines. The exit code is non-zero when a verification fails. Every
drain also reports CPU per job: the engine's parent and children (getrusage, /proc), and the
PostgreSQL server's processes, all of them and the engine's own backends (/proc, when the
server runs on this machine; else pg_stat_statements' execution time, if it answers).
--engines N runs N engines at once over the same jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Benchmark the checkout this file lives in (the engine subprocess does the same); this also
# makes tests.support.engines, the engine-subprocess harness, importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

import skivi
from skivi.config import BATCH_SIZE_DEFAULT, load_config
from skivi.engine.connection import Reconnecting
from skivi.engine.supervisor import Engine
from skivi.system import System, create_system

if TYPE_CHECKING:
    from tests.support.engines import EngineProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
LIMIT_CONCURRENCY_DEFAULT = 1000
SCENARIOS = ("drain", "steady", "enqueue", "backlog", "cpu", "queues")
SCHEMA_MARKER = "skivi bench scratch schema (bench/run.py); dropped after each run"
BACKLOG_TASK = "backlog"
BACKLOG_RUN_AT = "2100-01-01 00:00:00+00"
BACKLOG_PARAMS = {"backlog_task": BACKLOG_TASK}  # the queries that leave backlog jobs out
TICK = 0.005  # steady: the producer's smallest sleep; jobs due within a tick go together
PROGRESS_INTERVAL = 1.0
SQL_DIR = Path(__file__).resolve().parent / "sql"

Result = dict[str, Any]


# ================================================================================================
# Tasks (run inside the engine's children)
# ================================================================================================

TASK_RE = re.compile(r"^(noop|(?:sleep|asleep|cpu):\d+(?:\.\d+)?)$")

# The latency file of the current child process (steady): opened by on_child_start, after the
# child has closed every file descriptor it inherited.
_latency_fd: int | None = None


def parse_task(spec: str) -> tuple[str, float]:
    """'noop' -> ('noop', 0); 'sleep:5' -> ('sleep', 5.0). Raises ValueError."""
    if not TASK_RE.match(spec):
        raise ValueError(f"--task must be noop, sleep:MS, asleep:MS or cpu:MS, got {spec!r}")
    kind, _, ms = spec.partition(":")
    return kind, float(ms or 0)


def _record_start(payload: Any) -> None:
    """Append "<enqueued> <started>\\n" (epoch seconds) for jobs whose payload carries t."""
    if _latency_fd is not None and isinstance(payload, dict) and "t" in payload:
        os.write(_latency_fd, f"{payload['t']:.6f} {time.time():.6f}\n".encode())


def make_handler(kind: str, ms: float) -> Callable[[Any], Any]:
    seconds = ms / 1000.0
    if kind == "asleep":
        async def asleep(ctx: Any) -> None:
            _record_start(ctx.job.payload)
            await asyncio.sleep(seconds)
        return asleep

    def handler(ctx: Any) -> None:
        _record_start(ctx.job.payload)
        if kind == "sleep":
            time.sleep(seconds)
        elif kind == "cpu":
            # CPU time, not wall time: on a busy machine the job still needs MS of CPU.
            started = time.time()
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass
            if _latency_fd is not None:
                os.write(_latency_fd, f"span {started:.6f} {time.time():.6f}\n".encode())
    return handler


# ================================================================================================
# The engine subprocess: python bench/run.py _engine ...
# ================================================================================================

def read_memory(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM (peak) of a process in KiB, from /proc/<pid>/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {"pid": pid}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_kib" if key == "VmRSS" else "hwm_kib"] = int(value.split()[0])
    return out


# CPU time from /proc (Linux). The fields of /proc/<pid>/stat after the command name, counted
# from 0 (man 5 proc numbers them from 1, the pid and the name being 1 and 2).
STAT_PPID, STAT_UTIME, STAT_STIME, STAT_CUTIME, STAT_CSTIME, STAT_THREADS = 1, 11, 12, 13, 14, 17
CLK_TCK = os.sysconf("SC_CLK_TCK")
HAVE_SCHEDSTAT = os.path.exists("/proc/self/schedstat")  # CONFIG_SCHED_INFO
HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def read_proc(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state on (None: no such process)."""
    text = read_proc(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses


def proc_comm(pid: int) -> str | None:
    text = read_proc(f"/proc/{pid}/comm")
    return None if text is None else text.strip()


def proc_tasks(pid: int, fields: list[str]) -> list[str]:
    """The thread ids of a process (just its own for a single-threaded one, as PostgreSQL's
    processes are: no directory to list)."""
    if int(fields[STAT_THREADS]) == 1:
        return [str(pid)]
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def own_cpu(pid: int, fields: list[str] | None = None) -> float:
    """CPU seconds (user + system) a process has used in its live threads: the sum of their
    run times in /proc/<pid>/task/<tid>/schedstat (nanoseconds), else utime + stime from
    /proc/<pid>/stat (clock ticks of 10 ms, coarse for a drain of a second). 0.0 once the
    process is gone. ``fields``: its proc_stat, when already read."""
    fields = fields or proc_stat(pid)
    if fields is None:
        return 0.0
    if not HAVE_SCHEDSTAT:
        return (int(fields[STAT_UTIME]) + int(fields[STAT_STIME])) / CLK_TCK
    total = 0
    for tid in proc_tasks(pid, fields):
        text = read_proc(f"/proc/{pid}/task/{tid}/schedstat")
        if text:  # else the thread ended meanwhile
            total += int(text.split()[0])
    return total / 1e9


def child_pids(pid: int, fields: list[str] | None = None) -> list[int]:
    """The live children of a process: /proc/<pid>/task/<tid>/children of each of its
    threads, else (a kernel without them) every process in /proc whose parent it is."""
    if not HAVE_CHILDREN_FILES:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()
                and (f := proc_stat(int(entry))) is not None and int(f[STAT_PPID]) == pid]
    fields = fields or proc_stat(pid)
    if fields is None:
        return []
    pids: list[int] = []
    for tid in proc_tasks(pid, fields):
        text = read_proc(f"/proc/{pid}/task/{tid}/children")
        if text:
            pids.extend(map(int, text.split()))
    return pids


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, the live ones and the ended ones
    it (or they) waited for (cutime + cstime, in clock ticks). It only grows: a process
    that ends moves its time from the live sum to its parent's reaped time."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    reaped = (int(fields[STAT_CUTIME]) + int(fields[STAT_CSTIME])) / CLK_TCK
    return (own_cpu(pid, fields) + reaped
            + sum(tree_cpu(c) for c in child_pids(pid, fields)))


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class BenchEngine(Engine):
    """The engine, plus what the bench measures: a memory sample taken when a stop is
    requested (children alive), and CPU samples at the start and the end of the window.

    The CPU window opens when the fetcher starts, just before the first claim, and closes
    when the last job's completion is written (``--expect`` reached), or when the engine
    decides to stop, if that comes first (with several engines, none reaches ``--expect``
    alone). With ``server_pid`` (the postmaster of a server on this machine) the samples
    also hold the CPU of every server process and of each of this engine's own backends.
    The connections the engine opens lazily (the claim's, the completer's...) open inside
    the window: each backend's CPU when its connection is ready (its start-up) is noted in
    ``backends_started``, to be left out of both server figures."""

    memory: dict[str, Any] | None = None
    server_pid = 0
    gated = False  # --gate: wait for GO; the bench samples the server then, not this engine
    cpu_go: dict[str, Any] | None = None
    cpu_end: dict[str, Any] | None = None
    backends_started: dict[str, float]
    last_completion_at: float | None = None

    def watch_connections(self) -> None:
        """Note each backend's CPU when its connection opens inside the window."""
        self.backends_started = {}
        for db in self.databases():
            db.on_connected = functools.partial(self._connected, db, db.on_connected)

    def _connected(self, db: Reconnecting, inner: Callable[[str], None] | None,
                   name: str) -> None:
        if inner is not None:
            inner(name)
        conn = db.connection
        if (self.server_pid and self.cpu_go is not None and self.cpu_end is None
                and conn is not None):
            pid = conn.info.backend_pid
            self.backends_started[str(pid)] = own_cpu(pid)

    def sample_memory(self, when: str) -> None:
        """Sample once: at the last completion, or at the stop request if that came first
        (--once may stop while the last completions are being written: children gone)."""
        if self.memory is None:
            children = [read_memory(c.pid) for c in self.children if not c.exited]
            self.memory = {"when": when, "parent": read_memory(os.getpid()),
                           "children": [m for m in children if m and "rss_kib" in m]}

    def request_stop(self, fast: bool = False) -> None:
        self.sample_memory("stop requested")
        self.end_cpu_window("stop requested")
        super().request_stop(fast)

    def databases(self) -> list[Reconnecting]:
        return [db for db in (self.db, self.claim_db, self.listen_db) if db is not None]

    def backend_pids(self) -> dict[int, str]:
        """The server processes of this engine's connections (the parent's: its children
        have none) and each one's connection name, read from libpq, no statement sent."""
        return {conn.info.backend_pid: db.name for db in self.databases()
                if (conn := db.connection) is not None and not conn.closed}

    def sample_cpu(self, *, parent_first: bool, server: bool = True) -> dict[str, Any]:
        """CPU seconds so far: the engine parent (getrusage, all its threads), its children
        (the live ones from /proc, the ended ones from getrusage), and with server_pid every
        server process (unless not ``server``) and each of this engine's backends. The
        parent is read first or last so that the sampling itself stays outside the window."""
        def parent() -> float:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return ru.ru_utime + ru.ru_stime

        sample: dict[str, Any] = {"t": time.time()}
        if parent_first:
            sample["parent_s"] = parent()
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        children = child_pids(os.getpid())
        sample["children_s"] = (reaped.ru_utime + reaped.ru_stime
                                + sum(tree_cpu(pid) for pid in children))
        sample["children"] = len(children)
        if self.server_pid:
            if server:
                sample["server_s"] = tree_cpu(self.server_pid)
            backends = {pid: name for pid, name in self.backend_pids().items()
                        if (f := proc_stat(pid)) is not None
                        and int(f[STAT_PPID]) == self.server_pid}
            sample["backends_s"] = {str(pid): own_cpu(pid) for pid in backends}
            sample["backend_names"] = {str(pid): name for pid, name in backends.items()}
        if not parent_first:
            sample["parent_s"] = parent()
            sample["t"] = time.time()
        return sample

    def open_cpu_window(self) -> None:
        t0 = time.perf_counter()
        # Gated, every engine opens its window at once: the bench reads the whole server
        # at GO, so that sixteen engines do not all read it at the start of the drain.
        self.cpu_go = self.sample_cpu(parent_first=False, server=not self.gated)
        self.cpu_go["sample_s"] = time.perf_counter() - t0  # what it added to the drain
        emit("window", edge="go", cpu=self.cpu_go)

    def end_cpu_window(self, when: str) -> None:
        if self.cpu_go is not None and self.cpu_end is None:
            self.cpu_end = {**self.sample_cpu(parent_first=True), "when": when,
                            "backends_started_s": self.backends_started}
            emit("window", edge="end", cpu=self.cpu_end)


def _stats(engine: Engine) -> dict[str, int]:
    s = engine.stats
    return {"claimed": s.claimed, "completed": s.completed, "failed": s.failed,
            "exhausted": s.exhausted, "stale": s.stale, "child_crashes": s.child_crashes,
            "rescued": s.rescued}


def _observe_done(engine: BenchEngine, expect: int, state: dict[str, Any]) -> None:
    """Note the moment the expect-th completion is written (with memory and CPU samples,
    children still alive), and the time of every flush that completed jobs (with several
    engines, the last one's is when this engine's share was done), from the completer's
    flush hook: exact, no polling."""
    inner = engine.completer.on_flushed

    completed = 0

    def observed(*args: Any) -> None:
        nonlocal completed
        if inner is not None:
            inner(*args)
        if engine.stats.completed > completed:
            completed = engine.stats.completed
            engine.last_completion_at = time.time()
        if "done_at" not in state and expect and completed >= expect:
            state["done_at"] = engine.last_completion_at
            engine.end_cpu_window("last job completed")
            engine.sample_memory("last job completed")
            emit("done", completed=completed)

    engine.completer.on_flushed = observed


def _open_cpu_window_first(engine: BenchEngine) -> None:
    """Open the CPU window when the fetcher starts, before its first claim. Gated
    (``engine.gated``), the engine first gets ready (children forked, registered, its claim
    connection open), says "ready" and waits for GO (SIGUSR1 from the bench), so that a
    drain by several engines is timed from when all of them are up, as the peer harness
    times its workers, not from when the first of them, started one after another on a
    small machine, is."""
    start = engine.fetcher.start

    async def started() -> None:
        if engine.gated:
            go = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
            await engine.fetcher.db.get()
            emit("ready")
            await go.wait()
        engine.open_cpu_window()
        await start()

    engine.fetcher.start = started  # type: ignore[method-assign]


async def _progress(engine: BenchEngine) -> None:
    emit("started", pid=os.getpid(), children=[c.pid for c in engine.children],
         processes=engine.processes, concurrency=engine.concurrency)
    next_progress = time.monotonic() + PROGRESS_INTERVAL
    while True:
        await asyncio.sleep(max(0.0, next_progress - time.monotonic()))
        next_progress += PROGRESS_INTERVAL
        emit("progress", **_stats(engine))


async def _engine_async(system: System, args: argparse.Namespace) -> int:
    def on_child_start() -> None:
        global _latency_fd
        if args.latency_file:
            _latency_fd = os.open(args.latency_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                  0o600)

    engine = BenchEngine(system.instance, system.registry(), system.emitter, once=args.once,
                         on_child_start=on_child_start)
    engine.server_pid = args.server_pid
    engine.gated = args.gate
    state: dict[str, Any] = {}
    _observe_done(engine, args.expect, state)
    _open_cpu_window_first(engine)
    engine.watch_connections()
    started_at = time.time()
    watcher = asyncio.get_running_loop().create_task(_progress(engine))
    error = None
    code = 1
    try:
        code = await engine.run()
    except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails loudly
        error = f"{type(exc).__name__}: {exc}"
    finally:
        watcher.cancel()
    emit("report", code=code, error=error, started_at=started_at,
         done_at=state.get("done_at"), last_completion_at=engine.last_completion_at,
         exited_at=time.time(), stats=_stats(engine), memory=engine.memory,
         cpu={"go": engine.cpu_go, "end": engine.cpu_end}, processes=engine.processes,
         concurrency=engine.concurrency)
    return code


def engine_setting(text: str) -> str:
    """--set KEY=VALUE, checked for its shape here; the key itself by load_config."""
    key, eq, _ = text.partition("=")
    if not eq or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted key, got {text!r}")
    return text


def engine_main(argv: Sequence[str]) -> int:
    import logging

    import uvloop

    p = argparse.ArgumentParser(prog="bench/run.py _engine")
    p.add_argument("--database-url", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--processes", type=int, default=0)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--sync-threads", type=int, required=True)
    p.add_argument("--once", action="store_true")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--latency-file")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--listen-url", default=None)
    p.add_argument("--no-prepare", action="store_true")
    p.add_argument("--gate", action="store_true")
    p.add_argument("--set", action="append", default=[], type=engine_setting)
    p.add_argument("--limits", type=int, default=0)
    p.add_argument("--limit-concurrency", type=int, default=LIMIT_CONCURRENCY_DEFAULT)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="engine: %(relativeCreated)8.1f ms %(levelname)s %(name)s: "
                               "%(message)s")
    kind, ms = parse_task(args.task)
    raw: dict[str, Any] = {
        "database": {"connection_string": args.database_url, "schema_name": args.schema,
                     "listen_url": args.listen_url,
                     "prepared_statements": not args.no_prepare},
        "worker": {"processes": args.processes, "concurrency": args.concurrency,
                   "batch_size": args.batch_size, "sync_threads": args.sync_threads},
        "metrics": {"port": args.metrics_port},
        # --limits K: every job is under a concurrency limit keyed by its payload's tenant.
        "limits": [{"name": "bench-tenant", "tasks": [kind], "key": "tenant",
                    "concurrency": args.limit_concurrency}] if args.limits else [],
    }
    for setting in args.set:
        key, _, value = setting.partition("=")
        *sections, name = key.split(".")
        table = raw
        for section in sections:
            table = table.setdefault(section, {})
        try:
            table[name] = json.loads(value)
        except ValueError:
            table[name] = value
    config = load_config(raw, env={})
    system = create_system(config, {kind: make_handler(kind, ms)})
    return uvloop.run(_engine_async(system, args))


@dataclass
class EngineRun:
    """An engine subprocess (``python bench/run.py _engine``, started through the tests'
    engine harness) and the JSON events it prints on its stdout. Its log (stderr) goes to
    this process's stderr."""

    proc: EngineProcess
    report: dict[str, Any] | None = None
    ended: bool = False

    @classmethod
    def start(cls, opts: Options, *, once: bool, expect: int,
              latency_file: str | None = None, server_pid: int | None = None,
              gate: bool = False) -> EngineRun:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_engine",
               "--database-url", opts.engine_url or opts.url, "--schema", opts.schema,
               "--task", opts.task,
               "--processes", str(opts.processes or 0), "--concurrency", str(opts.concurrency),
               "--batch-size", str(opts.batch_size), "--sync-threads", str(opts.sync_threads),
               "--expect", str(expect), "--log-level", opts.engine_log_level,
               "--metrics-port", str(opts.metrics_port), "--server-pid", str(server_pid or 0)]
        if once:
            cmd.append("--once")
        if gate:
            cmd.append("--gate")
        for setting in opts.settings:
            cmd += ["--set", setting]
        if opts.limits:
            cmd += ["--limits", str(opts.limits),
                    "--limit-concurrency", str(opts.limit_concurrency)]
        if opts.engine_url and opts.engine_url != opts.url:
            cmd += ["--listen-url", opts.url, "--no-prepare"]
        if latency_file:
            cmd += ["--latency-file", latency_file]
        # Imported here, not at the top: the engine subprocess runs this file too, and the
        # harness would only add to the memory it reports.
        from tests.support.engines import EngineProcess

        return cls(EngineProcess(cmd, read_stdout=True))

    def next(self, timeout: float) -> dict[str, Any]:
        """The next event; {"event": "end"} once stdout closed, {"event": "timeout"} if none
        came within timeout."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            line = self.proc.read_line(deadline - time.monotonic())
            if line is None:
                return {"event": "timeout"}
            if line == b"":
                self.ended = True
                break
            try:
                event = json.loads(line)
            except ValueError:
                sys.stderr.write(f"engine stdout: {line.decode(errors='replace')}")
                continue
            if isinstance(event, dict) and "event" in event:
                if event["event"] == "report":
                    self.report = event
                return event
        return {"event": "end"}

    def wait_for(self, name: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.next(left)
            if event["event"] == name:
                return event
            if event["event"] == "end":
                return None
        return None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful), then SIGKILL after timeout; returns the exit code."""
        return self.proc.stop(timeout)

    def finish(self, timeout: float) -> int:
        """Read events until the report, then reap the process."""
        if self.report is None:
            self.wait_for("report", timeout)
        try:
            return self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            return self.stop()


# ================================================================================================
# Options, database and environment
# ================================================================================================

@dataclass
class Options:
    scenario: str
    url: str
    url_shown: str
    embedded: bool
    schema: str
    jobs: int
    rate: float
    duration: float | None
    processes: int | None
    concurrency: int
    batch_size: int
    sync_threads: int
    payload_bytes: int
    task: str
    repeat: int
    json_path: str | None
    backlog: int
    past_queues: int
    compare: bool
    keep: bool
    chunk: int
    bulk: int
    floor: bool
    timeout: float
    engine_log_level: str
    vacuum: bool
    metrics_port: int
    engines: int = 1
    # --set KEY=VALUE: engine configuration keys beyond the options above.
    settings: tuple[str, ...] = ()
    limits: int = 0
    limit_concurrency: int = LIMIT_CONCURRENCY_DEFAULT
    pgbouncer: int = 0
    engine_url: str = ""  # where engines connect: url, or a PgBouncer in front of it

    @property
    def task_kind(self) -> str:
        return parse_task(self.task)[0]

    @property
    def task_ms(self) -> float:
        return parse_task(self.task)[1]

    def payload(self, **extra: Any) -> dict[str, Any]:
        return {**extra, "pad": "x" * self.payload_bytes} if self.payload_bytes else extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Skivi benchmark. See bench/README.md for what each number means.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("scenario", nargs="?", default="drain", choices=SCENARIOS)
    p.add_argument("--database-url", metavar="URL",
                   help="PostgreSQL URL [SKIVI_DATABASE_URL, DATABASE_URL]; without one, an "
                        "embedded server in .pgdata/bench")
    p.add_argument("--schema", default="skivi_bench",
                   help="scratch schema, created fresh and dropped at the end")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="jobs to drain (drain, backlog: 20000) or single add_job calls "
                        "(enqueue: 5000)")
    p.add_argument("--rate", type=float, default=200.0, help="steady: jobs enqueued per second")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="steady: how long to enqueue (10); enqueue: time the single add_job "
                        "calls instead of counting them")
    p.add_argument("--processes", type=int, metavar="N",
                   help="engine child processes (default: CPU count), in each engine")
    p.add_argument("--engines", type=int, default=1, metavar="N",
                   help="drain, backlog, queues, cpu: run N engines at once over the same "
                        "jobs; each has --processes children, so without it N x the CPU "
                        "count in all")
    p.add_argument("--concurrency", type=int, default=16, help="jobs at once per child")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE_DEFAULT,
                   help="worker.batch_size: the engine's largest claim, and the batch of the "
                        f"raw SQL floor (default: the engine's, {BATCH_SIZE_DEFAULT})")
    p.add_argument("--sync-threads", type=int, default=1,
                   help="worker.sync_threads: threads per child for sync handlers (1 = sync "
                        "handlers run one at a time per child)")
    p.add_argument("--payload-bytes", type=int, default=0,
                   help="pad each payload with a string of this many bytes")
    p.add_argument("--task", default="noop",
                   help="noop, sleep:MS (time.sleep), asleep:MS (asyncio.sleep) or cpu:MS "
                        "(busy loop)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run K times, report each and the median")
    p.add_argument("--json", metavar="PATH", help="write settings, environment and results")
    p.add_argument("--backlog", type=int, default=1_000_000, metavar="N",
                   help="backlog: jobs scheduled in 2100 that must not be claimed")
    p.add_argument("--past-queues", type=int, default=100_000, metavar="N",
                   help="queues: empty serial-queue rows left by past jobs (a queue per "
                        "tenant), present during the second drain of each repeat")
    p.add_argument("--compare", action="store_true",
                   help="backlog: also drain without the backlog, first, and compare")
    p.add_argument("--keep", action="store_true", help="do not drop the schema at the end")
    p.add_argument("--chunk", type=int, default=10_000,
                   help="drain, backlog: jobs per add_jobs call when enqueueing")
    p.add_argument("--bulk", type=int, default=100_000,
                   help="enqueue: jobs in the one bulk add_jobs call")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the raw SQL floor measurements")
    p.add_argument("--no-vacuum", dest="vacuum", action="store_false",
                   help="do not vacuum analyze the job table before each timed drain (the "
                        "planner then has no statistics about it)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="give up on an engine run after this many seconds")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="run the engine with its Prometheus exporter on PORT (0: off), to "
                        "measure what metrics cost")
    p.add_argument("--pgbouncer", type=int, default=0, metavar="POOL",
                   help="run the engines through a PgBouncer (Debian's package) in "
                        "transaction mode with this default_pool_size, started in front of "
                        "the server for the run; engines then send no prepared statements "
                        "and LISTEN on the direct URL (database.listen_url); 0: direct")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   type=engine_setting,
                   help="an engine configuration key, e.g. worker.completion_interval=0.05 "
                        "(VALUE as JSON, else a string); repeatable")
    p.add_argument("--limits", type=int, default=0, metavar="K",
                   help="drain: put every job under a concurrency limit ([[limits]]) keyed "
                        "by a payload tenant, over K tenants (0: no limit, the plain claim)")
    p.add_argument("--limit-concurrency", type=int, default=LIMIT_CONCURRENCY_DEFAULT,
                   metavar="N", help="--limits: the limit's concurrency per tenant (the "
                                     "default never binds an engine of the default size, "
                                     "prefetch included: the cost of the enforcement)")
    p.add_argument("--engine-log-level", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level of the engine subprocess (its log goes to stderr)")
    return p


def parse_options(argv: Sequence[str]) -> Options:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        parse_task(a.task)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("rate", "concurrency", "batch_size", "sync_threads", "repeat", "chunk", "bulk",
                 "timeout", "engines"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("jobs", "duration", "processes"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            p.error(f"--{name} must be positive")
    if a.payload_bytes < 0 or a.backlog < 0:
        p.error("--payload-bytes and --backlog must not be negative")
    if a.engines > 1 and a.scenario in ("steady", "enqueue"):
        p.error(f"--engines is for the scenarios that drain, not {a.scenario}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", a.schema):
        p.error("--schema must be a lower-case SQL identifier")
    if a.scenario == "cpu":
        if not a.task.startswith("cpu:"):
            if a.task != "noop":
                p.error("the cpu scenario runs --task cpu:MS")
            a.task = "cpu:10"
        if a.jobs is None:
            a.jobs = 200
    if a.jobs is None:
        a.jobs = 5_000 if a.scenario == "enqueue" else 20_000
    if a.duration is None and a.scenario == "steady":
        a.duration = 10.0
    url: str = (a.database_url or os.environ.get("SKIVI_DATABASE_URL")
                or os.environ.get("DATABASE_URL") or "")
    embedded = not url
    if embedded:
        from skivi.db.embedded import start_embedded

        url = start_embedded(REPO_ROOT / ".pgdata" / "bench")
        shown = f"embedded PostgreSQL (pgserver) in {REPO_ROOT / '.pgdata' / 'bench'}"
    else:
        shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
    return Options(
        scenario=a.scenario, url=url, url_shown=shown, embedded=embedded, schema=a.schema,
        jobs=a.jobs, rate=a.rate, duration=a.duration, processes=a.processes,
        concurrency=a.concurrency, batch_size=a.batch_size, sync_threads=a.sync_threads,
        payload_bytes=a.payload_bytes, task=a.task, repeat=a.repeat, json_path=a.json,
        backlog=a.backlog, past_queues=a.past_queues, compare=a.compare, keep=a.keep,
        chunk=a.chunk, bulk=a.bulk,
        floor=a.floor, timeout=a.timeout, engine_log_level=a.engine_log_level,
        metrics_port=a.metrics_port,
        vacuum=a.vacuum, engines=a.engines, pgbouncer=a.pgbouncer, engine_url=url,
        settings=tuple(a.set),
        limits=a.limits, limit_concurrency=a.limit_concurrency)


def connect(opts: Options) -> psycopg.Connection[Any]:
    return psycopg.connect(opts.url, autocommit=True, application_name="skivi-bench")


class Queries:
    """The bench's statements, one per file in bench/sql, composed for one scratch schema.

    Attribute name = file name without .sql. Each file is read once and composed with
    psycopg.sql: {schema} as an Identifier, {marker} (SCHEMA_MARKER) as a Literal; values go
    as parameters. Loading fails if a file has no attribute or an attribute no file.
    """

    floor_test_create: sql.Composed
    floor_test_insert: sql.Composed
    floor_test_truncate: sql.Composed
    job_count: sql.Composed
    job_count_backlog_untouched: sql.Composed
    job_count_except_backlog: sql.Composed
    job_delete_except_backlog: sql.Composed
    job_floor_claim_delete: sql.Composed
    job_history_count: sql.Composed
    job_insert_backlog: sql.Composed
    job_queue_count: sql.Composed
    job_queue_delete: sql.Composed
    job_queue_insert_past: sql.Composed
    job_truncate: sql.Composed
    job_vacuum: sql.Composed
    schema_comment_get: sql.Composed
    schema_comment_set: sql.Composed
    schema_create: sql.Composed
    schema_drop: sql.Composed
    server_settings: sql.Composed
    server_statements_exec_time: sql.Composed

    def __init__(self, schema: str) -> None:
        declared = set(Queries.__annotations__)
        present = {path.stem for path in SQL_DIR.glob("*.sql")}
        if declared != present:
            raise RuntimeError(
                "bench queries out of step with bench/sql: "
                f"missing files {sorted(declared - present)}, "
                f"undeclared files {sorted(present - declared)}")
        for name in sorted(declared):
            text = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
            setattr(self, name, sql.SQL(text).format(
                schema=sql.Identifier(schema), marker=sql.Literal(SCHEMA_MARKER)))


@functools.cache
def queries(schema: str) -> Queries:
    return Queries(schema)


def scalar(conn: psycopg.Connection[Any], query: sql.Composed,
           params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def git_ref() -> str | None:
    """branch@commit of the checkout, read from .git (no git command is run)."""
    try:
        git = REPO_ROOT / ".git"
        if git.is_file():
            git = (REPO_ROOT / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        # A worktree's gitdir holds its HEAD; the refs are in the main repository's.
        if (git / "commondir").is_file():
            git = (git / (git / "commondir").read_text().strip()).resolve()
        path = git / ref
        if path.is_file():
            sha = path.read_text().strip()
        else:
            packed = (git / "packed-refs").read_text().splitlines()
            sha = next(line.split()[0] for line in packed if line.endswith(" " + ref))
        return f"{ref.removeprefix('refs/heads/')}@{sha[:12]}"
    except (OSError, StopIteration, IndexError):
        return None


def environment(conn: psycopg.Connection[Any], opts: Options) -> dict[str, Any]:
    cur = conn.execute(queries(opts.schema).server_settings)
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    server = {column.name: value for column, value in zip(cur.description, row, strict=True)}
    return {
        "skivi": skivi.__version__, "skivi_path": str(Path(skivi.__file__).parent),
        "git": git_ref(), "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "psycopg": psycopg.__version__, "psycopg_impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(), "uvloop": importlib.metadata.version("uvloop"),
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "server": server,
    }


LOCAL_HOSTS = ("", "localhost", "::1")


@dataclass(frozen=True)
class ServerCpu:
    """How the bench measures what the server spends on a drain.

    ``pid``: the postmaster's, when the server runs on this machine: the engines then read
    the CPU of its processes from /proc. Else ``statements``: pg_stat_statements answers,
    and the bench reads its execution time instead. Else neither, and ``how`` says so.
    """

    pid: int | None
    statements: bool
    how: str


def local_postmaster(conn: psycopg.Connection[Any]) -> int | None:
    """The pid of the postmaster behind ``conn`` when it runs on this machine: the host is
    a Unix socket or a loopback address, and the connection's backend (libpq knows its pid;
    no statement is sent) is a ``postgres`` process here whose parent is one too. A server in
    a container has pids of its own namespace, which this check refuses."""
    info = conn.info
    hosts = {info.host}
    with contextlib.suppress(psycopg.Error):
        hosts.add(info.hostaddr)
    if not all(h in LOCAL_HOSTS or h.startswith(("/", "127.")) for h in hosts):
        return None
    backend = proc_stat(info.backend_pid)
    if backend is None or proc_comm(info.backend_pid) != "postgres":
        return None
    postmaster = int(backend[STAT_PPID])
    return postmaster if proc_comm(postmaster) == "postgres" else None


def probe_server_cpu(conn: psycopg.Connection[Any], opts: Options) -> ServerCpu:
    pid = local_postmaster(conn)
    if pid is not None:
        return ServerCpu(pid, False, f"CPU of every server process from /proc (postmaster "
                                     f"pid {pid}, on this machine)")
    try:
        scalar(conn, queries(opts.schema).server_statements_exec_time)
    except psycopg.Error:
        return ServerCpu(None, False, "n/a (server not local, no pg_stat_statements)")
    return ServerCpu(None, True, "server not local: pg_stat_statements execution time, "
                                 "not CPU")


@contextlib.contextmanager
def scratch_schema(opts: Options) -> Iterator[None]:
    """Create the schema fresh (a leftover bench schema is dropped; any other is refused),
    migrate it, and drop it at the end unless --keep."""
    q = queries(opts.schema)
    with connect(opts) as conn:
        row = conn.execute(q.schema_comment_get, {"schema": opts.schema}).fetchone()
        if row is not None:
            if row[0] != SCHEMA_MARKER:
                raise SystemExit(f"schema {opts.schema!r} exists and was not made by the "
                                 "bench: refusing to touch it; choose another --schema")
            conn.execute(q.schema_drop)
        conn.execute(q.schema_create)
        conn.execute(q.schema_comment_set)
    try:
        yield
    finally:
        if not opts.keep:
            with connect(opts) as conn:
                conn.execute(q.schema_drop)


def make_system(opts: Options) -> System:
    config = load_config({
        "database": {"connection_string": opts.url, "schema_name": opts.schema},
        "worker": {"processes": opts.processes or 0, "concurrency": opts.concurrency,
                   "batch_size": opts.batch_size, "sync_threads": opts.sync_threads},
    }, env={})  # the environment's SKIVI_* must not steer the bench to another schema
    return create_system(config)


def vacuum(conn: psycopg.Connection[Any], opts: Options) -> None:
    """Before each timed drain: no dead rows from the last run, fresh planner statistics."""
    if opts.vacuum:
        conn.execute(queries(opts.schema).job_vacuum)


# ================================================================================================
# Output helpers
# ================================================================================================

def fmt_rate(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}/s"


def fmt_mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  " + "  ".join(h.rjust(w) if i else h.ljust(w)
                           for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    for r in rows:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def get_path(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def medians(runs: Sequence[Result], paths: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for path in paths:
        values = [v for r in runs if isinstance(v := get_path(r, path), int | float)]
        out[path] = statistics.median(values) if values else None
    return out


def print_settings(opts: Options, env: dict[str, Any]) -> None:
    s = env["server"]
    procs = opts.processes or os.cpu_count() or 1
    print(f"Skivi bench: {opts.scenario}")
    print(f"  skivi {env['skivi']} ({env['skivi_path']}), git {env['git'] or 'unknown'}")
    print(f"  python {env['python']} ({env['python_implementation']}), psycopg "
          f"{env['psycopg']} (impl {env['psycopg_impl']}, libpq {env['libpq']}), "
          f"uvloop {env['uvloop']}")
    print(f"  cpus {env['cpus']}, load average {' '.join(env['loadavg'])}")
    print(f"  database {opts.url_shown}")
    if opts.embedded:
        print("    (no --database-url, SKIVI_DATABASE_URL or DATABASE_URL: using the embedded "
              "server; numbers from it are for trying the bench out, not for comparison)")
    print(f"  server PostgreSQL {s['server_version']}: synchronous_commit={s['synchronous_commit']}"
          f" shared_buffers={s['shared_buffers']} max_connections={s['max_connections']}"
          f" fsync={s['fsync']}")
    print(f"  schema {opts.schema} (fresh; {'kept' if opts.keep else 'dropped'} at the end); "
          + ("vacuum analyze of the job table before each timed drain" if opts.vacuum
             else "no vacuum analyze (--no-vacuum)"))
    if opts.scenario != "enqueue":
        print(f"  {f'{opts.engines} engines at once, each ' if opts.engines > 1 else 'engine '}"
              f"{procs} processes{'' if opts.processes else ' (CPU count)'} x "
              f"{opts.concurrency} concurrency, claim batch {opts.batch_size}, sync threads "
              f"{opts.sync_threads}, in a subprocess; Prometheus exporter "
              + (f"on port {opts.metrics_port}" if opts.metrics_port else "off"))
    if opts.scenario in ("drain", "backlog", "cpu", "queues"):
        print(f"  CPU per job: worker from getrusage and /proc; PostgreSQL: "
              f"{env['server_cpu']['how']}")
    print(f"  task {opts.task}, payload padding {opts.payload_bytes} B, repeat {opts.repeat}")
    if opts.limits:
        print(f"  limits: every job under a concurrency limit of {opts.limit_concurrency} per "
              f"tenant, {opts.limits} tenants (job_claim_limited.sql)")
    if opts.scenario in ("drain", "backlog", "cpu"):
        print(f"  jobs {opts.jobs:,}, enqueued with add_jobs in chunks of {opts.chunk:,}"
              + (f"; backlog {opts.backlog:,} jobs at run_at {BACKLOG_RUN_AT[:10]}"
                 if opts.scenario == "backlog" else ""))
    elif opts.scenario == "steady":
        assert opts.duration is not None
        per_tick = opts.rate * TICK
        how = ("one add_job call per job, each at its due time" if per_tick <= 1 else
               f"the jobs due in each {TICK * 1000:.0f} ms tick in one add_jobs call "
               f"(~{per_tick:.1f} jobs per call)")
        how += "; a producer that falls behind sends all the jobs due in its next call"
        print(f"  rate {opts.rate:,.0f} jobs/s for {opts.duration:g} s "
              f"({round(opts.rate * opts.duration):,} jobs); absolute schedule, {how}")
    else:
        what = (f"for {opts.duration:g} s" if opts.duration else f"x {opts.jobs:,}")
        print(f"  single add_job {what}; bulk add_jobs of {opts.bulk:,} in one call")
    print()


# ================================================================================================
# Measurements
# ================================================================================================

def enqueue_bulk(system: System, opts: Options, n: int) -> Result:
    """add_jobs in chunks of --chunk; the time covers building the specs and every call."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(opts.chunk, n - done)
        if opts.limits:
            specs = [{"task": opts.task_kind,
                      "payload": opts.payload(tenant=f"t{(done + i) % opts.limits}")}
                     for i in range(k)]
        else:
            specs = [{"task": opts.task_kind, "payload": opts.payload()} for _ in range(k)]
        skivi.add_jobs(system, specs)
        done += k
    seconds = time.perf_counter() - t0
    return {"jobs": n, "seconds": seconds, "jobs_per_s": n / seconds}


def floor_claim_delete(system: System, conn: psycopg.Connection[Any], opts: Options,
                       n: int) -> Result:
    """The raw SQL floor of a drain: claim-and-delete in batches, one connection, no engine."""
    enqueue_bulk(system, opts, n)
    vacuum(conn, opts)
    q = queries(opts.schema)
    deleted = 0
    t0 = time.perf_counter()
    while True:
        cur = conn.execute(q.job_floor_claim_delete, {"limit": opts.batch_size})
        if cur.rowcount <= 0:
            break
        deleted += cur.rowcount
    seconds = time.perf_counter() - t0
    left = scalar(conn, q.job_count_except_backlog, BACKLOG_PARAMS)
    return {"jobs": deleted, "seconds": seconds, "jobs_per_s": deleted / seconds,
            "batch": opts.batch_size, "ok": deleted == n and left == 0}


def engine_drain(opts: Options, n: int, label: str, conn: psycopg.Connection[Any],
                 server: ServerCpu, latency_file: str | None = None) -> Result:
    """Run --engines engines at once, each with --once, over n runnable jobs; a live line
    every second (once every engine still running has reported since the last one).

    The engines start gated: each gets ready and waits; once all are ready the bench
    notes the time and the server's CPU and sends GO, and the drain is timed from there
    (see _open_cpu_window_first)."""
    eps: list[EngineRun] = []
    statements: dict[str, float] = {}
    go: dict[str, float] = {}  # the bench's GO: its time, and the server's CPU then

    def release() -> None:
        if server.pid:
            go["server_s"] = tree_cpu(server.pid)
        go["t"] = time.time()
        for ep in eps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ep.proc.pid, signal.SIGUSR1)

    def statements_at(edge: str) -> None:
        if server.statements and edge not in statements:
            statements[edge] = float(scalar(conn, queries(opts.schema).server_statements_exec_time))

    try:
        for _ in range(opts.engines):
            eps.append(EngineRun.start(opts, once=True, expect=n, latency_file=latency_file,
                                       server_pid=server.pid, gate=True))
        spawned = time.time()
        last_t, last_done = spawned, 0
        completed = [0] * len(eps)
        running = set(range(len(eps)))  # no report yet, stdout open
        fresh: set[int] = set()  # progress reported since the last live line
        edges = {"go": 0, "end": 0}
        ready: set[int] = set()
        deadline = time.monotonic() + opts.timeout
        timed_out = False
        while running:
            if time.monotonic() >= deadline:
                timed_out = True
                print(f"  {label}: no end after {opts.timeout:g} s: stopping the engine"
                      + ("s" if len(eps) > 1 else ""))
                break
            got = False
            for i in sorted(running):
                event = eps[i].next(0.05 if len(running) == 1 else 0.0)
                kind = event["event"]
                if kind == "timeout":
                    continue
                got = True
                if kind in ("report", "end"):
                    running.discard(i)
                elif kind == "ready":
                    ready.add(i)
                if not go and (ready | (set(range(len(eps))) - running)) == set(range(len(eps))):
                    release()  # an engine that ended before it was ready has its error
                    last_t = go["t"]  # the first line's rate counts from there
                elif kind == "progress":
                    completed[i] = event["completed"]
                    fresh.add(i)
                elif kind == "done":
                    completed[i] = event["completed"]
                elif kind == "window":
                    edges[event["edge"]] += 1
                    if event["edge"] == "go":
                        statements_at("go")
                    elif edges["end"] == len(eps):
                        statements_at("end")
            if running and fresh >= running:
                t, done = time.time(), sum(completed)
                rate = (done - last_done) / max(t - last_t, 1e-9)
                each = ("" if len(eps) == 1 else
                        "  (" + " + ".join(f"{c:,}" for c in completed) + ")")
                print(f"  {label} {t - spawned:6.1f} s  done {done:>10,} / {n:,}  "
                      f"{rate:>10,.0f} jobs/s{each}", flush=True)
                last_t, last_done = t, done
                fresh.clear()
            if not got and len(running) > 1:
                time.sleep(0.005)
    except BaseException:
        for ep in eps:
            ep.stop()
        raise
    codes = [ep.stop() if timed_out else ep.finish(60.0) for ep in eps]
    for ep in eps:
        if ep.report is None:
            ep.wait_for("report", 5.0)
    if "go" in statements:
        statements_at("end")  # late if an engine never closed its window
    reports = [ep.report or {} for ep in eps]
    return drain_result(reports, codes, n, spawned, timed_out, server, statements, go)


STATS_KEYS = ("claimed", "completed", "failed", "exhausted", "stale", "child_crashes",
              "rescued")


def drain_result(reports: Sequence[dict[str, Any]], codes: Sequence[int], n: int,
                 spawned: float, timed_out: bool, server: ServerCpu,
                 statements: dict[str, float], go: dict[str, float] | None = None) -> Result:
    """One drain's figures from its engines' reports: jobs/s from GO (all engines ready;
    without one, the first engine's start) to the last job done, the stats summed, the
    CPU per job (cpu_figures), and each engine's own report under "engines"."""
    stats = ({k: sum((r.get("stats") or {}).get(k, 0) for r in reports) for k in STATS_KEYS}
             if any(r.get("stats") for r in reports) else None)
    starts = [r["started_at"] for r in reports if r.get("started_at")]
    ends = [e for r in reports if (e := r.get("done_at") or r.get("last_completion_at"))]
    go = go or {}
    begin = go.get("t") or (min(starts) if starts else None)
    seconds = (max(ends) - begin if begin and ends and stats
               and stats["completed"] == n else None)
    errors = [f"engine {i + 1}: {r['error']}" if len(reports) > 1 else r["error"]
              for i, r in enumerate(reports) if r.get("error")]
    engines = [{"exit_code": code, "error": r.get("error"), "stats": r.get("stats"),
                "memory": r.get("memory"), "processes": r.get("processes"),
                "concurrency": r.get("concurrency"), "started_at": r.get("started_at"),
                "done_at": r.get("done_at"), "last_completion_at": r.get("last_completion_at"),
                "cpu": engine_cpu(r.get("cpu") or {})}
               for r, code in zip(reports, codes, strict=True)]
    return {
        "jobs": n, "seconds": seconds, "jobs_per_s": n / seconds if seconds else None,
        "engine_wall_s": time.time() - spawned,
        "exit_code": next((c for c in codes if c != 0), 0), "timed_out": timed_out,
        "error": "; ".join(errors) or None, "stats": stats,
        "memory": reports[0].get("memory") if len(reports) == 1 else None,
        "processes": sum(r.get("processes") or 0 for r in reports) or None,
        "concurrency": reports[0].get("concurrency"), "engine_count": len(reports),
        "go_at": go.get("t"),
        **cpu_figures(reports, n, server, statements, go.get("server_s")),
        "engines": engines,
    }


def engine_cpu(window: dict[str, Any]) -> dict[str, Any] | None:
    """One engine's CPU window in seconds: its length, the parent's and the children's
    CPU, its backends' (with a local server), and the two samples themselves."""
    go, end = window.get("go"), window.get("end")
    if not go or not end:
        return None
    out: dict[str, Any] = {"window_s": end["t"] - go["t"], "ended": end.get("when"),
                           "parent_s": end["parent_s"] - go["parent_s"],
                           "children_s": end["children_s"] - go["children_s"]}
    if "backends_s" in end:
        # A backend whose connection opened in the window counts from when it was ready.
        before = {**end.get("backends_started_s", {}), **go.get("backends_s", {})}
        used = {pid: v - before.get(pid, 0.0) for pid, v in end["backends_s"].items()}
        out["backends_s"] = sum(used.values())
        # By connection (skivi-claim, skivi-engine, ...): which statements the server's
        # work per job goes to, without pg_stat_statements.
        names = end.get("backend_names", {})
        by_name: dict[str, float] = {}
        for pid, v in used.items():
            by_name[names.get(pid, "?")] = by_name.get(names.get(pid, "?"), 0.0) + v
        out["backends_by_name_s"] = by_name
        out["backends_start_up_s"] = sum(end.get("backends_started_s", {}).values())
    return {**out, "go": go, "end": end}


def cpu_figures(reports: Sequence[dict[str, Any]], n: int, server: ServerCpu,
                statements: dict[str, float], server_at_go: float | None = None) -> Result:
    """CPU per job over the window, from each engine's first claim (its "go" sample) to
    its end ("end": the last job's completion written, or its decision to stop).

    Worker: the sum over the engines of their parents' and children's CPU in their own
    windows. PostgreSQL (server on this machine): every server process's CPU from the
    first engine's "go" to the last engine's "end" (one counter for the whole server, read
    by whichever engine sampled), and the sum of each engine's own backends' CPU in its
    window; from ``server_at_go`` (the bench's read at GO) instead when the engines were
    gated. Not local: pg_stat_statements execution time between the bench's reads at the
    first "go" and the last "end", if it answers."""
    out: Result = {"cpu_window_s": None, "parent_cpu_us_per_job": None,
                   "children_cpu_us_per_job": None, "worker_cpu_us_per_job": None,
                   "pg_cpu_us_per_job": None, "pg_cpu_us_per_job_engine_backends": None,
                   "pg_exec_us_per_job": None,
                   "pg_cpu_source": ("proc" if server.pid else
                                     "pg_stat_statements" if server.statements else None)}
    windows = [engine_cpu(r.get("cpu") or {}) for r in reports]
    if not n or not all(windows):
        out["cpu_note"] = "no CPU window: an engine never claimed, or never ended its window"
        return out
    ws = [w for w in windows if w]
    first = min((w["go"] for w in ws), key=lambda s: s["t"])
    last = max((w["end"] for w in ws), key=lambda s: s["t"])

    def per_job(seconds: float) -> float:
        return seconds / n * 1e6

    parent = per_job(sum(w["parent_s"] for w in ws))
    children = per_job(sum(w["children_s"] for w in ws))
    out.update(cpu_window_s=last["t"] - first["t"], parent_cpu_us_per_job=parent,
               children_cpu_us_per_job=children, worker_cpu_us_per_job=parent + children)
    server_first = server_at_go if server_at_go is not None else first.get("server_s")
    if server.pid and server_first is not None and "server_s" in last:
        start_up = sum(w.get("backends_start_up_s", 0.0) for w in ws)
        out["pg_cpu_us_per_job"] = per_job(last["server_s"] - server_first - start_up)
        out["pg_cpu_us_per_job_engine_backends"] = per_job(
            sum(w.get("backends_s", 0.0) for w in ws))
        by_name: dict[str, float] = {}
        for w in ws:
            for name, v in w.get("backends_by_name_s", {}).items():
                by_name[name] = by_name.get(name, 0.0) + v
        out["pg_cpu_us_per_job_by_connection"] = {name: per_job(v)
                                                  for name, v in sorted(by_name.items())}
    elif "go" in statements and "end" in statements:
        out["pg_exec_us_per_job"] = (statements["end"] - statements["go"]) * 1000 / n
    return out


def verify_drain(conn: psycopg.Connection[Any], opts: Options, n: int, drain: Result,
                 backlog: int) -> list[str]:
    problems = []
    if drain["exit_code"] != 0:
        problems.append(f"engine exit code {drain['exit_code']} ({drain.get('error')})")
    completed = (drain.get("stats") or {}).get("completed")
    if completed != n:
        problems.append(f"engine completed {completed} jobs, expected {n}")
    q = queries(opts.schema)
    left = scalar(conn, q.job_count_except_backlog, BACKLOG_PARAMS)
    if left:
        problems.append(f"{left} jobs left in {opts.schema}.job")
    failed = scalar(conn, q.job_history_count)
    if failed:
        problems.append(f"{failed} jobs in {opts.schema}.job_history (exhausted)")
    if backlog:
        untouched = scalar(conn, q.job_count_backlog_untouched, BACKLOG_PARAMS)
        if untouched != backlog:
            problems.append(f"backlog: {untouched} of {backlog} jobs untouched")
    return problems


def drain_cycle(system: System, conn: psycopg.Connection[Any], opts: Options,
                server: ServerCpu, run: int, backlog: int, label: str) -> Result:
    """One repeat of drain/backlog: enqueue, drain with the engine, verify, floor."""
    n = opts.jobs
    enq = enqueue_bulk(system, opts, n)
    print(f"  {label} run {run}: enqueued {n:,} jobs in {enq['seconds']:.2f} s "
          f"({fmt_rate(enq['jobs_per_s'])})", flush=True)
    vacuum(conn, opts)
    drain = engine_drain(opts, n, label, conn, server)
    problems = verify_drain(conn, opts, n, drain, backlog)
    result: Result = {"run": run, "backlog": backlog, "enqueue": enq, "drain": drain}
    if problems:
        print(f"  {label} run {run}: VERIFICATION FAILED: " + "; ".join(problems))
        # Leave a clean table for the next repeat.
        conn.execute(queries(opts.schema).job_delete_except_backlog, BACKLOG_PARAMS)
    else:
        print(f"  {label} run {run}: drained {n:,} jobs in {fmt_s(drain['seconds'])} "
              f"({fmt_rate(drain['jobs_per_s'])}): verified", flush=True)
    result["verified"] = not problems
    result["problems"] = problems
    if opts.floor:
        floor = floor_claim_delete(system, conn, opts, n)
        result["floor"] = floor
        if drain["jobs_per_s"]:
            result["floor_ratio"] = drain["jobs_per_s"] / floor["jobs_per_s"]
        print(f"  {label} run {run}: raw SQL floor {fmt_rate(floor['jobs_per_s'])} "
              f"(claim-and-delete, batches of {opts.batch_size}); Skivi drain = "
              f"{fmt_pct(result.get('floor_ratio'))} of the floor", flush=True)
        if not floor["ok"]:
            result["verified"] = False
            problems.append("the floor run did not delete every job")
    print()
    return result


DRAIN_MEDIANS = ("enqueue.jobs_per_s", "drain.seconds", "drain.jobs_per_s", "floor.jobs_per_s",
                 "floor_ratio", "drain.pg_cpu_us_per_job",
                 "drain.pg_cpu_us_per_job_engine_backends", "drain.pg_exec_us_per_job",
                 "drain.worker_cpu_us_per_job", "drain.parent_cpu_us_per_job",
                 "drain.children_cpu_us_per_job")


def fmt_us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def drain_row(first: str, get: Callable[[str], Any], source: str | None,
              verified: str) -> list[str]:
    """A summary row: `get` reads a path of DRAIN_MEDIANS from a run or from the medians."""
    seconds = get("drain.seconds")
    if source == "pg_stat_statements":
        pg = "-" if (ms := get("drain.pg_exec_us_per_job")) is None else f"{ms:.1f}*"
    else:
        pg = fmt_us(get("drain.pg_cpu_us_per_job")) if source else "n/a"
    worker, parent, children = (get(f"drain.{k}_cpu_us_per_job")
                                for k in ("worker", "parent", "children"))
    return [first, fmt_rate(get("enqueue.jobs_per_s")),
            "-" if seconds is None else f"{seconds:.2f}", fmt_rate(get("drain.jobs_per_s")),
            fmt_rate(get("floor.jobs_per_s")), fmt_pct(get("floor_ratio")), pg,
            fmt_us(get("drain.pg_cpu_us_per_job_engine_backends")) if source == "proc" else "n/a",
            "-" if None in (worker, parent, children)
            else f"{worker:.1f} ({parent:.1f} + {children:.1f})", verified]


def print_drain_summary(title: str, runs: Sequence[Result]) -> dict[str, float | None]:
    print(title)
    source = get_path(runs[0], "drain.pg_cpu_source") if runs else None
    rows = [drain_row(str(r["run"]), functools.partial(get_path, r), source,
                      "yes" if r["verified"] else "NO") for r in runs]
    med = medians(runs, DRAIN_MEDIANS)
    if len(runs) > 1:
        rows.append(drain_row("median", med.get, source, ""))
    print_table(["run", "enqueue", "drain s", "drain", "SQL floor", "of floor", "PG us/job",
                 "own backends", "worker us/job (parent + children)", "verified"], rows)
    print("  CPU per job (user + system, us) from the first claim to the last job done: PG = "
          "every PostgreSQL server process,\n  own backends = only the engine's connections' "
          "server processes, worker = the engine's parent + its children")
    for r in runs:
        if by := get_path(r, "drain.pg_cpu_us_per_job_by_connection"):
            print(f"  own backends by connection, run {r['run']} (us/job): "
                  + ", ".join(f"{name} {us:.1f}" for name, us in by.items()))
    if len(runs) > 1:
        print("  (in the median row each figure is its own median: the parent's and the "
              "children's need not add up to the worker's)")
    if source == "pg_stat_statements":
        print("  * the server is not on this machine: PG is pg_stat_statements' execution time "
              "of this database's statements, not CPU")
    elif source is None:
        print("  n/a: the server is not on this machine and pg_stat_statements does not answer")
    print("  memory at the end of the drain (VmRSS; peak VmHWM in brackets), sampled when the "
          "last job completed or the engine was asked to stop:")
    for r in runs:
        engines = get_path(r, "drain.engines") or [{}]
        for i, engine in enumerate(engines):
            which = f"run {r['run']}" + (f" engine {i + 1}" if len(engines) > 1 else "")
            mem = engine.get("memory")
            if not mem:
                print(f"    {which}: not sampled")
                continue
            parent = mem.get("parent") or {}
            children = ", ".join(f"{fmt_mib(c.get('rss_kib'))} ({fmt_mib(c.get('hwm_kib'))})"
                                 for c in mem.get("children") or [])
            print(f"    {which}: engine parent {fmt_mib(parent.get('rss_kib'))} "
                  f"({fmt_mib(parent.get('hwm_kib'))}); children {children or '-'}")
    print()
    return med


# ------------------------------------------------------------------------------------------------

def scenario_drain(opts: Options, system: System, conn: psycopg.Connection[Any],
                   server: ServerCpu) -> Result:
    runs = [drain_cycle(system, conn, opts, server, i + 1, 0, "drain")
            for i in range(opts.repeat)]
    med = print_drain_summary(f"summary: drain of {opts.jobs:,} {opts.task} jobs", runs)
    return {"runs": runs, "median": med, "verified": all(r["verified"] for r in runs)}


def scenario_backlog(opts: Options, system: System, conn: psycopg.Connection[Any],
                     server: ServerCpu) -> Result:
    out: Result = {}
    if opts.compare:
        plain = [drain_cycle(system, conn, opts, server, i + 1, 0, "no backlog")
                 for i in range(opts.repeat)]
        out["without_backlog"] = {"runs": plain}
    t0 = time.perf_counter()
    conn.execute(queries(opts.schema).job_insert_backlog,
                 {"backlog_task": BACKLOG_TASK, "run_at": BACKLOG_RUN_AT, "count": opts.backlog})
    seconds = time.perf_counter() - t0
    vacuum(conn, opts)
    print(f"  backlog: inserted {opts.backlog:,} jobs at run_at {BACKLOG_RUN_AT[:10]} in "
          f"{seconds:.2f} s (one insert ... select generate_series), then vacuum analyze\n")
    out["backlog_insert"] = {"jobs": opts.backlog, "seconds": seconds,
                             "jobs_per_s": opts.backlog / seconds if seconds else None}
    runs = [drain_cycle(system, conn, opts, server, i + 1, opts.backlog, "backlog")
            for i in range(opts.repeat)]
    out["with_backlog"] = {"runs": runs}
    if opts.compare:
        out["without_backlog"]["median"] = print_drain_summary(
            f"summary: drain of {opts.jobs:,} {opts.task} jobs, no backlog", plain)
    med = print_drain_summary(f"summary: drain of {opts.jobs:,} {opts.task} jobs with "
                              f"{opts.backlog:,} backlog jobs waiting", runs)
    out["with_backlog"]["median"] = med
    if opts.compare:
        base = out["without_backlog"]["median"]["drain.jobs_per_s"]
        if base and med["drain.jobs_per_s"]:
            out["backlog_ratio"] = med["drain.jobs_per_s"] / base
            print(f"  with the backlog, the drain runs at {fmt_pct(out['backlog_ratio'])} of "
                  "its speed without\n")
    all_runs = runs + (plain if opts.compare else [])
    out["verified"] = all(r["verified"] for r in all_runs)
    return out


def scenario_queues(opts: Options, system: System, conn: psycopg.Connection[Any],
                    server: ServerCpu) -> Result:
    """Drain plain (unqueued) jobs without, then with, --past-queues empty job_queue rows,
    alternating within each repeat; the figure is the ratio of the medians. The engine
    prunes empty queue rows as it runs, so the second drain also pays for that."""
    q = queries(opts.schema)
    plain, crowded = [], []
    for i in range(opts.repeat):
        plain.append(drain_cycle(system, conn, opts, server, i + 1, 0, "no past queues"))
        t0 = time.perf_counter()
        conn.execute(q.job_queue_insert_past, {"count": opts.past_queues})
        vacuum(conn, opts)
        print(f"  inserted {opts.past_queues:,} empty serial-queue rows in "
              f"{time.perf_counter() - t0:.2f} s\n")
        crowded.append(drain_cycle(system, conn, opts, server, i + 1, 0, "past queues"))
        left = scalar(conn, q.job_queue_count)
        print(f"  past queues: {left:,} of {opts.past_queues:,} rows left after the drain "
              "(the engine prunes empty ones)\n")
        crowded[-1]["queue_rows_left"] = left
        conn.execute(q.job_queue_delete)
    out: Result = {
        "without": {"runs": plain, "median": print_drain_summary(
            f"summary: drain of {opts.jobs:,} {opts.task} jobs", plain)},
        "with": {"runs": crowded, "median": print_drain_summary(
            f"summary: the same with {opts.past_queues:,} past queues", crowded)}}
    base = out["without"]["median"]["drain.jobs_per_s"]
    med = out["with"]["median"]["drain.jobs_per_s"]
    ratios = [c["drain"]["jobs_per_s"] / p["drain"]["jobs_per_s"]
              for p, c in zip(plain, crowded, strict=True)
              if c["drain"]["jobs_per_s"] and p["drain"]["jobs_per_s"]]
    if base and med:
        out["ratio_of_medians"] = med / base
        print(f"  with {opts.past_queues:,} past queues the drain runs at "
              f"{fmt_pct(out['ratio_of_medians'])} of its speed without (median of the "
              f"pairwise ratios: {fmt_pct(statistics.median(ratios) if ratios else None)})\n")
    out["pair_ratios"] = ratios
    out["verified"] = all(r["verified"] for r in plain + crowded)
    return out


# ------------------------------------------------------------------------------------------------

@dataclass
class Producer:
    """Enqueues `total` jobs at `rate` per second on an absolute schedule (no drift)."""

    system: System
    opts: Options
    total: int
    sent: int = 0
    calls: int = 0
    lags: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    finished_wall: float = 0.0
    error: BaseException | None = None
    cancelled: bool = False

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def _run(self) -> None:
        rate, task = self.opts.rate, self.opts.task_kind
        t0 = self.started = time.monotonic()
        next_wake = t0
        while self.sent < self.total and not self.cancelled:
            now = time.monotonic()
            if now < next_wake:
                time.sleep(next_wake - now)
                now = time.monotonic()
            due = min(self.total, int((now - t0) * rate) + 1)
            k = due - self.sent
            if k > 0:
                self.lags.append(now - (t0 + self.sent / rate))
                payload = self.opts.payload(t=time.time())
                if k == 1:
                    skivi.add_job(self.system, task, payload)
                else:
                    skivi.add_jobs(self.system, [{"task": task, "payload": payload}] * k)
                self.sent = due
                self.calls += 1
            next_wake = max(t0 + self.sent / rate, now + TICK)
        self.finished = time.monotonic()
        self.finished_wall = time.time()


def read_latencies(path: str) -> list[float]:
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            enq, _, start = line.partition(" ")
            out.append(float(start) - float(enq))
    out.sort()
    return out


def scenario_steady(opts: Options, system: System, conn: psycopg.Connection[Any],
                    server: ServerCpu) -> Result:
    runs = []
    for run in range(1, opts.repeat + 1):
        runs.append(steady_run(opts, system, conn, run))
    paths = ("latency_ms.p50", "latency_ms.p95", "latency_ms.p99", "latency_ms.max",
             "enqueue_rate", "tail_s")
    med = medians(runs, paths)
    print(f"summary: steady {opts.rate:,.0f} {opts.task} jobs/s for {opts.duration:g} s "
          "(enqueue-to-start latency)")
    rows = [[str(r["run"]), f"{r['jobs']:,}", fmt_rate(r["enqueue_rate"]),
             *(f"{r['latency_ms'][k]:.1f}" if r["latency_ms"][k] is not None else "-"
               for k in ("p50", "p95", "p99", "max")),
             f"{r['backlog_max']:,}", f"{r['tail_s']:.2f}" if r["tail_s"] is not None else "-",
             "yes" if r["kept_up"] else "NO", "yes" if r["verified"] else "NO"] for r in runs]
    if len(runs) > 1:
        rows.append(["median", "", fmt_rate(med["enqueue_rate"]),
                     *(f"{med['latency_ms.' + k]:.1f}" if med["latency_ms." + k] is not None
                       else "-" for k in ("p50", "p95", "p99", "max")),
                     "", f"{med['tail_s']:.2f}" if med["tail_s"] is not None else "-", "", ""])
    print_table(["run", "jobs", "enqueued", "p50 ms", "p95 ms", "p99 ms", "max ms",
                 "max backlog", "tail s", "kept up", "verified"], rows)
    print("  latency = handler start - time.time() just before the enqueue call (so it "
          "includes the insert's commit);\n  backlog = jobs enqueued and not yet completed, "
          "sampled every second; tail = last job done - last enqueue returned\n")
    return {"runs": runs, "median": med, "verified": all(r["verified"] for r in runs)}


def steady_run(opts: Options, system: System, conn: psycopg.Connection[Any], run: int) -> Result:
    assert opts.duration is not None
    total = round(opts.rate * opts.duration)
    tmp = tempfile.mkdtemp(prefix="skivi-bench-")
    latency_file = os.path.join(tmp, "latency")
    q = queries(opts.schema)

    def unfinished() -> int:
        """Jobs enqueued and not yet completed (the backlog jobs of --backlog aside)."""
        return int(scalar(conn, q.job_count_except_backlog, BACKLOG_PARAMS))

    ep = EngineRun.start(opts, once=False, expect=total + 1, latency_file=latency_file)
    problems: list[str] = []
    samples: list[dict[str, float]] = []
    done_event: dict[str, Any] | None = None
    producer = Producer(system, opts, total)
    try:
        if ep.wait_for("started", 60.0) is None:
            raise SystemExit("steady: the engine did not start")
        # One warm-up job (no latency recorded): the engine is claiming before the clock runs.
        skivi.add_job(system, opts.task_kind, opts.payload(warmup=True))
        deadline = time.monotonic() + 30.0
        while unfinished() and time.monotonic() < deadline:
            time.sleep(0.01)
        if unfinished():
            problems.append("the warm-up job was not done within 30 s")
        thread = threading.Thread(target=producer.run, name="producer", daemon=True)
        thread.start()
        t0 = time.monotonic()
        completed = 0
        tick = 1
        end_deadline = t0 + opts.duration + max(60.0, opts.duration) + opts.timeout
        while done_event is None and time.monotonic() < end_deadline:
            wake = t0 + tick * PROGRESS_INTERVAL
            while (left := wake - time.monotonic()) > 0:
                event = ep.next(left)
                if event["event"] == "end":
                    break
                if event["event"] == "progress":
                    completed = max(0, event["completed"] - 1)  # less the warm-up job
                elif event["event"] == "done":
                    done_event = event
                    completed = total
            if ep.proc.poll() is not None and done_event is None:
                problems.append("the engine exited early")
                break
            backlog = unfinished()
            samples.append({"t": tick * PROGRESS_INTERVAL, "enqueued": producer.sent,
                            "completed": completed, "backlog": backlog})
            print(f"  steady {tick * PROGRESS_INTERVAL:5.0f} s  enqueued {producer.sent:>9,}  "
                  f"done {completed:>9,}  backlog {backlog:>7,}", flush=True)
            tick += 1
        thread.join(5.0)
    finally:
        producer.cancelled = True
        ep.stop(timeout=opts.timeout)
        ep.finish(10.0)
    if producer.error is not None:
        problems.append(f"producer failed: {producer.error!r}")
    rep = ep.report or {}
    if done_event is None:
        problems.append("not every job was done before the deadline")
    if rep.get("code") != 0:
        problems.append(f"engine exit code {rep.get('code')} ({rep.get('error')})")
    left = unfinished()
    if left:
        problems.append(f"{left} jobs left in {opts.schema}.job")
        conn.execute(q.job_delete_except_backlog, BACKLOG_PARAMS)
    exhausted = scalar(conn, q.job_history_count)
    if exhausted:
        problems.append(f"{exhausted} jobs exhausted")
    lat = read_latencies(latency_file)
    shutil.rmtree(tmp, ignore_errors=True)
    if len(lat) != total:
        problems.append(f"{len(lat)} latencies recorded for {total} jobs")
    produce_s = producer.finished - producer.started if producer.finished else None
    tail = (max(0.0, done_event["t"] - producer.finished_wall)
            if done_event and producer.finished_wall else None)
    lags = sorted(producer.lags)
    allowed_tail = 1.0 + opts.task_ms / 1000
    result: Result = {
        "run": run, "jobs": total, "rate": opts.rate, "duration": opts.duration,
        "enqueue_seconds": produce_s,
        "enqueue_rate": total / produce_s if produce_s else None,
        "enqueue_calls": producer.calls,
        "producer_lag_ms": {"p99": (percentile(lags, 99) or 0) * 1000,
                            "max": (lags[-1] if lags else 0) * 1000},
        "latency_ms": {k: (v * 1000 if (v := percentile(lat, p)) is not None else None)
                       for k, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "latency_mean_ms": statistics.fmean(lat) * 1000 if lat else None,
        "backlog": samples, "backlog_max": max((s["backlog"] for s in samples), default=0),
        "tail_s": tail, "kept_up": tail is not None and tail <= allowed_tail,
        "memory": rep.get("memory"), "stats": rep.get("stats"),
        "verified": not problems, "problems": problems,
    }
    lm = result["latency_ms"]
    print(f"  steady run {run}: {total:,} jobs, enqueued at {fmt_rate(result['enqueue_rate'])} "
          f"in {producer.calls:,} calls (producer lag p99 {result['producer_lag_ms']['p99']:.1f}"
          f" ms, max {result['producer_lag_ms']['max']:.1f} ms)")
    if lat:
        print(f"  latency p50 {lm['p50']:.1f} ms, p95 {lm['p95']:.1f} ms, p99 {lm['p99']:.1f} "
              f"ms, max {lm['max']:.1f} ms; kept up: {'yes' if result['kept_up'] else 'NO'}"
              + (f" (last job done {tail:.2f} s after the last enqueue)" if tail is not None
                 else ""))
    print(f"  steady run {run}: " + ("verified" if not problems else
                                     "VERIFICATION FAILED: " + "; ".join(problems)))
    print()
    return result


# ------------------------------------------------------------------------------------------------

ENQUEUE_CHUNK = 100


def scenario_enqueue(opts: Options, system: System, conn: psycopg.Connection[Any],
                     server: ServerCpu) -> Result:
    q = queries(opts.schema)
    conn.execute(q.floor_test_create)
    runs = []
    for run in range(1, opts.repeat + 1):
        task, payload = opts.task_kind, opts.payload()
        skivi.add_job(system, task, payload)  # warm the pool and the prepared statement
        conn.execute(q.job_truncate)
        # add_job and the floor alternate in chunks of ENQUEUE_CHUNK calls, so that the
        # ratio is taken under the same conditions (this machine drifts within seconds).
        fconn = connect(opts) if opts.floor else None
        if fconn is not None:
            fconn.execute(q.floor_test_insert)
        n = floor_n = 0
        single_s = floor_s = 0.0
        started = time.perf_counter()
        stop_at = started + opts.duration if opts.duration else None
        next_line = started + PROGRESS_INTERVAL
        try:
            while (n < opts.jobs) if stop_at is None else (time.perf_counter() < stop_at):
                chunk = ENQUEUE_CHUNK if stop_at is not None else min(ENQUEUE_CHUNK,
                                                                       opts.jobs - n)
                t0 = time.perf_counter()
                for _ in range(chunk):
                    skivi.add_job(system, task, payload)
                single_s += time.perf_counter() - t0
                n += chunk
                if fconn is not None:
                    t0 = time.perf_counter()
                    for _ in range(chunk):
                        fconn.execute(q.floor_test_insert)
                    floor_s += time.perf_counter() - t0
                    floor_n += chunk
                if (now := time.perf_counter()) >= next_line:
                    next_line += PROGRESS_INTERVAL
                    print(f"  enqueue {now - started:5.1f} s  single add_job {n:>9,}  "
                          f"{n / single_s:>9,.0f} jobs/s so far", flush=True)
        finally:
            if fconn is not None:
                fconn.close()
        single = {"jobs": n, "seconds": single_s, "jobs_per_s": n / single_s}
        stored = scalar(conn, q.job_count)
        conn.execute(q.job_truncate)
        floor = None
        if floor_n:
            floor = {"transactions": floor_n, "seconds": floor_s, "per_s": floor_n / floor_s}
            conn.execute(q.floor_test_truncate)

        specs = [{"task": task, "payload": payload} for _ in range(opts.bulk)]
        t0 = time.perf_counter()
        skivi.add_jobs(system, specs)
        bulk_s = time.perf_counter() - t0
        bulk = {"jobs": opts.bulk, "seconds": bulk_s, "jobs_per_s": opts.bulk / bulk_s}
        bulk_stored = scalar(conn, q.job_count)
        conn.execute(q.job_truncate)
        problems = []
        if stored != n:
            problems.append(f"{stored} single add_job rows stored for {n} calls")
        if bulk_stored != opts.bulk:
            problems.append(f"{bulk_stored} bulk rows stored for {opts.bulk}")
        r: Result = {"run": run, "single": single, "floor": floor, "bulk": bulk,
                     "verified": not problems, "problems": problems}
        if floor:
            r["floor_ratio"] = single["jobs_per_s"] / floor["per_s"]
        print(f"  enqueue run {run}: single add_job {fmt_rate(single['jobs_per_s'])} "
              f"({n:,} calls, {1000 * single_s / n:.3f} ms each)"
              + (f"; single-insert floor {fmt_rate(floor['per_s'])} "
                 f"({1000 * floor['seconds'] / n:.3f} ms each): add_job = "
                 f"{fmt_pct(r['floor_ratio'])} of the floor" if floor else ""))
        print(f"  enqueue run {run}: bulk add_jobs of {opts.bulk:,}: {bulk_s:.2f} s "
              f"({fmt_rate(bulk['jobs_per_s'])}); "
              + ("verified" if not problems else "VERIFICATION FAILED: " + "; ".join(problems)))
        print()
        runs.append(r)
    paths = ("single.jobs_per_s", "floor.per_s", "floor_ratio", "bulk.jobs_per_s")
    med = medians(runs, paths)
    print("summary: enqueue")
    rows = [[str(r["run"]), fmt_rate(get_path(r, "single.jobs_per_s")),
             fmt_rate(get_path(r, "floor.per_s")), fmt_pct(r.get("floor_ratio")),
             fmt_rate(get_path(r, "bulk.jobs_per_s")), "yes" if r["verified"] else "NO"]
            for r in runs]
    if len(runs) > 1:
        rows.append(["median", *(fmt_rate(med[p]) if p != "floor_ratio" else fmt_pct(med[p])
                                 for p in paths), ""])
    print_table(["run", "add_job", "insert floor", "of floor", f"add_jobs x {opts.bulk:,}",
                 "verified"], rows)
    print("  add_job: one call, one transaction each; insert floor: plain single-row insert "
          "transactions\n  (autocommit, one connection); add_jobs: one call\n")
    return {"runs": runs, "median": med, "verified": all(r["verified"] for r in runs)}


# ================================================================================================
# main
# ================================================================================================

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_engine"]:
        return engine_main(argv[1:])
    try:
        opts = parse_options(argv)
        if not opts.pgbouncer:
            return run_scenario(opts)
        from tests.support.pgbouncer import PgBouncer

        with PgBouncer(opts.url, pool_size=opts.pgbouncer) as bouncer:
            opts.engine_url = bouncer.url(opts.url)
            print(f"  engines through PgBouncer (transaction mode, pool {opts.pgbouncer}) "
                  f"on port {bouncer.port}")
            return run_scenario(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: engine stopped, scratch schema dropped (unless --keep)",
              file=sys.stderr)
        return 130


def cpu_cycle(system: System, conn: psycopg.Connection[Any], opts: Options, server: ServerCpu,
              run: int) -> Result:
    """One repeat of cpu: enqueue, drain with --once while each job writes its span."""
    n = opts.jobs
    enqueue_bulk(system, opts, n)
    vacuum(conn, opts)
    with tempfile.TemporaryDirectory(prefix="skivi-bench-cpu-") as tmp:
        spans_path = os.path.join(tmp, "spans")
        drain = engine_drain(opts, n, "cpu", conn, server, latency_file=spans_path)
        spans = [tuple(map(float, line.split()[1:3]))
                 for line in Path(spans_path).read_text().splitlines()
                 if line.startswith("span ")] if os.path.exists(spans_path) else []
    problems = verify_drain(conn, opts, n, drain, 0)
    if len(spans) != n:
        problems.append(f"{len(spans)} job spans recorded, expected {n}")
    processes = drain.get("processes") or opts.processes or os.cpu_count() or 1
    ideal = n * opts.task_ms / 1000.0 / processes
    measured = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else None
    efficiency = ideal / measured if measured else None
    print(f"  cpu run {run}: {n} jobs of {opts.task_ms:g} ms CPU on {processes} processes: "
          f"first start to last end {fmt_s(measured)}, ideal {ideal:.3f} s, efficiency "
          f"{fmt_pct(efficiency)}" + (": VERIFICATION FAILED: " + "; ".join(problems)
                                     if problems else ""), flush=True)
    if problems:
        conn.execute(queries(opts.schema).job_delete_except_backlog, BACKLOG_PARAMS)
    return {"run": run, "jobs": n, "task_ms": opts.task_ms, "processes": processes,
            "ideal_s": ideal, "measured_s": measured, "efficiency": efficiency,
            "drain": drain, "verified": not problems, "problems": problems}


def scenario_cpu(opts: Options, system: System, conn: psycopg.Connection[Any],
                 server: ServerCpu) -> Result:
    runs = [cpu_cycle(system, conn, opts, server, i + 1) for i in range(opts.repeat)]
    med = medians(runs, ("efficiency", "measured_s"))
    print()
    print_table(["run", "first start to last end", "ideal", "efficiency"],
                [[str(r["run"]), fmt_s(r["measured_s"]), f"{r['ideal_s']:.3f} s",
                  fmt_pct(r["efficiency"])] for r in runs]
                + ([["median", fmt_s(med["measured_s"]), "", fmt_pct(med["efficiency"])]]
                   if len(runs) > 1 else []))
    print()
    return {"runs": runs, "medians": med, "verified": all(r["verified"] for r in runs)}


def run_scenario(opts: Options) -> int:
    with connect(opts) as conn:
        env = environment(conn, opts)
        server = probe_server_cpu(conn, opts)
    env["server_cpu"] = {"postmaster_pid": server.pid, "pg_stat_statements": server.statements,
                         "how": server.how}
    print_settings(opts, env)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results: Result = {}
    scenario = {"drain": scenario_drain, "steady": scenario_steady,
                "enqueue": scenario_enqueue, "backlog": scenario_backlog,
                "cpu": scenario_cpu, "queues": scenario_queues}[opts.scenario]
    with scratch_schema(opts):
        system = make_system(opts)
        try:
            system.migrate()
            with connect(opts) as conn:
                results = scenario(opts, system, conn, server)
        finally:
            system.close()
    verified = bool(results.get("verified"))
    print("verified" if verified else "VERIFICATION FAILED (see above)")
    if opts.json_path:
        settings = {k: v for k, v in vars(opts).items() if k not in ("url", "json_path")}
        settings["processes_resolved"] = opts.processes or os.cpu_count()
        doc = {"tool": "skivi bench/run.py", "scenario": opts.scenario,
               "started_at": started_at, "settings": settings, "environment": env,
               "results": results, "verified": verified}
        Path(opts.json_path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"results written to {opts.json_path}")
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
