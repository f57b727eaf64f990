"""``python -m cowblock.benchmark``: the same as ``cowblock bench``."""

import sys

from .command import main

sys.exit(main())
