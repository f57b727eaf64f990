"""cowblock.imagefile: import only data, export sparse files, raw files in place."""

import errno
import hashlib
import os

import numpy as np
import pytest

import cowblock
from cowblock.imagefile import (RawImageFile, data_ranges, export_raw, import_raw,
                                punch_hole)

BS = 64 * 1024
MiB = 2**20


def make_sparse(path, size, pieces):
    """pieces: {offset: bytes}; everything else is a hole."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, data in pieces.items():
            fh.seek(off)
            fh.write(data)
    return path


def expected_content(size, pieces):
    buf = bytearray(size)
    for off, data in pieces.items():
        buf[off:off + len(data)] = data
    return bytes(buf)


def rand(n, seed=1):
    return np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8).tobytes()


PIECES = {
    0: rand(10_000, 1),                  # partial first granule
    3 * MiB: rand(200 * 1024, 2),
    5 * MiB + 123: rand(5000, 3),        # unaligned
    6 * MiB: bytes(256 * 1024),          # written zeros: data, but all zero
}


def test_data_ranges_finds_the_data_and_skips_holes(tmp_path):
    path = make_sparse(tmp_path / "f.raw", 8 * MiB, {MiB: b"x" * 4096, 4 * MiB: b"y" * 8192})
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = data_ranges(fd, 8 * MiB)
    finally:
        os.close(fd)
    covered = sum(length for _, length in ranges)
    assert covered < 8 * MiB                   # holes were skipped
    for off, n in ((MiB, 4096), (4 * MiB, 8192)):
        assert any(s <= off and off + n <= s + l for s, l in ranges)
    assert data_ranges(os.open(tmp_path / "f.raw", os.O_RDONLY), 0) == []


def test_import_into_pool_copies_only_data(pool, tmp_path):
    size = 8 * MiB + 100                       # not a multiple of 512
    path = make_sparse(tmp_path / "img.raw", size, PIECES)
    res = import_raw(pool, path, name="img")
    dev = res.device
    assert dev.name == "img"
    assert dev.size == -(-size // 512) * 512
    assert dev.read(0, size) == expected_content(size, PIECES)
    assert dev.read(size, dev.size - size) == bytes(dev.size - size)
    assert res.size == size
    assert res.copied + res.holes + res.zeros == size
    assert res.skipped == res.holes + res.zeros
    nonzero = sum(len(d) for d in PIECES.values() if any(d))
    assert nonzero <= res.copied <= nonzero + 4 * 4096
    assert res.zeros >= 256 * 1024             # the written zeros were not copied
    assert res.holes > 6 * MiB
    pool.flush()
    # Only blocks holding non-zero data are allocated.
    assert pool.used <= 6 * BS


def test_import_into_existing_device_replaces_its_content(pool, tmp_path):
    dev = pool.create_device("d", 16 * MiB)
    dev.write(0, b"\xff" * (2 * MiB))
    dev.write(12 * MiB, b"\xee" * 4096)        # past the file's end
    path = make_sparse(tmp_path / "img.raw", 8 * MiB, PIECES)
    res = import_raw(dev, path)
    assert res.device is dev
    assert dev.read(0, 8 * MiB) == expected_content(8 * MiB, PIECES)
    assert dev.read(8 * MiB, 8 * MiB) == bytes(8 * MiB)


def test_import_refuses_a_file_larger_than_the_device(pool, tmp_path):
    dev = pool.create_device("small", MiB)
    dev.write(0, b"keep")
    path = make_sparse(tmp_path / "big.raw", 2 * MiB, {0: b"x"})
    with pytest.raises(cowblock.InvalidArgumentError, match="larger than"):
        import_raw(dev, path)
    assert dev.read(0, 4) == b"keep"           # unchanged


def test_failed_import_into_pool_leaves_no_device(pool, tmp_path):
    path = make_sparse(tmp_path / "big.raw", 2 * MiB, {0: b"x"})
    with pytest.raises(cowblock.InvalidArgumentError):
        import_raw(pool, path, name="half", size=MiB)
    assert "half" not in pool.devices()


def test_import_errors(pool, tmp_path):
    with pytest.raises(cowblock.NotFoundError):
        import_raw(pool, tmp_path / "missing.raw", name="x")
    with pytest.raises(cowblock.InvalidArgumentError):
        import_raw(pool, tmp_path, name="x")                # a directory
    path = make_sparse(tmp_path / "a.raw", MiB, {0: b"a"})
    with pytest.raises(cowblock.InvalidArgumentError):
        import_raw(pool, path)                              # no name
    with pytest.raises(cowblock.InvalidArgumentError):
        import_raw(pool.create_device("d", MiB), path, name="y")
    assert pool.devices() == ["d"]


def test_import_without_seek_data_reads_everything(pool, tmp_path, monkeypatch):
    path = make_sparse(tmp_path / "img.raw", 8 * MiB, PIECES)
    real_lseek = os.lseek

    def no_seek_data(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", no_seek_data)
    res = import_raw(pool, path, name="img")
    assert res.holes == 0                     # nothing known to be a hole ...
    assert res.zeros > 7 * MiB                # ... but zero blocks still skipped
    assert res.device.read(0, 8 * MiB) == expected_content(8 * MiB, PIECES)


def test_export_writes_a_sparse_file_with_the_same_content(pool, tmp_path):
    dev = pool.create_device("d", 32 * MiB)
    dev.write(MiB, rand(100_000, 5))
    dev.write(20 * MiB + 4096, rand(4096, 6))
    dev.write(25 * MiB, bytes(BS))            # a mapped block of zeros
    out = tmp_path / "out.raw"
    res = export_raw(dev, out)
    assert os.path.getsize(out) == dev.size
    with open(out, "rb") as fh:
        assert fh.read() == dev.read(0, dev.size)
    assert res.copied + res.holes + res.zeros == dev.size
    assert 100_000 + 4096 <= res.copied <= 100_000 + 4096 + 4096
    assert res.zeros >= BS
    assert os.stat(out).st_blocks * 512 < MiB  # sparse
    with pytest.raises(cowblock.ExistsError):
        export_raw(dev, out)
    dev.write(0, b"new")
    export_raw(dev, out, overwrite=True)
    with open(out, "rb") as fh:
        assert fh.read(3) == b"new"


def test_export_then_import_round_trip(pool, tmp_path):
    path = make_sparse(tmp_path / "img.raw", 8 * MiB, PIECES)
    dev = import_raw(pool, path, name="a").device
    export_raw(dev, tmp_path / "copy.raw")
    with open(path, "rb") as a, open(tmp_path / "copy.raw", "rb") as b:
        assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()


def test_raw_image_file_has_the_device_surface(tmp_path):
    path = make_sparse(tmp_path / "r.raw", 4 * MiB, {MiB: b"hello"})
    with RawImageFile(path) as f:
        assert f.size == 4 * MiB
        assert f.name == "r.raw"
        assert f.read(MiB, 5) == b"hello"
        buf = bytearray(5)
        assert f.readinto(MiB, buf) == 5 and buf == b"hello"
        arr = np.zeros(5, dtype=np.uint8)
        f.readinto(MiB, arr)
        assert arr.tobytes() == b"hello"
        assert f.write(2 * MiB, memoryview(b"world")) == 5
        f.flush()
        assert any(s <= MiB < s + l for s, l in f.extents())
        with pytest.raises(cowblock.InvalidArgumentError):
            f.read(4 * MiB - 2, 3)
        with pytest.raises(cowblock.InvalidArgumentError):
            f.write(4 * MiB, b"x")
        with pytest.raises(cowblock.InvalidArgumentError):
            f.read(-1, 1)
        assert f.size == 4 * MiB                # writes never grow it
    assert f.closed
    f.close()                                  # idempotent
    with pytest.raises(ValueError):
        f.read(0, 1)
    with open(path, "rb") as fh:
        fh.seek(2 * MiB)
        assert fh.read(5) == b"world"


def test_raw_image_file_discard_punches_a_hole(tmp_path):
    path = make_sparse(tmp_path / "r.raw", 4 * MiB, {0: rand(2 * MiB)})
    before = os.stat(path).st_blocks
    with RawImageFile(path) as f:
        f.discard(0, MiB)
        assert f.read(0, MiB) == bytes(MiB)
        assert f.read(MiB, 10) == rand(2 * MiB)[MiB:MiB + 10]
    assert os.stat(path).st_blocks < before
    assert os.path.getsize(path) == 4 * MiB


def test_raw_image_file_read_only_and_errors(tmp_path):
    path = make_sparse(tmp_path / "r.raw", MiB, {0: b"a"})
    with RawImageFile(path, readonly=True) as f:
        with pytest.raises(cowblock.ReadOnlyError):
            f.write(0, b"x")
        with pytest.raises(cowblock.ReadOnlyError):
            f.discard(0, 4096)
    with pytest.raises(cowblock.NotFoundError):
        RawImageFile(tmp_path / "nope.raw")
    with pytest.raises(cowblock.InvalidArgumentError):
        RawImageFile(tmp_path)


def test_export_of_a_raw_image_file(tmp_path):
    path = make_sparse(tmp_path / "r.raw", 2 * MiB, {4096: b"abc"})
    with RawImageFile(path, readonly=True) as f:
        res = export_raw(f, tmp_path / "copy.raw")
    assert res.copied == 4096
    with open(tmp_path / "copy.raw", "rb") as fh:
        data = fh.read()
    assert data[4096:4099] == b"abc" and len(data) == 2 * MiB


def test_punch_hole_zeroes_the_range(tmp_path):
    path = make_sparse(tmp_path / "p.raw", MiB, {0: b"\x01" * MiB})
    fd = os.open(path, os.O_RDWR)
    try:
        if not punch_hole(fd, 0, 65536):
            pytest.skip("file system cannot punch holes")
        assert os.pread(fd, 65536, 0) == bytes(65536)
        assert os.pread(fd, 1, 65536) == b"\x01"
    finally:
        os.close(fd)
