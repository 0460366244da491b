"""The engine observer's log of exhaustions, fed result rows as the completer hands them over
(no database, no processes: the rows and the database's answers are data here)."""

from __future__ import annotations

import logging

import pytest

from skivi.engine import handoff
from skivi.engine.observer import EngineObserver
from skivi.events import CollectingEmitter, EventKind


def test_exhaustion_reason_is_the_one_the_database_recorded_when_it_differs_from_the_rows(
        caplog: pytest.LogCaptureFixture) -> None:
    emitter = CollectingEmitter()
    observer = EngineObserver(emitter)
    # The child sent no final reason: the job ran out of attempts because it lost its key
    # while it ran, which only job_fail_many.sql sees.
    row = [7, 3, handoff.RESULT_FAILED, "report", None, 0.5, "told to fail", 1.0, None, None]
    with caplog.at_level(logging.ERROR):
        observer.flushed([], [row], set(), {(7, 3): "exhausted"},
                         {(7, 3): (5, 5, None, "superseded")})
    [event] = emitter.of(EventKind.JOB_EXHAUSTED)
    assert event["reason"] == "superseded"
    assert "job 7 (report) exhausted after attempt 5 of 5 (superseded): told to fail" in \
        caplog.text
