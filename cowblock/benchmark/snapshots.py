"""W4, snapshot cost: Pool.snapshot() of a 1 GiB device against a 1 TiB device holding the
same data, and against a device with much more data mapped; alone, and made durable by a
flush.  A snapshot must cost the same whatever the data behind it."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import TYPE_CHECKING, Callable

from .results import Entry, Group
from .util import GiB, MiB, TiB, fmt_size, no_gc

if TYPE_CHECKING:
    from .runner import Runner


def run(r: Runner) -> None:
    if not r.have_cb():
        r.skip("W4 snapshot cost: cowblock not importable")
        return
    cb = r.cowblock
    a = r.a
    data = min(a.size, GiB) if not a.quick else a.size
    big_dev = TiB
    big_mapped = a.big_mapped
    path = r.path("pool-w4")
    per_rep = a.snapshots_per_run
    if not os.path.exists(path):
        cap = data * 2 + big_mapped + 256 * MiB
        r.log(f"W4: creating devices: {fmt_size(data)} and {fmt_size(big_dev)} with "
              f"{fmt_size(data)} mapped, one with {fmt_size(big_mapped)} mapped")
        pool = cb.Pool.create(path, size=cap, block_size=a.block_size)
        buf = r.chunk()
        for name, dsize, mapped in (("small", data, data), ("huge", big_dev, data),
                                    ("mapped", big_mapped, big_mapped)):
            dev = pool.create_device(name, dsize)
            for off in range(0, mapped, len(buf)):
                dev.write(off, buf[: min(len(buf), mapped - off)])
            pool.flush()
        pool.close()
    pool = cb.Pool.open(path)
    r.pools["w4"] = pool
    counter = [0]

    def make(src: str, with_flush: bool) -> Callable[[int], float]:
        def timed(rep: int) -> float:
            ts = []
            names = []
            with no_gc():
                for _ in range(1 if with_flush else per_rep):
                    counter[0] += 1
                    name = f"s{counter[0]}"
                    t0 = time.perf_counter()
                    pool.snapshot(src, name)
                    if with_flush:
                        pool.flush()
                    ts.append(time.perf_counter() - t0)
                    names.append(name)
            for name in names:
                pool.delete(name)
            pool.flush()
            return statistics.median(ts)

        return timed

    labels = {"small": f"{fmt_size(data)} device, {fmt_size(data)} mapped",
              "huge": f"{fmt_size(big_dev)} device, {fmt_size(data)} mapped",
              "mapped": f"{fmt_size(big_mapped)} device, {fmt_size(big_mapped)} mapped"}
    entries = [Entry(labels[s], make(s, False)) for s in ("small", "huge", "mapped")]
    g = Group("W4", f"Pool.snapshot() time (median of {per_rep} calls per run)",
              "in-process", entries, per_op=True, warmup=True,
              pairs=[(labels["huge"], labels["small"]), (labels["mapped"], labels["small"])])
    if big_mapped < 64 * GiB:
        g.notes.append(f"mapped-data case scaled to {fmt_size(big_mapped)} "
                       "(use --big-mapped 64G for the full 64 GiB case; needs that much disk)")
    r.run_group(g)
    entries = [Entry(labels[s], make(s, True)) for s in ("small", "huge", "mapped")]
    g2 = Group("W4", "Pool.snapshot() + Pool.flush() (the snapshot made durable)",
               "page cache + fdatasync", entries, per_op=True,
               pairs=[(labels["huge"], labels["small"]), (labels["mapped"], labels["small"])])
    r.run_group(g2)
    pool.close()
    r.pools.pop("w4", None)
    if not a.keep:
        shutil.rmtree(path, ignore_errors=True)
