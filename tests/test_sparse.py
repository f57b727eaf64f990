"""Sparse files on disk (st_blocks): a fresh pool with a 1 TiB device uses almost nothing,
writing 10 MiB costs about 10 MiB, snapshots cost (almost) nothing, and deleting or
discarding gives the space back to the file system once committed (fallocate PUNCH_HOLE)."""

import ctypes
import ctypes.util
import errno
import os

import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
B = 64 * KiB

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def disk_bytes(path):
    """Bytes the files under path occupy on disk (st_blocks * 512), per file and in total."""
    per = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            per[p] = os.stat(p).st_blocks * 512
    return sum(per.values()), per


def _punch_hole_works(directory):
    """True if the file system under `directory` frees space on FALLOC_FL_PUNCH_HOLE."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is None:
        return False, "libc has no fallocate"
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    probe = os.path.join(directory, "punch-probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(MiB))
        os.fsync(fd)
        before = os.fstat(fd).st_blocks
        rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, MiB)
        if rc != 0:
            e = ctypes.get_errno()
            return False, f"fallocate(PUNCH_HOLE) fails here: {errno.errorcode.get(e, e)}"
        os.fsync(fd)
        after = os.fstat(fd).st_blocks
        if after * 2 > before:
            return False, "fallocate(PUNCH_HOLE) frees no space on this file system"
        return True, ""
    finally:
        os.close(fd)
        os.unlink(probe)


@pytest.fixture
def punch_hole(tmp_path):
    ok, why = _punch_hole_works(str(tmp_path))
    if not ok:
        pytest.skip(f"file system of {tmp_path} cannot punch holes: {why}")


def test_fresh_pool_with_1tib_device_is_tiny(tmp_path):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=16 * GiB, block_size=B) as p:
        d = p.create_device("big", TiB)
        d.write(TiB - 4096, b"tail")  # one block at the very end
        p.flush()
        total, per = disk_bytes(path)
        assert total < MiB, per
        for f in per:
            assert os.path.getsize(f) <= 16 * GiB + 64 * MiB  # apparent size only, no preallocation
    total, per = disk_bytes(path)
    assert total < MiB, per


def test_writing_10mib_costs_about_10mib(tmp_path):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=GiB, block_size=B) as p:
        d = p.create_device("big", TiB)
        p.flush()
        before, _ = disk_bytes(path)
        for i in range(10):
            d.write(i * 100 * MiB + 12345 * B, os.urandom(MiB))  # 1 MiB pieces spread over 1 GiB
        p.flush()
        after, per = disk_bytes(path)
        grown = after - before
        # 10 MiB of data, on 16 or 17 blocks' boundaries at most: 10 MiB + 10 blocks, plus metadata
        assert 10 * MiB <= grown <= 10 * MiB + 10 * B + 2 * MiB, (grown, per)
        assert p.used <= 10 * MiB + 10 * B
        assert p.stats()["data_bytes_on_disk"] >= 10 * MiB


def test_snapshots_cost_almost_nothing_on_disk(tmp_path):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=GiB, block_size=B) as p:
        d = p.create_device("base", 64 * MiB)
        d.write(0, os.urandom(16 * MiB))
        p.flush()
        before, _ = disk_bytes(path)
        for i in range(20):
            p.snapshot("base" if i == 0 else f"s{i - 1}", f"s{i}")
        p.flush()
        after, per = disk_bytes(path)
        assert after - before < MiB, per


def test_delete_and_flush_punch_space_back(tmp_path, punch_hole):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=GiB, block_size=B) as p:
        p.flush()
        base_total, base_per = disk_bytes(path)
        a = p.create_device("a", TiB)
        b = p.create_device("b", 64 * MiB)
        a.write(TiB // 2, os.urandom(10 * MiB))
        b.write(0, os.urandom(6 * MiB))
        s = p.snapshot("a", "s")
        s.write(TiB // 2, os.urandom(MiB))  # 16 blocks of its own
        p.flush()
        full_total, full_per = disk_bytes(path)
        assert full_total - base_total >= 17 * MiB
        data_file = max(full_per, key=lambda f: full_per[f] - base_per.get(f, 0))
        assert full_per[data_file] >= 17 * MiB

        p.delete("a")  # shared with s: only a's exclusive blocks (1 MiB worth) go
        p.flush()
        _, per = disk_bytes(path)
        assert full_per[data_file] - per[data_file] >= MiB - B
        assert per[data_file] >= 16 * MiB

        p.delete("s")
        p.delete("b")
        p.flush()
        assert p.used == 0
        total, per = disk_bytes(path)
        assert per[data_file] < MiB, per
        assert total < base_total + 2 * MiB, per
    total, per = disk_bytes(path)
    assert per[data_file] < MiB


def test_discard_punches_space_back(tmp_path, punch_hole):
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=GiB, block_size=B) as p:
        d = p.create_device("d", 64 * MiB)
        d.write(0, os.urandom(12 * MiB))
        p.flush()
        full, per_full = disk_bytes(path)
        data_file = max(per_full, key=per_full.get)
        d.discard(MiB + 100, 10 * MiB)  # whole blocks inside are freed
        p.flush()
        _, per = disk_bytes(path)
        freed = per_full[data_file] - per[data_file]
        assert freed >= 10 * MiB - 2 * B, (freed, per)
        assert p.used == 2 * MiB + B  # 192 blocks - 159 whole ones inside the range
        assert d.read(MiB + 100, 10 * MiB) == bytes(10 * MiB)
