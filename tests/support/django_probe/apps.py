import os

from django.apps import AppConfig


class ProbeConfig(AppConfig):
    name = "tests.support.django_probe"
    label = "probe"

    def ready(self) -> None:
        if os.environ.get("PROBE_CONNECT_AT_START") == "1":
            # A project that queries at start-up (a cache warmed, a setting read): the
            # worker's parent then holds an open connection when it forks its children.
            from django.db import connection

            with connection.cursor() as cur:
                cur.execute("select 1")
