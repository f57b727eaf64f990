"""cowblock's RADOS backend against an RBD clone and rados bench, on one bluestore OSD.

Run:  python bench/rados_vs_rbd.py [--base-mib 1024] [--w2-mib 256]

Starts a throwaway single-node cluster (tests/ceph_cluster.py) with one
bluestore OSD on a sparse file, and in the same run:

- W1 copy-up: a fully written base of --base-mib, a fresh snapshot of it,
  then one 4 KiB write into each shared 64 KiB block, in random order, and a
  flush.  RBD: `rbd clone` of a protected snapshot of the base image, then
  `rbd bench` random 4 KiB writes of the same count (16 threads).  Time, and
  the bytes the OSD allocated for it (bluestore_allocated, admin socket).
- W2: 1 MiB sequential writes (--w2-mib) into a fresh snapshot / clone.
- Raw: sequential 1 MiB writes of a fresh cowblock device, against
  `rados bench` writes of 4 MiB objects, 16 in flight.

The OSD shares the machine's cores with the client: figures compare the two
on this machine, they are not a cluster's.
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
POOL = "bench"


def rbd_bench(c, image, io_type, size, total, pattern):
    out = c.cmd("rbd", "-p", POOL, "bench", "--io-type", io_type, "--io-size", str(size),
                "--io-total", str(total), "--io-pattern", pattern, "--io-threads", "16",
                image, timeout=900)
    m = re.search(r"elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)\s+"
                  r"bytes/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError("rbd bench said: " + out[-500:])
    return float(m.group(1)), int(m.group(2))


def measure(c, what, op_bytes, fn):
    a = c.allocated()
    t = time.perf_counter()
    n = fn()
    dt = time.perf_counter() - t
    return {"what": what, "s": dt, "ops": n, "bytes": n * op_bytes,
            "allocated": c.allocated() - a}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-mib", type=int, default=1024)
    ap.add_argument("--w2-mib", type=int, default=256)
    args = ap.parse_args()
    base = args.base_mib * MiB
    nblocks = base // BLOCK
    buf = os.urandom(MiB)
    small = os.urandom(4096)
    rows = []
    with CephCluster(bluestore_bytes=4 * base + (8 << 30)) as c:
        c.create_pool(POOL)
        # ---- cowblock
        url = f"rados://{POOL}/cb?conf={c.conf}"
        with cowblock.Pool.create(url, size=4 * base, block_size=BLOCK) as p:
            d = p.create_device("base", base)

            def fill():
                for i in range(base // MiB):
                    d.write(i * MiB, buf)
                p.flush()
                return base // MiB
            rows.append(measure(c, "cowblock: write the base, 1 MiB sequential", MiB, fill))
            p.snapshot("base", "w1")
            s = p.device("w1")
            order = list(range(nblocks))
            random.Random(1).shuffle(order)

            def w1():
                for b in order:
                    s.write(b * BLOCK + 4096, small)
                p.flush()
                return len(order)
            rows.append(measure(c, "cowblock: W1, 4 KiB into each shared 64 KiB block", 4096, w1))
            p.snapshot("base", "w2")
            s2 = p.device("w2")

            def w2():
                for i in range(args.w2_mib):
                    s2.write(i * MiB, buf)
                p.flush()
                return args.w2_mib
            rows.append(measure(c, "cowblock: W2, 1 MiB sequential into a snapshot", MiB, w2))

            def rd():
                for i in range(base // MiB):
                    d.read(i * MiB, MiB)
                return base // MiB
            rows.append(measure(c, "cowblock: read the base, 1 MiB sequential", MiB, rd))
        # ---- RBD
        c.cmd("rbd", "-p", POOL, "create", "base", "--size", f"{args.base_mib}M")
        rows.append(measure(c, "rbd: write the base, 4 MiB sequential", 4 * MiB, lambda: rbd_bench(
            c, "base", "write", 4 * MiB, base, "seq")[1]))
        c.cmd("rbd", "snap", "create", f"{POOL}/base@s")
        c.cmd("rbd", "snap", "protect", f"{POOL}/base@s")
        c.cmd("rbd", "clone", f"{POOL}/base@s", f"{POOL}/w1")
        c.cmd("rbd", "clone", f"{POOL}/base@s", f"{POOL}/w2")
        rows.append(measure(c, "rbd clone: W1, 4 KiB random, as many writes", 4096, lambda: rbd_bench(
            c, "w1", "write", 4096, nblocks * 4096, "rand")[1]))
        rows.append(measure(c, "rbd clone: W2, 1 MiB sequential", MiB, lambda: rbd_bench(
            c, "w2", "write", MiB, args.w2_mib * MiB, "seq")[1]))
        # ---- rados bench
        out = c.cmd("rados", "-p", POOL, "bench", "10", "write", "-t", "16", "-b",
                    str(4 * MiB), "--no-cleanup", timeout=300)
        bw = re.search(r"Bandwidth \(MB/sec\):\s+([\d.]+)", out)
        out = c.cmd("rados", "-p", POOL, "bench", "10", "seq", "-t", "16", timeout=300)
        rbw = re.search(r"Bandwidth \(MB/sec\):\s+([\d.]+)", out)
        c.cmd("rados", "-p", POOL, "cleanup", timeout=300)
    print(f"{'workload':<52} {'seconds':>8} {'ops/s':>9} {'MiB/s':>7} {'written':>9} "
          f"{'allocated':>10}")
    for r in rows:
        print(f"{r['what']:<52} {r['s']:>8.2f} {r['ops'] / r['s']:>9.0f} "
              f"{r['bytes'] / MiB / r['s']:>7.0f} {r['bytes'] / MiB:>7.1f}Mi "
              f"{r['allocated'] / MiB:>8.1f}Mi")
    print(f"rados bench, 4 MiB objects, 16 in flight: write {bw.group(1) if bw else '?'} MB/s, "
          f"read {rbw.group(1) if rbw else '?'} MB/s")


if __name__ == "__main__":
    main()
