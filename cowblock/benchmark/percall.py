"""W5, Python per-call cost: 4 KiB cached random reads through Device.read/readinto against
os.pread/os.preadv on a plain file; and the read_blocks batch call per block against one call
per block.  With ``--mmap`` every cowblock figure is also taken, side by side, on the same
pool opened with ``mmap=True`` (reads served from a mapping of the data file); both pools are
then opened read-only, as two writable opens of one pool exclude each other."""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Any, Callable

from . import peers
from .results import Entry, Group
from .util import KiB, MiB, fmt_size, no_gc

if TYPE_CHECKING:
    from .runner import Runner


def pools(r: Runner) -> list[tuple[str, Callable[[], Any]]]:
    """(name suffix, getter of the main pool) for each cowblock mode W5 measures."""
    if not r.a.mmap:
        return [("", lambda: r.main_pool(False))]
    r.main_pool(False)  # makes the pool if needed
    for other in [k for k in r.pools if k in ("direct", "cache")]:
        r.pools.pop(other).close()
    cb, path = r.cowblock, r.path("pool")
    r.pools["w5"] = cb.Pool.open(path, readonly=True)
    r.pools["w5-mmap"] = cb.Pool.open(path, readonly=True, mmap=True)
    return [("", lambda: r.pools["w5"]), (", mmap", lambda: r.pools["w5-mmap"])]


def run(r: Runner) -> None:
    a = r.a
    base = r.base_raw()
    n = a.calls
    rng = random.Random(5)
    offs = [rng.randrange(0, a.size // (4 * KiB)) * 4 * KiB for _ in range(n)]
    entries: list[Entry] = []

    plain = peers.PlainReads(base)
    entries += plain.entries(offs)
    buf4 = bytearray(4 * KiB)
    pairs = []
    modes = pools(r) if r.have_cb() else []
    for sfx, get_pool in modes:
        def r_read(rep: int, get_pool=get_pool) -> float:
            rd = get_pool().device("base").read
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    rd(off, 4096)
                return (time.perf_counter() - t0) / n

        def r_readinto(rep: int, get_pool=get_pool) -> float:
            ri = get_pool().device("base").readinto
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    ri(off, buf4)
                return (time.perf_counter() - t0) / n

        entries += [Entry(f"Device.read(off, 4096){sfx}", r_read),
                    Entry(f"Device.readinto(off, buf){sfx}", r_readinto)]
        pairs += [(f"Device.read(off, 4096){sfx}", "os.pread(fd, 4096, off)"),
                  (f"Device.readinto(off, buf){sfx}", "os.preadv(fd, [buf], off)")]
    g = Group("W5", f"Python per-call cost: {n} cached random 4 KiB reads",
              "page cache (warm)", entries, pairs, per_op=True, warmup=True)
    g.notes.append("os.pread/os.preadv read the raw base file; Device.* read the fully "
                   "written base device (same data)")
    if a.mmap and r.have_cb():
        g.notes.append("--mmap: both cowblock pools opened read-only; ', mmap' = "
                       "Pool.open(mmap=True), reads copied from a mapping of the data file")
    r.run_group(g)
    plain.close()
    batch_calls(r, modes)


def batch_calls(r: Runner, modes: list[tuple[str, Callable[[], Any]]]) -> None:
    """read_blocks per block vs single calls, at the pool's block size and at 4 KiB."""
    if not r.have_cb():
        r.skip("W5 batch (read_blocks): cowblock not importable")
        return
    import numpy as np

    a = r.a
    cb = r.cowblock
    small_path = r.path("pool-4k")
    small_size = min(a.size, 64 * MiB)
    if not os.path.exists(small_path):
        p4 = cb.Pool.create(small_path, size=small_size * 2, block_size=4 * KiB)
        d4 = p4.create_device("base", small_size)
        buf = r.chunk()
        for off in range(0, small_size, len(buf)):
            d4.write(off, buf[: min(len(buf), small_size - off)])
        p4.flush()
        p4.close()
    if a.mmap:
        r.pools["4k"] = cb.Pool.open(small_path, readonly=True)
        r.pools["4k-mmap"] = cb.Pool.open(small_path, readonly=True, mmap=True)
    else:
        r.pools["4k"] = cb.Pool.open(small_path)
    batch_entries: list[Entry] = []
    bpairs: list[tuple[str, str]] = []
    cases = []
    for sfx, get_pool in modes:
        p4 = r.pools["4k-mmap" if sfx else "4k"]
        cases += [(fmt_size(a.block_size), sfx, lambda g=get_pool: g().device("base"),
                   a.block_size, a.size),
                  ("4 KiB", sfx, lambda p4=p4: p4.device("base"), 4 * KiB, small_size)]
    # grouped by block size, so that the two modes of one size run next to each other
    cases.sort(key=lambda c: -c[3])
    for label, sfx, get_dev, bsz, dsize in cases:
        nb = min(dsize // bsz, 16384)
        # a batch fills at most --batch-bytes (1 MiB): bigger destinations fall out of the
        # CPU caches and then the memcpy, not the call, sets the per-block cost
        batch_n = max(1, min(a.batch, a.batch_bytes // bsz, nb))
        nb -= nb % batch_n
        idx = np.array(random.Random(6).sample(range(dsize // bsz), nb), dtype=np.uint64)
        chunks = [idx[i:i + batch_n] for i in range(0, nb, batch_n)]
        # every engine reads into the same batch_n-row array (row i % batch_n), so all pay
        # the same cache footprint for the destination; Device.read allocates by contract
        out = np.empty((batch_n, bsz), dtype=np.uint8)
        rows = [out[i] for i in range(batch_n)]
        work = [(int(b) * bsz, rows[i % batch_n]) for i, b in enumerate(idx)]

        def single(rep: int, get_dev=get_dev, work=work, bsz=bsz) -> float:
            rd = get_dev().read
            with no_gc():
                t0 = time.perf_counter()
                for off, _row in work:
                    rd(off, bsz)
                return (time.perf_counter() - t0) / len(work)

        def single_into(rep: int, get_dev=get_dev, work=work) -> float:
            ri = get_dev().readinto
            with no_gc():
                t0 = time.perf_counter()
                for off, row in work:
                    ri(off, row)
                return (time.perf_counter() - t0) / len(work)

        def batch(rep: int, get_dev=get_dev, chunks=chunks, out=out, nb=nb) -> float:
            rb = get_dev().read_blocks
            with no_gc():
                t0 = time.perf_counter()
                for c in chunks:
                    rb(c, out=out)
                return (time.perf_counter() - t0) / nb

        # pairs compare like with like: single calls and the batch on the same pool/mode
        n1 = f"Device.read, {label} blocks{sfx}"
        n2 = f"Device.readinto, {label} blocks{sfx}"
        n3 = f"Device.read_blocks ({batch_n} per call), {label} blocks{sfx}"
        batch_entries += [Entry(n1, single), Entry(n2, single_into), Entry(n3, batch)]
        bpairs += [(n1, n3), (n2, n3)]
    g2 = Group("W5", "batch call: Device.read_blocks per block vs one call per block "
                     "(random blocks)", "page cache (warm)", batch_entries, bpairs,
               per_op=True, warmup=True)
    r.run_group(g2)
    for k in ("4k", "4k-mmap", "w5", "w5-mmap"):
        if k in r.pools:
            r.pools.pop(k).close()
