"""Space accounting: Device.usage() against the pool-wide walk, and df / device ls in one walk.

``Pool.usage()`` walks every device's tree once and counts, per data block, the devices that read
it; it is the oracle.  ``Device.usage()`` walks only the device's own tree (a block is exclusive
when every node on the path to it and the block itself have one reference).  The property test
drives random workloads (snapshots of snapshots, partial writes that copy up and keep an origin
reference, full writes, discards, deletes, external origins, flushes, checksum and keep_freed
pools, trees two levels deep) and asks both after every step, then again after a read-only
reopen, where the counts are rebuilt from the trees.
"""

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cowblock
from cowblock import cli
from cowblock import _lowlevel
from cowblock._lowlevel import ffi, lib
from cowblock.model import Store, _changed_bytes

MiB = 2**20
NAMES = [f"d{i}" for i in range(6)]

# ---------------------------------------------------------------------------- the oracle


def assert_matches_pool_walk(pool):
    pu = pool.usage()
    walk = pu.devices
    assert sorted(walk) == sorted(pu.changed) == pool.devices()
    for name in pool.devices():
        dev = pool.device(name)
        mine = dev.usage()
        assert mine == walk[name], (name, mine, walk[name])
        assert mine.mapped == mine.exclusive + mine.shared
        # the changed bytes of both walks agree with the device's change bitmap
        raw = ffi.new("cb_usage *")
        assert lib.cb_dev_usage(dev._handle(), raw) == 0
        assert raw.changed_bytes == pu.changed[name] == _changed_bytes(dev), name


def _virtual_blocks(nblocks):
    """Block numbers spread over first/last entries of leaves and over interior slots (127
    entries a leaf, 508 children a node), inside a device of nblocks blocks."""
    leaf, node = 127, 127 * 508
    cand = [0, 1, 2, leaf - 1, leaf, leaf + 1, 3 * leaf + 7, node - 1, node, node + leaf,
            2 * node + 5, nblocks - 1]
    return sorted({v for v in cand if 0 <= v < nblocks})


_write = st.tuples(st.just("write"), st.integers(0, 5), st.integers(0, 11), st.integers(0, 15),
                   st.integers(1, 20), st.integers(0, 2**16))
_snap = st.tuples(st.just("snap"), st.integers(0, 5), st.booleans())
op = st.one_of(
    _write, _write, _write, _snap, _snap,
    st.tuples(st.just("create"), st.integers(0, 5), st.sampled_from(["small", "big", "ext"])),
    st.tuples(st.just("discard"), st.integers(0, 5), st.integers(0, 11), st.integers(0, 15),
              st.integers(1, 40)),
    st.tuples(st.just("delete"), st.integers(0, 5)),
    st.tuples(st.just("flush"),),
)


def _run(workdir, bs, checksums, keep_freed, first, ops):
    path = os.path.join(workdir, "pool")
    ext = os.path.join(workdir, "base.raw")
    with open(ext, "wb") as fh:
        fh.write(random.Random(1).randbytes(3 * bs + 1000))
    # "small" and the external origin's size end inside a block
    sizes = {"small": 64 * bs - 1536, "big": 2 * 127 * 508 * bs + 64 * bs, "ext": None}
    sub = max(4096, bs // 64)
    pool = cowblock.Pool.create(path, size=2048 * bs, block_size=bs, checksums=checksums,
                                keep_freed=keep_freed * bs)
    try:
        seen = set()
        for o in [("create", 0, first)] + ops:
            kind = o[0]
            names = pool.devices()
            free = [n for n in NAMES if n not in names]
            pick = names[o[1] % len(names)] if names and len(o) > 1 else None  # an existing one
            if kind == "create":
                if not free:
                    continue
                if o[2] == "ext":  # reads past the file's end are zeros
                    pool.create_device(free[0], None if o[1] % 2 else 8 * bs, external=ext)
                else:
                    pool.create_device(free[0], sizes[o[2]])
            elif kind == "snap":
                if pick is None or not free:
                    continue
                pool.snapshot(pick, free[0], readonly=o[2])
            elif kind in ("write", "discard"):
                if pick is None:
                    continue
                dev = pool.device(pick)
                if dev.readonly:
                    continue
                vs = _virtual_blocks(-(-dev.size // bs))
                start = min(vs[o[2] % len(vs)] * bs + (o[3] * sub) % bs, dev.size - 512)
                length = min(o[4] * sub, dev.size - start)
                if kind == "write":
                    dev.write(start, random.Random(o[5]).randbytes(length))
                else:
                    dev.discard(start, length)
            elif kind == "delete":
                if pick is not None:
                    pool.delete(pick)
            else:
                pool.flush()
            event(kind)
            assert_matches_pool_walk(pool)
            seen |= {k for u in pool.usage().devices.values() for k in ("shared", "exclusive")
                     if getattr(u, k)}
        event(f"some device had: {', '.join(sorted(seen)) or 'nothing'}")
        report = pool.check()
        assert report.ok, report
    finally:
        pool.close()
    with cowblock.Pool.open(path, readonly=True) as ro:
        assert_matches_pool_walk(ro)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bs=st.sampled_from([16 * 1024, 64 * 1024]), checksums=st.booleans(),
       keep_freed=st.sampled_from([0, 16]), first=st.sampled_from(["small", "big", "ext"]),
       ops=st.lists(op, min_size=15, max_size=50))
def test_device_usage_equals_pool_walk(bs, checksums, keep_freed, first, ops):
    workdir = tempfile.mkdtemp(prefix="cb-usage-")
    try:
        _run(workdir, bs, checksums, keep_freed, first, ops)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_device_usage_deep_chain_and_copy_up(pool):
    """A fixed case the property test reaches only by luck: a chain of snapshots over a tree
    two levels deep, a partial copy-up at every depth, the middle of the chain deleted."""
    bs = pool.block_size
    far = 127 * 508 + 3  # a block under the second interior slot of the root
    base = pool.create_device("base", (far + 8) * bs)
    base.write(0, b"a" * (2 * bs))
    base.write(far * bs, b"b" * bs)
    prev = "base"
    for i in range(5):
        s = pool.snapshot(prev, f"s{i}")
        s.write(far * bs + 4096 * i, b"%d" % i * 4096)  # keeps a reference to the old block
        prev = f"s{i}"
    assert_matches_pool_walk(pool)
    u = pool.device("s4").usage()
    assert u.exclusive == bs  # its copied-up block; the origin is also s3's block
    pool.delete("s2")
    pool.delete("base")
    assert_matches_pool_walk(pool)


def test_device_usage_of_a_deleted_device_raises(pool):
    dev = pool.create_device("a", MiB)
    dev.write(0, b"x")
    other = cowblock.pool.Device(pool, "a")  # a cb_dev handle of its own
    pool.delete("a")
    with pytest.raises(cowblock.NotFoundError):
        other.usage()


# ---------------------------------------------------------------------------- one walk for df / ls


class _CountingLib:
    """Stands in for the cffi ``lib`` of cowblock.pool and counts the usage calls into the core."""

    def __init__(self, lib):
        self._lib = lib
        self.calls = dict.fromkeys(
            ["cb_pool_usage", "cb_dev_usage", "cb_pool_list", "cb_dev_open", "cb_dev_changed"], 0)

    def __getattr__(self, name):
        attr = getattr(self._lib, name)
        if name not in self.calls:
            return attr

        def counted(*args):
            self.calls[name] += 1
            return attr(*args)

        return counted


@pytest.fixture
def counting(monkeypatch):
    c = _CountingLib(_lowlevel.lib)
    monkeypatch.setattr(_lowlevel, "lib", c)
    return c


def test_df_walks_the_pool_once(pool, counting, tmp_path):
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"B" * (2 * MiB))
    store = Store(pool)
    store.import_image("img", raw)
    for i in range(4):
        c = store.create_container(f"c{i}", "img")
        c.device.write(0, b"c" * 4096 * (i + 1))
    vol = store.create_volume("v", 4 * MiB)
    vol.device.write(0, b"v" * 8192)
    store.container("c1").attach(vol)
    store.container("c3").attach(vol)
    pool.create_device("loose", MiB).write(0, b"l")
    for i in range(70):  # more devices than a first guess at the array's size
        pool.snapshot("loose", f"loose-{i:02d}")
    counting.calls.update(dict.fromkeys(counting.calls, 0))
    df = store.df()
    assert counting.calls["cb_pool_usage"] == 1
    # nothing per device: no usage, no handle opened, no change bitmap read
    assert counting.calls["cb_dev_usage"] == 0
    assert counting.calls["cb_dev_open"] == 0
    assert counting.calls["cb_dev_changed"] == 0
    assert counting.calls["cb_pool_list"] <= 2
    # and it says what the devices say
    by_dev = {c["device"]: c for c in df["containers"]}
    assert len(by_dev) == 4
    for name, row in by_dev.items():
        u = pool.device(name).usage()
        assert (row["mapped"], row["exclusive"], row["shared"]) == (u.mapped, u.exclusive, u.shared)
        assert row["changed"] == _changed_bytes(pool.device(name)) > 0
    assert [(v["name"], v["attached_to"]) for v in df["volumes"]] == [("v", ["c1", "c3"])]
    assert [o["device"] for o in df["other"]] == ["loose"] + [f"loose-{i:02d}" for i in range(70)]
    assert all(o["size"] == MiB and o["mapped"] == pool.block_size for o in df["other"])


def test_device_ls_walks_the_pool_once(pool_path, counting, capsys, monkeypatch):
    import json

    monkeypatch.delenv("COWBLOCK_POOL", raising=False)
    with cowblock.Pool.create(pool_path, size=256 * MiB) as pool:
        a = pool.create_device("a", 4 * MiB)
        a.write(0, b"a" * (3 * pool.block_size))
        for i in range(80):  # more than a first guess at the array's size
            pool.snapshot("a", f"s{i:02d}").write(0, b"s")
        want = {n: pool.device(n).usage() for n in pool.devices()}
        counting.calls.update(dict.fromkeys(counting.calls, 0))
    assert cli.main(["--json", "--pool", str(pool_path), "device", "ls"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert counting.calls["cb_pool_usage"] == 1
    assert counting.calls["cb_dev_usage"] == 0
    assert counting.calls["cb_pool_list"] <= 2  # one listing (sized, then filled)
    assert {r["name"]: (r["mapped"], r["exclusive"], r["shared"]) for r in rows} == {
        n: (u.mapped, u.exclusive, u.shared) for n, u in want.items()}
