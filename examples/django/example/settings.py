"""Settings of the example project (docs/django.md): one PostgreSQL database, given as
DATABASE_URL, holds the notes and Skivi's jobs."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["DATABASE_URL"])

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "skivi.contrib.django",
    "notes",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        # Every view's writes, its jobs included, in one transaction with the request.
        "ATOMIC_REQUESTS": True,
    },
}

# Skivi: the shape of skivi.toml; the database is DATABASES["default"] ("alias").
SKIVI = {
    "database": {"schema_name": "skivi"},
    "worker": {"processes": 1, "concurrency": 4, "poll_interval": 0.5},
    # Beside each app's tasks.py (found by themselves): more modules with tasks.
    "tasks": ["notes.maintenance"],
}

# django.tasks: @task functions are Skivi jobs, run by `manage.py skivi_worker`.
TASKS = {
    "default": {
        "BACKEND": "skivi.contrib.django.SkiviBackend",
        "QUEUES": ["default", "reports"],
    },
}
