"""The parent's side of the cron process (``skivi.engine.scheduler`` is the process itself).

State machine:

    off        no cron entries, or stopped, or the process refused its configuration
               (exit CRON_EXIT_CONFIG: restarting would refuse it again)
    running    forked; its cron/fired events come back over a pipe as EVENT frames and go
               to ``on_fired`` (the observer)
    died       it exited on its own: restarted after a backoff (1 s doubling, at most
               30 s), which is safe because the database's fire-once guard decides what
               fires (cron_fire.sql), not the process
    stopping   ``stop()``: SIGTERM, up to STOP_TIMEOUT for it to finish its tick, then
               SIGKILL; returns once it is reaped

Lifecycle (skivi.engine.service): ``start()`` forks, ``stop()`` is idempotent and safe
before ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from skivi.db.retry import RetryBackoff
from skivi.engine import process, wire

if TYPE_CHECKING:
    from skivi.instance import Instance

__all__ = ["CRON_EXIT_CONFIG", "CronProcess"]

logger = logging.getLogger(__name__)

CRON_EXIT_CONFIG = 2  # the cron process refused its entries: do not restart it
READ_SIZE = 1 << 16
STOP_TIMEOUT = 5.0
RESTART_DELAY_FIRST, RESTART_DELAY_MAX = 1.0, 30.0


@dataclass(eq=False, slots=True)
class _Handle:
    pid: int
    event_fd: int
    alive_fd: int  # its pidfd
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)


class CronProcess:
    def __init__(self, instance: Instance,
                 on_fired: Callable[[dict[str, Any]], None] | None) -> None:
        self.instance = instance
        self.on_fired = on_fired
        self.events = 0  # cron/fired events received
        self.restarts = 0
        # Never reset: a process that keeps dying is restarted ever less often.
        self._restart_backoff = RetryBackoff(RESTART_DELAY_FIRST, RESTART_DELAY_MAX)
        self._handle: _Handle | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return None if self._handle is None else self._handle.pid

    async def start(self) -> None:
        """Fork the cron process (only when the instance has cron entries)."""
        if self.instance.cron_entries and not self._stopping:
            self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        handle = self._handle
        if handle is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._handle is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._handle is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
            while self._handle is not None:
                await asyncio.sleep(0.01)

    def _spawn(self) -> None:
        from skivi.engine.scheduler import scheduler_main
        from skivi.errors import ConfigError

        ev_r, ev_w = os.pipe()

        def on_fired(event: dict[str, Any]) -> None:
            frame = wire.encode_frame(wire.EVENT, orjson.dumps(event))
            with contextlib.suppress(OSError):
                os.write(ev_w, frame)

        def target() -> int:
            try:
                scheduler_main(self.instance, self.instance.cron_entries, on_fired=on_fired)
            except ConfigError as exc:
                logger.error("cron: %s", exc, extra={"action": "cron_config"})
                return CRON_EXIT_CONFIG
            return 0

        pid = process.fork("cron", target, keep=[ev_w])
        os.close(ev_w)
        alive_r = os.pidfd_open(pid)
        os.set_blocking(ev_r, False)
        self._handle = _Handle(pid, ev_r, alive_r)
        loop = asyncio.get_running_loop()
        loop.add_reader(ev_r, self._on_events)
        loop.add_reader(alive_r, self._on_exit)
        logger.info("cron process started (pid %d, %d entries)", pid,
                    len(self.instance.cron_entries), extra={"action": "start_cron"})

    def _on_events(self) -> None:
        handle = self._handle
        if handle is None:
            return
        try:
            data = os.read(handle.event_fd, READ_SIZE)
        except (BlockingIOError, OSError):
            return
        if not data:
            asyncio.get_running_loop().remove_reader(handle.event_fd)
            return
        for kind, body in handle.reader.feed(data):
            if kind == wire.EVENT:
                self.events += 1
                if self.on_fired is not None:
                    self.on_fired(orjson.loads(body))

    def _on_exit(self) -> None:
        handle = self._handle
        if handle is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(handle.alive_fd)
        self._on_events()  # what it sent before it died
        loop.remove_reader(handle.event_fd)
        for fd in (handle.event_fd, handle.alive_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        code = process.exit_code(handle.pid)
        self._handle = None
        if self._stopping:
            return
        if code == CRON_EXIT_CONFIG:
            logger.error("the cron process refused its configuration; cron stays off",
                         extra={"action": "cron_disabled"})
            return
        self.restarts += 1
        delay = self._restart_backoff.next()
        logger.error("the cron process died (exit %s); restarting it in %.1fs", code, delay,
                     extra={"action": "restart_cron"})
        loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._stopping and self._handle is None:
            self._spawn()
