"""The Device object, by the contract: read/readinto/write/discard/flush, zeros for unmapped
ranges, unaligned IO across blocks, the very end of a device, isolation between snapshots (to
depth 50), read-only snapshots, changed_blocks(), extents(), the numpy batch calls, huge devices."""

import array
import random

import numpy as np
import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
B = 64 * KiB  # the pool fixture's block size


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


def merged(extents):
    """Normalise a list of (offset, length) into sorted, merged, non-empty ranges."""
    out = []
    for off, length in sorted(extents):
        assert off >= 0 and length >= 0
        if length == 0:
            continue
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            out.append((off, length))
    return out


# --------------------------------------------------------------------------- basics


def test_attributes(pool):
    d = pool.create_device("dev", 10 * MiB)
    assert (d.name, d.size, d.readonly) == ("dev", 10 * MiB, False)
    assert d.pool is pool
    s = pool.snapshot("dev", "ro", readonly=True)
    assert (s.name, s.size, s.readonly) == ("ro", 10 * MiB, True)


def test_new_device_reads_zeros_everywhere(pool):
    d = pool.create_device("z", 4 * MiB)
    assert d.read(0, 4 * MiB) == bytes(4 * MiB)
    assert d.read(4 * MiB - 1, 1) == b"\0"
    assert d.read(12345, 0) == b""
    assert d.read(4 * MiB, 0) == b""


def test_write_read_roundtrip_and_return_values(pool):
    d = pool.create_device("d", 4 * MiB)
    data = rnd(200_000, 1)
    assert d.write(777, data) == len(data)
    got = d.read(777, len(data))
    assert type(got) is bytes and got == data
    assert d.read(0, 777) == bytes(777)
    assert d.read(777 + len(data), 1000) == bytes(1000)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b,
        lambda b: bytearray(b),
        lambda b: memoryview(b),
        lambda b: memoryview(bytearray(b))[0:],
        lambda b: np.frombuffer(b, dtype=np.uint8),
        lambda b: np.frombuffer(b, dtype=np.uint32),
        lambda b: array.array("B", b),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-ba", "np-u8", "np-u32", "array"],
)
def test_write_accepts_any_bytes_like(pool, make):
    d = pool.create_device("d", MiB)
    data = rnd(8192, 2)
    assert d.write(4096 + 1, make(data)) == 8192
    assert d.read(4097, 8192) == data


@pytest.mark.parametrize(
    "make",
    [
        lambda n: bytearray(n),
        lambda n: memoryview(bytearray(n)),
        lambda n: np.zeros(n, dtype=np.uint8),
        lambda n: array.array("B", bytes(n)),
    ],
    ids=["bytearray", "memoryview", "numpy", "array"],
)
def test_readinto_any_writable_buffer(pool, make):
    d = pool.create_device("d", MiB)
    data = rnd(3 * 4096 + 5, 3)
    d.write(B - 4096, data)
    buf = make(len(data))
    assert d.readinto(B - 4096, buf) == len(data)
    assert bytes(buf) == data


def test_readinto_slice_of_bigger_buffer(pool):
    d = pool.create_device("d", MiB)
    d.write(0, b"abcdefgh")
    buf = bytearray(b"-" * 20)
    assert d.readinto(2, memoryview(buf)[5:9]) == 4
    assert buf == b"-----cdef-----------"


def test_unaligned_writes_crossing_blocks(pool):
    d = pool.create_device("d", 8 * B)
    model = bytearray(8 * B)
    r = random.Random(4)
    for i in range(60):
        off = r.randrange(0, 8 * B - 1)
        n = r.randrange(1, min(3 * B, 8 * B - off) + 1)
        data = r.randbytes(n)
        d.write(off, data)
        model[off : off + n] = data
        # read a random window crossing boundaries
        ro = r.randrange(0, 8 * B)
        rn = r.randrange(0, 8 * B - ro + 1)
        assert d.read(ro, rn) == bytes(model[ro : ro + rn])
    assert d.read(0, 8 * B) == bytes(model)


def test_sub_block_writes_keep_rest_zero(pool):
    d = pool.create_device("d", 4 * B)
    d.write(B + 4096 * 3 + 10, b"X" * 5)
    blk = d.read(B, B)
    assert blk == bytes(4096 * 3 + 10) + b"X" * 5 + bytes(B - 4096 * 3 - 15)
    assert pool.used == B


def test_writes_at_the_very_end(pool):
    size = 3 * B + 512  # not a multiple of the block size
    d = pool.create_device("edge", size)
    assert d.size == size
    d.write(size - 1, b"\xff")
    assert d.read(size - 1, 1) == b"\xff"
    d.write(size - 512, b"e" * 512)
    d.write(3 * B - 100, b"c" * 200)  # crosses into the last, partial block
    assert d.read(3 * B - 100, 200) == b"c" * 200
    assert d.read(size - 412, 412) == b"e" * 412
    assert pool.used == 2 * B
    with pytest.raises(cowblock.InvalidArgumentError):
        d.write(size - 1, b"ab")
    with pytest.raises(cowblock.InvalidArgumentError):
        d.read(size - 1, 2)
    assert d.read(size - 1, 1) == b"e"


def test_overwrite_in_place_does_not_allocate(pool):
    d = pool.create_device("d", 4 * B)
    d.write(0, rnd(4 * B, 5))
    assert pool.used == 4 * B
    for i in range(20):
        d.write(i * 1000, rnd(3000, 100 + i))
    assert pool.used == 4 * B


# --------------------------------------------------------------------------- discard


def test_discard_reads_zeros(pool):
    d = pool.create_device("d", 8 * B)
    data = rnd(8 * B, 6)
    d.write(0, data)
    d.discard(B + 4096, 3 * B)  # partial, whole, whole, partial
    expect = bytearray(data)
    expect[B + 4096 : 4 * B + 4096] = bytes(3 * B)
    assert d.read(0, 8 * B) == bytes(expect)


def test_discard_frees_whole_unshared_blocks(pool):
    d = pool.create_device("d", 8 * B)
    d.write(0, rnd(8 * B, 7))
    assert pool.used == 8 * B
    d.discard(B + 4096, 3 * B)  # frees blocks 2, 3 only (1 and 4 are partly kept)
    pool.flush()
    assert pool.used == 6 * B
    d.discard(0, 8 * B)
    pool.flush()
    assert pool.used == 0
    assert d.read(0, 8 * B) == bytes(8 * B)
    # a discarded block reads zeros even after a partial rewrite (no stale data resurfaces)
    d.write(5 * B + 100, b"new")
    assert d.read(5 * B, B) == bytes(100) + b"new" + bytes(B - 103)


def test_discard_in_snapshot_keeps_origin(pool):
    a = pool.create_device("a", 4 * B)
    data = rnd(4 * B, 8)
    a.write(0, data)
    s = pool.snapshot("a", "s")
    s.discard(0, 4 * B)
    pool.flush()
    assert s.read(0, 4 * B) == bytes(4 * B)
    assert a.read(0, 4 * B) == data
    assert pool.used == 4 * B
    a.discard(0, 2 * B)
    pool.flush()
    assert pool.used == 2 * B
    assert s.read(0, 4 * B) == bytes(4 * B)


def test_discard_partial_sub_block_range(pool):
    a = pool.create_device("a", 2 * B)
    a.write(0, b"\x11" * (2 * B))
    a.discard(1000, 100)  # not sub-block aligned: those bytes read as zeros
    assert a.read(990, 120) == b"\x11" * 10 + bytes(100) + b"\x11" * 10


def test_flush(pool):
    d = pool.create_device("d", MiB)
    d.write(0, b"abc")
    assert d.flush() is None
    assert pool.flush() is None
    assert d.read(0, 3) == b"abc"


# --------------------------------------------------------------------------- snapshots


def test_isolation_both_ways(pool):
    a = pool.create_device("a", 4 * B)
    a_data = rnd(4 * B, 9)
    a.write(0, a_data)
    s = pool.snapshot("a", "s")
    s.write(100, b"snapshot write")
    assert a.read(0, 4 * B) == a_data
    a.write(2 * B + 5, b"origin write")
    s_expect = bytearray(a_data)
    s_expect[100:114] = b"snapshot write"
    assert s.read(0, 4 * B) == bytes(s_expect)
    a_expect = bytearray(a_data)
    a_expect[2 * B + 5 : 2 * B + 17] = b"origin write"
    assert a.read(0, 4 * B) == bytes(a_expect)
    # a snapshot of a snapshot sees the snapshot's state, then diverges
    t = pool.snapshot("s", "t")
    t.write(100, b"T")
    assert s.read(100, 1) == b"s"
    assert t.read(0, 4 * B)[101:] == bytes(s_expect)[101:]


def test_snapshot_of_unwritten_region_then_write_origin(pool):
    a = pool.create_device("a", 4 * B)
    s = pool.snapshot("a", "s")
    a.write(0, b"A" * B)  # allocation in the origin after the snapshot
    assert s.read(0, B) == bytes(B)
    s.write(B, b"S" * 10)
    assert a.read(B, 10) == bytes(10)


def test_snapshot_chain_depth_50(pool):
    depth = 50
    size = 32 * B
    pool.create_device("lvl0", size)
    markers = {}
    for lvl in range(depth + 1):
        dev = pool.device(f"lvl{lvl}")
        off = (lvl * 4096 * 5 + lvl * 3) % (size - 64)
        m = f"<level {lvl:02d}>".encode()
        dev.write(off, m)
        markers[lvl] = (off, m)
        if lvl < depth:
            pool.snapshot(f"lvl{lvl}", f"lvl{lvl + 1}")
    # after the chain exists, every level writes once more into a shared block (copy-up)
    for lvl in range(depth + 1):
        pool.device(f"lvl{lvl}").write(size - 4096 + lvl * 8, b"L%02d" % lvl)
    for lvl in range(depth + 1):
        dev = pool.device(f"lvl{lvl}")
        content = dev.read(0, size)
        expect = bytearray(size)
        for k in range(lvl + 1):
            off, m = markers[k]
            expect[off : off + len(m)] = m
        expect[size - 4096 + lvl * 8 : size - 4096 + lvl * 8 + 3] = b"L%02d" % lvl
        assert content == bytes(expect), f"level {lvl}"
    assert pool.check().ok


def test_readonly_snapshot_refuses_writes(pool):
    a = pool.create_device("a", MiB)
    a.write(0, b"base")
    ro = pool.snapshot("a", "ro", readonly=True)
    used = pool.used
    with pytest.raises(cowblock.ReadOnlyError):
        ro.write(0, b"nope")
    with pytest.raises(cowblock.ReadOnlyError):
        ro.discard(0, 4096)
    with pytest.raises(cowblock.ReadOnlyError):
        ro.write_blocks([0], np.zeros((1, B), np.uint8))
    assert ro.read(0, 4) == b"base"
    assert pool.used == used
    assert issubclass(cowblock.ReadOnlyError, cowblock.CowblockError)
    # a writable snapshot of the read-only one is fine, and the read-only one keeps its data
    w = pool.snapshot("ro", "w")
    w.write(0, b"WWWW")
    assert ro.read(0, 4) == b"base" and a.read(0, 4) == b"base"
    a.write(0, b"AAAA")
    assert ro.read(0, 4) == b"base"


# --------------------------------------------------------------------------- changed_blocks / extents


def test_changed_blocks(pool):
    a = pool.create_device("a", 16 * B)
    a.write(0, rnd(8 * B, 10))
    s = pool.snapshot("a", "s")
    cb = s.changed_blocks()
    assert isinstance(cb, np.ndarray) and cb.dtype == np.uint64
    assert cb.size == 0
    s.write(3 * B + 17, b"x")
    s.write(7 * B - 1, b"yz")  # blocks 6 and 7
    s.write(12 * B, b"w")  # block 12: unmapped in origin
    s.discard(1 * B, B)  # block 1 unmapped in s: changed
    assert sorted(s.changed_blocks().tolist()) == [1, 3, 6, 7, 12]
    # the origin's changes are not the snapshot's
    a.write(9 * B, b"origin")
    assert sorted(s.changed_blocks().tolist()) == [1, 3, 6, 7, 12]
    # changes survive reopen? (checked in test_pool's reopen); a new snapshot starts clean
    t = pool.snapshot("s", "t")
    assert t.changed_blocks().size == 0
    t.write(15 * B, b"t")
    assert t.changed_blocks().tolist() == [15]


def test_changed_blocks_of_a_base_device(pool):
    d = pool.create_device("d", 16 * B)
    assert d.changed_blocks().size == 0
    d.write(2 * B, b"x")
    d.write(5 * B - 1, b"xy")
    assert sorted(d.changed_blocks().tolist()) == [2, 4, 5]


def test_extents(pool):
    d = pool.create_device("d", 32 * B)
    assert merged(d.extents()) == []
    d.write(2 * B + 100, b"x")
    assert merged(d.extents()) == [(2 * B, B)]
    d.write(3 * B, rnd(2 * B, 11))
    d.write(20 * B - 1, b"ab")
    assert merged(d.extents()) == [(2 * B, 3 * B), (19 * B, 2 * B)]
    s = pool.snapshot("d", "s")
    assert merged(s.extents()) == merged(d.extents())
    s.discard(3 * B, B)
    pool.flush()
    assert merged(s.extents()) == [(2 * B, B), (4 * B, B), (19 * B, 2 * B)]
    for off, length in s.extents():
        assert isinstance(off, int) and isinstance(length, int)


def test_extents_cover_all_data(pool):
    """Whatever extents() returns, everything outside it reads zeros."""
    d = pool.create_device("d", 40 * B + 512)
    r = random.Random(12)
    for _ in range(30):
        off = r.randrange(0, d.size - 300)
        d.write(off, r.randbytes(r.randrange(1, 300)))
    d.discard(5 * B, 5 * B)
    content = np.frombuffer(d.read(0, d.size), dtype=np.uint8)
    assert content.any()
    covered = np.zeros(d.size, dtype=bool)
    for off, length in merged(d.extents()):
        assert off + length <= -(-d.size // B) * B
        covered[off : off + length] = True
    outside = np.nonzero(content.astype(bool) & ~covered)[0]
    assert outside.size == 0, f"bytes {outside[:10]} hold data outside extents()"


def test_last_partial_block_extent_clipped_or_whole(pool):
    d = pool.create_device("d", 2 * B + 512)
    d.write(2 * B, b"z")
    ext = merged(d.extents())
    assert ext in ([(2 * B, 512)], [(2 * B, B)])


# --------------------------------------------------------------------------- numpy batch calls


def test_write_blocks_read_blocks(pool):
    d = pool.create_device("d", 16 * B)
    arr = np.frombuffer(rnd(3 * B, 13), dtype=np.uint8).reshape(3, B)
    d.write_blocks([1, 9, 4], arr)
    assert d.read(1 * B, B) == arr[0].tobytes()
    assert d.read(9 * B, B) == arr[1].tobytes()
    assert d.read(4 * B, B) == arr[2].tobytes()
    assert pool.used == 3 * B
    got = d.read_blocks([4, 1, 0, 9])
    assert got.shape == (4, B) and got.dtype == np.uint8
    assert np.array_equal(got[0], arr[2])
    assert np.array_equal(got[1], arr[0])
    assert not got[2].any()
    assert np.array_equal(got[3], arr[1])


def test_read_blocks_into_out_and_numpy_indices(pool):
    d = pool.create_device("d", 8 * B)
    d.write(0, rnd(8 * B, 14))
    out = np.full((3, B), 7, dtype=np.uint8)
    idx = np.array([7, 2, 2], dtype=np.uint64)
    res = d.read_blocks(idx, out=out)
    assert res is out or np.shares_memory(res, out)
    data = rnd(8 * B, 14)
    assert out[0].tobytes() == data[7 * B : 8 * B]
    assert out[1].tobytes() == data[2 * B : 3 * B]
    assert out[2].tobytes() == data[2 * B : 3 * B]


def test_write_blocks_from_flat_buffer(pool):
    d = pool.create_device("d", 8 * B)
    buf = rnd(2 * B, 15)
    d.write_blocks(np.array([5, 6]), buf)
    assert d.read(5 * B, 2 * B) == buf
    d.write_blocks([0], bytearray(b"\x42" * B))
    assert d.read(0, B) == b"\x42" * B


def test_write_blocks_into_snapshot_is_isolated(pool):
    a = pool.create_device("a", 4 * B)
    a.write(0, rnd(4 * B, 16))
    s = pool.snapshot("a", "s")
    s.write_blocks([2], np.ones((1, B), np.uint8))
    assert s.read(2 * B, B) == b"\1" * B
    assert a.read(0, 4 * B) == rnd(4 * B, 16)
    assert pool.used == 5 * B


def test_batch_empty(pool):
    d = pool.create_device("d", 4 * B)
    got = d.read_blocks([])
    assert got.shape == (0, B)
    d.write_blocks([], np.zeros((0, B), np.uint8))
    assert pool.used == 0


# --------------------------------------------------------------------------- huge devices


@pytest.mark.parametrize("size", [TiB, 16 * TiB], ids=["1TiB", "16TiB"])
def test_huge_device(pool, size):
    d = pool.create_device("huge", size)
    assert d.size == size
    assert pool.used == 0
    d.write(size - 4096, b"end!" * 1024)
    d.write(size // 2 + 3, b"middle")
    d.write(size - B - 2, b"straddle")
    assert d.read(size - 4096, 4096) == b"end!" * 1024
    assert d.read(size // 2, 9) == b"\0\0\0middle"
    assert d.read(size - B - 2, 8) == b"straddle"
    assert d.read(size - 3 * B, B) == bytes(B)
    assert pool.used == 3 * B
    s = pool.snapshot("huge", "hs")
    s.write(size - 1, b"S")
    assert d.read(size - 1, 1) == b"!"
    assert s.read(size - 1, 1) == b"S"
    assert pool.used == 4 * B
    ext = merged(d.extents())
    assert ext == [(size // 2, B), (size - 2 * B, 2 * B)]
    pool.delete("hs")
    pool.delete("huge")
    pool.flush()
    assert pool.used == 0
