"""The writer process of the crash harness (see crashlib.py): runs a pool's seeded operation
sequence until it is killed.  Usage: ``python tests/crash_writer.py SPEC_JSON``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import crashlib  # noqa: E402

if __name__ == "__main__":
    crashlib.writer_main()
