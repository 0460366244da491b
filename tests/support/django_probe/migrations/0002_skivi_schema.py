"""Skivi's schema from a Django migration (docs/django.md, "one command"): `migrate` then
applies Skivi's migrations too."""

from typing import Any, ClassVar

from django.core.management import call_command
from django.db import migrations


def skivi_schema(apps: Any, schema_editor: Any) -> None:
    call_command("skivi_migrate", verbosity=0)


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [("probe", "0001_initial")]

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.RunPython(skivi_schema, migrations.RunPython.noop),
    ]
