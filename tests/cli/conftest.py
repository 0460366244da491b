"""The CLI tests' fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty directory, so no stray ./skivi.toml is read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
