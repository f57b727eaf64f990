"""Seed corpus for fuzz/fuzz_open: metadata files of small real pools of several shapes.

    python fuzz/make_corpus.py [OUTDIR]      (default: fuzz/seeds)

Each seed is the ``meta`` file of a pool captured right after a commit (while the pool is
still open, so a free log written by that commit is kept; ``close()`` would clear it).  The
fuzz target supplies a sparse data file of the size the superblock asks for, so the data
itself is not part of a seed.  The external origin's image lives in fuzz/work/ so the path
recorded in the seed exists when the fuzzer runs from the same checkout.
"""
import os
import shutil
import sys
import tempfile

import cowblock

KiB = 1024
MiB = 1024 * KiB
HERE = os.path.dirname(os.path.abspath(__file__))


def capture(pool, out, name):
    pool.flush()
    with open(os.path.join(pool.path, "meta"), "rb") as f:
        raw = f.read()
    with open(os.path.join(out, name), "wb") as f:
        f.write(raw)
    return len(raw)


def shapes(tmp, out):
    n = 0

    def new(name, size=16 * MiB, bs=8 * KiB):
        nonlocal n
        n += 1
        return cowblock.Pool.create(os.path.join(tmp, f"{n}-{name}"), size=size, block_size=bs)

    with new("empty", bs=4 * KiB) as p:
        capture(p, out, "empty-gen1")
        p.create_device("a", 64 * KiB)
        capture(p, out, "one-empty-device")

    with new("snapshots", bs=16 * KiB) as p:
        base = p.create_device("base", 4 * MiB)  # 256 blocks: interior node + leaves
        base.write(0, os.urandom(1 * MiB))
        base.write(3 * MiB + 100, b"x" * 5000)
        capture(p, out, "base")
        p.snapshot("base", "ro", readonly=True)
        rw = p.snapshot("base", "rw")
        rw.write(4096 + 7, b"copy-up" * 200)  # partial: an entry with an origin
        rw.write(64 * KiB, os.urandom(32 * KiB))
        p.snapshot("rw", "rw-of-rw")
        capture(p, out, "snapshots")

    ext_dir = os.path.join(HERE, "work")
    os.makedirs(ext_dir, exist_ok=True)
    ext_file = os.path.join(ext_dir, "origin.img")
    with open(ext_file, "wb") as f:
        f.write(os.urandom(100 * KiB + 512))
    with new("external") as p:
        e = p.create_device("layer", None, external=ext_file)
        e.write(8 * KiB + 10, b"e" * 3000)
        e.discard(16 * KiB, 8 * KiB)  # a zero entry over the origin
        p.snapshot("layer", "container")
        capture(p, out, "external-origin")

    with new("deleted") as p:
        for i in range(4):
            p.create_device(f"d{i}", 256 * KiB).write(0, os.urandom(256 * KiB))
        capture(p, out, "before-delete")
        p.delete("d1")
        p.delete("d3")
        capture(p, out, "free-log")  # this commit's free log names d1's and d3's blocks

    with new("free-log-2-pages") as p:
        keep = p.create_device("keep", 4 * MiB)
        tmp_dev = p.create_device("tmp", 4 * MiB)
        for i in range(270):
            tmp_dev.write(i * 8 * KiB, b"t")
            keep.write(i * 8 * KiB, b"k")
        capture(p, out, "interleaved")
        p.delete("tmp")
        capture(p, out, "free-log-two-pages")

    with new("deep", size=8 * MiB, bs=4 * KiB) as p:
        d = p.create_device("huge", 1 << 40)  # depth 3
        for off in (0, 1 << 30, (1 << 40) - 4096):
            d.write(off, b"h" * 4096)
        capture(p, out, "deep-tree")

    with new("many-devices", size=4 * MiB, bs=4 * KiB) as p:
        for i in range(40):
            p.create_device(f"dev-{i:02}-{'n' * (i % 7)}", 4 * KiB * (1 + i))
        p.delete("dev-05-nnnnn")
        capture(p, out, "three-devtab-pages")

    with new("big-blocks", size=32 * MiB, bs=1 * MiB) as p:
        a = p.create_device("a", 8 * MiB)
        a.write(0, os.urandom(2 * MiB))
        p.snapshot("a", "s")
        a.write(100 * KiB, b"z" * 9000)  # 64 sub-blocks per block
        capture(p, out, "one-mib-blocks")

    with new("history") as p:
        a = p.create_device("a", 1 * MiB)
        for g in range(6):
            a.write(g * 64 * KiB, os.urandom(40 * KiB))
            p.snapshot("a", f"s{g}", readonly=bool(g % 2))
            if g % 3 == 2:
                p.delete(f"s{g - 1}")
            p.flush()
        capture(p, out, "many-generations")


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(HERE, "seeds")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="cowblock-corpus-")
    try:
        shapes(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(os.listdir(out))
    total = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    print(f"{len(files)} seeds in {out} ({total // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
