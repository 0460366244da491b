from django.db import models


class Note(models.Model):
    text = models.TextField()
    words = models.IntegerField(null=True)  # set by the index_note job
    shouted = models.TextField(null=True)  # set by the shout_note job (async)
