"""cowblock.imagefile: import only data, export sparse files, raw files in place."""

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import threading

import numpy as np
import pytest

import cowblock
from cowblock.imagefile import (RawImageFile, data_ranges, export_raw, import_raw,
                                punch_hole)
from tools import run_tool

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


# --------------------------------------------------------------------------- export targets


@contextlib.contextmanager
def loop_device(backing):
    """A loop device over file ``backing``; skips when loop devices cannot be
    set up here, and always detaches."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    res = subprocess.run(["losetup", "-f", "--show", str(backing)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot set up a loop device: {res.stderr.strip()}")
    node = res.stdout.strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=True)


def _special_files(tmp_path):
    """{kind: path} of special files; the FIFO last, since code that opens
    one for writing blocks until a reader comes."""
    out = {}
    try:
        os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        out["character device"] = tmp_path / "null"
    except PermissionError:
        pass  # not root: the other kinds still run
    out["directory"] = tmp_path / "dir"
    out["directory"].mkdir()
    os.mkfifo(tmp_path / "fifo")
    out["FIFO"] = tmp_path / "fifo"
    return out


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_special_files_and_removes_nothing(pool, tmp_path, overwrite):
    dev = pool.create_device("d", MiB)
    dev.write(0, b"data")
    names = set(os.listdir(tmp_path))
    for kind, path in _special_files(tmp_path).items():
        before = os.lstat(path)
        with pytest.raises(cowblock.InvalidArgumentError, match=kind):
            export_raw(dev, path, overwrite=overwrite)
        after = os.lstat(path)   # still there, the same node
        assert (after.st_ino, after.st_mode, after.st_rdev) == \
            (before.st_ino, before.st_mode, before.st_rdev), kind
        names.add(path.name)
    assert set(os.listdir(tmp_path)) == names     # nothing made, nothing removed


def test_export_to_a_block_device(pool, tmp_path):
    dev = pool.create_device("d", 2 * MiB)
    data = rand(300_000, 7)
    dev.write(4096, data)
    backing = tmp_path / "backing"
    with open(backing, "wb") as fh:
        fh.write(b"\xaa" * (3 * MiB))       # old content, to be overwritten (zeros too)
    small = tmp_path / "small"
    with open(small, "wb") as fh:
        fh.write(b"\xbb" * MiB)
    with loop_device(backing) as node, loop_device(small) as tiny:
        assert stat.S_ISBLK(os.stat(node).st_mode)
        with pytest.raises(cowblock.ExistsError, match="block device"):
            export_raw(dev, node)
        with pytest.raises(cowblock.InvalidArgumentError, match="less than"):
            export_raw(dev, tiny, overwrite=True)
        assert os.path.exists(tiny) and stat.S_ISBLK(os.stat(tiny).st_mode)
        seen = []
        res = export_raw(dev, node, overwrite=True, progress=lambda d, t: seen.append((d, t)))
        assert res.size == 2 * MiB and res.holes == 0
        assert seen[-1] == (2 * MiB, 2 * MiB)
        with open(node, "rb") as fh:
            got = fh.read(3 * MiB)
        assert stat.S_ISBLK(os.stat(node).st_mode)
    assert got[:2 * MiB] == dev.read(0, 2 * MiB)  # zeros written where the device has none
    assert got[2 * MiB:] == b"\xaa" * MiB         # past the exported size: untouched, not truncated
    with open(small, "rb") as fh:
        assert fh.read() == b"\xbb" * MiB         # the refused one: nothing written


def test_export_to_a_stream_writes_every_byte_in_order(pool):
    dev = pool.create_device("d", 9 * MiB)     # more than one chunk, mostly unmapped
    dev.write(5 * MiB - 10, rand(20, 8))
    r, w = os.pipe()
    got = bytearray()

    def reader():
        while True:
            b = os.read(r, 1 << 20)
            if not b:
                break
            got.extend(b)

    t = threading.Thread(target=reader)
    t.start()
    try:
        res = export_raw(dev, w)
    finally:
        os.close(w)
        t.join()
        os.close(r)
    assert bytes(got) == dev.read(0, dev.size)
    assert res.size == 9 * MiB


def test_failed_overwrite_keeps_the_old_file(pool, tmp_path):
    out = tmp_path / "out.raw"
    out.write_bytes(b"old content")
    os.chmod(out, 0o600)

    class Failing:
        size = 8 * MiB

        def extents(self):
            return [(0, 8 * MiB)]

        def readinto(self, offset, buf):
            if offset >= 4 * MiB:
                raise OSError(5, "read failed")
            buf[:] = b"\x01" * len(buf)

    with pytest.raises(OSError, match="read failed"):
        export_raw(Failing(), out, overwrite=True)
    assert out.read_bytes() == b"old content"
    assert [n for n in os.listdir(tmp_path) if "out.raw" in n] == ["out.raw"]  # no temporary left
    dev = pool.create_device("d", MiB)
    dev.write(0, b"new")
    export_raw(dev, out, overwrite=True)
    assert out.read_bytes()[:3] == b"new" and os.path.getsize(out) == MiB
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_failed_export_removes_only_the_file_it_made(tmp_path):
    class Failing:
        size = MiB

        def extents(self):
            return [(0, MiB)]

        def readinto(self, offset, buf):
            raise OSError(5, "read failed")

    with pytest.raises(OSError):
        export_raw(Failing(), tmp_path / "new.raw")
    assert not (tmp_path / "new.raw").exists()


def test_export_exists_message_names_the_argument(pool, tmp_path):
    out = tmp_path / "o.raw"
    out.write_bytes(b"x")
    with pytest.raises(cowblock.ExistsError, match="overwrite=True"):
        export_raw(pool.create_device("d", MiB), out)


# --------------------------------------------------------------------------- import sources

# The first bytes of each container format (from its specification), padded.
CONTAINERS = {
    "qcow2": b"QFI\xfb\x00\x00\x00\x03",
    "QED": b"QED\x00",
    "VMDK": b"KDMV\x01\x00\x00\x00",
    "VHDX": b"vhdxfile",
    "VDI": b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(0x40, b"\0") + b"\x7f\x10\xda\xbe",
    "VHD": b"conectix",
    "Parallels": b"WithoutFreeSpace",
    "gzip": b"\x1f\x8b\x08\x00",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "bzip2": b"BZh91AY&SY",
}


@pytest.mark.parametrize("fmt", sorted(CONTAINERS))
def test_import_refuses_container_formats(pool, tmp_path, fmt):
    path = make_sparse(tmp_path / "disk.img", MiB, {0: CONTAINERS[fmt]})
    with pytest.raises(cowblock.InvalidArgumentError, match=fmt) as info:
        import_raw(pool, path, name="x")
    if fmt in ("gzip", "xz", "zstd", "bzip2"):
        assert "decompress it first" in str(info.value)
    else:
        assert "qemu-img convert -f " in str(info.value) and "-O raw" in str(info.value)
    assert pool.devices() == []


def test_import_refuses_a_real_qcow2(pool, tmp_path):
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    path = tmp_path / "disk.qcow2"
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    with pytest.raises(cowblock.InvalidArgumentError,
                       match="qcow2.*qemu-img convert -f qcow2 -O raw"):
        import_raw(pool, path, name="x")


def test_raw_data_that_merely_starts_like_text_is_imported(pool, tmp_path):
    path = make_sparse(tmp_path / "disk.img", MiB, {0: b"BZh is not bzip2 here"})
    assert import_raw(pool, path, name="x").device.read(0, 3) == b"BZh"


def test_import_names_what_a_non_file_is(pool, tmp_path):
    for kind, path in _special_files(tmp_path).items():
        with pytest.raises(cowblock.InvalidArgumentError, match=f"is a {kind}") as info:
            import_raw(pool, path, name="x")
        assert "does not exist" not in str(info.value)
    assert pool.devices() == []


def test_import_from_a_block_device_reads_it_as_raw_data(pool, tmp_path):
    backing = make_sparse(tmp_path / "backing", 2 * MiB, {MiB: rand(5000, 9)})
    with loop_device(backing) as node:
        res = import_raw(pool, node, name="x")
        assert res.size == 2 * MiB
        assert res.device.read(0, 2 * MiB) == expected_content(2 * MiB, {MiB: rand(5000, 9)})


# --------------------------------------------------------------------------- import into a device

def test_import_into_a_snapshot_keeps_what_is_unchanged_shared(pool, tmp_path):
    base = pool.create_device("base", 16 * MiB)
    content = bytearray(rand(16 * MiB, 10))
    content[8 * MiB:9 * MiB] = bytes(MiB)        # a zero stretch in the base
    base.write(0, bytes(content))
    snap = pool.snapshot("base", "c")
    changed = 0
    for i in range(6):                           # six scattered blocks change
        off = (2 * i + 1) * MiB + 3 * BS
        content[off:off + BS] = rand(BS, 20 + i)
        changed += BS
    content[12 * MiB:12 * MiB + 2 * BS] = bytes(2 * BS)   # two blocks become zero
    content[8 * MiB + 4096:8 * MiB + 8192] = b"\x05" * 4096  # zeros become data
    changed += BS
    path = tmp_path / "changed.raw"
    path.write_bytes(bytes(content))
    res = import_raw(snap, path)
    pool.flush()
    assert snap.read(0, 16 * MiB) == bytes(content)
    assert base.read(12 * MiB, 8) != bytes(8)            # the base is untouched
    u = snap.usage()
    assert u.exclusive == changed                        # before: about 16 MiB
    # the block written in part keeps its origin for the rest: still shared
    assert u.shared == 16 * MiB - 6 * BS - 2 * BS
    assert res.discarded == 2 * BS
    assert res.copied == 6 * BS + 4096
    assert res.unchanged >= 16 * MiB - MiB - 9 * BS
    assert res.size == res.copied + res.holes + res.zeros + res.unchanged


def test_import_into_a_device_discards_past_the_end_and_in_holes(pool, tmp_path):
    dev = pool.create_device("d", 16 * MiB)
    dev.write(0, b"\xff" * (4 * MiB))
    dev.write(12 * MiB, b"\xee" * 4096)
    path = make_sparse(tmp_path / "img.raw", 8 * MiB, {3 * MiB: b"\xff" * BS})
    res = import_raw(dev, path)
    assert dev.read(0, 16 * MiB) == expected_content(16 * MiB, {3 * MiB: b"\xff" * BS})
    assert dev.usage().mapped == BS
    assert res.copied == 0 and res.unchanged == BS


# --------------------------------------------------------------------------- out of space

def test_pool_full_message_says_the_pool_and_gives_numbers(tmp_path):
    path = make_sparse(tmp_path / "big.raw", 4 * MiB, {0: rand(4 * MiB, 11)})
    with cowblock.Pool.create(tmp_path / "p", size=MiB, block_size=BS) as pool:
        with pytest.raises(cowblock.PoolFullError) as info:
            import_raw(pool, path, name="big")
        msg = str(info.value)
        assert "the pool is full" in msg and f"of {cowblock.units.format_exact(MiB)} used" in msg
        assert "device 'big'" in msg and "file system" not in msg
        assert pool.devices() == []


@contextlib.contextmanager
def small_file_system(tmp_path, size):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_system_full_message_says_the_file_system(tmp_path):
    path = make_sparse(tmp_path / "big.raw", 16 * MiB, {0: rand(16 * MiB, 12)})
    with small_file_system(tmp_path, 8 * MiB) as mnt:
        with cowblock.Pool.create(mnt / "p", size=64 * MiB, block_size=BS) as pool:
            with pytest.raises(cowblock.PoolFullError) as info:
                import_raw(pool, path, name="big")
            msg = str(info.value)
            assert "file system" in msg and "pool is full" not in msg
            assert "free" in msg and f"of {cowblock.units.format_exact(64 * MiB)} used" in msg
