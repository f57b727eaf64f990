"""cowblock.snapshotter: containerd's snapshotter semantics over a pool.

Every test runs once per backend (``pool`` is the ``backend_pool`` fixture: a directory,
then the session's RADOS cluster); the state document is read and written through
conftest's ``read_state``/``write_state``.
"""

import json
import os

import pytest

import cowblock
from cowblock.snapshotter import Info, Snapshotter, Usage
from conftest import read_state, write_state

BS = 64 * 1024
MiB = 2**20


@pytest.fixture
def pool(backend_pool):
    return backend_pool


@pytest.fixture
def sn(pool):
    return Snapshotter(pool, default_size=16 * MiB)


def committed_base(sn, key="base", data=b"base-data"):
    dev = sn.prepare(f"{key}-active")
    dev.write(0, data)
    sn.commit(key, f"{key}-active")
    return key


def test_prepare_gives_a_writable_device_of_the_default_or_given_size(sn):
    dev = sn.prepare("a")
    assert dev.size == 16 * MiB and not dev.readonly
    assert dev.read(0, 4096) == bytes(4096)
    dev.write(4096, b"hello")
    assert sn.mounts("a").read(4096, 5) == b"hello"
    assert sn.prepare("b", size=MiB).size == MiB
    info = sn.stat("a")
    assert isinstance(info, Info)
    assert (info.name, info.parent, info.kind, info.labels) == ("a", None, "active", {})
    assert info.created <= info.updated and info.size == 16 * MiB


def test_commit_freezes_and_removes_the_active_snapshot(sn, pool):
    dev = sn.prepare("work", labels={"x": "1"})
    dev.write(0, b"frozen")
    active_dev = sn.stat("work").device
    info = sn.commit("layer1", "work", labels={"y": "2"})
    assert info.kind == "committed" and info.labels == {"y": "2"}
    with pytest.raises(cowblock.NotFoundError):
        sn.stat("work")
    assert active_dev not in pool.devices()          # the active device is gone
    frozen = sn.device("layer1")
    assert frozen.readonly
    assert frozen.read(0, 6) == b"frozen"
    with pytest.raises(cowblock.ReadOnlyError):
        frozen.write(0, b"x")


def test_commit_is_o1_and_shares_blocks(sn, pool):
    dev = sn.prepare("work")
    dev.write(0, os.urandom(4 * BS))
    pool.flush()
    used = pool.used
    sn.commit("c", "work")
    pool.flush()
    assert pool.used == used


def test_children_see_the_parent_and_stay_isolated(sn):
    committed_base(sn)
    a = sn.prepare("a", "base")
    b = sn.prepare("b", "base")
    assert a.read(0, 9) == b"base-data" == b.read(0, 9)
    a.write(0, b"AAAA")
    assert a.read(0, 9) == b"AAAA-data"
    assert b.read(0, 9) == b"base-data"
    assert sn.device("base").read(0, 9) == b"base-data"
    assert sn.stat("a").parent == "base"
    assert sn.children("base") == ["a", "b"]


def test_prepare_refusals(sn):
    committed_base(sn)
    sn.prepare("active")
    with pytest.raises(cowblock.ExistsError):
        sn.prepare("active")
    with pytest.raises(cowblock.NotFoundError):
        sn.prepare("x", "missing")
    with pytest.raises(cowblock.InvalidArgumentError, match="not committed"):
        sn.prepare("x", "active")
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare("x", "base", size=MiB)            # a child has its parent's size
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare("")
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare(42)
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare("x", labels={"a": 1})
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare("x", size=-1)
    assert "x" not in sn


def test_view_is_read_only_and_cannot_be_committed(sn):
    committed_base(sn)
    v = sn.view("v", "base")
    assert v.readonly
    assert v.read(0, 9) == b"base-data"
    with pytest.raises(cowblock.ReadOnlyError):
        v.write(0, b"x")
    assert sn.stat("v").kind == "view"
    with pytest.raises(cowblock.InvalidArgumentError, match="view"):
        sn.commit("c", "v")
    empty = sn.view("empty")
    assert empty.readonly and empty.read(0, 4096) == bytes(4096)


def test_commit_refusals(sn):
    committed_base(sn)
    sn.prepare("a", "base")
    with pytest.raises(cowblock.NotFoundError):
        sn.commit("c", "missing")
    with pytest.raises(cowblock.ExistsError):
        sn.commit("base", "a")
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.commit("c", "base")                       # already committed
    assert sn.stat("a").kind == "active"


def test_commit_keep_active_leaves_a_writable_snapshot(sn):
    committed_base(sn)
    a = sn.prepare("a", "base")
    a.write(0, b"one")
    sn.commit("snap1", "a", keep_active=True)
    a.write(0, b"two")
    assert sn.device("snap1").read(0, 3) == b"one"
    assert sn.mounts("a").read(0, 3) == b"two"
    assert sn.stat("a").kind == "active" and sn.stat("a").parent == "base"
    assert sn.stat("snap1").parent == "base"


def test_remove_is_refused_while_children_exist_and_gives_space_back(sn, pool):
    dev = sn.prepare("w")
    dev.write(0, os.urandom(8 * BS))
    sn.commit("base", "w")
    child = sn.prepare("child", "base")
    child.write(0, os.urandom(2 * BS))
    pool.flush()
    with pytest.raises(cowblock.BusyError, match="child"):
        sn.remove("base")
    assert sn.device("base").read(0, 1)              # still there
    used = pool.used
    sn.remove("child")
    pool.flush()
    assert pool.used == used - 2 * BS
    sn.remove("base")
    pool.flush()
    assert pool.used == 0
    assert pool.devices() == []
    with pytest.raises(cowblock.NotFoundError):
        sn.remove("base")


def test_keys_with_slashes_and_long_keys_map_to_valid_device_names(sn, pool):
    long_key = "sha256:" + "ab/" * 200
    dev = sn.prepare(long_key, labels={"k": "v"})
    dev.write(0, b"long")
    dev2 = sn.prepare("a/b/c")
    name = sn.stat(long_key).device
    assert "/" not in name and len(name.encode()) <= 127
    assert name in pool.devices()
    assert sn.mounts(long_key).read(0, 4) == b"long"
    assert dev2.name != name


def test_usage_reports_exclusive_and_shared_bytes(sn, pool):
    dev = sn.prepare("w")
    dev.write(0, os.urandom(4 * BS))
    sn.commit("base", "w")
    child = sn.prepare("c", "base")
    child.write(10 * BS, os.urandom(BS))
    child.write(20 * BS, os.urandom(BS))
    u = sn.usage("c")
    assert isinstance(u, Usage)
    assert u.size == u.exclusive == 2 * BS
    assert u.shared == 4 * BS
    assert u.mapped == u.size + u.shared
    assert sn.usage("base").size == 0                # all its blocks are shared with c
    with pytest.raises(cowblock.NotFoundError):
        sn.usage("missing")


def test_update_replaces_labels(sn):
    sn.prepare("a", labels={"a": "1"})
    before = sn.stat("a")
    info = sn.update("a", {"b": "2"})
    assert info.labels == {"b": "2"} == sn.stat("a").labels
    assert info.updated >= before.updated and info.created == before.created


def test_walk_with_and_without_function_and_filters(sn):
    committed_base(sn)
    sn.prepare("c1", "base", labels={"app": "web", "tier.x": "1"})
    sn.prepare("c2", "base", labels={"app": "db"})
    sn.view("v", "base")
    assert [i.name for i in sn.walk()] == ["base", "c1", "c2", "v"]
    seen = []
    assert sn.walk(seen.append) is None
    assert [i.name for i in seen] == ["base", "c1", "c2", "v"]
    names = lambda *f: [i.name for i in sn.walk(None, *f)]
    assert names("kind==committed") == ["base"]
    assert names("kind==active") == ["c1", "c2"]
    assert names("parent==base,kind!=view") == ["c1", "c2"]
    assert names("labels.app==web") == ["c1"]
    assert names('labels."tier.x"') == ["c1"]
    assert names("name~=^c") == ["c1", "c2"]
    assert names("kind==view", "labels.app==db") == ["c2", "v"]      # any filter
    assert names(lambda i: i.name.endswith("2")) == ["c2"]
    assert [i.name for i in sn.walk("kind==view")] == ["v"]
    with pytest.raises(cowblock.InvalidArgumentError):
        list(sn.walk(None, "size>3"))
    with pytest.raises(cowblock.InvalidArgumentError):
        list(sn.walk(None, "name~=("))


def test_mounts_only_for_active_and_views(sn):
    committed_base(sn)
    a = sn.prepare("a", "base")
    assert sn.mounts("a").name == a.name == sn.stat("a").device
    with pytest.raises(cowblock.InvalidArgumentError, match="committed"):
        sn.mounts("base")
    with pytest.raises(cowblock.NotFoundError):
        sn.mounts("missing")


def test_metadata_persists_across_reopen(location):
    path = location
    with cowblock.Pool.create(path, size=2**30, block_size=BS) as pool:
        sn = Snapshotter(pool, default_size=MiB)
        committed_base(sn)
        sn.prepare("a/b", "base", labels={"l": "v"}).write(100, b"persist")
    if "://" not in path:                            # files: no temporary left beside them
        files = os.listdir(path)
        assert "snapshots.default.json" in files
        assert not [f for f in files if f.endswith(".tmp")]
    with cowblock.Pool.open(path) as pool:
        doc = json.loads(read_state(pool, "snapshots.default.json"))
        assert set(doc["snapshots"]) == {"base", "a/b"} and doc["pending"] == []
        sn = Snapshotter(pool)
        assert sn.stat("a/b").parent == "base"
        assert sn.stat("a/b").labels == {"l": "v"}
        assert sn.mounts("a/b").read(100, 7) == b"persist"
        assert sn.mounts("a/b").read(0, 9) == b"base-data"


def test_namespaces_are_independent(pool):
    a = Snapshotter(pool, "one", default_size=MiB)
    b = Snapshotter(pool, "two", default_size=MiB)
    a.prepare("k")
    b.prepare("k")
    assert a.stat("k").device != b.stat("k").device
    a.remove("k")
    assert "k" in b and "k" not in a
    with pytest.raises(cowblock.InvalidArgumentError):
        Snapshotter(pool, "bad/namespace")


def test_two_instances_see_each_others_changes(pool):
    a = Snapshotter(pool, default_size=MiB)
    b = Snapshotter(pool, default_size=MiB)
    a.prepare("x")
    assert "x" in b
    b.remove("x")
    assert "x" not in a


class FailingFlushPool:
    """A pool whose flush fails once: an operation interrupted half-way."""

    def __init__(self, pool):
        self._pool = pool
        self.fail = True

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def __contains__(self, name):
        return name in self._pool

    def flush(self):
        if self.fail:
            self.fail = False
            raise RuntimeError("simulated crash")
        self._pool.flush()


def test_an_interrupted_prepare_leaves_a_leftover_that_cleanup_deletes(pool):
    flaky = FailingFlushPool(pool)
    sn = Snapshotter(flaky, default_size=MiB)
    with pytest.raises(RuntimeError):
        sn.prepare("k")
    assert "k" not in sn
    leftovers = [d for d in pool.devices() if d.startswith("s-")]
    assert len(leftovers) == 1
    fresh = Snapshotter(pool)
    assert fresh.cleanup() == leftovers
    assert pool.devices() == []
    fresh.prepare("k")                               # works afterwards
    assert fresh.cleanup() == []


def test_leftovers_are_also_finished_by_the_next_change(pool):
    sn = Snapshotter(FailingFlushPool(pool), default_size=MiB)
    with pytest.raises(RuntimeError):
        sn.prepare("k")
    sn2 = Snapshotter(pool, default_size=MiB)
    sn2.prepare("other")
    assert pool.devices() == [sn2.stat("other").device]


def test_devices_it_did_not_make_are_never_touched(pool):
    mine = pool.create_device("s-1", MiB)            # looks like a generated name
    mine.write(0, b"mine")
    sn = Snapshotter(pool, default_size=MiB)
    sn.prepare("a")
    assert sn.stat("a").device != "s-1"
    sn.remove("a")
    assert sn.cleanup() == []
    assert pool.device("s-1").read(0, 4) == b"mine"


def test_read_only_pool_refuses_changes_and_writes_nothing(location):
    path = location
    with cowblock.Pool.create(path, size=2**30, block_size=BS) as pool:
        committed_base(Snapshotter(pool, default_size=MiB))
        before = read_state(pool, "snapshots.default.json")
    with cowblock.Pool.open(path, readonly=True) as pool:
        sn = Snapshotter(pool)
        assert sn.stat("base").kind == "committed"
        assert sn.device("base").read(0, 9) == b"base-data"
        for call in (lambda: sn.prepare("x", "base"), lambda: sn.remove("base"),
                     lambda: sn.update("base", {}), lambda: sn.cleanup()):
            with pytest.raises(cowblock.ReadOnlyError):
                call()
        assert read_state(pool, "snapshots.default.json") == before
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert read_state(pool, "snapshots.default.json") == before


def test_corrupt_metadata_is_reported(pool):
    write_state(pool, "snapshots.default.json", "{not json")
    with pytest.raises(cowblock.CorruptError, match="snapshots.default.json"):
        Snapshotter(pool)
    write_state(pool, "snapshots.default.json",
                json.dumps({"format": "cowblock-snapshotter", "version": 99}))
    with pytest.raises(cowblock.CorruptError, match="version"):
        Snapshotter(pool)


def test_missing_lists_snapshots_whose_device_was_deleted(sn, pool):
    sn.prepare("a")
    assert sn.missing() == []
    pool.delete(sn.stat("a").device)
    assert sn.missing() == ["a"]
    with pytest.raises(cowblock.NotFoundError):
        sn.mounts("a")


def test_external_base(sn, tmp_path, pool):
    raw = tmp_path / "ext.raw"
    with open(raw, "wb") as fh:
        fh.truncate(MiB + 100)
        fh.seek(4096)
        fh.write(b"external!")
    dev = sn.prepare("e", external=raw)
    assert dev.size == MiB + 512
    assert dev.read(4096, 9) == b"external!"
    sn.commit("ebase", "e")
    child = sn.prepare("c", "ebase")
    child.write(4096, b"EX")
    assert child.read(4096, 9) == b"EXternal!"
    assert sn.device("ebase").read(4096, 9) == b"external!"
    with open(raw, "rb") as fh:
        fh.seek(4096)
        assert fh.read(9) == b"external!"            # the file is never written
    with pytest.raises(cowblock.NotFoundError):
        sn.prepare("x", external=tmp_path / "missing.raw")
    with pytest.raises(cowblock.InvalidArgumentError):
        sn.prepare("x", "ebase", external=raw)
