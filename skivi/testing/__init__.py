"""Helpers for the tests of applications that use Skivi. Not used by Skivi itself.

- ``drain(system)`` / ``await drain_async(system)``: run every runnable job in the calling
  process with the engine's own statements and decisions (retries with backoff,
  exhaustion, partial success, no handler), follow-up jobs included up to ``max_jobs``;
  returns a ``JobRun`` per job run (see skivi.testing.drainer).
- ``with capture(system) as jobs``: the jobs enqueued inside the block
  (``assert jobs.enqueued("send_email", to="a@b.c")``), written or (``write=False``) not.
- ``with immediate(system)``: TESTING ONLY, every job enqueued inside the block runs at
  once in the caller and nothing is written (see skivi.testing.recorder).
- a pytest plugin, off unless enabled (``--skivi-fixtures`` or ``skivi_fixtures = true``),
  with fixtures around a ``skivi_system`` fixture of the project's own (skivi.testing.plugin).
"""

from skivi.errors import DrainLimitReached
from skivi.testing.drainer import MAX_JOBS_DEFAULT, JobRun, drain, drain_async
from skivi.testing.recorder import CapturedJob, CapturedJobs, capture, immediate

__all__ = ["MAX_JOBS_DEFAULT", "CapturedJob", "CapturedJobs", "DrainLimitReached", "JobRun",
           "capture", "drain", "drain_async", "immediate"]
