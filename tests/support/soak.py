"""The chaos test's soak switch: ``--chaos-soak`` (registered by tests/chaos/conftest.py) or
``SKIVI_CHAOS_SOAK=1`` (tests/conftest.py keeps this variable, TEST_ENV_VARS, when it hides
the other SKIVI_* ones from the tests)."""

from __future__ import annotations

import os

import pytest

__all__ = ["SOAK_ENV", "soak_env", "soak_mode"]

SOAK_ENV = "SKIVI_CHAOS_SOAK"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def soak_env() -> bool:
    return _truthy(os.environ.get(SOAK_ENV))


def soak_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--chaos-soak", default=False)) or soak_env()
