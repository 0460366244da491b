"""``python -m skivi.engine``: run a worker engine, the same command as ``skivi worker``.
An entry point only: the command line is ``skivi.cli.worker``, the engine ``skivi.engine.run``."""

from __future__ import annotations

import sys

from skivi.cli.worker import main

if __name__ == "__main__":
    sys.exit(main())
