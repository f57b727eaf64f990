"""Byte sizes: binary suffixes on input, IEC units (with exact bytes) on output.

Input follows the habit of qemu-img and dmsetup: a suffix is always binary,
so ``"10G"`` is 10 GiB = 10 * 2**30 bytes. ``"10GiB"`` and ``"10g"`` mean the
same. Decimal units such as ``"10GB"`` are refused rather than guessed at,
because 10 GB and 10 GiB differ by 7%.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .errors import InvalidArgumentError

__all__ = ["parse_size", "format_size", "format_exact", "UNITS"]

#: IEC unit names by power of 1024.
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

_SHIFT = {"": 0, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}

_SIZE_RE = re.compile(
    r"""^\s*
    (?P<number>\d+(?:\.\d*)?|\.\d+)      # 10, 1.5, .5
    \s*
    (?P<unit>[KMGTPE](?:i?B)?|B)?        # K, KB, KiB, B (case-insensitive, see below)
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)


def parse_size(text: str | int) -> int:
    """Return the number of bytes that ``text`` names.

    Accepts a non-negative int, or a string: a number (``"4096"``, ``"1.5"``)
    optionally followed by a binary suffix ``K M G T P E`` (any case),
    optionally spelt ``KiB``/``MiB``/... or followed by ``B``. Fractions are
    allowed when they give a whole number of bytes (``"1.5K"`` = 1536).

    Raises :class:`cowblock.InvalidArgumentError` (a ``ValueError``) naming
    the text for anything else: negative numbers, unknown or decimal units
    (``"10GB"``), fractions of a byte.
    """
    if isinstance(text, bool):
        raise InvalidArgumentError(f"size must be an int or a string, not {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgumentError(f"size must not be negative: {text}")
        return text
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"size must be an int or a string, not {type(text).__name__}")
    m = _SIZE_RE.match(text)
    if m is None:
        raise InvalidArgumentError(
            f"invalid size {text!r}: expected a number with an optional binary "
            f"suffix K, M, G, T, P or E (e.g. 512K, 1.5M, 10G, 4KiB)")
    unit = (m.group("unit") or "").upper()
    if len(unit) == 2 and unit.endswith("B"):
        # "GB" without the "i": decimal in SI, binary to some tools. Refuse.
        raise InvalidArgumentError(
            f"ambiguous size {text!r}: write {unit[0]} or {unit[0]}iB for "
            f"the binary unit (2**{_SHIFT[unit[0]]} bytes)")
    shift = _SHIFT[unit[0] if unit and unit != "B" else unit]
    value = Fraction(m.group("number")) * (1 << shift)
    if value.denominator != 1:
        raise InvalidArgumentError(
            f"invalid size {text!r}: not a whole number of bytes ({float(value)})")
    return int(value)


def format_size(n: int) -> str:
    """Format a byte count in IEC units with one decimal: ``"1.5 GiB"``.

    Counts below 1 KiB are written exactly (``"512 B"``). Negative counts are
    written with a leading minus sign.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgumentError(f"byte count must be an int, not {n!r}")
    if n < 0:
        return "-" + format_size(-n)
    if n < 1024:
        return f"{n} B"
    exp = 0
    value = float(n)
    while value >= 1024 and exp < len(UNITS) - 1:
        value /= 1024
        exp += 1
    # Rounding may carry into the next unit (1023.96 KiB -> "1024.0 KiB").
    if round(value, 1) >= 1024 and exp < len(UNITS) - 1:
        value /= 1024
        exp += 1
    return f"{value:.1f} {UNITS[exp]}"


def format_exact(n: int) -> str:
    """Format a byte count in IEC units followed by the exact count:
    ``"1.0 GiB (1073741824 B)"``; below 1 KiB just ``"512 B"``."""
    human = format_size(n)
    if -1024 < n < 1024:
        return human
    return f"{human} ({n} B)"
