"""``cowblock device map``/``unmap``/``mapped``: the side that asks the daemon.

The daemon (:mod:`cowblock.mapping.daemon`) is found on the pool's control
socket; when none answers, :func:`map_device` starts one, detached, and
waits until it serves.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from .. import errors
from ..daemon import client
from ..daemon.protocol import ProtocolError
from . import state
from .fusefile import fuse_unavailable
from .loop import loop_unavailable

START_TIMEOUT = 30.0
LOG_KEEP = 1 << 20


def _ask(pool_dir: str, req: dict) -> dict:
    try:
        return client.request(pool_dir, req, timeout=120)
    except ProtocolError as exc:
        if "has no request" not in str(exc):
            raise
        info = client.server_info(pool_dir) or {}
        raise errors.BusyError(
            f"the pool is held by a {info.get('kind', 'cowblock')} server "
            f"(pid {info.get('pid', '?')}), which does not map devices") from None


def mapping_unavailable() -> str | None:
    """Why devices cannot be mapped on this machine, or None."""
    return fuse_unavailable() or loop_unavailable()


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_daemon(pool_dir: str) -> None:
    """Start the pool's map daemon (setsid, stdio to ``map.log``) and wait
    until it serves; its start-up error becomes the exception raised here."""
    r, w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_package_root()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log_path = os.path.join(pool_dir, state.LOG_NAME)
    try:
        if os.path.getsize(log_path) > LOG_KEEP:
            os.replace(log_path, log_path + ".1")  # one older log is kept
    except OSError:
        pass
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cowblock.mapping.daemon", pool_dir, "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(w,),
            start_new_session=True, cwd="/", env=env)
    os.close(w)
    try:
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise errors.CowblockError(
                    f"the map daemon (pid {proc.pid}) did not start within {START_TIMEOUT:.0f} s; "
                    f"see {os.path.join(pool_dir, state.LOG_NAME)}")
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    text = buf.decode(errors="replace").strip()
    if text == "ok":
        return
    proc.wait(10)
    kind, _, message = text.partition(": ")
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.CowblockError):
        raise cls(f"the map daemon could not start: {message}")
    raise errors.CowblockError(f"the map daemon could not start: {text or 'it exited'}"
                               f" (see {os.path.join(pool_dir, state.LOG_NAME)})")


def map_device(pool_dir: str, name: str, readonly: bool = False) -> dict:
    """Map device ``name``; the reply holds ``path`` (``/dev/loopN``)."""
    pool_dir = os.path.abspath(pool_dir)
    req = {"op": "map", "name": name, "readonly": bool(readonly)}
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return _ask(pool_dir, req)
        except client.NoServer:
            pass
        except errors.BusyError as exc:
            if "stopping" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        why = mapping_unavailable()
        if why:
            raise errors.CowblockError(f"cannot map {name!r}: {why}")
        try:
            start_daemon(pool_dir)
        except errors.BusyError as exc:
            # Another process holds the pool: a daemon starting at the same
            # time answers soon; a program without a control socket never does.
            if not _wait_for_server(pool_dir, 2.0) and not _wait_daemon_exit(pool_dir, 15.0):
                raise errors.BusyError(
                    f"cannot map {name!r}: the pool is open in another process, which "
                    f"does not answer on its control socket") from exc


def _wait_daemon_exit(pool_dir: str, seconds: float, pid: int | None = None) -> bool:
    """Wait for a map daemon on its way out (it still holds the pool); True
    once it is gone, False when there is none or it stays.  ``pid`` is the
    daemon's, when known; else the recorded one."""
    if pid is None:
        pid = (state.load(pool_dir) or {}).get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if _zombie(pid):  # exited, not yet reaped by the process that started it
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _wait_for_server(pool_dir: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.server_info(pool_dir) is not None:
            return True
        time.sleep(0.1)
    return False


def unmap_device(pool_dir: str, target: str) -> dict:
    """Unmap a device by name or by its ``/dev/loopN`` path."""
    pool_dir = os.path.abspath(pool_dir)
    pid = (state.load(pool_dir) or {}).get("pid")   # read first: the daemon removes it on exit
    try:
        reply = _ask(pool_dir, {"op": "unmap", "target": target})
    except client.NoServer:
        raise errors.NotFoundError(f"{target!r} is not mapped (no map daemon holds the pool)")
    # The last unmap stops the daemon: return once it has let go of the pool,
    # so that the caller can open the pool straight away.
    if reply.get("exiting") and not _wait_daemon_exit(pool_dir, START_TIMEOUT, pid):
        raise errors.CowblockError(
            f"unmapped {target!r}, but the map daemon (pid {pid}) did not exit within "
            f"{START_TIMEOUT:.0f} s; see {os.path.join(pool_dir, state.LOG_NAME)}")
    return reply


def mapped_devices(pool_dir: str) -> list[dict]:
    """The pool's mappings (empty when no map daemon runs)."""
    try:
        return _ask(os.path.abspath(pool_dir), {"op": "mapped"})["mappings"]
    except client.NoServer:
        return []
