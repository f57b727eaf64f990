"""W3, reads through snapshot chains: the whole device read through chains of depth 1, 10,
100, 1000 (qcow2 at 1, 10, 100), sequential (1 MiB) and random (one read per block, in a
permuted order).  Each level of a chain writes a few 4 KiB at random offsets; a depth-1
control holding all the writes of the deepest device isolates the cost of depth alone."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from . import peers
from .results import Entry, Group
from .util import KiB, MiB, fmt_size, no_gc, scattered

if TYPE_CHECKING:
    from .runner import Runner


def run(r: Runner) -> None:
    size, bs = r.a.size, r.a.block_size
    nblk = size // bs
    depths = [d for d in r.a.depths if d >= 1]
    qdepths = [d for d in r.a.qcow2_depths if d >= 1]
    rng = random.Random(3)
    per_level = 3
    level_writes = [[rng.randrange(0, size // (4 * KiB)) * 4 * KiB for _ in range(per_level)]
                    for _ in range(max(depths + qdepths + [1]))]
    pstep, perm = scattered(nblk, nblk, 4, like_random=False)  # a permutation of blocks
    rand_offs = [b * bs for b in perm]
    seq_io = min(MiB, size)
    seq_offs = list(range(0, size, seq_io))
    entries_seq: list[Entry] = []
    entries_rand: list[Entry] = []
    pairs_seq: list[tuple[str, str]] = []
    pairs_rand: list[tuple[str, str]] = []
    buf4 = r.chunk()[:4 * KiB]

    # cowblock chain
    if r.have_cb():
        pool = r.main_pool(False)
        if "chain-1" not in pool.devices():
            r.log(f"building a cowblock snapshot chain of depth {max(depths)}")
            prev = "base"
            for lvl in range(1, max(depths) + 1):
                name = f"chain-{lvl}"
                dev = pool.snapshot(prev, name)
                for off in level_writes[lvl - 1]:
                    dev.write(off, buf4)
                prev = name
            pool.flush()
        maxd = max(depths)
        flat = f"flat-{maxd}"
        if flat not in pool.devices():
            # control: depth 1 holding every write of the depth-maxd device, so that
            # depth alone is compared (partly written blocks cost extra reads at any depth)
            dev = pool.snapshot("base", flat)
            for lvl in range(maxd):
                for off in level_writes[lvl]:
                    dev.write(off, buf4)
            pool.flush()
        flat_label = f"cowblock depth 1, writes of depth {maxd}"
        targets = [("base", "cowblock depth 0")]
        targets += [(f"chain-{d}", f"cowblock depth {d}") for d in depths]
        targets += [(flat, flat_label)]
        for dname, label in targets:

            def seq(rep: int, dname=dname) -> float:
                dev = r.main_pool(False).device(dname)
                mv = memoryview(bytearray(seq_io))
                ri = dev.readinto
                with no_gc():
                    t0 = time.perf_counter()
                    for off in seq_offs:
                        ri(off, mv)
                    return time.perf_counter() - t0

            def rnd(rep: int, dname=dname) -> float:
                dev = r.main_pool(False).device(dname)
                mv = memoryview(bytearray(bs))
                ri = dev.readinto
                with no_gc():
                    t0 = time.perf_counter()
                    for off in rand_offs:
                        ri(off, mv)
                    return time.perf_counter() - t0

            entries_seq.append(Entry(label, seq, note="Device.readinto"))
            entries_rand.append(Entry(label, rnd, note="Device.readinto"))
        for d in depths:
            if d != 1 and 1 in depths:
                pairs_seq.append((f"cowblock depth {d}", "cowblock depth 1"))
                pairs_rand.append((f"cowblock depth {d}", "cowblock depth 1"))
        if maxd > 1:
            pairs_seq.append((f"cowblock depth {maxd}", flat_label))
            pairs_rand.append((f"cowblock depth {maxd}", flat_label))

    # qcow2 chain (extended_l2=off, the qcow2 default), backing = raw base
    q = r.qemu
    base = r.base_raw()
    if q.img and q.io and qdepths:
        qtargets, qflat_label = peers.qcow2_chain(r, base, qdepths, level_writes)
        qmax = max(qdepths)
        if qmax > 1:
            pairs_seq.append((f"qcow2 depth {qmax}", qflat_label))
            pairs_rand.append((f"qcow2 depth {qmax}", qflat_label))
        for img, label in qtargets:
            entries_seq.append(Entry(
                label, peers.qemu_read(q, img, "qcow2", count=len(seq_offs), bufsize=seq_io,
                                       step=seq_io),
                note="qemu-img bench"))
            entries_rand.append(Entry(
                label, peers.qemu_read(q, img, "qcow2", count=nblk, bufsize=bs,
                                       step=pstep * bs),
                note="qemu-img bench"))
            if label != f"qcow2 depth {qdepths[0]}" and label != qflat_label:
                pairs_seq.append((label, f"qcow2 depth {qdepths[0]}"))
                pairs_rand.append((label, f"qcow2 depth {qdepths[0]}"))
        entries_seq.append(Entry(
            "raw file (qemu-img bench)",
            peers.qemu_read(q, base, "raw", count=len(seq_offs), bufsize=seq_io, step=seq_io)))
        entries_rand.append(Entry(
            "raw file (qemu-img bench)",
            peers.qemu_read(q, base, "raw", count=nblk, bufsize=bs, step=pstep * bs)))

    entries_seq.append(Entry("raw file (Python os.preadv)",
                             peers.preadv_loop(base, seq_offs, seq_io)))
    entries_rand.append(Entry("raw file (Python os.preadv)",
                              peers.preadv_loop(base, rand_offs, bs)))
    if r.have_cb():
        pairs_seq.append(("cowblock depth 0", "raw file (Python os.preadv)"))
        pairs_rand.append(("cowblock depth 0", "raw file (Python os.preadv)"))
    g1 = Group("W3", f"sequential reads of the whole {fmt_size(size)} device "
                     f"({len(seq_offs)} x {fmt_size(seq_io)}) through a snapshot chain",
               "page cache (warm)", entries_seq, pairs_seq, warmup=True)
    g1.notes.append(f"each chain level writes {per_level} x 4 KiB at random offsets; "
                    "depth 0 = the base device / raw base file; 'depth 1, writes of depth "
                    "N' = one snapshot holding all the writes of the depth-N device (so "
                    "depth N / that = the cost of depth alone)")
    r.run_group(g1)
    g2 = Group("W3", f"random reads of the whole device ({len(rand_offs)} x {fmt_size(bs)}, "
                     "each block once, scattered order) through a snapshot chain",
               "page cache (warm)", entries_rand, pairs_rand, warmup=True)
    g2.notes.append(f"block order (k * {pstep}) mod {nblk}: a permutation, same for every engine")
    r.run_group(g2)
