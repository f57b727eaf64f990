"""Send/receive streams against their peers, side by side (opt-in: ``pytest
bench/test_stream.py -s``; not part of the default suite).

* incremental: a fully written base and a layer with CHANGE bytes changed in
  scattered 4 KiB writes (one per 64 KiB block); the stream's size against
  the bytes changed, and the time to compute and write it, for a base of
  BASE bytes and for a sparse base of BIG bytes (the same BASE written at
  its start, with the same change, and as much data again spread over the
  rest: a tree over all of it) -- against ``btrfs
  send -p`` of two read-only subvolume snapshots on a loop-mounted btrfs
  holding the same change, and ``qemu-img convert -B`` of a qcow2 overlay
  holding it;
* full: send and receive of the BASE device, against ``cp --sparse=always``
  of a raw file with the same data.

Sizes from the environment: COWBLOCK_BENCH_STREAM_BASE (default 1G),
COWBLOCK_BENCH_STREAM_BIG (64G), COWBLOCK_BENCH_STREAM_CHANGE (10M).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

import pytest

from cowblock.benchmark.util import fmt_size
from cowblock.units import parse_size

BASE = parse_size(os.environ.get("COWBLOCK_BENCH_STREAM_BASE", "1G"))
BIG = parse_size(os.environ.get("COWBLOCK_BENCH_STREAM_BIG", "64G"))
CHANGE = parse_size(os.environ.get("COWBLOCK_BENCH_STREAM_CHANGE", "10M"))
BS = 64 << 10
CHUNK = 4 << 20

RESULTS: list[tuple[str, str, str, str]] = []


def offsets(span, seed=7):
    """CHANGE / 4 KiB offsets, one per distinct 64 KiB block of ``span``."""
    n = CHANGE // 4096
    rnd = random.Random(seed)
    blocks = rnd.sample(range(span // BS), n)
    return sorted(b * BS + rnd.randrange(16) * 4096 for b in blocks)


def fill(write, size, stride=1):
    """Write ``size`` bytes of data, in CHUNK pieces every ``stride`` chunks."""
    rnd = random.Random(1)
    piece = rnd.randbytes(CHUNK)
    for k, off in enumerate(range(0, size * stride, CHUNK * stride)):
        write(off, piece[k % 7:] + piece[:k % 7])


def report(what, size, seconds, note=""):
    RESULTS.append((what, fmt_size(size) if size is not None else "-",
                    f"{seconds * 1e3:.1f} ms" if seconds is not None else "-", note))


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    w = [max(len(r[i]) for r in RESULTS + [("what", "size", "time", "")]) for i in range(4)]
    print()
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(("what", "size", "time", "note"))))
    for r in RESULTS:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@pytest.mark.parametrize("span", [BASE, BIG], ids=["base", "big-sparse"])
def test_incremental_send(tmp_path, cowblock_mod, span):
    pool = cowblock_mod.Pool.create(tmp_path / "p", 3 * BASE + (64 << 20), BS)
    try:
        dev = pool.create_device("base", span)
        fill(dev.write, BASE)
        if span > BASE:  # as much again spread over the rest: a tree over all of it
            stride = (span - BASE) // BASE
            fill(lambda off, b: dev.write(BASE + off, b), BASE, stride)
        pool.snapshot("base", "s0", readonly=True)
        for off in offsets(BASE):  # the same change in both
            dev.write(off, b"\x5a" * 4096)
        pool.snapshot("base", "s1", readonly=True)
        pool.flush()
        s0, s1 = pool.device("s0"), pool.device("s1")
        with open(tmp_path / "inc.stream", "wb") as f:
            res, secs = _time(lambda: s1.send(f, s0, progress=False))
        (_, dsecs) = _time(lambda: s1.delta(s0, 0, 1 << 20))
        over = res["stream_bytes"] / CHANGE - 1
        report(f"cowblock send --from, {fmt_size(span)} base", res["stream_bytes"], secs,
               f"{over:+.2%} over the {fmt_size(CHANGE)} changed; delta alone "
               f"{dsecs * 1e3:.2f} ms")
        assert res["data_bytes"] == CHANGE
        assert over < 0.05
    finally:
        pool.close()


def test_full_send_receive(tmp_path, cowblock_mod):
    p = cowblock_mod.Pool.create(tmp_path / "p", BASE + (64 << 20), BS)
    q = cowblock_mod.Pool.create(tmp_path / "q", BASE + (64 << 20), BS)
    raw = tmp_path / "base.raw"
    try:
        dev = p.create_device("base", BASE)
        fill(dev.write, BASE)
        p.snapshot("base", "s0", readonly=True)
        p.flush()
        path = tmp_path / "full.stream"
        with open(path, "wb") as f:
            res, secs = _time(lambda: p.device("s0").send(f, progress=False))
        report("cowblock send (full)", res["stream_bytes"], secs,
               f"{BASE / secs / 2**20:.0f} MiB/s")
        with open(path, "rb") as f:
            _, secs = _time(lambda: (q.receive("s0", f, progress=False), q.flush()))
        report("cowblock receive (full)", BASE, secs, f"{BASE / secs / 2**20:.0f} MiB/s")
        with open(raw, "wb") as f:
            fill(lambda off, b: (f.seek(off), f.write(b)), BASE)
        _, secs = _time(lambda: subprocess.run(
            ["cp", "--sparse=always", str(raw), str(tmp_path / "copy.raw")], check=True))
        report("cp --sparse=always (raw)", BASE, secs, f"{BASE / secs / 2**20:.0f} MiB/s")
    finally:
        p.close()
        q.close()


def test_qemu_img_convert_backing(tmp_path):
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        pytest.skip("qemu-img/qemu-io not installed (Debian: qemu-utils)")
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        fill(lambda off, b: (f.seek(off), f.write(b)), BASE)
    for cluster in ("64k", "4k"):
        ov = tmp_path / f"ov-{cluster}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        f"cluster_size={cluster}", "-b", str(base), "-F", "raw", str(ov)],
                       check=True)
        cmds = []
        for off in offsets(BASE):
            cmds += ["-c", f"write -P 0x5a {off} 4k"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(ov)], check=True,
                       stdout=subprocess.DEVNULL)
        out = tmp_path / f"out-{cluster}.qcow2"
        _, secs = _time(lambda: subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", "-o", f"cluster_size={cluster}", "-B",
             str(base), "-F", "raw", str(ov), str(out)], check=True))
        size = os.path.getsize(out)
        report(f"qemu-img convert -B ({cluster} clusters)", size, secs,
               f"{size / CHANGE - 1:+.0%} over the change")


def test_btrfs_send_p(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs") or not shutil.which("losetup"):
        pytest.skip("needs root, btrfs-progs and losetup for a loop-mounted btrfs")
    img = tmp_path / "btrfs.img"
    with open(img, "wb") as f:
        f.truncate(BASE * 2 + (512 << 20))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mkfs.btrfs", "-q", str(img)], capture_output=True)
    if r.returncode:
        pytest.skip(f"mkfs.btrfs failed: {r.stderr.decode().strip()}")
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True,
                          text=True)
    if loop.returncode:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    mounted = False
    try:
        r = subprocess.run(["mount", "-t", "btrfs", dev, str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount btrfs: {r.stderr.decode().strip()}")
        mounted = True
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(mnt / "vol")], check=True)
        data = mnt / "vol" / "disk.raw"
        with open(data, "wb") as f:
            fill(lambda off, b: (f.seek(off), f.write(b)), BASE)
        os.sync()
        subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(mnt / "vol"),
                        str(mnt / "s0")], check=True)
        fd = os.open(data, os.O_WRONLY)
        try:
            for off in offsets(BASE):
                os.pwrite(fd, b"\x5a" * 4096, off)
        finally:
            os.close(fd)
        os.sync()
        subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(mnt / "vol"),
                        str(mnt / "s1")], check=True)
        out = tmp_path / "btrfs.stream"
        _, secs = _time(lambda: subprocess.run(
            ["btrfs", "-q", "send", "-p", str(mnt / "s0"), "-f", str(out), str(mnt / "s1")],
            check=True))
        size = os.path.getsize(out)
        report("btrfs send -p", size, secs, f"{size / CHANGE - 1:+.2%} over the change")
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)
