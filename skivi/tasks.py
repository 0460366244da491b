"""Typed tasks: a function becomes a task, and enqueueing it is calling ``defer``.

::

    TASKS = skivi.Tasks()                  # in a task file, or any module

    @TASKS.task(queue_name="mail", max_attempts=5)
    def send_email(to: str, subject: str = "") -> None: ...

    system = skivi.create_system(config, tasks=TASKS)   # binds TASKS to the system
    send_email.defer(to="a@example.com")                 # -> skivi.Job
    await send_email.defer_async(to="a@example.com")
    send_email.configure(run_at=later, conn=conn).defer(to="a@example.com")
    send_email.defer_many([{"to": "a@example.com"}, {"to": "b@example.com"}])
    skivi.add_jobs(system, [send_email.spec(to="a@example.com"), ...])   # mixed tasks

    @system.task                           # or straight into a system's registry
    async def resize(ctx: skivi.JobContext, path: str) -> None: ...

A typed task is built on the registry's own machinery: its handler is an ordinary
``handler(ctx)`` (sync or ``async def`` like the function, so async tasks run on the child's
event loop), wrapped with its options in a :class:`~skivi.registry.TaskDef`, so every task
option the registry knows applies to it (``timeout``, ``backoff``, ...). Nothing in the engine
knows typed tasks exist.

**The identifier** defaults to the function's ``__name__`` (``send_email``), or is given
with ``identifier=``. Not ``module.function``: a task file's module is named
``skivi_tasks.<stem>_<hash>`` (the hash is of the file's path), so a module-derived name
would change with the directory a deployment puts the files in, and the identifier is data
(it is stored with every job, SQL callers and ``validation.tasks`` name it). The bare name is
stable across moves and refactors; two tasks of one name in a collection or a system are
refused, naming both functions, so a clash cannot go unnoticed.

**The payload** is the call's arguments bound to the function's signature, as a JSON object
``{parameter: value}``: ``send_email.defer("a@b.c", subject="Hi")`` stores
``{"to": "a@b.c", "subject": "Hi"}``, exactly what ``skivi.add_job(system, "send_email",
{"to": "a@b.c", "subject": "Hi"})`` or ``select skivi.add_job('send_email', '{"to": ...}')``
would store, so a ``validation.tasks`` schema applies to both alike. Only the arguments given
are stored (defaults are the function's at run time). Positional-only parameters are stored
under their names too; the keywords of a ``**kwargs`` parameter at the top level beside the
others; a ``*args`` parameter is refused when the task is declared (no name to store it
under). The payload is checked at enqueue like any other (``skivi.PayloadError``). On the
way back a job's payload is bound to the signature again (a payload that does not fit fails
the job, saying why); values arrive as JSON gives them, but for a parameter annotated
``datetime``, ``date``, ``time`` or ``UUID`` (or ``X | None``), whose ISO / canonical text is
turned back into the type.

**The context**: a function whose first parameter is annotated ``skivi.JobContext`` receives
the job's context there (``ctx.job``, ``ctx.logger``); it is not part of the payload, and
``defer`` takes the other parameters only.

**Which system ``defer`` enqueues into** (the first that applies):

1. ``configure(system=...)`` for that call;
2. inside a job (the handler of a typed task is running): the job's own engine, so a
   follow-up goes where the job came from, unless the task is bound to a system of another
   instance, or to one that enqueues in its caller's transaction (a Django project's
   system, ``skivi.contrib.django``: the handler's ``atomic()`` then holds the job);
3. the system the task is bound to: ``@system.task``, ``create_system(tasks=TASKS)`` (or a
   mapping holding typed tasks), ``TASKS.bind(system)``; binding again rebinds;

and otherwise :class:`~skivi.errors.SkiviError` says how to bind it. A collection in a task
file loaded by the engine (``--tasks DIR``) is not bound: its tasks defer from their
handlers through rule 2.

**Calling the task object runs the function** (``send_email("a@b.c")``), so unit tests of the
function keep working; it enqueues nothing. The module attribute is then the task, not the
function, so the function no longer pickles by reference (as with ``skivi.task``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import inspect
import logging
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from skivi.client import HasClient, add_jobs, add_jobs_async
from skivi.engine.child import JobContext
from skivi.errors import RegistryError, SkiviError, shown
from skivi.job import Job, JobKeyMode, JobSpec
from skivi.limit import Limit
from skivi.registry import TaskDef, TaskSource, _check_identifier, is_async_callable
from skivi.retry import Backoff

__all__ = ["ContextTask", "Deferral", "FunctionTask", "Tasks", "TypedTask", "current_job"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

JobKey = str | Callable[..., str]
"""A job key: a string, or a callable of the call's arguments (as ``defer`` got them)."""

_current_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "skivi_current_job", default=None)


def current_job() -> JobContext | None:
    """The context of the typed task's job running in this thread or asyncio task, or None."""
    return _current_job.get()


# -- options ------------------------------------------------------------------------------

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class _Options:
    """Enqueue options of a task (its declaration) or of one call (``configure``)."""

    queue_name: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    job_key: JobKey | None = None
    job_key_mode: JobKeyMode | str | None = None
    flags: tuple[str, ...] | None = None
    run_at: dt.datetime | None = None
    conn: Any = None
    system: HasClient | None = None


# -- signatures ---------------------------------------------------------------------------


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the conversions
        return {}


def _takes_context(params: list[inspect.Parameter], hints: Mapping[str, Any]) -> bool:
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return False
    first = params[0]
    annotation = hints.get(first.name, first.annotation)
    return annotation is JobContext or annotation in ("JobContext", "skivi.JobContext")


_UnionType = type(int | None)

_CONVERTIBLE: dict[Any, Callable[[str], Any]] = {
    dt.datetime: dt.datetime.fromisoformat,
    dt.date: dt.date.fromisoformat,
    dt.time: dt.time.fromisoformat,
    uuid.UUID: uuid.UUID,
}


def _converter(hint: Any) -> Callable[[str], Any] | None:
    """How to turn a payload's text back into the annotated type (see the module
    docstring), or None to pass the JSON value as it is."""
    if hint in _CONVERTIBLE:
        return _CONVERTIBLE[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, _UnionType) and len(args) == 2 \
            and type(None) in args:
        other = args[0] if args[1] is type(None) else args[1]
        return _CONVERTIBLE.get(other)
    return None



@dataclass(frozen=True, slots=True)
class _Signature:
    """How a function's arguments become a payload and back."""

    identifier: str
    signature: inspect.Signature  # the function's, without the context parameter
    positional_only: tuple[str, ...]
    var_keyword: str | None
    converters: Mapping[str, Callable[[str], Any]]

    @classmethod
    def of(cls, identifier: str, fn: Callable[..., Any]) -> tuple[_Signature, bool]:
        try:
            try:
                signature = inspect.signature(fn, eval_str=True)
            except Exception:  # noqa: BLE001 - unresolvable annotations: shown as written
                signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"task {shown(identifier)}: cannot read the signature of "
                                f"{_name_of(fn)}: {exc}") from None
        params = list(signature.parameters.values())
        hints = _type_hints(fn)
        takes_context = _takes_context(params, hints)
        if takes_context:
            params = params[1:]
        for p in params:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                raise RegistryError(
                    f"task {shown(identifier)}: {_name_of(fn)} has a *{p.name} parameter; "
                    "a typed task's arguments are stored by name, so *args cannot be")
        converters = {p.name: c for p in params
                      if (c := _converter(hints.get(p.name))) is not None}
        return cls(
            identifier=identifier,
            signature=signature.replace(parameters=params,
                                        return_annotation=inspect.Signature.empty),
            positional_only=tuple(p.name for p in params
                                  if p.kind is inspect.Parameter.POSITIONAL_ONLY),
            var_keyword=next((p.name for p in params
                              if p.kind is inspect.Parameter.VAR_KEYWORD), None),
            converters=converters,
        ), takes_context

    def payload(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The payload of a call: its arguments by name. TypeError, as Python raises it
        for the call, when they do not fit the signature."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.identifier!r}: {exc}") from None
        out = dict(bound.arguments)
        if self.var_keyword is not None and self.var_keyword in out:
            out.update(out.pop(self.var_keyword))
        return out

    def call_arguments(self, payload: object) -> tuple[list[Any], dict[str, Any]]:
        """A job's payload as the arguments of a call (the inverse of ``payload``)."""
        if not isinstance(payload, dict):
            raise TypeError(
                f"task {self.identifier!r}: the payload must be a JSON object of the "
                f"arguments of {self.identifier}{self.signature}, got "
                f"{type(payload).__name__}")
        kwargs = dict(payload)
        for name, convert in self.converters.items():
            value = kwargs.get(name)
            if isinstance(value, str):
                try:
                    kwargs[name] = convert(value)
                except ValueError as exc:
                    raise TypeError(f"task {self.identifier!r}: argument {name!r}: "
                                    f"{exc}") from None
        args = [kwargs.pop(name) for name in self.positional_only if name in kwargs]
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.identifier!r}: the payload does not fit "
                            f"{self.identifier}{self.signature}: {exc}") from None
        return args, kwargs


def _name_of(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _handler(fn: Callable[..., Any], sig: _Signature, takes_context: bool
             ) -> Callable[[JobContext], Any]:
    """The ``handler(ctx)`` the engine runs: the payload back into a call of ``fn``. Async
    when ``fn`` is, so the registry puts it on the child's event loop."""
    if is_async_callable(fn):
        async def run_async(ctx: JobContext) -> Any:
            args, kwargs = sig.call_arguments(ctx.job.payload)
            if takes_context:
                args.insert(0, ctx)
            token = _current_job.set(ctx)
            try:
                return await fn(*args, **kwargs)
            finally:
                _current_job.reset(token)

        handler: Callable[[JobContext], Any] = run_async
    else:
        def run(ctx: JobContext) -> Any:
            args, kwargs = sig.call_arguments(ctx.job.payload)
            if takes_context:
                args.insert(0, ctx)
            token = _current_job.set(ctx)
            try:
                return fn(*args, **kwargs)
            finally:
                _current_job.reset(token)

        handler = run
    handler.__name__ = getattr(fn, "__name__", handler.__name__)
    handler.__qualname__ = f"{_name_of(fn)}.<handler>"
    handler.__module__ = getattr(fn, "__module__", None) or __name__
    handler.__doc__ = getattr(fn, "__doc__", None)
    return handler


# -- tasks --------------------------------------------------------------------------------


class TypedTask(TaskSource, Generic[P, R]):
    """A function declared as a task (see the module docstring). ``P`` is what ``defer``
    takes: the function's parameters, without the context."""

    __slots__ = ("_signature", "collection", "definition", "fn", "identifier", "options")

    def __init__(self, fn: Callable[..., Any], identifier: str, definition: TaskDef,
                 options: _Options, signature: _Signature, collection: Tasks) -> None:
        self.fn = fn
        """The function, as written."""
        self.identifier = identifier
        """The task identifier its jobs carry."""
        self.definition = definition
        """The registry's view: the ``handler(ctx)`` and the task options."""
        self.options = options
        self._signature = signature
        self.collection = collection
        """The ``Tasks`` it belongs to (a system's own, for ``@system.task``)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identifier!r} of {_name_of(self.fn)}>"

    @property
    def signature(self) -> inspect.Signature:
        """What ``defer`` takes: the function's signature without the context parameter."""
        return self._signature.signature

    def payload(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The payload ``defer`` would store for these arguments (not checked yet)."""
        return self._signature.payload(args, kwargs)

    def spec(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """The ``JobSpec`` of a call, with the task's options: for ``skivi.add_jobs``, to
        enqueue jobs of several tasks in one statement."""
        return Deferral(self, self.options).spec(*args, **kwargs)

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue a job of this task with these arguments; the job as stored."""
        return Deferral(self, self.options).defer(*args, **kwargs)

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The async twin of ``defer`` (``conn=`` an ``AsyncConnection``)."""
        return await Deferral(self, self.options).defer_async(*args, **kwargs)

    def defer_many(self, calls: Iterable[Mapping[str, Any] | JobSpec]) -> list[Job]:
        """Enqueue many jobs of this task in one statement: each call is a mapping of
        keyword arguments, or a ``JobSpec`` from ``spec(...)`` (typed)."""
        return Deferral(self, self.options).defer_many(calls)

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any] | JobSpec]
                               ) -> list[Job]:
        """The async twin of ``defer_many``."""
        return await Deferral(self, self.options).defer_many_async(calls)

    def configure(self, *, run_at: dt.datetime | None = _UNSET, priority: int | None = _UNSET,
                  job_key: JobKey | None = _UNSET,
                  job_key_mode: JobKeyMode | str | None = _UNSET,
                  queue_name: str | None = _UNSET, max_attempts: int | None = _UNSET,
                  flags: Iterable[str] | None = _UNSET, conn: Any = _UNSET,
                  system: HasClient | None = _UNSET) -> Deferral[P]:
        """This task with other options, for the calls made on what it returns
        (``task.configure(run_at=later).defer(...)``); the task itself is unchanged.

        ``conn``: the connection to write in (its current transaction), as ``add_job``'s
        (``defer``) or ``add_job_async``'s (``defer_async``); ``system``: the system to
        enqueue into, whatever the task is bound to. An option given as None goes back to
        the database default."""
        given = {"run_at": run_at, "priority": priority, "job_key": job_key,
                 "job_key_mode": job_key_mode, "queue_name": queue_name,
                 "max_attempts": max_attempts, "conn": conn, "system": system,
                 "flags": None if flags is None or flags is _UNSET else tuple(flags)}
        if flags is _UNSET:
            del given["flags"]
        options = replace(self.options, **{k: v for k, v in given.items() if v is not _UNSET})
        _check_options(self.identifier, options)
        return Deferral(self, options)


class FunctionTask(TypedTask[P, R]):
    """A typed task whose function takes no context; calling it calls the function."""

    __slots__ = ()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


class ContextTask(TypedTask[P, R]):
    """A typed task whose function takes the ``JobContext`` first; calling it calls the
    function (pass a context, or a stand-in, first)."""

    __slots__ = ()

    def __call__(self, ctx: JobContext, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(ctx, *args, **kwargs)  # type: ignore[no-any-return]


class Deferral(Generic[P]):
    """A typed task with the options of ``configure``: ``defer`` and its kin, as the
    task's, with these options."""

    __slots__ = ("options", "task")

    def __init__(self, task: TypedTask[P, Any], options: _Options) -> None:
        self.task = task
        self.options = options

    def spec(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """The ``JobSpec`` of a call (see ``TypedTask.spec``)."""
        return self._spec(self.task._signature.payload(args, kwargs), args, kwargs)

    def _spec(self, payload: dict[str, Any], args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> JobSpec:
        o = self.options
        key = o.job_key
        if callable(key):
            key = key(*args, **kwargs)
        return JobSpec(task=self.task.identifier, payload=payload, queue_name=o.queue_name,
                       run_at=o.run_at, max_attempts=o.max_attempts, priority=o.priority,
                       job_key=key, job_key_mode=o.job_key_mode if key is not None else None,
                       flags=o.flags)

    def _specs(self, calls: Iterable[Mapping[str, Any] | JobSpec]) -> list[JobSpec]:
        specs = []
        for i, call in enumerate(calls):
            if isinstance(call, JobSpec):
                if call.task != self.task.identifier:
                    raise SkiviError(f"defer_many of task {self.task.identifier!r}: item {i} "
                                     f"is a job of task {call.task!r}")
                specs.append(call)
            elif isinstance(call, Mapping):
                try:
                    payload = self.task._signature.payload((), call)
                except TypeError as exc:
                    raise TypeError(f"defer_many item {i}: {exc}") from None
                specs.append(self._spec(payload, (), call))
            else:
                raise TypeError(f"defer_many of task {self.task.identifier!r}: item {i} must "
                                "be a mapping of keyword arguments or a JobSpec, got "
                                f"{type(call).__name__}")
        return specs

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue one job; the job as stored."""
        return self._enqueue([self.spec(*args, **kwargs)])[0]

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The async twin of ``defer``."""
        return (await self._enqueue_async([self.spec(*args, **kwargs)]))[0]

    def defer_many(self, calls: Iterable[Mapping[str, Any] | JobSpec]) -> list[Job]:
        """Enqueue many jobs in one statement; the jobs as stored, in the order given."""
        return self._enqueue(self._specs(calls))

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any] | JobSpec]
                               ) -> list[Job]:
        """The async twin of ``defer_many``."""
        return await self._enqueue_async(self._specs(calls))

    def _enqueue(self, specs: list[JobSpec]) -> list[Job]:
        target, ctx = self._target()
        if ctx is not None:
            return ctx.add_jobs(specs)
        assert target is not None
        return add_jobs(target, specs, conn=self.options.conn)

    async def _enqueue_async(self, specs: list[JobSpec]) -> list[Job]:
        target, ctx = self._target()
        if ctx is not None:
            return await ctx.add_jobs_async(specs)
        assert target is not None
        return await add_jobs_async(target, specs, conn=self.options.conn)

    def _target(self) -> tuple[HasClient | None, JobContext | None]:
        """Where to enqueue (see the module docstring): a system, or the running job."""
        if self.options.system is not None:
            return self.options.system, None
        bound = self.task.collection.system
        ctx = _current_job.get()
        if ctx is not None and self.options.conn is None and not _joins_transaction(bound):
            running = ctx._client.instance
            if bound is None or bound.client.instance is running:
                return None, ctx
        if bound is not None:
            return bound, None
        if ctx is not None:  # with conn=: the job's instance, on the caller's connection
            return ctx._client, None
        raise SkiviError(
            f"task {self.task.identifier!r} is not bound to a system, so defer() does not "
            "know where to enqueue: declare it with @system.task, pass its Tasks to "
            "create_system(tasks=...), call TASKS.bind(system), or use "
            "task.configure(system=system).defer(...)")


def _joins_transaction(system: HasClient | None) -> bool:
    """Whether ``system`` enqueues in its caller's transaction when given no ``conn``
    (``skivi.client.Relay.joins_transaction``: a Django project's system). Inside a job its
    tasks then keep to it, so a ``defer()`` in the handler's ``atomic()`` joins that."""
    relay = system.client.relay if system is not None else None
    return relay is not None and relay.joins_transaction


def _check_options(identifier: str, o: _Options) -> None:
    """Refuse bad options where they are written, as enqueueing them would."""
    key = o.job_key
    if key is not None and not isinstance(key, str) and not callable(key):
        raise TypeError(f"task {identifier!r}: job_key must be a string or a callable of "
                        f"the task's arguments, got {type(key).__name__}")
    JobSpec(task=identifier, queue_name=o.queue_name, run_at=o.run_at,
            max_attempts=o.max_attempts, priority=o.priority,
            job_key=key if isinstance(key, str) else ("x" if key is not None else None),
            job_key_mode=o.job_key_mode, flags=o.flags).check()


# -- declaring ----------------------------------------------------------------------------


class _Declare:
    """What ``task(...)`` with options returns: the decorator."""

    __slots__ = ("collection", "kwargs")

    def __init__(self, collection: Tasks, kwargs: dict[str, Any]) -> None:
        self.collection = collection
        self.kwargs = kwargs

    @overload
    def __call__(
            self, fn: Callable[Concatenate[JobContext, P], R], /) -> ContextTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> FunctionTask[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> TypedTask[Any, Any]:
        return self.collection._declare(fn, **self.kwargs)


class Tasks(Mapping[str, TypedTask[..., Any]]):
    """A collection of typed tasks, by identifier: what ``@TASKS.task`` declares into.

    It is a mapping, so it goes wherever a tasks mapping does: ``create_system(config,
    tasks=TASKS)`` (which binds it to that system) and a task file's module-level ``TASKS``.
    """

    __slots__ = ("_on_declare", "_system", "_tasks")

    def __init__(self, system: HasClient | None = None,
                 on_declare: Callable[[TypedTask[..., Any]], None] | None = None) -> None:
        self._tasks: dict[str, TypedTask[..., Any]] = {}
        self._system = system
        # A system's own collection registers each task in the system as it is declared.
        self._on_declare = on_declare

    @property
    def system(self) -> HasClient | None:
        """The system its tasks enqueue into, or None (see the module docstring)."""
        return self._system

    def bind(self, system: HasClient) -> None:
        """Make ``defer`` of these tasks enqueue into ``system`` (rebinds if bound)."""
        self._system = system

    def __getitem__(self, identifier: str) -> TypedTask[..., Any]:
        return self._tasks[identifier]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"Tasks({list(self._tasks)!r})"

    @overload
    def task(
            self, fn: Callable[Concatenate[JobContext, P], R], /) -> ContextTask[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> FunctionTask[P, R]: ...

    @overload
    def task(self, fn: None = None, /, *, identifier: str | None = None,
             queue_name: str | None = None, priority: int | None = None,
             max_attempts: int | None = None, timeout: float | None = None,
             backoff: Backoff | None = None, job_key: JobKey | None = None,
             job_key_mode: JobKeyMode | str | None = None,
             flags: Iterable[str] | None = None,
             store_result: bool | None = None,
             limits: Iterable[Limit] | None = None) -> _Declare: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, identifier: str | None = None,
             queue_name: str | None = None, priority: int | None = None,
             max_attempts: int | None = None, timeout: float | None = None,
             backoff: Backoff | None = None, job_key: JobKey | None = None,
             job_key_mode: JobKeyMode | str | None = None,
             flags: Iterable[str] | None = None,
             store_result: bool | None = None,
             limits: Iterable[Limit] | None = None) -> TypedTask[Any, Any] | _Declare:
        """Declare ``fn`` a task of this collection: bare (``@TASKS.task``) or with options
        (``@TASKS.task(queue_name="mail")``).

        Options: ``identifier`` (default: the function's ``__name__``); the job defaults
        ``queue_name``, ``priority``, ``max_attempts``, ``job_key`` (a string, or a callable
        taking the call's arguments and returning the key), ``job_key_mode``, ``flags``
        (each call may change them with ``configure``; a job enqueued by name, with
        ``skivi.add_job`` or from SQL, carries its own); the task options ``timeout`` and
        ``backoff``, as for ``skivi.task``, for every job of the task; ``store_result``
        (keep the function's return value, see ``skivi.get_result``; None follows
        ``worker.store_results``); ``limits`` (``skivi.Limit``s its jobs are under, see
        skivi.limit: ``limits=[skivi.Limit("per-tenant", key="tenant_id",
        concurrency=2)]``). A bad value raises here, naming it.
        """
        kwargs: dict[str, Any] = {
            "identifier": identifier, "queue_name": queue_name, "priority": priority,
            "max_attempts": max_attempts, "timeout": timeout, "backoff": backoff,
            "job_key": job_key, "job_key_mode": job_key_mode, "flags": flags,
            "store_result": store_result, "limits": limits}
        if fn is not None:
            return self._declare(fn, **kwargs)
        return _Declare(self, kwargs)

    def _declare(self, fn: Callable[..., Any], *, identifier: str | None,
                 queue_name: str | None, priority: int | None, max_attempts: int | None,
                 timeout: float | None, backoff: Backoff | None, job_key: JobKey | None,
                 job_key_mode: JobKeyMode | str | None,
                 flags: Iterable[str] | None,
                 store_result: bool | None = None,
                 limits: Iterable[Limit] | None = None) -> TypedTask[Any, Any]:
        if isinstance(fn, TypedTask | TaskDef) or not callable(fn):
            raise TypeError(f"a typed task is declared on a function, got {shown(fn)}")
        if identifier is None:
            identifier = getattr(fn, "__name__", None)
            if not isinstance(identifier, str) or not identifier.isidentifier():
                raise RegistryError(f"{shown(fn)} has no usable __name__ "
                                    f"({shown(identifier)}): give identifier=")
        _check_identifier(identifier)
        options = _Options(queue_name=queue_name, priority=priority, max_attempts=max_attempts,
                           job_key=job_key, job_key_mode=job_key_mode,
                           flags=None if flags is None else tuple(flags))
        _check_options(identifier, options)
        signature, takes_context = _Signature.of(identifier, fn)
        definition = TaskDef(_handler(fn, signature, takes_context), backoff=backoff,
                             timeout=timeout, store_result=store_result,
                             limits=() if limits is None else tuple(limits))
        kind = ContextTask if takes_context else FunctionTask
        made: TypedTask[Any, Any] = kind(fn, identifier, definition, options, signature, self)
        self._add(made)
        return made

    def _add(self, made: TypedTask[Any, Any]) -> None:
        previous = self._tasks.get(made.identifier)
        if previous is not None:
            raise RegistryError(
                f"task {made.identifier!r} is declared twice: by {_name_of(previous.fn)} "
                f"and by {_name_of(made.fn)}; give one of them another identifier=")
        if self._on_declare is not None:
            self._on_declare(made)  # may refuse: then the task is not declared either
        self._tasks[made.identifier] = made


def bind_collections(tasks: Mapping[str, object], system: HasClient) -> None:
    """Bind to ``system`` the collection of every typed task in ``tasks`` (what
    ``create_system(tasks=...)`` does)."""
    seen: set[int] = set()
    if isinstance(tasks, Tasks):
        tasks.bind(system)
        seen.add(id(tasks))
    for value in tasks.values():
        if isinstance(value, TypedTask) and id(value.collection) not in seen:
            value.collection.bind(system)
            seen.add(id(value.collection))
