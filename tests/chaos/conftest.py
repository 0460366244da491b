"""The chaos suite's fixtures: a PostgreSQL server of its own (so restarting it disturbs no
other test), a ledger schema in it, and the soak switch.

Soak mode (10x the jobs and the duration) is on with ``--chaos-soak`` or ``SKIVI_CHAOS_SOAK=1``:

    SKIVI_CHAOS_SOAK=1 python -m pytest tests/chaos -s
    python -m pytest tests/chaos --chaos-soak -s

The option is registered here, so it exists when ``tests/chaos`` (or a file in it) is named on
the command line; the variable works for any invocation (tests/conftest.py keeps it when it
hides the other SKIVI_* variables from the tests).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import PrivateServer, private_postgres
from tests.support.soak import SOAK_ENV, soak_env, soak_mode

SOAK_TIMEOUT = 3600

LEDGER_SCHEMA = """
create schema chaos_ledger;
-- Every job id a producer committed, written in the producer's own transaction.
create table chaos_ledger.committed (
    job_id   bigint  not null,
    producer integer not null,
    keyed    boolean not null,
    at       float8  not null
);
-- Every execution, written by the handler before it works (tests/chaos/tasks).
create table chaos_ledger.exec (
    token        uuid    primary key,
    job_id       bigint  not null,
    task         text    not null,
    pid          integer not null,
    ppid         integer not null,
    attempt      integer not null,
    at           float8  not null,
    -- The job row when the execution started: who held it, under which lease and attempt.
    holder              bigint,
    holder_lease        bigint,
    holder_attempts     integer,
    holder_max_attempts integer
);
-- Every removal of a job row (a final state: completed or exhausted), by trigger.
create table chaos_ledger.final (
    job_id    bigint      not null,
    attempts  integer     not null,
    locked_by bigint,
    at        timestamptz not null default clock_timestamp()
);
-- Every attempt to write a history row, conflicting ones included (BEFORE INSERT trigger).
create table chaos_ledger.history_attempt (
    job_id  bigint      not null,
    outcome text        not null,
    reason  text,
    at      timestamptz not null default clock_timestamp()
);
-- Every engine identity taken: id -> the engine process's pid.
create table chaos_ledger.engine (
    id  bigint      not null,
    pid integer     not null,
    at  timestamptz not null default clock_timestamp()
);

-- A job's row leaves the live tables for good: deleted from job or job_running and, once
-- the statement is done (an AFTER trigger fires then and sees all of it), in neither. A
-- claim (job -> job_running) and a retry, release or rescue (job_running -> job) are moves.
create function chaos_ledger.on_job_delete() returns trigger language plpgsql as $$
begin
    if not exists (select from skivi.job_live l where l.id = old.id) then
        insert into chaos_ledger.final (job_id, attempts, locked_by)
        values (old.id, old.attempts, old.locked_by);
    end if;
    return old;
end $$;
create trigger chaos_final after delete on skivi.job
    for each row execute function chaos_ledger.on_job_delete();
create trigger chaos_final after delete on skivi.job_running
    for each row execute function chaos_ledger.on_job_delete();

create function chaos_ledger.on_history_insert() returns trigger language plpgsql as $$
begin
    insert into chaos_ledger.history_attempt (job_id, outcome, reason)
    values (new.id, new.outcome, new.reason);
    return new;
end $$;
create trigger chaos_history before insert on skivi.job_history
    for each row execute function chaos_ledger.on_history_insert();

create function chaos_ledger.on_engine_insert() returns trigger language plpgsql as $$
begin
    insert into chaos_ledger.engine (id, pid) values (new.id, new.pid);
    return new;
end $$;
create trigger chaos_engine after insert on skivi.engine
    for each row execute function chaos_ledger.on_engine_insert();
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-soak", action="store_true", default=soak_env(),
        help=f"run the chaos test in soak mode: 10x the jobs and the duration (or {SOAK_ENV}=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not soak_mode(config):
        return
    for item in items:
        if item.nodeid.startswith("tests/chaos/"):
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT))


@pytest.fixture
def chaos_server() -> Iterator[PrivateServer]:
    """A migrated PostgreSQL of the test's own, with the ledger schema and its triggers."""
    with private_postgres("skivi-chaos-", LEDGER_SCHEMA) as server:
        yield server
