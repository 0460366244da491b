"""The tasks of the FastAPI example, run by the engine beside the application:

    python -m skivi.engine --tasks examples/fastapi/tasks
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

import skivi

# A typed task collection: the engine loads this file's TASKS; the application imports
# index_note and calls index_note.defer_async(note_id=...).
TASKS = skivi.Tasks()


@TASKS.task(identifier="index-note", store_result=True)
async def index_note(ctx: skivi.JobContext, note_id: int) -> dict[str, Any]:
    """Count a note's words; the count is the job's result (store_result=True)."""
    url = os.environ.get("SKIVI_DATABASE_URL") or os.environ["DATABASE_URL"]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("select text from note where id = %s",
                                        [note_id])).fetchone()
    if row is None:
        raise LookupError(f"note {note_id} not found")
    ctx.logger.info("indexed note %s", note_id)
    return {"note_id": note_id, "words": len(row[0].split())}

