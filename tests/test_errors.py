"""The error contract: the exception hierarchy, and the situations that raise each error
(pool full and still usable afterwards, closed handles, deleted devices, corrupt metadata)."""

import os
import subprocess
import sys
import textwrap

import pytest

import cowblock

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB

ERRORS = [
    "NotFoundError",
    "ExistsError",
    "ReadOnlyError",
    "PoolFullError",
    "CorruptError",
    "BusyError",
    "PoolFailedError",
    "InvalidArgumentError",
    "ClosedError",
]


def test_hierarchy():
    assert issubclass(cowblock.CowblockError, Exception)
    for name in ERRORS:
        cls = getattr(cowblock, name)
        assert issubclass(cls, cowblock.CowblockError), name
        assert cls is getattr(cowblock.errors, name)
    assert issubclass(cowblock.InvalidArgumentError, ValueError)
    assert issubclass(cowblock.InvalidArgumentError, TypeError)
    # distinct classes, none a subclass of another (except through the base)
    for a in ERRORS:
        for b in ERRORS:
            if a != b:
                assert not issubclass(getattr(cowblock, a), getattr(cowblock, b)), (a, b)


def test_errors_have_messages(pool):
    pool.create_device("a", MiB)
    for call, cls in [
        (lambda: pool.device("missing"), cowblock.NotFoundError),
        (lambda: pool.create_device("a", MiB), cowblock.ExistsError),
        (lambda: pool.device("a").read(-1, 1), cowblock.InvalidArgumentError),
    ]:
        with pytest.raises(cls) as ei:
            call()
        assert str(ei.value).strip(), f"{cls.__name__} has an empty message"


def test_not_found_message_names_the_device(pool):
    with pytest.raises(cowblock.NotFoundError, match="ghost"):
        pool.device("ghost")


def test_pool_full_then_usable(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", size=4 * B, block_size=B) as p:
        d = p.create_device("d", 16 * B)
        d.write(0, b"\x01" * (4 * B))
        assert p.used == 4 * B == p.size
        with pytest.raises(cowblock.PoolFullError):
            d.write(4 * B, b"x")
        # the failed write changed nothing and the pool is not failed
        assert p.used == 4 * B
        assert d.read(4 * B, 1) == b"\0"
        assert d.read(0, 4 * B) == b"\x01" * (4 * B)
        # overwrites of owned blocks still work when full
        d.write(10, b"in place")
        # a copy-up needs a block: refused, snapshot unchanged
        s = p.snapshot("d", "s")
        with pytest.raises(cowblock.PoolFullError):
            s.write(0, b"cow")
        assert s.read(0, 10) == b"\x01" * 10
        p.delete("s")
        # free space and go on
        d.discard(0, 2 * B)
        p.flush()
        assert p.used == 2 * B
        d.write(5 * B, b"after")
        assert d.read(5 * B, 5) == b"after"
        assert p.check().ok
    with cowblock.Pool.open(tmp_path / "p") as p:
        assert p.device("d").read(5 * B, 5) == b"after"
        assert p.used == 3 * B


def test_pool_full_multi_block_write_is_not_half_done(tmp_path):
    """A write that needs more blocks than are free fails; what it did reach is either all
    written or all untouched, never garbage, and the accounting stays exact."""
    with cowblock.Pool.create(tmp_path / "p", size=4 * B, block_size=B) as p:
        d = p.create_device("d", 16 * B)
        d.write(0, b"\x01" * (2 * B))
        with pytest.raises(cowblock.PoolFullError):
            d.write(2 * B, b"\x02" * (4 * B))
        got = d.read(2 * B, 4 * B)
        assert set(got[: 2 * B]) <= {0, 2} and set(got[2 * B :]) == {0}
        assert p.used in (2 * B, 3 * B, 4 * B)
        assert d.read(0, 2 * B) == b"\x01" * (2 * B)
        r = p.check()
        assert r.ok, (r.errors, getattr(r, "messages", None))


def test_deleted_device_handle(pool):
    d = pool.create_device("d", MiB)
    s = pool.snapshot("d", "s")
    pool.delete("d")
    for call in (lambda: d.read(0, 1), lambda: d.write(0, b"x"), lambda: d.discard(0, 512),
                 lambda: d.usage(), lambda: pool.snapshot("d", "t")):
        with pytest.raises(cowblock.NotFoundError):
            call()
    assert s.read(0, 4) == bytes(4)
    with pytest.raises(cowblock.NotFoundError):
        pool.delete("d")


def test_closed_pool_handles(pool_path):
    p = cowblock.Pool.create(pool_path, size=MiB * 64)
    d = p.create_device("d", MiB)
    p.close()
    with pytest.raises(cowblock.ClosedError):
        d.read(0, 1)
    with pytest.raises(cowblock.ClosedError):
        p.snapshot("d", "x")


def _meta_files(pool_dir, data_file_hint=None):
    files = sorted(
        os.path.join(root, f) for root, _, fs in os.walk(pool_dir) for f in fs
    )
    return files


def test_garbage_metadata_gives_an_error_not_a_crash(tmp_path):
    """Invariant 6: every metadata structure is checked before use. Overwrite every file in the
    pool directory except the data file with garbage: open must raise a CowblockError (run in a
    subprocess so a crash is seen as a failure, not as the end of the test run)."""
    path = tmp_path / "p"
    with cowblock.Pool.create(path, size=64 * MiB, block_size=B) as p:
        d = p.create_device("d", 4 * MiB)
        d.write(0, b"\x07" * (4 * B))
        data_before = p.stats()["data_bytes_on_disk"]
    files = _meta_files(path)
    assert files, "a pool directory holds files"
    # The pool keeps its data in "data" (see cowblock.h); everything else is metadata.
    assert data_before >= 4 * B
    metas = [f for f in files if os.path.basename(f) != "data"]
    assert metas, files
    for f in metas:
        n = max(os.path.getsize(f), 4096)
        with open(f, "r+b") as fh:
            fh.write(bytes((i * 131 + 7) & 0xFF for i in range(n)))
    code = textwrap.dedent(
        f"""
        import sys, cowblock
        try:
            cowblock.Pool.open({str(path)!r})
        except cowblock.CowblockError as e:
            print(type(e).__name__)
            sys.exit(0)
        print("opened")
        sys.exit(3)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() in ("CorruptError", "NotFoundError"), r.stdout
