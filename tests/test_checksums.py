"""Data checksums: chosen at create, verified on every read, scrub.

The crash, power-loss and fault-injection harnesses run pools with and
without checksums too (crashlib, test_powerloss, test_faults); this file
checks the feature itself: that damage is caught and named, never
returned, and never laundered into a fresh block by a copy-up.  The feature's tests run on
both backends (the ``backend`` fixture), the damage written through tests/rawstore.py into
the data file or the data store's RADOS objects.
"""
import json
import os
import random
import subprocess
import sys
import time

import pytest

import cowblock

BS = 64 * 1024
SUB = 4096


def make(where, block_size=BS, checksums=True, name="pool"):
    """A pool at ``where``: a Backend (a fresh location there) or a directory."""
    loc = where.location(name) if hasattr(where, "location") else where / name
    return cowblock.Pool.create(loc, size=256 * block_size,
                                block_size=block_size, checksums=checksums)


def flip(path, offset, mask=0x01):
    """Flip bits of one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def cowblock_dir(tmp_path):
    """The file backend alone, for tests that are about the feature, not the store."""
    from conftest import Backend
    return Backend("file", tmp_path)


def block_of(pool, name, vblock):
    """The data block a device's virtual block maps to, from the dump (which
    shows the committed state: flush first)."""
    for dev in pool.dump()["devices"]:
        if dev["name"] != name:
            continue
        for run in dev["mappings"]:
            first, n = run["virt"], run["length"]
            if first <= vblock < first + n and "data" in run:
                return run["data"] + (vblock - first)
    raise AssertionError(f"{name} block {vblock} is not mapped")


def test_off_by_default_and_remembered(tmp_path):
    # files only: it measures the data file's length
    with make(tmp_path, checksums=False, name="plain") as p:
        assert p.checksums is False
        assert p.stats()["checksums"] is False
    with make(tmp_path) as p:
        assert p.checksums is True
    with cowblock.Pool.open(tmp_path / "pool", readonly=True) as p:
        assert p.checksums is True
    # the table sits after the data blocks: the data file is that much longer
    plain = os.path.getsize(tmp_path / "plain" / "data")
    summed = os.path.getsize(tmp_path / "pool" / "data")
    assert plain == 256 * BS
    assert summed == 256 * BS + 16384  # 256 blocks x 16 sub-blocks x 4 bytes


@pytest.mark.parametrize("block_size", [4096, 16384, 65536, 1 << 20])
def test_random_ops_match_a_model_and_scrub_clean(backend, block_size):
    """Partial writes, copy-ups, discards, snapshots and flushes in a random
    mix read back exactly, across a reopen, and scrub finds nothing."""
    rng = random.Random(block_size)
    size = 24 * block_size
    model = {"a": bytearray(size)}
    with make(backend, block_size) as p:
        where = p.path
        p.create_device("a", size)
        for step in range(300):
            name = rng.choice(sorted(model))
            dev = p.device(name)
            r = rng.random()
            if r < 0.55 and not dev.readonly:
                off = rng.randrange(size)
                n = min(size - off, rng.choice([1, 100, 4096, 5000, block_size, 3 * block_size]))
                data = rng.randbytes(n)
                dev.write(off, data)
                model[name][off:off + n] = data
            elif r < 0.65 and not dev.readonly:
                off = rng.randrange(size)
                n = min(size - off, rng.randrange(1, 2 * block_size))
                dev.discard(off, n)
                model[name][off:off + n] = bytes(n)
            elif r < 0.72 and len(model) < 6:
                new = f"s{step}"
                p.snapshot(name, new)
                model[new] = bytearray(model[name])
            elif r < 0.76 and len(model) > 1:
                p.delete(name)
                del model[name]
            elif r < 0.9:
                p.flush()
            else:
                off = rng.randrange(size)
                n = min(size - off, rng.randrange(1, 3 * block_size))
                assert dev.read(off, n) == model[name][off:off + n]
        for name, want in model.items():
            assert p.device(name).read(0, size) == want, name
        assert p.check().ok
    with cowblock.Pool.open(where) as p:
        for name, want in model.items():
            assert p.device(name).read(0, size) == want, name
        report = p.scrub()
        assert report.ok and report.checksums and report.bad == 0
        assert report.bytes > 0 and report.blocks > 0
        assert p.stats()["checksum_failures"] == 0


def test_committed_blocks_are_not_rewritten(backend):
    """After a flush, a write to a block the device alone holds copies up:
    the committed bytes (and so their checksums) stay as they were."""
    with make(backend) as p:
        d = p.create_device("d", 4 * BS)
        d.write(0, b"a" * BS)
        d.write(0, b"b" * 10)   # same transaction: in place
        assert p.used == BS
        p.flush()
        d.write(0, b"c" * 10)   # committed: a new block, the old one as origin
        assert p.used == 2 * BS
        assert d.read(0, 12) == b"c" * 10 + b"aa"
        d.write(SUB, b"d" * (BS - SUB))  # now complete: the origin goes
        p.flush()
        assert p.used == BS
        assert d.read(0, BS) == b"c" * 10 + b"a" * (SUB - 10) + b"d" * (BS - SUB)


def damaged_pool(backend):
    """A pool whose device "a" has a bit flipped in its second sub-block,
    which snapshot "s" shares; returns (location, data block, its stores)."""
    with make(backend) as p:
        path = p.path
        a = p.create_device("a", 8 * BS)
        a.write(0, bytes(range(256)) * (2 * BS // 256))
        p.snapshot("a", "s")
        p.flush()
        block = block_of(p, "a", 0)
    stores = backend.stores(path)
    stores.flip("data", block * BS + SUB + 123)
    return path, block, stores


def test_damaged_read_raises_naming_the_offset(backend):
    path, _, _ = damaged_pool(backend)
    want = bytes(range(256)) * (2 * BS // 256)
    with cowblock.Pool.open(path) as p:
        a = p.device("a")
        for off, n in ((SUB, 1), (SUB + 123, 1), (0, BS), (100, SUB + 50), (SUB + SUB - 1, 2)):
            with pytest.raises(cowblock.ChecksumError) as exc:
                a.read(off, n)
            assert exc.value.offset == SUB
            assert "offset 4096" in str(exc.value) and "'a'" in str(exc.value)
            assert isinstance(exc.value, cowblock.CorruptError)
        buf = bytearray(2 * SUB)
        with pytest.raises(cowblock.ChecksumError):
            a.readinto(0, buf)
        with pytest.raises(cowblock.ChecksumError):
            p.device("s").read(0, BS)
        with pytest.raises(cowblock.ChecksumError):
            a.read_blocks([0])
        # the rest reads as it was written
        assert a.read(0, SUB) == want[:SUB]
        assert a.read(2 * SUB, BS - 2 * SUB) == want[2 * SUB:BS]
        assert a.read(BS, BS) == want[BS:]
        assert p.stats()["checksum_failures"] >= 8
        # metadata is fine: check says so; the damage is scrub's to find
        assert p.check().ok


def test_copy_up_does_not_launder_damage(backend):
    """A write that copies up the damaged sub-block from the shared block
    fails rather than writing the bad bytes under a fresh checksum."""
    path, block, _ = damaged_pool(backend)
    with cowblock.Pool.open(path) as p:
        s = p.device("s")
        with pytest.raises(cowblock.ChecksumError) as exc:
            s.write(SUB + 10, b"x")      # completes sub-block 1 from the origin
        assert exc.value.offset == SUB
        s.write(0, b"y" * 10)            # sub-block 0 is intact: copy-up works
        assert s.read(0, 10) == b"y" * 10
        s.write(SUB, b"z" * SUB)         # overwrite the damaged sub-block whole
        assert s.read(SUB, SUB) == b"z" * SUB
        with pytest.raises(cowblock.ChecksumError):
            p.device("a").read(SUB, 1)   # a still shows the damage
        # once s no longer reads the damaged block for that sub-block, scrub
        # names a alone
        report = p.scrub()
        assert report.bad == 1
        (d,) = report.damage
        assert (d.device, d.offset, d.length, d.block, d.devices, d.error) == (
            "a", SUB, SUB, block, 1, "checksum")


def test_scrub_names_every_damage(backend):
    path, block, stores = damaged_pool(backend)
    stores.flip("data", (block + 1) * BS + 5 * SUB)  # a's second block, sub-block 5
    with cowblock.Pool.open(path) as p:
        seen = []
        report = p.scrub(progress=lambda done, total: seen.append((done, total)))
        assert not report.ok and report.bad == 2
        got = sorted((d.device, d.offset, d.devices) for d in report.damage)
        assert got == [("a", SUB, 2), ("a", BS + 5 * SUB, 2)]
        assert report.bytes == 2 * BS and report.blocks == 2
        assert seen and seen[-1] == (2 * BS, 2 * BS)
        limited = p.scrub(max_damage=1)
        assert limited.bad == 2 and len(limited.damage) == 1


def test_scrub_progress_error_stops_it(tmp_path):
    path, _, _ = damaged_pool(cowblock_dir(tmp_path))
    with cowblock.Pool.open(path) as p:
        def boom(done, total):
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError):
            p.scrub(progress=boom)
        assert p.scrub().bad == 1  # the pool goes on
        with pytest.raises(ValueError):
            p.scrub(max_damage=-1)


def test_scrub_is_online_paced_and_follows_changes(tmp_path):
    """Writes go on while a (rate-limited) scrub runs; blocks freed and
    reused meanwhile, whose stale sub-blocks no longer match their
    checksums, are not reported as damage."""
    rate = 8 << 20
    with make(tmp_path) as p:  # 256 blocks
        a = p.create_device("a", 128 * BS)
        a.write(0, random.Random(3).randbytes(128 * BS))  # blocks 0..127, every sub-block
        p.snapshot("a", "s")
        p.flush()
        changed = []

        def progress(done, total):
            if changed or done >= total:
                return
            # the first slice (4 MiB) is read; the scrub sleeps for its rate
            p.delete("s")
            a.discard(0, 128 * BS)
            p.flush()  # blocks 0..127 free and punched
            b = p.create_device("b", 256 * BS)
            for k in range(256):  # the whole pool: 128..255, then 0..127 again
                b.write(k * BS, b"n" * SUB)
            changed.append(done)

        t0 = time.monotonic()
        report = p.scrub(progress=progress, rate=rate)
        elapsed = time.monotonic() - t0
        assert changed and changed[0] < 128 * BS
        assert report.ok and report.bad == 0, report.damage
        assert elapsed >= 128 * BS / rate * 0.9  # paced
        assert p.device("b").read(0, SUB) == b"n" * SUB
        assert p.scrub().ok and p.check().ok
        with pytest.raises(ValueError):
            p.scrub(rate=0)


def test_close_from_another_thread_stops_a_scrub(tmp_path):
    import threading

    p = make(tmp_path)
    p.create_device("a", 64 * BS).write(0, b"c" * 64 * BS)
    closer = threading.Timer(0.3, p.close)
    closer.start()
    with pytest.raises(cowblock.ClosedError):
        p.scrub(rate=1 << 20)  # 4 s at that rate: the close comes first
    closer.join()
    assert p.closed
    with pytest.raises(cowblock.ClosedError):
        p.scrub()


def test_damaged_table_is_caught_too(backend):
    path, block, stores = damaged_pool(backend)
    table = 256 * BS
    stores.flip("data", table + 4 * (block * 16 + 3))  # the checksum of sub-block 3
    with cowblock.Pool.open(path) as p:
        with pytest.raises(cowblock.ChecksumError) as exc:
            p.device("a").read(3 * SUB, 10)
        assert exc.value.offset == 3 * SUB


def test_scrub_without_checksums_reads_back(tmp_path):
    with make(tmp_path, checksums=False) as p:
        p.create_device("a", 4 * BS).write(0, b"q" * (BS + 10))
        p.snapshot("a", "b")
        report = p.scrub()
        assert report.ok and not report.checksums
        assert report.blocks == 2 and report.bytes == BS + SUB  # one sub-block of the 2nd


def test_truncated_table_is_refused(tmp_path):
    # files only: a data file cut short (a RADOS store's cb.size: test_corrupt)
    with make(tmp_path) as p:
        p.create_device("a", BS).write(0, b"x")
    os.truncate(tmp_path / "pool" / "data", 256 * BS + 100)
    with pytest.raises(cowblock.CorruptError):
        cowblock.Pool.open(tmp_path / "pool")


def test_cli_create_info_scrub(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cowblock", *args], cwd=tmp_path,
                              capture_output=True, text=True)

    r = cli("pool", "create", "p", "--size", "16M", "--checksums")
    assert r.returncode == 0 and "checksums on" in r.stdout
    assert cli("--pool", "p", "device", "create", "a", "1M").returncode == 0
    with cowblock.Pool.open(tmp_path / "p") as p:
        p.device("a").write(0, b"z" * 3 * SUB)
        p.flush()
        block = block_of(p, "a", 0)
    info = json.loads(cli("pool", "info", "p", "--json").stdout)
    assert info["checksums"] is True
    r = cli("pool", "scrub", "p", "--progress")
    assert r.returncode == 0, r.stderr
    assert "verified against checksums; no damage found" in r.stdout
    assert "scrub" in r.stderr  # the bar, forced on although stderr is a pipe
    flip(tmp_path / "p" / "data", block * BS + 2 * SUB)
    r = cli("pool", "scrub", "p")
    assert r.returncode == 2
    assert "device 'a' at offset 8192" in r.stdout and r.stderr == ""
    out = json.loads(cli("pool", "scrub", "p", "--json").stdout)
    assert out["ok"] is False and out["bad"] == 1
    assert out["damage"][0]["device"] == "a" and out["damage"][0]["offset"] == 2 * SUB
