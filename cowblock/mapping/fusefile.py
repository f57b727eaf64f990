"""Devices as files of a FUSE mount (the C side is csrc/fuse/fusefile.c).

:class:`FuseFiles` mounts one flat directory and serves each added
:class:`~cowblock.Device` as a file of the device's size.  Requests are
served in C on libfuse's worker threads, straight into the core; Python
only adds and removes files.
"""

from __future__ import annotations

import errno
import os
import threading

from .. import errors
from .._lowlevel import function_address, handle_address

try:
    from .._fusefile import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None


def fuse_unavailable() -> str | None:
    """Why FUSE files cannot be served here, or None when they can."""
    if lib is None:
        return "cowblock's FUSE module is not built (reinstall the package)"
    if not lib.cbf_available():
        return ("cowblock was built without libfuse3: install libfuse3-dev and "
                "pkg-config, then reinstall the package")
    if os.geteuid() != 0:
        return "mapping a device needs root (FUSE mount and loop devices)"
    if not os.path.exists("/dev/fuse"):
        return "mapping a device needs /dev/fuse (load the fuse module: modprobe fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    return None


_SIGS = {"read": "int (*)(void *, void *, uint64_t, uint64_t)",
         "write": "int (*)(void *, const void *, uint64_t, uint64_t)",
         "discard": "int (*)(void *, uint64_t, uint64_t)",
         "flush": "int (*)(void *)"}


def _core_table():
    """The core's byte IO calls as function pointers for the C side."""
    core = ffi.new("cbf_core *")
    for field, sig in _SIGS.items():
        setattr(core, field, ffi.cast(sig, function_address(f"cb_dev_{field}")))
    return core


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


class FuseFiles:
    """A FUSE mount at ``mountpoint`` whose files are devices.

    ``start()`` mounts and serves on a thread of its own; ``add(name,
    device)`` returns the file's path; ``remove(name)`` refuses a file that
    something holds open (:class:`~cowblock.BusyError`); ``stop()`` unmounts.
    The :class:`Device` objects are kept referenced while their file exists.
    """

    def __init__(self, mountpoint: str, threads: int = 8):
        why = fuse_unavailable()
        if why:
            raise errors.CowblockError(why)
        self.mountpoint = os.path.abspath(mountpoint)
        self._threads = threads
        self._fs = None
        self._thread = None
        self._devices: dict[str, object] = {}
        self._lock = threading.Lock()
        self._result = None

    def start(self) -> "FuseFiles":
        out = ffi.new("cbf_fs **")
        self._core = _core_table()
        rc = lib.cbf_create(self.mountpoint.encode(), self._core, self._threads, out)
        if rc:
            raise errors.CowblockError(
                f"cannot mount the FUSE file system at {self.mountpoint}: {os.strerror(-rc)}")
        self._fs = out[0]
        self._thread = threading.Thread(target=self._serve, name="cowblock-fuse", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._result = lib.cbf_run(self._fs)

    def path(self, name: str) -> str:
        return os.path.join(self.mountpoint, name)

    def add(self, name: str, device, readonly: bool | None = None) -> str:
        """Serve ``device`` as file ``name`` (read-only when the device is,
        or when ``readonly``); returns its path."""
        if self._fs is None:
            raise errors.ClosedError("the FUSE file system is not running")
        handle = device._handle()  # the cb_dev the C side calls the core with
        with self._lock:
            rc = lib.cbf_add(self._fs, name.encode(), ffi.cast("void *", handle_address(handle)),
                             device.size, 1 if readonly or device.readonly else 0)
            if rc == -errno.EEXIST:
                raise errors.ExistsError(f"a file {name!r} is served already")
            _check(rc, f"serve {name!r}")
            self._devices[name] = device
        return self.path(name)

    def remove(self, name: str) -> None:
        with self._lock:
            if self._fs is None:
                return
            rc = lib.cbf_remove(self._fs, name.encode())
            if rc == -errno.EBUSY:
                raise errors.BusyError(f"{self.path(name)} is open (a loop device still uses it)")
            if rc != -errno.ENOENT:
                _check(rc, f"remove {name!r}")
            self._devices.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._devices)

    def open_count(self, name: str) -> int:
        rc = lib.cbf_open_count(self._fs, name.encode())
        _check(rc, f"look up {name!r}")
        return rc

    def counters(self) -> dict:
        c = ffi.new("cbf_counters *")
        lib.cbf_counters_get(self._fs, c)
        return {k: getattr(c, k) for k in ("reads", "writes", "bytes_read", "bytes_written",
                                             "discards", "flushes", "errors")}

    def stop(self, timeout: float = 10.0) -> None:
        """Unmount and wait for the workers; the devices are released."""
        fs, self._fs = self._fs, None
        if fs is None:
            return
        lib.cbf_stop(fs)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a wedged kernel request
                raise errors.BusyError(f"the FUSE file system at {self.mountpoint} did not stop")
        lib.cbf_destroy(fs)
        with self._lock:
            self._devices.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
