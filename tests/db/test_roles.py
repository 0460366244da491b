"""The database roles of docs/operations.md ("Database roles"), made by the reference script
skivi/sql/roles.sql on a database the owner role migrated: each role can do what the guide
says, and PostgreSQL refuses (insufficient_privilege) what it says it cannot.

Roles are cluster-wide, so each test makes its own, named after this session's pid and a
counter, and drops them (and its database) at the end.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import skivi
from skivi.db import queries
from skivi.db.migrate import migrate
from skivi.db.queries import Queries, channel_name, for_schema
from tests.support.db import SCHEMA, MakeDatabase, connect
from tests.support.deploy import keda_query
from tests.support.engines import child_env, engine_argv, run_engine

REPO = Path(__file__).resolve().parents[2]
ROLES_SQL = REPO / "skivi" / "sql" / "roles.sql"
KINDS = ("owner", "worker", "producer", "outsider")
PSQL = shutil.which("psql")
INSUFFICIENT_PRIVILEGE = "42501"

_counter = itertools.count(1)
_ROLE_NAME = re.compile(rf"skivi_(?:{'|'.join(KINDS)})_(\d+)_\d+")


def render_psql(text: str, variables: dict[str, str]) -> str:
    """``text`` with psql's variable interpolation done: ``:"name"`` is the quoted identifier,
    ``:'name'`` the quoted literal. Comments are dropped (psql does not interpolate there);
    meta-commands are refused, so the script stays runnable without psql."""
    out = []
    for line in text.splitlines():
        code = line.split("--", 1)[0]
        assert not code.lstrip().startswith("\\"), f"psql meta-command in roles.sql: {line}"

        def identifier(match: re.Match[str]) -> str:
            return '"' + variables[match.group(1)].replace('"', '""') + '"'

        def literal(match: re.Match[str]) -> str:
            return "'" + variables[match.group(1)].replace("'", "''") + "'"

        code = re.sub(r':"(\w+)"', identifier, code)
        code = re.sub(r":'(\w+)'", literal, code)
        out.append(code)
    return "\n".join(out)


@dataclass
class Roles:
    database: str
    names: dict[str, str]

    def url(self, kind: str) -> str:
        return make_conninfo(self.database, user=self.names[kind])

    def connect(self, kind: str) -> psycopg.Connection[Any]:
        return connect(self.url(kind))

    @property
    def variables(self) -> dict[str, str]:
        return {"schema": SCHEMA, **{k: v for k, v in self.names.items() if k != "outsider"}}


def _drop_stale_roles(admin: psycopg.Connection[Any]) -> None:
    """Roles left by a session that died (its pid is gone); only on a local server."""
    host = str(conninfo_to_dict(admin.info.dsn).get("host") or "")
    if any(h not in ("", "localhost", "127.0.0.1", "::1") and not h.startswith("/")
           for h in host.split(",")):
        return
    for (name,) in admin.execute("select rolname from pg_roles where rolname like 'skivi_%'"):
        match = _ROLE_NAME.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            try:
                admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
            except psycopg.Error:
                pass
        except PermissionError:
            pass


@pytest.fixture
def roles(admin: psycopg.Connection[Any], make_database: MakeDatabase) -> Iterator[Roles]:
    """Owner, worker, producer and a role with no grants (outsider), as the guide makes
    them: the owner migrates an empty database, then runs roles.sql."""
    _drop_stale_roles(admin)
    suffix = f"{os.getpid()}_{next(_counter)}"
    names = {kind: f"skivi_{kind}_{suffix}" for kind in KINDS}
    created: list[str] = []
    url = make_database(template=None)
    dbname = conninfo_to_dict(url)["dbname"]
    try:
        for name in names.values():
            admin.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
            created.append(name)
        admin.execute(sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(str(dbname)), sql.Identifier(names["owner"])))
        made = Roles(url, names)
        with made.connect("owner") as c:
            migrate(c, SCHEMA)
            c.execute(render_psql(ROLES_SQL.read_text(), made.variables).encode())
        yield made
    finally:
        # The database first: the roles own its objects and hold privileges there.
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(str(dbname))))
        for name in created:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def refused(conn: psycopg.Connection[Any], statements: list[str]) -> list[str]:
    """The statements PostgreSQL did NOT refuse for lack of privilege (each with what
    happened); an empty list means every one was refused."""
    wrong = []
    for statement in statements:
        try:
            conn.execute(statement.encode())
        except psycopg.Error as exc:
            if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
                wrong.append(f"{statement}: failed otherwise ({exc.sqlstate} {exc})")
        else:
            wrong.append(f"{statement}: allowed")
    return wrong


def qualified(statement: str) -> str:
    return statement.replace("{schema}", SCHEMA)


# -- owner ---------------------------------------------------------------------------------


def test_owner_owns_everything_in_the_schema_when_it_has_migrated(roles: Roles) -> None:
    with roles.connect("owner") as c:
        owners = c.execute("""
            select distinct r.rolname from pg_class k join pg_roles r on r.oid = k.relowner
            where k.relnamespace = %(s)s::regnamespace
            union
            select distinct r.rolname from pg_proc p join pg_roles r on r.oid = p.proowner
            where p.pronamespace = %(s)s::regnamespace
            union
            select r.rolname from pg_namespace n join pg_roles r on r.oid = n.nspowner
            where n.nspname = %(s)s::text""", {"s": SCHEMA}).fetchall()
        assert owners == [(roles.names["owner"],)]
        assert migrate(c, SCHEMA) == []  # a later migration step: nothing pending
        # roles.sql is idempotent: run again after every migration
        c.execute(render_psql(ROLES_SQL.read_text(), roles.variables).encode())


@pytest.mark.skipif(PSQL is None, reason="psql is not installed (apt-get install -y "
                                         "postgresql-client)")
def test_roles_sql_runs_under_psql_when_given_the_documented_variables(roles: Roles) -> None:
    assert PSQL is not None
    variables = [arg for name, value in roles.variables.items()
                 for arg in ("-v", f"{name}={value}")]
    result = subprocess.run([PSQL, roles.url("owner"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                             *variables, "-f", str(ROLES_SQL)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_enqueue_functions_run_as_their_owner_when_inspected(roles: Roles) -> None:
    with roles.connect("owner") as c:
        rows = c.execute("""
            select p.proname, p.prosecdef, p.proconfig from pg_proc p
            where p.pronamespace = %s::regnamespace order by p.proname""",
                         [SCHEMA]).fetchall()
        public = c.execute("""
            select p.proname from pg_proc p
            where p.pronamespace = %s::regnamespace
              and has_function_privilege('public', p.oid, 'execute')""", [SCHEMA]).fetchall()
    definers = {name: config for name, secdef, config in rows if secdef}
    assert set(definers) == {"add_job", "add_jobs", "add_keyed_job", "insert_job",
                             "insert_jobs"}
    for config in definers.values():
        assert config == ["search_path=pg_catalog, pg_temp"]
    # Nothing is executable by PUBLIC, or any role with USAGE could run them as the owner.
    assert public == []


# -- worker --------------------------------------------------------------------------------


def test_worker_runs_every_engine_statement_when_granted_the_worker_role(roles: Roles) -> None:
    q: Queries = for_schema(SCHEMA)
    now = dt.datetime.now(dt.UTC)
    with roles.connect("worker") as c:
        c.execute(sql.SQL("listen {}").format(sql.Identifier(channel_name(SCHEMA))))
        # enqueue, as handlers (ctx.add_job) and the cron process do
        assert queries.job_insert_many.run(c, q, specs=Jsonb(
            [{"task": "t"}, {"task": "t"}, {"task": "t"}, {"task": "t", "queue_name": "q"}]))
        keyed = queries.job_insert_keyed_many.run(c, q, specs=Jsonb(
            [{"ord": 1, "task": "t", "job_key": "k", "job_key_mode": "replace"}]))
        assert [r[1] for r in keyed] == ["inserted"]
        engine = queries.engine_register.run(
            c, q, hostname="h", pid=os.getpid(), version="test",
            lease_timeout=30.0, processes=1, concurrency=4)
        claimed = queries.job_claim.run(c, q, engine=engine, limit=10, serial_limit=10,
                                        max_bytes=1 << 40)
        assert len(claimed) == 5
        (a, la), (b, lb), (r1, lr1) = [(row[0], row[1]) for row in claimed[:3]]
        done = queries.job_complete_many.run(c, q, engine=engine, ids=[a], leases=[la],
                                             history=True)
        assert done == [(a, la)]
        failed = queries.job_fail_many.run(
            c, q, engine=engine, ids=[b], leases=[lb], errors=["boom"], delays=[0.0],
            finals=["no_handler"], payloads=[None], attempts=[None], tracebacks=[None])
        assert [r[:5] for r in failed] == [(b, "exhausted", lb, 1, 25)]
        released = queries.job_release_many.run(c, q, engine=engine, ids=[r1], leases=[lr1])
        assert released == [r1]
        # cancel: a waiting job (r1), a claimed one, an unknown id
        (d, ld) = claimed[3][:2]
        asked = queries.job_cancel_request_many.run(c, q, ids=[r1, d, 2**40], reason="why",
                                                    cancelled_by=None)
        assert [(r.id, r.result) for r in asked] == [
            (r1, "cancelled"), (d, "requested"), (2**40, "not_found")]
        beat = queries.engine_heartbeat.run(c, q, engine=engine, in_flight=2, stopping=False,
                                            running=[])
        assert beat is not None
        assert (beat.id, beat.cancel_ids, beat.cancel_leases, beat.strays) == (
            engine, [d], [ld], False)
        cancelled = queries.job_cancel_many.run(c, q, engine=engine, ids=[d], leases=[ld],
                                                errors=[None], tracebacks=[None])
        assert [(r.id, r.reason) for r in cancelled] == [(d, "why")]
        assert queries.job_cancel_sweep.run(c, q) == 0
        assert queries.job_stats.run(c, q, engine=engine, cap=10000, max_groups=100)
        assert queries.job_rescue.run(c, q, engine=engine, restart_grace=0.0, orphans=True)
        pruned = queries.job_history_prune.run(c, q, lock_class=1, schema=SCHEMA,
                                               retention=0.0, batch=100)
        assert pruned == (True, 4)
        known = queries.cron_known.run(c, q, identifiers=["nightly"], now=now)
        assert [r.identifier for r in known] == ["nightly"]
        fired = queries.cron_fire.run(c, q, ticks=Jsonb([{
            "identifier": "nightly", "ts": (now + dt.timedelta(minutes=1)).isoformat(),
            "task": "t", "payload": {}, "job_key": "cron:nightly"}]))
        assert [(r.identifier, r.claimed, r.outcome) for r in fired] == [
            ("nightly", True, "inserted")]
        # the administration functions, and the applied migrations (read only)
        c.execute(qualified("select {schema}.reschedule_jobs(array[%s]::bigint[], now())"),
                  [r1])
        c.execute(qualified("select {schema}.complete_jobs(array[%s]::bigint[])"), [r1])
        assert queries.migration_applied.run(c, q)
        queries.engine_deregister.run(c, q, engine=engine)
        # the KEDA scaler's query (deploy/k8s/keda.yaml) runs as the worker role
        row = c.execute(keda_query().encode()).fetchone()
        assert row is not None and row[0] >= 0


def test_worker_is_refused_ddl_when_it_tries(roles: Roles) -> None:
    with roles.connect("worker") as c:
        assert refused(c, [qualified(s) for s in [
            "create table {schema}.extra (a int)",
            "alter table {schema}.job add column extra int",
            "drop table {schema}.job_history",
            "create index on {schema}.job (task_identifier)",
            "create function {schema}.f() returns int language sql as 'select 1'",
            "alter function {schema}.add_jobs(jsonb) security invoker",
            "create schema extra",
            "truncate {schema}.job",
            "insert into {schema}.migration (id, name) values (9999, 'x')",
            "delete from {schema}.migration",
        ]]) == []


def test_engine_runs_jobs_as_the_worker_role_when_started_with_no_migrate(
        roles: Roles, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "roles_tasks.py").write_text(
        "def ok(ctx):\n    return None\n\n\n"
        "def bad(ctx):\n    raise ValueError('no')\n\n\n"
        "TASKS = {'ok': ok, 'bad': bad}\n")
    producer = skivi.create_system({"database": {"connection_string": roles.url("producer")}})
    try:
        skivi.add_jobs(producer, [
            *({"task": "ok", "payload": {"n": i}} for i in range(20)),
            {"task": "ok", "queue_name": "serial"},
            {"task": "ok", "job_key": "only-once"},
            {"task": "bad", "max_attempts": 1}])
    finally:
        producer.stop()
    base = engine_argv(roles.url("worker"), tasks, processes=1, concurrency=4,
                       log_level="WARNING")
    # Once the owner has migrated, the worker role starts even without --no-migrate:
    # migrate() looks read-only first and needs no DDL right when nothing is pending.
    first = run_engine([*base, "--once"])
    assert first.returncode == 0, first.stderr
    run = run_engine([*base, "--once", "--no-migrate"])
    assert run.returncode == 0, run.stderr
    with roles.connect("owner") as c:
        assert c.execute(qualified("select count(*) from {schema}.job_live")).fetchone() == (0,)
        history = c.execute(qualified(
            "select task_identifier, outcome from {schema}.job_history")).fetchall()
        assert history == [("bad", "exhausted")]
    # `skivi migrate --check` (the Kubernetes init container, systemd's ExecStartPre) works
    # as the worker role: it only reads the migration table.
    check = subprocess.run([sys.executable, "-m", "skivi", "migrate", "--check",
                            "--database-url", roles.url("worker")], env=child_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# -- producer ------------------------------------------------------------------------------


def test_producer_enqueues_from_sql_when_granted_the_producer_role(roles: Roles) -> None:
    with roles.connect("producer") as c:
        def outcome(statement: str) -> list[Any]:
            return [r[0] for r in c.execute(qualified(statement).encode()).fetchall()]

        assert outcome("select outcome from {schema}.add_job('a', '{\"x\": 1}'::jsonb)") == \
            ["inserted"]
        assert outcome("select outcome from {schema}.add_job('a', queue_name => 'mail', "
                       "run_at => now() + interval '1 hour', priority => 3)") == ["inserted"]
        for mode, expected in [("replace", "inserted"), ("replace", "updated"),
                               ("preserve_run_at", "updated"), ("unsafe_dedupe",
                                                                "deduplicated")]:
            assert outcome(f"select outcome from {{schema}}.add_job('a', job_key => 'k', "
                           f"job_key_mode => '{mode}')") == [expected], mode
        assert outcome("select outcome from {schema}.add_jobs('[{\"task\": \"a\"}, "
                       "{\"task\": \"b\", \"job_key\": \"k2\"}]'::jsonb)") == \
            ["inserted", "inserted"]
    with roles.connect("owner") as c:
        assert c.execute(qualified("select count(*) from {schema}.job_live")).fetchone() == (5,)


def test_producer_enqueues_from_python_when_granted_the_producer_role(roles: Roles) -> None:
    system = skivi.create_system({"database": {"connection_string": roles.url("producer")}})
    try:
        jobs = skivi.add_jobs(system, [
            {"task": "a", "payload": {"n": 1}},
            {"task": "a", "queue_name": "serial", "priority": 2},
            {"task": "a", "job_key": "k"},
            {"task": "a", "job_key": "k", "job_key_mode": "preserve_run_at"}])
        assert [j.outcome for j in jobs] == ["inserted", "inserted", "inserted", "updated"]
        assert skivi.add_job(system, "b", [1], job_key="k2").outcome == "inserted"
        with roles.connect("producer") as conn, conn.transaction():
            job = skivi.add_job(system, "c", {"in": "my transaction"}, conn=conn)
            assert job.payload == {"in": "my transaction"}
    finally:
        system.stop()
    with roles.connect("owner") as c:
        assert c.execute(qualified("select count(*) from {schema}.job_live")).fetchone() == (5,)


def test_producer_is_refused_everything_but_enqueueing_when_it_tries(roles: Roles) -> None:
    q = for_schema(SCHEMA)
    with roles.connect("producer") as c:
        assert refused(c, [qualified(s) for s in [
            "select * from {schema}.job_live",
            "select payload from {schema}.job_live",
            "select * from {schema}.job_queue",
            "select * from {schema}.job_history",
            "select * from {schema}.engine",
            "update {schema}.job set priority = 1",
            "update {schema}.job set run_at = now() where id = 1",
            "delete from {schema}.job",
            "truncate {schema}.job",
            "insert into {schema}.engine (hostname, pid, version, lease_timeout, processes, "
            "concurrency) values ('h', 1, 'v', 30, 1, 1)",
            "create table {schema}.extra (a int)",
            "create function {schema}.f() returns int language sql as 'select 1'",
            "alter table {schema}.job add column extra int",
            "drop table {schema}.job",
            "select {schema}.complete_jobs(array[1]::bigint[])",
            "select * from {schema}.cancel_jobs(array[1]::bigint[])",
            "select * from {schema}.job_cancel",
            "select {schema}.remove_job('k')",
            "select {schema}.permanently_fail_jobs(array[1]::bigint[])",
            "select {schema}.reschedule_jobs(array[1]::bigint[], now())",
            "select {schema}.retry_jobs(array[1]::bigint[])",
        ]]) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            queries.job_claim.run(c, q, engine=1, limit=10, serial_limit=10,
                                  max_bytes=1 << 40)


def test_a_role_without_grants_cannot_use_the_schema_when_it_tries(roles: Roles) -> None:
    with roles.connect("outsider") as c:
        assert refused(c, [qualified(s) for s in [
            "select {schema}.add_job('a')",
            "select {schema}.add_jobs('[{\"task\": \"a\"}]'::jsonb)",
            "select count(*) from {schema}.job_live",
            "insert into {schema}.job (task_identifier) values ('a')",
        ]]) == []


# -- hostile producers (and workers) through the enqueue functions ---------------------------


def _sqlstate(conn: psycopg.Connection[Any], statement: str, *params: Any) -> str | None:
    """The SQLSTATE a statement fails with (None if it succeeds)."""
    try:
        conn.execute(qualified(statement).encode(), params or None)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def _jobs(roles: Roles) -> list[tuple[Any, ...]]:
    with roles.connect("owner") as c:
        return c.execute(qualified(
            "select id, task_identifier, queue_name, payload, run_at, key, attempts, "
            "last_error, locked_by from {schema}.job_live order by id")).fetchall()


def _queues(roles: Roles) -> list[tuple[Any, ...]]:
    with roles.connect("owner") as c:
        return c.execute(qualified("select * from {schema}.job_queue order by 1")).fetchall()


def test_a_producer_cannot_write_the_tables_it_used_to_insert_into(roles: Roles) -> None:
    with roles.connect("owner") as c:
        c.execute(qualified("select {schema}.add_job('t', '{\"secret\": 1}', queue_name => 'q', "
                            "job_key => 'invoice:42')"))
    before = (_jobs(roles), _queues(roles))
    with roles.connect("producer") as c:
        assert refused(c, [qualified(s) for s in [
            # a serial queue blocked for ever by a lock no engine holds
            "insert into {schema}.job_queue (queue_name, job_id, locked_by, locked_at) "
            "values ('victim', 1, 999, now())",
            # a cron entry silenced by a job squatting its key, never runnable
            "insert into {schema}.job (task_identifier, key, run_at) "
            "values ('t', 'cron:nightly', 'infinity')",
            # a forged claim by a dead engine, a forged error, a payload past any limit
            "insert into {schema}.job (task_identifier, locked_by, locked_at, last_error) "
            "values ('t', 999, now(), 'forged')",
            "insert into {schema}.job (task_identifier, payload) "
            "values ('t', jsonb_build_object('x', repeat('a', 2000000)))",
            "select id, run_at from {schema}.job_live",
            "select nextval('{schema}.job_id_seq')",
            "select {schema}.add_keyed_job('t', '{}', null, now(), 25, 0::smallint, null, "
            "'invoice:42', 'replace')",
            "select {schema}.check_specs('[]')",
        ]]) == []
    assert (_jobs(roles), _queues(roles)) == before


@pytest.mark.parametrize("kind", ["producer", "worker"])
def test_an_enqueue_never_returns_a_payload_the_caller_did_not_write(
        roles: Roles, kind: str) -> None:
    with roles.connect("owner") as c:
        c.execute(qualified("select {schema}.add_job('t', '{\"card\": \"4111\"}', "
                            "job_key => 'invoice:42')"))
        c.execute(qualified("select {schema}.add_job('t', '[\"a\", \"b\"]', "
                            "job_key => 'batch:1')"))
        c.execute(qualified("update {schema}.job set last_error = 'card 4111 declined', "
                            "attempts = 1 where key = 'invoice:42'"))
    before = _jobs(roles)
    with roles.connect(kind) as c:
        row = c.execute(qualified(
            "select outcome, payload, last_error from {schema}.add_job('x', '{}'::jsonb, "
            "job_key => 'invoice:42', job_key_mode => 'unsafe_dedupe')")).fetchone()
        assert row == ("deduplicated", None, None)
        row = c.execute(qualified(
            "select outcome, payload from {schema}.add_job('t', '[\"c\"]'::jsonb, "
            "job_key => 'batch:1')")).fetchone()
        assert row == ("updated", None)  # the stored array is ["a", "b", "c"]: not all ours
    after = _jobs(roles)
    assert after[0] == before[0]  # the deduplicated job is untouched
    assert after[1][3] == ["a", "b", "c"]
    system = skivi.create_system({"database": {"connection_string": roles.url(kind)}})
    try:
        job = skivi.add_job(system, "x", {}, job_key="invoice:42", job_key_mode="unsafe_dedupe")
        assert job.outcome is skivi.EnqueueOutcome.DEDUPLICATED
        assert job.payload is None and job.last_error is None
        mine = skivi.add_job(system, "x", {"mine": True}, job_key="fresh")
        assert mine.payload == {"mine": True}
        replaced = skivi.add_job(system, "x", {"mine": 2}, job_key="fresh")
        assert replaced.outcome is skivi.EnqueueOutcome.UPDATED
        assert replaced.payload == {"mine": 2}  # what the caller wrote comes back
    finally:
        system.stop()


@pytest.mark.parametrize("kind", ["producer", "worker"])
def test_the_enqueue_functions_refuse_what_no_job_may_hold(roles: Roles, kind: str) -> None:
    with roles.connect("owner") as c:
        c.execute(qualified("update {schema}.limits set max_payload_bytes = 100000"))
    before = (_jobs(roles), _queues(roles))
    with roles.connect(kind) as c:
        bad = [
            # the cron scheduler's keys: a squatting job would silence the entry
            "select {schema}.add_job('t', job_key => 'cron:nightly', run_at => now() + "
            "interval '100 years', job_key_mode => 'unsafe_dedupe')",
            "select {schema}.add_job('t', run_at => 'infinity')",
            "select {schema}.add_job('t', run_at => '-infinity')",
            "select {schema}.add_jobs('[{\"task\": \"t\", \"run_at\": \"infinity\"}]')",
            "select {schema}.add_job('t', jsonb_build_object('x', repeat('a', 200000)))",
            "select {schema}.add_job('t', flags => array[null]::text[])",
            "select {schema}.add_job('t', flags => array['']::text[])",
            "select {schema}.insert_jobs('[{\"task\": \"t\", \"run_at\": \"-infinity\"}]')",
            "select {schema}.insert_jobs(jsonb_build_array(jsonb_build_object('task', 't', "
            "'payload', jsonb_build_object('x', repeat('a', 200000)))))",
            "select {schema}.insert_jobs('[{\"task\": \"t\", \"queue_name\": \"q\", "
            "\"flags\": [null]}]')",
            "select {schema}.insert_job(null, null, null, null, null, null, null)",
            "select {schema}.insert_job('t', null, null, 'infinity', null, null, null)",
            "select {schema}.insert_job('t', jsonb_build_object('x', repeat('a', 200000)), "
            "null, null, null, null, null)",
            "select {schema}.insert_job('t', null, 'q', null, null, null, array[null]::text[])",
            "select {schema}.insert_job('t', null, null, null, null, null, array['']::text[])",
        ]
        assert {s: _sqlstate(c, s) for s in bad} == dict.fromkeys(bad, "22023")
        # the message names the spec and the problem
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"spec 2 has a payload "
                           r"of \d+ bytes, over limits.max_payload_bytes \(100000\)"):
            c.execute(qualified("select {schema}.add_jobs(jsonb_build_array("
                                "jsonb_build_object('task', 't'), jsonb_build_object('task', "
                                "'t', 'payload', jsonb_build_object('x', "
                                "repeat('a', 200000)))))"))
    # Appending to an array payload cannot grow past the limit either.
    with roles.connect("owner") as c:
        c.execute(qualified("select {schema}.add_job('t', jsonb_build_array(repeat('a', 60000)), "
                            "job_key => 'grow')"))
    grown = _jobs(roles)
    with roles.connect(kind) as c:
        assert _sqlstate(c, "select {schema}.add_job('t', jsonb_build_array(repeat('b', 60000)),"
                            " job_key => 'grow')") == "22023"
    assert _jobs(roles) == grown
    assert grown[:-1] == before[0] and _queues(roles) == before[1]


def test_a_producer_cannot_make_another_roles_running_job_unretryable(roles: Roles) -> None:
    q = for_schema(SCHEMA)
    with roles.connect("worker") as c:  # e.g. a handler's ctx.add_job, as the engine's role
        theirs = c.execute(qualified("select id from {schema}.add_job('t', job_key => 'k1')")
                           ).fetchone()
    with roles.connect("producer") as c:
        mine = c.execute(qualified("select id from {schema}.add_job('t', job_key => 'k2')")
                         ).fetchone()
    assert theirs is not None and mine is not None
    with roles.connect("worker") as c:
        engine = queries.engine_register.run(
            c, q, hostname="h", pid=1, version="v", lease_timeout=30.0,
            processes=1, concurrency=1)
        claimed = queries.job_claim.run(c, q, engine=engine, limit=10, serial_limit=10,
                                        max_bytes=1 << 40)
        assert sorted(r[0] for r in claimed) == sorted([theirs[0], mine[0]])
    with roles.connect("producer") as c:
        for key in ("k1", "k2"):
            assert c.execute(qualified("select outcome from {schema}.add_job('t', job_key => "
                                       "%s)"), [key]).fetchone() == ("inserted",)
    with roles.connect("owner") as c:
        rows = {r[0]: r[1:] for r in c.execute(qualified(
            "select id, key, attempts, max_attempts from {schema}.job_live where id = any(%s)"),
            [[theirs[0], mine[0]]]).fetchall()}
    # Both lost their key to the new jobs. The producer's own job gave up its retries
    # (Graphile Worker's rule: superseded); the worker role's job kept them.
    assert rows[mine[0]] == (None, 25, 25)
    assert rows[theirs[0]] == (None, 1, 25)
