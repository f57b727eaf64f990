"""The Pool object, by the contract (DESIGN.md section 6, CONTRACT.md): lifecycle, sizes,
exact space accounting, snapshots' sharing, delete, read-only pools, reopen, usage()."""

import os
import random
import time

import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
B = 64 * KiB  # the pool fixture's block size


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- lifecycle


def test_create_attributes(pool_path):
    p = cowblock.Pool.create(pool_path, size=2 * GiB, block_size=16 * KiB)
    try:
        assert isinstance(p, cowblock.Pool)
        assert p.block_size == 16 * KiB
        assert p.size == 2 * GiB
        assert p.used == 0
        assert p.readonly is False
        assert os.path.samefile(p.path, pool_path)
        assert p.devices() == []
        assert all(type(v) is int for v in (p.block_size, p.size, p.used))
    finally:
        p.close()


def test_create_default_block_size_is_64k(pool_path):
    with cowblock.Pool.create(pool_path, size=GiB) as p:
        assert p.block_size == 64 * KiB


def test_create_accepts_str_path_and_empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with cowblock.Pool.create(str(d), size=GiB) as p:
        p.create_device("a", MiB)
    with cowblock.Pool.open(str(d)) as p:
        assert p.devices() == ["a"]


@pytest.mark.parametrize("bs", [4 * KiB, 8 * KiB, 64 * KiB, 256 * KiB, MiB])
def test_every_valid_block_size(tmp_path, bs):
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB, block_size=bs) as p:
        assert p.block_size == bs
        d = p.create_device("d", 4 * MiB)
        d.write(bs - 1, b"xy")  # crosses the first block boundary
        assert p.used == 2 * bs
        assert d.read(bs - 1, 2) == b"xy"
        assert d.read(0, bs - 1) == bytes(bs - 1)
    with cowblock.Pool.open(tmp_path / "p") as p:
        assert p.block_size == bs
        assert p.used == 2 * bs
        assert p.device("d").read(bs - 1, 2) == b"xy"


def test_context_manager_closes(pool_path):
    with cowblock.Pool.create(pool_path, size=GiB) as p:
        assert p.create_device("a", MiB).name == "a"
    with pytest.raises(cowblock.ClosedError):
        p.devices()
    with pytest.raises(cowblock.ClosedError):
        p.create_device("b", MiB)
    with cowblock.Pool.open(pool_path) as p2:
        assert p2.devices() == ["a"]


def test_context_manager_closes_on_exception(pool_path):
    with pytest.raises(RuntimeError):
        with cowblock.Pool.create(pool_path, size=GiB) as p:
            p.create_device("a", MiB).write(0, b"hello")
            raise RuntimeError("boom")
    with pytest.raises(cowblock.ClosedError):
        p.used
    # close() on the way out committed the work.
    with cowblock.Pool.open(pool_path) as p2:
        assert p2.device("a").read(0, 5) == b"hello"


def test_close_is_idempotent_and_use_after_close_raises(pool_path):
    p = cowblock.Pool.create(pool_path, size=GiB)
    d = p.create_device("a", MiB)
    p.close()
    p.close()  # idempotent
    for call in (
        lambda: p.devices(),
        lambda: p.flush(),
        lambda: p.create_device("b", MiB),
        lambda: p.snapshot("a", "s"),
        lambda: p.device("a"),
        lambda: p.delete("a"),
        lambda: p.usage(),
        lambda: p.used,
        lambda: d.read(0, 1),
        lambda: d.write(0, b"x"),
        lambda: d.discard(0, 512),
        lambda: d.flush(),
    ):
        with pytest.raises(cowblock.ClosedError):
            call()
    assert issubclass(cowblock.ClosedError, cowblock.CowblockError)


def test_open_missing_pool(tmp_path):
    with pytest.raises(cowblock.NotFoundError):
        cowblock.Pool.open(tmp_path / "nope")


def test_second_writer_is_refused(pool_path):
    with cowblock.Pool.create(pool_path, size=GiB) as p:
        p.create_device("a", MiB).write(0, b"mine")
        with pytest.raises(cowblock.BusyError):
            cowblock.Pool.open(pool_path)
        with pytest.raises(cowblock.BusyError):
            cowblock.Pool.open(pool_path, readonly=True)
        assert p.device("a").read(0, 4) == b"mine"
    with cowblock.Pool.open(pool_path, readonly=True) as r1:
        with cowblock.Pool.open(pool_path, readonly=True) as r2:
            assert r1.device("a").read(0, 4) == r2.device("a").read(0, 4) == b"mine"
        with pytest.raises(cowblock.BusyError):
            cowblock.Pool.open(pool_path)
    with cowblock.Pool.open(pool_path) as p:
        p.device("a").write(0, b"ok")


def test_create_over_existing_pool_refused_and_harmless(pool_path):
    with cowblock.Pool.create(pool_path, size=GiB) as p:
        p.create_device("a", MiB).write(0, b"keep me")
    with pytest.raises(cowblock.ExistsError):
        cowblock.Pool.create(pool_path, size=2 * GiB)
    with cowblock.Pool.open(pool_path) as p:
        assert p.size == GiB
        assert p.devices() == ["a"]
        assert p.device("a").read(0, 7) == b"keep me"


# --------------------------------------------------------------------------- sizes and `used`


def test_used_is_exact_block_count(pool):
    d = pool.create_device("a", 16 * MiB)
    assert pool.used == 0
    d.write(0, b"x")
    assert pool.used == B
    d.write(100, b"y" * 1000)  # same block
    assert pool.used == B
    d.write(B - 1, b"zz")  # crosses into block 1
    assert pool.used == 2 * B
    d.write(5 * B, bytes(3 * B))  # three whole blocks (zeros are still data written)
    assert pool.used <= 5 * B
    d.write(5 * B, rnd(3 * B, 1))
    assert pool.used == 5 * B
    e = pool.create_device("b", 16 * MiB)
    e.write(16 * MiB - 1, b"!")
    assert pool.used == 6 * B
    assert pool.usage().used == pool.used


def test_create_device_allocates_nothing_and_reads_zeros(pool):
    d = pool.create_device("big", 64 * MiB)
    assert pool.used == 0
    assert d.read(0, 2 * B) == bytes(2 * B)
    assert d.read(64 * MiB - 4096, 4096) == bytes(4096)
    assert pool.used == 0  # reading never allocates


def test_devices_sorted_contains_and_device(pool):
    for name in ["zeta", "alpha", "Mid", "b-2", "b-10", "ü"]:
        pool.create_device(name, MiB)
    assert pool.devices() == sorted(["zeta", "alpha", "Mid", "b-2", "b-10", "ü"])
    assert "alpha" in pool
    assert "nope" not in pool
    d = pool.device("ü")
    assert d.name == "ü" and d.size == MiB and d.readonly is False
    assert d.pool is pool
    with pytest.raises(cowblock.NotFoundError):
        pool.device("nope")


def test_listings_are_stable(pool):
    """devices(), usage() and info() stay right however the heap churns between calls (the
    cffi arrays they read must be alive while read)."""
    names = [f"dev{i:02d}" for i in range(40)]
    for n in names:
        pool.create_device(n, MiB).write(0, b"x")
    pool.snapshot("dev00", "snap")
    want = sorted(names + ["snap"])
    for junk_size in (500, 64, 200, 1000, 3000, 7000):
        for _ in range(60):
            junk = [bytearray(junk_size) for _ in range(50)]  # churn the allocator
            u = pool.usage()
            assert sorted(u.devices) == want
            assert u.devices["dev05"] == cowblock.DeviceUsage(B, B, 0)
            assert u.devices["snap"] == cowblock.DeviceUsage(B, 0, B)
            junk2 = [bytearray(junk_size) for _ in range(50)]
            assert pool.devices() == want
            assert pool.info("snap").origin == "dev00"
            del junk, junk2


def _own_handle(pool, name):
    """A Device over a cb_dev handle of its own: Pool.device() hands out one cached Device per
    name, while constructing a Device opens a second handle of the same device."""
    return cowblock.pool.Device(pool, name)


def _close_handle(dev):
    from cowblock._lowlevel import ffi

    h, dev._h = dev._h, None
    ffi.release(h)  # cb_dev_close now, not when the cdata goes


def test_device_objects_are_cached(pool):
    a = pool.create_device("a", MiB)
    assert pool.device("a") is a


def test_device_handles_share_state(pool):
    """Two cb_dev handles of one device see one device: each one's writes and discards through
    the other, closing one leaves the other working, and a delete fails both (even once the
    name is taken again), with no use of freed memory (the ASan run checks that)."""
    a1 = pool.create_device("a", MiB)
    a2 = _own_handle(pool, "a")
    a3 = _own_handle(pool, "a")
    assert len({a1._h, a2._h, a3._h}) == 3, "not distinct C handles"
    a1.write(4096, b"seen by both")
    assert a2.read(4096, 12) == b"seen by both"
    a2.write(B + 100, b"and back")
    assert a1.read(B + 100, 8) == b"and back"
    a2.discard(0, B)
    assert a1.read(4096, 12) == bytes(12)
    assert a1.usage() == a2.usage() == cowblock.DeviceUsage(B, B, 0)
    _close_handle(a2)
    a1.write(0, b"still")
    assert a3.read(0, 5) == b"still"
    pool.delete("a")
    for dev in (a1, a3):
        with pytest.raises(cowblock.NotFoundError):
            dev.read(0, 1)
    b = pool.create_device("a", MiB)  # the name again: a new device
    assert b.read(0, 5) == bytes(5)
    with pytest.raises(cowblock.NotFoundError):
        a3.write(0, b"x")
    _close_handle(a3)
    with pytest.raises(cowblock.NotFoundError):
        a1.read(0, 1)


# --------------------------------------------------------------------------- snapshots and delete


def test_snapshot_allocates_nothing(pool):
    a = pool.create_device("a", 8 * MiB)
    a.write(0, rnd(8 * MiB, 2))
    used = pool.used
    assert used == 8 * MiB
    snaps = [pool.snapshot("a", f"s{i}") for i in range(10)]
    assert pool.used == used
    ro = pool.snapshot("s3", "ro", readonly=True)
    assert pool.used == used
    assert ro.readonly is True and ro.size == a.size
    assert snaps[9].read(B, B) == a.read(B, B)


def test_4k_write_into_snapshot_allocates_exactly_one_block(backend_pool):
    pool = backend_pool  # once per backend
    a = pool.create_device("a", 4 * B)
    a.write(0, rnd(4 * B, 3))
    s = pool.snapshot("a", "s")
    assert pool.used == 4 * B
    s.write(B + 8192, b"\x5a" * 4096)
    assert pool.used == 5 * B
    # Another 4 KiB into the same copied-up block: no new block.
    s.write(B, b"\xa5" * 4096)
    assert pool.used == 5 * B
    # Origin unchanged, snapshot has both writes over the origin's data.
    orig = rnd(4 * B, 3)
    assert a.read(0, 4 * B) == orig
    expect = bytearray(orig)
    expect[B + 8192 : B + 12288] = b"\x5a" * 4096
    expect[B : B + 4096] = b"\xa5" * 4096
    assert s.read(0, 4 * B) == bytes(expect)


def test_4k_write_into_snapshot_copies_little(backend_pool):
    """DESIGN.md section 4 / invariant 7: a 4 KiB write into a shared block writes ~4 KiB."""
    pool = backend_pool  # once per backend
    a = pool.create_device("a", 4 * B)
    a.write(0, rnd(4 * B, 4))
    pool.flush()
    s = pool.snapshot("a", "s")
    before = pool.stats()
    s.write(2 * B + 4096, b"q" * 4096)
    after = pool.stats()
    assert after["copyups"] - before["copyups"] == 1
    assert after["copyup_bytes"] - before["copyup_bytes"] <= 4096
    assert after["data_bytes_written"] - before["data_bytes_written"] <= 8192


@pytest.mark.parametrize("bs", [4 * KiB, 64 * KiB, MiB])
def test_small_write_into_shared_block_costs_little(request, location, bs):
    """Invariant 7 for every block size: a 4 KiB write into a shared block allocates one block
    and writes about 4 KiB (at most one sub-block: 4 KiB, or block/64 for big blocks).  On
    RADOS the OSD's own count of the bytes it took in says the same (where an RBD clone
    copies its whole 4 MiB object up first)."""
    sub = max(4 * KiB, bs // 64)
    ceph = request.getfixturevalue("ceph") if "://" in location else None
    with cowblock.Pool.create(location, size=64 * MiB, block_size=bs) as p:
        a = p.create_device("a", 4 * bs)
        data = rnd(4 * bs, 40)
        a.write(0, data)
        p.flush()
        s = p.snapshot("a", "s")
        p.flush()
        before = p.stats()
        osd_before = ceph.bytes_received() if ceph else 0
        s.write(bs + 4 * KiB, b"\xee" * 4096)  # sub-block aligned for 4K/64K blocks
        s.write(2 * bs + 100, b"\xdd" * 4096)  # unaligned: touches two sub-blocks at most
        after = p.stats()
        assert p.used == 6 * bs
        written = after["data_bytes_written"] - before["data_bytes_written"]
        assert written <= 2 * sub + 2 * 4096, written
        if ceph:
            p.flush()  # the writes are aio: this waits for them (and commits the metadata)
            meta = (after["meta_pages"] + 2) * 4096  # every metadata page at most, and slack
            got = ceph.bytes_received() - osd_before
            assert got <= written + meta, (got, written, meta)
            assert got < bs or bs < 64 * KiB, got
        expect = bytearray(data)
        expect[bs + 4096 : bs + 8192] = b"\xee" * 4096
        expect[2 * bs + 100 : 2 * bs + 4196] = b"\xdd" * 4096
        assert s.read(0, 4 * bs) == bytes(expect)
        assert a.read(0, 4 * bs) == data


def test_delete_gives_space_back(pool):
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(8 * B, 5))
    s = pool.snapshot("a", "s")
    s.write(0, rnd(2 * B, 6))  # two full blocks of its own
    assert pool.used == 10 * B
    pool.delete("s")
    pool.flush()  # a freed block counts as used until the free is committed (invariant 5)
    assert pool.used == 8 * B
    assert pool.devices() == ["a"]
    s2 = pool.snapshot("a", "s2")
    pool.delete("a")  # shared with s2: nothing freed
    pool.flush()
    assert pool.used == 8 * B
    assert s2.read(0, 8 * B) == rnd(8 * B, 5)
    pool.delete("s2")  # now unshared
    pool.flush()
    assert pool.used == 0
    assert pool.devices() == []
    assert pool.usage().devices == {}


def test_delete_makes_handles_unusable(pool):
    a = pool.create_device("a", MiB)
    pool.delete("a")
    with pytest.raises(cowblock.NotFoundError):
        a.read(0, 1)
    with pytest.raises(cowblock.NotFoundError):
        a.write(0, b"x")
    assert pool.used == 0
    # The name is free again and the new device is a new, zeroed device.
    b = pool.create_device("a", MiB)
    assert b.read(0, 16) == bytes(16)


def test_delete_middle_of_chain(pool):
    a = pool.create_device("a", 4 * B)
    a.write(0, b"A" * (4 * B))
    m = pool.snapshot("a", "m")
    m.write(B, b"M" * B)
    t = pool.snapshot("m", "t")
    t.write(2 * B, b"T" * B)
    pool.delete("m")
    assert t.read(0, 4 * B) == b"A" * B + b"M" * B + b"T" * B + b"A" * B
    assert a.read(0, 4 * B) == b"A" * (4 * B)
    assert pool.used == 6 * B
    info = pool.info("t")
    assert info.origin is None  # its origin is gone


def test_info(pool):
    t0 = time.time()
    a = pool.create_device("a", 3 * MiB)
    s = pool.snapshot("a", "s", readonly=True)
    ia, is_ = pool.info("a"), pool.info("s")
    assert (ia.name, ia.size, ia.readonly, ia.origin, ia.external) == ("a", 3 * MiB, False, None, None)
    assert (is_.name, is_.size, is_.readonly, is_.origin) == ("s", 3 * MiB, True, "a")
    assert isinstance(ia.id, int) and ia.id != is_.id
    assert t0 - 5 <= ia.created <= time.time() + 5
    with pytest.raises(cowblock.NotFoundError):
        pool.info("zzz")
    del a, s


# --------------------------------------------------------------------------- reopen / durability


def test_reopen_keeps_everything(pool_path):
    data = rnd(3 * B + 77, 7)
    with cowblock.Pool.create(pool_path, size=GiB, block_size=B) as p:
        a = p.create_device("a", 8 * MiB)
        a.write(B - 7, data)
        p.snapshot("a", "ro", readonly=True)
        s = p.snapshot("a", "rw")
        s.write(0, b"snap")
        used = p.used
        usage = p.usage()
    with cowblock.Pool.open(pool_path) as p:
        assert p.devices() == ["a", "ro", "rw"]
        assert p.block_size == B and p.size == GiB and p.used == used
        assert p.device("a").read(B - 7, len(data)) == data
        assert p.device("ro").readonly is True
        assert p.device("rw").readonly is False
        assert p.device("rw").read(0, 4) == b"snap"
        assert p.device("a").read(0, 4) == bytes(4)
        assert p.usage().devices == usage.devices
        assert p.info("ro").origin == "a"
        assert p.device("rw").changed_blocks().tolist() == [0]  # change bitmaps persist
        assert p.check().ok


def test_flush_then_reopen(pool_path):
    p = cowblock.Pool.create(pool_path, size=GiB)
    try:
        p.create_device("a", MiB).write(12345, b"durable")
        p.flush()
        p.device("a").flush()
    finally:
        p.close()
    with cowblock.Pool.open(pool_path) as p:
        assert p.device("a").read(12345, 7) == b"durable"


# --------------------------------------------------------------------------- read-only pool


def test_readonly_pool_refuses_every_mutation(pool_path):
    with cowblock.Pool.create(pool_path, size=GiB) as p:
        p.create_device("a", MiB).write(0, b"data")
        p.snapshot("a", "s")
        used = p.used
    with cowblock.Pool.open(pool_path, readonly=True) as p:
        assert p.readonly is True
        a = p.device("a")
        assert a.read(0, 4) == b"data"
        np = pytest.importorskip("numpy")
        mutations = [
            lambda: p.create_device("b", MiB),
            lambda: p.snapshot("a", "t"),
            lambda: p.snapshot("a", "t", readonly=True),
            lambda: p.delete("s"),
            lambda: a.write(0, b"x"),
            lambda: a.discard(0, 512),
            lambda: a.write_blocks([0], np.zeros((1, p.block_size), np.uint8)),
            lambda: a.open("r+b"),
        ]
        for m in mutations:
            with pytest.raises(cowblock.ReadOnlyError):
                m()
        assert p.devices() == ["a", "s"]
        assert p.used == used
        assert a.read(0, 4) == b"data"
    with cowblock.Pool.open(pool_path) as p:
        assert p.devices() == ["a", "s"]
        assert p.device("a").read(0, 4) == b"data"


# --------------------------------------------------------------------------- usage()


def _u(pool, name):
    u = pool.usage().devices[name]
    assert u.mapped == u.exclusive + u.shared
    assert u == pool.device(name).usage()
    return (u.mapped, u.exclusive, u.shared)


def test_usage_single_device(pool):
    a = pool.create_device("a", 8 * B)
    assert _u(pool, "a") == (0, 0, 0)
    a.write(0, b"x" * (3 * B))
    assert _u(pool, "a") == (3 * B, 3 * B, 0)
    pu = pool.usage()
    assert (pu.size, pu.used, pu.block_size) == (pool.size, 3 * B, B)
    assert set(pu.devices) == {"a"}


def test_usage_full_block_write_into_snapshot(pool):
    # origin with 4 blocks written, snapshot, write one whole block into the snapshot
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(4 * B, 8))
    pool.snapshot("a", "s")
    assert _u(pool, "a") == (4 * B, 0, 4 * B)
    assert _u(pool, "s") == (4 * B, 0, 4 * B)
    pool.device("s").write(B, rnd(B, 9))
    assert pool.used == 5 * B
    assert _u(pool, "a") == (4 * B, 1 * B, 3 * B)
    assert _u(pool, "s") == (4 * B, 1 * B, 3 * B)


def test_usage_partial_copy_up_keeps_origin_reference(backend_pool):
    """A 4 KiB write into a shared block: the snapshot references its new block N (exclusive)
    AND still the origin block B1 for the sub-blocks it has not rewritten (DESIGN.md section 4),
    so B1 stays shared until the snapshot rewrites every sub-block."""
    pool = backend_pool  # once per backend
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(4 * B, 10))
    s = pool.snapshot("a", "s")
    s.write(B, b"\x01" * 4096)
    assert pool.used == 5 * B
    assert _u(pool, "a") == (4 * B, 0, 4 * B)
    assert _u(pool, "s") == (5 * B, 1 * B, 4 * B)
    # Rewrite the rest of block 1 in 4 KiB pieces: once every sub-block is present in N the
    # reference to the origin's block is dropped.
    for off in range(B + 4096, 2 * B, 4096):
        s.write(off, b"\x02" * 4096)
    assert pool.used == 5 * B
    assert _u(pool, "a") == (4 * B, 1 * B, 3 * B)
    assert _u(pool, "s") == (4 * B, 1 * B, 3 * B)
    assert s.read(B, B) == b"\x01" * 4096 + b"\x02" * (B - 4096)


def test_usage_after_origin_deleted(backend_pool):
    pool = backend_pool  # once per backend
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(4 * B, 11))
    s = pool.snapshot("a", "s")
    s.write(B, b"\x01" * 4096)  # partial copy-up: s references 5 blocks
    pool.delete("a")
    assert pool.used == 5 * B
    assert _u(pool, "s") == (5 * B, 5 * B, 0)
    expect = bytearray(rnd(4 * B, 11))
    expect[B : B + 4096] = b"\x01" * 4096
    assert s.read(0, 4 * B) == bytes(expect)
    # completing the copied-up block drops the last reference to the origin's block
    s.write(B + 4096, b"\x02" * (B - 4096))
    pool.flush()
    assert pool.used == 4 * B
    assert _u(pool, "s") == (4 * B, 4 * B, 0)
    expect[B + 4096 : 2 * B] = b"\x02" * (B - 4096)
    assert s.read(0, 4 * B) == bytes(expect)


def test_usage_three_way_sharing(pool):
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(2 * B, 12))
    pool.snapshot("a", "s1")
    pool.snapshot("a", "s2")
    pool.device("a").write(4 * B, rnd(B, 13))  # a's own new block
    pool.device("s1").write(0, rnd(B, 14))  # s1 rewrites block 0 fully
    # block0 orig: a, s2 | block1: a, s1, s2 | a's block4 | s1's block0
    assert pool.used == 4 * B
    assert _u(pool, "a") == (3 * B, 1 * B, 2 * B)
    assert _u(pool, "s1") == (2 * B, 1 * B, 1 * B)
    assert _u(pool, "s2") == (2 * B, 0, 2 * B)
    pool.delete("s2")
    assert pool.used == 4 * B
    assert _u(pool, "a") == (3 * B, 2 * B, 1 * B)
    assert _u(pool, "s1") == (2 * B, 1 * B, 1 * B)


def test_usage_discard(pool):
    a = pool.create_device("a", 8 * B)
    a.write(0, rnd(4 * B, 15))
    s = pool.snapshot("a", "s")
    s.discard(0, 2 * B)  # unmaps in s only
    assert _u(pool, "s") == (2 * B, 0, 2 * B)
    assert _u(pool, "a") == (4 * B, 2 * B, 2 * B)
    assert pool.used == 4 * B
    assert s.read(0, 2 * B) == bytes(2 * B)
    assert a.read(0, 4 * B) == rnd(4 * B, 15)


# --------------------------------------------------------------------------- check


def test_check_ok_on_busy_pool(pool):
    a = pool.create_device("a", 32 * B)
    a.write(100, rnd(20 * B, 16))
    s = pool.snapshot("a", "s")
    s.write(3 * B + 5, rnd(3 * B, 17))
    s.discard(10 * B, 4 * B)
    pool.snapshot("s", "t", readonly=True)
    pool.delete("a")
    r = pool.check()
    assert r.ok, (r.errors, getattr(r, "messages", None))
    assert not r.errors and r.leaks == 0
