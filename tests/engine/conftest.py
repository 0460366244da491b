"""Engine tests run the real engine (``python -m skivi.engine``) as subprocesses, with real
signals, against a real PostgreSQL, and judge it by the ledger its handlers write. The
harness is tests/support/engines.py; these are its fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engines import EngineProcs, Ledger
from tests.support.servers import PrivateServer, private_postgres


@pytest.fixture
def engines(database: str, tmp_path: Path) -> Iterator[EngineProcs]:
    procs = EngineProcs(database, Ledger(tmp_path / "ledger.txt"))
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    with private_postgres("skivi-private-") as server:
        yield server


@pytest.fixture
def private_engines(private_server: PrivateServer, tmp_path: Path) -> Iterator[EngineProcs]:
    """Engines on the private server, SIGKILLed at the end if still running."""
    procs = EngineProcs(private_server.url, Ledger(tmp_path / "ledger.txt"))
    try:
        yield procs
    finally:
        procs.kill_all()
