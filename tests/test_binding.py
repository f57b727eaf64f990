"""Smoke test of the compiled cffi module: it loads, its build id matches the one the Python
package expects (so a stale .so fails loudly), cb_strerror names every code, and the raw C calls
work end to end with C codes turned into exceptions in _lowlevel."""

import pytest

import cowblock
from cowblock import _lowlevel

_cb = pytest.importorskip("cowblock._cowblock")
ffi, lib = _cb.ffi, _cb.lib

CODES = {
    "CB_EINVAL": cowblock.InvalidArgumentError,
    "CB_ENOENT": cowblock.NotFoundError,
    "CB_EEXIST": cowblock.ExistsError,
    "CB_EROFS": cowblock.ReadOnlyError,
    "CB_ENOSPC": cowblock.PoolFullError,
    "CB_ECORRUPT": cowblock.CorruptError,
    "CB_EFAILED": cowblock.PoolFailedError,
    "CB_EBUSY": cowblock.BusyError,
}


def test_build_id_matches():
    bid = ffi.string(lib.cb_build_id()).decode()
    assert bid == _lowlevel.BUILD_ID
    assert bid.startswith("cowblock-core")


def _named_codes():
    return {n: getattr(lib, n) for n in dir(lib) if n.startswith("CB_E")}


def test_strerror_names_every_code():
    codes = _named_codes()
    assert set(CODES) <= set(codes)
    assert len(set(codes.values())) == len(codes), "two names share a code"
    values = sorted(codes.values())
    assert values == list(range(values[0], values[0] + len(values))), "codes are not contiguous"
    assert values[-1] < -4095, "library codes overlap the -errno range"
    seen = set()
    for name, code in codes.items():
        msg = ffi.string(lib.cb_strerror(code)).decode()
        assert msg and "unknown" not in msg.lower(), (name, msg)
        seen.add(msg)
    assert len(seen) == len(codes), "two codes share a message"
    # 0 and -errno codes are named too (never NULL)
    assert ffi.string(lib.cb_strerror(0))
    enoent = ffi.string(lib.cb_strerror(-2)).decode().lower()
    assert "no such file" in enoent
    assert ffi.string(lib.cb_strerror(-999999))  # unknown code: still a string
    assert _lowlevel.strerror(lib.CB_EINVAL) == ffi.string(lib.cb_strerror(lib.CB_EINVAL)).decode()


@pytest.mark.parametrize("name", sorted(CODES))
def test_codes_map_to_exceptions(name):
    code = getattr(lib, name)
    with pytest.raises(CODES[name]) as ei:
        _lowlevel.raise_for(code, "doing something to 'dev'")
    assert isinstance(ei.value, cowblock.CowblockError)
    assert ei.value.code == code
    assert "doing something to 'dev'" in str(ei.value)


def test_errno_codes_map_to_exceptions():
    with pytest.raises(cowblock.PoolFullError):
        _lowlevel.raise_for(-28, "write")  # -ENOSPC from the file system: pool full
    with pytest.raises(OSError) as ei:
        _lowlevel.raise_for(-5, "write")  # -EIO
    assert isinstance(ei.value, cowblock.CowblockError)
    assert ei.value.errno == 5
    with pytest.raises(MemoryError):
        _lowlevel.raise_for(lib.CB_ENOMEM, "alloc")


def test_raw_calls_end_to_end(tmp_path):
    pp = ffi.new("cb_pool **")
    rc = lib.cb_pool_create(str(tmp_path / "p").encode(), 64 << 20, 65536, 0, pp)
    assert rc == 0, ffi.string(lib.cb_strerror(rc))
    pool = pp[0]
    try:
        assert lib.cb_pool_create_device(pool, b"raw", 1 << 20, ffi.NULL) == 0
        assert lib.cb_pool_create_device(pool, b"raw", 1 << 20, ffi.NULL) == lib.CB_EEXIST
        assert lib.cb_pool_create_device(pool, b"a/b", 1 << 20, ffi.NULL) == lib.CB_EINVAL
        dp = ffi.new("cb_dev **")
        assert lib.cb_dev_open(pool, b"nope", dp) == lib.CB_ENOENT
        assert lib.cb_dev_open(pool, b"raw", dp) == 0
        dev = dp[0]
        buf = ffi.from_buffer(b"hello, world")
        assert lib.cb_dev_write(dev, buf, 12, 70000) == 0
        out = ffi.new("char[]", 12)
        assert lib.cb_dev_read(dev, out, 12, 70000) == 0
        assert ffi.buffer(out, 12)[:] == b"hello, world"
        assert lib.cb_dev_read(dev, out, 12, (1 << 20) - 11) == lib.CB_EINVAL
        st = ffi.new("cb_stat *")
        assert lib.cb_pool_stat(pool, st) == 0
        assert st.block_size == 65536 and st.used_blocks == 1 and st.ndevices == 1
        info = ffi.new("cb_devinfo *")
        assert lib.cb_dev_info(dev, info) == 0
        assert ffi.string(info.name) == b"raw" and info.size == 1 << 20
        lib.cb_dev_close(dev)
    finally:
        assert lib.cb_pool_close(pool) == 0
    with cowblock.Pool.open(tmp_path / "p") as p:
        assert p.device("raw").read(70000, 12) == b"hello, world"
