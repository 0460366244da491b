"""The enqueue-time payload gate (``skivi.payload``): no database needed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import re
import uuid

import orjson
import pytest

from skivi.errors import ConfigError, PayloadError
from skivi.payload import PayloadGate, compile_validator, encode

LIMIT = 1024
V = "tests.unit.payload_validators"

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "items": {"type": "array", "items": {"type": "integer"}},
        "priority": {"type": "integer", "default": 5},
    },
    "required": ["to"],
}


def nested_list(depth: int) -> list[object]:
    root: list[object] = []
    node = root
    for _ in range(depth - 1):
        child: list[object] = []
        node.append(child)
        node = child
    return root


def test_callable_validator_accepts_when_it_returns_none() -> None:
    validate = compile_validator("mail", f"{V}:accept")
    validate({"to": "a@example.com"})


def test_callable_validator_names_field_when_exception_has_field() -> None:
    validate = compile_validator("mail", f"{V}:require_to")
    with pytest.raises(PayloadError, match="a recipient is required") as info:
        validate({"subject": "hi"})
    assert info.value.task == "mail"
    assert info.value.field == "to"


def test_callable_validator_refuses_when_it_raises() -> None:
    validate = compile_validator("mail", f"{V}:explode")
    with pytest.raises(PayloadError, match="validator bug") as info:
        validate({})
    assert info.value.task == "mail"
    assert info.value.field is None


def test_callable_validator_refuses_when_it_returns_false() -> None:
    validate = compile_validator("mail", f"{V}:reject")
    with pytest.raises(PayloadError, match=f"rejected by validator {V}:reject"):
        validate({})


@pytest.mark.parametrize(
    "path",
    [
        "tests.unit.no_such_module:validate",
        f"{V}:no_such_attr",
        f"{V}.reject",
        f"{V}:not_a_validator",
    ],
)
def test_compile_validator_raises_config_error_when_import_path_is_bad(path: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_validator("mail", path)
    assert info.value.problems[0].startswith("validation.tasks.mail:")
    assert repr(path) in str(info.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"minLength": "three"},
        {"$ref": "#/definitions/missing"},
        {"type": "string", "pattern": "("},
    ],
)
def test_compile_validator_raises_config_error_when_json_schema_is_invalid(
    schema: dict[str, object],
) -> None:
    with pytest.raises(ConfigError, match=r"validation\.tasks\.mail: invalid JSON Schema"):
        compile_validator("mail", schema)


def test_encode_accepts_when_null_and_nul_are_only_lookalikes() -> None:
    # The cheap byte scans also match these; the walk must clear them rather than refuse.
    payload = {"word": "null", "escaped": "\\u0000", "none": None, "finite": 1.5}
    assert encode("t", payload, LIMIT) == orjson.dumps(payload)


def test_encode_accepts_when_size_equals_limit() -> None:
    payload = "x" * 98  # 100 bytes with the quotes
    assert len(encode("t", payload, 100)) == 100


@pytest.mark.parametrize("payload", [None, [1, 2], "text", 3, True, {}])
def test_encode_accepts_when_top_level_is_any_json_value(payload: object) -> None:
    assert encode("t", payload, LIMIT) == orjson.dumps(payload)


def test_encode_matches_orjson_when_payload_is_valid() -> None:
    payload = {"to": "user@example.com", "items": [{"sku": "a", "price": 9.5}], "n": None}
    assert encode("t", payload, LIMIT) == orjson.dumps(payload)


def test_encode_refuses_when_dataclass_field_is_not_finite() -> None:
    @dataclasses.dataclass
    class Line:
        price: float

    with pytest.raises(PayloadError) as info:
        encode("t", {"lines": [Line(1.0), Line(math.nan)]}, LIMIT)
    assert info.value.field == "lines[1].price"


def test_encode_refuses_when_dict_key_is_not_str() -> None:
    with pytest.raises(PayloadError, match="Dict key must be str") as info:
        encode("t", {"meta": {1: "one"}}, LIMIT)
    assert info.value.field == "meta"


def test_encode_refuses_when_enum_value_is_not_finite() -> None:
    class Level(enum.Enum):
        UNKNOWN = math.nan

    with pytest.raises(PayloadError, match="NaN and Infinity") as info:
        encode("t", {"levels": (Level.UNKNOWN,)}, LIMIT)
    assert info.value.field == "levels[0]"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_refuses_when_float_is_not_finite(value: float) -> None:
    payload = {"items": [{"price": 1.0}, {"price": value}]}
    with pytest.raises(PayloadError, match="NaN and Infinity") as info:
        encode("orders", payload, LIMIT)
    assert info.value.task == "orders"
    assert info.value.field == "items[1].price"


def test_encode_refuses_when_key_contains_nul() -> None:
    with pytest.raises(PayloadError, match="U\\+0000") as info:
        encode("t", {"meta": {"a\x00b": 1}}, LIMIT)
    assert info.value.field == 'meta["a\\u0000b"]'


def test_encode_refuses_when_nesting_is_10000_levels_deep() -> None:
    with pytest.raises(PayloadError, match="nested more than 254 levels") as info:
        encode("t", nested_list(10_000), LIMIT)
    assert info.value.task == "t"


def test_encode_refuses_when_payload_contains_reference_cycle() -> None:
    payload: dict[str, object] = {"tags": set()}
    payload["self"] = payload
    with pytest.raises(PayloadError) as info:
        encode("t", payload, LIMIT)
    # orjson meets the set first; the walk for its field must not loop through the cycle.
    assert info.value.field == "tags"


def test_encode_refuses_when_size_exceeds_limit_by_one_byte() -> None:
    payload = "x" * 99  # 101 bytes with the quotes
    with pytest.raises(PayloadError, match="101 bytes, over the limit of 100 bytes"):
        encode("t", payload, 100)


def test_encode_refuses_when_string_has_lone_surrogate() -> None:
    with pytest.raises(PayloadError, match="surrogates") as info:
        encode("t", {"name": "\ud800"}, LIMIT)
    assert info.value.field == "name"


def test_encode_refuses_when_top_level_float_is_nan() -> None:
    with pytest.raises(PayloadError, match="NaN and Infinity") as info:
        encode("t", math.nan, LIMIT)
    assert info.value.field is None


def test_encode_refuses_when_value_contains_nul() -> None:
    with pytest.raises(PayloadError, match="U\\+0000") as info:
        encode("t", {"lines": ["ok", "bad\x00"]}, LIMIT)
    assert info.value.field == "lines[1]"


@pytest.mark.parametrize("bad", [set(), object()], ids=["set", "object"])
def test_encode_refuses_when_value_is_not_serialisable(bad: object) -> None:
    with pytest.raises(PayloadError, match="not JSON serializable") as info:
        encode("t", {"a": [1, {"b": bad}]}, LIMIT)
    assert info.value.field == "a[1].b"


@pytest.mark.parametrize(("value", "kind"), [
    (dt.datetime(2024, 5, 1, 12, 0), "datetime"),
    (dt.time(12, 0), "time"),
])
def test_encode_refuses_when_a_datetime_or_time_is_naive(value: object, kind: str) -> None:
    # orjson would write 2024-05-01T12:00:00: a wall-clock time in a zone nobody chose.
    with pytest.raises(PayloadError, match=f"naive {kind} is ambiguous") as info:
        encode("t", {"when": [1, value]}, LIMIT)
    assert info.value.field == "when[1]"


def test_encode_writes_dates_times_and_uuids_as_documented_strings_when_aware() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    payload = {
        "at": dt.datetime(2024, 5, 1, 12, 0, 0, 250, tzinfo=plus2),
        "utc": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 1),
        "clock": dt.time(8, 30, tzinfo=plus2),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    assert orjson.loads(encode("t", payload, LIMIT)) == {
        "at": "2024-05-01T12:00:00.000250+02:00",  # the offset kept, never converted
        "utc": "2024-05-01T10:00:00+00:00",
        "day": "2024-05-01",
        "clock": "08:30:00+02:00",
        "id": "12345678-1234-5678-1234-567812345678",
    }


def test_encode_refuses_when_a_decimal_would_become_a_float() -> None:
    with pytest.raises(PayloadError, match="Decimal") as info:
        encode("t", {"price": decimal.Decimal("1.10")}, LIMIT)
    assert info.value.field == "price"


def test_json_schema_validator_does_not_fill_defaults_when_valid() -> None:
    payload = {"to": "a@example.com"}
    compile_validator("mail", ORDER_SCHEMA)(payload)
    assert payload == {"to": "a@example.com"}


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"to": 5}, "to", "to must be string"),
        ({"to": "a", "items": [1, "x"]}, "items[1]", "items[1] must be integer"),
        ([], None, "payload must be object"),
    ],
)
def test_json_schema_validator_names_field_when_value_fails(
    payload: object, field: str | None, message: str
) -> None:
    validate = compile_validator("mail", ORDER_SCHEMA)
    with pytest.raises(PayloadError, match=re.escape(message)) as info:
        validate(payload)
    assert info.value.task == "mail"
    assert info.value.field == field


def test_payload_gate_collects_every_problem_when_config_is_bad() -> None:
    with pytest.raises(ConfigError) as info:
        PayloadGate(
            0,
            {
                "bad_import": "tests.unit.no_such_module:validate",
                "bad_schema": {"type": "nonsense"},
                "fine": ORDER_SCHEMA,
                "not_callable": f"{V}:not_a_validator",
            },
        )
    problems = info.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("max_payload_bytes:")
    assert [p.split(":")[0] for p in problems[1:]] == [
        "validation.tasks.bad_import",
        "validation.tasks.bad_schema",
        "validation.tasks.not_callable",
    ]


def test_payload_gate_encodes_when_task_has_no_validator() -> None:
    gate = PayloadGate(LIMIT, {"mail": ORDER_SCHEMA})
    payload = {"anything": [1, 2]}
    assert not gate.has_validator("other")
    assert gate.check("other", payload) == orjson.dumps(payload)


def test_payload_gate_refuses_when_payload_exceeds_limit() -> None:
    gate = PayloadGate(10, {})
    with pytest.raises(PayloadError, match="over the limit of 10 bytes"):
        gate.check("t", {"text": "longer than ten"})


def test_payload_gate_validates_when_task_has_validator() -> None:
    gate = PayloadGate(LIMIT, {"mail": ORDER_SCHEMA})
    assert gate.has_validator("mail")
    assert gate.check("mail", {"to": "a"}) == b'{"to":"a"}'
    with pytest.raises(PayloadError) as info:
        gate.check("mail", {"to": 1})
    assert info.value.field == "to"


def test_pydantic_model_accepts_when_payload_is_valid() -> None:
    validate = compile_validator("orders", f"{V}:Order")
    validate({"to": "a", "items": [{"sku": "x", "price": 1.0}]})


def test_pydantic_model_counts_errors_when_several_fields_fail() -> None:
    validate = compile_validator("orders", f"{V}:Order")
    with pytest.raises(PayloadError, match="2 errors in total") as info:
        validate({"items": [{"sku": "x"}]})
    assert info.value.field == "to"


def test_pydantic_model_names_field_when_validation_fails() -> None:
    validate = compile_validator("orders", f"{V}:Order")
    payload = {"to": "a", "items": [{"sku": "x", "price": 1}, {"sku": "y", "price": "secret"}]}
    with pytest.raises(PayloadError) as info:
        validate(payload)
    assert info.value.task == "orders"
    assert info.value.field == "items[1].price"
    assert "secret" not in str(info.value)  # the input never leaks into the message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pydantic_type_adapter_names_field_when_validation_fails() -> None:
    validate = compile_validator("nums", f"{V}:int_list_adapter")
    validate([1, 2])
    with pytest.raises(PayloadError) as info:
        validate([1, "x"])
    assert info.value.field == "[1]"
