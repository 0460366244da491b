from django.db import models


class Event(models.Model):
    """What a probe task saw, one row per report."""

    name = models.TextField()
    value = models.JSONField(null=True)
