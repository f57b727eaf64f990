"""Damage that must be reported, and where (issue 8, defect 11): a bad superblock slot, the
page and structure behind "metadata is corrupt", a truncated data file, an external origin
edited underneath.  ``check`` is the oracle, ``check(repair=True)`` rewrites what it can.
The metadata damage runs on both backends (the ``backend`` fixture; bytes changed through
tests/rawstore.py), the damage to files as such (truncation) on files."""

import os

import pytest

import cowblock
from test_corrupt import PAGE, T_LEAF, Meta

MiB = 1 << 20
BS = 64 << 10


def make_pool(path, external=None):
    with cowblock.Pool.create(path, size=64 * MiB, block_size=BS) as pool:
        dev = pool.create_device("base", 4 * MiB, external=external)
        dev.write(0, b"x" * BS)
        pool.flush()
    with cowblock.Pool.open(path):
        pass  # one more commit: both superblock slots hold a valid generation
    return path


def meta(stores):
    return Meta(stores.read("meta"))


def write_meta(stores, m):
    stores.write("meta", 0, bytes(m.b))


def made(backend, external=None):
    """A pool made by make_pool at a fresh location: (location, its stores)."""
    path = make_pool(backend.location("p"), external=external)
    return path, backend.stores(path)


def slots(path):
    """(slot the pool stands on, the other slot)."""
    with cowblock.Pool.open(path, readonly=True) as pool:
        cur = pool.stats()["generation"] % 2
    return cur, 1 - cur


def errors(report):
    return [m for m in report.messages if m.startswith("error:")]


# -- superblock slots ----------------------------------------------------------

@pytest.mark.parametrize("damage, why", [
    ("garbage", "bad checksum"),
    ("zeros", "bad magic 0x00000000 (zeros)"),
    ("bounds", "a field out of bounds (block size 3000"),
    ("copy", "records its address as page"),
    ("parity", "does not belong in slot"),
])
def test_bad_superblock_slot_is_reported(backend, damage, why):
    path, stores = made(backend)
    cur, other = slots(path)
    m = meta(stores)
    if damage == "garbage":
        m.put_bytes(other, 1000, b"garbage!")
    elif damage == "zeros":
        m.put_bytes(other, 0, bytes(PAGE))
    elif damage == "bounds":
        m.edit(other, 52, 4, 3000)  # block size, resealed: the checksum is right
    else:  # a copy of the current one (with its address fixed and resealed: parity wrong)
        m.put_bytes(other, 0, bytes(m.b[cur * PAGE:(cur + 1) * PAGE]))
        if damage == "parity":
            m.edit(other, 8, 8, other)
    write_meta(stores, m)
    with cowblock.Pool.open(path, readonly=True) as pool:
        report = pool.check()
        assert pool.device("base").read(0, 4) == b"xxxx"
    assert report.errors == 1 and not report.ok
    [msg] = errors(report)
    assert f"superblock slot {other} (offset {hex(other * PAGE)})" in msg
    assert why in msg


def test_damaged_newest_slot_is_reported_after_the_fallback(backend):
    path, stores = made(backend)
    cur, other = slots(path)
    stores.flip("meta", cur * PAGE + 2000, 0x40)
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert pool.stats()["generation"] % 2 == other  # opened from the older slot
        report = pool.check()
    [msg] = errors(report)
    assert f"superblock slot {cur} " in msg and "bad checksum" in msg


def test_repair_rewrites_the_bad_slot_from_the_current_one(backend):
    path, stores = made(backend)
    with cowblock.Pool.open(path) as pool:
        other = 1 - pool.stats()["generation"] % 2
        gen = pool.stats()["generation"]
        stores.write("meta", other * PAGE + 100, b"garbage!")  # damaged while open
        assert pool.check().errors == 1
        report = pool.check(repair=True)
        assert report.errors == 0 and report.repaired == 1
        assert any(m.startswith(f"repaired: superblock slot {other} ") and "bad checksum" in m
                   for m in report.messages), report.messages
        # the repair was a commit into the bad slot: the slot stood on is untouched
        assert pool.stats()["generation"] == gen + 1
        assert (gen + 1) % 2 == other
        assert pool.check().ok
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert pool.check().ok
        assert pool.device("base").read(0, 4) == b"xxxx"


def test_writable_open_over_a_bad_slot_says_so(backend):
    path, stores = made(backend)
    cur, other = slots(path)
    stores.write("meta", other * PAGE + 1000, b"garbage!")
    with cowblock.Pool.open(path) as pool:  # its commit rewrites the bad slot
        report = pool.check()
    assert report.errors == 0
    assert any(m.startswith(f"warning: superblock slot {other} ") and "when the pool was "
               "opened" in m for m in report.messages), report.messages


def test_new_pool_slot_never_written_is_not_damage(backend):
    pool = cowblock.Pool.create(backend.location("p"), size=64 * MiB, block_size=BS)
    try:
        # generation 1, slot 0 still zeros until the first commit
        assert pool.stats()["generation"] == 1
        assert pool.check().ok
    finally:
        pool.close()


# -- what "corrupt" names ------------------------------------------------------

def test_corrupt_error_names_page_offset_and_structure(backend, tmp_path):
    path, stores = made(backend)
    m = meta(stores)
    leaves = [p for p in range(2, m.npages) if m.type(p) == T_LEAF]
    with cowblock.Pool.open(path, readonly=True) as pool:
        gen = pool.stats()["generation"]
    # the leaf the newest generation reaches
    leaf = max(leaves, key=lambda p: m.get(p, 16, 8) if m.get(p, 16, 8) <= gen else -1)
    stores.flip("meta", leaf * PAGE + 300)
    with pytest.raises(cowblock.CorruptError) as info:
        cowblock.Pool.open(path, readonly=True)
    msg = str(info.value)
    assert (f"metadata page {leaf} (offset {hex(leaf * PAGE)}, a mapping leaf): bad checksum "
            f"(in the mapping tree of device 'base')") in msg, msg
    assert info.value.page == leaf and info.value.offset == leaf * PAGE
    # the detail belongs to that failure only: the next error (a file pool's metadata
    # truncated) does not repeat it
    with pytest.raises(cowblock.CorruptError) as again:
        with cowblock.Pool.create(str(tmp_path / "q"), size=MiB, block_size=BS):
            pass
        os.truncate(str(tmp_path / "q" / "meta"), 0)
        cowblock.Pool.open(str(tmp_path / "q"))
    assert "mapping leaf" not in str(again.value)


def test_truncated_data_file_is_named_as_such(tmp_path):
    # files only: a file cut short (a RADOS data store shorter than its blocks: below)
    path = make_pool(str(tmp_path / "p"))
    data = os.path.join(path, "data")
    os.truncate(data, MiB)
    with pytest.raises(cowblock.CorruptError) as info:
        cowblock.Pool.open(path, readonly=True)
    msg = str(info.value)
    assert "metadata" not in msg
    assert f"data file '{path}/data' is {MiB} bytes, shorter than the {64 * MiB} bytes" in msg
    assert info.value.page is None
    # truncated under an open pool: check says the same
    os.truncate(data, 64 * MiB)
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert pool.check().ok
        os.truncate(data, 2 * MiB)
        [msg] = errors(pool.check())
    assert f"is {2 * MiB} bytes, shorter than the {64 * MiB} bytes" in msg


# -- external origins ------------------------------------------------------------

def origin(tmp_path, fill=b"A"):
    p = tmp_path / "origin.raw"
    p.write_bytes(fill * MiB)
    return str(p)


def test_unchanged_external_origin_is_fine(tmp_path):
    ext = origin(tmp_path)
    path = make_pool(str(tmp_path / "p"), external=ext)
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert pool.check().ok
        assert pool.device("base").read(BS, 4) == b"AAAA"


@pytest.mark.parametrize("how", ["edit", "grow", "replace"])
def test_external_origin_changed_underneath_is_refused(tmp_path, how):
    ext = origin(tmp_path)
    path = make_pool(str(tmp_path / "p"), external=ext)
    st = os.stat(ext)
    if how == "edit":
        with open(ext, "r+b") as f:
            f.seek(BS)
            f.write(b"B" * 4)
    elif how == "grow":
        with open(ext, "ab") as f:
            f.write(b"A" * 512)
    else:  # same bytes and mtime, another file: caught by the inode
        tmp = ext + ".new"
        with open(tmp, "wb") as f:
            f.write(b"A" * MiB)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, ext)
    with cowblock.Pool.open(path, readonly=True) as pool:
        dev = pool.device("base")
        assert dev.read(0, 4) == b"xxxx"  # the device's own blocks still read
        with pytest.raises(cowblock.ExternalOriginError, match="changed since it was attached"):
            dev.read(BS, 4)
        report = pool.check()
    [msg] = errors(report)
    assert f"device 'base': external origin '{ext}' changed since it was attached" in msg
    assert {"edit": "modified", "grow": "size", "replace": "inode"}[how] in msg


def test_external_origin_edited_while_open_is_reported(tmp_path):
    ext = origin(tmp_path)
    path = make_pool(str(tmp_path / "p"), external=ext)
    with cowblock.Pool.open(path) as pool:
        with open(ext, "r+b") as f:
            f.write(b"C" * 10)
        os.utime(ext, ns=(1, 1))
        [msg] = errors(pool.check())
    assert "changed since it was attached" in msg and "while the pool was open" in msg


def test_reattaching_a_changed_origin_makes_a_new_record(tmp_path):
    ext = origin(tmp_path)
    path = make_pool(str(tmp_path / "p"), external=ext)
    os.utime(ext, ns=(1, 1))
    with cowblock.Pool.open(path) as pool:
        dev = pool.create_device("again", None, external=ext)  # the file as it is now
        assert dev.read(BS, 4) == b"AAAA"
        with pytest.raises(cowblock.ExternalOriginError):
            pool.device("base").read(BS, 4)


def test_short_rados_data_store_is_named_as_such(ceph, tmp_path):
    """The RADOS form of a truncated data file: a data head whose cb.size says the store is
    shorter than the pool's blocks."""
    from conftest import Backend

    backend = Backend("rados", tmp_path, ceph)
    path, stores = made(backend)
    stores.set_xattr("data", "cb.size", MiB)
    with pytest.raises(cowblock.CorruptError) as info:
        cowblock.Pool.open(path, readonly=True)
    msg = str(info.value)
    assert "metadata" not in msg
    assert f"is {MiB} bytes, shorter than the {64 * MiB} bytes" in msg, msg
    assert msg.count("data store of 'rados://") == 1 and "/data'" not in msg, msg
    assert info.value.page is None
