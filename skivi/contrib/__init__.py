"""Integrations with frameworks, each optional: ``skivi.contrib.django`` (the ``django``
extra). Nothing here is imported by the rest of Skivi unless the framework is in use."""
