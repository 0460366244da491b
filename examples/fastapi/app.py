"""A FastAPI application that enqueues Skivi jobs in its own transactions.

    DATABASE_URL=postgresql://user@host/db uvicorn app:app          # the web application
    DATABASE_URL=postgresql://user@host/db python -m skivi.engine --tasks tasks   # the engine

``POST /notes`` writes a note and enqueues the job that indexes it in one SQLAlchemy
transaction: both exist, or neither (a note with the word "forbidden" is refused after the
enqueue, and its job goes with the rollback). ``GET /jobs/{id}`` says what became of a job,
with the indexing task's return value (it keeps its results: ``store_result=True``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import String
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tasks.notes import index_note

import skivi

DATABASE_URL = os.environ["DATABASE_URL"]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(1000))


class NoteIn(BaseModel):
    text: str


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The system of this application: it only enqueues (no tasks here, so start() applies
    # pending migrations and starts no engine: the engine runs beside, on its own).
    system = skivi.create_system({"database": {"connection_string": DATABASE_URL}})
    system.start()
    # The same database through SQLAlchemy, on the psycopg (3) driver Skivi writes with.
    engine = create_async_engine(make_url(DATABASE_URL).set(drivername="postgresql+psycopg"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    app.state.system = system
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        yield
    finally:
        await engine.dispose()
        system.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/notes")
async def create_note(note_in: NoteIn, request: Request) -> dict[str, int]:
    system: skivi.System = request.app.state.system
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session, session.begin():
        note = Note(text=note_in.text)
        session.add(note)
        await session.flush()  # the note's id, in this transaction
        # The typed task, enqueued in this session's transaction.
        job = await index_note.configure(system=system, conn=session).defer_async(
            note_id=note.id)
        if "forbidden" in note_in.text:
            # Raised inside session.begin(): the transaction rolls back, note and job both.
            raise HTTPException(status_code=400, detail="forbidden word")
    return {"id": note.id, "job_id": job.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: int, request: Request) -> dict[str, Any]:
    result = await skivi.get_result_async(request.app.state.system, job_id)
    return {"state": result.state, "value": result.value, "error": result.error}
