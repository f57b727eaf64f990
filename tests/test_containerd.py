"""containerd's snapshots service against ``cowblock snapshotter serve``.

The cases of containerd's snapshotter test suite (snapshots/testsuite),
ported to Python and run over gRPC against the real server: Prepare/Commit
chains with real file systems mounted, Stat and Update, Remove refused
while children exist, read-only views, Walk/List with filters, and the
error codes containerd's client relies on.  cowblock's own cases follow:
usage as changed blocks, the hidden base, restart and crash clean-up.

Needs root, /dev/fuse, loop devices, e2fsprogs and grpcio; skipped with the
reason otherwise.  The server is stopped by its pid file, mounts are
undone whatever happens.
"""

import itertools
import os
import stat
import time

import pytest

from containerd_support import MiB, Mounts, Server, cb, force_clean, leftovers, why_skip

pytestmark = pytest.mark.skipif(why_skip() is not None, reason=str(why_skip()))

if why_skip() is None:
    import grpc
    from google.protobuf import field_mask_pb2
    from cowblock.containerd._pb import snapshots_pb2 as pb

GC_ROOT = {"containerd.io/gc.root": "2026-01-01T00:00:00Z"}
_seq = itertools.count(1)


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("snapshotter")
    pool_dir = work / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "4G")
    srv = Server(pool_dir, work).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        left = leftovers(pool_dir)
        force_clean(pool_dir)
        assert code == 0, srv.logtext()
        assert left == [], left
        assert "no errors" in cb(pool_dir, "pool", "check").stdout


class Client:
    """The gRPC calls with containerd's argument shapes, keys under a
    per-test prefix (as containerd puts its namespace before each key)."""

    def __init__(self, server, mounts, tmp_path):
        self.stub = server.stub()
        self.server = server
        self.mounts = mounts
        self.tmp = tmp_path
        self.prefix = f"t{next(_seq)}/"

    def k(self, key):
        return self.prefix + key if key else ""

    def prepare(self, key, parent="", labels=GC_ROOT):
        return self.stub.Prepare(pb.PrepareSnapshotRequest(
            key=self.k(key), parent=self.k(parent), labels=labels)).mounts

    def view(self, key, parent="", labels=GC_ROOT):
        return self.stub.View(pb.ViewSnapshotRequest(
            key=self.k(key), parent=self.k(parent), labels=labels)).mounts

    def mounts_of(self, key):
        return self.stub.Mounts(pb.MountsRequest(key=self.k(key))).mounts

    def commit(self, name, key, labels=GC_ROOT):
        self.stub.Commit(pb.CommitSnapshotRequest(name=self.k(name), key=self.k(key),
                                                  labels=labels))

    def remove(self, key):
        self.stub.Remove(pb.RemoveSnapshotRequest(key=self.k(key)))

    def stat(self, key):
        return self.stub.Stat(pb.StatSnapshotRequest(key=self.k(key))).info

    def update(self, info, *paths):
        req = pb.UpdateSnapshotRequest(info=info)
        if paths:
            req.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(paths)))
        return self.stub.Update(req).info

    def usage(self, key):
        return self.stub.Usage(pb.UsageRequest(key=self.k(key)))

    def list(self, *filters):
        return [i for r in self.stub.List(pb.ListSnapshotsRequest(filters=list(filters)))
                for i in r.info]

    def mine(self, *filters):
        return {i.name[len(self.prefix):]: i for i in self.list(*filters)
                if i.name.startswith(self.prefix)}

    def prepare_mounted(self, key, parent=""):
        return self.mounts.mount(self.prepare(key, parent), self.tmp / "mnt" / key)

    def view_mounted(self, key, parent):
        return self.mounts.mount(self.view(key, parent), self.tmp / "mnt" / key)


@pytest.fixture
def c(server, tmp_path):
    mounts = Mounts()
    client = Client(server, mounts, tmp_path)
    try:
        yield client
    finally:
        mounts.unmount_all()
        # remove what the test left, children first
        for _ in range(20):
            left = sorted(client.mine(), key=len, reverse=True)
            if not left:
                break
            for key in left:
                if not any(i.parent == client.k(key) for i in client.list()):
                    client.remove(key)


def code_of(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value.code()


def tree(root):
    """Everything under ``root`` as comparable data (lost+found aside):
    type, mode, owner, content or link target, and which paths are one
    inode (hard links)."""
    out, inodes = {}, {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == "lost+found":
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                body = ("dir",)
            else:
                with open(path, "rb") as f:
                    body = ("file", f.read())
                inodes.setdefault(st.st_ino, []).append(rel)
            out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body)
    links = sorted(tuple(v) for v in inodes.values() if len(v) > 1)
    return out, links


# the file system operations of the ported cases, applied to a directory

def create_file(rel, data, mode=0o644):
    def apply(root):
        path = os.path.join(root, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    return apply


def create_dir(rel, mode=0o755):
    def apply(root):
        os.mkdir(os.path.join(root, rel))
        os.chmod(os.path.join(root, rel), mode)
    return apply


def remove_all(rel):
    def apply(root):
        import shutil
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    return apply


def link(old, new):
    return lambda root: os.link(os.path.join(root, old), os.path.join(root, new))


def rename(old, new):
    return lambda root: os.rename(os.path.join(root, old), os.path.join(root, new))


def chown(rel, uid, gid):
    return lambda root: os.lchown(os.path.join(root, rel), uid, gid)


def chmod(rel, mode):
    return lambda root: os.chmod(os.path.join(root, rel), mode)


def symlink(target, rel):
    return lambda root: os.symlink(target, os.path.join(root, rel))


def apply_all(root, ops):
    for op in ops:
        op(root)


def check_layers(c, *layers):
    """Each layer's operations applied in its own snapshot on the previous
    commit; a view of every commit must equal a plain directory with the
    same operations applied (the testsuite's checkSnapshots)."""
    reference = c.tmp / "reference"
    reference.mkdir()
    parent = ""
    for n, ops in enumerate(layers):
        active = c.prepare_mounted(f"active-{n}", parent)
        apply_all(active, ops)
        apply_all(str(reference), ops)
        c.mounts.unmount(active)
        c.commit(f"layer-{n}", f"active-{n}")
        parent = f"layer-{n}"
        view = c.view_mounted(f"view-{n}", parent)
        assert tree(view) == tree(str(reference)), f"layer {n}"
        c.mounts.unmount(view)
        c.remove(f"view-{n}")
    for n in reversed(range(len(layers))):
        c.remove(f"layer-{n}")


# --------------------------------------------------------------------------
# the ported cases of containerd's snapshots/testsuite


def test_basic(c):
    initial = [create_file("foo", b"foo\n", 0o777), create_dir("a"), create_dir("a/b"),
               create_dir("a/b/c")]
    diff = [create_file("bar", b"bar\n", 0o777), create_file("foo", b"bar\n", 0o777),
            remove_all("a/b")]
    expect = c.tmp / "expect"
    expect.mkdir()

    preparing = c.prepare_mounted("preparing")
    apply_all(preparing, initial)
    apply_all(str(expect), initial)
    c.mounts.unmount(preparing)  # containerd unmounts before it commits
    c.commit("committed", "preparing")
    si = c.stat("committed")
    assert (si.parent, si.kind) == ("", pb.COMMITTED)
    assert code_of(c.stat, "preparing") == grpc.StatusCode.NOT_FOUND

    nxt = c.prepare_mounted("nextlayer", "committed")
    assert tree(nxt) == tree(str(expect))
    apply_all(nxt, diff)
    apply_all(str(expect), diff)
    ni = c.stat("nextlayer")
    assert (ni.parent, ni.kind) == (c.k("committed"), pb.ACTIVE)
    c.mounts.unmount(nxt)
    c.commit("committed-next", "nextlayer")
    si2 = c.stat("committed-next")
    assert (si2.parent, si2.kind) == (c.k("committed"), pb.COMMITTED)
    assert code_of(c.stat, "nextlayer") == grpc.StatusCode.NOT_FOUND

    walked = c.mine()
    assert walked["committed"] == si and walked["committed-next"] == si2

    view = c.view_mounted("nextnextlayer", "committed-next")
    assert tree(view) == tree(str(expect))
    c.mounts.unmount(view)
    c.remove("nextnextlayer")
    assert code_of(c.remove, "committed") == grpc.StatusCode.FAILED_PRECONDITION
    c.remove("committed-next")
    c.remove("committed")
    assert c.mine() == {}


def test_stat_active(c):
    preparing = c.prepare_mounted("preparing")
    with open(os.path.join(preparing, "foo"), "w") as f:
        f.write("foo\n")
    si = c.stat("preparing")
    assert (si.name, si.kind, si.parent) == (c.k("preparing"), pb.ACTIVE, "")


def test_stat_committed(c):
    preparing = c.prepare_mounted("preparing")
    with open(os.path.join(preparing, "foo"), "w") as f:
        f.write("foo\n")
    c.mounts.unmount(preparing)
    c.commit("committed", "preparing")
    si = c.stat("committed")
    assert (si.name, si.kind, si.parent) == (c.k("committed"), pb.COMMITTED, "")


def test_transitivity(c):
    preparing = c.prepare_mounted("preparing")
    with open(os.path.join(preparing, "foo"), "w") as f:
        f.write("foo\n")
    c.mounts.unmount(preparing)
    c.commit("snapA", "preparing")
    nxt = c.prepare_mounted("next", "snapA")
    with open(os.path.join(nxt, "foo"), "w") as f:
        f.write("foo bar\n")
    c.mounts.unmount(nxt)
    c.commit("snapB", "next")
    si_a, si_b = c.stat("snapA"), c.stat("snapB")
    parent_b = c.stub.Stat(pb.StatSnapshotRequest(key=si_b.parent)).info
    assert si_a.parent == "" and si_b.parent == c.k("snapA") and parent_b.parent == ""


def test_prepare_view_same_key_fails(c):
    c.prepare("preparing")
    c.commit("snapA", "preparing")
    c.prepare("newlayer", "snapA")
    assert code_of(c.view, "newlayer", "snapA") == grpc.StatusCode.ALREADY_EXISTS
    c.prepare("prepLayer", "snapA")
    assert code_of(c.prepare, "prepLayer", "snapA") == grpc.StatusCode.ALREADY_EXISTS
    c.view("viewLayer", "snapA")
    assert code_of(c.view, "viewLayer", "snapA") == grpc.StatusCode.ALREADY_EXISTS


def base_snapshots(c):
    c.prepare("c1-a")
    c.commit("c1", "c1-a")
    c.prepare("c2-a", "c1")
    c.commit("c2", "c2-a")
    c.prepare("a1", "c2")
    c.prepare("a2")
    c.view("v1", "c2")
    c.view("v2")


def test_update(c):
    t1 = time.time()
    base_snapshots(c)
    t2 = time.time()
    cases = [("c1", pb.COMMITTED, ""), ("c2", pb.COMMITTED, "c1"), ("a1", pb.ACTIVE, "c2"),
             ("a2", pb.ACTIVE, ""), ("v1", pb.VIEW, "c2"), ("v2", pb.VIEW, "")]
    for name, kind, parent in cases:
        st = c.stat(name)
        created = st.created_at.ToNanoseconds()
        assert t1 * 1e9 - 1e6 <= created <= t2 * 1e9 + 1e6, name
        assert st.created_at == st.updated_at, name
        assert (st.kind, st.parent, st.name) == (kind, c.k(parent), c.k(name))

        root = {"containerd.io/gc.root": "2026-02-02T00:00:00Z"}
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", **root}
        st.parent = "doesnotexist"  # ignored: only labels are updated
        st.labels.clear()
        st.labels.update(expected)
        u1 = time.time()
        st = c.update(st)
        u2 = time.time()
        assert st.created_at.ToNanoseconds() == created, name
        assert u1 * 1e9 - 1e6 <= st.updated_at.ToNanoseconds() <= u2 * 1e9 + 1e6, name
        assert (st.kind, st.parent, st.name) == (kind, c.k(parent), c.k(name))
        assert dict(st.labels) == expected

        st.labels.clear()
        st.labels.update({"l1": "updated", "l4": "v4"})
        st = c.update(st, "labels.l1", "labels.l2")  # l2 absent: deleted; l4 not named
        assert dict(st.labels) == {"l1": "updated", "l3": "v3", **root}

        st.labels.clear()
        st.labels.update({"l4": "v4", **root})
        st = c.update(st, "labels")
        assert dict(st.labels) == {"l4": "v4", **root}
        assert dict(c.stat(name).labels) == {"l4": "v4", **root}

        st.parent = "doesnotexist"
        assert code_of(c.update, st, "parent") == grpc.StatusCode.INVALID_ARGUMENT
        assert c.stat(name).parent == c.k(parent)


def test_remove_and_reuse_keys(c):
    c.prepare("committed-a")
    c.commit("committed-1", "committed-a")
    c.prepare("reuse-1", "committed-1")
    c.remove("reuse-1")
    c.view("reuse-1", "committed-1")
    c.remove("reuse-1")
    c.prepare("reuse-1")
    c.remove("committed-1")
    c.commit("committed-1", "reuse-1")
    assert c.stat("committed-1").kind == pb.COMMITTED


def test_layer_file_update(c):
    check_layers(
        c,
        [create_file("foo", b"foo\n"), create_dir("dir"), create_file("dir/bar", b"bar\n")],
        [create_file("foo", b"changed foo, longer than before\n"),
         create_file("dir/bar", b"b\n")],
        [create_file("foo", b"short\n"), chmod("dir/bar", 0o600)])


def test_remove_directory_in_lower_layer(c):
    check_layers(
        c,
        [create_dir("lib"), create_dir("lib/deep"), create_file("lib/deep/x", b"x"),
         create_file("lib/y", b"y")],
        [remove_all("lib")],
        [create_dir("lib"), create_file("lib/z", b"z")])


def test_chown(c):
    check_layers(
        c,
        [create_dir("opt"), create_file("opt/a", b"a"), create_dir("home")],
        [chown("opt", 1, 2), chown("opt/a", 1000, 1000), chown("home", 33, 33)])


def test_directory_permission_on_commit(c):
    check_layers(
        c,
        [create_dir("dir1", 0o700), create_dir("dir2", 0o750), create_file("dir2/f", b"f", 0o640)],
        [chmod("dir1", 0o755), chown("dir2", 0, 42)],
        [create_dir("dir3", 0o1777)])


def test_remove_intermediate_snapshot(c):
    base = c.prepare_mounted("base")
    c.mounts.unmount(base)
    c.commit("committed-base", "base")
    c.prepare("intermediate", "committed-base")
    c.commit("committed-inter", "intermediate")
    c.prepare("toplayer", "committed-inter")
    assert code_of(c.remove, "committed-inter") == grpc.StatusCode.FAILED_PRECONDITION
    c.remove("toplayer")
    c.remove("committed-inter")
    c.remove("committed-base")


def test_deleted_files_in_child_snapshot(c):
    check_layers(
        c,
        [create_file("foo", b"foo\n", 0o777), create_file("foobar", b"foobar\n", 0o777)],
        [remove_all("foobar")],
        [])


def test_move_file_from_lower_layer(c):
    check_layers(
        c,
        [create_dir("dir1", 0o700), create_file("dir1/f1", b"Hello"),
         create_dir("dir2", 0o700), create_file("dir2/f2", b"...")],
        [create_dir("dir3", 0o700), create_file("dir3/f1", b"Hello"), remove_all("dir1"),
         link("dir2/f2", "dir3/f2"), remove_all("dir2/f2")])


def test_rename(c):
    check_layers(
        c,
        [create_dir("dir1"), create_dir("somefiles"), create_file("somefiles/f1", b"f1"),
         create_file("somefiles/f2", b"f2"), symlink("f1", "somefiles/s1")],
        [rename("dir1", "dir2"), rename("somefiles/f1", "f1"),
         rename("somefiles/s1", "s1"), link("somefiles/f2", "f2-link")])


def test_view_readonly(c):
    c.prepare("preparing")
    c.commit("committed", "preparing")
    mounts = c.view("view", "committed")
    assert "ro" in mounts[0].options
    view = c.mounts.mount(mounts, c.tmp / "view-mount")
    with pytest.raises(OSError) as info:
        with open(os.path.join(view, "testfile"), "w") as f:
            f.write("testcontent")
    assert info.value.errno == 30  # EROFS
    c.mounts.unmount(view)
    c.remove("view")
    c.remove("committed")


def test_stat_in_walk(c):
    base_snapshots(c)
    listed = c.mine()
    assert sorted(listed) == ["a1", "a2", "c1", "c2", "v1", "v2"]
    for name, info in listed.items():
        assert c.stat(name) == info


def test_close_twice_is_a_clean_stop_and_restart(server, tmp_path):
    """The testsuite's CloseTwice: here, a server stopped twice (the second
    stop finds nothing to do) and started again keeps every snapshot."""
    work = tmp_path / "w"
    work.mkdir()
    pool_dir = tmp_path / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "1G")
    srv = Server(pool_dir, work).start()
    try:
        stub = srv.stub()
        stub.Prepare(pb.PrepareSnapshotRequest(key="n/1/prepare"))
        stub.Commit(pb.CommitSnapshotRequest(name="n/2/layer", key="n/1/prepare"))
        stub.Prepare(pb.PrepareSnapshotRequest(key="n/3/active", parent="n/2/layer"))
        assert srv.stop() == 0
        assert srv.stop() is None
        assert leftovers(pool_dir) == []
        srv.start()
        stub = srv.stub()
        names = {i.name for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info}
        assert names == {"n/2/layer", "n/3/active"}
        m = stub.Mounts(pb.MountsRequest(key="n/3/active")).mounts  # mapped again
        assert m[0].source.startswith("/dev/loop")
        stub.Remove(pb.RemoveSnapshotRequest(key="n/3/active"))
        stub.Remove(pb.RemoveSnapshotRequest(key="n/2/layer"))
    finally:
        srv.stop()
        left = leftovers(pool_dir)
        force_clean(pool_dir)
    assert left == []


# --------------------------------------------------------------------------
# what containerd relies on beyond the testsuite


def test_error_codes(c):
    assert code_of(c.prepare, "x", "no-such-parent") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.stat, "nothing") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.remove, "nothing") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.usage, "nothing") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.commit, "y", "nothing") == grpc.StatusCode.NOT_FOUND
    c.prepare("active")
    assert code_of(c.prepare, "child", "active") == grpc.StatusCode.INVALID_ARGUMENT
    c.view("view")
    assert code_of(c.commit, "from-view", "view") == grpc.StatusCode.FAILED_PRECONDITION
    c.commit("layer", "active")
    assert code_of(c.mounts_of, "layer") == grpc.StatusCode.FAILED_PRECONDITION
    c.prepare("again")
    assert code_of(c.commit, "layer", "again") == grpc.StatusCode.ALREADY_EXISTS
    assert c.stat("again").kind == pb.ACTIVE  # a refused commit changes nothing
    empty = pb.StatSnapshotRequest(key="")
    assert code_of(c.stub.Stat, empty) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.list, "size==1") == grpc.StatusCode.INVALID_ARGUMENT
    big = {"k": "v" * 5000}
    assert code_of(c.prepare, "big", "", big) == grpc.StatusCode.INVALID_ARGUMENT
    assert "big" not in c.mine()


def test_commit_of_a_mounted_snapshot_is_refused_and_harmless(c):
    active = c.prepare_mounted("active")
    with open(os.path.join(active, "f"), "w") as f:
        f.write("data")
    assert code_of(c.commit, "layer", "active") == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(c.remove, "active") == grpc.StatusCode.FAILED_PRECONDITION
    assert c.stat("active").kind == pb.ACTIVE
    with open(os.path.join(active, "f")) as f:  # still mounted and working
        assert f.read() == "data"
    c.mounts.unmount(active)
    c.commit("layer", "active")
    view = c.view_mounted("v", "layer")
    with open(os.path.join(view, "f")) as f:
        assert f.read() == "data"


def test_mounts_are_stable_and_views_read_only(c):
    first = c.prepare("active")
    assert [(m.type, m.options) for m in first] == [("ext4", [])]
    assert c.mounts_of("active") == first == c.mounts_of("active")
    c.commit("layer", "active")
    v = c.view("view", "layer")
    assert v[0].type == "ext4" and "ro" in v[0].options and v[0].source.startswith("/dev/loop")


def test_list_filters_and_no_internal_snapshots(c):
    c.prepare("a", labels={"containerd.io/snapshot.ref": "sha256:1", "x": "1"})
    c.commit("layer", "a", labels={"containerd.io/gc.root": "now", "team.name": "storage"})
    c.prepare("child", "layer", labels={"x": "2"})
    c.view("look", "layer")
    everything = c.list()
    assert all(not i.name.startswith(".") for i in everything)
    assert all(i.parent == "" or not i.parent.startswith(".") for i in everything)
    assert sorted(c.mine()) == ["child", "layer", "look"]
    assert sorted(c.mine("kind==committed")) == ["layer"]
    assert sorted(c.mine("kind==view", "kind==active")) == ["child", "look"]
    assert sorted(c.mine(f"parent=={c.k('layer')}")) == ["child", "look"]
    assert sorted(c.mine('labels."team.name"==storage')) == ["layer"]
    assert sorted(c.mine("labels.x")) == ["child"]
    assert sorted(c.mine(f"name~=^{c.prefix}l")) == ["layer", "look"]
    assert sorted(c.mine("kind==active,labels.x==2")) == ["child"]
    assert c.mine("kind==active,labels.x==1") == {}


def test_list_streams_many_snapshots(c):
    c.prepare("root")
    c.commit("layer", "root")
    for n in range(130):
        c.view(f"v{n:03d}", "layer")
    replies = list(c.stub.List(pb.ListSnapshotsRequest(filters=[f"parent=={c.k('layer')}"])))
    assert len(replies) >= 2  # batched
    assert sum(len(r.info) for r in replies) == 130


def test_cleanup(c):
    c.prepare("a")
    c.stub.Cleanup(pb.CleanupRequest())
    assert "a" in c.mine()


def test_usage_is_the_bytes_beyond_the_parent(c):
    active = c.prepare_mounted("active")
    before = c.usage("active").size
    with open(os.path.join(active, "blob"), "wb") as f:
        f.write(os.urandom(4 * MiB))
    c.mounts.unmount(active)  # flushed by the unmount
    grown = c.usage("active").size
    assert grown >= before + 4 * MiB
    c.commit("layer", "active")
    assert c.usage("layer").size == grown  # the layer keeps its size
    c.prepare("child", "layer")
    c.view("view", "layer")
    assert c.usage("layer").size == grown  # children share its blocks: it still counts
    assert c.usage("child").size < MiB
    assert c.usage("view").size == 0
    # cowblock df shows both figures: changed (containerd's usage) and exclusive
    import json
    df = json.loads(cb(c.server.pool_dir, "--json", "df").stdout)
    rows = {s["key"]: s for s in df["snapshots"] if s["namespace"] == "containerd"}
    layer = rows[c.k("layer")]
    assert layer["kind"] == "committed" and layer["changed"] == grown
    assert layer["exclusive"] < MiB  # its blocks are shared with the child and the view
    assert rows[c.k("child")]["changed"] == c.usage("child").size
    assert not any(o["device"] == layer["device"] for o in df["other"])
    text = cb(c.server.pool_dir, "df", "-v").stdout
    assert c.k("layer") in text and "CHANGED" in text


def test_removing_everything_gives_the_space_back(server, c):
    from containerd_support import cb
    used = lambda: int(cb(server.pool_dir, "--json", "pool", "info").stdout.split('"used": ')[1]
                       .split(",")[0].split("}")[0])
    before = used()
    active = c.prepare_mounted("active")
    with open(os.path.join(active, "blob"), "wb") as f:
        f.write(os.urandom(2 * MiB))
    c.mounts.unmount(active)
    c.commit("layer", "active")
    c.prepare("child", "layer")
    assert used() > before + 2 * MiB
    c.remove("child")
    c.remove("layer")
    assert used() == before
    assert "no errors" in cb(server.pool_dir, "pool", "check").stdout


def test_cli_answers_while_serving(server):
    res = cb(server.pool_dir, "device", "ls")
    assert "cowblock-base" in res.stdout
    assert "snapshotter server" in res.stderr


def test_crash_restart_cleans_stale_mappings(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    pool_dir = tmp_path / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "1G")
    srv = Server(pool_dir, work).start()
    try:
        stub = srv.stub()
        stub.Prepare(pb.PrepareSnapshotRequest(key="n/1/a"))
        stub.View(pb.ViewSnapshotRequest(key="n/2/v"))
        assert len(leftovers(pool_dir)) == 3  # two loop devices and the FUSE mount
        srv.kill()
        assert leftovers(pool_dir) != []
        from cowblock.mapping import state
        srv.start()
        # the stale loop devices and dead FUSE mount are gone; the new server's own mount is up
        assert leftovers(pool_dir) == [state.mountpoint_for(str(pool_dir))]
        stub = srv.stub()
        assert {i.name for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info} == \
            {"n/1/a", "n/2/v"}
        assert stub.Mounts(pb.MountsRequest(key="n/1/a")).mounts[0].source.startswith("/dev/loop")
        assert len(leftovers(pool_dir)) == 2
    finally:
        srv.stop()
        left = leftovers(pool_dir)
        force_clean(pool_dir)
    assert left == []
    assert "no errors" in cb(pool_dir, "pool", "check").stdout


def test_xfs_snapshots(tmp_path):
    """--fs xfs: every snapshot carries the base's UUID, so mounts say nouuid
    and two views of one layer mount side by side."""
    import shutil
    if shutil.which("mkfs.xfs") is None and not os.path.exists("/usr/sbin/mkfs.xfs"):
        pytest.skip("mkfs.xfs is not installed (xfsprogs)")
    work = tmp_path / "w"
    work.mkdir()
    pool_dir = tmp_path / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "2G")
    srv = Server(pool_dir, work, size="512M", fs="xfs").start()
    mounts = Mounts()
    try:
        stub = srv.stub()
        m = stub.Prepare(pb.PrepareSnapshotRequest(key="n/1/a")).mounts
        assert m[0].type == "xfs" and "nouuid" in m[0].options
        active = mounts.mount(m, tmp_path / "a")
        with open(os.path.join(active, "f"), "w") as f:
            f.write("on xfs\n")
        mounts.unmount(active)
        stub.Commit(pb.CommitSnapshotRequest(name="n/2/layer", key="n/1/a"))
        views = []
        for n in (3, 4):
            v = stub.View(pb.ViewSnapshotRequest(key=f"n/{n}/v", parent="n/2/layer")).mounts
            assert v[0].options == ["ro", "nouuid"]
            views.append(mounts.mount(v, tmp_path / f"v{n}"))
        for view in views:
            with open(os.path.join(view, "f")) as f:
                assert f.read() == "on xfs\n"
    finally:
        mounts.unmount_all()
        srv.stop()
        left = leftovers(pool_dir)
        force_clean(pool_dir)
    assert left == []
