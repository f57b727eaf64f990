"""A throwaway single-node Ceph cluster for the RADOS tests.

One ceph-mon and one ceph-osd on 127.0.0.1, everything under one temporary
directory: no authentication, no manager, a memstore OSD and pools of size
1.  The daemons write pid files there and are stopped by those pids (never
by name), and the directory is removed.  Use it as a context manager::

    with CephCluster() as c:
        c.create_pool("cbtest")
        url = f"rados://cbtest/mypool?conf={c.conf}"

or run it as a script (``python tests/ceph_cluster.py DIR``) to start one
for a shell session; it prints the conf path and stops on Enter.

Pitfalls this works around:
- with no authentication over the old messenger protocol (v1) a client can
  send its first monitor command before it has the monitor map, with a
  zero fsid, which the monitor refuses ("wrong fsid"; an OSD's start then
  fails): the cluster speaks msgr2 only;
- a memstore OSD stops accepting writes for good once it holds 95% of
  ``memstore_device_bytes``: the store is sized far above what tests write
  (memstore takes memory only for what is written);
- a monitor batches map changes for ``paxos propose interval`` (1 s): every blocklist
  (a writer taking over from a dead one, ``pool unlock --force``) waited that long, so the
  cluster proposes after 0.05 s;
- librados in a process that then forks gives children that hang (they share
  the messenger's nonce): this module never opens a librados client itself,
  it drives the cluster through the ``ceph`` and ``rados`` commands.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

TOOLS = ("ceph-mon", "ceph-osd", "ceph", "rados", "monmaptool")
START_TIMEOUT = 60.0  # seconds; a start takes about 5 s on this kind of machine
MEMSTORE_BYTES = 4 << 30


def missing():
    """Why a cluster cannot be started here, or None if it can."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return ("Ceph is not installed (missing %s; apt-get install ceph-mon ceph-osd "
                "ceph-common librados-dev)" % ", ".join(absent))
    return None


def _tool_env(conf=None):
    """The environment for Ceph's own programs: without a sanitizer runtime
    preloaded for the tests (.ci/asan), which Ceph's binaries abort under."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}
    if conf:
        env["CEPH_CONF"] = conf
    return env


# Run beside the cluster: if the process that started it dies without
# stopping it (a crash, a SIGKILL, an abort under a sanitizer), stop its
# daemons by their pid files and remove its directory.
_REAPER = r"""
import os, shutil, signal, sys, time
parent, run, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
while alive(parent) and os.getppid() == parent:
    time.sleep(0.5)
for name in ("osd.0", "mon.a"):
    try:
        with open(os.path.join(run, name + ".pid")) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
if base:
    time.sleep(0.5)
    shutil.rmtree(base, ignore_errors=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CephCluster:
    """One monitor and one memstore OSD on loopback, under a temp dir."""

    def __init__(self, base=None, memstore_bytes=MEMSTORE_BYTES, bluestore_bytes=None):
        """``bluestore_bytes``: a bluestore OSD on a sparse file of that size
        instead of memstore (for benchmarks that count the bytes the OSD
        allocates: ``allocated()``); a bluestore OSD without a manager aborts
        when its device fills, so size it well above what is written."""
        self.bluestore_bytes = bluestore_bytes
        self._own_dir = base is None
        self.dir = base or tempfile.mkdtemp(prefix="cowblock-ceph-")
        self.memstore_bytes = memstore_bytes
        self.conf = os.path.join(self.dir, "ceph.conf")
        self.port = None
        self.started = False
        self._reaper = None

    # -- running commands -------------------------------------------------

    def cmd(self, *args, timeout=30, check=True, input=None):
        """Run a Ceph tool against this cluster; its stdout."""
        env = _tool_env(self.conf)
        argv = [args[0], "-c", self.conf, *args[1:]]
        r = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, input=input)
        if check and r.returncode:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                       r.stderr.decode(errors="replace")))
        return r.stdout.decode(errors="replace")

    def _daemon(self, *argv):
        r = subprocess.run(argv, capture_output=True, timeout=60, env=_tool_env())
        if r.returncode:
            raise RuntimeError("%s failed (%d): %s\n%s" % (
                " ".join(argv), r.returncode, r.stderr.decode(errors="replace"),
                self.log_tail()))

    def log_tail(self, lines=30):
        out = []
        logs = os.path.join(self.dir, "log")
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            with open(os.path.join(logs, name), errors="replace") as f:
                out.append("== %s\n%s" % (name, "".join(f.readlines()[-lines:])))
        return "\n".join(out)

    # -- lifecycle ------------------------------------------------------------

    def _write_conf(self):
        d = self.dir
        fsid = str(uuid.uuid4())
        self.port = _free_port()
        for sub in ("run", "log", "mon", "osd0"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.port}
mon initial members = a
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
run dir = {d}/run
pid file = {d}/run/$name.pid
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.05
{self._store_conf()}
osd data = {d}/osd$id
mon data = {d}/mon
osd max object name len = 256
osd max object namespace len = 64
osd op num shards = 1
osd op num threads per shard = 2
osd heartbeat grace = 20
osd fast shutdown = false
""")

    def _store_conf(self):
        if self.bluestore_bytes:
            return (f"osd objectstore = bluestore\n"
                    f"bluestore block path = {self.dir}/osd0.block\n"
                    f"bluestore block create = true\n"
                    f"bluestore block size = {self.bluestore_bytes}\n"
                    f"bluestore fsck on mkfs = false\n"
                    f"bluestore fsck on mount = false\n"
                    f"osd memory target = 1073741824")
        return (f"osd objectstore = memstore\n"
                f"memstore device bytes = {self.memstore_bytes}")

    def allocated(self):
        """Bytes the bluestore OSD has allocated (its admin socket's
        bluestore_allocated counter)."""
        import json
        out = self.cmd("ceph", "--admin-daemon", os.path.join(self.dir, "run", "osd.0.asok"),
                       "perf", "dump")
        return json.loads(out)["bluestore"]["bluestore_allocated"]

    def bytes_received(self):
        """Bytes of client ops the OSD has taken in (writes' payloads and the like: its
        admin socket's op_in_bytes counter), for tests of what a client writes."""
        import json
        out = self.cmd("ceph", "--admin-daemon", os.path.join(self.dir, "run", "osd.0.asok"),
                       "perf", "dump")
        return json.loads(out)["osd"]["op_in_bytes"]

    def start(self):
        why = missing()
        if why:
            raise RuntimeError(why)
        self._write_conf()
        d = self.dir
        monmap = os.path.join(d, "monmap")
        self._daemon("monmaptool", "--create", "--clobber", "--fsid",
                     self._fsid(), "--addv", "a", "[v2:127.0.0.1:%d]" % self.port, monmap)
        self._daemon("ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap)
        self.started = True  # from here on, stop() has something to stop
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), os.path.join(d, "run"),
             d if self._own_dir else ""], env=_tool_env(), stdin=subprocess.DEVNULL,
            start_new_session=True)
        self._daemon("ceph-mon", "-c", self.conf, "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.cmd("ceph", "osd", "new", osd_uuid, timeout=START_TIMEOUT).strip()
        if osd_id != "0":
            raise RuntimeError("expected OSD id 0, the monitor gave %r" % osd_id)
        self._daemon("ceph-osd", "-c", self.conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._daemon("ceph-osd", "-c", self.conf, "-i", "0")
        return self

    def _fsid(self):
        with open(self.conf) as f:
            for line in f:
                if line.startswith("fsid"):
                    return line.split("=", 1)[1].strip()
        raise RuntimeError("no fsid in " + self.conf)

    def create_pool(self, name, timeout=START_TIMEOUT):
        """Make a replicated pool of size 1 and wait until it takes a write."""
        self.cmd("ceph", "osd", "pool", "create", name, "8", "8", timeout=timeout)
        self.cmd("ceph", "osd", "pool", "set", name, "size", "1", "--yes-i-really-mean-it",
                 timeout=timeout)
        self.cmd("ceph", "osd", "pool", "application", "enable", name, "cowblock",
                 timeout=timeout)
        self.wait_writable(name, timeout)

    def wait_writable(self, name, timeout=START_TIMEOUT):
        """Wait until the RADOS pool takes a write (a rados put of a probe)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.cmd("rados", "-p", name, "put", "cb-probe", "-", input=b"x",
                         timeout=max(1, min(10, deadline - time.monotonic())))
                self.cmd("rados", "-p", name, "rm", "cb-probe", timeout=10)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise RuntimeError("pool %s takes no write after %.0f s\n%s" % (
                        name, timeout, self.log_tail()))
                time.sleep(0.2)

    def stop_osd(self):
        """Stop the OSD cleanly (SIGTERM, and `osd fast shutdown = false` in
        the conf): memstore writes its objects out, so that start_osd()
        brings them back."""
        self.kill("osd.0", signal.SIGTERM, wait=60)

    def start_osd(self, pool=None):
        self._daemon("ceph-osd", "-c", self.conf, "-i", "0")
        if pool:
            self.wait_writable(pool)

    def delete_pool(self, name):
        self.cmd("ceph", "osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")

    def pid(self, name):
        """The pid a daemon wrote ("mon.a", "osd.0"), or None."""
        try:
            with open(os.path.join(self.dir, "run", name + ".pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def kill(self, name, sig=signal.SIGTERM, wait=20.0):
        """Stop one daemon by the pid it wrote; wait until it is gone."""
        pid = self.pid(name)
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self):
        if self.started:
            # SIGKILL: a memstore OSD stopped by SIGTERM first writes every
            # object it holds to its directory, which a throwaway cluster
            # does not need
            self.kill("osd.0", signal.SIGKILL)
            self.kill("mon.a")
            self.started = False
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # pragma: no cover - for a shell session
    import sys

    base = sys.argv[1] if len(sys.argv) > 1 else None
    if base:
        os.makedirs(base, exist_ok=True)
    with CephCluster(base) as c:
        c.create_pool("cbtest")
        print("conf:", c.conf)
        print("url:  rados://cbtest/NAME?conf=%s" % c.conf)
        input("cluster running; Enter stops it\n")
