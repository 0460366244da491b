"""JobSpec.check (skivi.job): the messages of refused options, no database needed."""

from __future__ import annotations

from typing import Any

import pytest

from skivi.errors import JobSpecError, PayloadError
from skivi.job import JobSpec
from skivi.payload import encode

LONG = "q" * 10_000
MESSAGE_MAX = 300  # an echoed value is cut to ~80 characters; the rest is the explanation


@pytest.mark.parametrize(("options", "option"), [
    ({"task": LONG}, "task"),
    ({"task": "t", "queue_name": LONG}, "queue_name"),
    ({"task": "t", "job_key": "k" * 10_000}, "job_key"),
    ({"task": "t", "job_key": "k", "job_key_mode": LONG}, "job_key_mode"),
    ({"task": "t", "flags": ["ok", "\x00" + LONG]}, "flags"),
])
def test_a_refused_option_quotes_only_the_start_of_a_10_kb_value_when_echoed(
        options: dict[str, Any], option: str) -> None:
    with pytest.raises(JobSpecError) as info:
        JobSpec(**options).check()
    message = str(info.value)
    assert f"'{option}'" in message
    assert len(message) < MESSAGE_MAX, message
    assert "10000 characters" in message or "10001 characters" in message, message


@pytest.mark.parametrize("option", ["task", "queue_name", "job_key"])
def test_a_nul_is_reported_with_its_position_when_a_name_contains_one(option: str) -> None:
    options: dict[str, Any] = {"task": "t", option: "abc\x00def"}
    with pytest.raises(JobSpecError, match=r"contains a NUL character at position 3") as info:
        JobSpec(**options).check()
    assert f"'{option}'" in str(info.value)
    assert "characters" not in str(info.value).split("NUL")[0]  # not a length problem


def test_a_nul_in_a_long_task_identifier_is_reported_as_a_nul_not_as_a_length() -> None:
    with pytest.raises(JobSpecError, match="NUL character at position 200"):
        JobSpec(task="t" * 200 + "\x00").check()


def test_a_payload_error_quotes_only_the_start_of_a_10_kb_task_identifier() -> None:
    with pytest.raises(PayloadError) as info:
        encode(LONG, {"x": float("nan")}, 1024)
    assert len(str(info.value)) < MESSAGE_MAX
    assert "10000 characters" in str(info.value)
