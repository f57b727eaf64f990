"""cowblock's RADOS backend against an RBD clone and rados bench, on one bluestore OSD.

Run:  python bench/rados_vs_rbd.py [--base-mib 1024] [--w2-mib 256] [--reps 3]

Starts a throwaway single-node cluster (tests/ceph_cluster.py) with one
bluestore OSD on a sparse file and, in the same run, repeats --reps rounds;
each round runs its three parts in a rotated order (so no peer always goes
first on a fresh or a warm OSD), and the table gives each figure's median
with every run beside it, and the load average around the rounds:

- cowblock on RADOS (4 MiB objects, 64 KiB blocks), a fresh pool a round:
  the base of --base-mib written with 1 MiB sequential writes and a flush;
  read back with 1 MiB reads one at a time (queue depth 1) and with 16 MiB
  reads (16 ops of 1 MiB in flight); a snapshot of it (and the commit that
  makes it durable); W1: one 4 KiB write into each shared 64 KiB block of
  that snapshot, in random order, and a flush; W2: 1 MiB sequential writes
  (--w2-mib) into another fresh snapshot; then the pool opened again,
  for writing (taking the lock) and read-only.  Bytes the OSD allocated
  for W1 and W2 come from its bluestore_allocated counter (admin socket).
- RBD: a fully written base image of --base-mib (once), a protected
  snapshot of it; each round `rbd clone`s it twice and runs `rbd bench`
  with W1's pattern (random 4 KiB writes, as many as cowblock's, 16
  threads) and W2's (1 MiB sequential).
- `rados bench`: writes then sequential reads, 16 in flight, at 4 MiB
  (cowblock's object size) and at 1 MiB (cowblock's op size here).

Snapshot and open times are set against a pool in a directory (the file
backend) holding the same devices, measured in each round too.

The OSD shares the machine's cores with the client: figures compare peers on
this machine, they are not a cluster's.  `rados bench` reports 2^20-byte
megabytes ("MB/sec"), the MiB/s of the table.
"""
import argparse
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from ceph_cluster import CephCluster  # noqa: E402

import cowblock  # noqa: E402

MiB = 1 << 20
BLOCK = 64 << 10
POOL = "bench"


class Results:
    """Every run of every figure, kept in the order first seen."""

    def __init__(self):
        self.runs = {}
        self.units = {}

    def add(self, name, value, unit):
        self.runs.setdefault(name, []).append(value)
        self.units[name] = unit

    def median(self, name):
        return statistics.median(self.runs[name])

    def print(self):
        width = max(len(n) for n in self.runs)
        print(f"{'figure':<{width}} {'median':>10}  unit      runs")
        for name, vals in self.runs.items():
            unit = self.units[name]
            fmt = "%.1f" if unit in ("ms", "MiB") else "%.0f"
            print(f"{name:<{width}} {fmt % self.median(name):>10}  {unit:<9} "
                  + " ".join(fmt % v for v in vals))


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rbd_bench(c, image, io_type, size, total, pattern):
    """Seconds and ops of one `rbd bench` run (from its own ops/sec)."""
    out = c.cmd("rbd", "-p", POOL, "bench", "--io-type", io_type, "--io-size", str(size),
                "--io-total", str(total), "--io-pattern", pattern, "--io-threads", "16",
                image, timeout=900)
    m = re.search(r"elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)\s+"
                  r"bytes/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError("rbd bench said: " + out[-500:])
    ops, rate = int(m.group(2)), float(m.group(3))
    return (ops / rate if rate else float(m.group(1))), ops  # its "elapsed" is whole seconds


def rados_bench(c, kind, size, seconds):
    """MiB/s of `rados bench` (write leaves its objects for seq)."""
    extra = ["-b", str(size), "--no-cleanup"] if kind == "write" else []
    out = c.cmd("rados", "-p", POOL, "bench", str(seconds), kind, "-t", "16", *extra,
                timeout=300)
    m = re.search(r"Bandwidth \(MB/sec\):\s+([\d.]+)", out)
    if not m:
        raise RuntimeError("rados bench said: " + out[-500:])
    return float(m.group(1))


def copy_ups(p, name, order, small):
    """W1 on device `name`: 4 KiB into each block of `order`, and a flush."""
    s = p.device(name)
    for b in order:
        s.write(b * BLOCK + 4096, small)
    p.flush()


def seq_write(p, name, mib, buf):
    d = p.device(name)
    for i in range(mib):
        d.write(i * MiB, buf)
    p.flush()


def seq_read(d, mib, per_call):
    buf = bytearray(per_call * MiB)
    for i in range(0, mib, per_call):
        d.readinto(i * MiB, buf)


def snapshot_and_open(res, label, location, name):
    """Time a snapshot (and the commit that makes it durable), and opens."""
    with cowblock.Pool.open(location) as p:
        res.add(f"{label}: snapshot of the base + flush", 1e3 * timed(
            lambda: (p.snapshot("base", name), p.flush())), "ms")
    res.add(f"{label}: open for writing", 1e3 * timed(
        lambda: cowblock.Pool.open(location).close()), "ms")
    res.add(f"{label}: open read-only", 1e3 * timed(
        lambda: cowblock.Pool.open(location, readonly=True).close()), "ms")
    with cowblock.Pool.open(location) as p:
        p.delete(name)


def cowblock_round(c, res, args, rnd, buf, small, order):
    url = f"rados://{POOL}/cb{rnd}?conf={c.conf}"
    base_mib = args.base_mib
    with cowblock.Pool.create(url, size=4 * base_mib * MiB, block_size=BLOCK) as p:
        d = p.create_device("base", base_mib * MiB)
        res.add("cowblock: 1 MiB sequential writes of a fresh device", base_mib / timed(
            lambda: seq_write(p, "base", base_mib, buf)), "MiB/s")
        res.add("cowblock: 1 MiB sequential reads, one at a time", base_mib / timed(
            lambda: seq_read(d, base_mib, 1)), "MiB/s")
        res.add("cowblock: 16 MiB sequential reads (16 x 1 MiB in flight)", base_mib / timed(
            lambda: seq_read(d, base_mib, 16)), "MiB/s")
        res.add("cowblock: snapshot of the base + flush", 1e3 * timed(
            lambda: (p.snapshot("base", "w1"), p.flush())), "ms")
        a = c.allocated()
        res.add("cowblock: W1 copy-up", len(order) / timed(
            lambda: copy_ups(p, "w1", order, small)), "IOPS")
        res.add("cowblock: W1 bytes allocated", (c.allocated() - a) / MiB, "MiB")
        p.snapshot("base", "w2")
        a = c.allocated()
        res.add("cowblock: W2 1 MiB sequential into a snapshot", args.w2_mib / timed(
            lambda: seq_write(p, "w2", args.w2_mib, buf)), "MiB/s")
        res.add("cowblock: W2 bytes allocated", (c.allocated() - a) / MiB, "MiB")
    res.add("cowblock: open for writing", 1e3 * timed(
        lambda: cowblock.Pool.open(url).close()), "ms")
    res.add("cowblock: open read-only", 1e3 * timed(
        lambda: cowblock.Pool.open(url, readonly=True).close()), "ms")
    with cowblock.Pool.open(url) as p:           # give the OSD its space back
        for name in p.devices():
            p.delete(name)


def rbd_round(c, res, args, rnd, nwrites):
    w1, w2 = f"w1-{rnd}", f"w2-{rnd}"
    c.cmd("rbd", "clone", f"{POOL}/base@s", f"{POOL}/{w1}")
    c.cmd("rbd", "clone", f"{POOL}/base@s", f"{POOL}/{w2}")
    a = c.allocated()
    s, n = rbd_bench(c, w1, "write", 4096, nwrites * 4096, "rand")
    res.add("rbd clone: W1 4 KiB random writes", n / s, "IOPS")
    res.add("rbd clone: W1 bytes allocated", (c.allocated() - a) / MiB, "MiB")
    a = c.allocated()
    s, n = rbd_bench(c, w2, "write", MiB, args.w2_mib * MiB, "seq")
    res.add("rbd clone: W2 1 MiB sequential", n / s, "MiB/s")
    res.add("rbd clone: W2 bytes allocated", (c.allocated() - a) / MiB, "MiB")
    for img in (w1, w2):
        c.cmd("rbd", "rm", f"{POOL}/{img}", timeout=300)


def rados_round(c, res, args):
    for size, label in ((4 * MiB, "4 MiB"), (MiB, "1 MiB")):
        res.add(f"rados bench write {label}, 16 in flight",
                rados_bench(c, "write", size, args.bench_seconds), "MiB/s")
        res.add(f"rados bench seq {label}, 16 in flight",
                rados_bench(c, "seq", size, args.bench_seconds), "MiB/s")
        c.cmd("rados", "-p", POOL, "cleanup", timeout=300)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-mib", type=int, default=1024)
    ap.add_argument("--w2-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3, help="rounds (medians over them)")
    ap.add_argument("--bench-seconds", type=int, default=3, help="of each rados bench run")
    args = ap.parse_args()
    base = args.base_mib * MiB
    nblocks = base // BLOCK
    buf = os.urandom(MiB)
    small = os.urandom(4096)
    order = list(range(nblocks))
    random.Random(1).shuffle(order)
    res = Results()
    loads = [os.getloadavg()[0]]
    tmp = tempfile.mkdtemp(prefix="cowblock-bench-")
    try:
        # the file backend's pool: the same devices (base, W1 and W2 done)
        fpool = os.path.join(tmp, "pool")
        with cowblock.Pool.create(fpool, size=4 * base, block_size=BLOCK) as p:
            p.create_device("base", base)
            seq_write(p, "base", args.base_mib, buf)
            p.snapshot("base", "w1")
            copy_ups(p, "w1", order, small)
            p.snapshot("base", "w2")
            seq_write(p, "w2", args.w2_mib, buf)
        # rounds clean up after themselves: the OSD holds the RBD base and one
        # round's objects at a time
        with CephCluster(bluestore_bytes=4 * base + 2 * args.w2_mib * MiB + (8 << 30)) as c:
            c.create_pool(POOL)
            c.cmd("rbd", "-p", POOL, "create", "base", "--size", f"{args.base_mib}M")
            rbd_bench(c, "base", "write", 4 * MiB, base, "seq")
            c.cmd("rbd", "snap", "create", f"{POOL}/base@s")
            c.cmd("rbd", "snap", "protect", f"{POOL}/base@s")
            parts = [
                lambda r: cowblock_round(c, res, args, r, buf, small, order),
                lambda r: rbd_round(c, res, args, r, nblocks),
                lambda r: rados_round(c, res, args),
            ]
            for r in range(args.reps):
                for i in range(len(parts)):
                    parts[(r + i) % len(parts)](r)
                snapshot_and_open(res, "file backend", fpool, f"s{r}")
                loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.print()

    def ratio(a, b):
        return 100 * res.median(a) / res.median(b)
    print(f"cowblock writes against rados bench write: "
          f"{ratio('cowblock: 1 MiB sequential writes of a fresh device', 'rados bench write 4 MiB, 16 in flight'):.0f}% "
          f"(4 MiB), {ratio('cowblock: 1 MiB sequential writes of a fresh device', 'rados bench write 1 MiB, 16 in flight'):.0f}% (1 MiB)")
    print(f"cowblock 16 MiB reads against rados bench seq: "
          f"{ratio('cowblock: 16 MiB sequential reads (16 x 1 MiB in flight)', 'rados bench seq 4 MiB, 16 in flight'):.0f}% "
          f"(4 MiB), {ratio('cowblock: 16 MiB sequential reads (16 x 1 MiB in flight)', 'rados bench seq 1 MiB, 16 in flight'):.0f}% (1 MiB)")
    print(f"W1: cowblock {res.median('cowblock: W1 copy-up') / res.median('rbd clone: W1 4 KiB random writes'):.1f}x "
          f"the IOPS of the RBD clone; allocated {res.median('cowblock: W1 bytes allocated') / (nblocks * 4096 / MiB):.2f}x "
          f"(RBD {res.median('rbd clone: W1 bytes allocated') / (nblocks * 4096 / MiB):.0f}x) the bytes written")
    print("load average (1 min) before and after each round: "
          + ", ".join("%.1f" % x for x in loads))


if __name__ == "__main__":
    main()
