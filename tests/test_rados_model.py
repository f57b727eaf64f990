"""The Docker model, the snapshotter and streams on a pool in RADOS: what only a shared
store has.  (The model and snapshotter suites themselves run on both backends:
tests/test_model.py, tests/test_snapshotter.py.)

Their state documents live in the omap of the pool's meta head object (cowblock.h,
"Documents"): another process that opens the pool read-only sees the model a writer built,
a writer whose lock was broken cannot change a document after a newer writer took over, and
a writer killed mid-update leaves the old or the new document, never a mix.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import cowblock
from conftest import RADOS_POOL, rados_url
from cowblock import model
from cowblock.model import Store
from cowblock.snapshotter import Snapshotter

MiB = 2**20


def name_of(url):
    return url.split("/")[3].split("?")[0]


def _py(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _run_json(script, *args):
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _say(proc, line="\n"):
    proc.stdin.write(line)
    proc.stdin.flush()


# --------------------------------------------------------------------------- two processes

WRITER = textwrap.dedent("""
    import sys, cowblock
    from cowblock.model import Store
    url, raw = sys.argv[1], sys.argv[2]
    p = cowblock.Pool.create(url, size=256 * 2**20)
    s = Store(p)
    img = s.import_image("app:1", raw)
    img.add_layer({2**20: b"layer-two" * 100}, comment="second")
    c = s.create_container("web", "app:1")
    c.device.write(0, b"container-bytes")
    p.flush()
    print("built", flush=True)
    sys.stdin.readline()
    s.create_container("db", "app:1").device.write(0, b"db")
    p.flush()
    print("more", flush=True)
    sys.stdin.readline()
    p.close()
""")

READER = textwrap.dedent("""
    import hashlib, json, sys, cowblock
    from cowblock import model
    from cowblock.model import Store
    url = sys.argv[1]
    out = {}
    with cowblock.Pool.open(url, readonly=True) as p, Store(p) as s:
        out["images"] = [i.name for i in s.images()]
        img = s.image("app:1")
        out["layers"] = [l.id for l in img.layers]
        out["all_layers"] = sorted(l.id for l in s.layers())
        out["image_sha"] = hashlib.sha256(img.device.read(0, img.size)).hexdigest()
        out["containers"] = sorted(c.name for c in s.containers())
        out["web"] = s.container("web").device.read(0, 15).decode()
        out["check"] = model.check(p)
        try:
            s.create_container("nope", "app:1")
            out["mutate"] = "allowed"
        except cowblock.ReadOnlyError as e:
            out["mutate"] = "ReadOnlyError"
    print(json.dumps(out))
""")


def test_a_reader_process_sees_the_model_a_writer_built(ceph, tmp_path):
    url = rados_url(ceph)
    raw = tmp_path / "base.raw"
    base = os.urandom(3 * MiB)
    raw.write_bytes(base)
    w = _py(WRITER, url, str(raw))
    try:
        assert w.stdout.readline().strip() == "built", w.stderr.read()
        got = _run_json(READER, url)
        assert got["images"] == ["app:1"]
        assert len(got["layers"]) == 2 and sorted(got["layers"]) == got["all_layers"]
        expect = bytearray(base)
        expect[MiB:MiB + 900] = b"layer-two" * 100
        assert got["image_sha"] == hashlib.sha256(expect).hexdigest()
        assert got["containers"] == ["web"]
        assert got["web"] == "container-bytes"
        assert got["check"] == []
        assert got["mutate"] == "ReadOnlyError"
        _say(w)
        assert w.stdout.readline().strip() == "more"
        got = _run_json(READER, url)               # a later reader sees the later model
        assert got["containers"] == ["db", "web"]
        _say(w)
        assert w.wait(timeout=60) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    with cowblock.Pool.open(url, readonly=True) as p:
        assert p.documents() == ["model.json", "snapshots.model.json"]


def test_a_live_reader_store_refreshes_to_what_the_writer_added(ceph, tmp_path):
    """A reader's model is the writer's newest; its devices catch up on refresh()."""
    url = rados_url(ceph)
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"base" * (MiB // 4))
    with cowblock.Pool.create(url, size=64 * MiB) as wp, Store(wp) as w:
        w.import_image("app:1", str(raw))
        w.create_container("web", "app:1").device.write(0, b"web!")
        wp.flush()
        with cowblock.Pool.open(url, readonly=True) as rp, Store(rp) as r:
            web = r.container("web").device
            assert web.read(0, 4) == b"web!"
            w.create_container("db", "app:1").device.write(0, b"db!!")
            w.container("web").device.write(0, b"WEB2")
            wp.flush()
            assert sorted(c.name for c in r.containers()) == ["db", "web"]
            with pytest.raises(cowblock.NotFoundError):
                r.container("db").device.read(0, 4)
            assert web.read(0, 4) == b"web!"       # the commit it read, unchanged
            assert r.refresh() == wp.stats()["generation"]
            assert r.container("db").device.read(0, 4) == b"db!!"
            assert web.read(0, 4) == b"WEB2"
            assert model.check(rp) == []


def test_two_stores_on_one_pool_see_each_others_changes(ceph):
    """The cached document is re-read when another instance saved it (its generation)."""
    with cowblock.Pool.create(rados_url(ceph), size=64 * MiB) as p:
        a, b = Snapshotter(p, "ns", default_size=MiB), Snapshotter(p, "ns", default_size=MiB)
        a.prepare("x")
        assert "x" in b
        gen, _ = p.read_document("snapshots.ns.json")
        assert p.read_document("snapshots.ns.json", gen) == (gen, None)   # unchanged: no bytes
        b.remove("x")
        assert "x" not in a
        assert p.read_document("snapshots.ns.json", gen)[0] > gen


# --------------------------------------------------------------------------- fencing

def test_a_fenced_writer_cannot_change_the_model(ceph, tmp_path):
    url = rados_url(ceph)
    raw = tmp_path / "base.raw"
    raw.write_bytes(os.urandom(MiB))
    old = cowblock.Pool.create(url, size=64 * MiB)
    try:
        so = Store(old)
        so.import_image("app", raw)
        holder = cowblock.Pool.unlock(url)       # `cowblock pool unlock --force`
        assert f"cowblock pid {os.getpid()}" in holder
        with cowblock.Pool.open(url) as new:
            sn = Store(new)
            sn.create_container("newer", "app")
            before = new.read_document("model.json")
            with pytest.raises(cowblock.PoolFailedError, match="another writer"):
                so.create_container("lost", "app")
            with pytest.raises(cowblock.PoolFailedError):
                so.remove_image("app")
            assert new.read_document("model.json") == before
            assert [c.name for c in sn.containers()] == ["newer"]
        with pytest.raises(cowblock.PoolFailedError, match="another writer"):
            old.close()                          # its last commit is refused too
    finally:
        if not old.closed:
            try:
                old.close()
            except cowblock.PoolFailedError:
                pass
    with cowblock.Pool.open(url) as p, Store(p) as s:
        assert [c.name for c in s.containers()] == ["newer"]
        assert [i.name for i in s.images()] == ["app"]
        assert model.check(p) == []


def test_a_document_put_asserts_the_fence(ceph):
    """Without a blocklist: a head changed by another opener (here by hand) fails the next
    document update as it fails the next commit, and the document stays as it was."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=64 * MiB) as p:
        sn = Snapshotter(p, default_size=MiB)
        sn.prepare("a")
        before = p.read_document("snapshots.default.json")
        head = name_of(url) + ".meta"
        seq = ceph.cmd("rados", "-p", RADOS_POOL, "getxattr", head, "cb.seq").strip()
        ceph.cmd("rados", "-p", RADOS_POOL, "setxattr", head, "cb.seq", str(int(seq) + 1))
        with pytest.raises(cowblock.PoolFailedError, match="another writer"):
            sn.update("a", {"k": "v"})
        with pytest.raises(cowblock.PoolFailedError):   # the pool has failed, for good
            p.devices()
    with cowblock.Pool.open(url, readonly=True) as r:
        assert r.read_document("snapshots.default.json") == before


def test_documents_too_big_or_misnamed_are_refused(ceph):
    with cowblock.Pool.create(rados_url(ceph), size=64 * MiB) as p:
        with pytest.raises(cowblock.InvalidArgumentError, match="8 MiB"):
            p.write_document("big.json", b"x" * (8 * MiB + 1))
        with pytest.raises(cowblock.InvalidArgumentError, match="document name"):
            p.write_document("a/b", b"{}")
        assert p.documents() == []
        assert p.read_document("big.json") == (0, None)
        p.write_document("edge.json", b"y" * (8 * MiB))    # the limit itself fits
        assert p.read_document("edge.json")[1] == b"y" * (8 * MiB)
        p.write_document("empty.json", b"")
        gen, data = p.read_document("empty.json")
        assert gen > 0 and data == b""
        assert p.documents() == ["edge.json", "empty.json"]
        p.create_device("d", MiB)                          # the pool still works
        p.flush()


def test_documents_of_a_directory_pool_are_its_files(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", size=64 * MiB) as p:
        with pytest.raises(cowblock.InvalidArgumentError, match="files beside it"):
            p.read_document("model.json")


# --------------------------------------------------------------------------- atomicity

UPDATER = textwrap.dedent("""
    import sys, cowblock
    from cowblock.snapshotter import Snapshotter
    url = sys.argv[1]
    p = cowblock.Pool.create(url, size=64 * 2**20)
    sn = Snapshotter(p, default_size=2**20)
    sn.prepare("k")
    pad = "p" * (3 * 2**20)                      # a document of 3 MiB: a long op
    i = 0
    while True:
        sn.update("k", {"i": str(i), "pad": pad + str(i)})
        print(i, flush=True)
        i += 1
""")


def test_a_writer_killed_mid_update_leaves_the_old_or_the_new_document(ceph):
    url = rados_url(ceph)
    w = _py(UPDATER, url)
    last = None
    try:
        for _ in range(4):
            line = w.stdout.readline()
            assert line, w.stderr.read()
            last = int(line)
        time.sleep(0.05)
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait()
    last = max([last, *(int(x) for x in w.stdout.read().split())])
    cowblock.Pool.unlock(url)
    with cowblock.Pool.open(url) as p:
        labels = Snapshotter(p).stat("k").labels
        i = int(labels["i"])
        assert labels["pad"] == "p" * (3 * MiB) + str(i)      # whole, and one version's
        assert last <= i <= last + 1    # every update that returned is there; one more at most


# --------------------------------------------------------------------------- the CLI

def test_cli_model_on_a_rados_pool(ceph, tmp_path):
    url = rados_url(ceph)
    raw = tmp_path / "img.raw"
    raw.write_bytes(os.urandom(2 * MiB))
    env = dict(os.environ, COWBLOCK_POOL=url)

    def cli(*argv, pool_env=True):
        r = subprocess.run([sys.executable, "-m", "cowblock", *argv], capture_output=True,
                           text=True, env=env if pool_env else dict(os.environ), timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    cli("pool", "create", "--size", "64M")
    cli("image", "import", "--no-progress", "app:1", str(raw))
    cli("--pool", url, "container", "create", "web", "app:1", pool_env=False)
    images = json.loads(cli("image", "ls", "--json"))
    assert [i["name"] for i in images] == ["app:1"]
    assert "web" in cli("container", "ls")
    out = json.loads(cli("pool", "check", "--json"))
    assert out["ok"] and out["errors"] == []
    with cowblock.Pool.open(url) as p:               # a broken model is what check finds
        p.write_document("model.json", b"garbage")
    r = subprocess.run([sys.executable, "-m", "cowblock", "pool", "check"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode != 0 and "model.json" in r.stdout + r.stderr
    assert "not valid JSON" in r.stdout + r.stderr


def test_a_refused_update_leaves_the_model_as_it_was(ceph):
    """A save past the size limit is refused before anything is written, and the
    snapshotter forgets the change it had made to its cached copy."""
    with cowblock.Pool.create(rados_url(ceph), size=64 * MiB) as p:
        sn = Snapshotter(p, default_size=MiB)
        sn.prepare("a", labels={"k": "v"})
        with pytest.raises(cowblock.InvalidArgumentError, match="8 MiB"):
            sn.update("a", {"big": "x" * (9 * MiB)})
        assert sn.stat("a").labels == {"k": "v"}
        assert Snapshotter(p).stat("a").labels == {"k": "v"}
        sn.update("a", {"k": "w"})                       # the pool still works
        assert Snapshotter(p).stat("a").labels == {"k": "w"}
