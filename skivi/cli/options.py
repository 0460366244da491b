"""What the two commands (``skivi`` and the worker, ``skivi worker`` / ``python -m
skivi.engine``) share on their command lines, defined once: the SKIVI_* environment lookups,
the options that say which instance (``--config``, ``--database-url``, ``--schema``) and
``--crontab``, and finding and loading the configuration.

Precedence, for both: defaults < the configuration file < SKIVI_* environment < flags. The
file is ``--config``, else ``SKIVI_CONFIG``, else ``./skivi.toml`` if it exists.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skivi.config import DEFAULT_CONFIG_FILE, Config, load_config

__all__ = ["add_crontab_option", "add_instance_options", "config_source", "env", "env_flag",
           "load"]

_Container = argparse.ArgumentParser | argparse._ArgumentGroup


def env(name: str) -> str | None:
    """The environment variable ``name``; set but empty is the same as unset."""
    value = os.environ.get(name)
    return value if value else None


def env_flag(name: str) -> bool:
    return (env(name) or "").lower() in ("1", "true", "yes", "on")


def add_instance_options(container: _Container, *, default: Any = None) -> None:
    """``--config``, ``--database-url`` and ``--schema`` on ``container``. The admin command
    passes ``default=argparse.SUPPRESS``: a parser where an option is not given leaves the
    attribute alone, so the option may be given before or after the command."""
    container.add_argument(
        "--config", metavar="PATH", default=default,
        help=f"TOML configuration file (default: ./{DEFAULT_CONFIG_FILE} if it exists) "
             "[SKIVI_CONFIG]")
    container.add_argument(
        "--database-url", metavar="URL", default=default,
        help="PostgreSQL connection string [SKIVI_DATABASE_URL, then DATABASE_URL]")
    container.add_argument(
        "--schema", metavar="NAME", default=default,
        help="schema of the Skivi instance (default: skivi) [SKIVI_SCHEMA]")


def add_crontab_option(container: _Container) -> None:
    container.add_argument(
        "--crontab", metavar="PATH", default=env("SKIVI_CRONTAB"),
        help="TOML file of [[cron]] tables, added to the configuration's [SKIVI_CRONTAB]")


def config_source(given: str | None) -> str | None:
    """The configuration file to read: ``given`` (``--config``; given empty, it is still
    given, and load_config says the file is not found), else SKIVI_CONFIG, else
    ./skivi.toml if there is one, else None (defaults and environment only)."""
    if given is not None:
        return given
    source = env("SKIVI_CONFIG")
    if source is None and Path(DEFAULT_CONFIG_FILE).is_file():
        source = DEFAULT_CONFIG_FILE
    return source


def load(args: argparse.Namespace, overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration the instance options in ``args`` name, with ``overrides`` (dotted
    keys; None values are not given) over it. Raises ConfigError."""
    return load_config(config_source(getattr(args, "config", None)), overrides={
        "database.connection_string": getattr(args, "database_url", None),
        "database.schema_name": getattr(args, "schema", None),
        **(overrides or {}),
    })
