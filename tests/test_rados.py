"""Pools in Ceph RADOS, against a real throwaway cluster (tests/ceph_cluster.py).

The core's main shapes run once per backend (the ``location`` fixture: a
directory, then a rados:// URL); the rest is what only a shared store has:
URLs, the writer lock and its holder, fencing a writer whose lock was broken,
readers in other processes, a writer killed mid-way, objects given back.
Every test here that needs the cluster skips, saying why, where Ceph or this
build's RADOS backend is missing.
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import cowblock
from conftest import RADOS_POOL, rados_url

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
B = 64 * KiB


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


def objects(ceph, name):
    """The RADOS objects of the cowblock pool NAME, sorted."""
    out = ceph.cmd("rados", "-p", RADOS_POOL, "ls")
    return sorted(o for o in out.split() if o.startswith(name + "."))


def name_of(url):
    return url.split("/")[3].split("?")[0]


# --------------------------------------------------------------------------- both backends


def test_create_write_snapshot_copyup_reopen_check(location):
    base_data = rnd(3 * B + 100, 1)
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        assert p.used == 0
        base = p.create_device("base", 64 * MiB)
        base.write(B - 50, base_data)             # four blocks, unaligned
        used = p.used
        assert used == 5 * B
        snap = p.snapshot("base", "snap")
        assert p.used == used                      # O(1), shares everything
        snap.write(B + 4 * KiB, b"S" * 4 * KiB)   # sub-block copy-up
        assert p.used == used + B
        assert base.read(B - 50, len(base_data)) == base_data
        want = bytearray(base_data)
        want[50 + 4 * KiB:50 + 8 * KiB] = b"S" * 4 * KiB
        assert snap.read(B - 50, len(want)) == bytes(want)
        assert snap.read(40 * MiB, 100) == bytes(100)  # never written: zeros
        p.flush()
    with cowblock.Pool.open(location) as p:
        assert sorted(p.devices()) == ["base", "snap"]
        assert p.device("base").read(B - 50, len(base_data)) == base_data
        assert p.device("snap").read(B - 50, len(want)) == bytes(want)
        report = p.check()
        assert report.ok, report.messages
        assert report.messages == []


def test_discard_delete_give_space_back(location):
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 32 * MiB)
        d.write(0, rnd(8 * MiB, 2))
        assert p.used == 8 * MiB
        d.discard(0, 4 * MiB)
        assert p.used == 4 * MiB
        assert d.read(0, 4 * MiB) == bytes(4 * MiB)
        p.snapshot("d", "s")
        p.delete("d")
        assert p.used == 4 * MiB                   # the snapshot keeps its blocks
        p.delete("s")
        assert p.used == 0
        p.flush()
        assert p.check().ok
    with cowblock.Pool.open(location) as p:
        assert p.devices() == [] and p.used == 0
        assert p.check().messages == []


def test_big_io_across_objects(location):
    data = rnd(9 * MiB + 123, 3)
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 64 * MiB)
        d.write(3 * MiB + 7, data)                 # crosses two 4 MiB object boundaries
        assert d.read(3 * MiB + 7, len(data)) == data
    with cowblock.Pool.open(location, readonly=True) as p:
        assert p.device("d").read(3 * MiB + 7, len(data)) == data


def test_readonly_open_refuses_writes(location):
    with cowblock.Pool.create(location, size=64 * MiB) as p:
        p.create_device("d", MiB).write(0, b"x")
    with cowblock.Pool.open(location, readonly=True) as p:
        assert p.readonly
        with pytest.raises(cowblock.ReadOnlyError):
            p.device("d").write(0, b"y")
        assert p.device("d").read(0, 1) == b"x"


def test_create_twice_and_open_missing(location):
    with cowblock.Pool.create(location, size=64 * MiB):
        pass
    with pytest.raises(cowblock.ExistsError):
        cowblock.Pool.create(location, size=64 * MiB)
    missing = location.replace("/pool", "/nopool") if "://" not in location else \
        location.replace(name_of(location), name_of(location) + "-missing")
    with pytest.raises(cowblock.NotFoundError):
        cowblock.Pool.open(missing)


def test_second_writer_refused(location):
    with cowblock.Pool.create(location, size=64 * MiB) as p:
        p.create_device("d", MiB)
        with pytest.raises(cowblock.BusyError):
            cowblock.Pool.open(location)
        assert p.devices() == ["d"]                # the first writer is untouched


def test_checksums_scrub_dump_and_streams(location, tmp_path):
    from cowblock import sendrecv
    data = rnd(2 * MiB + 4096, 6)
    with cowblock.Pool.create(location, size=64 * MiB, block_size=B, checksums=True) as p:
        d = p.create_device("d", 8 * MiB)
        d.write(4096, data)
        p.snapshot("d", "frozen", readonly=True)
        p.flush()
        report = p.scrub()
        assert report.ok and report.checksums and report.blocks == 33
        dump = p.dump()
        assert sorted(dv["name"] for dv in dump["devices"]) == ["d", "frozen"]
        stream = tmp_path / "frozen.stream"
        with open(stream, "wb") as f:
            sendrecv.send(p.device("frozen"), f)
    with cowblock.Pool.create(tmp_path / "other", size=64 * MiB) as q:
        with open(stream, "rb") as f:
            sendrecv.receive(q, "copy", f)
        assert q.device("copy").read(4096, len(data)) == data


# --------------------------------------------------------------------------- RADOS only


def test_backends_listed():
    got = cowblock.backends()
    assert got[0] == "file" and set(got) <= {"file", "rados"}
    out = subprocess.run([sys.executable, "-m", "cowblock", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert "IO backends: " + " ".join(got) in out


@pytest.mark.parametrize("url, why", [
    ("rados://", "no RADOS pool named"),
    ("rados://cbtest/", "1 to 96 characters"),
    ("rados://cbtest/bad name", "letters, digits"),
    ("rados://cbtest/x?object_size=1000", "power of two"),
    ("rados://cbtest/x?colour=blue", "unknown query key"),
    ("rados://cbtest/x?timeout=0", "1 to 3600"),
])
def test_bad_urls_say_what_is_wrong(url, why):
    if "rados" not in cowblock.backends():
        pytest.skip("this build has no RADOS backend")
    with pytest.raises(cowblock.InvalidArgumentError, match=why):
        cowblock.Pool.create(url, size=64 * MiB)
    with pytest.raises(cowblock.InvalidArgumentError, match=why):
        cowblock.Pool.open(url)


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(cowblock.InvalidArgumentError, match="no 'nbd' backend"):
        cowblock.Pool.create("nbd://host/x", size=64 * MiB)
    assert not os.path.exists("nbd:")


def test_missing_rados_pool(ceph):
    url = f"rados://no-such-pool/x?conf={ceph.conf}"
    with pytest.raises(cowblock.InvalidArgumentError, match="no RADOS pool 'no-such-pool'"):
        cowblock.Pool.create(url, size=64 * MiB)


def test_objects_striped_and_removed(ceph):
    url = rados_url(ceph)
    name = name_of(url)
    with cowblock.Pool.create(url, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 64 * MiB)
        d.write(0, rnd(12 * MiB, 4))                # data objects 0, 1, 2
        p.flush()
        data = [o for o in objects(ceph, name) if o.startswith(name + ".data.")]
        assert data == [f"{name}.data.{i:016x}" for i in range(3)]
        d.discard(4 * MiB, 4 * MiB)                 # object 1, whole: removed
        p.flush()
        data = [o for o in objects(ceph, name) if o.startswith(name + ".data.")]
        assert f"{name}.data.{1:016x}" not in data
        assert d.read(4 * MiB, 4 * MiB) == bytes(4 * MiB)
        assert p.check().messages == []


def test_small_objects(ceph):
    url = rados_url(ceph, object_size=64 * KiB)
    data = rnd(MiB + 5, 5)
    with cowblock.Pool.create(url, size=64 * MiB, block_size=16 * KiB) as p:
        p.create_device("d", 8 * MiB).write(100, data)
    # the object size is the store's own: a URL asking another one later is ignored
    with cowblock.Pool.open(url.replace("65536", "4194304"), readonly=True) as p:
        assert p.device("d").read(100, len(data)) == data
    name = name_of(url)
    assert len([o for o in objects(ceph, name) if ".data." in o]) == 17


def test_busy_names_the_holder(ceph):
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=64 * MiB):
        with pytest.raises(cowblock.BusyError) as info:
            cowblock.Pool.open(url)
    msg = str(info.value)
    assert f"cowblock pid {os.getpid()}" in msg and "client." in msg
    assert "unlock --force" in msg
    with cowblock.Pool.open(url):               # released by close
        pass


def test_reader_needs_no_lock_and_sees_last_commit(ceph):
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=64 * MiB) as w:
        w.create_device("a", MiB).write(0, b"first")
        w.flush()
        with cowblock.Pool.open(url, readonly=True) as r:
            assert r.devices() == ["a"]
            assert r.device("a").read(0, 5) == b"first"
        w.create_device("b", MiB)
        w.flush()
        with cowblock.Pool.open(url, readonly=True) as r:
            assert sorted(r.devices()) == ["a", "b"]


def test_unlock_fences_the_old_writer(ceph):
    url = rados_url(ceph)
    old = cowblock.Pool.create(url, size=64 * MiB)
    try:
        old.create_device("kept", MiB).write(0, b"flushed")
        old.flush()
        holder = cowblock.Pool.unlock(url)
        assert f"cowblock pid {os.getpid()}" in holder
        with cowblock.Pool.open(url) as new:
            assert new.devices() == ["kept"]
            new.create_device("newer", MiB)
            new.flush()
            # the old writer's commit is refused, and so is everything after it
            old.create_device("lost", MiB)
            with pytest.raises(cowblock.PoolFailedError):
                old.flush()
            with pytest.raises(cowblock.PoolFailedError):
                old.create_device("lost2", MiB)
            assert sorted(new.devices()) == ["kept", "newer"]
    finally:
        old.close()
    with cowblock.Pool.open(url) as p:
        assert sorted(p.devices()) == ["kept", "newer"]
        assert p.device("kept").read(0, 7) == b"flushed"
        assert p.check().messages == []


def test_superblock_guard_without_blocklist(ceph):
    """Another opener's head change (here made by hand) fails the next commit:
    the superblock is never written over a state this writer did not see."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=64 * MiB) as p:
        p.create_device("a", MiB)
        p.flush()
        head = name_of(url) + ".meta"
        seq = ceph.cmd("rados", "-p", RADOS_POOL, "getxattr", head, "cb.seq").strip()
        ceph.cmd("rados", "-p", RADOS_POOL, "setxattr", head, "cb.seq", str(int(seq) + 1))
        p.create_device("b", MiB)
        with pytest.raises(cowblock.PoolFailedError, match="another writer"):
            p.flush()
        with pytest.raises(cowblock.PoolFailedError):
            p.devices()
    ceph.cmd("rados", "-p", RADOS_POOL, "setxattr", head, "cb.seq", seq)


def test_cli_on_a_rados_pool(ceph, tmp_path):
    url = rados_url(ceph)
    env = dict(os.environ, COWBLOCK_POOL=url)

    def cli(*argv, ok=True):
        r = subprocess.run([sys.executable, "-m", "cowblock", *argv], capture_output=True,
                           text=True, env=env)
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    cli("pool", "create", "--size", "64M")
    cli("device", "create", "d", "1M")
    info = json.loads(cli("pool", "info", "--json").stdout)
    assert info["path"] == url and info["devices"] == 1
    assert info["data_bytes_on_disk"] is None          # no file here to measure
    assert "data file on disk:" in cli("pool", "info").stdout
    assert "generation:" in cli("pool", "stats").stdout
    assert cli("pool", "check").returncode == 0
    r = cli("pool", "unlock", ok=False)
    assert r.returncode == 2 and "--force" in r.stderr
    assert "no writer lock" in cli("pool", "unlock", "--force").stdout
    assert cli("image", "ls").returncode == 0     # the model: tests/test_rados_model.py


# --------------------------------------------------------------------------- other processes

WRITER = textwrap.dedent("""
    import sys, time, cowblock
    url = sys.argv[1]
    p = cowblock.Pool.create(url, size=256 * 2**20)
    base = p.create_device("layer0", 16 * 2**20)
    base.write(0, b"L0" * 2**19)
    p.snapshot("layer0", "layer1", readonly=False)
    p.device("layer1").write(2**20, b"L1" * 2**19)
    p.flush()
    print("built", flush=True)
    sys.stdin.readline()                      # the reader has read the layers
    p.snapshot("layer1", "container")
    p.device("container").write(0, b"C" * 4096)
    p.flush()
    print("container", flush=True)
    sys.stdin.readline()
    p.close()
""")

READER = textwrap.dedent("""
    import json, sys, cowblock
    url = sys.argv[1]
    out = {}
    with cowblock.Pool.open(url, readonly=True) as p:
        out["devices"] = sorted(p.devices())
        out["l0"] = p.device("layer1").read(0, 4).decode()
        out["l1"] = p.device("layer1").read(2**20, 4).decode()
        if "container" in out["devices"]:
            out["c"] = p.device("container").read(0, 2).decode()
            out["c_base"] = p.device("container").read(4096, 2).decode()
    try:
        cowblock.Pool.open(url)
        out["second_writer"] = "opened"
    except cowblock.BusyError as e:
        out["second_writer"] = str(e)
    print(json.dumps(out))
""")


def _py(script, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def _read_json(script, url):
    r = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_writer_and_reader_processes_share_layers(ceph):
    url = rados_url(ceph)
    w = _py(WRITER, url)
    try:
        assert w.stdout.readline().strip() == "built", w.stderr.read()
        got = _read_json(READER, url)
        assert got["devices"] == ["layer0", "layer1"]
        assert got["l0"] == "L0L0" and got["l1"] == "L1L1"
        assert "open for writing by" in got["second_writer"]
        w.stdin.write("\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == "container"
        got = _read_json(READER, url)            # a reader opened later sees the new commit
        assert got["devices"] == ["container", "layer0", "layer1"]
        assert got["c"] == "CC" and got["c_base"] == "L0"
        w.stdin.write("\n")
        w.stdin.flush()
        assert w.wait(timeout=60) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()


KILLED = textwrap.dedent("""
    import sys, os, cowblock
    url = sys.argv[1]
    p = cowblock.Pool.create(url, size=256 * 2**20)
    d = p.create_device("d", 64 * 2**20)
    d.write(0, b"F" * 2**20)
    p.flush()
    print("flushed", flush=True)
    i = 0
    while True:                               # unflushed writes until killed
        d.write((i % 60) * 2**20 + 2**20, os.urandom(2**20))
        p.create_device("x%d" % i, 2**20)
        i += 1
        if i == 3:
            print("writing", flush=True)
""")


def test_writer_killed_mid_write_loses_nothing_flushed(ceph):
    url = rados_url(ceph)
    w = _py(KILLED, url)
    try:
        assert w.stdout.readline().strip() == "flushed", w.stderr.read()
        assert w.stdout.readline().strip() == "writing"
        time.sleep(0.3)
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait()
    # the dead writer's lock stays until broken (it has no lease)
    with pytest.raises(cowblock.BusyError):
        cowblock.Pool.open(url)
    with cowblock.Pool.open(url, readonly=True) as r:
        assert r.device("d").read(0, 2**20) == b"F" * 2**20
    assert "cowblock pid %d" % w.pid in cowblock.Pool.unlock(url)
    with cowblock.Pool.open(url) as p:             # unclean: free data reclaimed
        assert p.device("d").read(0, 2**20) == b"F" * 2**20
        report = p.check()
        assert report.ok and report.messages == [], report.messages


def test_live_writer_keeps_renewing_its_lease(ceph):
    url = rados_url(ceph, lease=3)
    with cowblock.Pool.create(url, size=64 * MiB) as p:
        p.create_device("a", MiB)
        time.sleep(7)                               # more than two leases
        with pytest.raises(cowblock.BusyError, match="lapses within 3 s"):
            cowblock.Pool.open(url)
        p.create_device("b", MiB)
        p.flush()                                   # still the writer: not fenced
    with cowblock.Pool.open(url) as p:
        assert sorted(p.devices()) == ["a", "b"]


def _open_when_lapsed(url, timeout=20):
    """Open for writing as soon as the last writer's lease has lapsed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cowblock.Pool.open(url)
        except cowblock.BusyError:
            assert time.monotonic() < deadline, "the last writer's lease never lapsed"
            time.sleep(0.5)


def test_dead_writers_lease_lapses(ceph):
    url = rados_url(ceph, lease=2)
    w = _py(KILLED, url)
    try:
        assert w.stdout.readline().strip() == "flushed", w.stderr.read()
        assert w.stdout.readline().strip() == "writing"
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait()
    with _open_when_lapsed(url) as p:             # no unlock: the lease runs out
        assert p.device("d").read(0, 2**20) == b"F" * 2**20
        assert p.check().messages == []


STALLED = textwrap.dedent("""
    import sys, cowblock
    url = sys.argv[1]
    p = cowblock.Pool.create(url, size=64 * 2**20)
    d = p.create_device("d", 2**20)
    d.write(0, b"old")
    p.flush()
    print("ready", flush=True)
    sys.stdin.readline()                      # stopped (SIGSTOP) and resumed meanwhile
    try:
        d.write(0, b"OLD")
        p.create_device("from-the-stalled-writer", 2**20)
        p.flush()
        print("flushed")
    except cowblock.PoolFailedError as e:
        print("failed:", e)
    try:
        p.close()
    except cowblock.CowblockError:
        pass
""")


def test_stalled_writer_is_fenced_after_its_lease(ceph):
    url = rados_url(ceph, lease=2)
    w = _py(STALLED, url)
    try:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
        w.send_signal(signal.SIGSTOP)               # a writer that stops answering
        time.sleep(2)
        with _open_when_lapsed(url) as p:         # lapsed: taken over, old one fenced
            p.create_device("new", MiB)
            p.flush()
            w.send_signal(signal.SIGCONT)
            out, err = w.communicate("\n", timeout=60)
            assert out.startswith("failed:"), (out, err)
            assert sorted(p.devices()) == ["d", "new"]
            assert p.device("d").read(0, 3) == b"old"
    finally:
        if w.poll() is None:
            w.send_signal(signal.SIGCONT)
            w.kill()
            w.wait()
    with cowblock.Pool.open(url, readonly=True) as p:
        assert sorted(p.devices()) == ["d", "new"]
        assert p.device("d").read(0, 3) == b"old"


# --------------------------------------------------------------------------- a failing cluster


@pytest.fixture
def own_cluster(ceph):
    """A cluster of the test's own, to stop and start (the session's is shared)."""
    from ceph_cluster import CephCluster
    with CephCluster() as c:
        c.create_pool(RADOS_POOL)
        yield c


def test_osd_stopped_mid_write_fails_the_pool_and_loses_nothing_committed(own_cluster):
    c = own_cluster
    url = f"rados://{RADOS_POOL}/osdkill?conf={c.conf}&timeout=3"
    p = cowblock.Pool.create(url, size=64 * MiB)
    try:
        d = p.create_device("d", 16 * MiB)
        d.write(0, b"committed" * 1000)
        p.flush()
        c.stop_osd()
        t = time.monotonic()
        with pytest.raises((cowblock.PoolFailedError, cowblock.IOFailedError)):
            d.write(MiB, b"lost" * 1000)            # queued; its error comes at the sync
            p.create_device("lost", MiB)
            p.flush()
        assert time.monotonic() - t < 30           # the op timeout, not for ever
        with pytest.raises(cowblock.PoolFailedError):
            p.devices()                             # sticky
    finally:
        p.close()                                   # nothing to commit: failed
    c.start_osd(RADOS_POOL)
    # its lock could not be released while the OSD was down
    with pytest.raises(cowblock.BusyError):
        cowblock.Pool.open(url)
    cowblock.Pool.unlock(url)
    with cowblock.Pool.open(url) as p:
        assert p.devices() == ["d"]
        assert p.device("d").read(0, 9000) == b"committed" * 1000
        assert p.check().messages == []


BUSY_WRITER = textwrap.dedent("""
    import os, sys, cowblock
    p = cowblock.Pool.create(sys.argv[1], size=256 * 2**20)
    d = p.create_device("d", 64 * 2**20)
    d.write(0, b"base" * 1024)
    p.snapshot("d", "layer", readonly=True)
    p.flush()
    print("ready", flush=True)
    i = 0
    while True:                               # a commit every few ms, reusing pages
        d.write((i % 500 + 1) * 65536, os.urandom(65536))
        p.snapshot("d", "s%d" % i, readonly=True)
        if i >= 5:
            p.delete("s%d" % (i - 5))
        p.flush()
        i += 1
""")


def test_readers_open_while_a_writer_commits(ceph):
    """Each open reads every metadata object whole (one RADOS read is atomic
    against the writer's writes), and reads again if a commit came between
    the superblock and the pages: without both, most of these opens failed
    with 'generation ... is newer' (909 of 1,040 here)."""
    url = rados_url(ceph)
    w = _py(BUSY_WRITER, url)
    try:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
        opened, t = 0, time.monotonic()
        while time.monotonic() - t < 6:
            with cowblock.Pool.open(url, readonly=True) as r:
                assert r.device("layer").read(0, 8) == b"basebase"
                assert "d" in r.devices()
            opened += 1
        assert opened > 20
        assert w.poll() is None, w.stderr.read()
    finally:
        w.kill()
        w.wait()


def test_damaged_lock_record_says_how_to_clear_it(ceph):
    """A lock record the OSD cannot decode gave a bare EIO from every writable
    open and from `pool unlock --force`."""
    url = rados_url(ceph)
    cowblock.Pool.create(url, size=4 * MiB, block_size=B).close()
    head = name_of(url) + ".meta"
    ceph.cmd("rados", "-p", RADOS_POOL, "setxattr", head, "lock.cowblock", "garbage")
    for call in (lambda: cowblock.Pool.open(url), lambda: cowblock.Pool.unlock(url)):
        with pytest.raises(cowblock.CorruptError) as info:
            call()
        assert f"rados -p {RADOS_POOL} rmxattr {head} lock.cowblock" in str(info.value)
    ceph.cmd("rados", "-p", RADOS_POOL, "rmxattr", head, "lock.cowblock")
    with cowblock.Pool.open(url) as p:
        assert p.check().ok


# --------------------------------------------------------------------------- reads in flight
# A pread of the RADOS backend queues an aio read per object piece (ops of
# at most 1 MiB, 32 in flight, the oldest waited for first), and the thin
# read path hands a call's runs to the backend together: these check what a
# caller gets back is whole, whatever the shape of the read.


def _patchwork(d, seed):
    """Scattered writes over d (objects left absent, objects partly written,
    runs crossing object ends); the bytes d should read as."""
    want = bytearray(d.size)
    r = random.Random(seed)
    for start, n in [(0, 5), (3 * MiB + 7, 2 * MiB), (9 * MiB, 64 * KiB), (12 * MiB - 1, 2),
                     (20 * MiB + 4 * KiB, 9 * MiB), (35 * MiB, 1)]:
        data = r.randbytes(n)
        d.write(start, data)
        want[start:start + n] = data
    return want


def test_reads_spanning_objects_and_holes(location):
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 48 * MiB)           # 12 objects of 4 MiB, some never made
        want = _patchwork(d, 11)
        # buffers start as garbage: holes must be zeroed, not left alone
        # one call spanning every object: 48 ops of 1 MiB, more than are ever in flight
        buf = bytearray(b"\xee") * d.size
        d.readinto(0, buf)
        assert buf == want
        buf = bytearray(b"\xee") * (17 * MiB + 3)
        d.readinto(MiB - 1, buf)                     # unaligned both ends
        assert buf == want[MiB - 1:18 * MiB + 2]
        buf = bytearray(b"\xee") * (4 * MiB)
        d.readinto(40 * MiB, buf)                    # a hole of a whole object
        assert buf == bytes(4 * MiB)
        # a batch read in random order, unmapped blocks among them
        idx = list(range(d.size // B))
        random.Random(12).shuffle(idx)
        got = bytearray(b"\xee") * d.size
        d.read_blocks(idx, out=got)
        for i, b in enumerate(idx):
            assert got[i * B:(i + 1) * B] == want[b * B:(b + 1) * B], b
        p.flush()
    with cowblock.Pool.open(location, readonly=True) as p:
        assert p.device("d").read(0, 48 * MiB) == bytes(want)


def test_read_of_many_runs_through_a_snapshot(location):
    """Every other sub-block of a snapshot copied up: one read is hundreds
    of runs, alternating between the snapshot's blocks and its origin's."""
    base = rnd(8 * MiB, 13)
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 8 * MiB)
        d.write(0, base)
        s = p.snapshot("d", "s")
        want = bytearray(base)
        sub = B // 64
        for off in range(0, 8 * MiB, 2 * sub):
            s.write(off, b"\x5a" * sub)
            want[off:off + sub] = b"\x5a" * sub
        buf = bytearray(b"\xee") * (8 * MiB)
        s.readinto(0, buf)
        assert buf == want
        assert d.read(0, 8 * MiB) == base
        got = s.read_blocks(list(range(127, -1, -1)))
        assert b"".join(g.tobytes() for g in got[::-1]) == bytes(want)


def test_reads_racing_writes_see_old_or_new(location):
    """Reads from other threads of a range spanning objects while a writer
    rewrites it whole, again and again: each read is one write's bytes,
    never a mix and never a part still unread."""
    span, off = 6 * MiB, 3 * MiB                      # crosses two object ends
    fills = [bytes([c]) * span for c in (0x11, 0x22, 0x33)]
    import threading
    with cowblock.Pool.create(location, size=256 * MiB, block_size=B) as p:
        d = p.create_device("d", 16 * MiB)
        d.write(off, fills[0])
        stop = threading.Event()
        bad, reads = [], [0]

        def reader():
            buf = bytearray(span)
            while not stop.is_set():
                d.readinto(off, buf)
                if buf.count(buf[0]) != span or bytes(buf[:1]) * span not in fills:
                    bad.append(sorted(set(buf)))
                    return
                reads[0] += 1

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 3
            i = 0
            while time.monotonic() < deadline and not bad:
                i += 1
                d.write(off, fills[i % 3])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not bad, bad
        assert reads[0] > 10 and i > 10
        assert d.read(off, span) == fills[i % 3]


def test_osd_error_during_aio_read_is_clear(own_cluster):
    """A stopped OSD (SIGSTOP): every read op of a multi-object read times
    out; the read fails with that error (the pool stays usable), and once the
    OSD serves again the same read returns the data."""
    c = own_cluster
    url = f"rados://{RADOS_POOL}/rdfail?conf={c.conf}&timeout=2"
    data = rnd(10 * MiB, 14)
    with cowblock.Pool.create(url, size=64 * MiB, block_size=B) as p:
        d = p.create_device("d", 16 * MiB)
        d.write(MiB, data)
        p.flush()
        osd = c.pid("osd.0")
        os.kill(osd, signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(cowblock.IOFailedError) as ei:
                d.read(MiB, len(data))
            assert time.monotonic() - t < 20
            assert ei.value.errno == errno.ETIMEDOUT
            assert "read from 'd'" in str(ei.value) and "timed out" in str(ei.value)
            with pytest.raises(cowblock.IOFailedError):
                d.read_blocks(list(range(16, 176)))
        finally:
            os.kill(osd, signal.SIGCONT)
        assert d.read(MiB, len(data)) == data
        assert p.check().messages == []


def _osd_reads(c):
    """Read ops the OSD has served (its admin socket's op_r counter)."""
    out = c.cmd("ceph", "--admin-daemon", os.path.join(c.dir, "run", "osd.0.asok"),
                "perf", "dump")
    return json.loads(out)["osd"]["op_r"]


def test_writer_loads_metadata_per_object_then_sees_its_own_writes(ceph):
    """A writer's open reads each metadata object once, not each page; its
    first write ends that, so what it reads after comes from RADOS."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=256 * MiB, block_size=4 * KiB) as p:
        d = p.create_device("d", 16 * MiB)
        d.write(0, rnd(16 * MiB, 15))                 # 4,096 entries: dozens of pages
        p.snapshot("d", "s")
    before = _osd_reads(ceph)
    with cowblock.Pool.open(url) as p:
        reads = _osd_reads(ceph) - before
        assert reads < 24, reads                      # 14 here; a page at a time: 48
        s = p.device("s")
        s.write(0, b"new" * 1000)                     # copy-up: new pages at the commit
        p.snapshot("s", "t")
        p.flush()
        report = p.check()                            # reads the new pages back
        assert report.ok and report.messages == [], report.messages
        assert p.device("t").read(0, 3000) == b"new" * 1000
    with cowblock.Pool.open(url) as p:
        assert p.check().messages == []
        assert sorted(p.devices()) == ["d", "s", "t"]
