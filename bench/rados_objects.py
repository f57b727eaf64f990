"""The RADOS backend's object size, measured on a throwaway cluster (tests/ceph_cluster.py).

Run:  python bench/rados_objects.py [--mib 128] [--copyups 1024]

For each object size (64 KiB = one object per 64 KiB block, 1 MiB, 4 MiB)
on the same cluster, same run: sequential 1 MiB writes of a fresh device
and a flush (MiB/s), reading them back (MiB/s), then W1 on a snapshot of
it: one 4 KiB write into each of the first N shared blocks in random order
and a flush (IOPS), and the objects the pool made.  Then ``rados bench``
writes at 4 MiB objects, 16 in flight, for the same cluster's ceiling.
The cluster is one memstore OSD: figures are for comparing object sizes
on this machine, not a disk's.
"""
import argparse
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from ceph_cluster import CephCluster  # noqa: E402

import cowblock  # noqa: E402

MiB = 1 << 20
BLOCK = 64 << 10


def run(cluster, osize, mib, copyups):
    url = f"rados://bench/o{osize}?conf={cluster.conf}&object_size={osize}"
    buf = os.urandom(MiB)
    out = {"object size": osize}
    with cowblock.Pool.create(url, size=4 * mib * MiB, block_size=BLOCK) as p:
        d = p.create_device("base", mib * MiB)
        t = time.perf_counter()
        for i in range(mib):
            d.write(i * MiB, buf)
        p.flush()
        out["write MiB/s"] = mib / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(mib):
            d.read(i * MiB, MiB)
        out["read MiB/s"] = mib / (time.perf_counter() - t)
        s = p.snapshot("base", "snap")
        blocks = list(range(min(copyups, mib * MiB // BLOCK)))
        random.Random(1).shuffle(blocks)
        small = os.urandom(4096)
        t = time.perf_counter()
        for b in blocks:
            s.write(b * BLOCK + 4096, small)
        p.flush()
        out["W1 IOPS"] = len(blocks) / (time.perf_counter() - t)
    listing = cluster.cmd("rados", "-p", "bench", "ls").split()
    out["objects"] = sum(1 for o in listing if o.startswith(f"o{osize}."))
    return out


def rados_bench(cluster):
    """MB/s of 3 s of `rados bench` writes (its objects removed after)."""
    out = cluster.cmd("rados", "-p", "bench", "bench", "3", "write", "-t", "16",
                      "-b", str(4 << 20), "--no-cleanup", timeout=120)
    cluster.cmd("rados", "-p", "bench", "cleanup", timeout=120)
    m = re.search(r"Bandwidth \(MB/sec\):\s+([\d.]+)", out)
    return m.group(1) if m else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=128, help="MiB written per object size")
    ap.add_argument("--copyups", type=int, default=1024, help="W1 writes per object size")
    args = ap.parse_args()
    with CephCluster(memstore_bytes=16 << 30) as cluster:
        cluster.create_pool("bench")
        marks = [rados_bench(cluster)]
        rows = [run(cluster, osize, args.mib, args.copyups)
                for osize in (64 << 10, 1 << 20, 4 << 20)]
        marks.append(rados_bench(cluster))
    print(f"{'object size':>12} {'write MiB/s':>12} {'read MiB/s':>11} {'W1 IOPS':>8} "
          f"{'objects':>8}")
    for r in rows:
        print(f"{r['object size'] >> 10:>10}Ki {r['write MiB/s']:>12.0f} "
              f"{r['read MiB/s']:>11.0f} {r['W1 IOPS']:>8.0f} {r['objects']:>8}")
    print("rados bench write, 4 MiB objects, 16 in flight, before and after: "
          + ", ".join(marks) + " MB/s")


if __name__ == "__main__":
    main()
