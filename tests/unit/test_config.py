"""Config loading and validation: layers, messages, and the types the fields end up with."""

import dataclasses
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from skivi import config as config_module
from skivi.config import (
    DEFAULT_CONFIG_FILE,
    ENV_VARIABLES,
    Config,
    DatabaseConfig,
    WorkerConfig,
    load_config,
)
from skivi.errors import ConfigError

FULL_TOML = """
[database]
connection_string = "postgresql://file@localhost/app"
schema_name = "jobs"
pool_max_size = 8
connect_timeout = 3

[worker]
task_directory = "tasks"
file_extensions = [".py", ".pyw"]
processes = 2
concurrency = 4
batch_size = 100
queues = ["default", "mail"]
heartbeat_interval = 2
lease_timeout = 20.5
job_timeout = 60.0
unknown_tasks = "skip"
forbidden_flags = ["slow"]
history = true

[validation]
max_payload_bytes = 2048

[validation.tasks]
send_email = "myapp.schemas:SEND_EMAIL"

[validation.tasks.resize]
type = "object"
required = ["url"]

[metrics]
port = 9187
host = "0.0.0.0"
max_queue_labels = 7

[events]
buffer_size = 0

[[cron]]
task = "digest"
schedule = "0 8 * * *"
"""


def problems_of(
    source: Any = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(source, env=env or {}, overrides=overrides)
    return caught.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / DEFAULT_CONFIG_FILE
    path.write_text(textwrap.dedent(text))
    return path


def test_all_problems_reported_when_several_settings_wrong() -> None:
    problems = problems_of(
        {
            "database": {"schema_name": "Skivi", "pool_max_size": 0},
            "metrics": {"max_queue_labels": -1, "port": 70000},
            "worker": {"concurrency": 0, "procesess": 2, "queues": ["a", 3]},
        },
        env={"SKIVI_SHUTDOWN_TIMEOUT": "soon"},
    )
    keys = [problem.split(":")[0] for problem in problems]
    assert keys == [
        "database.pool_max_size",
        "database.schema_name",
        "metrics.max_queue_labels",
        "metrics.port",
        "worker.concurrency",
        "worker.procesess",
        "worker.queues[1]",
        "worker.shutdown_timeout",
    ]


def test_as_dict_loads_back_equal_when_every_section_set(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, FULL_TOML), env={})
    plain = loaded.as_dict()
    assert isinstance(plain["worker"]["queues"], list)
    assert isinstance(plain["validation"]["tasks"], dict)
    assert load_config(plain, env={}) == loaded


def test_concurrency_rejected_when_zero() -> None:
    assert problems_of({"worker": {"concurrency": 0}}) == [
        "worker.concurrency: must be at least 1, got 0"
    ]


def test_sync_prefetch_rejected_when_zero() -> None:
    assert problems_of({"worker": {"sync_prefetch": 0}}) == [
        "worker.sync_prefetch: must be at least 1, got 0"
    ]


def test_config_source_keeps_its_values_over_env_but_not_overrides_when_passed_a_config(
) -> None:
    base = load_config({"worker": {"processes": 3, "concurrency": 5}}, env={})
    loaded = load_config(
        base, env={"SKIVI_PROCESSES": "4"}, overrides={"database.schema_name": "other"}
    )
    assert (loaded.worker.processes, loaded.worker.concurrency) == (3, 5)
    assert loaded.database.schema_name == "other"


def test_dict_source_takes_env_only_for_keys_it_leaves_out_when_given_in_code() -> None:
    loaded = load_config(
        {"database": {"schema_name": "mine"}},
        env={"SKIVI_SCHEMA": "theirs", "DATABASE_URL": "postgresql://db/app"},
    )
    assert loaded.database.schema_name == "mine"
    assert loaded.database.connection_string == "postgresql://db/app"


def test_config_source_revalidated_when_built_by_hand() -> None:
    problems = problems_of(Config(worker=WorkerConfig(concurrency=0)))
    assert problems == ["worker.concurrency: must be at least 1, got 0"]


def test_cron_rejected_when_items_are_not_tables() -> None:
    assert problems_of({"cron": ["0 8 * * *"]}) == [
        "cron[0]: expected a table, got a string ('0 8 * * *')"
    ]


def test_cron_rejected_when_written_as_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron]\ntask = "digest"\n')
    assert problems_of(path) == ["cron: expected a list of tables, got a table"]


def test_database_url_used_when_skivi_database_url_absent() -> None:
    loaded = load_config(None, env={"DATABASE_URL": "postgresql://shared/app"})
    assert loaded.database.connection_string == "postgresql://shared/app"


def test_default_constants_match_fields_when_inspected() -> None:
    sections = [f.type for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.type)]
    section: Any
    for section in [Config, *sections]:
        for field in dataclasses.fields(section):
            if dataclasses.is_dataclass(field.type):
                continue
            default = getattr(config_module, f"{field.name.upper()}_DEFAULT")
            assert getattr(section(), field.name) == default, field.name


def test_defaults_used_when_source_is_none() -> None:
    loaded = load_config(env={})
    assert loaded == Config()
    assert loaded.database == DatabaseConfig(
        connection_string=None, schema_name="skivi", pool_max_size=4, connect_timeout=10.0
    )
    assert loaded.worker.processes == config_module.PROCESSES_DEFAULT == 0
    assert loaded.worker.concurrency == 16
    assert loaded.worker.file_extensions == (".py",)
    assert loaded.worker.history_retention == 7 * 86400.0
    assert loaded.worker.unknown_tasks == "exhaust"
    assert loaded.validation.tasks == {}
    assert loaded.metrics.port == 0
    assert loaded.events.buffer_size == 1000
    assert loaded.cron == ()


def test_dict_source_loads_when_shaped_like_toml() -> None:
    source = {"worker": {"queues": ["a", "b"], "job_timeout": 5}, "cron": [{"task": "t"}]}
    loaded = load_config(source, env={})
    assert loaded.worker.queues == ("a", "b")
    assert loaded.worker.job_timeout == 5.0
    assert isinstance(loaded.worker.job_timeout, float)
    assert loaded.cron == ({"task": "t"},)
    assert source == {"worker": {"queues": ["a", "b"], "job_timeout": 5}, "cron": [{"task": "t"}]}


def test_empty_env_value_ignored_when_variable_present() -> None:
    loaded = load_config(
        {"database": {"connection_string": "postgresql://file/app"}},
        env={"SKIVI_DATABASE_URL": "", "DATABASE_URL": "", "SKIVI_PROCESSES": ""},
    )
    assert loaded.database.connection_string == "postgresql://file/app"
    assert loaded.worker.processes == 0


def test_env_error_names_variable_when_value_unparsable() -> None:
    assert problems_of(env={"SKIVI_PROCESSES": "abc", "SKIVI_HISTORY": "maybe"}) == [
        "worker.history: SKIVI_HISTORY='maybe' is not a boolean (true, false, 1 or 0)",
        "worker.processes: SKIVI_PROCESSES='abc' is not an integer",
    ]


def test_env_origin_named_when_env_value_invalid() -> None:
    assert problems_of(env={"SKIVI_CONCURRENCY": "0"}) == [
        "worker.concurrency: must be at least 1, got 0 (from SKIVI_CONCURRENCY)"
    ]


def test_env_overrides_file_when_both_set(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    env = {
        "SKIVI_CONCURRENCY": "7",
        "SKIVI_HISTORY": "0",
        "SKIVI_METRICS_HOST": "::1",
        "SKIVI_METRICS_MAX_QUEUE_LABELS": "0",
        "SKIVI_METRICS_PORT": "9000",
        "SKIVI_PROCESSES": "3",
        "SKIVI_QUEUES": " a, b ,,c ",
        "SKIVI_SCHEMA": "from_env",
        "SKIVI_SHUTDOWN_TIMEOUT": "2.5",
        "SKIVI_TASKS": "/srv/tasks",
        "SKIVI_UNKNOWN_TASKS": "exhaust",
    }
    loaded = load_config(path, env=env)
    assert loaded.worker.concurrency == 7
    assert loaded.worker.history is False
    assert (loaded.metrics.host, loaded.metrics.port) == ("::1", 9000)
    assert loaded.metrics.max_queue_labels == 0
    assert loaded.worker.processes == 3
    assert loaded.worker.queues == ("a", "b", "c")
    assert loaded.database.schema_name == "from_env"
    assert loaded.worker.shutdown_timeout == 2.5
    assert loaded.worker.task_directory == "/srv/tasks"
    assert loaded.worker.unknown_tasks == "exhaust"
    assert loaded.worker.batch_size == 100  # untouched by env: still the file's


def test_env_variables_name_real_settings_when_listed() -> None:
    for key in ENV_VARIABLES:
        section, _, name = key.partition(".")
        assert name in {f.name for f in dataclasses.fields(getattr(Config(), section))}, key


def test_example_loads_when_taken_from_module_docstring(tmp_path: Path) -> None:
    doc = config_module.__doc__ or ""
    example = doc.split("Example ``skivi.toml``", 1)[1].split("::\n", 1)[1]
    loaded = load_config(write(tmp_path, example), env={})
    assert loaded.validation.tasks["send_email"] == "myapp.schemas:SEND_EMAIL"
    assert loaded.validation.tasks["resize_image"] == {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string"}},
    }
    assert loaded.cron[0]["task"] == "send_digest"
    assert loaded.worker.history is True


def test_fields_frozen_when_assigned() -> None:
    loaded = load_config({"validation": {"tasks": {"a": "m:f"}}}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.worker.processes = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.validation.tasks["b"] = "m:g"  # type: ignore[index]


def test_import_path_rejected_when_malformed() -> None:
    tasks = {"good": "pkg.mod:attr", "bad": "pkg.mod.attr", "inline": {"type": "object"}}
    assert problems_of({"validation": {"tasks": tasks}}) == [
        "validation.tasks.bad: 'pkg.mod.attr' is not an import path like 'package.module:attr'"
    ]


def test_int_accepted_when_float_expected() -> None:
    loaded = load_config({"worker": {"poll_interval": 2, "completion_interval": 0}}, env={})
    assert loaded.worker.poll_interval == 2.0
    assert isinstance(loaded.worker.poll_interval, float)
    assert isinstance(loaded.worker.completion_interval, float)


def test_lease_timeout_rejected_when_not_above_heartbeat_interval() -> None:
    for heartbeat in (30, 31.5):
        problems = problems_of({"worker": {"heartbeat_interval": heartbeat, "lease_timeout": 30}})
        assert len(problems) == 1
        assert problems[0].startswith("worker.lease_timeout: must be greater than")
        assert "worker.heartbeat_interval" in problems[0]


def test_lease_timeout_rule_skipped_when_heartbeat_interval_invalid() -> None:
    assert problems_of({"worker": {"heartbeat_interval": "5s", "lease_timeout": 1}}) == [
        "worker.heartbeat_interval: expected a number, got a string ('5s')"
    ]


def test_missing_file_rejected_when_path_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert problems_of(path) == [f"{path}: file not found"]


def test_os_environ_used_when_env_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKIVI_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://environ/app")
    assert load_config().database.connection_string == "postgresql://environ/app"


def test_override_origin_named_when_override_invalid() -> None:
    assert problems_of(overrides={"metrics.port": -1}) == [
        "metrics.port: must be between 0 and 65535, got -1 (from overrides)"
    ]


def test_overrides_ignored_when_value_is_none() -> None:
    loaded = load_config({"worker": {"processes": 2}}, env={}, overrides={"worker.processes": None})
    assert loaded.worker.processes == 2


def test_overrides_win_when_file_and_env_set(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    loaded = load_config(
        path,
        env={"SKIVI_PROCESSES": "3", "SKIVI_DATABASE_URL": "postgresql://env/app"},
        overrides={
            "database.connection_string": "postgresql://flag/app",
            "worker.processes": 5,
            "worker.queues": ["urgent"],
        },
    )
    assert loaded.worker.processes == 5
    assert loaded.database.connection_string == "postgresql://flag/app"
    assert loaded.worker.queues == ("urgent",)


def test_schema_name_accepted_when_57_characters() -> None:
    name = "s" * 57
    assert load_config({"database": {"schema_name": name}}, env={}).database.schema_name == name


@pytest.mark.parametrize(
    "name",
    ['a"; drop table x; --', "Skivi", "1abc", "a" * 60, "", "skivi\n", "pg_jobs", "my-jobs",
     "information_schema"],
)
def test_schema_name_rejected_when_not_plain_identifier(name: str) -> None:
    problems = problems_of({"database": {"schema_name": name}})
    assert len(problems) == 1
    assert problems[0].startswith("database.schema_name: ")


def test_schema_name_quotes_only_its_start_when_10_kb_long() -> None:
    [problem] = problems_of({"database": {"schema_name": "s" * 10_000}})
    assert len(problem) < 300, problem
    assert "10000 characters" in problem


def test_skivi_database_url_wins_when_both_urls_set(tmp_path: Path) -> None:
    env = {"SKIVI_DATABASE_URL": "postgresql://skivi/app", "DATABASE_URL": "postgresql://other/app"}
    loaded = load_config(write(tmp_path, FULL_TOML), env=env)
    assert loaded.database.connection_string == "postgresql://skivi/app"


def test_syntax_error_names_file_and_line_when_toml_invalid(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nprocesses = 2\nconcurrency = = 3\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: invalid TOML")
    assert "line 3" in problem


def test_toml_file_round_trips_when_every_section_set(tmp_path: Path) -> None:
    loaded = load_config(str(write(tmp_path, FULL_TOML)), env={})
    assert loaded.database == DatabaseConfig(
        connection_string="postgresql://file@localhost/app",
        schema_name="jobs",
        pool_max_size=8,
        connect_timeout=3.0,
    )
    assert loaded.worker.file_extensions == (".py", ".pyw")
    assert loaded.worker.queues == ("default", "mail")
    assert loaded.worker.forbidden_flags == ("slow",)
    assert loaded.worker.lease_timeout == 20.5
    assert loaded.worker.unknown_tasks == "skip"
    assert loaded.validation.max_payload_bytes == 2048
    assert loaded.validation.tasks["send_email"] == "myapp.schemas:SEND_EMAIL"
    assert loaded.validation.tasks["resize"] == {"type": "object", "required": ["url"]}
    assert (loaded.metrics.host, loaded.metrics.port) == ("0.0.0.0", 9187)
    assert loaded.metrics.max_queue_labels == 7
    assert loaded.events.buffer_size == 0
    assert loaded.cron == ({"task": "digest", "schedule": "0 8 * * *"},)


def test_unknown_key_suggests_match_when_misspelt() -> None:
    assert problems_of({"worker": {"procesess": 2}}) == [
        "worker.procesess: unknown key; did you mean 'worker.processes'?"
    ]


def test_unknown_override_rejected_when_key_misspelt() -> None:
    assert problems_of(overrides={"worker.procesess": 2, "worker": 1, "a.b.c": 1}) == [
        "a.b.c: unknown key",
        "worker: unknown key",
        "worker.procesess: unknown key; did you mean 'worker.processes'?",
    ]


def test_unknown_section_rejected_when_misspelt() -> None:
    assert problems_of({"databse": {}, "plugins": {}}) == [
        "databse: unknown section; did you mean 'database'?",
        "plugins: unknown section",
    ]


def test_warning_logged_when_batch_size_below_concurrency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="skivi.config"):
        load_config({"worker": {"batch_size": 8, "concurrency": 16}}, env={})
        load_config({"worker": {"batch_size": 16, "concurrency": 16, "job_timeout": 99}}, env={})
    [record] = caplog.records
    assert record.action == "warn_config"  # type: ignore[attr-defined]
    assert record.getMessage().startswith("worker.batch_size: 8 is smaller than worker.concurrency")


def test_wrong_type_rejected_when_section_not_a_table() -> None:
    assert problems_of({"worker": 3}, env={"SKIVI_PROCESSES": "2"}) == [
        "worker: expected a table, got an integer (3)"
    ]


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("worker", "processes", True, "expected an integer, got a boolean (True)"),
        ("worker", "processes", 1.5, "expected an integer, got a number (1.5)"),
        ("worker", "processes", "2", "expected an integer, got a string ('2')"),
        ("worker", "history", 1, "expected a boolean, got an integer (1)"),
        ("worker", "poll_interval", False, "expected a number, got a boolean (False)"),
        ("worker", "poll_interval", float("nan"), "expected a number, got nan"),
        ("worker", "file_extensions", ".py", "expected a list of strings, got a string ('.py')"),
        ("worker", "unknown_tasks", "drop", "expected one of 'exhaust', 'skip', got a string"),
        ("worker", "job_timeout", "1m", "expected a number, got a string ('1m')"),
        ("database", "connection_string", 5, "expected a string, got an integer (5)"),
        ("validation", "tasks", ["a"], "expected a table, got a list"),
        ("events", "buffer_size", None, "expected an integer, got None"),
    ],
)
def test_wrong_type_rejected_when_value_has_other_type(
    section: str, key: str, value: Any, expected: str
) -> None:
    [problem] = problems_of({section: {key: value}})
    assert problem.startswith(f"{section}.{key}: {expected}")


def test_result_settings_default_to_keeping_nothing_for_a_day_when_not_given() -> None:
    worker = load_config({}, env={}).worker
    assert (worker.store_results, worker.result_retention) == (False, 86400.0)
    assert problems_of({"worker": {"result_retention": 0}}) == [
        "worker.result_retention: must be greater than 0, got 0.0"
    ]
    assert load_config({"worker": {"store_results": True}}, env={}).worker.store_results
