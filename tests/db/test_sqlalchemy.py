"""``conn=`` given a SQLAlchemy 2 Session, Connection, AsyncSession or AsyncConnection: the
job is written in that object's current transaction, against the real PostgreSQL.

Each test makes an ORM row and a job in one transaction and reads the outcome from another
connection: a rollback leaves neither, a commit both, a rolled-back savepoint removes the
job and keeps what came before it. Other drivers are refused naming the driver."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, String, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import skivi
from tests.support.db import sqlalchemy_url
from tests.support.engines import REPO, child_env
from tests.support.rows import fetch


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    e = create_engine(sqlalchemy_url(database))
    Base.metadata.create_all(e)
    try:
        yield e
    finally:
        e.dispose()


def notes(url: str) -> list[str]:
    return [r[0] for r in fetch(url, "select body from public.note order by id")]


def jobs(url: str) -> list[tuple[str, Any]]:
    return [(r[0], r[1]) for r in fetch(
        url, "select task_identifier, payload from skivi.job_live order by id")]


def test_session_writes_the_job_with_the_row_when_it_commits(
        engine: Engine, system: skivi.System, database: str) -> None:
    with Session(engine) as session:
        session.add(Note(body="hello"))
        session.flush()
        job = skivi.add_job(system, "mail", {"to": "a@b.c"}, conn=session)
        # Not committed on the caller's behalf: another connection sees nothing yet.
        assert jobs(database) == [] and notes(database) == []
        session.commit()
    assert notes(database) == ["hello"]
    assert jobs(database) == [("mail", {"to": "a@b.c"})]
    assert job.id > 0


def test_session_leaves_neither_row_nor_job_when_it_rolls_back(
        engine: Engine, system: skivi.System, database: str) -> None:
    with Session(engine) as session:
        session.add(Note(body="hello"))
        session.flush()
        skivi.add_job(system, "mail", {"to": "a@b.c"}, conn=session)
        session.rollback()
    assert notes(database) == [] and jobs(database) == []


def test_session_closed_without_commit_leaves_nothing_when_jobs_were_enqueued_first(
        engine: Engine, system: skivi.System, database: str) -> None:
    # Keyed and unkeyed specs are two statements, the first ones of the session's
    # transaction: they must not run in a transaction block that commits by itself.
    with Session(engine) as session:
        skivi.add_jobs(system, [{"task": "a"}, {"task": "b", "job_key": "k"}], conn=session)
    assert jobs(database) == []
    with Session(engine) as session:
        skivi.add_jobs(system, [{"task": "a"}, {"task": "b", "job_key": "k"}], conn=session)
        session.commit()
    assert sorted(t for t, _ in jobs(database)) == ["a", "b"]


def test_savepoint_rolled_back_removes_the_job_and_keeps_the_outer_row(
        engine: Engine, system: skivi.System, database: str) -> None:
    with Session(engine) as session:
        session.add(Note(body="outer"))
        session.flush()
        skivi.add_job(system, "kept")
        skivi.add_job(system, "outer", conn=session)
        nested = session.begin_nested()
        session.add(Note(body="inner"))
        session.flush()
        skivi.add_job(system, "inner", conn=session)
        nested.rollback()
        session.commit()
    assert notes(database) == ["outer"]
    assert sorted(t for t, _ in jobs(database)) == ["kept", "outer"]


def test_connection_commits_and_rolls_back_the_job_when_asked(
        engine: Engine, system: skivi.System, database: str) -> None:
    with engine.connect() as conn:
        skivi.add_job(system, "gone", conn=conn)
        conn.rollback()
        skivi.add_job(system, "first", conn=conn)
        conn.commit()
        skivi.add_job(system, "closed", conn=conn)  # closed without commit: rolled back
    with engine.begin() as conn:
        skivi.add_job(system, "begun", conn=conn)
    assert [t for t, _ in jobs(database)] == ["first", "begun"]


def test_async_session_writes_the_job_with_the_row_only_when_it_commits(
        system: skivi.System, database: str) -> None:
    async def scenario() -> None:
        e = create_async_engine(sqlalchemy_url(database))
        try:
            async with e.begin() as c:
                await c.run_sync(Base.metadata.create_all)
            async with AsyncSession(e) as session:
                session.add(Note(body="rolled back"))
                await session.flush()
                await skivi.add_job_async(system, "gone", conn=session)
                await session.rollback()
            async with AsyncSession(e) as session:
                session.add(Note(body="committed"))
                await session.flush()
                await skivi.add_jobs_async(system, [{"task": "a"}, {"task": "b",
                                                                    "job_key": "k"}],
                                           conn=session)
                assert jobs(database) == []
                nested = await session.begin_nested()
                await skivi.add_job_async(system, "inner", conn=session)
                await nested.rollback()
                await session.commit()
        finally:
            await e.dispose()

    asyncio.run(scenario())
    assert notes(database) == ["committed"]
    assert sorted(t for t, _ in jobs(database)) == ["a", "b"]


def test_async_connection_writes_in_its_transaction_when_given(
        system: skivi.System, database: str) -> None:
    async def scenario() -> None:
        e = create_async_engine(sqlalchemy_url(database))
        try:
            async with e.connect() as conn:
                await skivi.add_job_async(system, "gone", conn=conn)
                await conn.rollback()
                await skivi.add_job_async(system, "kept", conn=conn)
                assert jobs(database) == []
                await conn.commit()
        finally:
            await e.dispose()

    asyncio.run(scenario())
    assert [t for t, _ in jobs(database)] == ["kept"]


def test_other_drivers_are_refused_naming_the_driver_when_given(
        system: skivi.System, database: str) -> None:
    e = create_engine(sqlalchemy_url(database, "psycopg2"))
    try:
        with Session(e) as session, pytest.raises(skivi.SkiviError) as info:
            skivi.add_job(system, "x", conn=session)
        assert "psycopg2" in str(info.value) and "postgresql+psycopg://" in str(info.value)
    finally:
        e.dispose()

    async def scenario() -> str:
        ae = create_async_engine(sqlalchemy_url(database, "asyncpg"))
        try:
            async with AsyncSession(ae) as session:
                with pytest.raises(skivi.SkiviError) as info:
                    await skivi.add_job_async(system, "x", conn=session)
                return str(info.value)
        finally:
            await ae.dispose()

    message = asyncio.run(scenario())
    assert "asyncpg" in message and "postgresql+psycopg://" in message
    assert jobs(database) == []


def test_sync_and_async_objects_are_refused_by_the_other_call_naming_the_right_one(
        engine: Engine, system: skivi.System, database: str) -> None:
    with Session(engine) as session:
        with pytest.raises(skivi.SkiviError, match="use add_job / add_jobs"):
            asyncio.run(skivi.add_job_async(system, "x", conn=session))  # type: ignore[arg-type]

    async def scenario() -> None:
        ae = create_async_engine(sqlalchemy_url(database))
        try:
            async with AsyncSession(ae) as session:
                with pytest.raises(skivi.SkiviError, match="use add_job_async"):
                    skivi.add_job(system, "x", conn=session)  # type: ignore[arg-type]
        finally:
            await ae.dispose()

    asyncio.run(scenario())
    with pytest.raises(skivi.SkiviError, match="give a psycopg"):
        skivi.add_job(system, "x", conn=object())  # type: ignore[arg-type]
    assert jobs(database) == []


def test_sqlalchemy_is_never_imported_by_skivi_when_enqueueing_with_psycopg(
        database: str) -> None:
    code = (
        "import sys, psycopg, skivi\n"
        f"s = skivi.create_system({{'database': {{'connection_string': {database!r}}}}})\n"
        f"with psycopg.connect({database!r}) as c:\n"
        "    skivi.add_job(s, 'x', conn=c)\n"
        "    try:\n"
        "        skivi.add_job(s, 'x', conn=object())\n"
        "    except skivi.SkiviError:\n"
        "        pass\n"
        "s.stop()\n"
        "print('sqlalchemy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr
