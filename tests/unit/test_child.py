"""The child's decoding of a claim message (skivi.engine.child), no processes needed."""

from __future__ import annotations

import datetime as dt

import pytest

from skivi.engine.child import TIME_MAX, TIME_MIN, _parse_time, _wait


@pytest.mark.parametrize(("text", "expected"), [
    # As json_build_array spells a timestamptz (job_claim.sql).
    ("2024-05-01T12:00:00+00:00", dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)),
    ("infinity", TIME_MAX),
    ("-infinity", TIME_MIN),
    ("10000-01-01T00:00:00+00:00", TIME_MAX),
    ("0001-12-31T00:00:00+00:00 BC", TIME_MIN),
])
def test_parse_time_clamps_what_python_cannot_hold_when_decoding_a_claim(
        text: str, expected: dt.datetime) -> None:
    assert _parse_time(text) == expected


@pytest.mark.parametrize("run_at", ["-infinity", "infinity", "0001-12-31T00:00:00+00:00 BC",
                                    "garbage"])
def test_wait_is_zero_and_never_raises_when_run_at_is_not_an_ordinary_time(
        run_at: str) -> None:
    message = [1, 1, "t", {}, None, 0, run_at]
    assert _wait(message) == 0.0


def test_wait_counts_from_run_at_when_it_is_an_ordinary_time() -> None:
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert 3590 < _wait([1, 1, "t", {}, None, 0, an_hour_ago]) < 3700
