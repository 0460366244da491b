"""The Django tests' settings: the example project's, with the probe app (tasks that
report what they saw) and what the tests vary through the environment."""

import os

# In the test process Django is set up before the session's database exists (its fixture
# gives DATABASES its NAME, HOST...): the example's settings need a DATABASE_URL to read
# meanwhile, which must not stay in the environment (the test-suite reads it as a server).
_PLACEHOLDER = "DATABASE_URL" not in os.environ
if _PLACEHOLDER:
    os.environ["DATABASE_URL"] = "dbname=unset"
try:
    from example.settings import *  # noqa: F403
    from example.settings import INSTALLED_APPS, SKIVI
finally:
    if _PLACEHOLDER:
        del os.environ["DATABASE_URL"]

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support.django_probe"]
# A second alias of the same database, for SKIVI["alias"] (the tests point both at the
# session's database).
DATABASES["jobs"] = {**DATABASES["default"], "ATOMIC_REQUESTS": False}  # noqa: F405
SKIVI = {**SKIVI, "worker": {**SKIVI["worker"], "poll_interval": 0.2,
                             "sync_threads": int(os.environ.get("PROBE_SYNC_THREADS", "1"))}}

if os.environ.get("PROBE_PERSISTENT_CONNECTIONS") == "1":
    # Connections kept across jobs (CONN_MAX_AGE None): close_old_connections keeps a
    # healthy one, so only what the worker does at the fork keeps children off the
    # parent's.
    DATABASES["default"]["CONN_MAX_AGE"] = None  # noqa: F405
