"""Plain-text output shared by the command line and the demo: aligned tables and aligned
name/value lists."""

from __future__ import annotations

import sys
from typing import Any, Sequence, TextIO

__all__ = ["print_table", "print_fields"]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                out: TextIO | None = None) -> None:
    """Print an aligned table; columns whose header starts with a space
    (size columns) are right-aligned. ``None`` cells print as ``-``."""
    out = out or sys.stdout
    cells = [[str(h).strip() for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [str(h).startswith(" ") for h in headers]
    for r in cells:
        parts = [c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)]
        print("  ".join(parts).rstrip(), file=out)


def print_fields(pairs: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    """Print ``name  value`` lines, indented by two spaces, the values in one column."""
    out = out or sys.stdout
    w = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"  {k:<{w}}  {v}", file=out)
