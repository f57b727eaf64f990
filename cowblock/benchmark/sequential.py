"""W2, sequential full-block copy-up: 1 MiB writes over the whole of a fresh snapshot of a
fully written device, then one flush; against the same writes to raw files and qcow2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .copyup import write_group
from .util import MiB, fmt_size

if TYPE_CHECKING:
    from .runner import Runner


def run(r: Runner, direct: bool) -> None:
    size = r.a.size
    io = min(MiB, size)
    offs = list(range(0, size, io))
    mode = "direct" if direct else "cache"
    write_group(
        r, "W2", f"sequential copy-up: {len(offs)} x {fmt_size(io)} writes over a fresh "
        f"snapshot of a full {fmt_size(size)} device, + flush",
        direct, offs, io, io, f"w2-{mode}")
