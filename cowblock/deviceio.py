"""A thin device seen as a raw binary file: ``Device.open(mode)`` returns a :class:`DeviceIO`.

``DeviceIO`` is an :class:`io.RawIOBase`, so the standard library's file machinery works on a
device: ``shutil.copyfileobj``, ``io.BufferedReader``/``io.BufferedRandom``, ``io.TextIOWrapper``
on top of those, ``readinto`` into any writable buffer.

Semantics, chosen to match a block device node (``/dev/sdX``) opened with ``open()``:

* modes are ``"rb"`` (read only) and ``"r+b"`` (read and write; ``"rb+"`` is accepted too).
  A device never grows or shrinks, so there is no ``"w"``/``"a"``/``"x"`` and no ``truncate``.
* Opening ``"r+b"`` on a read-only device, or on a device of a pool opened read-only, raises
  :class:`cowblock.ReadOnlyError`; ``write`` on a ``"rb"`` object raises
  :class:`io.UnsupportedOperation`, exactly as a file opened ``"rb"`` does.
* The position may be moved anywhere at or after 0 (like a file). Reading at or past the end
  returns ``b""`` (``readinto`` returns 0). Writing never extends the device: a write that would
  pass the end raises :class:`DeviceEndError` (a :class:`cowblock.InvalidArgumentError`, hence a
  ``ValueError``, and an ``OSError`` with ``errno.ENOSPC`` as a block device gives) and writes
  nothing, so a half-copied stream is never mistaken for a complete one.
* ``seek`` supports ``SEEK_SET``, ``SEEK_CUR`` and ``SEEK_END``, and also ``os.SEEK_DATA`` /
  ``os.SEEK_HOLE`` (from ``Device.extents()``), so sparse-aware copy loops work.
* ``flush()`` is the device's durability point (``Device.flush()``), but only if something was
  written through this object since the last flush; ``close()`` flushes, then detaches from
  the device. Closing a ``DeviceIO`` never closes the device or the pool; closing the pool
  first is fine (it commits), after which reads and writes raise ``ClosedError``.

A ``DeviceIO`` keeps its own position; like a file object it is not meant to be shared between
threads without a lock (the device itself is thread-safe; two ``DeviceIO`` objects on one device
are fine).
"""

from __future__ import annotations

import errno
import io
import os

from .errors import ClosedError, InvalidArgumentError, ReadOnlyError

__all__ = ["DeviceIO", "DeviceEndError"]

_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)

# Largest single chunk read by read(-1)/readall(): keeps memory bounded on huge devices is the
# caller's job (a 16 TiB readall cannot succeed), but each C call stays a sane size.
_READALL_CHUNK = 8 * 1024 * 1024


class DeviceEndError(InvalidArgumentError, OSError):
    """A write through a :class:`DeviceIO` would pass the end of the device (devices never grow).

    Both a :class:`cowblock.InvalidArgumentError` (so a ``ValueError``) and an ``OSError`` whose
    ``errno`` is ``ENOSPC``, which is what writing past the end of a block device gives.
    """

    def __init__(self, message: str):
        # Fill OSError's fields by hand: the base classes' __init__ signatures differ.
        Exception.__init__(self, message)
        self.errno = errno.ENOSPC
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


def _parse_mode(mode: object) -> bool:
    """Return True if ``mode`` allows writing; raise ValueError for anything but rb/r+b."""
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {type(mode).__name__}")
    if mode in ("rb", "r"):
        return False
    if mode in ("r+b", "rb+", "r+"):
        return True
    raise ValueError(
        f"invalid mode {mode!r} for a device: use 'rb' or 'r+b' "
        "(a device has a fixed size: no 'w', 'a' or 'x')"
    )


def _as_bytes_view(buf) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class DeviceIO(io.RawIOBase):
    """Raw binary file over a :class:`cowblock.Device`. See the module docstring."""

    def __init__(self, device, mode: str = "rb"):
        super().__init__()
        writable = _parse_mode(mode)
        if writable:
            pool = getattr(device, "pool", None)
            if device.readonly or (pool is not None and getattr(pool, "readonly", False)):
                raise ReadOnlyError(
                    f"device {device.name!r} is read-only; open it with mode 'rb'"
                )
        self._device = device
        self._writable = writable
        self._mode = "r+b" if writable else "rb"
        self._size = int(device.size)
        self._pos = 0
        self._dirty = False

    # -- descriptive attributes ---------------------------------------------------------------
    @property
    def device(self):
        return self._device

    @property
    def name(self) -> str:
        return self._device.name

    @property
    def mode(self) -> str:
        return self._mode

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pos={self._pos}"
        return f"<DeviceIO name={self._device.name!r} mode={self._mode!r} size={self._size} {state}>"

    # -- capabilities -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed DeviceIO")

    def readable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def isatty(self) -> bool:
        self._check_open()
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a cowblock device has no file descriptor")

    def truncate(self, size=None):
        raise io.UnsupportedOperation("a cowblock device has a fixed size; it cannot be truncated")

    # -- position -----------------------------------------------------------------------------
    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if isinstance(offset, bool) or not isinstance(offset, int):
            try:
                offset = offset.__index__()
            except AttributeError:
                raise TypeError(
                    f"seek offset must be an integer, not {type(offset).__name__}"
                ) from None
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            new = self._size + offset
        elif whence in (_SEEK_DATA, _SEEK_HOLE):
            new = self._seek_data_hole(offset, whence == _SEEK_DATA)
        else:
            raise ValueError(f"invalid whence ({whence!r}); use SEEK_SET, SEEK_CUR or SEEK_END")
        if new < 0:
            raise ValueError(f"negative seek position {new}")
        self._pos = new
        return new

    def _seek_data_hole(self, offset: int, want_data: bool) -> int:
        """lseek(2) SEEK_DATA/SEEK_HOLE semantics over Device.extents()."""
        if offset < 0 or offset >= self._size:
            # lseek gives ENXIO for an offset at or past the end.
            raise OSError(errno.ENXIO, "offset is at or past the end of the device")
        extents = sorted(self._device.extents())
        if want_data:
            for start, length in extents:
                end = start + length
                if end <= offset:
                    continue
                return max(start, offset)
            raise OSError(errno.ENXIO, "no data at or after this offset")
        pos = offset
        for start, length in extents:
            end = start + length
            if end <= pos:
                continue
            if start > pos:
                return pos
            pos = end
        return min(pos, self._size)

    # -- reading ------------------------------------------------------------------------------
    def readinto(self, buffer) -> int:
        self._check_open()
        view = _as_bytes_view(buffer)
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        got = self._device.readinto(self._pos, view[:n])
        self._pos += got
        return got

    def read(self, size: int = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        n = min(size, self._size - self._pos)
        if n <= 0:
            return b""
        data = self._device.read(self._pos, n)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        self._check_open()
        chunks = []
        while self._pos < self._size:
            n = min(_READALL_CHUNK, self._size - self._pos)
            chunks.append(self._device.read(self._pos, n))
            self._pos += n
        return b"".join(chunks)

    # -- writing ------------------------------------------------------------------------------
    def write(self, data) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("DeviceIO opened 'rb' is not writable; use 'r+b'")
        if isinstance(data, str):
            raise TypeError("write() needs a bytes-like object, not str")
        view = _as_bytes_view(data)
        n = len(view)
        if n == 0:
            return 0
        if self._pos + n > self._size:
            raise DeviceEndError(
                f"write of {n} bytes at offset {self._pos} would pass the end of device "
                f"{self._device.name!r} ({self._size} bytes); devices do not grow"
            )
        written = self._device.write(self._pos, view)
        self._dirty = True
        self._pos += written
        return written

    def flush(self) -> None:
        # IOBase.close() calls flush(); it must be a no-op once closed.
        if self.closed:
            return
        if self._dirty:
            try:
                self._device.flush()
            except ClosedError:
                # The pool was closed under us, and Pool.close() commits: nothing is left to
                # flush (and close() of this object, maybe from __del__, must not fail for it).
                pass
            self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()
