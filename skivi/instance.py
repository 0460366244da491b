"""The instance: everything a Skivi system is made of, fixed once built.

An ``Instance`` is the validated configuration, the schema and its named queries, the
programmatic tasks (and, built on first use, the task registry), the cron entries and the
payload gate. It holds no connection and no process, so it is what every part takes: the
client (``skivi.client.Client``) enqueues with it, the engine (``skivi.engine``) runs it,
and a forked process (the engine, its children, the cron process) inherits it without
anything to forget. ``skivi.System`` composes an instance with a client and the launcher.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from skivi.config import Config
from skivi.cron import CronEntry, ensure_unique, load_crontab_file, parse_crontabs
from skivi.db import queries
from skivi.errors import ConfigError
from skivi.limit import Limit, parse_limits
from skivi.payload import PayloadGate
from skivi.registry import TaskRegistry, TaskSource

__all__ = ["Handler", "Instance"]

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class _Built:
    """What an instance builds on first use (the registry reads task files, which may be
    broken: that must fail at start, not at ``create_system``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    registry: list[TaskRegistry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Instance:
    config: Config
    tasks: Mapping[str, Handler | TaskSource]
    cron_entries: tuple[CronEntry, ...]
    limits: tuple[Limit, ...]
    """The configuration's [[limits]], validated (the tasks' own come with the registry)."""
    schema: str
    queries: queries.Queries
    payload_gate: PayloadGate
    _built: _Built = field(default_factory=_Built, repr=False, compare=False)

    @classmethod
    def build(cls, config: Config, tasks: Mapping[str, Handler | TaskSource] | None = None,
              crontabs: Sequence[Mapping[str, Any]] | None = None) -> Instance:
        """Validate and assemble; a bad cron entry or payload schema raises here, naming it."""
        schema = config.database.schema_name
        return cls(
            config=config,
            tasks=MappingProxyType(dict(tasks or {})),
            cron_entries=tuple(parse_crontabs([*config.cron, *(crontabs or [])])),
            limits=tuple(parse_limits(config.limits)),
            schema=schema,
            queries=queries.for_schema(schema),
            payload_gate=PayloadGate(config.validation.max_payload_bytes,
                                     config.validation.tasks))

    def with_tasks(self, tasks: Mapping[str, Handler | TaskSource]) -> Instance:
        """This instance with these programmatic tasks instead (``@system.task``); its
        registry is built again on first use."""
        return dataclasses.replace(self, tasks=MappingProxyType(dict(tasks)), _built=_Built())

    def with_crontab_file(self, path: str) -> Instance:
        """This instance with the ``[[cron]]`` entries of a TOML file added (``--crontab``)."""
        entries = [*self.cron_entries, *load_crontab_file(path)]
        ensure_unique(entries)
        return dataclasses.replace(self, cron_entries=tuple(entries), _built=self._built)

    def registry(self) -> TaskRegistry:
        """The task registry: files of worker.task_directory (alphabetical order), then the
        programmatic tasks, which win on identifiers present in both. Built once."""
        built = self._built
        with built.lock:
            if not built.registry:
                w = self.config.worker
                built.registry.append(TaskRegistry.build(dict(self.tasks), w.task_directory,
                                                         w.file_extensions))
            return built.registry[0]

    @property
    def has_tasks(self) -> bool:
        return bool(self.tasks) or self.config.worker.task_directory is not None

    @property
    def database_url(self) -> str:
        url = self.config.database.connection_string
        if not url:
            raise ConfigError(
                "database.connection_string: no database configured; set it in skivi.toml, "
                "or set SKIVI_DATABASE_URL or DATABASE_URL")
        return url
