"""``cowblock snapshotter serve``: the process that holds the pool.

It opens the pool for writing and hosts, in one process:

- the snapshots gRPC service on ``address`` (a Unix socket), for containerd;
- a :class:`~cowblock.mapping.daemon.MapDaemon` over the open pool: the
  FUSE file system and loop devices of mapped snapshots, and the pool's
  control socket, so ``cowblock device map``, ``cowblock volume mount``
  and every read-only command keep working while it serves;
- after a crash, the clean-up of what the dead server left: stale loop
  devices and FUSE mount (the map daemon's records), half-made snapshot
  devices (the snapshotter's pending list).

On SIGTERM or SIGINT it stops taking requests, unmaps everything it
mapped, flushes and closes the pool, and removes its sockets and pid file.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from concurrent import futures

from .. import errors
from . import NAMESPACE

log = logging.getLogger("cowblock.containerd")

WORKERS = 8


def _claim_socket(address: str) -> None:
    """Remove a socket file nobody answers on; refuse a live one."""
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.ExistsError(f"{address} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address)
    except OSError:
        os.unlink(address)  # stale: its server is gone
        return
    finally:
        probe.close()
    raise errors.BusyError(f"another server listens on {address}")


class SnapshotterServer:
    """The snapshots service, the mappings and the control socket of one pool."""

    def __init__(self, pool_dir: str, address: str, *, fs_type: str = "ext4",
                 size: int = 10 * 2**30, pid_file: str | None = None):
        self.pool_dir = os.path.abspath(pool_dir)
        self.address = os.path.abspath(address)
        self.fs_type = fs_type
        self.size = size
        self.pid_file = os.path.abspath(pid_file) if pid_file else None
        self.pool = self.mapper = self.control = self.grpc_server = None
        self._stopping = threading.Event()

    def start(self) -> "SnapshotterServer":
        import grpc
        from .. import Pool
        from ..daemon import ControlServer
        from ..mapping import mapping_unavailable
        from ..mapping.daemon import MapDaemon
        from ..snapshotter import Snapshotter
        from ._pb import snapshots_pb2_grpc as pb_grpc
        from .mounts import BlockMounts
        from .service import SnapshotsServicer

        _claim_socket(self.address)
        self.pool = Pool.open(self.pool_dir)  # BusyError: another process holds it
        try:
            self.snapshotter = Snapshotter(self.pool, NAMESPACE)
            left = self.snapshotter.cleanup()
            if left:
                log.info("removed devices a previous server left half-made: %s", ", ".join(left))
            why = mapping_unavailable()
            if why is None:
                # also cleans stale loop devices and the FUSE mount of a crashed predecessor
                self.mapper = MapDaemon(self.pool_dir, pool=self.pool, kind="snapshotter",
                                        exit_when_idle=False)
                self.mapper.start()
            else:
                log.warning("snapshots cannot be mounted: %s", why)
                self.control = ControlServer(self.pool, kind="snapshotter").start()
            self.mounts = BlockMounts(self.snapshotter, self.mapper,
                                      fs_type=self.fs_type, size=self.size)
            if self.mapper is not None:
                self.mounts.base()  # the first Prepare need not wait for mkfs
            self.grpc_server = grpc.server(futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix="cowblock-grpc"))
            pb_grpc.add_SnapshotsServicer_to_server(
                SnapshotsServicer(self.snapshotter, self.mounts), self.grpc_server)
            old = os.umask(0o177)
            try:
                if not self.grpc_server.add_insecure_port(f"unix:{self.address}"):
                    raise errors.CowblockError(f"cannot listen on {self.address}")
            finally:
                os.umask(old)
            self.grpc_server.start()
            if self.pid_file:
                tmp = f"{self.pid_file}.tmp"
                with open(tmp, "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.replace(tmp, self.pid_file)
        except BaseException:
            self.shutdown()
            raise
        log.info("serving containerd snapshots of pool %s on %s (%s file systems)",
                 self.pool_dir, self.address, self.fs_type)
        return self

    def stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stopping.set()

    def wait(self) -> None:
        while not self._stopping.wait(1.0):
            pass

    def shutdown(self) -> None:
        """Undo everything :meth:`start` did, in reverse order."""
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=5).wait(10)
            self.grpc_server = None
        try:
            os.unlink(self.address)
        except FileNotFoundError:
            pass
        if self.mapper is not None:
            self.mapper.shutdown()  # unmaps every device, stops the control socket
            self.mapper = None
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.pool is not None:
            try:
                self.pool.close()
            finally:
                self.pool = None
        if self.pid_file:
            try:
                os.unlink(self.pid_file)
            except FileNotFoundError:
                pass


def serve(pool_dir: str, address: str, **kw) -> int:
    """Run the server until SIGTERM or SIGINT."""
    server = SnapshotterServer(pool_dir, address, **kw)
    signal.signal(signal.SIGTERM, lambda *a: server.stop())
    signal.signal(signal.SIGINT, lambda *a: server.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.start()
    try:
        server.wait()
    finally:
        server.shutdown()
        log.info("stopped")
    return 0
