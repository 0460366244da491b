"""What the tests share, apart from fixtures (pytest finds those only in conftest.py files,
which import their machinery from here). Test modules import from this package, never from
one another.

- ``wait``: ``wait_for``, the deadline-polling helper (no fixed sleeps, STYLE.md §8.5);
- ``db``: connections, roles and the databases the fixtures make and drop;
- ``rows``: one-shot readers of rows from a database URL;
- ``engines``: the engine-subprocess harness of the engine tests, the chaos test and
  bench/run.py (which is why it, and what it imports from here, needs no test dependency);
- ``servers``: a PostgreSQL server of a test's own, to restart or stop;
- ``deploy``: readers of the deployment files in deploy/;
- ``grafana``: readers of the dashboard and the alert rules in grafana/;
- ``soak``: the chaos test's soak switch.
"""
