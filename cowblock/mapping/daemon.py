"""The map daemon: one process per pool serving every mapped device.

Started detached (``setsid``) by ``cowblock device map`` when no daemon
holds the pool (see :mod:`cowblock.mapping.client`)::

    python -m cowblock.mapping.daemon POOL_DIR [--ready-fd N]

It opens the pool for writing, cleans what a crashed predecessor left
(:func:`~cowblock.mapping.state.clean_stale`), mounts its FUSE file system,
and answers on the pool's control socket: ``map``, ``unmap`` and ``mapped``
requests of its own, and every other ``cowblock`` command through
:class:`~cowblock.daemon.ControlServer`.  It exits when the last device is
unmapped (or on SIGTERM/SIGINT), after flushing and closing the pool and
removing everything it started.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import sys
import threading
import time

from .. import errors
from ..daemon import ControlServer
from ..daemon.protocol import ProtocolError, field
from . import loop, state
from .fusefile import FuseFiles

log = logging.getLogger("cowblock.map")

# Without a first map request the daemon does not linger.
IDLE_EXIT = 30.0
RELEASE_WAIT = 10.0


def file_name(device: str) -> str:
    """The FUSE file name of a device: its name where that is a safe file
    name, else a safe spelling plus a hash (names may hold '/')."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}", device):
        return device
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", device)[:180].lstrip(".") or "dev"
    return f"{safe}-{hashlib.sha1(device.encode()).hexdigest()[:10]}"


class MapDaemon:
    """Serves mapped devices of one pool and answers its control socket.

    Run alone (``python -m cowblock.mapping.daemon``) it opens the pool
    itself and exits once idle.  A server that holds the pool already (the
    containerd snapshotter) hosts one in its own process: it passes its
    open ``pool`` (borrowed: flushed, never closed here), its ``kind`` for
    the control socket, ``handlers`` of its own, and ``exit_when_idle=False``
    so that unmapping the last device does not stop it.
    """

    def __init__(self, pool_dir: str, *, pool=None, kind: str = "map",
                 handlers: dict | None = None, exit_when_idle: bool = True):
        self.pool_dir = os.path.abspath(pool_dir)
        self.pool = pool
        self._borrowed = pool is not None
        self.kind = kind
        self.extra_handlers = dict(handlers or {})
        self.exit_when_idle = exit_when_idle
        self.fuse = None
        self.server = None
        self.mountpoint = None
        self.mappings: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ever_mapped = False

    # ---- records ----------------------------------------------------------

    def _record(self) -> None:
        state.save(self.pool_dir, {
            "pid": os.getpid(), "mountpoint": self.mountpoint,
            "socket": self.server.path if self.server else None,
            "started": self.started, "mappings": self.mappings})

    # ---- lifecycle --------------------------------------------------------

    def start(self) -> None:
        from .. import Pool
        self.started = time.time()
        if self.pool is None:
            self.pool = Pool.open(self.pool_dir)  # BusyError: someone else holds it
        try:
            state.clean_stale(self.pool_dir, log=log.info)
            self.mountpoint = state.mountpoint_for(self.pool_dir)
            os.makedirs(self.mountpoint, mode=0o700, exist_ok=True)
            self._record()  # the mountpoint is known before anything is mounted
            self.fuse = FuseFiles(self.mountpoint).start()
            self.server = ControlServer(
                self.pool, kind=self.kind, refuse=self.refuse,
                handlers={"map": self.map, "unmap": self.unmap, "mapped": self.mapped,
                          **self.extra_handlers})
            self.server.start()
            self._record()
        except BaseException:
            self.shutdown()
            raise

    def wait(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5):
            if not self._ever_mapped and time.monotonic() - t0 > IDLE_EXIT:
                log.info("no device was mapped within %.0f s: exiting", IDLE_EXIT)
                break

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """Undo everything, in reverse order; what cannot be undone is logged."""
        if self.server is not None:
            self.server.stop()
        with self._lock:
            for name in list(self.mappings):
                try:
                    self._unmap_one(name, force=True)
                except Exception as exc:
                    log.error("unmap %s: %s", name, exc)
        if self.fuse is not None:
            try:
                self.fuse.stop()
            except Exception as exc:
                log.error("stop the FUSE file system: %s", exc)
            self.fuse = None
        if self.mountpoint and state.unmount(self.mountpoint, lazy=True):
            try:
                os.rmdir(self.mountpoint)
                os.rmdir(os.path.dirname(self.mountpoint))  # only when empty
            except OSError:
                pass
        if self.pool is not None:
            try:
                if self._borrowed:
                    self.pool.flush()
                else:
                    self.pool.close()
            finally:
                self.pool = None
                state.remove(self.pool_dir)

    # ---- requests ---------------------------------------------------------

    def _find(self, target: str) -> str | None:
        if target in self.mappings:
            return target
        real = os.path.realpath(target) if target.startswith("/") else None
        for name, m in self.mappings.items():
            if real is not None and m["loop"] and os.path.realpath(m["loop"]) == real:
                return name
        return None

    def map(self, req: dict) -> dict:
        try:
            return self._map(req)
        except BaseException:
            with self._lock:
                if not self.mappings and self.exit_when_idle:
                    self.stop()  # a daemon that maps nothing does not linger
            raise

    def _map(self, req: dict) -> dict:
        name = field(req, "name", str)
        readonly = field(req, "readonly", bool, required=False, default=False)
        if not name or len(name) > 1024:
            raise ProtocolError("'name' must be a device name")
        with self._lock:
            if self._stop.is_set():
                raise errors.BusyError("the map daemon is stopping: try again")
            if name in self.mappings:
                m = self.mappings[name]
                if readonly and not m["readonly"]:
                    raise errors.BusyError(
                        f"device {name!r} is mapped read-write already at {m['loop']}")
                return {"path": m["loop"], "existing": True, **m}
            dev = self.pool.device(name)
            ro = bool(readonly or dev.readonly)
            fname = file_name(name)
            path = self.fuse.add(fname, dev, readonly=ro)
            self.mappings[name] = m = {"name": name, "file": path, "loop": None,
                                       "readonly": ro, "mapped": time.time()}
            try:
                m["loop"] = loop.attach(path, readonly=ro)
            except BaseException:
                del self.mappings[name]
                self.fuse.remove(fname)
                raise
            self._ever_mapped = True
            self._record()
            loop.settle(m["loop"])
            log.info("mapped %s at %s%s", name, m["loop"], " (read-only)" if ro else "")
            return {"path": m["loop"], "existing": False, **m}

    def _unmap_one(self, name: str, force: bool = False) -> None:
        m = self.mappings[name]
        if m["loop"] and loop.backing_file(m["loop"]) == m["file"]:
            if force:
                loop.force_detach(m["loop"])
            else:
                loop.detach(m["loop"])  # BusyError while mounted
        # The kernel sends the file's release after the detach returns.
        fname = os.path.basename(m["file"])
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            try:
                self.fuse.remove(fname)
                break
            except errors.BusyError:
                if time.monotonic() > deadline:
                    if force:
                        break
                    raise
                time.sleep(0.02)
        del self.mappings[name]
        self.pool.flush()
        self._record()
        log.info("unmapped %s (%s)", name, m["loop"])

    def unmap(self, req: dict) -> dict:
        target = field(req, "target", str)
        with self._lock:
            name = self._find(target)
            if name is None:
                raise errors.NotFoundError(f"{target!r} is not mapped")
            m = dict(self.mappings[name])
            self._unmap_one(name)
            exiting = not self.mappings and self.exit_when_idle
            if exiting:
                self.stop()
        return {"name": name, "path": m["loop"], "exiting": exiting}

    def mapped(self, req: dict) -> dict:
        with self._lock:
            rows = [dict(m) for m in self.mappings.values()]
        return {"mappings": rows, "pid": os.getpid(), "mountpoint": self.mountpoint}

    def refuse(self, args) -> str | None:
        """Veto command lines that would pull a device away from its loop."""
        noun, verb = args.noun, getattr(args, "verb", None)
        names: list[str] = []
        if noun == "device" and verb in ("rm", "mkfs", "import"):
            names = list(getattr(args, "names", None) or [getattr(args, "name", "")])
        elif noun in ("container", "image", "volume") and verb in ("rm", "reset"):
            from ..model import Store
            store = Store(self.pool)
            try:
                for n in getattr(args, "names", None) or [args.name]:
                    try:
                        if noun == "container":
                            names.append(store.container(n).device.name)
                        elif noun == "volume":
                            names.append(store.volume(n).device.name)
                        else:
                            names += [layer.device.name for layer in store.image(n).layers]
                    except errors.NotFoundError:
                        pass
            finally:
                store.close()
        with self._lock:
            busy = [n for n in names if n in self.mappings]
        if busy:
            where = ", ".join(f"{n} at {self.mappings[n]['loop']}" for n in busy)
            return f"mapped: {where}; unmap first (cowblock device unmap)"
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cowblock.mapping.daemon")
    p.add_argument("pool")
    p.add_argument("--ready-fd", type=int, default=None,
                   help="write 'ok' (or the error) to this fd once serving, then close it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s cowblock map[{os.getpid()}] %(message)s")
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None

    def tell(text: str) -> None:
        nonlocal ready
        if ready is not None:
            try:
                ready.write(text + "\n")
                ready.close()
            except OSError:
                pass
            ready = None

    daemon = MapDaemon(args.pool)
    signal.signal(signal.SIGTERM, lambda *a: daemon.stop())
    signal.signal(signal.SIGINT, lambda *a: daemon.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        daemon.start()
    except Exception as exc:
        log.error("cannot start: %s", exc)
        tell(f"{type(exc).__name__}: {exc}")
        return 1
    log.info("serving pool %s; FUSE at %s; control socket %s",
             daemon.pool_dir, daemon.mountpoint, daemon.server.path)
    tell("ok")
    try:
        daemon.wait()
    finally:
        daemon.shutdown()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
