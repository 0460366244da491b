"""The task registry: which handler runs a job, found by the job's task identifier.

A handler is ``handler(ctx)``, either a plain function or an ``async def``. A registry is built
once, at start-up, from up to two sources, and is immutable afterwards:

- **a mapping given in code** (:meth:`TaskRegistry.from_mapping`): ``{"send_email": send_email}``.
  Any callable works, lambdas and closures included. A value may be wrapped with :func:`task` to
  declare per-task options: ``{"resize": task(resize, timeout=30, backoff=Backoff(factor=0.1))}``.
- **a directory of task files** (:meth:`TaskRegistry.from_directory`), as in Graphile Worker's
  ``getTasks.ts``: every regular file with an accepted extension directly inside the directory
  (not recursive) is imported, and must define a module-level ``TASKS``: a dict of the same
  shape, or a ``skivi.Tasks`` collection of typed tasks (``@TASKS.task``; see skivi.tasks),
  each registered under its own identifier.

Rules, and why:

- **Files load in alphabetical order of their names, and a later file wins** an identifier that an
  earlier file also defines (logged as a WARNING, action ``override_task``). A fixed order makes
  the outcome the same on every machine, whatever order the file system lists entries in.
- **Code wins over files** (:meth:`TaskRegistry.build`, logged at INFO, action
  ``override_task``): the mapping passed in code is the more deliberate, more local statement.
- **Files outside the directory are never loaded.** A symlink whose target resolves outside the
  resolved directory is skipped with a WARNING (action ``skip_task_file``), and so is any entry
  whose resolved path is not inside it. A symlink to another file inside the directory is fine.
  The file actually imported is the *resolved* path, checked once, so a link swapped after the
  check cannot redirect the import. Loading a task file runs its code with the engine's
  privileges; confining it to one directory the operator chose keeps that decision visible.
- **Each file becomes a real module**, named ``skivi_tasks.<stem>_<hash>`` where the hash is of
  the file's path, and is registered in ``sys.modules`` (under a ``skivi_tasks`` namespace
  package). Tracebacks then name it, ``dataclasses`` and ``typing`` in task files work, and a
  function defined in a task file pickles by reference; because the name depends only on the
  path, another process that loaded the same directory resolves the same name. Loading a
  directory again re-executes its files and replaces their modules.
- **Errors name the file and the line.** A file that fails to import raises
  :class:`~skivi.errors.TaskFileError` with the line of the ``SyntaxError``, or of the deepest
  traceback frame inside that file for any other exception, chained to the original. A file
  without a ``TASKS`` dict, or with an invalid entry in it, raises ``TaskFileError`` too: a typo
  in a task file must stop start-up, not surface later as jobs failing with "no handler".
- **Identifiers are checked as the database will check them**: a non-empty ``str`` of at most
  ``skivi.job.TASK_IDENTIFIER_MAX`` (128) characters (the ``job_task_identifier_check``
  constraint), without NUL and without lone surrogates (PostgreSQL text can hold neither). A
  bad identifier or a non-callable handler raises :class:`~skivi.errors.RegistryError` naming
  the identifier.
- **Async detection happens once, here** (:attr:`Task.is_async`): ``async def`` functions,
  callable objects whose ``__call__`` is ``async def``, and ``functools.partial`` of either.
  A sync function that merely *returns* an awaitable cannot be detected; the child process
  should still await an awaitable result.

One caveat of :func:`task` used as a decorator: the module attribute then holds the
:class:`TaskDef`, not the function, so that function no longer pickles by reference. Registries
built from the same directory in each process (as the engine's children do) never need to.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.machinery
import importlib.util
import inspect
import logging
import math
import os
import re
import stat
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from skivi.errors import RegistryError, TaskFileError, nul_position, shown
from skivi.job import TASK_IDENTIFIER_MAX
from skivi.limit import Limit
from skivi.retry import DEFAULT_BACKOFF, Backoff

__all__ = [
    "EXTENSIONS_DEFAULT",
    "MODULE_PACKAGE",
    "Task",
    "TaskDef",
    "TaskRegistry",
    "TaskSource",
    "is_async_callable",
    "task",
]

logger = logging.getLogger(__name__)

MODULE_PACKAGE = "skivi_tasks"
"""The namespace package under which task files are registered in ``sys.modules``."""

EXTENSIONS_DEFAULT: tuple[str, ...] = (".py",)
"""File extensions :meth:`TaskRegistry.from_directory` loads. Default: ``(".py",)``."""

SOURCE_CODE = "code"
"""``Task.source`` of tasks that came from a mapping given in code."""

Handler = Callable[..., Any]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskDef:
    """A handler with per-task options, as returned by :func:`task`.

    Calling it calls the handler, so a function decorated with ``@task(...)`` can still be
    called directly (in the user's own tests, say).
    """

    handler: Handler
    backoff: Backoff | None = None
    """Retry schedule for this task. Default: None (:data:`skivi.retry.DEFAULT_BACKOFF`)."""
    timeout: float | None = None
    """Seconds one attempt may run before it fails as a timeout. Default: None (no limit)."""
    store_result: bool | None = None
    """Keep the handler's return value (JSON) for ``skivi.get_result`` and ``wait_for``,
    ``worker.result_retention`` seconds. Default: None (``worker.store_results``)."""
    limits: tuple[Limit, ...] = ()
    """Concurrency and rate limits of this task's jobs (``skivi.Limit``; a limit's tasks
    are this task, and those of the limits of the same name elsewhere). Default: ()."""

    def __post_init__(self) -> None:
        if not callable(self.handler):
            raise TypeError(f"task handler must be callable, got {type(self.handler).__name__}")
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {type(self.backoff).__name__}")
        if self.timeout is not None and not _is_positive_seconds(self.timeout):
            raise ValueError(
                f"timeout must be a finite number of seconds > 0, got {shown(self.timeout)}"
            )
        if self.store_result is not None and not isinstance(self.store_result, bool):
            raise TypeError(f"store_result must be a bool or None, got "
                            f"{type(self.store_result).__name__}")
        if not isinstance(self.limits, tuple) or not all(
                isinstance(limit, Limit) for limit in self.limits):
            raise TypeError(f"limits must be a tuple of skivi.Limit, got {shown(self.limits)}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


@overload
def task(
    handler: Handler, *, backoff: Backoff | None = None, timeout: float | None = None,
    store_result: bool | None = None, limits: Iterable[Limit] = (),
) -> TaskDef: ...


@overload
def task(
    handler: None = None, *, backoff: Backoff | None = None, timeout: float | None = None,
    store_result: bool | None = None, limits: Iterable[Limit] = (),
) -> Callable[[Handler], TaskDef]: ...


def task(
    handler: Handler | None = None,
    *,
    backoff: Backoff | None = None,
    timeout: float | None = None,
    store_result: bool | None = None,
    limits: Iterable[Limit] = (),
) -> TaskDef | Callable[[Handler], TaskDef]:
    """Attach per-task options to a handler.

    Use it as a wrapper, ``TASKS = {"x": task(fn, timeout=5)}``, or as a decorator,
    ``@task(backoff=Backoff(factor=0.1))`` (or bare ``@task``). Options are checked at once, so a
    bad value fails where it is written. ``store_result=True`` keeps the return value (see
    ``skivi.get_result``); None follows ``worker.store_results``. ``limits``: concurrency
    and rate limits its jobs are under (``skivi.Limit``, see ``skivi.limit``).
    """
    given = limits if isinstance(limits, tuple) else tuple(limits)
    if handler is not None:
        return TaskDef(handler, backoff, timeout, store_result, given)

    def wrap(fn: Handler) -> TaskDef:
        return TaskDef(fn, backoff, timeout, store_result, given)

    return wrap


class TaskSource:
    """What carries its own identifier and :class:`TaskDef`: a typed task
    (``skivi.tasks.TypedTask``). A registry takes the definition, under that identifier
    only: a typed task enqueues under its own identifier, so registering it under another
    would leave its jobs without a handler."""

    __slots__ = ()

    identifier: str
    definition: TaskDef


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """One registered task. Build it with :meth:`Task.of`, which validates and detects async."""

    identifier: str
    handler: Handler
    is_async: bool
    backoff: Backoff = DEFAULT_BACKOFF
    timeout: float | None = None
    source: str = SOURCE_CODE
    """``"code"``, or the path of the task file the task came from."""
    store_result: bool | None = None
    """Whether its jobs keep their return value; None: as ``worker.store_results`` says."""
    limits: tuple[Limit, ...] = ()
    """Limits its jobs are under, besides the configuration's (``skivi.limit``)."""

    def keeps_result(self, default: bool) -> bool:
        """Whether its jobs keep their return value, ``default`` being
        ``worker.store_results``."""
        return default if self.store_result is None else self.store_result

    @classmethod
    def of(
        cls, identifier: str, handler: Handler | TaskDef | TaskSource, *,
        source: str = SOURCE_CODE,
    ) -> Task:
        """Build a task from a plain callable, a :class:`TaskDef` or a :class:`TaskSource`.

        Raises :class:`~skivi.errors.RegistryError` naming the identifier when the identifier is
        invalid, the handler is not callable or the timeout is not a positive number of seconds,
        or a typed task is given under an identifier that is not its own.
        """
        _check_identifier(identifier)
        if isinstance(handler, TaskSource):
            if handler.identifier != identifier:
                raise RegistryError(
                    f"task {shown(identifier)}: the typed task {shown(handler.identifier)} "
                    "is registered under its own identifier only")
            handler = handler.definition
        backoff: Backoff | None = None
        timeout: float | None = None
        store_result: bool | None = None
        limits: tuple[Limit, ...] = ()
        if isinstance(handler, TaskDef):
            backoff, timeout = handler.backoff, handler.timeout
            store_result = handler.store_result
            limits = handler.limits
            fn: object = handler.handler
        else:
            fn = handler
        if not callable(fn):
            raise RegistryError(
                f"task {shown(identifier)}: handler must be callable, got {type(fn).__name__}"
            )
        if backoff is not None and not isinstance(backoff, Backoff):
            raise RegistryError(
                f"task {shown(identifier)}: backoff must be a Backoff, got {type(backoff).__name__}"
            )
        if timeout is not None and not _is_positive_seconds(timeout):
            raise RegistryError(
                f"task {shown(identifier)}: timeout must be a finite number of seconds > 0, "
                f"got {shown(timeout)}"
            )
        if store_result is not None and not isinstance(store_result, bool):
            raise RegistryError(
                f"task {shown(identifier)}: store_result must be a bool or None, got "
                f"{type(store_result).__name__}"
            )
        return cls(
            identifier=identifier,
            handler=fn,
            is_async=is_async_callable(fn),
            backoff=backoff if backoff is not None else DEFAULT_BACKOFF,
            timeout=None if timeout is None else float(timeout),
            source=source,
            store_result=store_result,
            limits=limits,
        )


class TaskRegistry:
    """Task identifier -> :class:`Task`, immutable once built.

    Build it with :meth:`from_mapping`, :meth:`from_directory` or :meth:`build`; the constructor
    takes ready :class:`Task` objects and refuses duplicate identifiers.
    """

    __slots__ = ("_tasks",)

    _tasks: Mapping[str, Task]

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        collected: dict[str, Task] = {}
        for t in tasks:
            if not isinstance(t, Task):
                raise RegistryError(f"expected a Task, got {type(t).__name__}")
            if t.identifier in collected:
                raise RegistryError(f"task {shown(t.identifier)} is registered twice")
            collected[t.identifier] = t
        ordered = {identifier: collected[identifier] for identifier in sorted(collected)}
        object.__setattr__(self, "_tasks", types.MappingProxyType(ordered))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Handler | TaskDef | TaskSource]) -> TaskRegistry:
        """A registry of the tasks in ``mapping`` (identifier -> callable or :class:`TaskDef`)."""
        if not isinstance(mapping, Mapping):
            raise RegistryError(f"tasks must be a mapping, got {type(mapping).__name__}")
        return cls(Task.of(identifier, handler) for identifier, handler in mapping.items())

    @classmethod
    def from_directory(
        cls, directory: str | Path, extensions: Sequence[str] = EXTENSIONS_DEFAULT
    ) -> TaskRegistry:
        """A registry of the ``TASKS`` of every task file directly inside ``directory``.

        See the module docstring for the order, override and confinement rules.
        """
        return cls(_load_directory(directory, extensions).values())

    @classmethod
    def build(
        cls,
        programmatic: Mapping[str, Handler | TaskDef | TaskSource] | None = None,
        directory: str | Path | None = None,
        extensions: Sequence[str] = EXTENSIONS_DEFAULT,
    ) -> TaskRegistry:
        """The directory's tasks, then the ``programmatic`` mapping's, which win on conflicts."""
        merged: dict[str, Task] = {}
        if directory is not None:
            merged.update(_load_directory(directory, extensions))
        if programmatic is not None:
            for t in cls.from_mapping(programmatic):
                previous = merged.get(t.identifier)
                if previous is not None:
                    logger.info(
                        "task %r from code overrides the one from %s",
                        t.identifier,
                        previous.source,
                        extra={
                            "action": "override_task",
                            "task": t.identifier,
                            "task_file": SOURCE_CODE,
                            "previous_file": previous.source,
                        },
                    )
                merged[t.identifier] = t
        return cls(merged.values())

    # -- lookup -------------------------------------------------------------------------------

    def get(self, identifier: str) -> Task | None:
        """The task registered under ``identifier``, or None."""
        return self._tasks.get(identifier)

    def identifiers(self) -> tuple[str, ...]:
        """All identifiers, sorted."""
        return tuple(self._tasks)

    def keeping_results(self, default: bool) -> frozenset[str]:
        """The identifiers of the tasks whose jobs keep their return value, ``default``
        being ``worker.store_results``."""
        return frozenset(t.identifier for t in self._tasks.values() if t.keeps_result(default))

    def limits(self) -> dict[str, tuple[Limit, ...]]:
        """Task identifier -> the limits its definition declares (tasks with some only)."""
        return {t.identifier: t.limits for t in self._tasks.values() if t.limits}

    def as_dict(self) -> dict[str, Task]:
        """A fresh ``dict`` of identifier -> task (sorted); changing it changes nothing here."""
        return dict(self._tasks)

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskRegistry):
            return NotImplemented
        return dict(self._tasks) == dict(other._tasks)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._tasks)!r})"


# -- async detection --------------------------------------------------------------------------


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine, as far as can be told without calling it.

    True for ``async def`` functions and methods, callable objects whose ``__call__`` is
    ``async def``, and ``functools.partial`` (nested or not) of any of these. A class is never
    async: calling it builds an instance.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):
        return False
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return False
    call = getattr(fn, "__call__", None)  # noqa: B004 - the bound method is what we inspect
    return call is not None and inspect.iscoroutinefunction(call)


# -- validation -------------------------------------------------------------------------------


def _check_identifier(identifier: object) -> None:
    if not isinstance(identifier, str):
        raise RegistryError(
            f"task identifier {shown(identifier)} must be a str, got {type(identifier).__name__}"
        )
    if not identifier:
        raise RegistryError("task identifier '' is empty")
    # NUL first: a long name with a NUL in it is reported for the NUL, which is the real
    # mistake (a C string or a binary buffer passed as a name).
    at = nul_position(identifier)
    if at is not None:
        raise RegistryError(
            f"task identifier {shown(identifier)} contains a NUL character at position {at}"
        )
    if len(identifier) > TASK_IDENTIFIER_MAX:
        raise RegistryError(
            f"task identifier {shown(identifier)} is {len(identifier)} characters long; "
            f"the limit is {TASK_IDENTIFIER_MAX}"
        )
    try:
        identifier.encode("utf-8")
    except UnicodeEncodeError:
        raise RegistryError(
            f"task identifier {shown(identifier)} contains a lone surrogate; it is not valid text"
        ) from None


def _is_positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


# -- task files -------------------------------------------------------------------------------


def _load_directory(directory: str | Path, extensions: Sequence[str]) -> dict[str, Task]:
    """Identifier -> task for every accepted file in ``directory``, later files winning."""
    if isinstance(extensions, str):
        extensions = (extensions,)  # a lone ".py" would otherwise be iterated as characters
    given = Path(directory)
    if not given.is_dir():
        problem = "does not exist" if not given.exists() else "is not a directory"
        raise RegistryError(f"task directory {str(given)!r} {problem}")
    root = given.resolve(strict=True)
    merged: dict[str, Task] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.name.endswith(tuple(extensions)):
            continue
        shown = given / entry.name
        resolved = _confined_regular_file(root, Path(entry.path), shown)
        if resolved is None:
            continue
        for identifier, t in _load_file(root, shown, resolved).items():
            previous = merged.get(identifier)
            if previous is not None:
                logger.warning(
                    "task %r from %s overrides the one from %s",
                    identifier,
                    t.source,
                    previous.source,
                    extra={
                        "action": "override_task",
                        "task": identifier,
                        "task_file": t.source,
                        "previous_file": previous.source,
                    },
                )
            merged[identifier] = t
    return merged


def _confined_regular_file(root: Path, path: Path, shown: Path) -> Path | None:
    """The resolved path of ``path`` if it is a regular file inside ``root``, else None."""
    is_link = path.is_symlink()
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling link, link loop, entry gone since the listing
        logger.warning(
            "skipping task file %s: it cannot be resolved",
            shown,
            extra={"action": "skip_task_file", "task_file": str(shown)},
        )
        return None
    if not resolved.is_relative_to(root):
        what = "a symlink to" if is_link else "resolved to"
        logger.warning(
            "skipping task file %s: %s %s, outside the task directory %s",
            shown,
            what,
            resolved,
            root,
            extra={"action": "skip_task_file", "task_file": str(shown)},
        )
        return None
    try:
        mode = resolved.stat().st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode):
        logger.debug(
            "skipping %s: not a regular file",
            shown,
            extra={"action": "skip_task_file", "task_file": str(shown)},
        )
        return None
    return resolved


def _module_name(root: Path, file_name: str) -> str:
    stem = Path(file_name).stem
    sanitised = re.sub(r"\W", "_", stem, flags=re.ASCII) or "_"
    if sanitised[0].isdigit():
        sanitised = "_" + sanitised
    digest = hashlib.sha256(os.fsencode(root / file_name)).hexdigest()[:12]
    return f"{MODULE_PACKAGE}.{sanitised}_{digest}"


def _ensure_package() -> types.ModuleType:
    package = sys.modules.get(MODULE_PACKAGE)
    if package is None:
        package = types.ModuleType(
            MODULE_PACKAGE, "Task files loaded by skivi.registry (synthetic namespace)."
        )
        package.__path__ = []
        sys.modules[MODULE_PACKAGE] = package
    return package


def _load_file(root: Path, shown: Path, resolved: Path) -> dict[str, Task]:
    """Import one task file and return its validated tasks."""
    source = str(shown)
    name = _module_name(root, shown.name)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        # spec_from_file_location only knows the suffixes of registered loaders; for any
        # other extension, load the file as Python source explicitly.
        loader = importlib.machinery.SourceFileLoader(name, str(resolved))
        spec = importlib.util.spec_from_file_location(name, resolved, loader=loader)
    if spec is None or spec.loader is None:  # pragma: no cover - SourceFileLoader always works
        raise TaskFileError(f"task file {source}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    package = _ensure_package()
    short_name = name.rpartition(".")[2]
    previous = sys.modules.get(name)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        line = _error_line(exc, resolved)
        where = f"line {line}" if line is not None else "unknown line"
        raise TaskFileError(
            f"task file {source} failed to load ({where}): {type(exc).__name__}: {exc}"
        ) from exc
    setattr(package, short_name, module)

    tasks = getattr(module, "TASKS", None)
    if tasks is None:
        raise TaskFileError(
            f"task file {source} defines no module-level TASKS (a dict or a skivi.Tasks)")
    if not isinstance(tasks, Mapping):
        raise TaskFileError(
            f"task file {source}: TASKS must be a dict or a skivi.Tasks, "
            f"got {type(tasks).__name__}"
        )
    loaded: dict[str, Task] = {}
    for identifier, handler in tasks.items():
        try:
            loaded[identifier] = Task.of(identifier, handler, source=source)
        except RegistryError as exc:
            raise TaskFileError(f"task file {source}: {exc}") from exc
    return loaded


def _error_line(exc: BaseException, file: Path) -> int | None:
    """The line of ``file`` where ``exc`` arose: a SyntaxError's own, or the deepest frame's."""
    wanted = os.path.normcase(str(file))
    if (
        isinstance(exc, SyntaxError)
        and exc.filename is not None
        and os.path.normcase(exc.filename) == wanted
    ):
        return exc.lineno
    line: int | None = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.normcase(frame.f_code.co_filename) == wanted:
            line = lineno
    return line
