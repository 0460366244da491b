"""``settings.SKIVI``: the configuration of a Django project's Skivi instance.

A dict shaped like ``skivi.toml`` (``database``, ``worker``, ``validation``, ``events``,
``metrics``, ``cron``), checked by ``skivi.load_config`` with its usual errors, plus two
keys of the integration's own:

    ``alias``   the ``DATABASES`` alias whose database holds the jobs (default
                ``"default"``); the connection string comes from it, so nothing is
                configured twice and ``database.connection_string`` is refused here
    ``tasks``   modules (dotted paths) to import for tasks, beside each installed app's
                ``tasks`` module (autodiscovery, ``skivi.contrib.django.discovery``)

The environment fills only what the dict leaves out, as for any configuration given in
code (``skivi.load_config``); the connection string is never taken from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from skivi.config import Config, load_config
from skivi.errors import ConfigError

__all__ = ["ALIAS_DEFAULT", "OWN_KEYS", "SETTING", "SkiviSettings", "connection_string",
           "load", "read"]

SETTING = "SKIVI"
ALIAS_DEFAULT = "default"
OWN_KEYS = frozenset({"alias", "tasks"})


@dataclass(frozen=True, slots=True)
class SkiviSettings:
    alias: str
    task_modules: tuple[str, ...]
    config: Mapping[str, Any]
    """The skivi.toml-shaped part (without ``alias`` and ``tasks``)."""


def _fail(message: str) -> ConfigError:
    return ConfigError(f"settings.{SETTING}: {message}")


def read() -> SkiviSettings:
    """``settings.SKIVI``, its own keys checked (the rest is load_config's to check).
    Raises ConfigError naming what is wrong."""
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail(f"must be a dict shaped like skivi.toml, got {type(raw).__name__}")
    alias = raw.get("alias", ALIAS_DEFAULT)
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        raise _fail(f"alias: {alias!r} is not an alias of settings.DATABASES "
                    f"({', '.join(map(repr, settings.DATABASES))})")
    modules = raw.get("tasks", ())
    if isinstance(modules, str) or not isinstance(modules, Sequence) or not all(
            isinstance(m, str) and m for m in modules):
        raise _fail(f"tasks: must be a list of module paths (\"myapp.jobs\"), got "
                    f"{modules!r}")
    database = raw.get("database", {})
    if isinstance(database, Mapping) and "connection_string" in database:
        raise _fail(f"database.connection_string: not set here; the connection comes from "
                    f"settings.DATABASES[{alias!r}] (\"alias\")")
    config = {k: v for k, v in raw.items() if k not in OWN_KEYS}
    return SkiviSettings(alias, tuple(modules), config)


def connection_string(alias: str) -> str:
    """The libpq connection string of ``DATABASES[alias]``, as Django's own PostgreSQL
    backend would connect (its NAME, USER, PASSWORD, HOST, PORT and libpq OPTIONS)."""
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise _fail(f"alias: settings.DATABASES[{alias!r}] is a {wrapper.vendor} database; "
                    "Skivi's jobs live in PostgreSQL")
    try:
        params = wrapper.get_connection_params()
    except ImproperlyConfigured as exc:
        raise _fail(f"alias: settings.DATABASES[{alias!r}]: {exc}") from None
    keywords = {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}
    return psycopg.conninfo.make_conninfo(
        "", **{k: v for k, v in params.items() if k in keywords and v is not None})


def load(overrides: Mapping[str, Any] | None = None) -> tuple[SkiviSettings, Config]:
    """The settings and the validated Config they describe, ``overrides`` (dotted keys, as
    the worker's flags give them) over them. Raises ConfigError naming every problem."""
    own = read()
    source = dict(own.config)
    database = source.get("database", {})
    if not isinstance(database, Mapping):
        raise _fail(f"database: must be a dict, got {type(database).__name__}")
    source["database"] = {**database, "connection_string": connection_string(own.alias)}
    try:
        config = load_config(source, overrides=overrides)
    except ConfigError as exc:
        raise _fail("; ".join(exc.problems)) from None
    return own, config
