"""MEM, memory and metadata: resident memory growth while writing ``--mem-size`` into a new
device and while reading it back after a reopen, and metadata bytes per mapped block; each
repetition in a fresh interpreter (:func:`measure`), beside qcow2's metadata for the same data.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Optional

from . import peers
from .results import Entry, Group
from .util import MiB, fmt_size, median, vm_rss

if TYPE_CHECKING:
    from .runner import Runner


def run(r: Runner) -> None:
    if not r.have_cb():
        r.skip("MEM memory/metadata: cowblock not importable")
        return
    a = r.a
    mapped = a.mem_size
    results: dict[str, list[Optional[float]]] = {}
    raw_runs = []

    def child(rep: int) -> float:
        path = r.path(f"pool-mem-{rep}")
        shutil.rmtree(path, ignore_errors=True)
        code = ("import json, sys; from cowblock.benchmark.memory import measure; "
                "print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))")
        p = subprocess.run([sys.executable, "-c", code, path, str(mapped), str(a.block_size)],
                           capture_output=True, text=True)
        shutil.rmtree(path, ignore_errors=True)
        if p.returncode != 0:
            raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else
                               f"rc={p.returncode}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        raw_runs.append(res)
        for k, v in res.items():
            results.setdefault(k, []).append(v)
        return res["write_seconds"]

    g = Group("MEM", f"write {fmt_size(mapped)} into a new device (1 MiB writes), flush, "
                     "reopen; in a subprocess", "page cache", [Entry("cowblock", child)])
    r.run_group(g)
    if not raw_runs:
        return
    med = {k: median(v) for k, v in results.items() if all(isinstance(x, (int, float)) for x in v)}
    nblocks = mapped // a.block_size
    info = {
        "mapped": fmt_size(mapped),
        "RSS growth while writing": f"{fmt_size(med['rss_growth_write'])} "
                                    f"({100 * med['rss_growth_write'] / mapped:.3f} % of mapped)",
        "peak RSS (ru_maxrss) growth": f"{fmt_size(med['maxrss_growth'])} "
                                       f"({100 * med['maxrss_growth'] / mapped:.3f} %)",
        "RSS growth of a reopen + full read": f"{fmt_size(med['rss_growth_open'])} "
                                              f"({100 * med['rss_growth_open'] / mapped:.3f} %)",
        "metadata on disk": f"{fmt_size(med['meta_bytes'])} = "
                            f"{med['meta_bytes'] / nblocks:.1f} bytes per mapped block "
                            f"({100 * med['meta_bytes'] / mapped:.4f} % of mapped)",
    }
    g.info["cowblock"] = info
    r.extra["mem"] = {"mapped": mapped, "block_size": a.block_size, "medians": med,
                      "runs": raw_runs}
    for k, v in info.items():
        r.say(f"  {k}: {v}")
    # qcow2's metadata for comparison: a fully written overlay
    if r.qemu.img:
        peers.qcow2_metadata(r)


def measure(path: str, mapped: int, block_size: int) -> dict:
    """Run in a fresh interpreter: memory and metadata of a pool with ``mapped`` bytes mapped."""
    import cowblock

    chunk = bytes(range(1, 256)) * (MiB // 255) + b"\x01" * (MiB % 255)
    rss_start = vm_rss()
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pool = cowblock.Pool.create(path, size=mapped + 64 * MiB, block_size=block_size)
    dev = pool.create_device("m", mapped)
    rss0 = vm_rss()
    t0 = time.perf_counter()
    w = dev.write
    for off in range(0, mapped, MiB):
        w(off, chunk[: min(MiB, mapped - off)])
    pool.flush()
    t_write = time.perf_counter() - t0
    rss1 = vm_rss()
    max1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = pool.stats()
    used = pool.used
    pool.close()
    rss_closed = vm_rss()
    pool = cowblock.Pool.open(path)
    dev = pool.device("m")
    buf = bytearray(MiB)
    for off in range(0, mapped, MiB):
        dev.readinto(off, memoryview(buf)[: min(MiB, mapped - off)])
    rss_open = vm_rss()
    stats2 = pool.stats()
    pool.close()
    return {
        "write_seconds": t_write,
        "rss_start": rss_start,
        "rss_growth_write": rss1 - rss0,
        "maxrss_growth": max(0, max1 - max(max0, rss0)),
        "rss_growth_open": rss_open - rss_closed,
        "meta_bytes": stats2.get("meta_bytes", stats.get("meta_bytes", 0)),
        "data_bytes_on_disk": stats2.get("data_bytes_on_disk", 0),
        "used": used,
    }
