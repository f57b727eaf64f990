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

__all__ = ["parse_size", "format_size", "format_exact", "size_range", "UNITS"]

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


def parse_size(text: str | int, *, minimum: int | None = None, maximum: int | None = None,
               multiple: int | None = None, what: str = "size") -> int:
    """Return the number of bytes that ``text`` names.

    Accepts a non-negative int, or a string: a number (``"4096"``, ``"1.5"``)
    optionally followed by a binary suffix ``K M G T P E`` (any case),
    optionally spelt ``KiB``/``MiB``/... or followed by ``B``. Fractions are
    allowed when they give a whole number of bytes (``"1.5K"`` = 1536).

    Raises :class:`cowblock.InvalidArgumentError` (a ``ValueError``) naming
    the text for anything else: negative numbers, unknown or decimal units
    (``"10GB"``), fractions of a byte.

    With ``minimum``, ``maximum`` (inclusive) or ``multiple``, a size out of
    that range is refused too. Every message names ``what`` and the value as
    given, and, when a range is known, the range (see :func:`size_range`).
    """
    bounded = minimum is not None or maximum is not None or multiple
    value = _parse(text, what, f"; {size_range(minimum, maximum, multiple)}" if bounded else "")
    if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
            or (multiple and value % multiple)):
        shown = text if isinstance(text, int) else repr(text)
        raise InvalidArgumentError(
            f"{what} {shown} is out of range: {size_range(minimum, maximum, multiple)}")
    return value


def size_range(minimum: int | None = None, maximum: int | None = None,
               multiple: int | None = None) -> str:
    """Describe the sizes a check allows: ``"from 512 B to 64.0 PiB (...)"``."""
    if minimum is not None and maximum is not None:
        text = f"it must be from {format_exact(minimum)} to {format_exact(maximum)}"
    elif maximum is not None:
        text = f"it must be at most {format_exact(maximum)}"
    else:
        text = f"it must be at least {format_exact(minimum or 0)}"
    if multiple:
        text += f", a multiple of {format_exact(multiple)}"
    return text


def _parse(text, what: str, hint: str) -> int:
    if isinstance(text, bool):
        raise InvalidArgumentError(f"{what} must be an int or a string, not {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgumentError(f"{what} must not be negative: {text}{hint}")
        return text
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"{what} must be an int or a string, not {type(text).__name__}")
    if text.strip().startswith("-") and _SIZE_RE.match(text.strip()[1:]):
        raise InvalidArgumentError(
            f"invalid {what} {text!r}: it is negative{hint or '; it must be 0 or more'}")
    m = _SIZE_RE.match(text)
    if m is None:
        raise InvalidArgumentError(
            f"invalid {what} {text!r}: expected a number with an optional binary "
            f"suffix K, M, G, T, P or E (e.g. 512K, 1.5M, 10G, 4KiB){hint}")
    unit = (m.group("unit") or "").upper()
    if len(unit) == 2 and unit.endswith("B"):
        # "GB" without the "i": decimal in SI, binary to some tools. Refuse.
        raise InvalidArgumentError(
            f"ambiguous {what} {text!r}: write {unit[0]} or {unit[0]}iB for "
            f"the binary unit (2**{_SHIFT[unit[0]]} bytes)")
    shift = _SHIFT[unit[0] if unit and unit != "B" else unit]
    value = Fraction(m.group("number")) * (1 << shift)
    if value.denominator != 1:
        raise InvalidArgumentError(
            f"invalid {what} {text!r}: not a whole number of bytes ({float(value)}){hint}")
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
