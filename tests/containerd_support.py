"""What the containerd tests share: a snapshotter server in a subprocess,
a gRPC client of it, and mounts that are undone whatever happens."""

import os
import shutil
import signal
import subprocess
import sys
import time

import cowblock
from tools import tool_env
from cowblock.mapping import loop as loopmod, mapping_unavailable, state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cowblock.__file__)))
MiB = 2**20


def grpc_missing():
    try:
        import grpc  # noqa: F401
        from cowblock.containerd._pb import snapshots_pb2  # noqa: F401
    except ImportError as exc:
        return f"grpcio/protobuf are not installed (pip install 'cowblock[containerd]'): {exc}"
    return None


def why_skip():
    why = grpc_missing() or mapping_unavailable()
    if why:
        return why
    for tool in ("mkfs.ext4", "mount", "umount", "blkid"):
        if shutil.which(tool) is None and not any(
                os.path.exists(f"{d}/{tool}") for d in ("/usr/sbin", "/sbin")):
            return f"{tool} is not installed"
    return None


def env():
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("COWBLOCK_POOL", None)
    return e


def cb(pool_dir, *argv, check=True, timeout=120):
    res = subprocess.run([sys.executable, "-m", "cowblock", "--pool", str(pool_dir), *argv],
                         capture_output=True, text=True, env=env(), timeout=timeout)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    if check:
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return res


def sh(*cmd, check=True, timeout=120):
    """A non-Python tool (mount, ctr, umoci ...): without the sanitizer preload."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                         env=tool_env())
    if check:
        assert res.returncode == 0, (cmd, res.stdout, res.stderr)
    return res


class Server:
    """``cowblock snapshotter serve`` on ``pool_dir``, stopped by its pid file."""

    def __init__(self, pool_dir, workdir, size="256M", fs="ext4"):
        self.pool_dir = str(pool_dir)
        self.address = os.path.join(str(workdir), "snapshotter.sock")
        self.pid_file = os.path.join(str(workdir), "snapshotter.pid")
        self.log = os.path.join(str(workdir), "snapshotter.log")
        self.size, self.fs = size, fs
        self.proc = None
        self._channel = None

    def start(self, timeout=60):
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cowblock", "--pool", self.pool_dir, "snapshotter",
                 "serve", "--address", self.address, "--size", self.size, "--fs", self.fs,
                 "--pid-file", self.pid_file],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env(),
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.pid_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the snapshotter did not start:\n{self.logtext()}")
            time.sleep(0.05)
        return self

    def logtext(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    @property
    def pid(self):
        with open(self.pid_file) as f:
            return int(f.read())

    def stub(self):
        import grpc
        from cowblock.containerd._pb import snapshots_pb2_grpc
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.address}")
        return snapshots_pb2_grpc.SnapshotsStub(self._channel)

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Stop the server by the pid it wrote; returns its exit code."""
        self._close_channel()
        if self.proc is None:
            return None
        try:
            pid = self.pid
        except (OSError, ValueError):
            pid = self.proc.pid  # it removed its pid file, or never wrote it
        if self.proc.poll() is None:
            os.kill(pid, sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self):
        """SIGKILL: what a crash leaves (pid file, loop devices, FUSE mount)."""
        code = self.stop(signal.SIGKILL)
        if os.path.exists(self.pid_file):
            os.unlink(self.pid_file)
        return code


def leftovers(pool_dir):
    """Loop devices still over the pool's FUSE mount, and that mount."""
    mnt = state.mountpoint_for(str(pool_dir))
    return loopmod.loops_under(mnt) + ([mnt] if state.is_mounted(mnt) else [])


def force_clean(pool_dir):
    """After a failure: whatever a dead server of the pool left."""
    state.clean_stale(str(pool_dir), log=lambda *_: None)


class Mounts:
    """Mount containerd's mounts on directories; :meth:`unmount_all` undoes
    every one still mounted."""

    def __init__(self):
        self.mounted = []

    def mount(self, mounts, target):
        os.makedirs(target, exist_ok=True)
        assert len(mounts) == 1, mounts
        m = mounts[0]
        opts = ["-o", ",".join(m.options)] if m.options else []
        sh("mount", "-t", m.type, *opts, m.source, target)
        self.mounted.append(str(target))
        return str(target)

    def unmount(self, target):
        sh("umount", target)
        self.mounted.remove(str(target))

    def unmount_all(self):
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", target], capture_output=True, env=tool_env())
        self.mounted.clear()


NS = "cbtest"

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[proxy_plugins.cowblock]
  type = "snapshot"
  address = "{snap}"
"""


class Containerd:
    """containerd with a temporary config, stopped by the pid file the
    test writes for it."""

    def __init__(self, work, snapshotter_address, extra_config=""):
        self.work = str(work)
        self.sock = os.path.join(self.work, "containerd.sock")
        self.config = os.path.join(self.work, "containerd.toml")
        self.pid_file = os.path.join(self.work, "containerd.pid")
        self.log = os.path.join(self.work, "containerd.log")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(root=os.path.join(self.work, "root"),
                                  state=os.path.join(self.work, "state"), sock=self.sock,
                                  snap=snapshotter_address) + extra_config)
        self.proc = None

    def start(self, timeout=60):
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(["containerd", "--config", self.config],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True, env=tool_env())
        with open(self.pid_file, "w") as f:
            f.write(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start:\n{self.logtext()}")
            time.sleep(0.2)
        return self

    def logtext(self):
        with open(self.log) as f:
            return f.read()[-6000:]

    def ctr(self, *argv, check=True, timeout=300):
        return sh("ctr", "--address", self.sock, "--namespace", NS, *argv, check=check,
                  timeout=timeout)

    def stop(self, timeout=60):
        if self.proc is None:
            return
        with open(self.pid_file) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout)
        self.proc = None
        os.unlink(self.pid_file)
