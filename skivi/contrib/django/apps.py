"""The Django app: ``INSTALLED_APPS = [..., "skivi.contrib.django"]`` (label ``skivi``)."""

from __future__ import annotations

from django.apps import AppConfig


class SkiviConfig(AppConfig):
    name = "skivi.contrib.django"
    label = "skivi"
    verbose_name = "Skivi"

    def ready(self) -> None:
        from skivi.contrib.django import checks, project

        del checks  # imported for its registration
        project.autodiscover()
