"""The IPC contract (skivi.engine.wire): one layout per row kind, named once."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from skivi.engine import wire

SQL = Path(__file__).resolve().parents[2] / "skivi" / "sql"
# The claim's SQL: the function job_claim.sql calls, in the migration that last defines it.
CLAIM = SQL / "migrations" / "0010_claim_jobs.sql"


def _indices(prefix: str) -> dict[str, int]:
    return {name: getattr(wire, name) for name in wire.__all__
            if name.startswith(prefix) and isinstance(getattr(wire, name), int)}


def test_job_indices_follow_the_claim_statements_array_when_read_against_it() -> None:
    assert "claim_jobs(" in (SQL / "queries" / "job_claim.sql").read_text()
    text = CLAIM.read_text()
    body = re.search(r"json_build_array\((.*?)\)::text", text, re.S)
    assert body is not None
    columns = [c.strip().removeprefix("c.") for c in body.group(1).split(",")]
    columns = ["task" if c == "task_identifier" else c for c in columns]
    fields = {index: name.removeprefix("JOB_").lower()
              for name, index in _indices("JOB_").items()}
    assert [fields[i] for i in range(len(columns))] == columns
    assert wire.JOB_SLOT == len(columns)  # the child appends it
    assert sorted(fields) == list(range(len(columns) + 1))


def test_result_rows_have_every_field_when_built_by_any_constructor() -> None:
    fields = {name: index for name, index in _indices("RESULT_").items()
              if name not in ("RESULT_CANCELLED", "RESULT_COMPLETED", "RESULT_FAILED",
                              "RESULT_RELEASED", "RESULT_LENGTH")}
    assert sorted(fields.values()) == list(range(wire.RESULT_LENGTH))
    done = wire.completed_row(job_id=1, lease=2, task="t", queue_name="q",
                                 run_seconds=0.5, wait_seconds=0.25, slot=3)
    failed = wire.failed_row(job_id=4, lease=5, task="t", queue_name=None,
                                run_seconds=0.5, error="boom", delay=2.0, final="no_handler",
                                payload="[1]", wait_seconds=None, slot=None, attempt=6,
                                traceback="Traceback ...")
    released = wire.released_row(job_id=7, lease=8, task="t", queue_name=None, slot=9)
    cancelled = wire.cancelled_row(job_id=10, lease=11, task="t", queue_name="q",
                                   error="killed", slot=None)
    for row in (done, failed, released, cancelled):
        assert len(row) == wire.RESULT_LENGTH
        assert orjson.loads(orjson.dumps(row)) == row  # survives the pipe as it is
    assert [done[wire.RESULT_CODE], failed[wire.RESULT_CODE],
            released[wire.RESULT_CODE]] == [wire.RESULT_COMPLETED, wire.RESULT_FAILED,
                                               wire.RESULT_RELEASED]
    assert (done[wire.RESULT_ID], done[wire.RESULT_LEASE], done[wire.RESULT_SLOT],
            done[wire.RESULT_WAIT_SECONDS], done[wire.RESULT_ATTEMPT]) == (
        1, 2, 3, 0.25, None)
    assert (failed[wire.RESULT_ERROR], failed[wire.RESULT_DELAY],
            failed[wire.RESULT_FINAL], failed[wire.RESULT_PAYLOAD],
            failed[wire.RESULT_ATTEMPT], failed[wire.RESULT_TRACEBACK]) == (
        "boom", 2.0, "no_handler", "[1]", 6, "Traceback ...")
    assert (released[wire.RESULT_ID], released[wire.RESULT_LEASE],
            released[wire.RESULT_SLOT]) == (7, 8, 9)
    assert (cancelled[wire.RESULT_CODE], cancelled[wire.RESULT_ID],
            cancelled[wire.RESULT_LEASE], cancelled[wire.RESULT_ERROR]) == (
        wire.RESULT_CANCELLED, 10, 11, "killed")
    assert len({wire.RESULT_COMPLETED, wire.RESULT_FAILED, wire.RESULT_RELEASED,
                wire.RESULT_CANCELLED}) == 4


def test_cancel_frame_reads_back_as_id_lease_slot_when_encoded() -> None:
    [(kind, body)] = list(wire.FrameReader().feed(wire.encode_cancel([[1, 2, 3], [4, 5, 6]])))
    assert kind == wire.CANCEL
    assert orjson.loads(body) == [[1, 2, 3], [4, 5, 6]]


def test_started_frame_reads_back_in_order_when_encoded() -> None:
    [(kind, body)] = list(wire.FrameReader().feed(wire.encode_started(1, 2, 3, 4.5)))
    assert kind == wire.STARTED
    job_id, lease, slot, timeout = orjson.loads(body)
    assert (job_id, lease, slot, timeout) == (1, 2, 3, 4.5)


def test_enqueue_frames_carry_the_batch_and_the_stored_jobs_or_the_failure() -> None:
    import datetime as dt

    import skivi
    from skivi.client import _Batch
    from skivi.engine import relay
    from skivi.job import EnqueueOutcome, Job

    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    batch = _Batch([skivi.JobSpec(task="t", run_at=when, job_key="k"), "u"],
                   [b'{"a":1}', b"{}"], [1], [0])
    reader = wire.FrameReader()
    [(kind, body)] = list(reader.feed(wire.encode_enqueue(7, 12.5, batch)))
    assert kind == wire.ENQUEUE
    assert wire.decode_enqueue(body) == (7, 12.5, batch)
    job = Job(1, "t", {"a": 1}, None, 0, when, 0, 25, None, "k", (), None, None, 0, when, when,
              EnqueueOutcome.INSERTED)
    [(kind, body)] = list(reader.feed(wire.encode_enqueued(7, jobs=[job])))
    assert kind == wire.ENQUEUED and wire.decode_enqueued(body) == (7, [job], None)
    failure = (relay.UNAVAILABLE, "db:5432", "server closed the connection", "")
    [(_, body)] = list(reader.feed(wire.encode_enqueued(8, failure=failure)))
    assert wire.decode_enqueued(body) == (8, None, failure)
    errors = [relay.error_of(f) for f in (failure, (relay.TIMEOUT, "slow"),
                                           (relay.REFUSED, "refused"), (relay.FAILED, "bug"))]
    assert [type(e) for e in errors] == [skivi.DatabaseUnavailable, skivi.EnqueueTimeout,
                                         skivi.JobSpecError, skivi.SkiviError]
    assert "db:5432" in str(errors[0]) and "server closed the connection" in str(errors[0])
    assert isinstance(errors[1], TimeoutError) and str(errors[1]) == "slow"
