"""Limits as data: ``[[limits]]`` validation (every problem named by its key), rates, the
merge of the configuration's limits with typed tasks' ``limits=``, and that a bad limit
stops an instance from being built."""

from __future__ import annotations

import pytest

import skivi
from skivi.errors import ConfigError
from skivi.instance import Instance
from skivi.limit import SLOTS_MAX, Limit, merge_limits, parse_limits, parse_rate
from skivi.registry import TaskRegistry


def test_rates_parse_to_count_and_seconds_when_written_as_documented() -> None:
    assert parse_rate("10/s") == (10, 1.0)
    assert parse_rate("100/10s") == (100, 10.0)
    assert parse_rate("5/min") == (5, 60.0)
    assert parse_rate("5 / 15 minutes") == (5, 900.0)
    assert parse_rate("1/h") == (1, 3600.0)
    assert parse_rate("2/day") == (2, 86400.0)


@pytest.mark.parametrize("text", ["10", "10/fortnight", "0/s", f"{SLOTS_MAX + 1}/s", "x/s",
                                  "10/0s", ""])
def test_bad_rates_are_refused_when_parsed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_limits_build_when_well_formed() -> None:
    limits = parse_limits([
        {"name": "per-tenant", "tasks": ["a", "b"], "key": "account.id", "concurrency": 2},
        {"name": "api", "tasks": ["a"], "rate": "10/s"},
    ])
    assert limits[0] == Limit("per-tenant", ("a", "b"), "account.id", concurrency=2)
    assert limits[0].key_path == ["account", "id"]
    assert (limits[0].slots, limits[0].period) == (2, None)
    assert (limits[1].key_path, limits[1].slots, limits[1].period) == (None, 10, 1.0)


def test_every_problem_is_named_by_its_entry_and_key_when_limits_are_wrong() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_limits([
            {"name": "a", "tasks": ["t"], "concurrency": 2, "rate": "1/s"},
            {"name": "b", "tasks": "t", "concurrency": 0},
            {"name": "c", "tasks": [], "rate": "often", "keys": "x"},
            {"tasks": ["t"], "key": "a..b", "concurrency": True},
            {"name": "a", "tasks": ["t"], "concurrency": 1},
            "not a table",
        ])
    text = str(caught.value)
    for expected in ("limits[0] 'a': expected exactly one of concurrency and rate",
                     "limits[1] 'b': tasks: expected a list of task identifiers",
                     "limits[1] 'b': concurrency: expected an integer from 1 to 10000, got 0",
                     "limits[2] 'c': tasks: expected at least one task identifier",
                     "limits[2] 'c': rate: expected \"N/period\"",
                     "limits[2] 'c': keys: unknown key; did you mean 'key'?",
                     "limits[3]: name: expected a string",
                     "limits[3]: key: expected a payload field path",
                     "limits[3]: concurrency: expected an integer",
                     "limits[4] 'a': name: duplicate of limits[0]",
                     "limits[5]: expected a table"):
        assert expected in text, (expected, text)


def test_a_bad_limit_stops_the_instance_when_configured() -> None:
    config = skivi.load_config({"limits": [{"name": "x", "tasks": ["t"]}]}, env={})
    with pytest.raises(ConfigError, match=r"limits\[0\] 'x': expected exactly one"):
        Instance.build(config)


def test_limits_key_must_be_a_list_of_tables_when_loaded() -> None:
    with pytest.raises(ConfigError, match="limits"):
        skivi.load_config({"limits": {"name": "x"}}, env={})


def test_limits_of_one_name_merge_their_tasks_when_declared_by_config_and_tasks() -> None:
    configured = parse_limits([{"name": "t", "tasks": ["a"], "key": "k", "concurrency": 2}])
    merged = merge_limits(configured, {
        "b": (Limit("t", key="k", concurrency=2),),
        "c": (Limit("api", rate="5/s"),),
    })
    assert merged == [Limit("api", ("c",), rate="5/s"),
                      Limit("t", ("a", "b"), "k", concurrency=2)]


def test_limits_of_one_name_are_refused_when_their_rules_differ() -> None:
    with pytest.raises(ConfigError, match="limit 't' \\(task 'b'\\) differs"):
        merge_limits([Limit("t", ("a",), "k", concurrency=2)],
                     {"b": (Limit("t", key="k", concurrency=3),)})


def test_typed_tasks_declare_limits_when_given_the_option() -> None:
    tasks = skivi.Tasks()

    @tasks.task(limits=[skivi.Limit("per-tenant", key="tenant_id", concurrency=2)])
    def sync_account(tenant_id: str) -> None: ...

    registry = TaskRegistry.build(dict(tasks))
    assert registry.limits() == {
        "sync_account": (Limit("per-tenant", key="tenant_id", concurrency=2),)}
    assert merge_limits([], registry.limits()) == [
        Limit("per-tenant", ("sync_account",), "tenant_id", concurrency=2)]


def test_a_limit_value_is_refused_when_built_wrong() -> None:
    with pytest.raises(ValueError, match="exactly one of concurrency and rate"):
        Limit("x", concurrency=1, rate="1/s")
    with pytest.raises(TypeError, match=r"limits must be a tuple of skivi\.Limit"):
        skivi.task(lambda ctx: None, limits=["nope"])  # type: ignore[list-item]
