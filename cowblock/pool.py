"""Pools and thin devices: the public objects over the C core.

A :class:`Pool` is a directory holding a sparse data file and the metadata
of its devices.  A :class:`Device` is a thin block device in it: reads of
unwritten ranges return zeros, snapshots are O(1) and share every block
with their origin until one side writes to it.
"""
import dataclasses
import json
import os
import re
import threading
import weakref

import numpy as np

from . import errors
from ._lowlevel import (
    MAX_BLOCK_SIZE, MAX_DEVICE_SIZE, MIN_BLOCK_SIZE, NAME_MAX, DevHandle, PoolHandle,
)
from ._lowlevel import as_int as _int
from ._lowlevel import backends, unlock_pool
from ._lowlevel import is_url as _is_url
from ._lowlevel import bad as _bad

__all__ = ["Pool", "Device", "DeviceInfo", "DeviceUsage", "PoolUsage", "CheckReport",
           "ScrubReport", "ScrubDamage", "backends"]

DEFAULT_BLOCK_SIZE = 64 * 1024


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


def _check_mmap(mmap, direct):
    if mmap and direct:
        raise _bad("mmap and direct exclude each other: O_DIRECT bypasses the page cache "
                   "that a mapping reads")


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

    def __init__(self, handle, readonly):
        self._h = handle  # a PoolHandle; None once closed
        self._path = handle.path
        self._readonly = readonly
        self._devices = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._scrubs = set()  # (Scrub, worker thread) of scrubs running
        st = handle.stat()
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
        if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE) or (
            block_size & (block_size - 1)
        ):
            raise _bad(
                f"block_size must be a power of two from {MIN_BLOCK_SIZE} "
                f"to {MAX_BLOCK_SIZE} bytes, not {block_size}"
            )
        if size < block_size:
            raise _bad(f"size must hold at least one block of {block_size} bytes, not {size}")
        url = _is_url(raw)
        if not url and os.path.exists(os.path.join(raw, b"meta")):
            raise errors.ExistsError(f"a pool exists already in {os.fsdecode(raw)!r}")
        _check_mmap(mmap, direct)
        keep_freed = _int(keep_freed, "keep_freed")
        handle = PoolHandle.create(raw, size, block_size, direct=direct, mmap=mmap,
                                   checksums=checksums)
        return cls(handle, False)._kept(keep_freed)

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
        if not _is_url(raw) and not os.path.isdir(raw):
            raise errors.NotFoundError(f"no pool directory at {os.fsdecode(raw)!r}")
        _check_mmap(mmap, direct)
        keep_freed = _int(keep_freed, "keep_freed")
        if keep_freed and readonly:
            raise _bad("keep_freed needs a writable pool")
        handle = PoolHandle.open(raw, readonly=readonly, direct=direct, mmap=mmap)
        return cls(handle, bool(readonly))._kept(keep_freed)

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
        self._handle().set_keep(nbytes // self._block_size)

    def close(self):
        """Commit and release the pool.  Idempotent; device objects become unusable."""
        with self._lock:
            h, self._h = self._h, None
            if h is None:
                return
            # Later calls on the devices fail in Python; their C handles are
            # closed when the cdata goes, after the pool below (then at once).
            handles = [dev._drop() for dev in list(self._devices.values())]
            self._devices.clear()
            scrubs = list(self._scrubs)
        for scrub, worker in scrubs:  # a scrub in another thread: stop it first
            scrub.cancel()
            worker.join()
        try:
            h.close()
        finally:
            del handles

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
        """Where the pool is: its directory, or its URL ("rados://...")."""
        return self._path

    @property
    def directory(self):
        """The pool's directory, or None for a pool at a URL (which keeps no
        files on this host: nothing can be kept beside it)."""
        return None if _is_url(os.fsencode(self._path)) else self._path

    @staticmethod
    def unlock(location):
        """Break the writer lock of the pool at ``location`` (a URL) and return
        whom it named ("" if nobody held it).

        The holder is fenced first (for RADOS: blocklisted), so that a writer
        thought dead can never write after another writer starts; its open
        pool then fails with :class:`PoolFailedError`.  A pool in a directory
        has no lock to break: its flock dies with the process holding it.
        """
        return unlock_pool(_path(location, "location"))

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
        return self._handle().uuid()

    def receive(self, name, fileobj, base=None, **kw):
        """Make device ``name`` from a stream read from ``fileobj`` (see
        :func:`cowblock.sendrecv.receive` for ``base``, resuming, progress)."""
        from .sendrecv import receive
        return receive(self, name, fileobj, base, **kw)

    def _stat(self):
        return self._handle().stat()

    def flush(self):
        """Make everything written so far durable (the durability point)."""
        self._handle().flush()

    def refresh(self):
        """Move a read-only opener to the writer's newest commit; return its generation.

        A pool opened ``readonly=True`` at a ``rados://`` URL reads the
        commit that was newest when it opened (or last refreshed), whatever
        the writer on another host does meanwhile: it is registered as that
        commit's reader, under a lease renewed in the background, and the
        writer holds back every block that commit reaches. ``refresh()``
        registers it at the newest commit and loads it; open :class:`Device`
        objects read their devices as that commit has them (one the writer
        deleted raises :class:`NotFoundError`).

        If the lease lapsed (the process stalled or lost the cluster for a
        whole lease, ``lease=`` in the URL, 30 s by default), reads raise
        :class:`StaleError` instead of returning what the writer may have
        reused since; ``refresh()`` is what makes them work again.  On a
        writer, or a reader of a pool in a directory (whose lock keeps
        writers out), it changes nothing.
        """
        return self._handle().refresh()

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
            ext = None
            size = _size(size)
        self._handle().create_device(raw, size, ext)
        return self.device(name)

    def snapshot(self, source_name, name, readonly=False):
        """Make device ``name`` a snapshot of ``source_name``: O(1), allocates nothing."""
        src = _name(source_name, "source device name")
        raw = _name(name)
        self._handle().snapshot(src, raw, readonly)
        return self.device(name)

    def device(self, name):
        """The device called ``name`` (NotFoundError if there is none)."""
        _name(name)
        with self._lock:
            dev = self._devices.get(name)
            if dev is not None and dev._h is not None:
                return dev
            dev = Device(self, name)
            self._devices[name] = dev
            return dev

    def _infos(self):
        return self._handle().list()

    def devices(self):
        """Names of all devices, sorted."""
        return sorted(i.name for i in self._infos())

    def __contains__(self, name):
        try:
            raw = _name(name)
        except errors.InvalidArgumentError:
            return False
        return self._handle().has(raw)

    def delete(self, name):
        """Delete a device; blocks no other device needs are freed."""
        raw = _name(name)
        self._handle().delete(raw)
        with self._lock:
            self._devices.pop(name, None)

    def info(self, name):
        """A :class:`DeviceInfo` for device ``name``."""
        raw = _name(name)
        record = self._handle().info(raw)
        return self._info(record, {i.id: i for i in self._infos()})

    def infos(self):
        """A :class:`DeviceInfo` for every device, sorted by name, from one listing."""
        raw = self._infos()
        by_id = {i.id: i for i in raw}
        return [self._info(i, by_id) for i in sorted(raw, key=lambda i: i.name)]

    def _info(self, i, by_id):
        origin = by_id.get(i.origin_id) if i.origin_id else None
        external = None
        if i.external_id:
            external = self._handle().external_path(i.external_id)
        return DeviceInfo(
            name=i.name,
            id=i.id,
            size=i.size,
            readonly=i.readonly,
            origin=origin.name if origin is not None else None,
            external=external,
            created=i.created_ns / 1e9,
        )

    def usage(self):
        """Exact space accounting for the pool and every device (one walk of all metadata,
        under the pool's exclusive lock): the way to report many devices, where
        :meth:`Device.usage` per device would walk shared trees once per device."""
        records = self._handle().usage()
        bs = self._block_size
        devices, changed = {}, {}
        for u in records:
            devices[u.name] = DeviceUsage(u.mapped * bs, u.exclusive * bs, u.shared * bs)
            changed[u.name] = u.changed
        return PoolUsage(size=self._size, used=self.used, block_size=bs, devices=devices,
                         changed=changed)

    def stats(self):
        """Counters since open and on-disk figures, as a dict of ints."""
        st = self._stat()
        out = {f: getattr(st, f) for f in (
            "reads", "bytes_read", "writes", "bytes_written", "data_bytes_written",
            "copyups", "copyup_bytes", "commits", "punched_blocks", "generation",
            "time", "ndevices", "used_blocks", "meta_pages", "meta_file_pages",
            "checksum_failures", "kept_blocks", "held_blocks")}
        out["checksums"] = bool(st.checksums)
        out["block_size"] = self._block_size
        out["size"] = self._size
        out["used"] = st.used_blocks * self._block_size
        out["meta_bytes"] = st.meta_pages * 4096
        where = self.directory  # a pool at a URL has no files here: None
        out["data_bytes_on_disk"] = _disk_bytes(os.path.join(where, "data")) if where else None
        out["meta_bytes_on_disk"] = _disk_bytes(os.path.join(where, "meta")) if where else None
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
        counts, messages = self._handle().check(repair)
        return CheckReport(
            errors=counts["errors"], leaked_blocks=counts["leaked_blocks"],
            leaked_pages=counts["leaked_pages"], repaired=counts["repaired"],
            nodes=counts["nodes"], mapped_entries=counts["mapped_entries"], messages=messages,
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
        scrub = self._handle().scrub(max_damage, rate)
        worker = threading.Thread(target=scrub.run, name="cowblock-scrub", daemon=True)
        with self._lock:
            if self._h is None:
                raise errors.ClosedError(f"pool {self._path!r} is closed")
            entry = (scrub, worker)
            self._scrubs.add(entry)
            worker.start()
        try:
            while True:
                worker.join(0.2)
                alive = worker.is_alive()
                if progress is not None:  # at least once, with the final figures
                    progress(*scrub.progress)
                if not alive:
                    break
        except BaseException:
            scrub.cancel()  # e.g. KeyboardInterrupt: stop the scrub, then re-raise
            worker.join()
            raise
        finally:
            with self._lock:
                self._scrubs.discard(entry)
        res = scrub.result(closed=self._h is None)
        damage = [ScrubDamage(*d) for d in res["damage"]]
        return ScrubReport(bytes=res["bytes"], blocks=res["blocks"], checksums=res["checksums"],
                           bad=res["bad"], damage=damage)

    def dump(self):
        """The committed metadata as a dict, like thin_dump (see ``cowblock pool dump``).

        It shows what the last commit made durable, read back from the
        metadata file; call :meth:`flush` first to include recent changes
        (``"uncommitted"`` says whether there are any).
        """
        return json.loads(self._handle().dump())

    # -- documents ----------------------------------------------------------------

    def read_document(self, name, known_generation=0):
        """Document ``name`` kept in the pool's store (a pool at a URL; see
        ``cowblock.h``, "Documents"), as it is now: ``(generation, data)``.
        Generation 0: there is no such document; data None: the document is
        still at ``known_generation``.  A pool in a directory keeps its
        documents as files beside it instead (InvalidArgumentError here)."""
        return self._handle().doc_get(_doc_name(name), known_generation)

    def write_document(self, name, data):
        """Replace document ``name`` with ``data`` (bytes) in one atomic,
        fenced op, after every write made before it, and return its new
        generation.  Flush first: this does not commit.  PoolFailedError
        when another writer took the pool over (the document is unchanged);
        InvalidArgumentError past the size limit (8 MiB)."""
        return self._handle().doc_put(_doc_name(name), bytes(data))

    def documents(self):
        """The names of the documents kept in the pool's store, sorted."""
        return self._handle().doc_list()


def _doc_name(name):
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9._-]{1,64}$", name):
        raise errors.InvalidArgumentError(
            f"invalid document name {name!r}: 1..64 of A-Z a-z 0-9 . _ -")
    return name.encode()


def _disk_bytes(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


class Device(DevHandle):
    """A thin block device of a pool.  Get one from :meth:`Pool.device`.

    Offsets and lengths are in bytes and must lie within the device.
    Methods may be called from several threads at once.  The IO methods
    (read, readinto, write, discard, flush, read_blocks, write_blocks) are
    those of :class:`cowblock._lowlevel.DevHandle`: one Python frame per call.
    """

    __slots__ = ("_pool", "__weakref__")

    def __init__(self, pool, name):
        super().__init__(pool._handle(), name, pool.block_size, pool.readonly)
        self._pool = pool

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

    # -- what it holds -----------------------------------------------------------

    def usage(self):
        """:class:`DeviceUsage` of this device, from a walk of its own tree only
        (cost grows with this device's metadata, not with the pool's)."""
        mapped, exclusive, shared = self._usage()
        bs = self._bs
        return DeviceUsage(mapped * bs, exclusive * bs, shared * bs)

    def changed_blocks(self):
        """Virtual block numbers written or discarded through this device since it was made."""
        nblocks = -(-self._size // self._bs)
        bits = self._changed(nblocks)
        flags = np.unpackbits(bits, bitorder="little")[:nblocks]
        return np.flatnonzero(flags).astype(np.uint64)

    def extents(self):
        """(offset, length) byte ranges that may hold data; the rest reads as zeros."""
        bs, size = self._bs, self._size
        out = []
        for first, blocks in self._extents():
            start = first * bs
            out.append((start, min(blocks * bs, size - start)))
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
        found, nxt = self._extents_range(first, nblocks, limit)
        runs = []
        for start_block, blocks in found:
            start = max(start_block * bs, offset)
            end = min((start_block + blocks) * bs, stop)
            runs.append((start, end - start))
        return runs, max(min(nxt * bs, stop), offset)

    def delta(self, base=None, start=0, max_blocks=4096):
        """Blocks from ``start`` on where this device reads otherwise than
        ``base`` (a Device of this pool, or None for all zeros), from the
        mappings alone (cb_dev_delta): a structured array of (block, data,
        zero) sub-block bitmaps, at most ``max_blocks`` long, and the block
        to continue from (the block count when done)."""
        n = max(1, _int(max_blocks, "max_blocks"))
        return self._delta(base, _int(start, "start"), n)

    def send(self, fileobj, base=None, **kw):
        """Write this device, whole or as the difference from ``base``, as a
        stream to ``fileobj`` (see :func:`cowblock.sendrecv.send`)."""
        from .sendrecv import send
        return send(self, fileobj, base, **kw)

    def open(self, mode="rb"):
        """This device as a file: an ``io.RawIOBase`` ("rb" or "r+b")."""
        from .deviceio import DeviceIO

        return DeviceIO(self, mode)
