"""A real containerd on cowblock: images unpacked into thin layers, real
containers run on them.

The test starts ``cowblock snapshotter serve`` and a containerd whose
root, state and sockets are in a temporary directory, with cowblock as a
``proxy_plugins`` snapshotter; it builds a three-layer OCI image from
Debian's busybox-static with umoci (a hard link in one layer, a file
deleted by a whiteout in the next), imports it with ``ctr images import
--snapshotter cowblock`` and runs containers with ``ctr run``.  Volumes
are mounted with ``cowblock volume mount`` and bind-mounted into them.

Needs root, /dev/fuse, loop devices, containerd, runc, umoci and busybox
(``apt-get install containerd runc busybox-static umoci``); skipped with
the reason otherwise.  Every daemon started is stopped by its pid file;
containers, mounts and loop devices are cleaned up even on failure.
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from tools import tool_env
from containerd_support import (NS, Containerd, Server, cb, force_clean, leftovers, sh,
                                why_skip)

IMAGE = "cowblock.test/busybox:layers"


def _why_skip_e2e():
    why = why_skip()
    if why:
        return why
    if os.geteuid() != 0:
        return "containerd needs root"
    for tool in ("containerd", "ctr", "runc", "umoci"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (apt-get install containerd runc umoci)"
    if not os.path.exists("/bin/busybox"):
        return "/bin/busybox is missing (apt-get install busybox-static)"
    res = subprocess.run(["/bin/busybox"], capture_output=True, env=tool_env())
    if b"statically" not in res.stdout + res.stderr and shutil.which("ldd"):
        dyn = subprocess.run(["ldd", "/bin/busybox"], capture_output=True, text=True,
                             env=tool_env())
        if "not a dynamic executable" not in dyn.stdout + dyn.stderr:
            return "/bin/busybox is not static (apt-get install busybox-static)"
    return None


pytestmark = pytest.mark.skipif(_why_skip_e2e() is not None, reason=str(_why_skip_e2e()))

def build_image(work):
    """A three-layer OCI image tarball made with umoci from busybox-static."""
    oci = os.path.join(work, "oci")
    bundle = os.path.join(work, "bundle")
    sh("umoci", "init", "--layout", oci)
    sh("umoci", "new", "--image", f"{oci}:layers")
    sh("umoci", "unpack", "--image", f"{oci}:layers", bundle)
    rootfs = os.path.join(bundle, "rootfs")

    def repack(what):
        sh("umoci", "repack", "--refresh-bundle", "--image", f"{oci}:layers", bundle)
        sh("umoci", "config", "--image", f"{oci}:layers", "--history.comment", what)

    # layer 1: busybox and the applets the tests use; a file deleted later
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "usr/share", "opt"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "cat", "ls", "echo", "test", "stat", "rm", "sync"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc/layer1"), "w") as f:
        f.write("one\n")
    with open(os.path.join(rootfs, "etc/doomed"), "w") as f:
        f.write("deleted by a whiteout in layer 3\n")
    repack("layer 1: busybox")
    # layer 2: a file and a hard link to it
    with open(os.path.join(rootfs, "usr/share/layer2"), "w") as f:
        f.write("two\n")
    os.link(os.path.join(rootfs, "usr/share/layer2"), os.path.join(rootfs, "usr/share/layer2-link"))
    repack("layer 2: a hard link")
    # layer 3: a whiteout and a file
    os.unlink(os.path.join(rootfs, "etc/doomed"))
    with open(os.path.join(rootfs, "opt/layer3"), "w") as f:
        f.write("three\n")
    repack("layer 3: a whiteout")
    sh("umoci", "config", "--image", f"{oci}:layers", "--config.cmd", "/bin/sh",
       "--config.workingdir", "/")
    sh("umoci", "gc", "--layout", oci)
    with open(os.path.join(oci, "index.json")) as f:
        index = json.load(f)
    assert len(index["manifests"]) == 1
    tarball = os.path.join(work, "image.tar")
    sh("tar", "-C", oci, "-cf", tarball, ".")
    shutil.rmtree(bundle)
    return tarball


def mounts_under(path):
    path = os.path.join(os.path.abspath(path), "")
    from cowblock.mapping.state import _unescape
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape(line.split()[4])
            if target.startswith(path):
                found.append(target)
    return found


def pool_used(pool_dir):
    return json.loads(cb(pool_dir, "--json", "pool", "info").stdout)["used"]


def test_containerd_runs_containers_on_cowblock(tmp_path):
    work = tmp_path
    pool_dir = work / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "4G")
    snap = Server(pool_dir, work, size="512M")
    ctrd = None
    containers = []
    try:
        snap.start()
        tarball = build_image(str(work))
        used0 = pool_used(pool_dir)  # the base file system
        ctrd = Containerd(work, snap.address).start()

        ctrd.ctr("images", "import", "--snapshotter", "cowblock", "--base-name",
                 IMAGE.rsplit(":", 1)[0], tarball)
        assert IMAGE in ctrd.ctr("images", "ls", "-q").stdout
        snaps = ctrd.ctr("snapshots", "--snapshotter", "cowblock", "ls").stdout
        assert len([l for l in snaps.splitlines()[1:] if "Committed" in l]) == 3, snaps
        assert pool_used(pool_dir) > used0

        def run(cid, script, *extra):
            containers.append(cid)
            return ctrd.ctr("run", "--snapshotter", "cowblock", *extra, IMAGE, cid,
                            "/bin/sh", "-c", script).stdout

        out = run("c1", "cat /etc/layer1 /usr/share/layer2 /usr/share/layer2-link /opt/layer3;"
                        "test -e /etc/doomed && echo doomed-still-there;"
                        "stat -c 'links=%h' /usr/share/layer2;"
                        "echo written-by-c1 > /written; sync")
        assert out.split() == ["one", "two", "two", "three", "links=2"], out

        out = run("c2", "cat /written 2>/dev/null || echo no-write; cat /opt/layer3")
        assert out.split() == ["no-write", "three"], out

        # commit c1's writable snapshot and run a container on it
        ctrd.ctr("snapshots", "--snapshotter", "cowblock", "commit", "c1-committed", "c1")
        ctrd.ctr("snapshots", "--snapshotter", "cowblock", "prepare", "c3-rootfs", "c1-committed")
        info = json.loads(ctrd.ctr("snapshots", "--snapshotter", "cowblock", "info",
                                   "c1-committed").stdout)
        assert info["Kind"] == "Committed"
        usage = ctrd.ctr("snapshots", "--snapshotter", "cowblock", "usage").stdout
        assert "c1-committed" in usage
        m = ctrd.ctr("snapshots", "--snapshotter", "cowblock", "mounts", str(work / "r3"),
                     "c3-rootfs").stdout.split()
        assert m[:3] == ["mount", "-t", "ext4"] and m[3].startswith("/dev/loop"), m
        os.makedirs(work / "r3")
        sh("mount", "-t", "ext4", m[3], work / "r3")
        try:
            containers.append("c3")
            out = ctrd.ctr("run", "--rootfs", str(work / "r3"), "c3", "/bin/sh", "-c",
                           "cat /written /etc/layer1").stdout
        finally:
            sh("umount", work / "r3")
        assert out.split() == ["written-by-c1", "one"], out

        # a cowblock volume, bind-mounted into two containers in turn
        cb(pool_dir, "volume", "create", "data", "256M")
        os.makedirs(work / "vol")
        cb(pool_dir, "volume", "mount", "data", str(work / "vol"))
        try:
            bind = f"type=bind,src={work / 'vol'},dst=/data,options=rbind:rw"
            run("v1", "echo kept > /data/note; sync", "--mount", bind)
            out = run("v2", "cat /data/note", "--mount", bind)
            assert out.split() == ["kept"], out
        finally:
            cb(pool_dir, "volume", "umount", str(work / "vol"))
        assert "data" in cb(pool_dir, "volume", "ls").stdout

        # remove everything: containerd's collector removes the snapshots
        for cid in containers:
            ctrd.ctr("containers", "rm", cid, check=False)
        containers.clear()
        ctrd.ctr("snapshots", "--snapshotter", "cowblock", "rm", "c3-rootfs")
        ctrd.ctr("snapshots", "--snapshotter", "cowblock", "rm", "c1-committed")
        ctrd.ctr("images", "rm", "--sync", IMAGE)
        deadline = time.monotonic() + 60
        while ctrd.ctr("snapshots", "--snapshotter", "cowblock", "ls").stdout.count("\n") > 1:
            assert time.monotonic() < deadline, ctrd.ctr("snapshots", "--snapshotter",
                                                         "cowblock", "ls").stdout
            time.sleep(0.5)
        cb(pool_dir, "volume", "rm", "data")
        assert pool_used(pool_dir) == used0
        ctrd.stop()
        assert snap.stop() == 0, snap.logtext()
        assert leftovers(pool_dir) == []
        assert "no errors" in cb(pool_dir, "pool", "check").stdout
    finally:
        if ctrd is not None and ctrd.proc is not None:
            for cid in containers:
                ctrd.ctr("tasks", "kill", "-s", "KILL", cid, check=False)
                ctrd.ctr("tasks", "rm", "-f", cid, check=False)
                ctrd.ctr("containers", "rm", cid, check=False)
            ctrd.stop()
        for target in reversed(mounts_under(work)):
            subprocess.run(["umount", "-l", target], capture_output=True, env=tool_env())
        snap.stop()
        force_clean(pool_dir)


def build_big_image(work, mib):
    """Busybox and one layer of ``mib`` MiB of incompressible files."""
    oci = os.path.join(work, "oci-big")
    bundle = os.path.join(work, "bundle-big")
    sh("umoci", "init", "--layout", oci)
    sh("umoci", "new", "--image", f"{oci}:big")
    sh("umoci", "unpack", "--image", f"{oci}:big", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "cat", "ls", "stat", "wc"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{oci}:big", bundle)
    os.makedirs(os.path.join(rootfs, "big"))
    for n in range(mib // 8):
        with open(os.path.join(rootfs, "big", f"f{n:03d}"), "wb") as f:
            f.write(os.urandom(8 << 20))
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{oci}:big", bundle, timeout=600)
    sh("umoci", "gc", "--layout", oci)
    tarball = os.path.join(work, "big.tar")
    sh("tar", "-C", oci, "-cf", tarball, ".")
    shutil.rmtree(bundle)
    shutil.rmtree(oci)
    return tarball


def test_snapshotter_killed_during_unpack(tmp_path):
    """SIGKILL of the snapshotter while containerd unpacks a large layer:
    the import fails, the restarted server cleans what the dead one left,
    importing again completes, and nothing leaks."""
    work = tmp_path
    pool_dir = work / "pool"
    cb(pool_dir, "pool", "create", str(pool_dir), "--size", "4G")
    snap = Server(pool_dir, work, size="1G")
    ctrd = None
    image = "cowblock.test/big:big"
    importer = None
    try:
        snap.start()
        tarball = build_big_image(str(work), 160)
        used0 = pool_used(pool_dir)
        ctrd = Containerd(work, snap.address).start()
        importer = subprocess.Popen(
            ["ctr", "--address", ctrd.sock, "--namespace", NS, "images", "import",
             "--snapshotter", "cowblock", "--base-name", image.rsplit(":", 1)[0], tarball],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=tool_env())
        deadline = time.monotonic() + 120
        def extracting():  # layers whose extract snapshot was mapped so far
            return sum(1 for line in snap.logtext().splitlines()
                       if " mapped containerd-" in line and "extract" in line)

        while extracting() < 2:  # busybox done, the big layer started
            assert importer.poll() is None, importer.stdout.read()
            assert time.monotonic() < deadline, snap.logtext()
            time.sleep(0.02)
        time.sleep(0.3)  # the big layer is being written
        snap.kill()
        out = importer.communicate(timeout=300)[0].decode()
        assert importer.returncode != 0, out  # the unpack failed with the server gone
        importer = None
        snap.start()
        from cowblock.mapping import state
        assert leftovers(pool_dir) == [state.mountpoint_for(str(pool_dir))]
        ctrd.ctr("images", "import", "--snapshotter", "cowblock", "--base-name",
                 image.rsplit(":", 1)[0], tarball, timeout=600)
        out = ctrd.ctr("run", "--rm", "--snapshotter", "cowblock", image, "k1", "/bin/sh", "-c",
                       "cat /big/* | wc -c").stdout
        assert int(out.split()[0]) == 160 << 20
        ctrd.ctr("images", "rm", "--sync", image)
        deadline = time.monotonic() + 60
        while ctrd.ctr("snapshots", "--snapshotter", "cowblock", "ls").stdout.count("\n") > 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert pool_used(pool_dir) == used0
        ctrd.stop()
        assert snap.stop() == 0, snap.logtext()
        assert leftovers(pool_dir) == []
        assert "no errors" in cb(pool_dir, "pool", "check").stdout
    finally:
        if importer is not None:
            importer.kill()
            importer.wait()
        if ctrd is not None and ctrd.proc is not None:
            ctrd.ctr("tasks", "kill", "-s", "KILL", "k1", check=False)
            ctrd.ctr("tasks", "rm", "-f", "k1", check=False)
            ctrd.ctr("containers", "rm", "k1", check=False)
            ctrd.stop()
        for target in reversed(mounts_under(work)):
            subprocess.run(["umount", "-l", target], capture_output=True, env=tool_env())
        snap.stop()
        force_clean(pool_dir)
