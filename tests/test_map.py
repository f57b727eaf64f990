"""cowblock device map: devices as kernel block devices (FUSE file + loop).

Needs root, /dev/fuse, loop devices and e2fsprogs; skipped with the reason
otherwise.  Every test stops the daemon by the pid in its state file and
removes what it left, whatever happened.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import cowblock
from cowblock.mapping import mapping_unavailable, state
from cowblock.mapping import loop as loopmod

MiB = 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cowblock.__file__)))
NOTE = "the command ran there"


def _why_skip():
    why = mapping_unavailable()
    if why:
        return why
    for tool in ("mkfs.ext4", "e2fsck", "fstrim", "mount", "umount"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}") \
                and not os.path.exists(f"/sbin/{tool}"):
            return f"{tool} is not installed"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))


def cb(pool_dir, *argv, check=True):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("COWBLOCK_POOL", None)
    res = subprocess.run([sys.executable, "-m", "cowblock", "--pool", pool_dir, *argv],
                         capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    if check:
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return res


def sh(*cmd, check=True):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, (cmd, res.stdout, res.stderr)
    return res


def daemon_pid(pool_dir):
    doc = state.load(pool_dir)
    return doc.get("pid") if doc else None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid, seconds=15):
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


class Env:
    """A pool and the mounts a test makes; cleans everything up."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.pool = str(tmp_path / "pool")
        self.mounts = []
        self.pids = set()

    def mount(self, dev, name, readonly=False):
        mnt = str(self.tmp / name)
        os.makedirs(mnt, exist_ok=True)
        opts = ["-o", "ro,noload"] if readonly else []
        sh("mount", *opts, dev, mnt)
        self.mounts.append(mnt)
        return mnt

    def umount(self, mnt):
        sh("umount", mnt)
        self.mounts.remove(mnt)

    def map(self, name, *extra):
        path = cb(self.pool, "device", "map", name, *extra).stdout.strip()
        pid = daemon_pid(self.pool)
        if pid:
            self.pids.add(pid)
        assert path.startswith("/dev/loop") and os.path.exists(path)
        return path

    def cleanup(self):
        for mnt in reversed(self.mounts):
            if subprocess.run(["umount", mnt], capture_output=True).returncode:
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        pid = daemon_pid(self.pool)
        if pid:
            self.pids.add(pid)
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, 15):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 5)
        if os.path.isdir(self.pool):
            state.clean_stale(self.pool, log=lambda *_: None)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()
    mnt = state.mountpoint_for(e.pool) if os.path.isdir(e.pool) else None
    assert mnt is None or not state.is_mounted(mnt)
    assert not loopmod.loops_under(mnt) if mnt else True


def used(pool_dir):
    return json.loads(cb(pool_dir, "--json", "df").stdout)["pool"]["used"]


def write_tree(root, tag):
    for d in range(3):
        os.makedirs(os.path.join(root, f"dir{d}", "sub"), exist_ok=True)
        for f in range(5):
            with open(os.path.join(root, f"dir{d}", "sub", f"file{f}.txt"), "w") as fh:
                fh.write(f"{tag} {d} {f}\n" * 1000)


def read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    out.pop("lost+found", None)
    return out


def test_end_to_end_layer_and_container(env):
    """device mkfs, map, mount, write, unmap; snapshot as a layer; a
    container on it changes files; the layer keeps the old ones; e2fsck
    is clean on both; fstrim in the container gives space back."""
    cb(env.pool, "pool", "create", "--size", "4G")
    cb(env.pool, "device", "create", "base", "512M")
    assert "ext4" in cb(env.pool, "device", "mkfs", "base").stdout

    dev = env.map("base")
    mnt = env.mount(dev, "m-base")
    write_tree(mnt, "old")
    old = read_tree(mnt)
    env.umount(mnt)
    assert "unmapped base" in cb(env.pool, "device", "unmap", "base").stdout
    pid = env.pids and next(iter(env.pids))
    assert pid and wait_gone(pid), "the daemon exits when nothing is mapped"

    cb(env.pool, "device", "snapshot", "base", "layer", "--readonly")
    cb(env.pool, "device", "snapshot", "layer", "ctr")

    ctr_dev = env.map("ctr")
    ctr = env.mount(ctr_dev, "m-ctr")
    assert read_tree(ctr) == old
    with open(os.path.join(ctr, "dir0", "sub", "file0.txt"), "w") as fh:
        fh.write("changed\n")
    os.unlink(os.path.join(ctr, "dir1", "sub", "file1.txt"))
    with open(os.path.join(ctr, "big"), "wb") as fh:
        fh.write(os.urandom(64 * MiB))
        os.fsync(fh.fileno())

    layer_dev = env.map("layer")  # a read-only device maps read-only
    rows = json.loads(cb(env.pool, "--json", "device", "mapped").stdout)
    assert {r["name"]: r["readonly"] for r in rows} == {"ctr": False, "layer": True}
    assert open(f"/sys/block/{os.path.basename(layer_dev)}/ro").read().strip() == "1"
    lay = env.mount(layer_dev, "m-layer", readonly=True)
    assert read_tree(lay) == old
    new = read_tree(ctr)
    assert new[os.path.join("dir0", "sub", "file0.txt")] == b"changed\n"
    assert os.path.join("dir1", "sub", "file1.txt") not in new

    # fstrim in the container: the big file's blocks go back to the pool
    before = used(env.pool)
    os.unlink(os.path.join(ctr, "big"))
    sh("sync")
    sh("fstrim", ctr)
    after = used(env.pool)
    assert after < before - 48 * MiB, (before, after)

    env.umount(lay)
    env.umount(ctr)
    for d in (layer_dev, ctr_dev):
        res = sh("e2fsck", "-fn", d, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    cb(env.pool, "device", "unmap", layer_dev)  # by path
    cb(env.pool, "device", "unmap", "ctr")
    assert json.loads(cb(env.pool, "--json", "device", "mapped").stdout) == []
    assert cb(env.pool, "pool", "check").returncode == 0


def test_cli_through_the_map_daemon(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "base", "64M")
    local = {k: cb(env.pool, *k.split()) for k in ("df", "device ls", "pool check")}
    dev = env.map("base")
    pid = daemon_pid(env.pool)
    for k, res in local.items():
        r = cb(env.pool, *k.split())
        assert r.stdout == res.stdout, k
        assert r.stderr.strip().endswith(NOTE) and f"map server (pid {pid})" in r.stderr, k
    r = cb(env.pool, "device", "snapshot", "base", "snap")
    assert "created snapshot snap of base" in r.stdout and NOTE in r.stderr
    assert "snap" in cb(env.pool, "device", "ls").stdout
    # what would pull a device from under its loop device is refused
    r = cb(env.pool, "device", "rm", "base", check=False)
    assert r.returncode == 1 and f"base at {dev}" in r.stderr and "unmap first" in r.stderr
    r = cb(env.pool, "device", "mkfs", "base", check=False)
    assert r.returncode == 1 and "unmap first" in r.stderr
    assert cb(env.pool, "device", "rm", "snap").returncode == 0
    cb(env.pool, "device", "unmap", "base")
    assert wait_gone(pid)
    assert not os.path.exists(os.path.join(env.pool, "control.sock"))
    assert not os.path.exists(state.state_path(env.pool))
    assert NOTE not in cb(env.pool, "df").stderr


def test_sigkill_then_next_map_cleans_up(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "a", "64M")
    cb(env.pool, "device", "create", "b", "64M")
    dev_a = env.map("a")
    dev_b = env.map("b")
    pid = daemon_pid(env.pool)
    mnt = state.load(env.pool)["mountpoint"]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    assert set(loopmod.loops_under(mnt)) == {dev_a, dev_b}  # what the crash left
    assert state.is_mounted(mnt)

    dev = env.map("b")
    new_pid = daemon_pid(env.pool)
    assert new_pid != pid
    assert loopmod.loops_under(mnt) == [dev]  # the stale ones are gone
    losetup = sh("losetup", "-a").stdout
    assert losetup.count(mnt) == 1, losetup
    log = open(os.path.join(env.pool, "map.log")).read()
    assert "detached stale" in log and "unmounted stale FUSE mount" in log
    with open(dev, "rb") as f:
        assert f.read(4096) == bytes(4096)
    cb(env.pool, "device", "unmap", "b")
    assert wait_gone(new_pid)
    assert not state.is_mounted(mnt) and not loopmod.loops_under(mnt)


def test_data_written_through_the_loop_device_is_in_the_device(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "d", "64M")
    dev = env.map("d")
    data = os.urandom(3 * MiB)
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 5 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    sh("blkdiscard", "--offset", str(6 * MiB), "--length", str(MiB), dev)
    cb(env.pool, "device", "unmap", "d")
    with cowblock.Pool.open(env.pool, readonly=True) as pool:
        d = pool.device("d")
        assert d.read(5 * MiB, MiB) == data[:MiB]
        assert d.read(6 * MiB, MiB) == bytes(MiB)   # discarded
        assert d.read(7 * MiB, MiB) == data[2 * MiB:]


def test_readonly_map_refuses_writes(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "d", "64M")
    dev = env.map("d", "--readonly")
    with pytest.raises(OSError):
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
    r = cb(env.pool, "device", "map", "d", check=False)  # again: the same mapping
    assert r.stdout.strip() == dev
    cb(env.pool, "device", "unmap", "d")


def test_map_errors(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    r = cb(env.pool, "device", "map", "nope", check=False)
    assert r.returncode == 1 and "nope" in r.stderr
    pid = daemon_pid(env.pool)
    assert pid is None or wait_gone(pid, 10), "a daemon that maps nothing exits"
    r = cb(env.pool, "device", "unmap", "nope", check=False)
    assert r.returncode == 1 and "not mapped" in r.stderr
    cb(env.pool, "device", "create", "d", "64M")
    dev = env.map("d")
    mnt_dev = dev
    sh("mkfs.ext4", "-q", mnt_dev)
    m = env.mount(mnt_dev, "m")
    r = cb(env.pool, "device", "unmap", "d", check=False)
    assert r.returncode == 1 and "in use" in r.stderr
    env.umount(m)
    cb(env.pool, "device", "unmap", "d")
    # a pool held by a process without a control socket
    with cowblock.Pool.open(env.pool):
        r = cb(env.pool, "device", "map", "d", check=False)
    assert r.returncode == 1 and "open in another process" in r.stderr


@pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="xfsprogs is not installed")
def test_mkfs_xfs_and_model_image(env):
    cb(env.pool, "pool", "create", "--size", "2G")
    cb(env.pool, "device", "create", "x", "320M")
    cb(env.pool, "device", "mkfs", "x", "--type", "xfs")
    dev = env.map("x")
    m = env.mount(dev, "mx")
    write_tree(m, "xfs")
    env.umount(m)
    if shutil.which("xfs_repair"):
        assert sh("xfs_repair", "-n", dev, check=False).returncode == 0
    cb(env.pool, "device", "unmap", "x")

    from cowblock.model import Store
    with cowblock.Pool.open(env.pool) as pool, Store(pool) as store:
        img = store.create_image("fs", 128 * MiB, fs="ext4")
        c = store.create_container("c", img)
        layer_dev, ctr_dev = img.top.device.name, c.device.name
    ldev = env.map(layer_dev)
    cdev = env.map(ctr_dev)
    lm = env.mount(ldev, "ml", readonly=True)
    cm = env.mount(cdev, "mc")
    write_tree(cm, "container")
    assert read_tree(lm) == {}
    env.umount(cm)
    env.umount(lm)
    assert sh("e2fsck", "-fn", cdev, check=False).returncode == 0
    r = cb(env.pool, "container", "rm", "c", check=False)
    assert r.returncode == 1 and "unmap first" in r.stderr
    cb(env.pool, "device", "unmap", ctr_dev)
    cb(env.pool, "device", "unmap", layer_dev)


def test_maps_at_once_share_one_daemon_and_remap_right_after_the_last_unmap(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    for n in "abc":
        cb(env.pool, "device", "create", n, "16M")
    envv = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-m", "cowblock", "--pool", env.pool, "device",
                               "map", n], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=envv) for n in "abc"]
    outs = [p.communicate(timeout=120) for p in procs]
    pid = daemon_pid(env.pool)
    env.pids.add(pid)
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 3 and all(p.startswith("/dev/loop") for p in paths)
    rows = json.loads(cb(env.pool, "--json", "device", "mapped").stdout)
    assert sorted(r["name"] for r in rows) == ["a", "b", "c"]
    for n in "ab":
        cb(env.pool, "device", "unmap", n)
    for _ in range(3):  # the daemon exits after the last unmap: the next map still works
        cb(env.pool, "device", "unmap", "c")
        env.map("c")
    cb(env.pool, "device", "unmap", "c")


def test_fsync_on_the_loop_device_is_durable_across_sigkill(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "d", "64M")
    dev = env.map("d")
    pid = daemon_pid(env.pool)
    data = os.urandom(2 * MiB)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, len(data))  # page-aligned, as O_DIRECT wants
        buf.write(data)
        assert os.pwrite(fd, buf, 8 * MiB) == len(data)
        os.fsync(fd)  # loop: a flush request -> fsync of the FUSE file -> the pool's flush
    finally:
        os.close(fd)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    state.clean_stale(env.pool, log=lambda *_: None)
    with cowblock.Pool.open(env.pool, readonly=True) as pool:
        assert pool.device("d").read(8 * MiB, len(data)) == data
    assert cb(env.pool, "pool", "check").returncode == 0


def test_sigterm_stops_the_daemon_and_removes_what_it_started(env):
    cb(env.pool, "pool", "create", "--size", "1G")
    cb(env.pool, "device", "create", "d", "16M")
    dev = env.map("d")
    doc = state.load(env.pool)
    pid, mnt = doc["pid"], doc["mountpoint"]
    assert doc["mappings"]["d"]["loop"] == dev and state.is_mounted(mnt)
    assert os.path.exists(os.path.join(env.pool, "control.sock"))
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert loopmod.backing_file(dev) is None or not loopmod.backing_file(dev).startswith(mnt)
    assert not state.is_mounted(mnt) and not os.path.exists(mnt)
    assert state.load(env.pool) is None
    assert not os.path.exists(os.path.join(env.pool, "control.sock"))
    assert "stopped" in open(os.path.join(env.pool, "map.log")).read()


def test_detach_waits_out_a_transient_opener_but_refuses_a_mount(tmp_path):
    """udev probes a loop device right after an unmount: an exclusive opener that lets go
    soon must not make detach fail, while a mounted device is refused at once."""
    import threading

    backing = tmp_path / "b.img"
    backing.write_bytes(bytes(8 * MiB))
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
        threading.Timer(0.5, os.close, (fd,)).start()
        loopmod.detach(dev)                      # waits for the opener, then detaches
        assert loopmod.backing_file(dev) is None
        dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                             text=True, check=True).stdout.strip()
        sh("mkfs.ext4", "-q", dev)
        mnt = tmp_path / "m"
        mnt.mkdir()
        sh("mount", dev, str(mnt))
        try:
            t0 = time.monotonic()
            with pytest.raises(cowblock.BusyError, match="in use"):
                loopmod.detach(dev)
            assert time.monotonic() - t0 < loopmod.BUSY_WAIT  # a mount is not waited for
        finally:
            sh("umount", str(mnt))
    finally:
        if loopmod.backing_file(dev) is not None:
            subprocess.run(["losetup", "-d", dev], check=False)
