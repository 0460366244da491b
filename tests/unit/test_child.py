"""The child's decoding of a claim message (skivi.engine.child), no processes needed."""

from __future__ import annotations

import datetime as dt

import pytest

from skivi.engine.child import TIME_MAX, TIME_MIN, JobInfo, _parse_time, queue_wait


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
    assert queue_wait(message) == 0.0


def test_wait_counts_from_run_at_when_it_is_an_ordinary_time() -> None:
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert 3590 < queue_wait([1, 1, "t", {}, None, 0, an_hour_ago]) < 3700


def _message(**fields: object) -> list[object]:
    base = {"id": 7, "lease": 2, "task": "mail", "payload": {"to": "a"}, "queue": "q",
            "priority": -3, "run_at": "2024-05-01T12:00:00+00:00", "attempts": 2,
            "max_attempts": 5, "key": "k", "flags": ["x", "y"],
            "created_at": "2024-05-01T11:00:00.5+00:00"}
    base.update(fields)
    return list(base.values())


def test_job_info_shows_every_field_of_the_claim_message_decoded() -> None:
    job = JobInfo(_message())
    assert (job.id, job.task_identifier, job.payload, job.queue_name, job.priority,
            job.attempts, job.max_attempts, job.key, job.flags) == (
        7, "mail", {"to": "a"}, "q", -3, 2, 5, "k", ("x", "y"))
    assert job.run_at == dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    assert job.created_at == dt.datetime(2024, 5, 1, 11, 0, 0, 500000, tzinfo=dt.UTC)
    assert "id=7" in repr(job) and "mail" in repr(job)


def test_job_info_gives_an_empty_dict_for_a_null_payload_and_a_tuple_for_no_flags() -> None:
    job = JobInfo(_message(payload=None, flags=None))
    assert job.payload == {}
    assert job.flags == ()


def test_job_info_is_read_only() -> None:
    job = JobInfo(_message())
    with pytest.raises(AttributeError):
        job.id = 8  # type: ignore[misc]
    with pytest.raises(AttributeError):
        job.extra = 1  # type: ignore[attr-defined]


def test_an_undecodable_time_raises_only_when_a_handler_reads_it() -> None:
    """Inside the handler's guard, so the job fails with the reason; a handler that never
    reads the time is not failed for it."""
    job = JobInfo(_message(run_at="garbage"))
    assert job.payload == {"to": "a"}
    with pytest.raises(ValueError):
        _ = job.run_at
