"""Unit tests for skivi.registry: building registries from code and from task directories."""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from skivi.errors import RegistryError, TaskFileError
from skivi.job import TASK_IDENTIFIER_MAX
from skivi.registry import (
    MODULE_PACKAGE,
    Task,
    TaskDef,
    TaskRegistry,
    is_async_callable,
    task,
)
from skivi.retry import DEFAULT_BACKOFF, Backoff


def _write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def _result(t: Task | None, *args: Any) -> Any:
    assert t is not None
    return t.handler(*args)


def _actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def _async_fn(ctx: object) -> None:
    return None


def _sync_fn(ctx: object) -> None:
    return None


class _AsyncCallable:
    async def __call__(self, ctx: object) -> None:
        return None


class _SyncCallable:
    def __call__(self, ctx: object) -> None:
        return None


class _Methods:
    async def run_async(self, ctx: object) -> None:
        return None

    def run_sync(self, ctx: object) -> None:
        return None


def test_as_dict_returns_copy_when_mutated() -> None:
    registry = TaskRegistry.from_mapping({"a": _sync_fn})
    copy = registry.as_dict()
    copy["b"] = copy["a"]
    del copy["a"]
    assert registry.identifiers() == ("a",)
    assert isinstance(registry.as_dict()["a"], Task)


def test_build_is_empty_when_no_sources() -> None:
    registry = TaskRegistry.build(None, None)
    assert len(registry) == 0
    assert registry.identifiers() == ()


def test_build_prefers_programmatic_task_when_identifier_in_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, "a.py", 'TASKS = {"shared": lambda ctx: "a", "only_a": lambda ctx: "a"}\n')
    _write(tmp_path, "b.py", 'TASKS = {"shared": lambda ctx: "b", "only_b": lambda ctx: "b"}\n')
    with caplog.at_level(logging.INFO, logger="skivi.registry"):
        registry = TaskRegistry.build({"shared": lambda ctx: "code"}, tmp_path)
    assert registry.identifiers() == ("only_a", "only_b", "shared")
    shared = registry.get("shared")
    assert _result(shared, None) == "code"
    assert shared is not None and shared.source == "code"
    infos = [r for r in _actions(caplog, "override_task") if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "shared" in infos[0].getMessage()
    assert str(tmp_path / "b.py") in infos[0].getMessage()


def test_from_directory_accepts_directory_symlink_when_given(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _write(real, "a.py", 'TASKS = {"a": lambda ctx: 1}\n')
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert TaskRegistry.from_directory(link).identifiers() == ("a",)


def test_from_directory_detects_async_handlers_when_defined_in_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "a.py",
        """
        async def fetch(ctx):
            return 1

        def compute(ctx):
            return 2

        TASKS = {"fetch": fetch, "compute": compute}
        """,
    )
    registry = TaskRegistry.from_directory(tmp_path)
    fetch, compute = registry.get("fetch"), registry.get("compute")
    assert fetch is not None and fetch.is_async
    assert compute is not None and not compute.is_async


def test_from_directory_ignores_non_matching_files_when_default_extensions(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "a.py", 'TASKS = {"a": lambda ctx: 1}\n')
    _write(tmp_path, "notes.txt", "this is not python\n")
    _write(tmp_path, "b.py.bak", "raise RuntimeError('must not be imported')\n")
    _write(tmp_path, "c.pyc", "garbage")
    assert TaskRegistry.from_directory(tmp_path).identifiers() == ("a",)


def test_from_directory_is_not_recursive_when_subdirectories_exist(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", 'TASKS = {"a": lambda ctx: 1}\n')
    _write(tmp_path / "sub", "b.py", "raise RuntimeError('must not be imported')\n")
    (tmp_path / "dir.py").mkdir()
    assert TaskRegistry.from_directory(tmp_path).identifiers() == ("a",)


def test_from_directory_keeps_modules_apart_when_stems_repeat_across_directories(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "one", "jobs.py", 'TASKS = {"x": lambda ctx: "one"}\n')
    _write(tmp_path / "two", "jobs.py", 'TASKS = {"x": lambda ctx: "two"}\n')
    first = TaskRegistry.from_directory(tmp_path / "one")
    second = TaskRegistry.from_directory(tmp_path / "two")
    assert _result(first.get("x"), None) == "one"
    assert _result(second.get("x"), None) == "two"
    first_x, second_x = first.get("x"), second.get("x")
    assert first_x is not None and second_x is not None
    assert first_x.handler.__module__ != second_x.handler.__module__
    assert first_x.handler.__module__ in sys.modules
    assert second_x.handler.__module__ in sys.modules


def test_from_directory_later_file_overrides_when_identifier_repeated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Written in reverse order so directory-listing order cannot explain the outcome.
    _write(tmp_path, "b.py", 'TASKS = {"x": lambda ctx: "b"}\n')
    _write(tmp_path, "a.py", 'TASKS = {"x": lambda ctx: "a", "y": lambda ctx: "a"}\n')
    with caplog.at_level(logging.WARNING, logger="skivi.registry"):
        registry = TaskRegistry.from_directory(tmp_path)
    x = registry.get("x")
    assert _result(x, None) == "b"
    assert x is not None and x.source == str(tmp_path / "b.py")
    assert _result(registry.get("y"), None) == "a"
    warnings = _actions(caplog, "override_task")
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert str(tmp_path / "a.py") in message
    assert str(tmp_path / "b.py") in message


def test_from_directory_leaves_no_module_when_import_fails(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "raise RuntimeError('no')\n")
    before = {name for name in sys.modules if name.startswith(MODULE_PACKAGE + ".")}
    with pytest.raises(TaskFileError):
        TaskRegistry.from_directory(tmp_path)
    after = {name for name in sys.modules if name.startswith(MODULE_PACKAGE + ".")}
    assert after == before


def test_from_directory_loads_custom_extensions_when_given(tmp_path: Path) -> None:
    _write(tmp_path, "a.task", 'TASKS = {"a": lambda ctx: "a"}\n')
    _write(tmp_path, "b.py", "raise RuntimeError('must not be imported')\n")
    _write(tmp_path, "c.job", 'TASKS = {"c": lambda ctx: "c"}\n')
    registry = TaskRegistry.from_directory(tmp_path, extensions=(".task", ".job"))
    assert registry.identifiers() == ("a", "c")
    assert _result(registry.get("a"), None) == "a"


def test_from_directory_loads_dataclasses_when_defined_in_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "a.py",
        """
        import dataclasses

        @dataclasses.dataclass
        class Args:
            n: int

        TASKS = {"a": lambda ctx: Args(3).n}
        """,
    )
    assert _result(TaskRegistry.from_directory(tmp_path).get("a"), None) == 3


def test_from_directory_loads_files_alphabetically_when_listed(tmp_path: Path) -> None:
    for name in ("c.py", "a.py", "b.py"):
        _write(
            tmp_path,
            name,
            f"""
            import builtins
            builtins.__dict__.setdefault("_skivi_load_order", []).append({name!r})
            TASKS = {{}}
            """,
        )
    import builtins

    try:
        TaskRegistry.from_directory(tmp_path)
        assert builtins.__dict__["_skivi_load_order"] == ["a.py", "b.py", "c.py"]
    finally:
        builtins.__dict__.pop("_skivi_load_order", None)


def test_from_directory_loads_symlink_when_target_inside_directory(tmp_path: Path) -> None:
    _write(tmp_path, "real.py", 'TASKS = {"real": lambda ctx: 1}\n')
    _write(tmp_path / "lib", "shared.txt", 'TASKS = {"shared": lambda ctx: 2}\n')
    (tmp_path / "alias.py").symlink_to("real.py")
    (tmp_path / "shared.py").symlink_to(tmp_path / "lib" / "shared.txt")
    registry = TaskRegistry.from_directory(tmp_path)
    assert registry.identifiers() == ("real", "shared")
    real = registry.get("real")
    assert real is not None and real.source == str(tmp_path / "real.py")  # later file wins


def test_from_directory_pickles_handlers_when_defined_in_file(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", 'def run(ctx):\n    return "ran"\n\nTASKS = {"a": run}\n')
    t = TaskRegistry.from_directory(tmp_path).get("a")
    assert t is not None
    assert pickle.loads(pickle.dumps(t.handler)) is t.handler


def test_from_directory_raises_naming_directory_when_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(RegistryError, match="nope") as info:
        TaskRegistry.from_directory(missing)
    assert "does not exist" in str(info.value)
    assert not isinstance(info.value, TaskFileError)


def test_from_directory_raises_naming_path_when_not_a_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, "file.py", "TASKS = {}\n")
    with pytest.raises(RegistryError, match="not a directory"):
        TaskRegistry.from_directory(path)


def test_from_directory_raises_task_file_error_when_file_calls_exit(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(TaskFileError, match="line 2"):
        TaskRegistry.from_directory(tmp_path)


def test_from_directory_raises_task_file_error_when_handler_not_callable(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", 'TASKS = {"x": 42}\n')
    with pytest.raises(TaskFileError) as info:
        TaskRegistry.from_directory(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "a.py") in message
    assert "'x'" in message
    assert "int" in message


def test_from_directory_raises_task_file_error_when_tasks_missing(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "def run(ctx):\n    pass\n")
    with pytest.raises(TaskFileError, match="TASKS") as info:
        TaskRegistry.from_directory(tmp_path)
    assert str(tmp_path / "a.py") in str(info.value)


def test_from_directory_raises_task_file_error_when_tasks_not_dict(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "TASKS = [lambda ctx: 1]\n")
    with pytest.raises(TaskFileError,
                       match=r"TASKS must be a dict or a skivi\.Tasks, got list") as info:
        TaskRegistry.from_directory(tmp_path)
    assert str(tmp_path / "a.py") in str(info.value)


def test_from_directory_raises_task_file_error_with_line_when_import_raises(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        "a.py",
        """\
        def boom():
            raise ValueError("kaput")

        boom()
        TASKS = {}
        """,
    )
    with pytest.raises(TaskFileError) as info:
        TaskRegistry.from_directory(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "a.py") in message
    assert "line 2" in message  # the deepest frame in the file, not the call site
    assert "ValueError: kaput" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_from_directory_raises_task_file_error_with_line_when_library_raises(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "a.py", 'import json\n\n\njson.loads("{")\nTASKS = {}\n')
    with pytest.raises(TaskFileError, match="line 4") as info:
        TaskRegistry.from_directory(tmp_path)
    assert isinstance(info.value.__cause__, ValueError)


def test_from_directory_raises_task_file_error_with_line_when_syntax_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "a.py", "x = 1\ndef broken(:\n    pass\nTASKS = {}\n")
    with pytest.raises(TaskFileError) as info:
        TaskRegistry.from_directory(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "a.py") in message
    assert "line 2" in message
    assert isinstance(info.value.__cause__, SyntaxError)


def test_from_directory_skips_dangling_symlink_when_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, "a.py", 'TASKS = {"a": lambda ctx: 1}\n')
    (tmp_path / "gone.py").symlink_to(tmp_path / "missing.py")
    with caplog.at_level(logging.WARNING, logger="skivi.registry"):
        assert TaskRegistry.from_directory(tmp_path).identifiers() == ("a",)
    assert len(_actions(caplog, "skip_task_file")) == 1


def test_from_directory_skips_symlink_when_target_outside_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = tmp_path / "tasks"
    _write(tasks, "good.py", 'TASKS = {"good": lambda ctx: 1}\n')
    outside = _write(
        tmp_path / "outside", "evil.py", "raise RuntimeError('must not be imported')\n"
    )
    (tasks / "evil.py").symlink_to(os.path.join("..", "outside", "evil.py"))
    (tasks / "evil_abs.py").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="skivi.registry"):
        registry = TaskRegistry.from_directory(tasks)
    assert registry.identifiers() == ("good",)
    skipped = _actions(caplog, "skip_task_file")
    assert sorted(r.getMessage().split(":")[0] for r in skipped) == [
        f"skipping task file {tasks / 'evil.py'}",
        f"skipping task file {tasks / 'evil_abs.py'}",
    ]
    assert all(r.levelno == logging.WARNING for r in skipped)


def test_from_mapping_accepts_identifier_when_at_length_limit() -> None:
    identifier = "é" * TASK_IDENTIFIER_MAX  # characters, not bytes, as PostgreSQL counts
    assert identifier in TaskRegistry.from_mapping({identifier: _sync_fn})


def test_from_mapping_accepts_lambdas_and_closures_when_given() -> None:
    def make(n: int) -> Any:
        def handler(ctx: object) -> int:
            return n

        return handler

    registry = TaskRegistry.from_mapping(
        {"lambda": lambda ctx: "l", "closure": make(7), "partial": functools.partial(make(1))}
    )
    assert _result(registry.get("lambda"), None) == "l"
    assert _result(registry.get("closure"), None) == 7
    assert registry.identifiers() == ("closure", "lambda", "partial")
    assert all(t.source == "code" and t.backoff is DEFAULT_BACKOFF for t in registry)


def test_from_mapping_raises_naming_identifier_and_type_when_handler_not_callable() -> None:
    with pytest.raises(RegistryError) as info:
        TaskRegistry.from_mapping({"send_email": "not a function"})  # type: ignore[dict-item]
    assert "'send_email'" in str(info.value)
    assert "str" in str(info.value)


@pytest.mark.parametrize(
    ("identifier", "shown"),
    [
        ("", "''"),
        ("x" * (TASK_IDENTIFIER_MAX + 1), "129 characters"),
        ("bad\x00name", "bad\\x00name"),
        ("lone\udc80", "lone\\udc80"),
        (42, "42"),
        (None, "None"),
    ],
)
def test_from_mapping_raises_naming_identifier_when_invalid(identifier: Any, shown: str) -> None:
    with pytest.raises(RegistryError) as info:
        TaskRegistry.from_mapping({identifier: _sync_fn})
    assert shown in str(info.value)


def test_from_mapping_quotes_only_the_start_of_a_10_kb_identifier_when_refused() -> None:
    with pytest.raises(RegistryError) as info:
        TaskRegistry.from_mapping({"x" * 10_000: _sync_fn})
    assert len(str(info.value)) < 300
    assert "10000 characters" in str(info.value)


def test_from_mapping_reports_a_nul_with_its_position_when_the_identifier_is_long() -> None:
    with pytest.raises(RegistryError, match="NUL character at position 200"):
        TaskRegistry.from_mapping({"x" * 200 + "\x00": _sync_fn})


def test_from_mapping_raises_when_not_a_mapping() -> None:
    with pytest.raises(RegistryError, match="mapping"):
        TaskRegistry.from_mapping([("a", _sync_fn)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (_async_fn, True),
        (_AsyncCallable(), True),
        (functools.partial(_async_fn), True),
        (functools.partial(functools.partial(_async_fn)), True),
        (functools.partial(_AsyncCallable()), True),
        (_Methods().run_async, True),
        (_sync_fn, False),
        (_SyncCallable(), False),
        (functools.partial(_sync_fn), False),
        (_Methods().run_sync, False),
        (lambda ctx: None, False),
        (_AsyncCallable, False),  # calling the class builds an instance, not a coroutine
        (print, False),
    ],
)
def test_is_async_reflects_handler_when_task_built(handler: Any, expected: bool) -> None:
    assert is_async_callable(handler) is expected
    assert Task.of("t", handler).is_async is expected
    assert TaskRegistry.from_mapping({"t": handler}).get("t") == Task.of("t", handler)


def test_registry_answers_lookups_when_built() -> None:
    registry = TaskRegistry.from_mapping({"b": _sync_fn, "a": _async_fn})
    assert len(registry) == 2
    assert "a" in registry and "b" in registry
    assert "c" not in registry and 3 not in registry
    assert registry.get("c") is None
    assert registry.identifiers() == ("a", "b")
    assert [t.identifier for t in registry] == ["a", "b"]
    a = registry.get("a")
    assert a is not None and a.handler is _async_fn and a.is_async
    assert repr(registry) == "TaskRegistry(['a', 'b'])"


def test_registry_is_immutable_when_built() -> None:
    registry = TaskRegistry.from_mapping({"a": _sync_fn})
    with pytest.raises(AttributeError):
        registry._tasks = {}
    with pytest.raises(TypeError):
        registry._tasks["b"] = registry._tasks["a"]  # type: ignore[index]


def test_registry_refuses_duplicates_when_built_from_tasks() -> None:
    with pytest.raises(RegistryError, match="'a' is registered twice"):
        TaskRegistry([Task.of("a", _sync_fn), Task.of("a", _async_fn)])


def test_task_decorator_keeps_handler_callable_when_used_bare_or_with_options() -> None:
    @task
    def plain(ctx: object) -> str:
        return "plain"

    @task(timeout=2.5, backoff=Backoff(factor=0.1))
    async def configured(ctx: object) -> str:
        return "configured"

    assert isinstance(plain, TaskDef) and isinstance(configured, TaskDef)
    assert plain(None) == "plain"
    registry = TaskRegistry.from_mapping({"plain": plain, "configured": configured})
    c = registry.get("configured")
    assert c is not None
    assert c.is_async and c.timeout == 2.5 and c.backoff == Backoff(factor=0.1)
    p = registry.get("plain")
    assert p is not None and p.timeout is None and p.backoff is DEFAULT_BACKOFF


def test_task_def_options_carried_into_task_when_loaded_from_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "a.py",
        """
        from skivi.registry import task
        from skivi.retry import Backoff

        @task(backoff=Backoff(base=2.0, max_delay=60.0))
        def slow(ctx):
            return "slow"

        TASKS = {"slow": slow, "quick": task(lambda ctx: "quick", timeout=5)}
        """,
    )
    registry = TaskRegistry.from_directory(tmp_path)
    slow, quick = registry.get("slow"), registry.get("quick")
    assert slow is not None and quick is not None
    assert slow.backoff == Backoff(base=2.0, max_delay=60.0) and slow.timeout is None
    assert quick.timeout == 5.0 and quick.backoff is DEFAULT_BACKOFF
    assert not isinstance(slow.handler, TaskDef)  # the Task holds the bare handler
    assert _result(quick, None) == "quick"


def test_task_def_options_carried_into_task_when_wrapped() -> None:
    backoff = Backoff(factor=0.1, jitter=0.2)
    t = Task.of("x", task(_sync_fn, timeout=5, backoff=backoff))
    assert t.handler is _sync_fn
    assert t.timeout == 5.0 and isinstance(t.timeout, float)
    assert t.backoff is backoff
    assert t.source == "code"


def test_task_raises_when_backoff_not_a_backoff() -> None:
    with pytest.raises(TypeError, match="backoff"):
        task(_sync_fn, backoff=10)  # type: ignore[call-overload]


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True])
def test_task_raises_when_timeout_invalid(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        task(_sync_fn, timeout=timeout)


def test_store_result_reaches_the_task_and_follows_the_default_when_left_out() -> None:
    registry = TaskRegistry.from_mapping({
        "kept": task(lambda ctx: 1, store_result=True),
        "never": task(store_result=False)(lambda ctx: 1),
        "default": lambda ctx: 1,
    })
    assert registry.keeping_results(False) == frozenset({"kept"})
    assert registry.keeping_results(True) == frozenset({"kept", "default"})
    with pytest.raises(TypeError, match="store_result must be a bool"):
        task(lambda ctx: 1, store_result="yes")  # type: ignore[arg-type]
