"""DeviceIO: a device as an io.RawIOBase (cowblock/deviceio.py), with shutil.copyfileobj,
io.BufferedReader/BufferedRandom and io.TextIOWrapper on top."""

import array
import io
import os
import random
import shutil

import numpy as np
import pytest

import cowblock
from cowblock.deviceio import DeviceEndError, DeviceIO

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


@pytest.fixture
def dev(pool):
    d = pool.create_device("d", 4 * B + 512)
    d.write(0, rnd(d.size, 1))
    return d


def test_open_returns_deviceio(dev):
    with dev.open() as f:
        assert isinstance(f, DeviceIO) and isinstance(f, io.RawIOBase)
        assert f.mode == "rb" and f.name == "d"
        assert f.readable() and f.seekable() and not f.writable()
        assert not f.isatty()
    with dev.open("r+b") as f:
        assert f.mode == "r+b" and f.writable()
    with dev.open("rb+") as f:
        assert f.writable()
    with DeviceIO(dev, "rb") as f:
        assert f.read(4) == dev.read(0, 4)


def test_sequential_read(dev):
    data = dev.read(0, dev.size)
    with dev.open("rb") as f:
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        assert f.read(B) == data[10 : 10 + B]
        assert f.read() == data[10 + B :]
        assert f.tell() == dev.size
        assert f.read() == b""
        assert f.read(100) == b""
        assert f.readinto(bytearray(10)) == 0


def test_readall_and_short_read_at_end(dev):
    data = dev.read(0, dev.size)
    with dev.open() as f:
        assert f.readall() == data
        f.seek(-100, io.SEEK_END)
        buf = bytearray(1000)
        assert f.readinto(buf) == 100
        assert bytes(buf[:100]) == data[-100:]
        assert bytes(buf[100:]) == bytes(900)


def test_readinto_buffers(dev):
    data = dev.read(0, 4096)
    with dev.open() as f:
        a = np.zeros(1024, np.uint8)
        assert f.readinto(a) == 1024
        assert a.tobytes() == data[:1024]
        arr = array.array("I", [0] * 256)  # 1 KiB of 4-byte items
        assert f.readinto(arr) == 1024
        assert arr.tobytes() == data[1024:2048]
        mv = memoryview(bytearray(2048))
        assert f.readinto(mv[1024:]) == 1024
        assert mv[1024:].tobytes() == data[2048:3072]


def test_seek_whence(dev):
    with dev.open() as f:
        assert f.seek(100) == 100
        assert f.seek(50, io.SEEK_CUR) == 150
        assert f.seek(-50, io.SEEK_CUR) == 100
        assert f.seek(0, io.SEEK_END) == dev.size
        assert f.seek(-1, io.SEEK_END) == dev.size - 1
        assert f.read(5) == dev.read(dev.size - 1, 1)
        assert f.seek(dev.size + 1000) == dev.size + 1000  # past the end is allowed, like files
        assert f.read(10) == b""
        with pytest.raises((ValueError, OSError)):
            f.seek(-1)
        with pytest.raises((ValueError, OSError)):
            f.seek(-dev.size - 1, io.SEEK_END)
        with pytest.raises((ValueError, OSError)):
            f.seek(0, 7)
        with pytest.raises(TypeError):
            f.seek(1.5)
        assert f.tell() == dev.size + 1000  # failed seeks leave the position alone


def test_write_through(dev):
    with dev.open("r+b") as f:
        f.seek(B - 3)
        assert f.write(b"abcdef") == 6
        assert f.tell() == B + 3
        assert f.write(memoryview(b"ghi")) == 3
        assert f.write(np.frombuffer(b"jk", np.uint8)) == 2
        assert f.write(b"") == 0
        f.seek(B - 3)
        assert f.read(11) == b"abcdefghijk"
    assert dev.read(B - 3, 11) == b"abcdefghijk"


def test_write_in_rb_refused(dev):
    before = dev.read(0, 10)
    with dev.open("rb") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    assert dev.read(0, 10) == before


def test_rw_on_readonly_refused(pool, dev):
    ro = pool.snapshot("d", "ro", readonly=True)
    with pytest.raises(cowblock.ReadOnlyError):
        ro.open("r+b")
    with ro.open("rb") as f:
        assert f.read(8) == dev.read(0, 8)


def test_write_past_end(dev):
    before = dev.read(0, dev.size)
    with dev.open("r+b") as f:
        f.seek(dev.size - 2)
        with pytest.raises(DeviceEndError) as ei:
            f.write(b"xyz")  # crosses the end: refused whole
        e = ei.value
        assert isinstance(e, cowblock.InvalidArgumentError) and isinstance(e, ValueError)
        assert isinstance(e, OSError)
        assert "end" in str(e)
        assert f.tell() == dev.size - 2
        assert f.write(b"xy") == 2  # fits exactly
        with pytest.raises(DeviceEndError):
            f.write(b"z")  # at the end
        f.seek(dev.size + 10)
        with pytest.raises(DeviceEndError):
            f.write(b"z")  # past the end
    assert dev.size == 4 * B + 512
    assert dev.read(0, dev.size) == before[:-2] + b"xy"


def test_truncate_and_fileno_unsupported(dev):
    with dev.open("r+b") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.truncate(0)
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
    assert dev.size == 4 * B + 512


def test_close(dev):
    f = dev.open("r+b")
    f.write(b"x")
    f.close()
    assert f.closed
    f.close()  # idempotent
    for call in (lambda: f.read(1), lambda: f.write(b"x"), lambda: f.seek(0), lambda: f.tell(),
                 lambda: f.readinto(bytearray(1))):
        with pytest.raises(ValueError):
            call()
    # closing the file does not close the device
    assert dev.read(0, 1) == b"x"


def test_pool_closed_under_the_file(pool_path):
    p = cowblock.Pool.create(pool_path, size=64 * MiB)
    d = p.create_device("d", MiB)
    f = d.open("r+b")
    f.write(b"written before close")
    p.close()  # commits
    with pytest.raises(cowblock.ClosedError):
        f.read(1)
    with pytest.raises(cowblock.ClosedError):
        f.write(b"x")
    f.close()  # no error: the pool's close committed everything
    assert f.closed
    with cowblock.Pool.open(pool_path) as p:
        assert p.device("d").read(0, 20) == b"written before close"


def test_deleted_device(pool, dev):
    f = dev.open("rb")
    pool.delete("d")
    with pytest.raises(cowblock.NotFoundError):
        f.read(1)
    f.close()


def test_copyfileobj_in_and_out(pool):
    d = pool.create_device("img", 3 * MiB)
    src = rnd(3 * MiB - 4096, 2)
    with d.open("r+b") as f:
        shutil.copyfileobj(io.BytesIO(src), f, 100_000)  # odd chunk size: unaligned writes
    assert d.read(0, len(src)) == src
    out = io.BytesIO()
    with d.open("rb") as f:
        shutil.copyfileobj(f, out)
    assert out.getvalue() == src + bytes(4096)
    # and between two devices
    e = pool.create_device("copy", 3 * MiB)
    with d.open("rb") as fin, e.open("r+b") as fout:
        shutil.copyfileobj(fin, fout, 64 * 1024 + 1)
    assert e.read(0, 3 * MiB) == src + bytes(4096)


def test_copyfileobj_larger_than_device(pool):
    d = pool.create_device("small", 8192)
    with d.open("r+b") as f:
        with pytest.raises(DeviceEndError):
            shutil.copyfileobj(io.BytesIO(b"x" * 10000), f, 4096)
    # the two chunks that fit were written; the one that would pass the end was refused whole
    assert d.read(0, 8192) == b"x" * 8192


def test_buffered_random_against_bytesio(pool):
    size = 5 * B + 1024
    d = pool.create_device("buf", size)
    model = io.BytesIO(bytes(size))
    r = random.Random(3)
    with io.BufferedRandom(d.open("r+b"), buffer_size=8192) as f:
        for i in range(400):
            op = r.random()
            pos = r.randrange(0, size)
            f.seek(pos)
            model.seek(pos)
            if op < 0.5:
                n = r.randrange(1, min(20000, size - pos) + 1)
                data = r.randbytes(n)
                assert f.write(data) == n
                model.write(data)
            elif op < 0.9:
                n = r.randrange(0, 30000)
                assert f.read(n) == model.read(n)
            else:
                assert f.tell() == model.tell()
                f.flush()
        f.seek(0)
        assert f.read() == model.getvalue()
    assert d.read(0, size) == model.getvalue()


def test_buffered_reader_and_text(pool):
    d = pool.create_device("txt", 64 * KiB)
    text = "".join(f"line {i}: héllo\n" for i in range(1000))
    d.write(0, text.encode())
    with io.TextIOWrapper(io.BufferedReader(d.open("rb")), encoding="utf-8") as t:
        lines = []
        for line in t:
            if "\0" in line:
                break
            lines.append(line)
    assert "".join(lines) == text


def test_flush_makes_writes_durable(pool_path):
    p = cowblock.Pool.create(pool_path, size=64 * MiB)
    try:
        d = p.create_device("d", MiB)
        gen0 = p.stats()["commits"]
        with d.open("rb") as f:
            f.read(10)
        assert p.stats()["commits"] == gen0  # reading and closing commits nothing
        f = d.open("r+b")
        f.write(b"durable?")
        f.flush()
        assert p.stats()["commits"] > gen0
        f.close()
    finally:
        p.close()
    with cowblock.Pool.open(pool_path) as p:
        assert p.device("d").read(0, 8) == b"durable?"


def test_seek_data_hole(pool):
    if not hasattr(os, "SEEK_DATA"):
        pytest.skip("no SEEK_DATA on this platform")
    d = pool.create_device("sparse", 16 * B)
    d.write(3 * B + 5, b"x")
    d.write(9 * B, b"y" * (2 * B))
    with d.open() as f:
        assert f.seek(0, os.SEEK_DATA) == 3 * B
        assert f.seek(3 * B + 10, os.SEEK_DATA) == 3 * B + 10
        assert f.seek(3 * B, os.SEEK_HOLE) == 4 * B
        assert f.seek(4 * B, os.SEEK_DATA) == 9 * B
        assert f.seek(9 * B, os.SEEK_HOLE) == 11 * B
        assert f.seek(0, os.SEEK_HOLE) == 0
        with pytest.raises(OSError):
            f.seek(12 * B, os.SEEK_DATA)
        assert f.seek(12 * B, os.SEEK_HOLE) == 12 * B
        with pytest.raises(OSError):
            f.seek(16 * B, os.SEEK_HOLE)


def test_two_files_on_one_device_keep_own_positions(dev):
    with dev.open("rb") as a, dev.open("rb") as b:
        a.seek(100)
        assert b.read(4) == dev.read(0, 4)
        assert a.read(4) == dev.read(100, 4)
        assert (a.tell(), b.tell()) == (104, 4)
