"""Migrations against a real PostgreSQL: applied once, exactly once under a crowd of starters,
refused when the database is newer than the code, isolated per schema, and checked against
the schema snapshot (``tests/db/schema_snapshot.sql``) so a migration's effect shows up in
review as a diff."""

from __future__ import annotations

import difflib
import multiprocessing as mp
import multiprocessing.queues
import multiprocessing.synchronize
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import skivi
from skivi.db import pool as dbpool
from skivi.db.migrate import known_migrations, migrate, pending_migrations
from tests.support.db import SCHEMA, MakeDatabase, connect

SNAPSHOT = Path(__file__).with_name("schema_snapshot.sql")
UPDATE_SNAPSHOT_ENV = "SKIVI_UPDATE_SNAPSHOT"
CONCURRENT_MIGRATORS = 20

ALL = [m.name for m in known_migrations()]


def migration_rows(c: psycopg.Connection[Any], schema: str = SCHEMA) -> list[tuple[int, str]]:
    query = sql.SQL("select id, name from {}.migration order by id").format(
        sql.Identifier(schema))
    return [(int(r[0]), str(r[1])) for r in c.execute(query).fetchall()]


def all_rows() -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in known_migrations()]


# Branch `limits` numbers its migration 0008 while 0007 lands from another branch (cancel):
# until both are merged there is a gap. The mark lifts itself once a 0007 exists.
@pytest.mark.xfail(7 not in {m.version for m in known_migrations()}, strict=True,
                   reason="0007 comes from the cancel branch; 0008 is the limits branch's")
def test_known_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in known_migrations()] == list(range(1, len(ALL) + 1))


def test_fresh_database_gets_every_migration_once(make_database: MakeDatabase) -> None:
    with connect(make_database(template=None)) as c:
        assert [m.name for m in pending_migrations(c, SCHEMA)] == ALL

        assert [m.name for m in migrate(c, SCHEMA)] == ALL
        assert migrate(c, SCHEMA) == []
        assert pending_migrations(c, SCHEMA) == []
        assert migration_rows(c) == all_rows()


Result = tuple[int, list[str] | None, str | None]


def _migrate_in_child(url: str, barrier: multiprocessing.synchronize.Barrier,
                      results: multiprocessing.queues.Queue[Result], index: int) -> None:
    try:
        with dbpool.connect(url, application_name=f"skivi-test-migrator-{index}") as c:
            barrier.wait(timeout=60)  # connected, all at once: now race
            applied = migrate(c, SCHEMA)
        results.put((index, [m.name for m in applied], None))
    except BaseException as exc:
        results.put((index, None, repr(exc)))
        raise


def test_concurrent_starters_migrate_exactly_once(make_database: MakeDatabase) -> None:
    url = make_database(template=None)
    # forkserver: one clean process imports this module once, then forks each migrator from
    # it (fast, and never forks this process with its threads and connections).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier = ctx.Barrier(CONCURRENT_MIGRATORS)
    results: multiprocessing.queues.Queue[Result] = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(url, barrier, results, i))
             for i in range(CONCURRENT_MIGRATORS)]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [err for _, _, err in outcomes if err] == []
    assert [p.exitcode for p in procs] == [0] * CONCURRENT_MIGRATORS
    # Each migration is its own transaction holding the lock, so several migrators may
    # share the work; every migration is applied by exactly one of them.
    applied = sorted(name for _, names, _ in outcomes for name in names or [])
    assert applied == ALL, f"expected every one of {ALL} applied exactly once: {outcomes}"
    with connect(url) as c:
        assert migration_rows(c) == all_rows()


def test_database_newer_than_the_code_is_refused(database: str) -> None:
    with connect(database) as c:
        c.execute("insert into skivi.migration (id, name) values (9999, '9999_from_the_future')")
        with pytest.raises(skivi.SchemaTooNew, match="9999_from_the_future"):
            migrate(c, SCHEMA)
        with pytest.raises(skivi.SchemaTooNew, match="9999_from_the_future"):
            pending_migrations(c, SCHEMA)
        assert migration_rows(c) == [*all_rows(), (9999, "9999_from_the_future")]


def test_two_schemas_in_one_database_are_independent(database: str) -> None:
    with connect(database) as c, connect(database) as listener:
        assert [m.name for m in migrate(c, "other")] == ALL
        assert migration_rows(c, "other") == migration_rows(c, SCHEMA) == all_rows()

        listener.execute('listen "skivi:jobs"')
        listener.execute('listen "other:jobs"')
        c.execute("select * from other.add_job('t')")
        c.execute("select * from skivi.add_job('marker')")
        # Notifications arrive in commit order: the marker's comes second, and only then.
        channels = [n.channel for n in listener.notifies(timeout=10, stop_after=2)]
        assert channels == ["other:jobs", "skivi:jobs"]

        def tasks(schema: str) -> list[str]:
            query = sql.SQL("select task_identifier from {}.job order by id").format(
                sql.Identifier(schema))
            return [r[0] for r in c.execute(query).fetchall()]

        assert tasks("other") == ["t"]
        assert tasks(SCHEMA) == ["marker"]


def schema_objects(c: psycopg.Connection[Any], schema: str) -> list[str]:
    """Every relation and function in ``schema``, sorted: what a refused migration must not
    have changed. Empty when the schema does not exist."""
    rows = c.execute(
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s union all "
        "select p.proname::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = %s order by 1", [schema, schema]).fetchall()
    return [r[0] for r in rows]


def schema_exists(c: psycopg.Connection[Any], schema: str) -> bool:
    row = c.execute("select exists (select 1 from pg_namespace where nspname = %s)",
                    [schema]).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("schema", ["information_schema", "pg_catalog", "pg_jobs"])
def test_postgresqls_own_schemas_are_refused_before_anything_is_created(
        make_database: MakeDatabase, schema: str) -> None:
    with connect(make_database(template=None)) as c:
        before = schema_objects(c, schema)
        with pytest.raises(skivi.MigrationError, match=f"'{schema}' belongs to PostgreSQL"):
            migrate(c, schema)
        assert schema_objects(c, schema) == before
        assert "migration" not in before


def test_a_schema_holding_other_objects_is_refused_before_anything_is_created(
        make_database: MakeDatabase) -> None:
    with connect(make_database(template=None)) as c:
        c.execute("create table public.job (x int)")
        c.execute("create function public.app_fn() returns int language sql as 'select 1'")
        with pytest.raises(skivi.MigrationError,
                           match=r"schema 'public' already holds 2 object\(s\).*app_fn\(\), "
                                 r"job.*nothing was created"):
            migrate(c, "public")
        assert schema_objects(c, "public") == ["app_fn", "job"]


def test_an_existing_empty_schema_is_accepted_and_then_is_skivis(
        make_database: MakeDatabase) -> None:
    with connect(make_database(template=None)) as c:
        c.execute("create schema jobs")
        assert [m.name for m in migrate(c, "jobs")] == ALL
        assert migrate(c, "jobs") == []  # now Skivi's, with its migration table
        # A fresh database's public schema is empty (PostgreSQL 15+): accepted too.
        assert [m.name for m in migrate(c, "public")] == ALL


def test_a_failed_first_migration_leaves_nothing_behind(make_database: MakeDatabase) -> None:
    url = make_database(template=None)
    with connect(url) as c:
        # An event trigger that refuses the job table: 0001 fails after the schema and the
        # migration table would have been created.
        c.execute("""
            create function refuse_job_table() returns event_trigger language plpgsql as $$
            begin
                if exists (select 1 from pg_event_trigger_ddl_commands()
                           where object_identity = 'fresh.job') then
                    raise exception 'no job table here';
                end if;
            end $$""")
        c.execute("create event trigger refuse_job_table on ddl_command_end "
                  "execute function refuse_job_table()")
        with pytest.raises(skivi.MigrationError,
                           match=r"0001_initial\.sql failed.*no job table here"):
            migrate(c, "fresh")
        assert not schema_exists(c, "fresh")
        c.execute("drop event trigger refuse_job_table")
        assert [m.name for m in migrate(c, "fresh")] == ALL


HOSTILE_SCHEMA = 'a"; drop table x; --'


def test_hostile_schema_name_is_refused_by_the_configuration(
        shared_database: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table public.x ()")
    with pytest.raises(skivi.ConfigError, match="schema_name"):
        skivi.create_system(
            {"database": {"connection_string": shared_database, "schema_name": HOSTILE_SCHEMA}})
    assert conn.execute("select to_regclass('public.x') is not null").fetchone() == (True,)


def test_hostile_schema_name_is_only_ever_an_identifier(database: str) -> None:
    # Below the configuration's check, the SQL layer quotes the name: it is a (strange)
    # schema name, never SQL.
    with connect(database) as c:
        c.execute("create table public.x ()")
        assert [m.name for m in migrate(c, HOSTILE_SCHEMA)] == ALL
        assert pending_migrations(c, HOSTILE_SCHEMA) == []
        assert migration_rows(c, HOSTILE_SCHEMA) == all_rows()
        assert c.execute("select to_regclass('public.x') is not null").fetchone() == (True,)


# --- schema snapshot --------------------------------------------------------------------------

SNAPSHOT_HEADER = f"""\
-- Schema snapshot: the catalog of a freshly migrated "{SCHEMA}" schema, as dumped by
-- tests/db/test_migrations.py (test_schema_matches_snapshot). Nothing runs this file; the
-- test compares it with the dump, so the effect of a migration shows up in review as a
-- diff here. Regenerate it with:
--     {UPDATE_SNAPSHOT_ENV}=1 ./run-tests tests/db/test_migrations.py -k snapshot
"""

_SEQUENCES = """
select c.relname, format_type(s.seqtypid, null), s.seqstart, s.seqmin, s.seqmax,
       s.seqincrement, s.seqcycle,
       (select t.relname || '.' || a.attname
          from pg_depend d
          join pg_class t on t.oid = d.refobjid
          join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
         where d.classid = 'pg_class'::regclass and d.objid = c.oid
           and d.deptype in ('a', 'i'))
from pg_sequence s
join pg_class c on c.oid = s.seqrelid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s
order by c.relname
"""

_TABLES = """
select c.relname, c.relkind, case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end,
       c.reloptions
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'f')
order by c.relname
"""

_COLUMNS = """
select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'f')
  and a.attnum > 0 and not a.attisdropped
order by c.relname, a.attnum
"""

# contype 'n' (NOT NULL as a constraint, PostgreSQL 17+) is left out: the columns show it.
_CONSTRAINTS = """
select c.relname, con.conname, pg_get_constraintdef(con.oid)
from pg_constraint con
join pg_class c on c.oid = con.conrelid
join pg_namespace n on n.oid = con.connamespace
where n.nspname = %(schema)s and con.contype <> 'n'
order by c.relname, con.conname
"""

_INDEXES = """
select indexdef from pg_indexes where schemaname = %(schema)s order by tablename, indexname
"""

_TRIGGERS = """
select pg_get_triggerdef(t.oid)
from pg_trigger t
join pg_class c on c.oid = t.tgrelid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s and not t.tgisinternal
order by c.relname, t.tgname
"""

_TYPES = """
select t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod),
       array(select e.enumlabel::text from pg_enum e where e.enumtypid = t.oid
             order by e.enumsortorder)
from pg_type t
join pg_namespace n on n.oid = t.typnamespace
left join pg_class c on c.oid = t.typrelid
where n.nspname = %(schema)s and t.typtype in ('e', 'd', 'c')
  and (c.relkind is null or c.relkind = 'c')
order by t.typname
"""

_FUNCTIONS = """
select p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       p.prokind, l.lanname, p.provolatile, p.prosecdef, md5(p.prosrc)
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_language l on l.oid = p.prolang
where n.nspname = %(schema)s
order by p.proname, pg_get_function_identity_arguments(p.oid)
"""

_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}


def dump_schema(c: psycopg.Connection[Any], schema: str) -> str:
    """The catalog of ``schema`` as text, in a stable order: sequences, types, tables with
    their columns and constraints, indexes, triggers and functions (with a digest of the
    body: the body itself is in the migration)."""
    params = {"schema": schema}
    q = schema
    out = [SNAPSHOT_HEADER]

    def rows(query: str) -> list[tuple[Any, ...]]:
        return c.execute(query, params).fetchall()

    out.append("-- sequences")
    for name, typ, start, lo, hi, inc, cycle, owner in rows(_SEQUENCES):
        owned = f"  -- owned by {owner}" if owner else ""
        out.append(f"create sequence {q}.{name} as {typ} start {start} minvalue {lo} "
                   f"maxvalue {hi} increment {inc}{'' if cycle else ' no'} cycle;{owned}")

    out.append("\n-- types")
    for name, kind, base, labels in rows(_TYPES):
        if kind == "e":
            out.append(f"create type {q}.{name} as enum ({', '.join(map(repr, labels))});")
        elif kind == "d":
            out.append(f"create domain {q}.{name} as {base};")
        else:
            out.append(f"create type {q}.{name} (composite);")

    columns: dict[str, list[str]] = {}
    for table, col, typ, notnull, default, identity, generated in rows(_COLUMNS):
        text = f"{col} {typ}"
        if notnull:
            text += " not null"
        if generated == "s":
            text += f" generated always as ({default}) stored"
        elif default is not None:
            text += f" default {default}"
        if identity:
            text += f" generated {'always' if identity == 'a' else 'by default'} as identity"
        columns.setdefault(table, []).append(text)
    constraints: dict[str, list[str]] = {}
    for table, name, definition in rows(_CONSTRAINTS):
        constraints.setdefault(table, []).append(f"constraint {name} {definition}")

    out.append("\n-- tables")
    for table, kind, view, options in rows(_TABLES):
        if kind in ("v", "m"):
            what = "view" if kind == "v" else "materialized view"
            out.append(f"create {what} {q}.{table} as\n{view.rstrip()}\n")
            continue
        body = ",\n".join(f"    {line}" for line in columns.get(table, []) +
                          constraints.get(table, []))
        storage = f" with ({', '.join(options)})" if options else ""
        out.append(f"create table {q}.{table} (\n{body}\n){storage};\n")

    out.append("-- indexes")
    out.extend(f"{indexdef};" for (indexdef,) in rows(_INDEXES))

    out.append("\n-- triggers")
    out.extend(f"{triggerdef};" for (triggerdef,) in rows(_TRIGGERS))

    out.append("\n-- functions (body: md5 of its source)")
    for name, args, result, kind, lang, volatility, secdef, digest in rows(_FUNCTIONS):
        returns = f" returns {result}" if result else ""
        security = " security definer" if secdef else ""
        out.append(f"-- {_KINDS.get(kind, kind)} {q}.{name}({args}){returns}\n"
                   f"--     language {lang} {_VOLATILITY[volatility]}{security}; body {digest}")

    text = "\n".join(out) + "\n"
    dbname = c.info.dbname
    return text.replace(dbname, "<database>") if dbname else text


def test_schema_matches_snapshot(make_database: MakeDatabase) -> None:
    with connect(make_database(template=None)) as c:
        migrate(c, SCHEMA)
        dump = dump_schema(c, SCHEMA)
    if os.environ.get(UPDATE_SNAPSHOT_ENV) == "1":
        SNAPSHOT.write_text(dump, encoding="utf-8")
        return
    expected = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    if dump != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), dump.splitlines(keepends=True),
            fromfile=str(SNAPSHOT.name), tofile="migrated schema"))
        pytest.fail(
            f"the migrated schema differs from {SNAPSHOT.name}. If the change is intended, "
            f"regenerate the file with {UPDATE_SNAPSHOT_ENV}=1 and commit it with the "
            f"migration.\n{diff}", pytrace=False)
