"""The exit codes of ``python -m skivi.engine`` (and of ``System.stop()``): what each means
is in ``skivi.engine``'s docstring. A module of their own so that the parts of the engine
that exit with them do not import the package that starts them."""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_DATABASE", "EXIT_ERROR", "EXIT_OK"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
