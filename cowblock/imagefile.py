"""Raw image files: import into devices, export from them, use them in place.

* :func:`import_raw` copies only the data of a raw image file into a device:
  it walks the file's data with ``SEEK_DATA``/``SEEK_HOLE`` (the whole file
  when the file system cannot tell) and skips all-zero blocks, so a device
  made from a sparse or zero-padded image maps only what the image holds.
* :func:`export_raw` writes a device (or anything with the same surface) to a
  sparse raw file: only non-zero blocks are written, the rest stay holes.
* :class:`RawImageFile` opens an existing raw file with the Device surface
  (``read/readinto/write/discard/flush/size/extents``): what a *bind*
  attaches. ``discard`` punches holes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ExistsError, InvalidArgumentError, NotFoundError, ReadOnlyError

__all__ = ["TransferResult", "RawImageFile", "import_raw", "export_raw",
           "data_ranges", "punch_hole", "GRANULE", "CHUNK"]

#: Unit of the all-zero test: the file-system block size of a hole.
GRANULE = 4096
#: Bytes read or written per call while copying.
CHUNK = 4 * 2**20


@dataclass(frozen=True)
class TransferResult:
    """Byte counts of an import or export.

    ``size`` = ``copied`` + ``holes`` + ``zeros``: bytes written to the
    destination, bytes never read because the source reported a hole (or an
    unmapped range), and bytes read but skipped because they were all zero.
    ``device`` is the device written by an import (None for an export).
    """

    size: int
    copied: int
    holes: int
    zeros: int
    device: Any = None

    @property
    def skipped(self) -> int:
        """Bytes not written: ``holes + zeros``."""
        return self.holes + self.zeros


# --------------------------------------------------------------------------
# Low-level helpers


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Return the ``(offset, length)`` ranges of ``fd`` below ``size`` that
    may hold data, found with ``SEEK_DATA``/``SEEK_HOLE``; the whole range
    when the system or file system does not support them."""
    if size <= 0:
        return []
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    ranges = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            ranges.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP) and not ranges:
            return [(0, size)]
        raise
    return ranges


def _nonzero_runs(buf: memoryview, granule: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of ``buf`` made of granules that hold a
    non-zero byte, adjacent ones merged (the last granule may be short)."""
    n = len(buf)
    if n == 0:
        return []
    a = np.frombuffer(buf, dtype=np.uint8)
    full, tail = divmod(n, granule)
    flags = np.empty(full + (1 if tail else 0), dtype=np.int8)
    if full:
        body = a[:full * granule]
        if granule % 8 == 0:
            body = body.view(np.uint64)
        flags[:full] = body.reshape(full, -1).any(axis=1)
    if tail:
        flags[-1] = a[full * granule:].any()
    edges = np.diff(np.concatenate(([0], flags, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s) * granule, min(int(e) * granule, n)) for s, e in zip(starts, ends)]


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; zero-fill past end of file."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            view[done:] = bytes(len(view) - done)
            return
        done += got


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset+length)`` of ``fd`` so it reads as zeros,
    with ``fallocate(PUNCH_HOLE|KEEP_SIZE)``. Return False (and change
    nothing) when the file system does not support it."""
    global _libc
    if length <= 0:
        return True
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc.fallocate.restype = ctypes.c_int
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


def _check_range(offset: Any, length: Any, size: int, what: str) -> None:
    for v, n in ((offset, "offset"), (length, "length")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgumentError(f"{n} must be an int, not {type(v).__name__}")
        if v < 0:
            raise InvalidArgumentError(f"{n} must not be negative: {v}")
    if offset + length > size:
        raise InvalidArgumentError(
            f"range {offset}+{length} is past the end of {what} ({size} bytes)")


# --------------------------------------------------------------------------
# A raw file with the Device surface


class RawImageFile:
    """An existing raw (sparse) image file, used in place with the surface
    of a :class:`cowblock.Device`: ``read``, ``readinto``, ``write``,
    ``discard``, ``flush``, ``extents``, ``size``, ``name``, ``readonly``.

    The size is the file's size when opened and stays fixed: accesses past it
    raise InvalidArgumentError, as on a device. ``discard`` punches holes
    (or writes zeros where the file system cannot punch). Close it (or use it
    as a context manager) to release the file descriptor.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False,
                 name: str | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.readonly = bool(readonly)
        self.name = name if name is not None else os.path.basename(self.path)
        self._fd = -1
        try:
            self._fd = os.open(self.path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"raw image file {self.path!r} does not exist") from None
        except IsADirectoryError:
            raise InvalidArgumentError(f"{self.path!r} is a directory, not a raw image file") from None
        st = os.fstat(self._fd)
        if not (st.st_mode & 0o170000 == 0o100000):
            os.close(self._fd)
            self._fd = -1
            raise InvalidArgumentError(f"{self.path!r} is not a regular file")
        self.size = st.st_size

    # -- lifecycle
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._fd < 0

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RawImageFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"raw image file {self.path!r} is closed")
        return self._fd

    def fileno(self) -> int:
        """The open file descriptor."""
        return self._fileno()

    # -- IO
    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset``."""
        _check_range(offset, length, self.size, f"file {self.path!r}")
        buf = bytearray(length)
        _pread_into(self._fileno(), memoryview(buf), offset)
        return bytes(buf)

    def readinto(self, offset: int, buffer) -> int:
        """Fill ``buffer`` (any writable buffer) from ``offset``; return its length."""
        view = memoryview(buffer).cast("B")
        _check_range(offset, len(view), self.size, f"file {self.path!r}")
        _pread_into(self._fileno(), view, offset)
        return len(view)

    def write(self, offset: int, data) -> int:
        """Write ``data`` (any bytes-like) at ``offset``; return its length."""
        if self.readonly:
            raise ReadOnlyError(f"raw image file {self.path!r} is attached read-only")
        view = memoryview(data).cast("B")
        _check_range(offset, len(view), self.size, f"file {self.path!r}")
        _pwrite_all(self._fileno(), view, offset)
        return len(view)

    def discard(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros, freeing its space."""
        if self.readonly:
            raise ReadOnlyError(f"raw image file {self.path!r} is attached read-only")
        _check_range(offset, length, self.size, f"file {self.path!r}")
        fd = self._fileno()
        if not punch_hole(fd, offset, length):
            zeros = bytes(min(length, CHUNK))
            done = 0
            while done < length:
                n = min(len(zeros), length - done)
                _pwrite_all(fd, memoryview(zeros)[:n], offset + done)
                done += n

    def flush(self) -> None:
        """Make every write so far durable (fsync)."""
        os.fsync(self._fileno())

    def extents(self) -> list[tuple[int, int]]:
        """``(offset, length)`` ranges that may hold data; the rest are holes."""
        return data_ranges(self._fileno(), self.size)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("ro" if self.readonly else "rw")
        return f"<RawImageFile {self.path!r} {self.size} bytes {state}>"


# --------------------------------------------------------------------------
# Import and export


def import_raw(target, path: str | os.PathLike, *, name: str | None = None,
               size: int | None = None, granule: int = GRANULE) -> TransferResult:
    """Copy the data of raw image file ``path`` into a device.

    ``target`` is either a writable device, or a pool: then a new device
    ``name`` is created, ``size`` bytes big (default: the file's size rounded
    up to a multiple of 512), and deleted again if the import fails.

    Only data is copied: ranges the file system reports as holes are never
    read, and ``granule``-sized all-zero blocks are not written. Afterwards
    the device reads exactly as the file, and as zeros past the file's end
    (anything it held before is discarded). Returns a :class:`TransferResult`
    whose ``device`` is the device written.
    """
    path = os.fspath(path)
    if isinstance(granule, bool) or not isinstance(granule, int) or granule <= 0 or granule % 512:
        raise InvalidArgumentError(f"granule must be a positive multiple of 512, not {granule!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"raw image file {path!r} does not exist") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:
            raise InvalidArgumentError(f"{path!r} is not a regular file")
        fsize = st.st_size
        created = False
        if hasattr(target, "create_device"):
            if name is None:
                raise InvalidArgumentError("import_raw into a pool needs name= for the new device")
            dev_size = size if size is not None else max(512, -(-fsize // 512) * 512)
            dev = target.create_device(name, dev_size)
            created = True
        else:
            if name is not None or size is not None:
                raise InvalidArgumentError("name= and size= only apply when importing into a pool")
            dev = target
        try:
            if fsize > dev.size:
                raise InvalidArgumentError(
                    f"raw image file {path!r} ({fsize} bytes) is larger than "
                    f"device {dev.name!r} ({dev.size} bytes)")
            if getattr(dev, "readonly", False):
                raise ReadOnlyError(f"device {dev.name!r} is read-only")
            if not created:
                for off, length in dev.extents():
                    dev.discard(off, length)
            result = _copy_data(fd, fsize, dev, granule)
            dev.flush()
        except BaseException:
            if created:
                try:
                    target.delete(dev.name)
                except Exception:
                    pass
            raise
        return TransferResult(result[0], result[1], result[2], result[3], dev)
    finally:
        os.close(fd)


def _copy_data(fd: int, fsize: int, dev, granule: int) -> tuple[int, int, int, int]:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    copied = zeros = 0
    in_data = 0
    for start, length in data_ranges(fd, fsize):
        in_data += length
        pos, end = start, start + length
        while pos < end:
            n = min(CHUNK, end - pos)
            chunk = view[:n]
            _pread_into(fd, chunk, pos)
            written = 0
            for s, e in _nonzero_runs(chunk, granule):
                dev.write(pos + s, chunk[s:e])
                written += e - s
            copied += written
            zeros += n - written
            pos += n
    return fsize, copied, fsize - in_data, zeros


def export_raw(source, path: str | os.PathLike, *, overwrite: bool = False,
               granule: int = GRANULE) -> TransferResult:
    """Write ``source`` (a device, or anything with ``size``, ``extents()``
    and ``readinto(offset, buffer)``) to a sparse raw file at ``path``.

    Only the source's extents are read, and only non-zero ``granule``-sized
    blocks are written; the file is then truncated to ``source.size`` and
    fsynced, so unwritten ranges stay holes. Refuses to replace an existing
    file unless ``overwrite``; a partly written file is removed on failure.
    """
    path = os.fspath(path)
    if isinstance(granule, bool) or not isinstance(granule, int) or granule <= 0:
        raise InvalidArgumentError(f"granule must be a positive int, not {granule!r}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise ExistsError(f"{path!r} already exists (pass overwrite to replace it)") from None
    size = source.size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    copied = zeros = in_extents = 0
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        for start, length in source.extents():
            end = min(start + length, size)
            pos = start
            while pos < end:
                n = min(CHUNK, end - pos)
                chunk = view[:n]
                source.readinto(pos, chunk)
                written = 0
                for s, e in _nonzero_runs(chunk, granule):
                    _pwrite_all(fd, chunk[s:e], pos + s)
                    written += e - s
                copied += written
                zeros += n - written
                in_extents += n
                pos += n
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)
    return TransferResult(size, copied, size - in_extents, zeros)
