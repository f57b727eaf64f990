"""Bad input: every public Pool/Device call with wrong arguments raises the documented error
(InvalidArgumentError, which is also a ValueError and a TypeError; NotFoundError; ExistsError;
ReadOnlyError) and leaves the pool exactly as it was: devices(), used, usage(), infos and every
byte of every device."""

import io
import os

import numpy as np
import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB
SIZE = 8 * B + 512  # not a multiple of the block size on purpose

Inv = cowblock.InvalidArgumentError


def _state(pool):
    devs = pool.devices()
    infos = {}
    data = {}
    for name in devs:
        i = pool.info(name)
        infos[name] = (i.name, i.id, i.size, i.readonly, i.origin, i.external)
        d = pool.device(name)
        data[name] = d.read(0, d.size)
    return devs, pool.used, pool.usage(), infos, data


@pytest.fixture
def world(tmp_path):
    """A pool with 'base' holding data, 'ro' a read-only snapshot of it, 'rw' a writable
    snapshot with some changes. A fresh one per test, so one failure cannot spill over."""
    path = tmp_path / "pool"
    pool = cowblock.Pool.create(path, size=256 * MiB, block_size=B)
    base = pool.create_device("base", SIZE)
    base.write(0, bytes(range(256)) * (SIZE // 256))
    pool.snapshot("base", "ro", readonly=True)
    rw = pool.snapshot("base", "rw")
    rw.write(B + 100, b"rw data" * 1000)
    pool.flush()
    yield pool
    pool.close()


@pytest.fixture
def w(world):
    """The pool, with its state checked unchanged after the test."""
    before = _state(world)
    yield world
    after = _state(world)
    assert after[0] == before[0], "devices() changed"
    assert after[1] == before[1], "used changed"
    assert after[2] == before[2], "usage() changed"
    assert after[3] == before[3], "device infos changed"
    for name in before[4]:
        assert after[4][name] == before[4][name], f"data of {name!r} changed"


def dev(pool, name="base"):
    return pool.device(name)


# --------------------------------------------------------------------------- names

BAD_NAMES = [
    ("", "empty"),
    ("a/b", "slash"),
    ("/", "only-slash"),
    ("a\0b", "nul"),
    ("x" * 128, "128-bytes"),
    ("é" * 64, "128-utf8-bytes"),
    ("x" * 1000, "1000-bytes"),
]

BAD_NAME_TYPES = [(b"bytes", "bytes"), (5, "int"), (None, "none"), (1.5, "float")]


@pytest.mark.parametrize("name", [n for n, _ in BAD_NAMES], ids=[i for _, i in BAD_NAMES])
def test_bad_device_names(w, name):
    with pytest.raises(Inv):
        w.create_device(name, MiB)
    with pytest.raises(Inv):
        w.snapshot("base", name)
    with pytest.raises(Inv):
        w.snapshot("base", name, readonly=True)


@pytest.mark.parametrize("name", [n for n, _ in BAD_NAME_TYPES], ids=[i for _, i in BAD_NAME_TYPES])
def test_bad_device_name_types(w, name):
    with pytest.raises(Inv):
        w.create_device(name, MiB)
    with pytest.raises(Inv):
        w.snapshot("base", name)
    with pytest.raises(Inv):
        w.snapshot(name, "new")
    with pytest.raises((Inv, cowblock.NotFoundError)):
        w.device(name)
    with pytest.raises((Inv, cowblock.NotFoundError)):
        w.delete(name)


def test_longest_name_is_fine(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB) as p:
        p.create_device("x" * 127, MiB)
        p.snapshot("x" * 127, "é" * 63 + "y")  # 127 bytes of UTF-8
        assert p.devices() == sorted(["x" * 127, "é" * 63 + "y"])


def test_bad_name_does_not_match_existing(w):
    # 'base/..' or 'base\0' must not reach the device 'base'
    for name in ("base/", "base\0", "base\0x"):
        with pytest.raises((Inv, cowblock.NotFoundError)):
            w.device(name)
        with pytest.raises((Inv, cowblock.NotFoundError)):
            w.delete(name)
        with pytest.raises((Inv, cowblock.NotFoundError)):
            w.snapshot(name, "copy")


# --------------------------------------------------------------------------- device table


def test_duplicate_names(w):
    with pytest.raises(cowblock.ExistsError):
        w.create_device("base", MiB)
    with pytest.raises(cowblock.ExistsError):
        w.snapshot("base", "rw")
    with pytest.raises(cowblock.ExistsError):
        w.snapshot("base", "base")
    with pytest.raises(cowblock.ExistsError):
        w.snapshot("rw", "ro", readonly=True)


def test_missing_devices(w):
    with pytest.raises(cowblock.NotFoundError):
        w.snapshot("missing", "new")
    with pytest.raises(cowblock.NotFoundError):
        w.delete("missing")
    with pytest.raises(cowblock.NotFoundError):
        w.device("missing")
    with pytest.raises(cowblock.NotFoundError):
        w.info("missing")
    with pytest.raises(cowblock.NotFoundError):
        w.device("BASE")  # names are case-sensitive


BAD_SIZES = [0, -512, 511, 1000, 513, 4096 + 1, 2**56 + 512, 2**57, 2**64, -(2**64)]


@pytest.mark.parametrize("size", BAD_SIZES)
def test_bad_device_sizes(w, size):
    with pytest.raises(Inv):
        w.create_device("new", size)


@pytest.mark.parametrize("size", [1.0, 4096.0, "4096", None, b"4096", True], ids=repr)
def test_bad_device_size_types(w, size):
    with pytest.raises(Inv):
        w.create_device("new", size)


def test_largest_device_size_is_fine(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB) as p:
        d = p.create_device("max", 2**56)
        assert d.size == 2**56
        d.write(2**56 - 3, b"end")
        assert d.read(2**56 - 4, 4) == b"\0end"


# --------------------------------------------------------------------------- read


@pytest.mark.parametrize(
    "off,length",
    [(-1, 1), (0, -1), (SIZE, 1), (SIZE - 1, 2), (SIZE + 4096, 0), (0, SIZE + 1), (2**64, 1),
     (2**63, 2**63), (1, 2**64 - 1), (-(2**64) + 1, 2)],
)
def test_read_out_of_range(w, off, length):
    for name in ("base", "ro", "rw"):
        with pytest.raises(Inv):
            dev(w, name).read(off, length)


@pytest.mark.parametrize("off,length", [(1.0, 1), (0, 1.0), ("0", 1), (0, "1"), (None, 1), (0, None)])
def test_read_bad_types(w, off, length):
    with pytest.raises(Inv):
        dev(w).read(off, length)


def test_readinto_bad(w):
    d = dev(w)
    with pytest.raises(Inv):
        d.readinto(0, "str")
    with pytest.raises(Inv):
        d.readinto(-1, bytearray(1))
    with pytest.raises(Inv):
        d.readinto(SIZE - 1, bytearray(2))
    with pytest.raises(Inv):
        d.readinto(1.5, bytearray(2))
    with pytest.raises(Inv):
        d.readinto(0, None)


def _ro_array(shape):
    a = np.zeros(shape, np.uint8)
    a.flags.writeable = False
    return a


READONLY_BUFFER_CASES = {
    "readinto-bytes": lambda d: d.readinto(0, b"readonly buffer"),
    "readinto-ro-ndarray": lambda d: d.readinto(0, _ro_array(10)),
    "read_blocks-out-ro-ndarray": lambda d: d.read_blocks([0], out=_ro_array((1, B))),
    "read_blocks-out-bytes": lambda d: d.read_blocks([0], out=bytes(B)),
}


@pytest.mark.parametrize("case", sorted(READONLY_BUFFER_CASES))
def test_readonly_buffers_refused(w, case):
    with pytest.raises(Inv):
        READONLY_BUFFER_CASES[case](dev(w))


# --------------------------------------------------------------------------- write / discard


@pytest.mark.parametrize("name", ["base", "rw"])
@pytest.mark.parametrize(
    "off,data",
    [(-1, b"x"), (SIZE, b"x"), (SIZE - 1, b"xy"), (SIZE - 4096, b"z" * 8192), (2**64 - 1, b"x"),
     (0, b"q" * (SIZE + 1)), (2**63, b"x")],
    ids=lambda v: f"len{len(v)}" if isinstance(v, bytes) else str(v),
)
def test_write_out_of_range(w, name, off, data):
    with pytest.raises(Inv):
        dev(w, name).write(off, data)


@pytest.mark.parametrize(
    "off,data",
    [(0, "text"), (0, 42), (0, None), (0, [1, 2, 3]), (1.0, b"x"), ("0", b"x"), (None, b"x"),
     (0, 3.5)],
    ids=repr,
)
def test_write_bad_types(w, off, data):
    with pytest.raises(Inv):
        dev(w, "rw").write(off, data)


def test_write_to_readonly_snapshot(w):
    d = dev(w, "ro")
    with pytest.raises(cowblock.ReadOnlyError):
        d.write(0, b"x")
    with pytest.raises(cowblock.ReadOnlyError):
        d.discard(0, B)
    with pytest.raises(cowblock.ReadOnlyError):
        d.write_blocks([0], np.zeros((1, B), np.uint8))


@pytest.mark.parametrize(
    "off,length", [(-1, 512), (0, -512), (SIZE, 1), (SIZE - 512, 1024), (0, SIZE + 512), (2**64, 1)]
)
def test_discard_out_of_range(w, off, length):
    with pytest.raises(Inv):
        dev(w, "rw").discard(off, length)


@pytest.mark.parametrize("off,length", [(0.0, 512), (0, 512.0), ("0", 512), (0, None)], ids=repr)
def test_discard_bad_types(w, off, length):
    with pytest.raises(Inv):
        dev(w, "rw").discard(off, length)


# --------------------------------------------------------------------------- batch calls

NBLK = -(-SIZE // B)  # blocks of the device, the last one partial


def test_read_blocks_bad(w):
    d = dev(w)
    bad_full = NBLK - 1 if SIZE % B else NBLK  # a partial last block cannot be read whole
    for idx in ([NBLK], [0, NBLK + 5], [2**64 - 1], [-1], [1.5], ["0"]):
        with pytest.raises(Inv):
            d.read_blocks(idx)
    with pytest.raises(Inv):
        d.read_blocks(np.array([0.0, 1.0]))
    with pytest.raises(Inv):
        d.read_blocks([0, 1], out=np.zeros((1, B), np.uint8))  # too few rows
    with pytest.raises(Inv):
        d.read_blocks([0], out=np.zeros((1, B - 1), np.uint8))  # wrong row length
    with pytest.raises(Inv):
        d.read_blocks([0], out=np.zeros((1, B), np.int64))  # wrong dtype (8x the bytes)
    # a partial last block either reads (zero-padded past the end) or is refused; never
    # anything else
    try:
        got = d.read_blocks([bad_full])
    except Inv:
        pass
    else:
        assert got[0, : SIZE % B].tobytes() == d.read(bad_full * B, SIZE % B)


def test_write_blocks_bad(w):
    d = dev(w, "rw")
    one = np.ones((1, B), np.uint8)
    for idx in ([NBLK], [2**64 - 1], [-1], [1.5]):
        with pytest.raises(Inv):
            d.write_blocks(idx, one)
    with pytest.raises(Inv):
        d.write_blocks([0, 1], one)  # two indices, one block of data
    with pytest.raises(Inv):
        d.write_blocks([0], np.ones((1, B - 1), np.uint8))
    with pytest.raises(Inv):
        d.write_blocks([0], b"x" * (B + 1))
    with pytest.raises(Inv):
        d.write_blocks([0], "text" * (B // 4))
    with pytest.raises(Inv):
        d.write_blocks([0, 9999], np.ones((2, B), np.uint8))  # first index valid, second not


# --------------------------------------------------------------------------- DeviceIO modes


@pytest.mark.parametrize("mode", ["w", "wb", "ab", "xb", "rt", "w+b", "", "r+t", "b"])
def test_open_bad_modes(w, mode):
    with pytest.raises(ValueError):
        dev(w, "rw").open(mode)


def test_open_rw_on_readonly(w):
    with pytest.raises(cowblock.ReadOnlyError):
        dev(w, "ro").open("r+b")


def test_deviceio_past_end_changes_nothing(w):
    with dev(w, "rw").open("r+b") as f:
        f.seek(SIZE - 3)
        with pytest.raises(Inv):
            f.write(b"four")
        f.seek(0, io.SEEK_END)
        with pytest.raises(Inv):
            f.write(b"x")


# --------------------------------------------------------------------------- pools


@pytest.mark.parametrize(
    "bs", [0, 1, 512, 2048, 3 * 4096, 4096 + 1, 65535, 2 * MiB, 4 * MiB, -4096, 2**32 + 4096],
)
def test_bad_block_sizes(tmp_path, bs):
    path = tmp_path / "p"
    with pytest.raises(Inv):
        cowblock.Pool.create(path, size=64 * MiB, block_size=bs)
    # nothing half-made: the same path makes a good pool afterwards
    with cowblock.Pool.create(path, size=64 * MiB) as p:
        assert p.devices() == []


@pytest.mark.parametrize("bs", [65536.0, "65536", None, b"x"], ids=repr)
def test_bad_block_size_types(tmp_path, bs):
    with pytest.raises(Inv):
        cowblock.Pool.create(tmp_path / "p", size=64 * MiB, block_size=bs)
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB) as p:
        assert p.used == 0


@pytest.mark.parametrize("size", [0, -1, -MiB, 1.5, "1G", None], ids=repr)
def test_bad_pool_sizes(tmp_path, size):
    with pytest.raises(Inv):
        cowblock.Pool.create(tmp_path / "p", size=size)
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB) as p:
        assert p.size == 64 * MiB


def test_bad_paths(tmp_path):
    with pytest.raises(Inv):
        cowblock.Pool.create(None, size=64 * MiB)
    with pytest.raises(Inv):
        cowblock.Pool.create(12, size=64 * MiB)
    with pytest.raises((Inv, cowblock.NotFoundError)):
        cowblock.Pool.open(str(tmp_path / "a\0b"))
    (tmp_path / "file").write_bytes(b"not a dir")
    with pytest.raises(cowblock.CowblockError):
        cowblock.Pool.create(tmp_path / "file", size=64 * MiB)
    assert (tmp_path / "file").read_bytes() == b"not a dir"
    (tmp_path / "empty").mkdir()
    with pytest.raises(cowblock.CowblockError):
        cowblock.Pool.open(tmp_path / "empty")
    assert os.listdir(tmp_path / "empty") == []


def test_invalid_argument_is_value_and_type_error(w):
    with pytest.raises(ValueError):
        dev(w).read(-1, 1)
    with pytest.raises(TypeError):
        dev(w).read("0", 1)
    with pytest.raises(cowblock.CowblockError):
        w.create_device("", MiB)
