"""settings.SKIVI: the shape of skivi.toml plus "alias" and "tasks", the connection from
DATABASES, refused with Skivi's errors through Django's system checks."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings

from skivi.contrib.django import conf, project, system
from skivi.contrib.django.checks import check_settings


def messages(**skivi: Any) -> list[tuple[str, str]]:
    with override_settings(SKIVI=skivi):
        return [(m.id, m.msg) for m in check_settings()]


def test_the_system_takes_its_database_from_the_alias_and_its_keys_from_skivi_when_built(
        db: str) -> None:
    s = system()
    assert s.config.database.schema_name == "skivi"
    assert s.config.worker.concurrency == 4
    given = psycopg.conninfo.conninfo_to_dict(db)
    made = psycopg.conninfo.conninfo_to_dict(s.database_url)
    for key in ("dbname", "host", "port", "user"):
        assert str(made.get(key, "")) == str(given.get(key, "")), key
    assert messages(database={"schema_name": "jobs"}, worker={"concurrency": 2}) == []


def test_an_unknown_key_is_refused_by_the_system_check_when_checked(db: str) -> None:
    found = messages(worker={"concurency": 2})
    assert len(found) == 1 and found[0][0] == "skivi.E001", found
    assert "worker.concurency" in found[0][1] and "concurrency" in found[0][1]
    assert messages(colour="blue")[0][0] == "skivi.E001"
    with override_settings(SKIVI={"worker": {"concurency": 2}}), \
            pytest.raises(SystemCheckError, match="concurency"):
        call_command("check")


def test_a_connection_string_is_refused_when_given_in_skivi(db: str) -> None:
    found = messages(database={"connection_string": db})
    assert found[0][0] == "skivi.E001"
    assert "database.connection_string" in found[0][1] and "DATABASES" in found[0][1]


def test_an_alias_that_is_not_in_databases_is_refused_when_checked(db: str) -> None:
    found = messages(alias="elsewhere")
    assert found[0][0] == "skivi.E001" and "'elsewhere'" in found[0][1]
    assert messages(alias="jobs") == []  # an alias of DATABASES
    assert messages(tasks="notes.maintenance")[0][0] == "skivi.E001"  # a str, not a list


def test_an_alias_django_cannot_connect_with_is_refused_when_checked(db: str) -> None:
    entry = connections["default"].settings_dict  # settings.DATABASES["default"] itself
    name, entry["NAME"] = entry["NAME"], ""
    try:
        found = messages()
    finally:
        entry["NAME"] = name
    assert found[0][0] == "skivi.E001" and "DATABASES['default']" in found[0][1], found
    assert "NAME" in found[0][1]


def test_a_bad_value_is_refused_with_skivis_message_when_checked(db: str) -> None:
    found = messages(worker={"concurrency": 0})
    assert found[0][0] == "skivi.E001" and "worker.concurrency" in found[0][1]


def test_a_bad_cron_entry_is_refused_when_checked(db: str) -> None:
    found = messages(cron=[{"identifier": "nightly", "schedule": "not a schedule"}])
    assert found[0][0] == "skivi.E001" and "nightly" in found[0][1], found
    assert messages(cron=[{"identifier": "nightly", "schedule": "0 4 * * *",
                           "task": "purge_empty_notes"}]) == []


def test_overrides_go_over_the_settings_when_the_worker_gives_them(db: str) -> None:
    _, config = conf.load({"worker.concurrency": 7, "worker.processes": None})
    assert config.worker.concurrency == 7
    assert config.worker.processes == 1  # None: not given, the settings' value stays


def test_changed_settings_drop_the_system_when_overridden(db: str) -> None:
    before = system()
    with override_settings(SKIVI={"database": {"schema_name": "elsewhere"}}):
        assert system().schema == "elsewhere"
    assert system() is not before and system().schema == "skivi"


def test_tasks_are_found_in_apps_and_in_skivi_tasks_when_discovered(db: str) -> None:
    found = project.discovered()
    # Typed tasks of apps' tasks.py, a TASKS dict of a SKIVI["tasks"] module, and
    # django.tasks tasks of the SkiviBackend under their module paths.
    for identifier in ("index_note", "shout_note", "purge_empty_notes", "record",
                       "notes.tasks.summarize", "tests.support.django_probe.tasks.add"):
        assert identifier in found, sorted(found)
    assert found["index_note"].store_result is True
    assert found["notes.tasks.summarize"].store_result is True
    assert sorted(system().registry().identifiers()) == sorted(found)
