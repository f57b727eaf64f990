"""Raw image files: import into devices, export from them, use them in place.

* :func:`import_raw` copies only the data of a raw image file into a device:
  it walks the file's data with ``SEEK_DATA``/``SEEK_HOLE`` (the whole file
  when the file system cannot tell) and skips all-zero blocks, so a device
  made from a sparse or zero-padded image maps only what the image holds.
  Into an existing device it writes only the granules that differ from what
  the device reads, so the blocks it shares with its origin stay shared.
  Container formats (qcow2, VMDK, VHD/VHDX, VDI, QED, Parallels) and
  compressed files are recognised by their magic and refused: their bytes
  are not the disk's.
* :func:`export_raw` writes a device (or anything with the same surface) to a
  sparse raw file: only non-zero blocks are written, the rest stay holes. A
  block device or an open file descriptor (a pipe) gets every byte instead.
* :class:`RawImageFile` opens an existing raw file with the Device surface
  (``read/readinto/write/discard/flush/size/extents``): what a *bind*
  attaches. ``discard`` punches holes.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import (ExistsError, InvalidArgumentError, NotFoundError, PoolFullError,
                     ReadOnlyError)
from .units import format_exact

__all__ = ["TransferResult", "RawImageFile", "import_raw", "export_raw",
           "data_ranges", "punch_hole", "detect_format", "pool_full_detail",
           "GRANULE", "CHUNK"]

#: Unit of the all-zero test: the file-system block size of a hole.
GRANULE = 4096
#: Bytes read or written per call while copying.
CHUNK = 4 * 2**20


@dataclass(frozen=True)
class TransferResult:
    """Byte counts of an import or export.

    ``size`` = ``copied`` + ``holes`` + ``zeros`` + ``unchanged``: bytes
    written to the destination, bytes never read because the source reported
    a hole (or an unmapped range), bytes read but skipped because they were
    all zero, and (importing into an existing device) bytes not written
    because the device already held them. ``discarded``: bytes an import into
    an existing device discarded because they became zero there. ``device``
    is the device written by an import (None for an export).
    """

    size: int
    copied: int
    holes: int
    zeros: int
    device: Any = None
    unchanged: int = 0
    discarded: int = 0

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


def _granule_any(a: np.ndarray, granule: int) -> np.ndarray:
    """Per ``granule``-sized piece of the uint8 array ``a`` (the last one may
    be short): True where it holds a non-zero byte."""
    n = len(a)
    full, tail = divmod(n, granule)
    flags = np.empty(full + (1 if tail else 0), dtype=bool)
    if full:
        body = a[:full * granule]
        if granule % 8 == 0:
            body = body.view(np.uint64)
        flags[:full] = body.reshape(full, -1).any(axis=1)
    if tail:
        flags[-1] = a[full * granule:].any()
    return flags


def _runs(flags: np.ndarray, granule: int, n: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of the granules where ``flags`` is True,
    adjacent ones merged, clipped to ``n`` bytes."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s) * granule, min(int(e) * granule, n)) for s, e in zip(starts, ends)]


def _nonzero_runs(buf: memoryview, granule: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of ``buf`` made of granules that hold a
    non-zero byte, adjacent ones merged (the last granule may be short)."""
    n = len(buf)
    if n == 0:
        return []
    return _runs(_granule_any(np.frombuffer(buf, dtype=np.uint8), granule), granule, n)


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
# What a path is


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link",
          stat.S_IFREG: "a regular file"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


# Container formats whose bytes are not the disk's, by their magic (from each
# format's specification): (offset, magic, name, qemu-img's name for it).
_CONTAINER_MAGIC = (
    (0, b"QFI\xfb", "qcow2", "qcow2"),
    (0, b"QED\x00", "QED", "qed"),
    (0, b"KDMV", "VMDK", "vmdk"),
    (0, b"# Disk DescriptorFile", "VMDK (descriptor)", "vmdk"),
    (0, b"vhdxfile", "VHDX", "vhdx"),
    (0x40, b"\x7f\x10\xda\xbe", "VDI", "vdi"),          # 0xbeda107f, little-endian
    (0, b"conectix", "VHD", "vpc"),                     # dynamic: footer copy at 0
    (0, b"WithoutFreeSpace", "Parallels", "parallels"),
    (0, b"WithouFreSpacExt", "Parallels", "parallels"),
)
# Compressed files: (magic, name, the command that undoes it).
_COMPRESSED = (
    (b"\x1f\x8b\x08", "gzip", "gunzip"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"BZh", "bzip2", "bunzip2"),
)


def detect_format(fd: int, size: int) -> tuple[str, str | None] | None:
    """Recognise a container format or a compressed file by its magic.

    Returns ``(name, qemu_format)`` (``qemu_format`` is None for a compressed
    file), or None when ``fd`` holds nothing known: raw data.
    """
    head = bytearray(512)
    _pread_into(fd, memoryview(head)[:min(512, size)], 0)
    for offset, magic, name, fmt in _CONTAINER_MAGIC:
        if size >= offset + len(magic) and head[offset:offset + len(magic)] == magic:
            if magic == b"QFI\xfb" and int.from_bytes(head[4:8], "big") == 1:
                return "qcow (version 1)", "qcow"
            return name, fmt
    if size >= 512 + 512:  # fixed VHD: raw data followed by a 512-byte footer
        tail = bytearray(8)
        _pread_into(fd, memoryview(tail), size - 512)
        if tail == b"conectix":
            return "VHD (fixed)", "vpc"
    for magic, name, _ in _COMPRESSED:
        if head.startswith(magic) and (magic != b"BZh" or (
                head[3:4] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9")
                and head[4:10] == b"1AY&SY")):  # block size digit, then the block magic
            return name, None
    return None


def _refuse_container(fd: int, size: int, path: str) -> None:
    found = detect_format(fd, size)
    if found is None:
        return
    name, fmt = found
    if fmt is None:
        undo = next(u for _, n, u in _COMPRESSED if n == name)
        raise InvalidArgumentError(
            f"{path!r} is {name}-compressed, not a raw image: decompress it first "
            f"(e.g. `{undo} -k {path}`) and import the raw file")
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    chain = (f"; or import it (and its backing files) as an image of layers: "
             f"cowblock image import --format qcow2 NAME {path}") if fmt == "qcow2" else ""
    raise InvalidArgumentError(
        f"{path!r} is a {name} image, not a raw image: importing it would store the "
        f"{name} file's own bytes, not the disk it holds. Convert it first: "
        f"qemu-img convert -f {fmt} -O raw {path} {stem}.raw{chain}")


def open_source(path: str | os.PathLike) -> tuple[int, int]:
    """Open ``path`` to read a disk image from it; return ``(fd, size)``.

    A regular file is read as raw data; so is a block device (its whole
    size), as ``dd`` or ``qemu-img`` would. Anything else (a directory, a
    character device, a FIFO, a socket) is refused before it is opened, and
    so is a file in a container format or compressed (see
    :func:`detect_format`), with a message that says how to convert it.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"raw image file {path!r} does not exist") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgumentError(
            f"{path!r} is {_kind(st.st_mode)}, not a raw image file "
            f"(import reads a regular file or a block device)")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
        elif stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
        else:
            raise InvalidArgumentError(f"{path!r} is {_kind(st.st_mode)}, not a raw image file")
        _refuse_container(fd, size, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def check_raw_file(path: str | os.PathLike) -> None:
    """Raise as :func:`open_source` does unless ``path`` is a raw image."""
    fd, _ = open_source(path)
    os.close(fd)


def pool_full_detail(pool, need: int | None = None) -> str:
    """Say what is full when a write of ``need`` bytes into ``pool`` failed
    for space: the pool (fewer free bytes than the write needs: used/size)
    or else the file system under it (its free bytes).

    The core reports both as CB_ENOSPC; the pool's own figures tell them
    apart, since the core refuses a write the pool has no blocks for before
    it allocates any."""
    used, size, bs = pool.used, pool.size, pool.block_size
    wanted = f"; the write needed up to {format_exact(need)}" if need else ""
    if size - used < (need or 0) + bs:
        return (f"the pool is full: {format_exact(used)} of {format_exact(size)} used"
                f"{wanted}")
    try:
        vfs = os.statvfs(str(pool.path))
        free = f"{format_exact(vfs.f_bavail * vfs.f_frsize)} free"
    except OSError:
        free = "free space unknown"
    return (f"the file system under the pool {str(pool.path)!r} ran out of space "
            f"({free} there now{wanted}); the pool itself has {format_exact(used)} of "
            f"{format_exact(size)} used")


def _full(dev, what: str, need: int | None) -> PoolFullError:
    """A PoolFullError naming ``what`` and what is full; ``detail`` holds the
    second part, for callers that name the object differently."""
    pool = getattr(dev, "pool", None)
    detail = pool_full_detail(pool, need) if pool is not None else "no space left"
    exc = PoolFullError(f"{what}: {detail}")
    exc.detail = detail
    return exc


# --------------------------------------------------------------------------
# Import and export


def import_raw(target, path: str | os.PathLike, *, name: str | None = None,
               size: int | None = None, granule: int = GRANULE,
               progress=None) -> TransferResult:
    """Copy the data of raw image file ``path`` into a device.

    ``target`` is either a writable device, or a pool: then a new device
    ``name`` is created, ``size`` bytes big (default: the file's size rounded
    up to a multiple of 512), and deleted again if the import fails.
    ``path`` may also be a block device (read as raw data); see
    :func:`open_source` for what is refused.

    Only data is copied: ranges the file system reports as holes are never
    read, and ``granule``-sized all-zero blocks are not written. Into an
    existing device, only the granules that differ from what it reads are
    written, and granules that became zero are discarded, so what it shares
    with its origin stays shared. Afterwards the device reads exactly as the
    file, and as zeros past the file's end. ``progress(done, total)`` is
    called as the bytes of the file are gone through. Returns a
    :class:`TransferResult` whose ``device`` is the device written.
    """
    path = os.fspath(path)
    if isinstance(granule, bool) or not isinstance(granule, int) or granule <= 0 or granule % 512:
        raise InvalidArgumentError(f"granule must be a positive multiple of 512, not {granule!r}")
    fd, fsize = open_source(path)
    try:
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
            try:
                result = _copy_data(fd, fsize, dev, granule, compare=not created,
                                    progress=progress)
                dev.flush()
            except PoolFullError as exc:
                raise _full(dev, f"import of {path!r} into device {dev.name!r}",
                            getattr(exc, "need", None)) from None
        except BaseException:
            if created:
                try:
                    target.delete(dev.name)
                except Exception:
                    pass
            raise
        return TransferResult(result[0], result[1], result[2], result[3], dev,
                              unchanged=result[4], discarded=result[5])
    finally:
        os.close(fd)


class _Extents:
    """The extents of a device, to ask which part of a range they cover."""

    def __init__(self, extents):
        self.ranges = sorted((s, s + n) for s, n in extents if n > 0)
        self.ends = [e for _, e in self.ranges]

    def within(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` pieces of the extents inside ``[lo, hi)``."""
        out = []
        i = bisect.bisect_right(self.ends, lo)
        while i < len(self.ranges) and self.ranges[i][0] < hi:
            s, e = self.ranges[i]
            out.append((max(s, lo), min(e, hi)))
            i += 1
        return out


def _copy_data(fd: int, fsize: int, dev, granule: int, *, compare: bool,
               progress=None) -> tuple[int, int, int, int, int, int]:
    """Write the file's data into ``dev``; with ``compare``, only what
    differs from the device's current content. Returns (size, copied,
    holes, zeros, unchanged, discarded)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    old = bytearray(CHUNK) if compare else None
    mapped = _Extents(dev.extents()) if compare else None
    copied = zeros = unchanged = discarded = 0
    in_data = 0

    def discard_mapped(lo: int, hi: int) -> int:
        n = 0
        for s, e in mapped.within(lo, hi):
            dev.discard(s, e - s)
            n += e - s
        return n

    prev = 0
    for start, length in data_ranges(fd, fsize):
        if compare and start > prev:        # a hole of the file: the device must read zeros
            discarded += discard_mapped(prev, start)
        in_data += length
        pos, end = start, start + length
        while pos < end:
            n = min(CHUNK, end - pos)
            chunk = view[:n]
            _pread_into(fd, chunk, pos)
            new = np.frombuffer(chunk, dtype=np.uint8)
            nonzero = _granule_any(new, granule)
            if compare and mapped.within(pos, pos + n):
                dev.readinto(pos, memoryview(old)[:n])
                differs = _granule_any(new ^ np.frombuffer(old, dtype=np.uint8, count=n), granule)
                write = differs & nonzero
                for s, e in _runs(differs & ~nonzero, granule, n):
                    dev.discard(pos + s, e - s)
                    discarded += e - s
                for s, e in _runs(nonzero & ~differs, granule, n):
                    unchanged += e - s
            else:
                write = nonzero
            written = 0
            for s, e in _runs(write, granule, n):
                try:
                    dev.write(pos + s, chunk[s:e])
                except PoolFullError as exc:
                    exc.need = e - s  # for the message: how much this write wanted
                    raise
                written += e - s
            copied += written
            zeros += sum(e - s for s, e in _runs(~nonzero, granule, n))
            pos += n
            if progress is not None:
                progress(pos, fsize)
        prev = end
    if compare:                              # the last hole, and past the file's end
        discarded += discard_mapped(prev, dev.size)
    if progress is not None:
        progress(fsize, fsize)
    return fsize, copied, fsize - in_data, zeros, unchanged, discarded


def _write_all(fd: int, view: memoryview) -> None:
    """Write ``view`` to a stream (a pipe), in order."""
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def export_raw(source, path: str | os.PathLike | int, *, overwrite: bool = False,
               granule: int = GRANULE, progress=None) -> TransferResult:
    """Write ``source`` (a device, or anything with ``size``, ``extents()``
    and ``readinto(offset, buffer)``) to a raw image at ``path``.

    * A new file: only the source's extents are read and only non-zero
      ``granule``-sized blocks are written, so unwritten ranges stay holes;
      the file is fsynced, and removed again if the export fails.
    * An existing regular file: refused unless ``overwrite``; then the new
      content is written to a temporary file beside it that replaces it
      once complete, so a failed export leaves it as it was.
    * A block device: refused unless ``overwrite``; it must be at least
      ``source.size`` bytes (bytes past that are left alone), is opened
      exclusively (refused while mounted), and gets every byte, zeros
      included. It is never truncated.
    * An int: an open file descriptor (such as 1, standard output) that gets
      every byte in order; it is not closed.
    * Anything else (a directory, a character device, a FIFO, a socket) is
      refused before anything is opened.

    ``progress(done, total)`` is called as the bytes are gone through.
    Nothing that existed before is ever removed.
    """
    if isinstance(granule, bool) or not isinstance(granule, int) or granule <= 0:
        raise InvalidArgumentError(f"granule must be a positive int, not {granule!r}")
    if isinstance(path, int) and not isinstance(path, bool):
        return _export_stream(source, path, progress)
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # a dangling symbolic link, or made meanwhile
            raise _exists(path, "already exists") from None
        try:
            return _export_new_file(source, fd, path, granule, progress)
        finally:
            os.close(fd)
    if stat.S_ISBLK(st.st_mode):
        if not overwrite:
            raise _exists(path, "is a block device; writing the device over it destroys its data")
        return _export_block_device(source, path, progress)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgumentError(
            f"cannot export to {path!r}: it is {_kind(st.st_mode)}; give a new or regular "
            f"file, a block device, or standard output")
    if not overwrite:
        raise _exists(path, "already exists")
    real = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", suffix=".export",
                               dir=os.path.dirname(real))
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        result = _export_new_file(source, fd, tmp, granule, progress)
        os.replace(tmp, real)
    except BaseException:
        _unlink_own(tmp, fd)
        raise
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(real), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return result


def _exists(path: str, what: str) -> ExistsError:
    exc = ExistsError(f"{path!r} {what} (pass overwrite=True to write over it)")
    exc.path = path
    exc.reason = what
    return exc


def _unlink_own(path: str, fd: int) -> None:
    """Remove ``path`` if it is still the file open as ``fd`` (one we made)."""
    try:
        mine, there = os.fstat(fd), os.lstat(path)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)
    except OSError:
        pass


def _export_new_file(source, fd: int, path: str, granule: int, progress) -> TransferResult:
    """Write ``source`` sparsely into ``fd``, a new empty regular file that
    we made at ``path``; on failure remove it (the caller closes ``fd``)."""
    size = source.size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    copied = zeros = in_extents = 0
    try:
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
                if progress is not None:
                    progress(pos, size)
        os.fsync(fd)
    except BaseException:
        _unlink_own(path, fd)
        raise
    if progress is not None:
        progress(size, size)
    return TransferResult(size, copied, size - in_extents, zeros)


def _write_every_byte(source, put, progress) -> TransferResult:
    """Give ``put(offset, view)`` every byte of ``source`` in order, reading
    only its extents (zeros elsewhere)."""
    size = source.size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    zero = memoryview(bytes(CHUNK))
    extents = _Extents(source.extents())
    pos = 0
    while pos < size:
        n = min(CHUNK, size - pos)
        chunk = view[:n]
        chunk[:] = zero[:n]
        for s, e in extents.within(pos, pos + n):
            source.readinto(s, chunk[s - pos:e - pos])
        put(pos, chunk)
        pos += n
        if progress is not None:
            progress(pos, size)
    if progress is not None:
        progress(size, size)
    return TransferResult(size, size, 0, 0)


def _export_stream(source, fd: int, progress) -> TransferResult:
    return _write_every_byte(source, lambda pos, chunk: _write_all(fd, chunk), progress)


def _export_block_device(source, path: str, progress) -> TransferResult:
    # O_EXCL on a block device: refused (EBUSY) while it is mounted or held.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise InvalidArgumentError(
                f"cannot export to block device {path!r}: it is in use (mounted or held "
                f"by another program)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidArgumentError(f"cannot export to {path!r}: it is {_kind(st.st_mode)}")
        room = os.lseek(fd, 0, os.SEEK_END)
        if room < source.size:
            raise InvalidArgumentError(
                f"block device {path!r} holds {format_exact(room)}, less than the "
                f"{format_exact(source.size)} exported; nothing was written")
        result = _write_every_byte(source, lambda pos, chunk: _pwrite_all(fd, chunk, pos),
                                   progress)
        os.fsync(fd)
        return result
    finally:
        os.close(fd)
