"""Pools opened with ``mmap=True`` (CB_OPEN_MMAP): reads of the data file come from a read-only
shared mapping of it.  They must read exactly what the pread path reads -- across writes,
copy-ups, discards, snapshots, deletes, punched (freed) blocks reused by later writes, external
origins and read-only opens -- and the fast paths of Device.read/readinto/read_blocks must
raise exactly the errors of the full checks."""

import os
import random
import threading

import numpy as np
import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
Inv = cowblock.InvalidArgumentError


def data_mapped(pool_dir):
    """Is the pool's data file mapped into this process (read-only, shared)?"""
    data = os.path.realpath(os.path.join(pool_dir, "data"))
    with open("/proc/self/maps") as f:
        return any(line.split()[1] == "r--s" and line.rstrip().endswith(" " + data)
                   for line in f)


needs_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")


# --------------------------------------------------------------------------- the mapping


@needs_maps
@pytest.mark.parametrize("bs", [4 * KiB, 64 * KiB])
def test_create_and_open_map_the_data_file(tmp_path, bs):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=16 * MiB, block_size=bs, mmap=True) as p:
        assert data_mapped(path)  # created empty, mapped once truncated to its size
        d = p.create_device("d", MiB)
        d.write(bs - 2, b"abcd")
        assert d.read(bs - 4, 8) == b"\0\0abcd\0\0"
    assert not data_mapped(path)  # close unmaps
    with cowblock.Pool.open(path) as p:
        assert not data_mapped(path)  # opt-in only
        assert p.device("d").read(bs - 2, 4) == b"abcd"
    with cowblock.Pool.open(path, readonly=True, mmap=True) as p:
        assert data_mapped(path)
        assert p.device("d").read(bs - 2, 4) == b"abcd"
        with pytest.raises(cowblock.ReadOnlyError):
            p.device("d").write(0, b"x")
    assert not data_mapped(path)


def test_mmap_and_direct_exclude_each_other(tmp_path):
    with pytest.raises(Inv):
        cowblock.Pool.create(tmp_path / "p", size=16 * MiB, direct=True, mmap=True)
    assert not (tmp_path / "p" / "meta").exists()
    cowblock.Pool.create(tmp_path / "p", size=16 * MiB).close()
    with pytest.raises(Inv):
        cowblock.Pool.open(tmp_path / "p", direct=True, mmap=True)
    from cowblock._lowlevel import ffi, lib

    out = ffi.new("cb_pool **")
    both = lib.CB_OPEN_DIRECT | lib.CB_OPEN_MMAP
    assert lib.cb_pool_open(os.fsencode(tmp_path / "p"), both, out) == lib.CB_EINVAL
    assert lib.cb_pool_create(os.fsencode(tmp_path / "q"), 16 * MiB, 65536, both, out) == \
        lib.CB_EINVAL


# --------------------------------------------------------------------------- same bytes


class Twin:
    """The same operations on a plain pool and an mmap pool, and a model of every device."""

    def __init__(self, tmp_path, bs, size, ext_path):
        self.paths = (tmp_path / "plain", tmp_path / "mmap")
        self.pools = [cowblock.Pool.create(self.paths[0], size=size, block_size=bs),
                      cowblock.Pool.create(self.paths[1], size=size, block_size=bs, mmap=True)]
        self.model = {}
        self.ext_path = ext_path
        self.bs = bs

    def create(self, name, size, external=False):
        for p in self.pools:
            if external:
                p.create_device(name, size, external=self.ext_path)
            else:
                p.create_device(name, size)
        if external:
            raw = open(self.ext_path, "rb").read()[:size]
            self.model[name] = bytearray(raw + bytes(size - len(raw)))
        else:
            self.model[name] = bytearray(size)

    def snapshot(self, src, name):
        for p in self.pools:
            p.snapshot(src, name)
        self.model[name] = bytearray(self.model[src])

    def delete(self, name):
        for p in self.pools:
            p.delete(name)
        del self.model[name]

    def write(self, name, off, data):
        for p in self.pools:
            p.device(name).write(off, data)
        self.model[name][off:off + len(data)] = data

    def discard(self, name, off, length):
        for p in self.pools:
            p.device(name).discard(off, length)
        self.model[name][off:off + length] = bytes(length)

    def flush(self):
        for p in self.pools:
            p.flush()

    def check_reads(self, rng, pools=None):
        pools = pools or self.pools
        for name, want in self.model.items():
            size = len(want)
            devs = [p.device(name) for p in pools]
            assert [d.read(0, size) for d in devs] == [bytes(want)] * len(devs), name
            for _ in range(8):
                off = rng.randrange(size)
                n = rng.randrange(min(size - off, 3 * self.bs) + 1)
                for d in devs:
                    assert d.read(off, n) == want[off:off + n], (name, off, n)
                    buf = bytearray(n)
                    assert d.readinto(off, buf) == n and buf == want[off:off + n]
            whole = size // self.bs
            if whole:
                idx = np.array([rng.randrange(whole) for _ in range(6)], dtype=np.uint64)
                rows = [bytes(want[int(i) * self.bs:(int(i) + 1) * self.bs]) for i in idx]
                for d in devs:
                    got = d.read_blocks(idx)
                    assert [got[k].tobytes() for k in range(len(idx))] == rows, name

    def close(self):
        for p in self.pools:
            p.close()


@pytest.mark.parametrize("bs,seed", [(4 * KiB, 1), (64 * KiB, 2), (256 * KiB, 3)])
def test_mmap_reads_what_pread_reads(tmp_path, bs, seed):
    rng = random.Random(seed)
    ext = tmp_path / "external.raw"
    ext.write_bytes(rng.randbytes(3 * bs + 1000))
    # a small pool, so that discarded and punched blocks are soon handed out again
    t = Twin(tmp_path, bs, 48 * bs, str(ext))
    try:
        t.create("base", 8 * bs)
        t.create("ext", 5 * bs, external=True)
        names = ["base"]
        for step in range(160):
            op = rng.random()
            name = rng.choice(names + ["ext"])
            size = len(t.model[name])
            if op < 0.55:
                off = rng.randrange(size)
                n = rng.choice([1, 512, 4096, bs, bs + 4096, 2 * bs])
                n = min(n, size - off)
                try:
                    t.write(name, off, rng.randbytes(n))
                except cowblock.PoolFullError:  # all or nothing: nothing changed
                    t.flush()  # frees what deletes and discards gave back
            elif op < 0.75:
                off = rng.randrange(size)
                try:
                    t.discard(name, off, rng.randrange(size - off + 1))
                except cowblock.PoolFullError:  # zeroing a shared partial block copies up
                    t.flush()
            elif op < 0.85 and len(names) < 6:
                new = f"s{step}"
                t.snapshot(rng.choice(names + ["ext"]), new)
                names.append(new)
            elif op < 0.92 and len(names) > 1:
                victim = rng.choice(names[1:])
                t.delete(victim)
                names.remove(victim)
            else:
                t.flush()  # commits; freed blocks are punched out of the data file
            if step % 20 == 0:
                t.check_reads(rng)
        t.check_reads(rng)
        for p in t.pools:
            assert p.check().errors == 0
        stats = [p.stats() for p in t.pools]
        assert stats[0]["punched_blocks"] > 0  # the punch path really ran
        assert stats[0]["punched_blocks"] == stats[1]["punched_blocks"]
    finally:
        t.close()
    # reopened read-only, mapped and not, at the same time (shared locks)
    p1 = cowblock.Pool.open(t.paths[1], readonly=True)
    p2 = cowblock.Pool.open(t.paths[1], readonly=True, mmap=True)
    try:
        t.check_reads(rng, pools=[p1, p2])
    finally:
        p1.close()
        p2.close()


def test_mapping_sees_writes_made_after_open(tmp_path):
    """The mapping shares the page cache with pwrite: no stale read, even for a block that
    was freed, punched out (a hole) and written again."""
    bs = 64 * KiB
    with cowblock.Pool.create(tmp_path / "p", size=2 * bs, block_size=bs, mmap=True) as p:
        a = p.create_device("a", 2 * bs)
        a.write(0, b"\x11" * (2 * bs))
        assert a.read(bs - 2, 4) == b"\x11" * 4
        p.delete("a")
        p.flush()  # both blocks free and punched: the data file is all hole
        assert p.stats()["data_bytes_on_disk"] == 0
        b = p.create_device("b", 2 * bs)
        assert b.read(0, 2 * bs) == bytes(2 * bs)
        b.write(100, b"new")  # reuses a punched block
        assert b.read(98, 7) == b"\0\0new\0\0"
        assert b.read_blocks(np.array([0], dtype=np.uint64))[0, 100:103].tobytes() == b"new"


def test_threads_read_whole_writes_through_the_mapping(tmp_path):
    """Readers (each with its own scratch buffer) never see a torn 4 KiB write."""
    bs = 64 * KiB
    with cowblock.Pool.create(tmp_path / "p", size=64 * bs, block_size=bs, mmap=True) as p:
        d = p.create_device("d", 8 * bs)
        stop = threading.Event()
        errors = []

        def writer():
            rng = random.Random(9)
            k = 0
            while not stop.is_set():
                k = k % 255 + 1
                d.write(rng.randrange(8 * bs // 4096) * 4096, bytes([k]) * 4096)

        def reader(seed):
            rng = random.Random(seed)
            buf = bytearray(4096)
            for _ in range(3000):
                off = rng.randrange(8 * bs // 4096) * 4096
                for got in (d.read(off, 4096), (d.readinto(off, buf), bytes(buf))[1]):
                    if got.count(got[0]) != 4096:
                        errors.append(off)
                        return

        threads = [threading.Thread(target=writer)] + \
            [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for th in threads:
            th.start()
        for th in threads[1:]:
            th.join()
        stop.set()
        threads[0].join()
        assert not errors


# --------------------------------------------------------------------------- fast paths


@pytest.fixture(params=[False, True], ids=["pread", "mmap"])
def dev(request, pool_path):
    with cowblock.Pool.create(pool_path, size=16 * MiB, block_size=64 * KiB,
                              mmap=request.param) as p:
        d = p.create_device("d", MiB)
        d.write(0, b"\x5a" * MiB)
        yield d


def test_fast_paths_accept_what_they_did(dev):
    assert dev.read(np.int64(4), np.uint16(3)) == b"\x5a" * 3  # any integer type
    assert dev.read(MiB, 0) == b""
    assert dev.read(MiB - 1, 1) == b"\x5a"
    big = dev.read(0, MiB)  # more than the per-thread scratch
    assert big == b"\x5a" * MiB and type(big) is bytes
    assert type(dev.read(0, 16)) is bytes
    buf = bytearray(10)
    assert dev.readinto(np.uint32(MiB - 10), buf) == 10 and buf == b"\x5a" * 10
    assert dev.readinto(0, bytearray()) == 0
    idx = np.array([15, 0], dtype=np.uint64)
    assert dev.read_blocks(idx).shape == (2, 64 * KiB)
    assert dev.read_blocks(np.arange(16, dtype=np.uint64)[::-2]).shape == (8, 64 * KiB)


@pytest.mark.parametrize("off,length", [(-1, 1), (0, -1), (MiB, 1), (1, MiB), (2**64, 1),
                                        (0, 2**64), (2**63, 2**63), (True, 1), (0, False),
                                        (1.0, 1), (0, 2.0), ("0", 1)])
def test_read_fast_path_errors(dev, off, length):
    with pytest.raises(Inv):
        dev.read(off, length)


@pytest.mark.parametrize("off,n", [(-1, 1), (MiB, 1), (MiB - 1, 2), (2**64, 1), (2**64 - 1, 2),
                                   (True, 1), (1.0, 1), ("0", 1), (None, 1)])
def test_readinto_fast_path_errors(dev, off, n):
    with pytest.raises(Inv):
        dev.readinto(off, bytearray(n))


def test_read_errors_keep_their_order(dev):
    p = dev.pool
    dev2 = p.snapshot("d", "e")
    p.delete("e")  # its handle now fails with NotFoundError in the core
    with pytest.raises(cowblock.NotFoundError):
        dev2.read(0, 4096)
    with pytest.raises(cowblock.NotFoundError):
        dev2.readinto(0, bytearray(4096))
    with pytest.raises(Inv):  # a bad range is still reported as such, first
        dev2.read(MiB, 1)
    with pytest.raises(Inv):
        dev2.readinto(-1, bytearray(1))
    for bad in ([16], np.array([16], dtype=np.uint64)):
        with pytest.raises(Inv):
            dev2.read_blocks(bad)
    with pytest.raises(cowblock.NotFoundError):
        dev2.read_blocks(np.array([0], dtype=np.uint64))


def test_read_blocks_fast_path_errors(dev):
    B = 64 * KiB
    for idx in (np.array([16], dtype=np.uint64), np.array([0, 2**64 - 1], dtype=np.uint64)):
        with pytest.raises(Inv, match="outside device"):
            dev.read_blocks(idx)
        # the index error comes before the error about out, as with any other indices
        with pytest.raises(Inv, match="outside device"):
            dev.read_blocks(idx, out=np.zeros((1, B - 1), np.uint8))
    with pytest.raises(Inv, match="exactly"):
        dev.read_blocks(np.array([0, 1], dtype=np.uint64), out=np.zeros((1, B), np.uint8))
    with pytest.raises(Inv, match="writable"):
        dev.read_blocks(np.array([0], dtype=np.uint64), out=bytes(B))
    with pytest.raises(Inv, match="outside device"):
        dev.read_blocks(np.array([16], dtype=">u8"))  # non-native order: the general path
    assert dev.read_blocks(np.array([1], dtype=">u8")).shape == (1, B)


def test_closed_handles_fail_loudly(pool_path):
    p = cowblock.Pool.create(pool_path, size=16 * MiB, mmap=True)
    d = p.create_device("d", MiB)
    p.close()
    for call in (lambda: d.read(0, 1), lambda: d.readinto(0, bytearray(1)),
                 lambda: d.read_blocks(np.array([0], dtype=np.uint64))):
        with pytest.raises(cowblock.ClosedError):
            call()
    with pytest.raises(Inv):
        d.read(MiB, 1)  # argument errors first, as before
