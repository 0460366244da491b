"""The exit codes of Skivi's programs, the one table of them: ``python -m skivi.engine``
(also ``skivi worker``), ``System.stop()`` (the engine's code), and the ``skivi`` admin
command (``skivi.cli``).

It lives in the engine package, not in ``skivi.cli``, because the parts of the engine that
exit with these codes (the supervisor) must not import the command line that starts them:
the cli imports the engine, never the other way round (tests/unit/test_imports.py). And a
module of its own, so that they do not import the engine package's ``run`` either.

What each code means (the --help epilogs and ``skivi.engine``'s docstring say it in full)::

    code  the engine (worker)                      the skivi admin command
    0     stopped cleanly                           done
    1     stopped with errors                       some given jobs not changed, migrate
                                                    --check found pending migrations
                                                    (EXIT_UNCHANGED), or a database error
    2     bad command line, configuration or task   bad command line or configuration
          file
    3     the database could not be reached or      the database could not be reached, or
          migrated at start                         the schema is not (or cannot be) migrated
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_DATABASE", "EXIT_ERROR", "EXIT_OK", "EXIT_UNCHANGED"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNCHANGED = 1
"""The admin command's 1 when nothing failed: some of the given jobs were not changed, or
``migrate --check`` found pending migrations."""
EXIT_CONFIG = 2
EXIT_DATABASE = 3
