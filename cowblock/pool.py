"""Pools and thin devices: the public objects over the C core.

A :class:`Pool` is a directory holding a sparse data file and the metadata
of its devices.  A :class:`Device` is a thin block device in it: reads of
unwritten ranges return zeros, snapshots are O(1) and share every block
with their origin until one side writes to it.
"""
import collections
import dataclasses
import errno
import os
import threading
import weakref

import numpy as np

from . import errors
from ._lowlevel import ffi, lib, raise_for

__all__ = ["Pool", "Device", "DeviceInfo", "DeviceUsage", "PoolUsage", "CheckReport",
           "ScrubReport", "ScrubDamage"]

DEFAULT_BLOCK_SIZE = 64 * 1024
MAX_DEVICE_SIZE = lib.CB_MAX_DEV_SIZE
NAME_MAX = lib.CB_NAME_MAX


def _bad(message):
    return errors.InvalidArgumentError(message)


def _int(value, what):
    """An int argument (bools and floats refused, numpy integers accepted)."""
    if value.__class__ is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise _bad(f"{what} must be an integer, not {type(value).__name__}")
    return value.__index__()


def _path(path, what="path"):
    try:
        return os.fsencode(path)
    except TypeError:
        raise _bad(f"{what} must be a str or os.PathLike, not {type(path).__name__}") from None


def _name(name, what="device name"):
    """Encode and check a device name: 1..127 bytes of UTF-8, no '/' or NUL."""
    if not isinstance(name, str):
        raise _bad(f"{what} must be a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{what} {name!r} is not valid UTF-8") from None
    if not raw:
        raise _bad(f"{what} must not be empty")
    if len(raw) > NAME_MAX:
        raise _bad(f"{what} {name!r} is {len(raw)} bytes long; the limit is {NAME_MAX}")
    if b"/" in raw or b"\0" in raw:
        raise _bad(f"{what} {name!r} must not contain '/' or NUL")
    return raw


def _mmap_flag(mmap, direct):
    if mmap and direct:
        raise _bad("mmap and direct exclude each other: O_DIRECT bypasses the page cache "
                   "that a mapping reads")
    return lib.CB_OPEN_MMAP if mmap else 0


def _size(size, what="size"):
    size = _int(size, what)
    if size <= 0 or size % 512:
        raise _bad(f"{what} must be a positive multiple of 512 bytes, not {size}")
    if size > MAX_DEVICE_SIZE:
        raise _bad(f"{what} {size} exceeds the limit of {MAX_DEVICE_SIZE} bytes")
    return size


@dataclasses.dataclass(frozen=True)
class DeviceUsage:
    """Space a device reads from, in bytes; ``mapped == exclusive + shared``.

    ``exclusive`` is what deleting the device alone would give back;
    ``shared`` is what it shares with other devices (snapshots, origins).
    """

    mapped: int
    exclusive: int
    shared: int


@dataclasses.dataclass(frozen=True)
class PoolUsage:
    """Space of a whole pool, in bytes, with each device's share.

    ``devices`` maps each device's name to its :class:`DeviceUsage`;
    ``changed`` maps it to the bytes of the blocks it changed since it was
    made (what :meth:`Device.changed_blocks` lists, the last block counted
    up to the device's end), from the same walk.
    """

    size: int
    used: int
    block_size: int
    devices: dict
    changed: dict = dataclasses.field(default_factory=dict)

    @property
    def free(self):
        return self.size - self.used


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the pool records about a device."""

    name: str
    id: int
    size: int
    readonly: bool
    origin: "str | None"   # device it was snapshotted from, if it still exists
    external: "str | None"  # raw image file used as its read-only base
    created: float          # Unix time


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Result of :meth:`Pool.check`."""

    errors: int
    leaked_blocks: int
    leaked_pages: int
    repaired: int
    nodes: int
    mapped_entries: int
    messages: list

    @property
    def ok(self):
        """True when nothing is wrong, leaks included."""
        return self.errors == 0 and self.leaked_blocks == 0 and self.leaked_pages == 0

    @property
    def leaks(self):
        return self.leaked_blocks + self.leaked_pages


@dataclasses.dataclass(frozen=True)
class ScrubDamage:
    """One damaged sub-block found by :meth:`Pool.scrub`.

    ``device`` and ``offset`` name a place that reads it (``device`` is None
    when no device does); ``devices`` counts every device that reads it.
    ``error`` says what went wrong: "checksum", or the IO error's text.
    """

    device: "str | None"
    offset: int
    length: int
    block: int
    devices: int
    error: str


@dataclasses.dataclass(frozen=True)
class ScrubReport:
    """Result of :meth:`Pool.scrub`."""

    bytes: int          # bytes read
    blocks: int         # data blocks read
    checksums: bool     # verified against checksums (False: only read back)
    bad: int            # damaged sub-blocks found (``damage`` lists the first ones)
    damage: list

    @property
    def ok(self):
        return self.bad == 0


class Pool:
    """A pool of thin devices in a directory.  Use :meth:`create` or :meth:`open`.

    Pools are context managers; :meth:`close` commits and is idempotent.
    All methods may be called from several threads at once.
    """

    def __init__(self, handle, path, readonly):
        self._h = handle
        self._path = os.fsdecode(path)
        self._readonly = readonly
        self._devices = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._scrubs = set()  # (cb_scrub state, worker thread) of scrubs running
        st = self._stat()
        self._block_size = st.block_size
        self._size = st.nblocks * st.block_size
        self._checksums = bool(st.checksums)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def create(cls, path, size, block_size=DEFAULT_BLOCK_SIZE, *, direct=False,
               checksums=False, mmap=False, keep_freed=0):
        """Make a new pool in directory ``path`` (created if missing).

        ``size`` is the data capacity in bytes; ``block_size`` the unit of
        allocation and sharing, a power of two from 4 KiB to 1 MiB.  With
        ``direct``, data IO bypasses the page cache (O_DIRECT).  With
        ``checksums``, every data sub-block carries a CRC-32C that every read
        verifies (:class:`ChecksumError` on a mismatch; see README, "Data
        checksums", for what it costs); fixed for the pool's life.
        ``mmap`` and ``keep_freed``: see :meth:`open`.
        """
        raw = _path(path)
        size = _int(size, "size")
        block_size = _int(block_size, "block_size")
        if not (lib.CB_MIN_BLOCK_SIZE <= block_size <= lib.CB_MAX_BLOCK_SIZE) or (
            block_size & (block_size - 1)
        ):
            raise _bad(
                f"block_size must be a power of two from {lib.CB_MIN_BLOCK_SIZE} "
                f"to {lib.CB_MAX_BLOCK_SIZE} bytes, not {block_size}"
            )
        if size < block_size:
            raise _bad(f"size must hold at least one block of {block_size} bytes, not {size}")
        if os.path.exists(os.path.join(raw, b"meta")):
            raise errors.ExistsError(f"a pool exists already in {os.fsdecode(raw)!r}")
        out = ffi.new("cb_pool **")
        flags = (lib.CB_OPEN_DIRECT if direct else 0) | _mmap_flag(mmap, direct) | (
            lib.CB_CREATE_CHECKSUMS if checksums else 0)
        keep_freed = _int(keep_freed, "keep_freed")
        rc = lib.cb_pool_create(raw, size, block_size, flags, out)
        if rc == -errno.EFBIG:  # nothing is left behind: create is all or nothing
            raise errors.InvalidArgumentError(
                f"create pool in {os.fsdecode(raw)!r}: a pool of size {size} bytes needs a "
                f"data file that large, and the file system (or the process's file size "
                f"limit) allows less; choose a smaller size", code=rc)
        if rc:
            raise_for(rc, f"create pool in {os.fsdecode(raw)!r}")
        return cls(_owned(out[0]), raw, False)._kept(keep_freed)

    @classmethod
    def open(cls, path, readonly=False, *, direct=False, mmap=False, keep_freed=0):
        """Open an existing pool.  ``readonly`` pools refuse every change.

        ``keep_freed``: bytes of freed blocks to keep allocated in the data
        file for reuse (see :meth:`set_keep_freed`); 0, the default, gives
        every freed block back to the file system.

        ``direct``: data IO bypasses the page cache (O_DIRECT).

        ``mmap`` (opt-in, not with ``direct``): reads of the data file are
        served from a read-only shared memory mapping of it, with no system
        call per read (writes stay ``pwrite``, which the mapping sees at
        once).  The price, as with SQLite's ``mmap_size``: a disk error while
        reading, or the data file being truncated by someone else while the
        pool is open, kills the process with SIGBUS instead of raising an
        error; and the pages read count in the process's resident size.
        """
        raw = _path(path)
        if not os.path.isdir(raw):
            raise errors.NotFoundError(f"no pool directory at {os.fsdecode(raw)!r}")
        out = ffi.new("cb_pool **")
        flags = ((lib.CB_OPEN_READONLY if readonly else 0) | (lib.CB_OPEN_DIRECT if direct else 0)
                 | _mmap_flag(mmap, direct))
        keep_freed = _int(keep_freed, "keep_freed")
        if keep_freed and readonly:
            raise _bad("keep_freed needs a writable pool")
        rc = lib.cb_pool_open(raw, flags, out)
        if rc:
            if rc == lib.CB_ENOENT:
                raise errors.NotFoundError(f"no pool in {os.fsdecode(raw)!r}", code=rc)
            raise_for(rc, f"open pool {os.fsdecode(raw)!r}")
        return cls(_owned(out[0]), raw, bool(readonly))._kept(keep_freed)

    def _kept(self, keep_freed):
        if keep_freed:
            try:
                self.set_keep_freed(keep_freed)
            except BaseException:
                self.close()
                raise
        return self

    def set_keep_freed(self, nbytes):
        """Keep up to ``nbytes`` of freed blocks allocated in the data file.

        By default a block freed by a delete, a discard or a copy-up is
        punched out of the data file once the commit that freed it is
        durable.  Kept blocks are not: later writes take them first and land
        in space the file system has already allocated, often still in the
        page cache, which is what makes a copy-up as cheap as an overwrite
        (like dm-thin without discard passdown).  They count as free
        everywhere but in the data file's size on disk.  Lowering the bound
        gives the excess back at once; :meth:`close` gives back all of them.
        Not stored in the pool: pass it at each open.
        """
        nbytes = _int(nbytes, "keep_freed")
        if nbytes < 0:
            raise _bad(f"keep_freed must not be negative, not {nbytes}")
        rc = lib.cb_pool_set_keep(self._handle(), nbytes // self._block_size)
        if rc:
            raise_for(rc, f"set keep_freed on pool {self._path!r}")

    def close(self):
        """Commit and release the pool.  Idempotent; device objects become unusable."""
        with self._lock:
            h, self._h = self._h, None
            if h is None:
                return
            # Later calls on the devices fail in Python; their C handles are
            # closed when the cdata goes, after the pool below (then at once).
            handles = []
            for dev in list(self._devices.values()):
                handles.append(dev._h)
                dev._h = None
            self._devices.clear()
            scrubs = list(self._scrubs)
        for state, worker in scrubs:  # a scrub in another thread: stop it first
            state.cancel = 1
            worker.join()
        rc = lib.cb_pool_close(h)
        del handles
        if rc:
            raise_for(rc, f"close pool {self._path!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self):
        state = "closed" if self._h is None else f"{len(self.devices())} devices"
        return f"<cowblock.Pool {self._path!r} {state}>"

    @property
    def closed(self):
        return self._h is None

    def _handle(self):
        h = self._h
        if h is None:
            raise errors.ClosedError(f"pool {self._path!r} is closed")
        return h

    # -- properties -------------------------------------------------------------

    @property
    def path(self):
        return self._path

    @property
    def block_size(self):
        return self._block_size

    @property
    def size(self):
        """Data capacity in bytes."""
        return self._size

    @property
    def used(self):
        """Bytes of data blocks allocated (blocks in use times block size)."""
        return self._stat().used_blocks * self._block_size

    @property
    def checksums(self):
        """True if the pool keeps (and every read verifies) data checksums."""
        return self._checksums

    @property
    def readonly(self):
        return self._readonly

    @property
    def uuid(self):
        """The pool's identity: 16 bytes chosen at creation, kept for its life."""
        out = ffi.new("uint8_t[16]")
        rc = lib.cb_pool_uuid(self._handle(), out)
        if rc:
            raise_for(rc, f"uuid of pool {self._path!r}")
        return bytes(ffi.buffer(out, 16))

    def receive(self, name, fileobj, base=None, **kw):
        """Make device ``name`` from a stream read from ``fileobj`` (see
        :func:`cowblock.sendrecv.receive` for ``base``, resuming, progress)."""
        from .sendrecv import receive
        return receive(self, name, fileobj, base, **kw)

    def _stat(self):
        st = ffi.new("cb_stat *")
        rc = lib.cb_pool_stat(self._handle(), st)
        if rc:
            raise_for(rc, f"stat pool {self._path!r}")
        return st

    def flush(self):
        """Make everything written so far durable (the durability point)."""
        rc = lib.cb_pool_flush(self._handle())
        if rc:
            raise_for(rc, f"flush pool {self._path!r}")

    # -- devices ------------------------------------------------------------------

    def create_device(self, name, size, *, external=None):
        """Make a thin device of ``size`` bytes that reads as zeros.

        With ``external``, the path of an existing raw image file, the device
        reads unwritten blocks from that file, used in place and never
        written (an external origin); ``size`` may then be None for the
        file's size rounded up to 512 bytes.
        """
        raw = _name(name)
        if external is not None:
            ext = _path(external, "external")
            if not os.path.isfile(ext):
                raise errors.NotFoundError(f"external origin {os.fsdecode(ext)!r} is not a file")
            size = 0 if size is None else _size(size)
        else:
            ext = ffi.NULL
            size = _size(size)
        rc = lib.cb_pool_create_device(self._handle(), raw, size, ext)
        if rc:
            raise_for(rc, f"create device {name!r}")
        return self.device(name)

    def snapshot(self, source_name, name, readonly=False):
        """Make device ``name`` a snapshot of ``source_name``: O(1), allocates nothing."""
        src = _name(source_name, "source device name")
        raw = _name(name)
        flags = lib.CB_DEV_READONLY if readonly else 0
        rc = lib.cb_pool_snapshot(self._handle(), src, raw, flags)
        if rc:
            raise_for(rc, f"snapshot {source_name!r} as {name!r}")
        return self.device(name)

    def device(self, name):
        """The device called ``name`` (NotFoundError if there is none)."""
        raw = _name(name)
        with self._lock:
            dev = self._devices.get(name)
            if dev is not None and dev._h is not None:
                return dev
            out = ffi.new("cb_dev **")
            rc = lib.cb_dev_open(self._handle(), raw, out)
            if rc:
                raise_for(rc, f"open device {name!r}")
            dev = Device(self, ffi.gc(out[0], lib.cb_dev_close), name)
            self._devices[name] = dev
            return dev

    def _infos(self):
        h = self._handle()
        count = ffi.new("size_t *")
        while True:
            rc = lib.cb_pool_list(h, ffi.NULL, 0, count)
            if rc:
                raise_for(rc, "list devices")
            n = count[0]
            arr = ffi.new("cb_devinfo[]", max(n, 1))
            rc = lib.cb_pool_list(h, arr, n, count)
            if rc:
                raise_for(rc, "list devices")
            if count[0] <= n:
                # copy out: the cdata array is freed when this returns
                return [_RawInfo(ffi.string(a.name).decode("utf-8"), a.id, a.origin_id,
                                 a.size, a.flags, a.external_id, a.created_ns)
                        for a in (arr[i] for i in range(count[0]))]

    def devices(self):
        """Names of all devices, sorted."""
        return sorted(i.name for i in self._infos())

    def __contains__(self, name):
        try:
            raw = _name(name)
        except errors.InvalidArgumentError:
            return False
        out = ffi.new("cb_devinfo *")
        rc = lib.cb_pool_info(self._handle(), raw, out)
        if rc == lib.CB_ENOENT:
            return False
        if rc:
            raise_for(rc, f"look up device {name!r}")
        return True

    def delete(self, name):
        """Delete a device; blocks no other device needs are freed."""
        raw = _name(name)
        rc = lib.cb_pool_delete(self._handle(), raw)
        if rc:
            raise_for(rc, f"delete device {name!r}")
        with self._lock:
            self._devices.pop(name, None)

    def info(self, name):
        """A :class:`DeviceInfo` for device ``name``."""
        raw = _name(name)
        out = ffi.new("cb_devinfo *")
        rc = lib.cb_pool_info(self._handle(), raw, out)
        if rc:
            raise_for(rc, f"describe device {name!r}")
        raw_info = _RawInfo(ffi.string(out.name).decode("utf-8"), out.id, out.origin_id,
                            out.size, out.flags, out.external_id, out.created_ns)
        return self._info(raw_info, {i.id: i for i in self._infos()})

    def infos(self):
        """A :class:`DeviceInfo` for every device, sorted by name, from one listing."""
        raw = self._infos()
        by_id = {i.id: i for i in raw}
        return [self._info(i, by_id) for i in sorted(raw, key=lambda i: i.name)]

    def _info(self, i, by_id):
        origin = by_id.get(i.origin_id) if i.origin_id else None
        external = None
        if i.external_id:
            buf = ffi.new("char[]", 4096)
            rc = lib.cb_pool_external_path(self._handle(), i.external_id, buf, 4096)
            if rc:
                raise_for(rc, "read external origin path")
            external = os.fsdecode(ffi.string(buf))
        return DeviceInfo(
            name=i.name,
            id=i.id,
            size=i.size,
            readonly=bool(i.flags & lib.CB_DEV_READONLY),
            origin=origin.name if origin is not None else None,
            external=external,
            created=i.created_ns / 1e9,
        )

    def usage(self):
        """Exact space accounting for the pool and every device (one walk of all metadata,
        under the pool's exclusive lock): the way to report many devices, where
        :meth:`Device.usage` per device would walk shared trees once per device."""
        h = self._handle()
        count = ffi.new("size_t *")
        n = self._stat().ndevices + 16  # one walk, unless devices are made meanwhile
        while True:  # devices may come and go: size the array until it fits
            arr = ffi.new("cb_usage[]", n)
            rc = lib.cb_pool_usage(h, arr, n, count)
            if rc:
                raise_for(rc, "compute usage")
            if count[0] <= n:
                break
            n = count[0]
        bs = self._block_size
        devices, changed = {}, {}
        for k in range(count[0]):
            u = arr[k]
            name = ffi.string(u.name).decode("utf-8")
            devices[name] = DeviceUsage(u.mapped * bs, u.exclusive * bs, u.shared * bs)
            changed[name] = u.changed_bytes
        return PoolUsage(size=self._size, used=self.used, block_size=bs, devices=devices,
                         changed=changed)

    def stats(self):
        """Counters since open and on-disk figures, as a dict of ints."""
        st = self._stat()
        out = {f: getattr(st, f) for f in (
            "reads", "bytes_read", "writes", "bytes_written", "data_bytes_written",
            "copyups", "copyup_bytes", "commits", "punched_blocks", "generation",
            "time", "ndevices", "used_blocks", "meta_pages", "meta_file_pages",
            "checksum_failures", "kept_blocks")}
        out["checksums"] = bool(st.checksums)
        out["block_size"] = self._block_size
        out["size"] = self._size
        out["used"] = st.used_blocks * self._block_size
        out["meta_bytes"] = st.meta_pages * 4096
        out["data_bytes_on_disk"] = _disk_bytes(os.path.join(self._path, "data"))
        out["meta_bytes_on_disk"] = _disk_bytes(os.path.join(self._path, "meta"))
        return out

    def check(self, repair=False):
        """Verify all metadata against the invariants (see ``cowblock pool check``
        and the README's "Check and repair").

        A writable pool is committed first.  ``messages`` has one line per
        finding ("error: ...", "warning: ...", "leak: ...", "repaired: ..."),
        naming the page, its offset and its kind.  With ``repair``, leaked
        space is given back and a damaged superblock slot is rewritten from
        the current one; corruption is reported, never guessed at.
        """
        out = ffi.new("cb_check *")
        buf = ffi.new("char[]", 1 << 16)
        rc = lib.cb_pool_check(self._handle(), 1 if repair else 0, out, buf, 1 << 16)
        if rc:
            raise_for(rc, f"check pool {self._path!r}")
        messages = [m for m in ffi.string(buf).decode("utf-8", "replace").splitlines() if m]
        return CheckReport(
            errors=out.errors, leaked_blocks=out.leaked_blocks,
            leaked_pages=out.leaked_pages, repaired=out.repaired, nodes=out.nodes,
            mapped_entries=out.mapped_entries, messages=messages,
        )

    def scrub(self, progress=None, max_damage=1000, rate=None):
        """Read back every data block some device reads and verify it.

        Pools made with ``checksums=True`` are verified against their
        checksums; others are only read back, which finds IO errors.  Each
        shared block is read once.  The pool stays usable meanwhile, from
        other threads: writes wait for a 4 MiB slice at most.  ``rate``
        caps the scrub's reads in bytes per second.  ``progress``, if
        given, is called now and then in this thread as
        ``progress(done_bytes, total_bytes)``; an exception it raises stops
        the scrub and propagates.  Returns a :class:`ScrubReport` listing at
        most ``max_damage`` damaged sub-blocks (``bad`` counts them all).
        """
        max_damage = _int(max_damage, "max_damage")
        if max_damage < 0:
            raise _bad(f"max_damage must not be negative, not {max_damage}")
        if rate is not None:
            rate = _int(rate, "rate")
            if rate <= 0:
                raise _bad(f"rate must be a positive number of bytes per second, not {rate}")
        h = self._handle()
        state = ffi.new("cb_scrub *")
        state.rate_limit = rate or 0
        bad = ffi.new("cb_scrub_bad[]", max(max_damage, 1))
        count = ffi.new("size_t *")
        result = []

        def run():
            result.append(lib.cb_pool_scrub(h, state, bad, max_damage, count))

        worker = threading.Thread(target=run, name="cowblock-scrub", daemon=True)
        with self._lock:
            if self._h is None:
                raise errors.ClosedError(f"pool {self._path!r} is closed")
            entry = (state, worker)
            self._scrubs.add(entry)
            worker.start()
        try:
            while True:
                worker.join(0.2)
                alive = worker.is_alive()
                if progress is not None:  # at least once, with the final figures
                    progress(state.done_bytes, state.total_bytes)
                if not alive:
                    break
        except BaseException:
            state.cancel = 1  # e.g. KeyboardInterrupt: stop the scrub, then re-raise
            worker.join()
            raise
        finally:
            with self._lock:
                self._scrubs.discard(entry)
        rc = result[0]
        if rc == -errno.ECANCELED and self._h is None:
            raise errors.ClosedError(f"pool {self._path!r} was closed during the scrub")
        if rc:
            raise_for(rc, f"scrub pool {self._path!r}")
        damage = []
        for k in range(min(count[0], max_damage)):
            b = bad[k]
            name = ffi.string(b.name).decode("utf-8", "replace") if b.ndevices else None
            error = "checksum" if b.error == lib.CB_ECHECKSUM else ffi.string(
                lib.cb_strerror(b.error)).decode()
            damage.append(ScrubDamage(device=name, offset=b.offset, length=b.length,
                                      block=b.block, devices=b.ndevices, error=error))
        return ScrubReport(bytes=state.done_bytes, blocks=state.blocks,
                           checksums=bool(state.checksums), bad=state.bad, damage=damage)

    def dump(self):
        """The committed metadata as a dict, like thin_dump (see ``cowblock pool dump``).

        It shows what the last commit made durable, read back from the
        metadata file; call :meth:`flush` first to include recent changes
        (``"uncommitted"`` says whether there are any).
        """
        import json

        out = ffi.new("char **")
        length = ffi.new("size_t *")
        rc = lib.cb_pool_dump(self._handle(), out, length)
        if rc:
            raise_for(rc, f"dump pool {self._path!r}")
        try:
            text = ffi.unpack(out[0], length[0])
        finally:
            lib.cb_free(out[0])
        return json.loads(text)


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
_DELTA = np.dtype([("block", np.uint64), ("data", np.uint64), ("zero", np.uint64)])
_U64 = np.dtype(np.uint64)  # the native one: numpy's builtin dtypes are singletons
# Big reads: the core fills every byte on success, so no need to clear first.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


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


def _new_scratch():
    buf = ffi.new("char[]", _SCRATCH)
    return buf, ffi.buffer(buf)


_RawInfo = collections.namedtuple(
    "_RawInfo", "name id origin_id size flags external_id created_ns")


def _disk_bytes(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


class Device:
    """A thin block device of a pool.  Get one from :meth:`Pool.device`.

    Offsets and lengths are in bytes and must lie within the device.
    Methods may be called from several threads at once.
    """

    __slots__ = ("_h", "_pool", "_name", "_size", "_readonly", "_bs", "__weakref__")

    def __init__(self, pool, handle, name):
        self._pool = pool
        self._h = handle
        self._name = name
        info = ffi.new("cb_devinfo *")
        rc = lib.cb_dev_info(handle, info)
        if rc:
            raise_for(rc, f"describe device {name!r}")
        self._size = info.size
        self._readonly = bool(info.flags & lib.CB_DEV_READONLY) or pool.readonly
        self._bs = pool.block_size

    def __repr__(self):
        return f"<cowblock.Device {self._name!r} size={self._size}{' ro' if self._readonly else ''}>"

    @property
    def name(self):
        return self._name

    @property
    def size(self):
        return self._size

    @property
    def readonly(self):
        return self._readonly

    @property
    def pool(self):
        return self._pool

    @property
    def block_size(self):
        return self._bs

    def _handle(self):
        h = self._h
        if h is None:
            raise errors.ClosedError(f"device {self._name!r}: its pool is closed")
        return h

    def _range(self, offset, length, what):
        if offset.__class__ is not int:
            offset = _int(offset, "offset")
        if length.__class__ is not int:
            length = _int(length, "length")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise _bad(
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
                raise _bad(f"readinto needs a writable buffer, not {type(buffer).__name__}") from None
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
            raise _bad("write needs bytes-like data, not str")
        try:
            cbuf = _from_buffer(data)
        except TypeError:
            raise _bad(f"write needs bytes-like data, not {type(data).__name__}") from None
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
            raise _bad(f"indices must be integers, not {arr.dtype}")
        if arr.dtype.kind == "i" and (arr < 0).any():
            raise _bad("indices must not be negative")
        idx = np.ascontiguousarray(arr, dtype=np.uint64).reshape(-1)
        whole = self._size // self._bs
        if int(idx.max()) >= whole:
            raise _bad(
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
            raise _bad("out must be a writable buffer") from None
        if len(cbuf) != n * self._bs:
            self._indices(idx)
            raise _bad(f"out must hold exactly {n} blocks of {self._bs} bytes")
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
            raise _bad("data must be bytes-like, not str")
        try:
            cbuf = ffi.from_buffer(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data)
        except TypeError:
            raise _bad(f"data must be bytes-like, not {type(data).__name__}") from None
        if len(ffi.buffer(cbuf)) != n * self._bs:
            raise _bad(f"data must hold exactly {n} blocks of {self._bs} bytes")
        if self._readonly:
            raise errors.ReadOnlyError(f"device {self._name!r} is read-only")
        rc = lib.cb_dev_write_blocks(self._handle(), ffi.from_buffer("uint64_t[]", idx), n, cbuf)
        if rc:
            raise_for(rc, f"write blocks to {self._name!r}")
        return n * self._bs

    # -- what it holds -----------------------------------------------------------

    def usage(self):
        """:class:`DeviceUsage` of this device, from a walk of its own tree only
        (cost grows with this device's metadata, not with the pool's)."""
        out = ffi.new("cb_usage *")
        rc = lib.cb_dev_usage(self._handle(), out)
        if rc:
            raise_for(rc, f"usage of {self._name!r}")
        bs = self._bs
        return DeviceUsage(out.mapped * bs, out.exclusive * bs, out.shared * bs)

    def changed_blocks(self):
        """Virtual block numbers written or discarded through this device since it was made."""
        nblocks = -(-self._size // self._bs)
        bits = np.zeros((nblocks + 7) // 8, dtype=np.uint8)
        rc = lib.cb_dev_changed(self._handle(), ffi.from_buffer(bits), bits.size)
        if rc:
            raise_for(rc, f"changed blocks of {self._name!r}")
        flags = np.unpackbits(bits, bitorder="little")[:nblocks]
        return np.flatnonzero(flags).astype(np.uint64)

    def extents(self):
        """(offset, length) byte ranges that may hold data; the rest reads as zeros."""
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
        bs, size = self._bs, self._size
        out = []
        for k in range(count[0]):
            start = pairs[2 * k] * bs
            out.append((start, min(pairs[2 * k + 1] * bs, size - start)))
        return out

    def extents_range(self, offset, length, limit=64):
        """Where data may be in bytes [offset, offset + length), found a part at a time.

        Returns ``(runs, end)``: at most ``limit`` (offset, length) byte ranges
        that may hold data, clipped to the range, in order, and the offset
        ``end`` up to which they are complete: everything in [offset, end)
        outside them reads as zeros.  ``end`` is ``offset + length`` when the
        whole range is described, less when the walk stopped after ``limit``
        runs.  The cost grows with what is mapped in [offset, end), not with
        the device size (what an NBD block status request needs).
        """
        offset, length = self._range(offset, length, "extents")
        limit = _int(limit, "limit")
        if limit < 0:
            raise _bad(f"limit must not be negative, not {limit}")
        stop = offset + length
        if length == 0:
            return [], offset
        bs = self._bs
        first = offset // bs
        nblocks = -(-stop // bs) - first
        pairs = ffi.new("uint64_t[]", 2 * max(limit, 1))
        count = ffi.new("size_t *")
        nxt = ffi.new("uint64_t *")
        rc = lib.cb_dev_extents_range(self._handle(), first, nblocks, pairs, limit, count, nxt)
        if rc:
            raise_for(rc, f"extents of {self._name!r}")
        runs = []
        for k in range(count[0]):
            start = max(pairs[2 * k] * bs, offset)
            end = min((pairs[2 * k] + pairs[2 * k + 1]) * bs, stop)
            runs.append((start, end - start))
        return runs, max(min(nxt[0] * bs, stop), offset)
    def delta(self, base=None, start=0, max_blocks=4096):
        """Blocks from ``start`` on where this device reads otherwise than
        ``base`` (a Device of this pool, or None for all zeros), from the
        mappings alone (cb_dev_delta): a structured array of (block, data,
        zero) sub-block bitmaps, at most ``max_blocks`` long, and the block
        to continue from (the block count when done)."""
        n = max(1, _int(max_blocks, "max_blocks"))
        out = ffi.new("cb_delta[]", n)
        count, nxt = ffi.new("size_t *"), ffi.new("uint64_t *")
        bh = ffi.NULL if base is None else base._handle()
        rc = lib.cb_dev_delta(self._handle(), bh, _int(start, "start"), out, n, count, nxt)
        if rc:
            against = "zeros" if base is None else repr(base.name)
            raise_for(rc, f"delta of {self._name!r} against {against}")
        arr = np.frombuffer(ffi.buffer(out, count[0] * ffi.sizeof("cb_delta")), dtype=_DELTA)
        return arr.copy(), nxt[0]

    def _stamp(self):
        """The core's cb_devinfo of this device (id, created_ns, birth_time, flags...)."""
        info = ffi.new("cb_devinfo *")
        rc = lib.cb_dev_info(self._handle(), info)
        if rc:
            raise_for(rc, f"describe device {self._name!r}")
        return info

    def send(self, fileobj, base=None, **kw):
        """Write this device, whole or as the difference from ``base``, as a
        stream to ``fileobj`` (see :func:`cowblock.sendrecv.send`)."""
        from .sendrecv import send
        return send(self, fileobj, base, **kw)

    def open(self, mode="rb"):
        """This device as a file: an ``io.RawIOBase`` ("rb" or "r+b")."""
        from .deviceio import DeviceIO

        return DeviceIO(self, mode)
