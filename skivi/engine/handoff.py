"""The IPC contract between the engine's parent and its child processes. Nothing else.

Each child has two pipes of its own: jobs go down one, results come back up the other. A
pipe carries frames: a 4-byte big-endian length, one kind byte, then an orjson body.

    parent -> child   JOBS     [slots, messages]: the job messages exactly as job_claim.sql
                               built them (the parent never parses a payload: it joins the
                               texts), and for each its slot (below)
                      STOP     stop taking jobs; send back the ones not started; finish
    child  -> parent  RESULTS  a JSON array of Result rows (below)
                      READY    the child has loaded its tasks and waits for jobs
                      STARTED  [id, lease, slot] of a job with a timeout that just
                               started: the parent's watchdog kills the child if it overruns

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

A job message is [id, lease, task, payload, queue_name, priority, run_at, attempts,
max_attempts, key, flags, created_at].

A result row is [id, lease, code, task, queue_name, run_seconds, error, delay, final,
payload, wait_seconds, slot], and a failed one goes on with [attempt, traceback]: code is one of the
RESULT_* values; error the failure text (or null); delay the retry backoff in seconds; final
the reason to exhaust the job now (or null); payload the JSON text of what stays to do after
a partial success (or null); wait_seconds the time from the job's run_at to its start; slot
the job's slot in its child (rows the parent writes for a dead child's jobs have no slot);
attempt the job's attempts as claimed (the job message's), which tells the database whether
the job lost its key and retries while it ran (superseded; see job_fail_many.sql);
traceback the error's traceback (or null), error being its message.

The parent keeps a child's jobs by slot, not by job id: one engine can hold two claims of
the same job at once (it lost the job to a rescuer while running it, and claimed it again),
and each run must give back its own slot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

__all__ = [
    "EVENT",
    "JOBS",
    "READY",
    "RESULTS",
    "RESULT_ATTEMPT",
    "RESULT_COMPLETED",
    "RESULT_FAILED",
    "RESULT_RELEASED",
    "RESULT_SLOT",
    "RESULT_TRACEBACK",
    "SLOT_DONE",
    "SLOT_HANDED",
    "SLOT_STARTED",
    "STARTED",
    "STOP",
    "FrameReader",
    "encode_frame",
    "encode_jobs",
    "encode_results",
]

JOBS = b"J"
STOP = b"S"
RESULTS = b"R"
READY = b"Y"
EVENT = b"E"  # cron process -> parent: one event dict (cron/fired)
STARTED = b"T"

RESULT_COMPLETED = 0
RESULT_FAILED = 1
RESULT_RELEASED = 2  # never started: goes back with its attempt not consumed
RESULT_SLOT = 11  # index of the slot in a result row
RESULT_ATTEMPT = 12  # index of the claimed attempt in a failed result row
RESULT_TRACEBACK = 13  # index of the error's traceback in a failed result row

SLOT_HANDED = 0
SLOT_STARTED = 1
SLOT_DONE = 2

_HEADER = struct.Struct(">I")


def encode_frame(kind: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(len(body) + 1) + kind + body


def encode_jobs(slots: Sequence[int], messages: Sequence[bytes]) -> bytes:
    return encode_frame(JOBS, b"[" + orjson.dumps(slots) + b",[" + b",".join(messages) + b"]]")


def encode_results(results: Sequence[Sequence[Any]]) -> bytes:
    return encode_frame(RESULTS, orjson.dumps(results))


class FrameReader:
    """Reassembles frames from pipe reads of any size."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield (kind, body) for every complete frame received so far."""
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            start = pos + 4
            yield bytes(buf[start:start + 1]), bytes(buf[start + 1:start + size])
            pos = start + size
        if pos:
            del buf[:pos]
