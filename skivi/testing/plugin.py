"""Skivi's pytest plugin: fixtures around the project's own system. Off unless enabled.

Installing Skivi registers this module with pytest (the ``pytest11`` entry point), but all it
does by default is declare its two switches, so no test run changes until a project turns
it on, with either::

    pytest --skivi-fixtures
    # or, in pytest.ini / pyproject.toml [tool.pytest.ini_options]:
    skivi_fixtures = true

Then these fixtures exist, each using a ``skivi_system`` fixture that the project defines
(its ``skivi.System``, on a test database; the plugin's own ``skivi_system`` only fails,
saying so):

- ``skivi_jobs``: ``capture(skivi_system, write=False)`` for the test: what it enqueued,
  nothing written;
- ``skivi_drain``: ``drain`` bound to the system (``skivi_drain(max_jobs=10)``);
- ``skivi_immediate``: ``immediate(skivi_system)`` for the test: its jobs run at once.

``-p no:skivi`` unloads the plugin altogether.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from skivi.testing.drainer import JobRun, drain
from skivi.testing.recorder import CapturedJobs, capture, immediate

OPTION = "--skivi-fixtures"
INI = "skivi_fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("skivi")
    group.addoption(OPTION, action="store_true", default=False,
                    help="provide Skivi's test fixtures (skivi_jobs, skivi_drain, "
                         "skivi_immediate), built on the project's skivi_system fixture")
    parser.addini(INI, type="bool", default=False,
                  help="provide Skivi's test fixtures, as --skivi-fixtures does")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(OPTION) or config.getini(INI):
        config.pluginmanager.register(Fixtures(), "skivi-fixtures")


class Fixtures:
    """The fixtures, registered only when enabled."""

    @pytest.fixture
    def skivi_system(self) -> Any:
        pytest.fail("the skivi fixtures need a skivi_system fixture returning your "
                    "skivi.System (defined in your conftest.py)", pytrace=False)

    @pytest.fixture
    def skivi_jobs(self, skivi_system: Any) -> Iterator[CapturedJobs]:
        with capture(skivi_system, write=False) as jobs:
            yield jobs

    @pytest.fixture
    def skivi_drain(self, skivi_system: Any) -> Callable[..., list[JobRun]]:
        return functools.partial(drain, skivi_system)

    @pytest.fixture
    def skivi_immediate(self, skivi_system: Any) -> Iterator[list[JobRun]]:
        with immediate(skivi_system) as runs:
            yield runs
