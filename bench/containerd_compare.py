#!/usr/bin/env python3
"""containerd on cowblock against its overlayfs and native snapshotters.

    sudo .venv/bin/python bench/containerd_compare.py [--unpack-mib 200] [--big-mib 1024]

One containerd (temporary config, root and state) with cowblock as a proxy
snapshotter beside its built-in overlayfs and native ones; the same images
for each, in one run:

- unpack: ``ctr images import`` of busybox plus a layer of ``--unpack-mib``
  MiB of files (content ingested once beforehand, so the time is the unpack);
- start: ``ctr run --rm`` of ``true``, start to exit (median of 3);
- copy-up: inside a container, append 4 KiB to a ``--big-mib`` MiB file of
  the image (busybox ``time``), and the bytes the container's snapshot then
  holds (``ctr snapshots usage``);
- space: 10 containers of one image, each writing 1 MiB; the bytes their
  snapshots hold (cowblock also: the pool's ``used`` growth).

Needs root, FUSE, loop devices, containerd, runc, umoci, busybox-static and
grpcio.  Prints a table.  Opt-in: it writes a few GiB and takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from containerd_support import Containerd, Server, cb, force_clean, sh  # noqa: E402

SNAPSHOTTERS = ("cowblock", "overlayfs", "native")


def build(work, name, files):
    """An OCI tarball: busybox, then one layer with ``files`` {path: writer}."""
    oci, bundle = os.path.join(work, f"oci-{name}"), os.path.join(work, f"bundle-{name}")
    sh("umoci", "init", "--layout", oci)
    sh("umoci", "new", "--image", f"{oci}:{name}")
    sh("umoci", "unpack", "--image", f"{oci}:{name}", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "true", "head", "time", "sync", "cat"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{oci}:{name}", bundle)
    for rel, write in files.items():
        path = os.path.join(rootfs, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            write(f)
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{oci}:{name}", bundle, timeout=1800)
    tarball = os.path.join(work, f"{name}.tar")
    sh("tar", "-C", oci, "-cf", tarball, ".")
    shutil.rmtree(bundle)
    shutil.rmtree(oci)
    return tarball


def usage_of(ctrd, snapshotter, key):
    out = ctrd.ctr("snapshots", "--snapshotter", snapshotter, "usage", "-b", key).stdout
    return int(out.splitlines()[1].split()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unpack-mib", type=int, default=200)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--dir", help="work directory (default: a temporary one under /var/tmp)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cowblock-ctrd-bench-", dir=args.dir or "/var/tmp")
    pool_dir = os.path.join(work, "pool")
    cb(pool_dir, "pool", "create", pool_dir, "--size", "20G")
    snap = Server(pool_dir, work, size="4G")
    ctrd = None
    rows = []
    try:
        snap.start()
        chunk = os.urandom(1 << 20)
        files = {f"data/f{n:04d}": (lambda f, n=n: f.write(os.urandom(1 << 20)))
                 for n in range(args.unpack_mib)}
        unpack_tar = build(work, "unpack", files)
        pattern = os.urandom(16 << 10)  # repeats within gzip's window: quick to build
        big_tar = build(work, "big", {"big": lambda f: [f.write(pattern * 64)
                                                       for _ in range(args.big_mib)]})
        del chunk
        ctrd = Containerd(work, snap.address).start()
        for tar, base in ((unpack_tar, "bench/unpack"), (big_tar, "bench/big")):
            ctrd.ctr("images", "import", "--no-unpack", "--base-name", base, tar, timeout=1800)

        # unpack
        unpack = {}
        for s in SNAPSHOTTERS:
            t0 = time.monotonic()
            ctrd.ctr("images", "import", "--snapshotter", s, "--base-name", "bench/unpack",
                     unpack_tar, timeout=1800)
            unpack[s] = time.monotonic() - t0
        rows.append((f"unpack {args.unpack_mib} MiB (s)",) + tuple(f"{unpack[s]:.2f}"
                                                                  for s in SNAPSHOTTERS))
        # start to exit
        start = {}
        for s in SNAPSHOTTERS:
            times = []
            for n in range(3):
                t0 = time.monotonic()
                ctrd.ctr("run", "--rm", "--snapshotter", s, "bench/unpack:unpack", f"t-{s}-{n}",
                         "/bin/true")
                times.append(time.monotonic() - t0)
            start[s] = statistics.median(times)
        rows.append(("ctr run true (s)",) + tuple(f"{start[s]:.2f}" for s in SNAPSHOTTERS))
        # copy-up
        cu_time, cu_bytes = {}, {}
        for s in SNAPSHOTTERS:
            ctrd.ctr("images", "import", "--snapshotter", s, "--base-name", "bench/big", big_tar,
                     timeout=1800)
            out = ctrd.ctr("run", "--snapshotter", s, "bench/big:big", f"cu-{s}", "/bin/sh", "-c",
                           "time sh -c 'head -c 4096 /dev/zero >> /big; sync' 2>&1").stdout
            real = next(l for l in out.splitlines() if l.startswith("real")).split()[1:]
            minutes, seconds = real[0].rstrip("m"), real[1].rstrip("s")
            cu_time[s] = int(minutes) * 60 + float(seconds)
            cu_bytes[s] = usage_of(ctrd, s, f"cu-{s}")
            ctrd.ctr("containers", "rm", f"cu-{s}")
        rows.append((f"append 4 KiB to a {args.big_mib} MiB file (s)",)
                    + tuple(f"{cu_time[s]:.2f}" for s in SNAPSHOTTERS))
        rows.append(("  bytes the container then holds",)
                    + tuple(f"{cu_bytes[s]:,}" for s in SNAPSHOTTERS))
        # space for 10 containers
        space = {}
        used0 = json.loads(cb(pool_dir, "--json", "pool", "info").stdout)["used"]
        for s in SNAPSHOTTERS:
            total = 0
            for n in range(10):
                cid = f"sp-{s}-{n}"
                ctrd.ctr("run", "--snapshotter", s, "bench/unpack:unpack", cid, "/bin/sh", "-c",
                         "head -c 1048576 /dev/urandom > /mine; sync")
                total += usage_of(ctrd, s, cid)
            space[s] = total
        pool_growth = json.loads(cb(pool_dir, "--json", "pool", "info").stdout)["used"] - used0
        for s in SNAPSHOTTERS:
            for n in range(10):
                ctrd.ctr("containers", "rm", f"sp-{s}-{n}")
        rows.append(("10 containers x 1 MiB: snapshot usage",)
                    + tuple(f"{space[s]:,}" for s in SNAPSHOTTERS))
        rows.append(("  cowblock pool 'used' growth", f"{pool_growth:,}", "-", "-"))
    finally:
        if ctrd is not None and ctrd.proc is not None:
            ctrd.stop()
        sh("umount", "-R", os.path.join(work, "state"), check=False)
        snap.stop()
        force_clean(pool_dir)
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  " + "  ".join(f"{s:>14}" for s in SNAPSHOTTERS))
    for r in rows:
        print(f"{r[0]:{width}}  " + "  ".join(f"{c:>14}" for c in r[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
