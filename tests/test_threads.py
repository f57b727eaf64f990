"""Several Python threads on one pool at once (cffi drops the GIL around each C call, so these
really run concurrently in the core). Writers own disjoint ranges (for a deterministic final
state, checked against a model), often inside the same shared blocks so that copy-ups of one
block race; readers of pages being rewritten must see an old or a new whole 4 KiB page, never
garbage and never another device's data."""

import random
import struct
import threading
import time

import numpy as np
import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB
PAGE = 4096


def run_threads(targets, timeout=120):
    errors = []

    def wrap(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads hung (deadlock?)"
    if errors:
        raise errors[0]


def compare(dev, model):
    got = dev.read(0, dev.size)
    if got != bytes(model):
        a = np.frombuffer(got, np.uint8)
        m = np.frombuffer(bytes(model), np.uint8)
        bad = np.nonzero(a != m)[0]
        pytest.fail(
            f"device {dev.name!r}: {bad.size} bytes differ from the model, first at {bad[0]} "
            f"(block {bad[0] // B}, page {bad[0] // PAGE})"
        )


# --------------------------------------------------------------------------- disjoint writers


def test_striped_writers_race_copy_ups(pool):
    """N threads each own every N-th 4 KiB sub-block of the first half of three devices: an
    origin 'a', a snapshot 's' of it (every block shared, so copy-ups of the same block by
    several threads race, in both a and s), and an unrelated device 'b' (allocations race).
    Each thread also owns one contiguous range of the second half, written unaligned."""
    nthreads = 4
    nblocks = 32
    size = nblocks * B
    half = size // 2
    names = ["a", "s", "b"]
    a = pool.create_device("a", size)
    init = random.Random(0).randbytes(size)
    a.write(0, init)
    pool.snapshot("a", "s")
    pool.create_device("b", size)
    model = {"a": bytearray(init), "s": bytearray(init), "b": bytearray(size)}
    pages = half // PAGE
    contiguous = (size - half) // nthreads

    def writer(t):
        r = random.Random(100 + t)
        devs = {n: pool.device(n) for n in names}
        own_pages = [p for p in range(pages) if p % nthreads == t]
        lo = half + t * contiguous
        hi = lo + contiguous
        for i in range(250):
            n = r.choice(names)
            if r.random() < 0.6:
                p = r.choice(own_pages)
                if r.random() < 0.5:
                    off, ln = p * PAGE, PAGE
                else:
                    off = p * PAGE + r.randrange(0, PAGE - 1)
                    ln = r.randrange(1, p * PAGE + PAGE - off + 1)
            else:
                off = r.randrange(lo, hi - 1)
                ln = r.randrange(1, min(hi - off, 2 * B) + 1)
            data = r.randbytes(ln)
            assert devs[n].write(off, data) == ln
            model[n][off : off + ln] = data
            if i % 50 == 0:
                rd = r.choice(names)
                # a read of this thread's own page must show its own last write
                p = r.choice(own_pages)
                assert devs[rd].read(p * PAGE, PAGE) == bytes(model[rd][p * PAGE : (p + 1) * PAGE])

    run_threads([(writer, t) for t in range(nthreads)])
    for n in names:
        compare(pool.device(n), model[n])
    pool.flush()
    r = pool.check()
    assert r.ok, (r.errors, getattr(r, "messages", None))
    # a, s and b own at most one block per virtual block each, plus the original blocks that
    # partial copy-ups in a and s still read from
    assert pool.used <= 4 * size


def test_adjacent_byte_ranges_in_one_sub_block(pool):
    """Two threads write neighbouring, non-overlapping byte ranges inside the same 4 KiB
    sub-block of blocks that are unmapped or shared: the core's read-modify-write of a partial
    sub-block must not lose either write (as pwrite on a file never does)."""
    size = 64 * B
    a = pool.create_device("a", size)
    init = random.Random(1).randbytes(size // 2)
    a.write(0, init)  # first half mapped (and about to be shared), second half unmapped
    pool.snapshot("a", "s")
    s = pool.device("s")
    model = bytearray(init) + bytearray(size // 2)

    def writer(t):
        r = random.Random(7 + t)
        for blk in range(64):
            off = blk * B + 2048 + (0 if t == 0 else 100)
            data = r.randbytes(100)
            s.write(off, data)
            model[off : off + 100] = data

    barrier = threading.Barrier(2)

    def go(t):
        barrier.wait()
        writer(t)

    run_threads([(go, 0), (go, 1)])
    compare(s, model)
    compare(a, bytearray(init) + bytearray(size // 2))


# --------------------------------------------------------------------------- torn-page readers


def _page(dev_id, page, gen):
    return struct.pack("<IIQ", dev_id, page, gen) * (PAGE // 16)


def _parse_page(buf):
    rec = bytes(buf[:16])
    if buf != rec * (PAGE // 16):
        return None
    return struct.unpack("<IIQ", rec)


def test_readers_see_whole_old_or_new_pages(pool):
    """Writers keep rewriting whole 4 KiB pages of 'f' and of its snapshot 'fs' with
    (device id, page, generation) records; readers read multi-page ranges of both and each page
    must be one writer's whole page: the right device (fs may still show f's generation 0),
    the right page, a generation already started."""
    npages = 64  # 4 blocks
    size = npages * PAGE
    F, FS = 1, 2
    f = pool.create_device("f", size)
    f.write(0, b"".join(_page(F, p, 0) for p in range(npages)))
    pool.snapshot("f", "fs")
    started = {F: [0] * npages, FS: [0] * npages}
    done = threading.Event()

    def writer(dev_id, name, seed):
        d = pool.device(name)
        r = random.Random(seed)
        for _ in range(600):
            p = r.randrange(npages)
            gen = started[dev_id][p] + 1
            started[dev_id][p] = gen
            d.write(p * PAGE, _page(dev_id, p, gen))

    def reader(seed):
        r = random.Random(seed)
        devs = {F: pool.device("f"), FS: pool.device("fs")}
        checked = 0
        while not done.is_set() or checked < 50:
            dev_id = r.choice([F, FS])
            p0 = r.randrange(npages)
            n = r.randrange(1, min(8, npages - p0) + 1)
            buf = devs[dev_id].read(p0 * PAGE, n * PAGE)
            for i in range(n):
                p = p0 + i
                parsed = _parse_page(buf[i * PAGE : (i + 1) * PAGE])
                assert parsed is not None, f"torn or garbage page {p} of device {dev_id}"
                did, pg, gen = parsed
                assert pg == p, f"page {p} of device {dev_id} holds page {pg}"
                if dev_id == F or gen > 0 or did == FS:
                    assert did == dev_id, f"device {dev_id} page {p} shows device {did}'s data"
                assert gen <= started[did][p], "a generation never written"
            checked += 1

    def writers_then_done():
        try:
            run_threads([(writer, F, "f", 1), (writer, FS, "fs", 2)])
        finally:
            done.set()

    run_threads([(writers_then_done,), (reader, 10), (reader, 11), (reader, 12)])
    # final state: every page holds its last generation
    for dev_id, name in ((F, "f"), (FS, "fs")):
        d = pool.device(name)
        for p in range(npages):
            gen = started[dev_id][p]
            want = _page(dev_id, p, gen) if (gen or dev_id == F) else _page(F, p, 0)
            assert d.read(p * PAGE, PAGE) == want, (name, p)


# --------------------------------------------------------------------------- metadata ops racing IO


def test_metadata_ops_during_io(pool):
    """Snapshots/deletes/flush/usage of one device while other threads write other devices and
    read a static one: nobody sees anything wrong and the final state matches the model."""
    size = 16 * B
    static = pool.create_device("static", size)
    sdata = random.Random(3).randbytes(size)
    static.write(0, sdata)
    for i in range(3):
        pool.create_device(f"w{i}", size)
    model = {f"w{i}": bytearray(size) for i in range(3)}
    stop = threading.Event()

    def writer(i):
        r = random.Random(20 + i)
        d = pool.device(f"w{i}")
        for _ in range(300):
            off = r.randrange(0, size - 1)
            n = r.randrange(1, min(size - off, 3 * B) + 1)
            data = r.randbytes(n)
            d.write(off, data)
            model[f"w{i}"][off : off + n] = data
            if r.random() < 0.1:
                d.discard(off, min(n, size - off))
                model[f"w{i}"][off : off + n] = bytes(n)

    def meta():
        k = 0
        while not stop.is_set():
            name = f"snap{k}"
            snap = pool.snapshot("static", name, readonly=(k % 2 == 0))
            assert snap.read(0, size) == sdata
            if k % 3 == 0:
                pool.flush()
            # both walks, while the writers change other devices: static and its snapshot
            # share all of static's blocks
            both = cowblock.DeviceUsage(size, 0, size)
            u = pool.usage()
            assert u.devices["static"] == u.devices[name] == both
            assert static.usage() == snap.usage() == both
            pool.delete(name)
            k += 1
        assert k > 0

    def reader():
        r = random.Random(5)
        while not stop.is_set():
            off = r.randrange(0, size)
            n = r.randrange(0, size - off + 1)
            assert static.read(off, n) == sdata[off : off + n]

    def writers_then_stop():
        try:
            run_threads([(writer, i) for i in range(3)])
        finally:
            stop.set()

    run_threads([(writers_then_stop,), (meta,), (reader,)])
    assert sorted(pool.devices()) == ["static", "w0", "w1", "w2"]
    for name, m in model.items():
        compare(pool.device(name), m)
    pool.flush()
    r = pool.check()
    assert r.ok, (r.errors, getattr(r, "messages", None))
