"""``python -m cowblock``: the ``cowblock`` command."""

import sys

from .cli import main

sys.exit(main())
