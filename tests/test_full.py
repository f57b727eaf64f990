"""Full pools (issue 3, "Full pools and concurrency"): when the pool's capacity is reached, or the
file system under it runs out of space, the write that cannot be served raises
``PoolFullError``; what was written before stays intact; deleting a device (or discarding)
makes room and writing works again without an explicit flush; nothing queues or locks up
(every step runs under a timeout).

The file-system cases mount a 16 MiB tmpfs and need root (skipped otherwise)."""

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB


def blk(tag, i, n=B):
    """Self-identifying content of block ``i`` written under ``tag``: 8-byte words holding the
    tag, the block number and the word's index."""
    a = np.empty(n // 8, dtype="<u8")
    a[:] = (tag << 40) | (i << 16)
    a += np.arange(a.size, dtype="<u8")
    return a.tobytes()


_LOCKUP = threading.Event()
_HUNG = []  # pools left open after a lock-up: closing them would hang the test run too


@contextlib.contextmanager
def pool_ctx(pool):
    """Like ``with pool:``, but a pool that locked up is left alone instead of closed."""
    try:
        yield pool
    finally:
        if _LOCKUP.is_set():
            _HUNG.append(pool)
        else:
            pool.close()


def create(path, size, block_size=B):
    return pool_ctx(cowblock.Pool.create(path, size=size, block_size=block_size))


def reopen(path):
    return pool_ctx(cowblock.Pool.open(path))


def within(seconds, fn, *args, **kwargs):
    """Run ``fn`` in a thread; a call that does not return in time is a lock-up."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        _LOCKUP.set()
        raise AssertionError(f"{getattr(fn, '__name__', fn)} did not return in {seconds} s (lock-up)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fill(dev, tag, first, limit):
    """Write whole blocks first, first+1, ... until PoolFullError; returns the failing index."""
    for i in range(first, limit):
        try:
            dev.write(i * B, blk(tag, i))
        except cowblock.PoolFullError:
            return i
    raise AssertionError(f"no PoolFullError within {limit - first} blocks")


def assert_blocks(dev, tag, indices):
    for i in indices:
        got = dev.read(i * B, B)
        if got != blk(tag, i):
            raise AssertionError(f"device {dev.name!r}: block {i} ({tag=}) does not read back")


def assert_ok(pool):
    r = pool.check()
    assert r.ok, (r.errors, r.leaked_blocks, r.messages)


# --------------------------------------------------------------------------- capacity


def test_capacity_full_raises_at_the_first_write_that_needs_a_block(tmp_path):
    with create(tmp_path / "p", 32 * B) as p:
        a = p.create_device("a", 64 * B)
        failed = within(30, fill, a, 1, 0, 64)
        assert failed == 32 and p.used == p.size
        assert_blocks(a, 1, range(32))
        # writes that need no new block are still served when full
        within(10, a.write, 5 * B + 123, b"in place, unaligned")
        within(10, a.write, 31 * B + B - 1, b"!")
        # a write across a mapped and an unmapped block needs one: refused, nothing changed
        with pytest.raises(cowblock.PoolFullError):
            a.write(32 * B - 10, b"z" * 20)
        assert a.read(32 * B - 10, 20) == blk(1, 31)[-10:-1] + b"!" + bytes(10)
        # a 1-byte write into an unmapped block
        with pytest.raises(cowblock.PoolFullError):
            a.write(40 * B + 7, b"z")
        # a snapshot allocates nothing, so it works; a copy-up through it needs a block
        s = within(10, p.snapshot, "a", "s")
        with pytest.raises(cowblock.PoolFullError):
            s.write(3 * B + 4096, b"c" * 4096)
        with pytest.raises(cowblock.PoolFullError):
            s.discard(3 * B + 100, 200)        # a partial discard of a shared block copies up
        s.discard(4 * B, B)                     # a whole-block discard does not
        assert s.read(4 * B, B) == bytes(B) and a.read(4 * B, B) == blk(1, 4)
        assert s.read(3 * B, B) == a.read(3 * B, B) == blk(1, 3)
        assert p.used == p.size
        assert_ok(p)


def test_delete_makes_room_without_flush(tmp_path):
    with create(tmp_path / "p", 32 * B) as p:
        a = p.create_device("a", 64 * B)
        b = p.create_device("b", 64 * B)
        for i in range(20):
            a.write(i * B, blk(1, i))
        assert within(30, fill, b, 2, 0, 64) == 12
        ro = p.snapshot("a", "ro", readonly=True)
        p.delete("b")                       # no flush: its blocks are freed by the next commit
        assert within(30, fill, a, 3, 20, 64) == 32
        assert_blocks(a, 1, range(20))
        assert_blocks(a, 3, range(20, 32))
        assert ro.read(20 * B, 12 * B) == bytes(12 * B)
        assert_blocks(ro, 1, range(20))
        assert p.used == p.size
        assert_ok(p)
    with reopen(tmp_path / "p") as p:
        assert p.devices() == ["a", "ro"]
        assert_blocks(p.device("a"), 1, range(20))
        assert_blocks(p.device("a"), 3, range(20, 32))
        assert_ok(p)


def test_discard_makes_room_without_flush(tmp_path):
    with create(tmp_path / "p", 16 * B) as p:
        a = p.create_device("a", 64 * B)
        assert within(30, fill, a, 1, 0, 64) == 16
        a.discard(2 * B, 5 * B)             # whole blocks: freed
        a.discard(10 * B + 1, B)            # partial: a private block is zeroed in place
        assert within(30, fill, a, 2, 16, 64) == 21
        assert_blocks(a, 1, [0, 1, 7, 8, 9, 12, 13, 14, 15])
        assert_blocks(a, 2, range(16, 21))
        assert a.read(2 * B, 5 * B) == bytes(5 * B)
        assert a.read(10 * B, 2 * B) == blk(1, 10)[:1] + bytes(B) + blk(1, 11)[1:]
        assert_ok(p)


def test_deleting_an_origin_frees_only_what_no_snapshot_needs(tmp_path):
    """Deleting a device whose blocks a snapshot still uses makes no room; deleting the blocks'
    last user does, and then a snapshot's copy-up succeeds."""
    with create(tmp_path / "p", 24 * B) as p:
        a = p.create_device("a", 64 * B)
        x = p.create_device("x", 64 * B)
        for i in range(16):
            a.write(i * B, blk(1, i))
        for i in range(8):
            x.write(i * B, blk(9, i))
        s = p.snapshot("a", "s")
        with pytest.raises(cowblock.PoolFullError):
            s.write(0, b"s" * 100)
        p.delete("a")
        # s now holds a's blocks alone, but must not write into them in place: the committed
        # state still shows them through 'a' (a crash would put s's data into a)
        with pytest.raises(cowblock.PoolFullError):
            within(10, s.write, 0, b"s" * 100)
        assert_blocks(s, 1, range(16))
        p.delete("x")
        within(10, s.write, 0, b"s" * 100)
        assert s.read(0, B) == b"s" * 100 + blk(1, 0)[100:]
        assert_blocks(s, 1, range(1, 16))
        assert_ok(p)


def test_full_pool_many_threads_no_lockup(tmp_path):
    """Four writers hammer a full pool (each write refused at once), a reader reads through it,
    then the main thread deletes a device: exactly the freed blocks are handed out, and every
    thread finishes in bounded time with its data intact."""
    nthreads, per = 4, 12
    with create(tmp_path / "p", 64 * B) as p:
        spare = p.create_device("spare", 64 * B)
        devs = [p.create_device(f"t{k}", 64 * B) for k in range(nthreads)]
        for i in range(16):
            spare.write(i * B, blk(99, i))
        for k, d in enumerate(devs):
            for i in range(per):
                d.write(i * B, blk(k, i))
        assert p.used == p.size
        start = threading.Barrier(nthreads + 2)
        freed = threading.Event()
        refused = [0] * nthreads
        got = [[] for _ in range(nthreads)]
        errors = []

        def writer(k):
            try:
                d = devs[k]
                start.wait(10)
                for j in range(100):
                    with pytest.raises(cowblock.PoolFullError):
                        d.write((per + j % 8) * B, blk(k, per))
                    refused[k] += 1
                assert freed.wait(30)
                for i in range(per, 64):
                    try:
                        d.write(i * B, blk(k, i))
                    except cowblock.PoolFullError:
                        break
                    got[k].append(i)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def reader():
            try:
                start.wait(10)
                while not freed.is_set():
                    for k, d in enumerate(devs):
                        assert d.read(0, B) == blk(k, 0)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(nthreads)]
        threads.append(threading.Thread(target=reader, daemon=True))
        for t in threads:
            t.start()
        start.wait(10)
        deadline = time.monotonic() + 30
        while sum(refused) < 100 * nthreads and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        within(10, p.delete, "spare")
        freed.set()
        for t in threads:
            t.join(max(0.1, deadline + 30 - time.monotonic()))
        if any(t.is_alive() for t in threads):
            _LOCKUP.set()
            raise AssertionError("threads hung on a full pool (lock-up)")
        if errors:
            raise errors[0]
        assert refused == [100] * nthreads
        assert sum(len(g) for g in got) == 16, got   # exactly the 16 blocks the delete freed
        assert p.used == p.size
        for k, d in enumerate(devs):
            assert_blocks(d, k, list(range(per)) + got[k])
        assert_ok(p)


def test_full_pool_survives_reopen(tmp_path):
    with create(tmp_path / "p", 16 * B) as p:
        a = p.create_device("a", 64 * B)
        p.snapshot("a", "empty", readonly=True)
        assert fill(a, 1, 0, 64) == 16
    with reopen(tmp_path / "p") as p:
        a = p.device("a")
        assert p.used == p.size
        assert_blocks(a, 1, range(16))
        with pytest.raises(cowblock.PoolFullError):
            a.write(20 * B, b"x")
        assert_ok(p)


# --------------------------------------------------------------------------- file system full


@pytest.fixture
def small_fs():
    """A 16 MiB tmpfs mounted on a temporary directory (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill the file system needs root")
    d = tempfile.mkdtemp(prefix="cowblock-fsfull-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", d], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def fs_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_fs(p, flush_every=16):
    """On a pool bigger than its 16 MiB file system: 'keep' gets 64 flushed blocks, then
    'fill' is written until PoolFullError.  Returns (devices, index of the failing block)."""
    keep = p.create_device("keep", 32 * MiB)
    for i in range(64):
        keep.write(i * B, blk(1, i))
    p.flush()
    filler = p.create_device("fill", 64 * MiB)
    for i in range(1024):
        try:
            filler.write(i * B, blk(2, i))
        except cowblock.PoolFullError:
            return keep, filler, i
        if i % flush_every == flush_every - 1:
            p.flush()
    raise AssertionError("the 16 MiB file system never filled up")


def test_fs_full_raises_pool_full_and_keeps_data(small_fs):
    path = os.path.join(small_fs, "pool")
    with create(path, 64 * MiB) as p:
        keep, filler, failed = within(60, fill_fs, p)
        assert 64 + failed < 256, "the file system should fill before the pool's capacity"
        assert fs_free(small_fs) < 2 * B
        # everything written before the failing write reads back, flushed or not
        assert_blocks(keep, 1, range(64))
        assert_blocks(filler, 2, range(failed))
        assert filler.read(failed * B, B) == bytes(B)
        # an overwrite of an owned block needs no space: still served
        within(10, keep.write, 3 * B + 17, b"still usable")
        # and what was written can still be made durable
        within(30, p.flush)
    with reopen(path) as p:
        assert_blocks(p.device("fill"), 2, range(failed))
        got = p.device("keep").read(3 * B, B)
        assert got == blk(1, 3)[:17] + b"still usable" + blk(1, 3)[29:]


def test_fs_full_flushed_data_survives_reopen(small_fs):
    """Whatever happens to the unflushed tail when the file system fills up, a reopen shows
    every flushed block intact and a consistent pool."""
    path = os.path.join(small_fs, "pool")
    p = cowblock.Pool.create(path, size=64 * MiB, block_size=B)
    try:
        keep, filler, failed = within(60, fill_fs, p)
        flushed = failed // 16 * 16
    finally:
        try:
            if _LOCKUP.is_set():
                _HUNG.append(p)
            else:
                p.close()
        except cowblock.CowblockError:
            pass  # the close's commit may fail for lack of space: unflushed data may go
    with reopen(path) as p:
        assert_blocks(p.device("keep"), 1, range(64))
        f = p.device("fill")
        assert_blocks(f, 2, range(flushed))
        for i in range(flushed, failed + 1):
            assert f.read(i * B, B) in (blk(2, i), bytes(B)), f"block {i}: neither new nor zeros"
        r = p.check()
        assert r.errors == 0, r.messages


def hog(directory):
    """Another user of the file system takes every byte left (a file, kept)."""
    with open(os.path.join(directory, "hog"), "wb", buffering=0) as f:
        chunk = b"h" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        for n in (512, 1):
            try:
                while True:
                    f.write(chunk[:n])
            except OSError:
                pass
    assert fs_free(directory) == 0


@pytest.mark.parametrize("flush_every", [16, 1 << 30], ids=["fill-flushed", "fill-unflushed"])
def test_fs_full_to_the_last_byte_flush_still_works(small_fs, flush_every):
    """The file system fills up under a pool (here another file takes the last bytes): a
    flush must still make durable what was written (metadata needs space that data must not
    be able to take; dm-thin keeps a metadata reserve for this)."""
    path = os.path.join(small_fs, "pool")
    with create(path, 64 * MiB) as p:
        keep, filler, failed = within(60, fill_fs, p, flush_every)
        hog(small_fs)
        within(30, p.flush)
        assert_blocks(filler, 2, range(failed))
    with reopen(path) as p:
        assert_blocks(p.device("keep"), 1, range(64))
        assert_blocks(p.device("fill"), 2, range(failed))


@pytest.mark.parametrize("explicit_flush", [True, False], ids=["flush", "no-flush"])
@pytest.mark.parametrize("last_byte", [False, True], ids=["pool-filled-fs", "fs-filled-to-last-byte"])
def test_fs_full_delete_makes_room(small_fs, explicit_flush, last_byte):
    """Delete the device that filled the file system (written with no flush since 'keep'):
    with or without a flush, its space comes back and writes work again; check is clean (no
    block left behind by the failed write).  With last_byte, another file then takes what
    the failed write left."""
    path = os.path.join(small_fs, "pool")
    with create(path, 64 * MiB) as p:
        keep, filler, failed = within(60, fill_fs, p, 1 << 30)
        if last_byte:
            hog(small_fs)
        within(10, p.delete, "fill")
        if explicit_flush:
            within(30, p.flush)
        # the deleted device's 'failed' blocks are given back to the file system
        for i in range(64, 64 + failed // 2):
            within(10, keep.write, i * B, blk(3, i))
        assert_blocks(keep, 1, range(64))
        assert_blocks(keep, 3, range(64, 64 + failed // 2))
        within(30, p.flush)
        assert_ok(p)
    with reopen(path) as p:
        assert p.devices() == ["keep"]
        assert_blocks(p.device("keep"), 3, range(64, 64 + failed // 2))
        assert_ok(p)
