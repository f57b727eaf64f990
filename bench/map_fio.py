#!/usr/bin/env python3
"""ext4 on a mapped cowblock device against ext4 on a loop device over a raw file.

    sudo .venv/bin/python bench/map_fio.py [--size 2G] [--runtime 5] [--dir DIR]

Both file systems are made the same way (mkfs.ext4 on the block device),
on the same file system underneath, and run the same fio jobs one after
the other in one run: sequential 1 MiB write and read, random 4 KiB write
and read, O_DIRECT, libaio at queue depth 16, on a file of half the
device.  Two peers over a raw file: loop with --direct-io=on (reads and
writes go to the disk under it) and with it off (the raw file's page cache,
as cowblock's data file has).  Needs root, /dev/fuse, loop devices and
fio.  Prints a table (MiB/s, IOPS, peer / cowblock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from cowblock.mapping import mapping_unavailable  # noqa: E402
from cowblock.units import parse_size  # noqa: E402

JOBS = [("seq write 1M", "write", "1M"), ("seq read 1M", "read", "1M"),
        ("rand write 4K", "randwrite", "4k"), ("rand read 4K", "randread", "4k")]


def run(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def cowblock(pool, *argv):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return run(sys.executable, "-m", "cowblock", "--pool", pool, *argv, env=env).stdout


def fio(directory, rw, bs, size, runtime):
    out = run("fio", "--name=job", f"--directory={directory}", f"--rw={rw}", f"--bs={bs}",
              f"--size={size}", "--direct=1", "--ioengine=libaio", "--iodepth=16",
              f"--runtime={runtime}", "--time_based", "--ramp_time=1", "--group_reporting",
              "--output-format=json", "--filename=fio.dat").stdout
    job = json.loads(out)["jobs"][0]
    part = job["read"] if "read" in rw else job["write"]
    return part["bw_bytes"] / 2**20, part["iops"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G", help="device size (default 2G)")
    ap.add_argument("--runtime", type=int, default=5, help="seconds per job (default 5)")
    ap.add_argument("--dir", default=None, help="where the pool and the raw file go")
    args = ap.parse_args(argv)
    why = mapping_unavailable() or (None if shutil.which("fio") else "fio is not installed")
    if why:
        print(f"map_fio: {why}", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    fsize = f"{size // 2 // 2**20}M"
    work = tempfile.mkdtemp(prefix="cowblock-mapfio-", dir=args.dir)
    pool = os.path.join(work, "pool")
    raw = os.path.join(work, "raw.img")
    mounts, loops, mapped = [], [], False
    results = {}
    try:
        cowblock(pool, "pool", "create", "--size", str(size * 2))
        cowblock(pool, "device", "create", "bench", str(size))
        dev = cowblock(pool, "device", "map", "bench").strip()
        mapped = True
        targets = [("cowblock", dev)]
        for label, dio in (("raw dio", "on"), ("raw cached", "off")):
            path = f"{raw}.{dio}"
            with open(path, "wb") as f:
                f.truncate(size)
            lo = run("losetup", "--find", "--show", f"--direct-io={dio}", path).stdout.strip()
            loops.append(lo)
            targets.append((label, lo))
        for label, blk in targets:
            run("mkfs.ext4", "-q", "-F", blk)
            mnt = os.path.join(work, f"mnt-{label.replace(' ', '-')}")
            os.mkdir(mnt)
            run("mount", blk, mnt)
            mounts.append(mnt)
        for name, rw, bs in JOBS:  # both targets per job, back to back
            for (label, _), mnt in zip(targets, mounts):
                results[(name, label)] = fio(mnt, rw, bs, fsize, args.runtime)
    finally:
        for mnt in mounts:
            subprocess.run(["umount", mnt], capture_output=True)
        for lo in loops:
            subprocess.run(["losetup", "--detach", lo], capture_output=True)
        if mapped:
            subprocess.run([sys.executable, "-m", "cowblock", "--pool", pool, "device",
                            "unmap", "bench"], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        shutil.rmtree(work, ignore_errors=True)
    labels = [label for label, _ in targets]
    print(f"ext4, fio O_DIRECT libaio QD16, {fsize} file, {args.runtime} s per job; "
          f"MiB/s (IOPS); last columns: peer / cowblock")
    print(f"{'job':<14}" + "".join(f"{l:>20}" for l in labels)
          + "".join(f"{l + ' /cb':>16}" for l in labels[1:]))
    for name, _, _ in JOBS:
        cells = [results[(name, l)] for l in labels]
        cb_bw = cells[0][0]
        print(f"{name:<14}" + "".join(f"{bw:>10.0f} ({io:>7.0f})" for bw, io in cells)
              + "".join(f"{bw / cb_bw if cb_bw else float('inf'):>15.2f}x" for bw, _ in cells[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
