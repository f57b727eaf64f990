"""The middle tier: the calls of ``cowblock.h`` as Python methods.

This is the one module that touches cffi (``ffi`` and ``lib`` of
``cowblock._cowblock``).  Each wrapper makes one core call: it takes Python
values (bytes for names and paths, ints, booleans), allocates what the call
needs (out-parameters, string buffers, list buffers grown until the result
fits), turns a negative return code into its exception (:func:`raise_for`,
the one place where C codes become exceptions) and returns Python objects.
:mod:`cowblock.pool` builds the public objects on them.

:class:`PoolHandle` wraps a ``cb_pool *`` and :class:`DevHandle` a
``cb_dev *``.  Byte and block IO on a device is the hot path (about a
microsecond a call), so DevHandle's IO methods are at once the wrappers and
the public methods of :class:`cowblock.Device`, which inherits them: a call
is one Python frame around the C call.  They pass exact ints straight to the
core, which checks the range itself, and check the arguments in Python only
when the core refused the call or the arguments are not plain ints, so the
errors are exactly those of checking everything up front.

Importing this module checks that the compiled module was built from the
same sources as this package, so a stale build fails loudly.
"""
import collections
import errno as _errno
import os
import re
import threading

import numpy as np

from . import _buildid, errors

try:
    from ._cowblock import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "cowblock's C core is not built: install the package with "
        "`pip install .` (or `pip install -e .`), which compiles it"
    ) from exc

# the id of the sources the core must be built from (see _buildid): ImportError if it is not
BUILD_ID = _buildid.verify(ffi.string(lib.cb_build_id()).decode())

# The core's limits, as plain ints.
NAME_MAX = lib.CB_NAME_MAX
MIN_BLOCK_SIZE = lib.CB_MIN_BLOCK_SIZE
MAX_BLOCK_SIZE = lib.CB_MAX_BLOCK_SIZE
MAX_DEVICE_SIZE = lib.CB_MAX_DEV_SIZE

# -- codes to exceptions --------------------------------------------------------

_CLASSES = {
    lib.CB_EINVAL: errors.InvalidArgumentError,
    lib.CB_ENOENT: errors.NotFoundError,
    lib.CB_EEXIST: errors.ExistsError,
    lib.CB_EROFS: errors.ReadOnlyError,
    lib.CB_ENOSPC: errors.PoolFullError,
    lib.CB_ECORRUPT: errors.CorruptError,
    lib.CB_EFAILED: errors.PoolFailedError,
    lib.CB_EBUSY: errors.BusyError,
    lib.CB_ETOOMANY: errors.LimitError,
    lib.CB_EVERSION: errors.UnsupportedVersionError,
    lib.CB_EEXTERNAL: errors.ExternalOriginError,
    lib.CB_ECLOSED: errors.ClosedError,
    lib.CB_EFENCED: errors.PoolFailedError,
    lib.CB_ESTALE: errors.StaleError,
}


def strerror(code):
    """The core's description of a return code."""
    return ffi.string(lib.cb_strerror(code)).decode()


def raise_for(code, what):
    """Raise the exception for a negative return code of the core.

    ``what`` names the operation and its object, e.g. ``"write to 'base'"``.
    """
    if code == lib.CB_ECHECKSUM:
        offset = lib.cb_bad_offset()  # this thread's: the call that failed
        exc = errors.ChecksumError(
            f"{what}: data at offset {offset} failed its checksum", code=code)
        exc.offset = offset
        raise exc
    message = f"{what}: {strerror(code)}"
    if code in (lib.CB_ECORRUPT, lib.CB_EVERSION, lib.CB_EEXTERNAL):
        # this thread's detail of the failure, as the core found it
        buf = ffi.new("char[]", 512)
        page = ffi.new("uint64_t *")
        if lib.cb_corrupt_detail(buf, 512, page):
            message = f"{what}: {ffi.string(buf).decode('utf-8', 'replace')}"
            exc = _CLASSES[code](message, code=code)
            exc.page = page[0] or None
            exc.offset = page[0] * 4096 if page[0] else None
            raise exc
    cls = _CLASSES.get(code)
    if cls is not None:
        raise cls(message, code=code)
    if code == lib.CB_ENOMEM:
        raise MemoryError(message)
    err = -code
    if err in (_errno.ENOSPC, _errno.EDQUOT):
        raise errors.PoolFullError(message, code=code)
    exc = errors.IOFailedError(err, message)
    exc.code = code
    raise exc


def _raise_located(code, what):
    """raise_for, with the core's detail for a location's errors: a malformed
    URL, a backend this build lacks, the holder of a RADOS pool's lock."""
    if code in (lib.CB_EINVAL, lib.CB_EBUSY):
        buf = ffi.new("char[]", 1024)
        if lib.cb_corrupt_detail(buf, 1024, ffi.NULL):
            cls = errors.InvalidArgumentError if code == lib.CB_EINVAL else errors.BusyError
            raise cls(f"{what}: {ffi.string(buf).decode('utf-8', 'replace')}", code=code)
    raise_for(code, what)


def backends():
    """The IO backends this build of the core has: ``("file",)``, or
    ``("file", "rados")`` when it was built with librados."""
    return tuple(ffi.string(lib.cb_backends()).decode().split())


def unlock_pool(location):
    """``cb_pool_unlock`` of ``location`` (bytes, a URL): whom the lock named."""
    buf = ffi.new("char[]", 1024)
    rc = lib.cb_pool_unlock(location, buf, 1024)
    if rc:
        _raise_located(rc, f"unlock pool {os.fsdecode(location)!r}")
    return ffi.string(buf).decode("utf-8", "replace")


_URL = re.compile(rb"^[a-z][a-z0-9+]*://")


def is_url(location):
    """A pool location (bytes) that names a backend ("rados://...") rather than a directory."""
    return _URL.match(location) is not None


# -- for other C modules ----------------------------------------------------------


def function_address(name):
    """The address of core function ``name`` (e.g. ``"cb_dev_read"``), for a C module
    of its own that calls the core directly (the FUSE server, cowblock.mapping)."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


def handle_address(handle):
    """The address of a ``cb_pool *`` or ``cb_dev *`` handle, for the same purpose; the
    handle must be kept referenced while the other module uses the address."""
    return int(ffi.cast("uintptr_t", handle))


# -- arguments --------------------------------------------------------------------


def bad(message):
    """The error for a bad argument (a CowblockError and a ValueError)."""
    return errors.InvalidArgumentError(message)


def as_int(value, what):
    """An int argument (bools and floats refused, numpy integers accepted)."""
    if value.__class__ is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise bad(f"{what} must be an integer, not {type(value).__name__}")
    return value.__index__()


def _text(raw):
    """A name or path the core gave back, as str."""
    return ffi.string(raw).decode("utf-8")


# -- records ---------------------------------------------------------------------

#: A device as the pool lists it (``cb_devinfo``): ids, size in bytes, creation time in
#: ns, and the pool times (generations) of its birth and of its last snapshot.
DevRecord = collections.namedtuple(
    "DevRecord", "name id origin_id size readonly external_id created_ns birth_time snap_time")

#: One device's space (``cb_usage``): mapped, exclusive and shared in blocks, and the
#: bytes of the blocks it changed since it was made.
UsageRecord = collections.namedtuple("UsageRecord", "name mapped exclusive shared changed")

#: A scrub finding (``cb_scrub_bad``); ``device`` is None when no device reads it.
DamageRecord = collections.namedtuple(
    "DamageRecord", "device offset length block devices error")

_STAT_FIELDS = tuple(f for f, _ in ffi.typeof("cb_stat").fields)
#: The pool's figures (``cb_stat``), one field per member of the struct.
Stat = collections.namedtuple("Stat", _STAT_FIELDS)

_CHECK_FIELDS = tuple(f for f, _ in ffi.typeof("cb_check").fields)


def _record(info):
    return DevRecord(_text(info.name), info.id, info.origin_id, info.size,
                     bool(info.flags & lib.CB_DEV_READONLY), info.external_id, info.created_ns,
                     info.birth_time, info.snap_time)


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli) of ``data``, continued from ``crc`` (the core's cb_crc32c)."""
    return lib.cb_crc32c(crc, bytes(data) if not isinstance(data, (bytes, bytearray)) else data,
                         len(data))


# -- pools ------------------------------------------------------------------------


def _owned(handle):
    """A pool handle whose memory lives as long as the cdata does.

    Pool.close() shuts the pool down while other threads may still be about
    to call through the handle; the core refuses those calls (ClosedError)
    as long as the pointer is valid, and this reference keeps it valid until
    no Python object can reach it (cowblock.h, "Lifetimes").  Device handles
    likewise hold theirs until cb_dev_close runs from their cdata's gc.
    """
    lib.cb_pool_retain(handle)
    return ffi.gc(handle, lib.cb_pool_release)


class PoolHandle:
    """An open ``cb_pool *``: one method per ``cb_pool_*`` call.

    ``path`` (str) names the pool in error messages.  After :meth:`close`
    every call raises ClosedError.
    """

    __slots__ = ("_p", "path")

    def __init__(self, ptr, path):
        self._p = ptr
        self.path = path

    @classmethod
    def create(cls, path, size, block_size, *, direct, mmap, checksums):
        """``cb_pool_create`` in directory ``path`` (bytes)."""
        out = ffi.new("cb_pool **")
        flags = ((lib.CB_OPEN_DIRECT if direct else 0) | (lib.CB_OPEN_MMAP if mmap else 0)
                 | (lib.CB_CREATE_CHECKSUMS if checksums else 0))
        rc = lib.cb_pool_create(path, size, block_size, flags, out)
        if rc == -_errno.EFBIG:  # nothing is left behind: create is all or nothing
            raise errors.InvalidArgumentError(
                f"create pool in {os.fsdecode(path)!r}: a pool of size {size} bytes needs a "
                f"data file that large, and the file system (or the process's file size "
                f"limit) allows less; choose a smaller size", code=rc)
        url = is_url(path)
        if rc == lib.CB_EEXIST and url:
            raise errors.ExistsError(f"a pool exists already at {os.fsdecode(path)!r}", code=rc)
        if rc:
            _raise_located(rc, f"create pool {'at' if url else 'in'} {os.fsdecode(path)!r}")
        return cls(_owned(out[0]), os.fsdecode(path))

    @classmethod
    def open(cls, path, *, readonly, direct, mmap):
        """``cb_pool_open`` of directory ``path`` (bytes); NotFoundError if it holds no pool."""
        out = ffi.new("cb_pool **")
        flags = ((lib.CB_OPEN_READONLY if readonly else 0) | (lib.CB_OPEN_DIRECT if direct else 0)
                 | (lib.CB_OPEN_MMAP if mmap else 0))
        rc = lib.cb_pool_open(path, flags, out)
        if rc:
            if rc == lib.CB_ENOENT:
                raise errors.NotFoundError(f"no pool in {os.fsdecode(path)!r}", code=rc)
            _raise_located(rc, f"open pool {os.fsdecode(path)!r}")
        return cls(_owned(out[0]), os.fsdecode(path))

    def close(self):
        """``cb_pool_close``: drain the calls in flight, commit, shut the pool down.

        Calls through this handle (or its devices') made later, or by other
        threads meanwhile, raise ClosedError; the memory goes when the last
        reference to the handle does (see :func:`_owned`)."""
        rc = lib.cb_pool_close(self._p)
        if rc:
            raise_for(rc, f"close pool {self.path!r}")

    def flush(self):
        rc = lib.cb_pool_flush(self._p)
        if rc:
            raise_for(rc, f"flush pool {self.path!r}")

    def refresh(self):
        """``cb_pool_refresh``: a reader moves to the newest commit; its generation."""
        out = ffi.new("uint64_t *")
        rc = lib.cb_pool_refresh(self._p, out)
        if rc:
            raise_for(rc, f"refresh pool {self.path!r}")
        return out[0]

    def uuid(self):
        """The pool's 16-byte identity."""
        out = ffi.new("uint8_t[16]")
        rc = lib.cb_pool_uuid(self._p, out)
        if rc:
            raise_for(rc, f"uuid of pool {self.path!r}")
        return bytes(ffi.buffer(out, 16))

    def set_keep(self, max_blocks):
        rc = lib.cb_pool_set_keep(self._p, max_blocks)
        if rc:
            raise_for(rc, f"set keep_freed on pool {self.path!r}")

    def stat(self):
        """A :data:`Stat` of the pool's figures."""
        st = ffi.new("cb_stat *")
        rc = lib.cb_pool_stat(self._p, st)
        if rc:
            raise_for(rc, f"stat pool {self.path!r}")
        return Stat._make([getattr(st, f) for f in _STAT_FIELDS])

    def create_device(self, name, size, external=None):
        """``cb_pool_create_device``; ``external`` is the path (bytes) of a raw origin file."""
        rc = lib.cb_pool_create_device(self._p, name, size,
                                       ffi.NULL if external is None else external)
        if rc:
            raise_for(rc, f"create device {name.decode()!r}")

    def snapshot(self, source, name, readonly):
        rc = lib.cb_pool_snapshot(self._p, source, name, lib.CB_DEV_READONLY if readonly else 0)
        if rc:
            raise_for(rc, f"snapshot {source.decode()!r} as {name.decode()!r}")

    def delete(self, name):
        rc = lib.cb_pool_delete(self._p, name)
        if rc:
            raise_for(rc, f"delete device {name.decode()!r}")

    def list(self):
        """A :data:`DevRecord` for every device, in the core's order."""
        count = ffi.new("size_t *")
        while True:  # devices may come and go between the two calls
            rc = lib.cb_pool_list(self._p, ffi.NULL, 0, count)
            if rc:
                raise_for(rc, "list devices")
            n = count[0]
            arr = ffi.new("cb_devinfo[]", max(n, 1))
            rc = lib.cb_pool_list(self._p, arr, n, count)
            if rc:
                raise_for(rc, "list devices")
            if count[0] <= n:
                return [_record(arr[i]) for i in range(count[0])]

    def info(self, name):
        """The :data:`DevRecord` of device ``name``."""
        out = ffi.new("cb_devinfo *")
        rc = lib.cb_pool_info(self._p, name, out)
        if rc:
            raise_for(rc, f"describe device {name.decode()!r}")
        return _record(out)

    def has(self, name):
        """Whether device ``name`` exists (``cb_pool_info`` without the description)."""
        out = ffi.new("cb_devinfo *")
        rc = lib.cb_pool_info(self._p, name, out)
        if rc == lib.CB_ENOENT:
            return False
        if rc:
            raise_for(rc, f"look up device {name.decode()!r}")
        return True

    def external_path(self, ext_id):
        """The path of external origin ``ext_id``, as str."""
        size = lib.CB_PATH_MAX + 1
        buf = ffi.new("char[]", size)
        rc = lib.cb_pool_external_path(self._p, ext_id, buf, size)
        if rc:
            raise_for(rc, "read external origin path")
        return os.fsdecode(ffi.string(buf))

    def usage(self):
        """A :data:`UsageRecord` (in blocks) for every device, from one walk."""
        count = ffi.new("size_t *")
        n = self.stat().ndevices + 16  # one walk, unless devices are made meanwhile
        while True:  # devices may come and go: size the array until it fits
            arr = ffi.new("cb_usage[]", n)
            rc = lib.cb_pool_usage(self._p, arr, n, count)
            if rc:
                raise_for(rc, "compute usage")
            if count[0] <= n:
                break
            n = count[0]
        return [UsageRecord(_text(u.name), u.mapped, u.exclusive, u.shared, u.changed_bytes)
                for u in (arr[k] for k in range(count[0]))]

    def check(self, repair):
        """``cb_pool_check``: a dict of its counts, and its messages (one per line)."""
        out = ffi.new("cb_check *")
        size = 1 << 16
        buf = ffi.new("char[]", size)
        rc = lib.cb_pool_check(self._p, 1 if repair else 0, out, buf, size)
        if rc:
            raise_for(rc, f"check pool {self.path!r}")
        messages = [m for m in ffi.string(buf).decode("utf-8", "replace").splitlines() if m]
        return {f: getattr(out, f) for f in _CHECK_FIELDS}, messages

    def dump(self):
        """``cb_pool_dump``: the committed metadata as JSON text (bytes)."""
        out = ffi.new("char **")
        length = ffi.new("size_t *")
        rc = lib.cb_pool_dump(self._p, out, length)
        if rc:
            raise_for(rc, f"dump pool {self.path!r}")
        try:
            return ffi.unpack(out[0], length[0])
        finally:
            lib.cb_free(out[0])

    def doc_get(self, name, known_gen):
        """``cb_pool_doc_get``: ``(generation, bytes)``; generation 0 when there is
        no such document, bytes None when it is still ``known_gen``."""
        out = ffi.new("char **")
        length = ffi.new("size_t *")
        gen = ffi.new("uint64_t *")
        rc = lib.cb_pool_doc_get(self._p, name, known_gen, out, length, gen)
        if rc:
            _raise_located(rc, f"read document {name.decode()!r} of pool {self.path!r}")
        if out[0] == ffi.NULL:
            return gen[0], None
        try:
            return gen[0], ffi.unpack(out[0], length[0])
        finally:
            lib.cb_free(out[0])

    def doc_put(self, name, data):
        """``cb_pool_doc_put``: replace document ``name`` (bytes) with ``data``
        atomically, fenced; its new generation."""
        gen = ffi.new("uint64_t *")
        rc = lib.cb_pool_doc_put(self._p, name, data, len(data), gen)
        if rc:
            _raise_located(rc, f"write document {name.decode()!r} of pool {self.path!r}")
        return gen[0]

    def doc_list(self):
        """``cb_pool_doc_list``: the names of the pool's documents (str), sorted."""
        out = ffi.new("char **")
        length = ffi.new("size_t *")
        rc = lib.cb_pool_doc_list(self._p, out, length)
        if rc:
            _raise_located(rc, f"list the documents of pool {self.path!r}")
        if out[0] == ffi.NULL:
            return []
        try:
            raw = ffi.unpack(out[0], length[0])
        finally:
            lib.cb_free(out[0])
        return sorted(n.decode() for n in raw.split(b"\0") if n)

    def scrub(self, max_damage, rate):
        """A :class:`Scrub` of this pool, not started."""
        return Scrub(self, max_damage, rate)


class Scrub:
    """One ``cb_pool_scrub`` call: :meth:`run` blocks (run it in a worker thread)
    while other threads read :attr:`progress` or :meth:`cancel` it."""

    __slots__ = ("_pool", "_state", "_bad", "_count", "_max", "_rc")

    def __init__(self, pool, max_damage, rate):
        self._pool = pool
        self._state = ffi.new("cb_scrub *")
        self._state.rate_limit = rate or 0
        self._bad = ffi.new("cb_scrub_bad[]", max(max_damage, 1))
        self._count = ffi.new("size_t *")
        self._max = max_damage
        self._rc = None

    def run(self):
        self._rc = lib.cb_pool_scrub(self._pool._p, self._state, self._bad, self._max,
                                     self._count)

    def cancel(self):
        self._state.cancel = 1

    @property
    def progress(self):
        """(bytes done, bytes in all)."""
        return self._state.done_bytes, self._state.total_bytes

    def result(self, closed):
        """After :meth:`run`: a dict of the scrub's figures with ``damage``, a list of
        :data:`DamageRecord`.  ``closed``: the pool was closed meanwhile, which is what
        a cancelled scrub then reports (ClosedError)."""
        rc = self._rc
        if rc == -_errno.ECANCELED and closed:
            raise errors.ClosedError(f"pool {self._pool.path!r} was closed during the scrub")
        if rc:
            raise_for(rc, f"scrub pool {self._pool.path!r}")
        damage = []
        for k in range(min(self._count[0], self._max)):
            b = self._bad[k]
            name = ffi.string(b.name).decode("utf-8", "replace") if b.ndevices else None
            error = "checksum" if b.error == lib.CB_ECHECKSUM else strerror(b.error)
            damage.append(DamageRecord(name, b.offset, b.length, b.block, b.ndevices, error))
        st = self._state
        return {"bytes": st.done_bytes, "blocks": st.blocks, "checksums": bool(st.checksums),
                "bad": st.bad, "damage": damage}


# -- devices ------------------------------------------------------------------------

# Reads of up to _SCRATCH bytes go through a per-thread buffer (the GIL is
# dropped during the C call, so threads cannot share one), then into the
# bytes object returned by slicing a cffi buffer over it: one copy, no cdata
# allocated and no argument parsing per call (ffi.unpack parses keywords).
_SCRATCH = 64 * 1024
_local = threading.local()
_read = lib.cb_dev_read
_write = lib.cb_dev_write
_from_buffer = ffi.from_buffer
_EINVAL = lib.CB_EINVAL
_U64 = np.dtype(np.uint64)  # the native one: numpy's builtin dtypes are singletons
_DELTA = np.dtype([("block", np.uint64), ("data", np.uint64), ("zero", np.uint64)])
# Big reads: the core fills every byte on success, so no need to clear first.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def _new_scratch():
    buf = ffi.new("char[]", _SCRATCH)
    return buf, ffi.buffer(buf)


class DevHandle:
    """An open ``cb_dev *`` of device ``name``: one method per ``cb_dev_*`` call.

    The public methods here (byte and block IO, discard, flush) are those of
    :class:`cowblock.Device`, with its contract: offsets and lengths in bytes
    within the device, errors that say what was wrong.  The others, with a
    leading underscore, return raw figures for Device to dress.  The handle
    belongs to its pool: after :meth:`_drop` (the pool closing) every call
    raises ClosedError, and ``cb_dev_close`` runs when no thread can still
    reach the handle.
    """

    __slots__ = ("_h", "_name", "_size", "_readonly", "_bs")

    def __init__(self, pool, name, block_size, pool_readonly):
        """``cb_dev_open`` of device ``name`` (str) in ``pool`` (a :class:`PoolHandle`)."""
        raw = name.encode("utf-8")
        out = ffi.new("cb_dev **")
        rc = lib.cb_dev_open(pool._p, raw, out)
        if rc:
            raise_for(rc, f"open device {name!r}")
        h = ffi.gc(out[0], lib.cb_dev_close)  # closed when no thread can reach it
        info = ffi.new("cb_devinfo *")
        rc = lib.cb_dev_info(h, info)
        if rc:
            raise_for(rc, f"describe device {name!r}")
        self._h = h
        self._name = name
        self._size = info.size
        self._readonly = bool(info.flags & lib.CB_DEV_READONLY) or pool_readonly
        self._bs = block_size

    def _drop(self):
        """Forget the handle and return it: later calls raise ClosedError.  The
        caller holds it until the pool is closed, so that cb_dev_close (run
        when the last reference goes) comes after cb_pool_close."""
        h, self._h = self._h, None
        return h

    def _handle(self):
        h = self._h
        if h is None:
            raise errors.ClosedError(f"device {self._name!r}: its pool is closed")
        return h

    def _range(self, offset, length, what):
        if offset.__class__ is not int:
            offset = as_int(offset, "offset")
        if length.__class__ is not int:
            length = as_int(length, "length")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise bad(
                f"{what} of {length} bytes at offset {offset} is outside device "
                f"{self._name!r} of {self._size} bytes"
            )
        return offset, length

    # -- byte IO ---------------------------------------------------------------

    def read(self, offset, length):
        """``length`` bytes from ``offset``; unwritten ranges read as zeros."""
        # The per-call hot path (W5), cut to what it needs.  Exact ints, an
        # open handle and a length that fits the scratch go straight to the
        # core, which checks the range itself (cb_dev_read: CB_EINVAL; cffi
        # refuses a negative or 65-bit int with OverflowError).  Everything
        # else, and every failure, runs the full Python checks first
        # (_read_other, _read_failed), so the errors are exactly those of
        # checking everything up front.
        h = self._h
        if (offset.__class__ is not int or length.__class__ is not int or h is None
                or length > _SCRATCH):
            return self._read_other(offset, length)
        try:
            buf, view = _local.scratch
        except AttributeError:
            buf, view = _local.scratch = _new_scratch()
        try:
            rc = _read(h, buf, length, offset)
        except OverflowError:
            rc = _EINVAL
        if rc:
            self._read_failed(rc, offset, length)
        return view[:length]

    def _read_other(self, offset, length):
        """read() for other int types, a closed handle, or more than the scratch holds."""
        offset, length = self._range(offset, length, "read")
        h = self._handle()
        if length <= _SCRATCH:
            return self.read(offset, length)
        buf = _new_uncleared("char[]", length)
        rc = _read(h, buf, length, offset)
        if rc:
            raise_for(rc, f"read from {self._name!r}")
        return ffi.buffer(buf)[:]

    def _read_failed(self, rc, offset, length):
        self._range(offset, length, "read")  # a bad range is reported as such, first
        self._handle()
        raise_for(rc, f"read from {self._name!r}")

    def readinto(self, offset, buffer):
        """Fill ``buffer`` (any writable buffer) from ``offset``; returns its length."""
        if buffer.__class__ is bytearray:  # always writable: skip the slower check
            cbuf = _from_buffer(buffer)
        else:
            try:
                cbuf = _from_buffer(buffer, require_writable=True)
            except (TypeError, BufferError, ValueError):
                raise bad(f"readinto needs a writable buffer, not {type(buffer).__name__}") from None
        n = len(cbuf)
        h = self._h
        if offset.__class__ is not int or h is None:  # the core checks the range (see read)
            offset, n = self._range(offset, n, "read")
            h = self._handle()
        try:
            rc = _read(h, cbuf, n, offset)
        except OverflowError:
            rc = _EINVAL
        if rc:
            self._read_failed(rc, offset, n)
        return n

    def write(self, offset, data):
        """Write bytes-like ``data`` at ``offset``; returns the number of bytes written."""
        if isinstance(data, str):
            raise bad("write needs bytes-like data, not str")
        try:
            cbuf = _from_buffer(data)
        except TypeError:
            raise bad(f"write needs bytes-like data, not {type(data).__name__}") from None
        n = len(cbuf)
        if offset.__class__ is not int or not (0 <= offset and offset + n <= self._size):
            offset, n = self._range(offset, n, "write")
        if self._readonly:
            raise errors.ReadOnlyError(f"device {self._name!r} is read-only")
        h = self._h
        if h is None:
            self._handle()
        rc = _write(h, cbuf, n, offset)
        if rc:
            raise_for(rc, f"write to {self._name!r}")
        return n

    def discard(self, offset, length):
        """Make the range read as zeros; whole blocks nobody needs are freed."""
        offset, length = self._range(offset, length, "discard")
        if self._readonly:
            raise errors.ReadOnlyError(f"device {self._name!r} is read-only")
        rc = lib.cb_dev_discard(self._handle(), length, offset)
        if rc:
            raise_for(rc, f"discard on {self._name!r}")

    def flush(self):
        """Make everything written so far durable (same as :meth:`Pool.flush`)."""
        rc = lib.cb_dev_flush(self._handle())
        if rc:
            raise_for(rc, f"flush {self._name!r}")

    # -- batch IO --------------------------------------------------------------

    def _indices(self, indices):
        arr = np.asarray(indices)
        if arr.size == 0:
            return np.zeros(0, dtype=np.uint64)
        if arr.dtype.kind not in "iu":
            raise bad(f"indices must be integers, not {arr.dtype}")
        if arr.dtype.kind == "i" and (arr < 0).any():
            raise bad("indices must not be negative")
        idx = np.ascontiguousarray(arr, dtype=np.uint64).reshape(-1)
        whole = self._size // self._bs
        if int(idx.max()) >= whole:
            raise bad(
                f"block {int(idx.max())} is outside device {self._name!r} "
                f"({whole} whole blocks of {self._bs} bytes)"
            )
        return idx

    def read_blocks(self, indices, out=None):
        """Read whole blocks in one call: an (n, block_size) uint8 array."""
        # What batch callers pass, a contiguous 1-D native uint64 array, is used
        # as it is: the core checks the range (CB_EINVAL), which saves the
        # numpy reduction of _indices (most of the Python cost of a call).
        # Before any error is raised, _indices runs in full, so the errors
        # and their order are those of checking everything up front.
        if (indices.__class__ is np.ndarray and indices.dtype is _U64 and indices.ndim == 1
                and indices.flags.c_contiguous):
            idx = indices
        else:
            idx = self._indices(indices)
        n = idx.size
        if out is None:
            out = np.empty((n, self._bs), dtype=np.uint8)
        try:
            cbuf = _from_buffer(out, require_writable=True)
        except (TypeError, BufferError, ValueError):
            self._indices(idx)
            raise bad("out must be a writable buffer") from None
        if len(cbuf) != n * self._bs:
            self._indices(idx)
            raise bad(f"out must hold exactly {n} blocks of {self._bs} bytes")
        rc = lib.cb_dev_read_blocks(self._handle(), _from_buffer("uint64_t[]", idx), n, cbuf)
        if rc:
            self._indices(idx)
            raise_for(rc, f"read blocks from {self._name!r}")
        return out

    def write_blocks(self, indices, data):
        """Write whole blocks in one call; ``data`` holds n * block_size bytes."""
        idx = self._indices(indices)
        n = idx.size
        if isinstance(data, str):
            raise bad("data must be bytes-like, not str")
        try:
            cbuf = ffi.from_buffer(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data)
        except TypeError:
            raise bad(f"data must be bytes-like, not {type(data).__name__}") from None
        if len(ffi.buffer(cbuf)) != n * self._bs:
            raise bad(f"data must hold exactly {n} blocks of {self._bs} bytes")
        if self._readonly:
            raise errors.ReadOnlyError(f"device {self._name!r} is read-only")
        rc = lib.cb_dev_write_blocks(self._handle(), ffi.from_buffer("uint64_t[]", idx), n, cbuf)
        if rc:
            raise_for(rc, f"write blocks to {self._name!r}")
        return n * self._bs

    # -- what it holds (raw figures) -------------------------------------------------

    def _usage(self):
        """``cb_dev_usage``: (mapped, exclusive, shared) in blocks."""
        out = ffi.new("cb_usage *")
        rc = lib.cb_dev_usage(self._handle(), out)
        if rc:
            raise_for(rc, f"usage of {self._name!r}")
        return out.mapped, out.exclusive, out.shared

    def _changed(self, nblocks):
        """``cb_dev_changed``: the change bitmap of ``nblocks`` blocks, as uint8 bytes
        (bit i of byte i // 8, least significant first)."""
        bits = np.zeros((nblocks + 7) // 8, dtype=np.uint8)
        rc = lib.cb_dev_changed(self._handle(), ffi.from_buffer(bits), bits.size)
        if rc:
            raise_for(rc, f"changed blocks of {self._name!r}")
        return bits

    def _stamp(self):
        """``cb_dev_info``: the :data:`DevRecord` of this device as the handle sees it."""
        info = ffi.new("cb_devinfo *")
        rc = lib.cb_dev_info(self._handle(), info)
        if rc:
            raise_for(rc, f"describe device {self._name!r}")
        return _record(info)

    def _delta(self, base, start, n):
        """``cb_dev_delta`` against ``base`` (a DevHandle, or None for zeros): up to ``n``
        (block, data, zero) sub-block bitmaps from block ``start`` on, as a structured
        array, and the block to continue from."""
        out = ffi.new("cb_delta[]", n)
        count, nxt = ffi.new("size_t *"), ffi.new("uint64_t *")
        bh = ffi.NULL if base is None else base._handle()
        rc = lib.cb_dev_delta(self._handle(), bh, start, out, n, count, nxt)
        if rc:
            against = "zeros" if base is None else repr(base._name)
            raise_for(rc, f"delta of {self._name!r} against {against}")
        arr = np.frombuffer(ffi.buffer(out, count[0] * ffi.sizeof("cb_delta")), dtype=_DELTA)
        return arr.copy(), nxt[0]

    def _extents_range(self, first, nblocks, limit):
        """``cb_dev_extents_range``: up to ``limit`` (first block, blocks) runs that may
        hold data among blocks [first, first + nblocks), and the block up to which
        they are complete."""
        pairs = ffi.new("uint64_t[]", 2 * max(limit, 1))
        count = ffi.new("size_t *")
        nxt = ffi.new("uint64_t *")
        rc = lib.cb_dev_extents_range(self._handle(), first, nblocks, pairs, limit, count, nxt)
        if rc:
            raise_for(rc, f"extents of {self._name!r}")
        return [(pairs[2 * k], pairs[2 * k + 1]) for k in range(count[0])], nxt[0]

    def _extents(self):
        """``cb_dev_extents``: (first block, blocks) of each run that may hold data."""
        h = self._handle()
        count = ffi.new("size_t *")
        n = 64
        while True:
            pairs = ffi.new("uint64_t[]", 2 * n)
            rc = lib.cb_dev_extents(h, pairs, n, count)
            if rc:
                raise_for(rc, f"extents of {self._name!r}")
            if count[0] <= n:
                break
            n = count[0]
        return [(pairs[2 * k], pairs[2 * k + 1]) for k in range(count[0])]
