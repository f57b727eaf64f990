"""The argument parser every cowblock command line uses.

argparse takes a word that starts with ``-`` and a digit for an option unless
the parser has options that look like negative numbers.  cowblock's size
arguments must see ``--size -5G`` as a value, so that it is refused as a
negative size (naming the value and the range) instead of "expected one
argument".  No option of ours starts with ``-`` and a digit.
"""
import argparse
import re


class Parser(argparse.ArgumentParser):
    """argparse, except that ``-`` followed by a digit is always a value."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # argparse's own hook for "does this look like a negative number"
        self._negative_number_matcher = re.compile(r"^-\.?\d")
