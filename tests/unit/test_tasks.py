"""Typed tasks without a database: declaring, the payload shape both ways, options,
registration and binding (skivi/tasks.py). The enqueue and run paths are in
tests/python_api/test_typed_tasks.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

import skivi
from skivi.engine.child import JobContext, JobInfo
from skivi.registry import TaskRegistry
from skivi.tasks import ContextTask, FunctionTask, current_job


def _ctx(payload: Any, task: str = "t") -> JobContext:
    message = [7, 1, task, payload, None, 0, "2024-05-01T12:00:00+00:00", 1, 25, None, None,
               "2024-05-01T12:00:00+00:00", 0]
    system = skivi.create_system({})
    return JobContext(JobInfo(message), system.client)


def test_identifier_is_the_function_name_when_none_is_given() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send_email(to: str) -> None: ...

    @tasks.task(identifier="mail:digest")
    def digest() -> None: ...

    assert (send_email.identifier, digest.identifier) == ("send_email", "mail:digest")
    assert list(tasks) == ["send_email", "mail:digest"]
    assert tasks["send_email"] is send_email


def test_declaring_refuses_a_lambda_when_no_identifier_is_given() -> None:
    with pytest.raises(skivi.RegistryError, match="identifier="):
        skivi.Tasks().task(lambda: None)
    made = skivi.Tasks().task(identifier="noop")(lambda: None)
    assert made.identifier == "noop"


def test_declaring_refuses_two_tasks_of_one_name_when_in_one_collection() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def job() -> None: ...

    def other() -> None: ...

    with pytest.raises(skivi.RegistryError, match=r"declared twice: by .*job and by .*other"):
        tasks.task(identifier="job")(other)
    assert tasks["job"].fn is job.fn


def test_declaring_refuses_var_positional_when_the_function_has_it() -> None:
    def spread(*items: int) -> None: ...

    with pytest.raises(skivi.RegistryError, match=r"\*items"):
        skivi.Tasks().task(spread)


def test_declaring_refuses_a_bad_option_when_it_is_written() -> None:
    tasks = skivi.Tasks()

    def f() -> None: ...

    with pytest.raises(skivi.JobSpecError, match="priority"):
        tasks.task(priority=40000)(f)
    with pytest.raises(skivi.JobSpecError, match="job_key_mode"):
        tasks.task(job_key_mode="sometimes", job_key="k")(f)
    with pytest.raises(ValueError, match="timeout"):
        tasks.task(timeout=0)(f)
    with pytest.raises(TypeError, match="job_key"):
        tasks.task(job_key=3)(f)  # type: ignore[arg-type]
    assert len(tasks) == 0  # nothing half-declared


def test_payload_is_the_arguments_by_name_when_given_any_way() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send(to: str, /, subject: str = "", *, cc: list[str] | None = None,
             **headers: str) -> None: ...

    assert send.payload("a@b.c") == {"to": "a@b.c"}  # defaults are not stored
    assert send.payload("a@b.c", "hi", cc=["x"], x_tag="t") == {
        "to": "a@b.c", "subject": "hi", "cc": ["x"], "x_tag": "t"}
    with pytest.raises(TypeError, match="task 'send': missing a required argument: 'to'"):
        send.payload()  # type: ignore[call-arg]


def test_handler_calls_the_function_with_the_payload_when_run() -> None:
    tasks = skivi.Tasks()
    got: list[Any] = []

    @tasks.task
    def send(to: str, /, subject: str = "none", **headers: str) -> str:
        got.append((to, subject, headers))
        return "sent"

    handler = send.definition.handler
    assert handler(_ctx({"to": "a@b.c", "x": "1"})) == "sent"
    assert got == [("a@b.c", "none", {"x": "1"})]


def test_handler_fails_naming_the_signature_when_the_payload_does_not_fit() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send(to: str) -> None: ...

    handler = send.definition.handler
    with pytest.raises(TypeError, match=r"does not fit send\(to: str\).*unexpected keyword"):
        handler(_ctx({"to": "a", "bcc": "b"}))
    with pytest.raises(TypeError, match=r"must be a JSON object .*got list"):
        handler(_ctx(["a"]))


def test_handler_turns_text_back_into_the_annotated_type_when_it_is_a_time_or_uuid() -> None:
    tasks = skivi.Tasks()
    got: list[Any] = []

    @tasks.task
    def remind(at: dt.datetime, day: dt.date, who: uuid.UUID, maybe: dt.time | None = None,
               note: str = "") -> None:
        got.append((at, day, who, maybe, note))

    who = uuid.uuid4()
    remind.definition.handler(_ctx({
        "at": "2024-05-01T12:00:00+02:00", "day": "2024-05-01", "who": str(who),
        "maybe": "10:30:00", "note": "2024-05-01"}))
    at = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert got == [(at, dt.date(2024, 5, 1), who, dt.time(10, 30), "2024-05-01")]


def test_context_parameter_is_not_in_the_payload_when_annotated_jobcontext() -> None:
    tasks = skivi.Tasks()
    seen: list[Any] = []

    @tasks.task
    def resize(ctx: skivi.JobContext, path: str) -> None:
        seen.append((ctx.job.id, path, current_job() is ctx))

    assert isinstance(resize, ContextTask)
    assert resize.payload("p.png") == {"path": "p.png"}
    assert str(resize.signature) == "(path: str)"
    resize.definition.handler(_ctx({"path": "p.png"}))
    assert seen == [(7, "p.png", True)]
    assert current_job() is None  # reset after the job


def test_calling_the_task_runs_the_function_when_called_directly() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def add(a: int, b: int = 1) -> int:
        return a + b

    @tasks.task
    def with_ctx(ctx: skivi.JobContext, a: int) -> int:
        return a * 2

    assert isinstance(add, FunctionTask)
    assert add(2, b=3) == 5
    assert with_ctx(_ctx({}), 4) == 8


def test_async_function_gives_an_async_handler_when_registered() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return url.upper()

    @tasks.task
    def plain(url: str) -> None: ...

    registry = TaskRegistry.from_mapping(tasks)
    assert registry.get("fetch").is_async is True  # type: ignore[union-attr]
    assert registry.get("plain").is_async is False  # type: ignore[union-attr]
    handler = fetch.definition.handler
    assert asyncio.run(handler(_ctx({"url": "x"}))) == "X"


def test_registry_takes_the_task_options_when_a_typed_task_is_registered() -> None:
    tasks = skivi.Tasks()
    backoff = skivi.Backoff(factor=0.5)

    @tasks.task(timeout=5, backoff=backoff)
    def slow() -> None: ...

    task = TaskRegistry.from_mapping(tasks).get("slow")
    assert task is not None and (task.timeout, task.backoff) == (5.0, backoff)
    assert task.handler is slow.definition.handler


def test_registry_refuses_a_typed_task_when_registered_under_another_identifier() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send() -> None: ...

    with pytest.raises(skivi.RegistryError, match="registered under its own identifier"):
        TaskRegistry.from_mapping({"other": send})


def test_spec_carries_the_task_options_when_built() -> None:
    tasks = skivi.Tasks()

    @tasks.task(queue_name="mail", priority=3, max_attempts=4, flags=["slow"],
                job_key=lambda to, **_: f"mail:{to}", job_key_mode="preserve_run_at")
    def send(to: str, subject: str = "") -> None: ...

    spec = send.spec("a@b.c", subject="s")
    assert spec == skivi.JobSpec(task="send", payload={"to": "a@b.c", "subject": "s"},
                                 queue_name="mail", priority=3, max_attempts=4,
                                 job_key="mail:a@b.c", job_key_mode="preserve_run_at",
                                 flags=("slow",))


def test_configure_changes_only_what_it_returns_when_options_are_given() -> None:
    tasks = skivi.Tasks()

    @tasks.task(queue_name="mail", priority=3)
    def send(to: str) -> None: ...

    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    configured = send.configure(run_at=later, priority=None, job_key="k")
    spec = configured.spec(to="x")
    assert (spec.run_at, spec.priority, spec.queue_name, spec.job_key) == (later, None,
                                                                           "mail", "k")
    assert send.spec(to="x").priority == 3
    with pytest.raises(skivi.JobSpecError, match="run_at"):
        send.configure(run_at=dt.datetime(2030, 1, 1))  # naive


def test_defer_says_how_to_bind_when_the_task_is_unbound() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send(to: str) -> None: ...

    with pytest.raises(skivi.SkiviError, match=r"'send' is not bound to a system.*bind"):
        send.defer(to="x")


def test_create_system_binds_the_collection_when_given_as_tasks() -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send(to: str) -> None: ...

    system = skivi.create_system({}, tasks)
    assert tasks.system is system
    assert system.registry().get("send") is not None
    other = skivi.create_system({}, {"send": send})  # a mapping holding typed tasks
    assert tasks.system is other  # binding again rebinds


def test_system_task_registers_in_the_system_when_declared() -> None:
    system = skivi.create_system({}, {"legacy": lambda ctx: None})
    system.registry()  # built before the declaration: built again after it

    @system.task(max_attempts=2)
    def send(to: str) -> None: ...

    assert set(system.registry().identifiers()) == {"legacy", "send"}
    assert system.has_tasks and send.collection.system is system
    assert system.client.instance is system.instance
    with pytest.raises(skivi.RegistryError, match="'legacy' is registered in this system"):
        system.task(identifier="legacy")(lambda: None)
    assert "legacy" not in send.collection


def test_task_file_may_define_a_collection_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "mail.py").write_text(
        "import skivi\n"
        "TASKS = skivi.Tasks()\n"
        "@TASKS.task(timeout=3)\n"
        "def send(to: str) -> str:\n"
        "    return to\n")
    registry = TaskRegistry.from_directory(tmp_path)
    task = registry.get("send")
    assert task is not None and task.timeout == 3.0
    assert task.handler(_ctx({"to": "x"})) == "x"
