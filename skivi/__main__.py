"""``python -m skivi``: the operators' command line, the same as the ``skivi`` script
(``skivi.cli``)."""

import sys

from skivi.cli import main

if __name__ == "__main__":
    sys.exit(main())
