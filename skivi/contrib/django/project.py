"""The project's system: ``skivi.contrib.django.system()``, and the tasks it runs.

**Which tasks.** At start-up (``SkiviConfig.ready``) every installed app's ``tasks``
module is imported, as Django's admin autodiscovers ``admin`` modules, then the modules
listed in ``settings.SKIVI["tasks"]``. In each, the engine registers:

* typed tasks (``skivi.Tasks`` collections at module level, e.g. ``TASKS = skivi.Tasks()``,
  and ``skivi.contrib.django.task``, the project's own collection), each under its
  identifier. Their collections are bound to the project's system, so ``defer()`` works
  without ``create_system``;
* a module-level ``TASKS`` dict (identifier -> handler), as in a Skivi task file;
* ``django.tasks`` tasks (``@task`` functions) whose backend is a ``SkiviBackend``, each
  under its ``module_path`` (``myapp.tasks.send_welcome``), the identifier the backend
  enqueues them under (``skivi.contrib.django.backend``).

A task found twice (a module importing another's) counts once; two different tasks under one
identifier stop the start, naming both modules.

**The system** is built on first use from ``settings.SKIVI`` (``skivi.contrib.django.conf``)
and kept; changing SKIVI, DATABASES or TASKS (``override_settings``) drops it. Its client
enqueues through Django's connection for the alias (``DjangoRelay``): ``skivi.add_job(
system(), ...)``, ``add_jobs``, typed tasks' ``defer()`` and the backend's ``enqueue()``
all join the caller's ``transaction.atomic()``. Results (``skivi.get_result``) and
``wait_for`` read through the system's own pool, as anywhere else.
"""

from __future__ import annotations

import importlib
import threading
import types
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import module_has_submodule

from skivi.client import Client
from skivi.contrib.django import conf
from skivi.contrib.django.jobs import wrap_definition
from skivi.contrib.django.relay import DjangoRelay
from skivi.errors import RegistryError
from skivi.registry import TaskDef
from skivi.system import System
from skivi.tasks import Tasks, TypedTask

__all__ = ["TASKS", "autodiscover", "build_system", "discovered", "install", "reset",
           "system", "task"]

TASK_MODULE = "tasks"


class _ProjectSystem:
    """What the project's typed-task collections are bound to before the system exists:
    its client is the system's, built on first use."""

    @property
    def client(self) -> Client:
        return system().client


PROJECT = _ProjectSystem()

TASKS = Tasks(PROJECT)
"""The project's own collection of typed tasks: ``@skivi.contrib.django.task``."""
task = TASKS.task

_lock = threading.RLock()
_system: System | None = None
_modules: list[types.ModuleType] = []


def autodiscover() -> list[types.ModuleType]:
    """Import each installed app's ``tasks`` module and the modules of SKIVI["tasks"];
    bind the typed-task collections in them to the project's system. Returns the modules
    (the same on a second call)."""
    with _lock:
        if _modules:
            return list(_modules)
        names = [f"{app.name}.{TASK_MODULE}" for app in apps.get_app_configs()
                 if module_has_submodule(app.module, TASK_MODULE)]
        names += [m for m in conf.read().task_modules if m not in names]
        found = [importlib.import_module(name) for name in names]
        for module in found:
            for value in vars(module).values():
                if isinstance(value, Tasks) and value.system is None:
                    value.bind(PROJECT)
                elif isinstance(value, TypedTask) and value.collection.system is None:
                    value.collection.bind(PROJECT)
        _modules[:] = found
        return list(found)


def discovered() -> dict[str, TaskDef]:
    """Every task of the project (see the module docstring), by identifier, its handler
    wrapped for Django (``skivi.contrib.django.jobs``)."""
    from django.tasks import Task as DjangoTask

    modules = autodiscover()
    sources: dict[str, tuple[object, str]] = {}

    def add(identifier: str, source: object, key: object, where: str) -> None:
        seen = sources.get(identifier)
        if seen is not None and seen[0] is not key:
            raise RegistryError(f"task {identifier!r} is defined twice: in {seen[1]} and in "
                                f"{where}; give one of them another identifier")
        sources.setdefault(identifier, (key, where))
        found[identifier] = source

    found: dict[str, object] = {}
    for t in TASKS.values():
        add(t.identifier, t, t, "skivi.contrib.django.task")
    for module in modules:
        where = module.__name__
        for name, value in vars(module).items():
            if isinstance(value, Tasks):
                for t in value.values():
                    add(t.identifier, t, t, where)
            elif isinstance(value, TypedTask):
                add(value.identifier, value, value, where)
            elif name == "TASKS" and isinstance(value, Mapping):
                for identifier, handler in value.items():
                    add(identifier, handler, _key(handler), where)
            if isinstance(value, DjangoTask):
                # A django.tasks task of a backend that runs on Skivi (SkiviBackend) says
                # how: its definition, under the identifier the backend enqueues it by.
                define = getattr(value.get_backend(), "skivi_definition", None)
                if define is not None:
                    add(value.module_path, define(value), value.func, where)
    return {identifier: wrap_definition(source)  # type: ignore[arg-type]
            for identifier, source in found.items()}


def _key(handler: object) -> object:
    # The same function wrapped twice (task(fn) in two modules) is still one task.
    return handler.handler if isinstance(handler, TaskDef) else handler


def build_system(overrides: Mapping[str, Any] | None = None) -> System:
    """A new system of the project (``settings.SKIVI`` with ``overrides`` over it, as the
    worker's flags give them), enqueueing through Django's connection. Raises ConfigError
    or RegistryError naming the problem."""
    own, config = conf.load(overrides)
    made = System(config, discovered())
    made.client.relay = DjangoRelay(own.alias, made.queries)
    return made


def install(made: System) -> System:
    """Make ``made`` the project's system (``skivi_worker`` does, with its flags' overrides,
    so the engine runs the very system its handlers' tasks enqueue into); returns it."""
    global _system
    with _lock:
        old, _system = _system, made
    if old is not None and old is not made:
        old.close()
    return made


def system() -> System:
    """The project's system (see the module docstring), built on first use."""
    global _system
    with _lock:
        if _system is None:
            _system = build_system()
        return _system


def reset() -> None:
    """Forget the project's system (its pools closed) and the tasks found: the next use
    reads the settings again."""
    global _system
    with _lock:
        old, _system = _system, None
        _modules.clear()
    if old is not None:
        old.close()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in (conf.SETTING, "DATABASES", "TASKS", "INSTALLED_APPS"):
        reset()


