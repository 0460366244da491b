"""System checks (``manage.py check``, and before every management command that runs them,
``skivi_worker`` and ``skivi_migrate`` included): ``settings.SKIVI`` and the project's
tasks, with Skivi's own errors.

    skivi.E001   settings.SKIVI is refused (an unknown key, a bad value, a bad cron entry, a
                 non-PostgreSQL alias, database.connection_string given): the
                 ConfigError's text
    skivi.E002   the project's tasks do not load (two tasks of one identifier, a bad one)
    skivi.E003   a SkiviBackend's OPTIONS are refused (see skivi.contrib.django.backend)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core import checks

from skivi.errors import ConfigError, RegistryError

__all__ = ["check_settings"]


@checks.register("skivi")
def check_settings(app_configs: Sequence[AppConfig] | None = None,
                   **kwargs: Any) -> list[checks.CheckMessage]:
    from skivi.contrib.django import project

    try:
        # The whole system, as skivi_worker builds it (no connection is made): the cron
        # entries are checked there, and the tasks found.
        project.build_system().close()
    except ConfigError as exc:
        return [checks.Error(str(exc), hint="settings.SKIVI has the shape of skivi.toml, plus "
                             "\"alias\" and \"tasks\" (see docs/django.md)", id="skivi.E001")]
    except RegistryError as exc:
        return [checks.Error(str(exc), id="skivi.E002")]
    return []
