"""The IPC contract between the engine's parent and its child processes. Nothing else.

Each child has two pipes of its own: jobs go down one, results come back up the other. A
pipe carries frames (``skivi.framing``: a 4-byte length, one kind byte, an orjson body).

    parent -> child   JOBS     [slots, messages]: the job messages exactly as the claim
                               built them (the parent never parses a payload: it joins the
                               texts), and for each its slot (below)
                      STOP     stop taking jobs; send back the ones not started; finish
                      CANCEL   [[id, lease, slot], ...]: stop these jobs (their cancel was
                               requested, see ``skivi.engine.children``): one not started
                               goes back as released, a running async handler's task is
                               cancelled, a sync handler's ctx.cancelled becomes true
                      ENQUEUED [request, jobs, failure]: the answer to an ENQUEUE, the
                               stored Jobs or why not (see ``skivi.engine.relay``)
    child  -> parent  RESULTS  a JSON array of result rows (below)
                      READY    the child has loaded its tasks and waits for jobs
                      STARTED  [id, lease, slot, timeout] of a job with a timeout that
                               just started: the parent's watchdog kills the child if it
                               overruns (the child alone decides a job's timeout)
                      VALUES   [[id, lease, task, value, error], ...]: the return values of
                               jobs of tasks that keep them (store_result), the JSON text of
                               each (or null and the reason it could not be kept), always
                               written just before the RESULTS frame holding their rows. Only
                               those tasks' jobs send one: the rows of the others are the
                               same as without results, and the parent reads the frame
                               only when one comes (see skivi.engine.completer)
                      ENQUEUE  [request, start_by, batch]: a handler's ctx.add_job, checked
                               (``skivi.client._check``), for the parent to run on its
                               connection; start_by (time.monotonic, one clock for every
                               process of the host) is when it is too late to begin

ENQUEUE and ENQUEUED bodies are pickles, not JSON: they carry what the enqueue functions
build and return (specs with datetimes, Jobs), the two ends are the same code forked from
one process, and the child is trusted as much as the parent (it runs the handlers).

Per-child channels (rather than one shared queue) let the parent know exactly which jobs
each child holds, so a child that dies settles precisely its own jobs. What became of each
of them is in a small shared-memory array of slot states, one byte per slot of the child:

    SLOT_HANDED   the parent handed the job over (it clears the byte before it sends);
    SLOT_STARTED  the child is about to run the handler (stored just before it is called);
    SLOT_DONE     the handler returned successfully (stored before anything else runs).

Successes are batched: their result rows wait a moment in the child for the next flush.
A failure's row is written to the pipe at once. So when a child dies (a sibling job's
os._exit, a segfault, an OOM kill), nothing a handler produced is lost: the parent first
reads what is left in the result pipe, then settles the jobs still in hand by their byte:
DONE ones are completed, STARTED ones failed as a crash (their attempt counts), HANDED ones
go back untouched. Memory, not a message, because it must be true even when the child dies
the next instant, and it costs a byte store per job instead of a write and a wake-up.

Slots come in two lanes: [0, concurrency) for async handlers, the rest for sync handlers
(see ``skivi.engine.supervisor`` for how many sync jobs a child is handed at once).

A job message is a JSON array as the claim (claim_jobs, migration 0010) builds it, read by
these indices; the child appends the job's slot (it is not on the wire):

    JOB_ID            job id
    JOB_LEASE         lease of this claim
    JOB_TASK          task identifier
    JOB_PAYLOAD       payload (decoded JSON)
    JOB_QUEUE_NAME    serial queue (or null)
    JOB_PRIORITY      priority
    JOB_RUN_AT        run_at (timestamptz text)
    JOB_ATTEMPTS      attempts, this claim's included
    JOB_MAX_ATTEMPTS  max_attempts
    JOB_KEY           key (or null)
    JOB_FLAGS         flags (or null)
    JOB_CREATED_AT    created_at (timestamptz text)
    JOB_SLOT          the job's slot in its child (appended by the child)

A result row is a list of RESULT_LENGTH fields, read by these indices; every row has all of
them, and is built only by ``completed_row``, ``failed_row``, ``released_row`` or
``cancelled_row`` (the parent turns the row of a job whose cancel it passed on into a
cancelled one by its code):

    RESULT_ID            job id
    RESULT_LEASE         lease of the claim the result settles
    RESULT_CODE          RESULT_COMPLETED, RESULT_FAILED or RESULT_RELEASED (and, set by
                         the parent only, RESULT_CANCELLED)
    RESULT_TASK          task identifier
    RESULT_QUEUE_NAME    serial queue or null
    RESULT_RUN_SECONDS   how long the handler ran (0.0 when it did not run, or is unknown)
    RESULT_ERROR         the failure text, the exception's message (or null)
    RESULT_DELAY         the retry backoff in seconds (0.0 but for a failure)
    RESULT_FINAL         the reason to exhaust the job now (or null)
    RESULT_PAYLOAD       the JSON text of what stays to do after a partial success (or null)
    RESULT_WAIT_SECONDS  the time from the job's run_at to its start (null when unknown)
    RESULT_SLOT          the job's slot in its child (null in the rows the parent writes
                         for a dead child's jobs)
    RESULT_ATTEMPT       the job's attempts as claimed (the job message's), which tells the
                         database whether the job lost its key and retries while it ran
                         (superseded; see job_fail_many.sql); null but for a failure
    RESULT_TRACEBACK     the error's traceback (or null), RESULT_ERROR being its message

The parent keeps a child's jobs by slot, not by job id: one engine can hold two claims of
the same job at once (it lost the job to a rescuer while running it, and claimed it again),
and each run must give back its own slot.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, Final

import orjson

from skivi.framing import FrameReader, encode_frame

__all__ = [
    "CANCEL",
    "ENQUEUE",
    "ENQUEUED",
    "EVENT",
    "JOBS",
    "JOB_ATTEMPTS",
    "JOB_CREATED_AT",
    "JOB_FLAGS",
    "JOB_ID",
    "JOB_KEY",
    "JOB_LEASE",
    "JOB_MAX_ATTEMPTS",
    "JOB_PAYLOAD",
    "JOB_PRIORITY",
    "JOB_QUEUE_NAME",
    "JOB_RUN_AT",
    "JOB_SLOT",
    "JOB_TASK",
    "READY",
    "RESULTS",
    "RESULT_ATTEMPT",
    "RESULT_CANCELLED",
    "RESULT_CODE",
    "RESULT_COMPLETED",
    "RESULT_DELAY",
    "RESULT_ERROR",
    "RESULT_FAILED",
    "RESULT_FINAL",
    "RESULT_ID",
    "RESULT_LEASE",
    "RESULT_LENGTH",
    "RESULT_PAYLOAD",
    "RESULT_QUEUE_NAME",
    "RESULT_RELEASED",
    "RESULT_RUN_SECONDS",
    "RESULT_SLOT",
    "RESULT_TASK",
    "RESULT_TRACEBACK",
    "RESULT_WAIT_SECONDS",
    "SLOT_DONE",
    "SLOT_HANDED",
    "SLOT_STARTED",
    "STARTED",
    "STOP",
    "VALUES",
    "VALUE_ERROR",
    "VALUE_ID",
    "VALUE_JSON",
    "VALUE_LEASE",
    "VALUE_TASK",
    "FrameReader",
    "cancelled_row",
    "completed_row",
    "decode_enqueue",
    "decode_enqueued",
    "encode_cancel",
    "encode_enqueue",
    "encode_enqueued",
    "encode_frame",
    "encode_jobs",
    "encode_results",
    "encode_started",
    "encode_values",
    "failed_row",
    "released_row",
]

JOBS = b"J"
STOP = b"S"
RESULTS = b"R"
READY = b"Y"
EVENT = b"E"  # cron process -> parent: one event dict (cron/fired)
STARTED = b"T"
VALUES = b"V"
ENQUEUE = b"Q"  # child -> parent: a handler's enqueue (see skivi.engine.relay)
ENQUEUED = b"A"  # parent -> child: its answer
CANCEL = b"C"  # parent -> child: stop these jobs

# Job message fields (the order of claim_jobs's json_build_array, migration 0010), then the
# slot.
JOB_ID: Final = 0
JOB_LEASE: Final = 1
JOB_TASK: Final = 2
JOB_PAYLOAD: Final = 3
JOB_QUEUE_NAME: Final = 4
JOB_PRIORITY: Final = 5
JOB_RUN_AT: Final = 6
JOB_ATTEMPTS: Final = 7
JOB_MAX_ATTEMPTS: Final = 8
JOB_KEY: Final = 9
JOB_FLAGS: Final = 10
JOB_CREATED_AT: Final = 11
JOB_SLOT: Final = 12  # appended by the child

# Values of a result row's RESULT_CODE.
RESULT_COMPLETED: Final = 0
RESULT_FAILED: Final = 1
RESULT_RELEASED: Final = 2  # never started: goes back with its attempt not consumed
RESULT_CANCELLED: Final = 3  # its cancel was requested: ends in history as cancelled

# Result row fields (see the module docstring); the constructors below set every one.
RESULT_ID: Final = 0
RESULT_LEASE: Final = 1
RESULT_CODE: Final = 2
RESULT_TASK: Final = 3
RESULT_QUEUE_NAME: Final = 4
RESULT_RUN_SECONDS: Final = 5
RESULT_ERROR: Final = 6
RESULT_DELAY: Final = 7
RESULT_FINAL: Final = 8
RESULT_PAYLOAD: Final = 9
RESULT_WAIT_SECONDS: Final = 10
RESULT_SLOT: Final = 11
RESULT_ATTEMPT: Final = 12
RESULT_TRACEBACK: Final = 13
RESULT_LENGTH: Final = 14

# Fields of one entry of a VALUES frame.
VALUE_ID: Final = 0
VALUE_LEASE: Final = 1
VALUE_TASK: Final = 2
VALUE_JSON: Final = 3  # the JSON text of the value, or null when it could not be kept
VALUE_ERROR: Final = 4  # why it could not be kept (or null)

SLOT_HANDED = 0
SLOT_STARTED = 1
SLOT_DONE = 2

def encode_jobs(slots: Sequence[int], messages: Sequence[str]) -> bytes:
    # Joined as text and encoded once per frame, not once per job.
    return encode_frame(JOBS, b"[" + orjson.dumps(slots) + b",["
                        + ",".join(messages).encode() + b"]]")


def encode_results(results: Sequence[Sequence[Any]]) -> bytes:
    return encode_frame(RESULTS, orjson.dumps(results))


def encode_values(values: Sequence[Sequence[Any]]) -> bytes:
    return encode_frame(VALUES, orjson.dumps(values))


def encode_cancel(jobs: Sequence[Sequence[int]]) -> bytes:
    """The CANCEL frame: [[id, lease, slot], ...]."""
    return encode_frame(CANCEL, orjson.dumps(jobs))


def encode_started(job_id: int, lease: int, slot: int, timeout: float) -> bytes:
    """The STARTED frame: [id, lease, slot, timeout], read back by unpacking in that order."""
    return encode_frame(STARTED, orjson.dumps([job_id, lease, slot, timeout]))


def encode_enqueue(request: int, start_by: float, batch: Any) -> bytes:
    """The ENQUEUE frame: a request number (the child's own), when it is too late to start
    it, and the checked batch."""
    return encode_frame(ENQUEUE, pickle.dumps((request, start_by, batch),
                                              pickle.HIGHEST_PROTOCOL))


def decode_enqueue(body: bytes) -> tuple[int, float, Any]:
    request, start_by, batch = pickle.loads(body)  # our own child (see above)
    return request, start_by, batch


def encode_enqueued(request: int, jobs: Sequence[Any] | None = None,
                    failure: tuple[str, ...] | None = None) -> bytes:
    """The ENQUEUED frame: the stored Jobs, or ``failure``, a kind and its fields (built
    into an exception by the child, see ``skivi.engine.relay``)."""
    return encode_frame(ENQUEUED, pickle.dumps((request, jobs, failure),
                                               pickle.HIGHEST_PROTOCOL))


def decode_enqueued(body: bytes) -> tuple[int, list[Any] | None, tuple[str, ...] | None]:
    request, jobs, failure = pickle.loads(body)  # our own parent
    return request, jobs, failure


# The one place each kind of result row is built. Keyword-only, so no call site depends on
# the order; each returns a plain list (the wire form, and cheap on the hot path).

def completed_row(*, job_id: int, lease: int, task: str, queue_name: str | None,
                  run_seconds: float, wait_seconds: float | None, slot: int | None,
                  ) -> list[Any]:
    """A handler returned (or its slot said DONE when its child died)."""
    return [job_id, lease, RESULT_COMPLETED, task, queue_name, run_seconds, None, 0.0, None,
            None, wait_seconds, slot, None, None]


def failed_row(*, job_id: int, lease: int, task: str, queue_name: str | None,
               run_seconds: float, error: str, delay: float, final: str | None = None,
               payload: str | None = None, wait_seconds: float | None, slot: int | None,
               attempt: int, traceback: str | None = None) -> list[Any]:
    """An attempt failed: retried after ``delay`` seconds, or exhausted (``final`` is the
    reason to exhaust it now, or its attempts ran out); ``payload`` what stays to do after a
    partial success."""
    return [job_id, lease, RESULT_FAILED, task, queue_name, run_seconds, error, delay, final,
            payload, wait_seconds, slot, attempt, traceback]


def released_row(*, job_id: int, lease: int, task: str, queue_name: str | None,
                 slot: int) -> list[Any]:
    """A job the child never started (it was stopping): goes back, attempt not consumed."""
    return [job_id, lease, RESULT_RELEASED, task, queue_name, 0.0, None, 0.0, None, None,
            0.0, slot, None, None]


def cancelled_row(*, job_id: int, lease: int, task: str, queue_name: str | None,
                  error: str | None, slot: int | None) -> list[Any]:
    """A job the parent ends as cancelled itself: taken from its buffer before it was
    handed over (``error`` None), or whose child was killed after worker.cancel_grace."""
    return [job_id, lease, RESULT_CANCELLED, task, queue_name, 0.0, error, 0.0, None, None,
            None, slot, None, None]
