"""A snapshotter over a pool, with the semantics of containerd's snapshotter.

Three kinds of snapshot, as in containerd:

* ``active``: writable, made by :meth:`Snapshotter.prepare` from a committed
  parent (or from nothing);
* ``view``: read-only, made by :meth:`Snapshotter.view`;
* ``committed``: frozen by :meth:`Snapshotter.commit`; only committed
  snapshots can be parents.

Each snapshot is one pool device. Keys are free-form strings (they may contain
``/`` and be long), so every key maps to a generated device name such as
``s-12-layer_abc``. The key -> device, parent, kind and labels metadata lives
in a JSON file in the pool directory, replaced atomically (write a temporary
file, fsync, rename, fsync the directory); a pool at a URL (RADOS) keeps the
same JSON as a document in its own store, replaced by one fenced, atomic op
(:class:`PoolDocument`), so every host sharing the pool sees it.

Crash consistency between that file and the pool: the file only ever names
devices that are durable in the pool. A device being created or deleted is
first recorded as *pending* in the file; if the process dies half-way the
device is left over, still named as pending, and the next mutating call (or
:meth:`Snapshotter.cleanup`) deletes it. Devices the file never named as
pending are never touched.

One Snapshotter per pool and namespace at a time is the intended use; several
instances (in one process, or on hosts sharing a RADOS pool) see each
other's changes because the document is re-read whenever it changed.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .errors import (BusyError, CorruptError, ExistsError, InvalidArgumentError,
                     NotFoundError, ReadOnlyError)

__all__ = ["Snapshotter", "Info", "Usage", "StateFile", "PoolDocument", "state_file",
           "compile_filter",
           "KIND_ACTIVE", "KIND_VIEW", "KIND_COMMITTED"]

KIND_ACTIVE = "active"
KIND_VIEW = "view"
KIND_COMMITTED = "committed"
_KINDS = (KIND_ACTIVE, KIND_VIEW, KIND_COMMITTED)

#: Size of a snapshot prepared without a parent and without ``size=``
#: (containerd's devmapper snapshotter's default base image size).
DEFAULT_SIZE = 10 * 2**30


# --------------------------------------------------------------------------
# Persistent JSON state


def state_dir(pool) -> str | None:
    """The directory that holds the state files kept beside ``pool``, or
    None for a pool at a URL, which keeps its state documents in its own
    store instead (:class:`PoolDocument`)."""
    return getattr(pool, "directory", str(pool.path))


def state_file(pool, name: str, kind: str, version: int,
               empty: Callable[[], dict]) -> "StateFile":
    """The state document ``name`` (``model.json``, ``snapshots.NS.json``,
    ``streams.json``) of ``pool``: a file of that name beside a pool in a
    directory, as it always was; for a pool at a URL (RADOS) a document of
    that name in the pool's own store, where every host that opens the pool
    sees it (state kept in a file on one host would be seen by no other)."""
    d = state_dir(pool)
    if d is None:
        return PoolDocument(pool, name, kind, version, empty)
    return StateFile(os.path.join(str(d), name), kind, version, empty)


def state_names(pool) -> list[str]:
    """The names of the state documents ``pool`` has (files in its
    directory, or documents in its store), sorted."""
    d = state_dir(pool)
    if d is None:
        return pool.documents()
    return sorted(e for e in os.listdir(str(d)) if e.endswith(".json"))


class StateFile:
    """A small JSON document in a pool directory, replaced atomically.

    :meth:`load` returns the cached document unless the file changed on disk
    since it was last read or written; :meth:`save` writes a temporary file,
    fsyncs it, renames it over the old one and fsyncs the directory, so a
    crash leaves either the old or the new document, never a mix.

    ``path`` names the document in messages.  Subclasses keep the document
    elsewhere by overriding :meth:`_fetch` and :meth:`_store`.
    """

    def __init__(self, path: str, kind: str, version: int, empty: Callable[[], dict]):
        self.path = path
        self.kind = kind
        self.version = version
        self._empty = empty
        self._doc: dict | None = None
        self._stamp: Any = None

    def _stat_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _fetch(self, known: Any) -> tuple[Any, bytes | None]:
        """``(stamp, data)``: stamp None when there is no document; data None
        when the stamp is ``known`` (the cached copy is current)."""
        stamp = self._stat_stamp()
        if stamp is None or stamp == known:
            return stamp, None
        try:
            with open(self.path, "rb") as fh:
                return stamp, fh.read()
        except FileNotFoundError:
            return None, None

    def _store(self, data: bytes) -> Any:
        """Replace the document with ``data`` atomically and durably; its new stamp."""
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return self._stat_stamp()

    def load(self) -> dict:
        """Return the document (a fresh empty one if it does not exist)."""
        known = self._stamp if self._doc is not None else None
        stamp, data = self._fetch(known)
        if self._doc is not None and stamp == self._stamp:
            return self._doc
        if stamp is None:
            doc = self._empty()
            doc.update(format=self.kind, version=self.version)
        else:
            try:
                doc = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise CorruptError(f"{self.path}: not valid JSON: {exc}") from None
            if not isinstance(doc, dict) or doc.get("format") != self.kind:
                raise CorruptError(f"{self.path}: not a {self.kind} file")
            if doc.get("version") != self.version:
                raise CorruptError(
                    f"{self.path}: unsupported {self.kind} version "
                    f"{doc.get('version')!r} (this cowblock reads version {self.version})")
        self._doc, self._stamp = doc, stamp
        return doc

    def save(self, doc: dict) -> None:
        """Replace the document with ``doc`` atomically and durably."""
        doc["format"] = self.kind
        doc["version"] = self.version
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            stamp = self._store(data)
        except BaseException:
            # callers change the cached document in place before they save
            # it: after a failed save the next load reads what is stored
            self._doc = self._stamp = None
            raise
        self._doc, self._stamp = doc, stamp


class PoolDocument(StateFile):
    """A state document kept in the store of a pool at a URL (RADOS), with
    the semantics of :class:`StateFile`.

    Why in the store: every host that opens the pool must see the same
    model; a file on one host is seen by no other.  Where in the store, and
    why there (the core's ``cb_pool_doc_*``, ``cowblock.h`` "Documents"):
    the omap of the metadata head object, written by one RADOS op that also
    asserts and bumps the fence sequence the superblock writes assert, so a
    save is atomic (the whole old or the whole new document, whatever
    happens to the writer) and fenced (a writer whose lock was broken gets
    PoolFailedError and the document stays as the newer writer left it).
    A save is ordered after every write made before it; the callers flush
    first, so the document only names durable devices, as with files.

    The stamp is the document's generation (the fence sequence its save
    set; it only grows), so :meth:`load` costs one small read of the
    generation and re-reads the document only when another instance, in
    this process or on another host, saved it since.  A read-only opener
    reads the document as it is now, without a lock.
    """

    def __init__(self, pool, name: str, kind: str, version: int, empty: Callable[[], dict]):
        super().__init__(f"{pool.path} (document {name})", kind, version, empty)
        self.pool = pool
        self.name = name

    def _fetch(self, known: Any) -> tuple[Any, bytes | None]:
        gen, data = self.pool.read_document(self.name, known or 0)
        return (gen or None), data

    def _store(self, data: bytes) -> Any:
        return self.pool.write_document(self.name, data)


# --------------------------------------------------------------------------
# Public records


@dataclass(frozen=True)
class Info:
    """What :meth:`Snapshotter.stat` reports about one snapshot.

    ``name``, ``parent``, ``kind``, ``labels``, ``created`` and ``updated``
    are containerd's ``snapshots.Info`` fields (times are Unix seconds);
    ``device`` and ``size`` are cowblock's: the pool device that holds the
    snapshot and its size in bytes.
    """

    name: str
    parent: str | None
    kind: str
    labels: dict[str, str]
    created: float
    updated: float
    device: str
    size: int


@dataclass(frozen=True)
class Usage:
    """Space a snapshot takes in the pool, in bytes.

    ``size`` is the space the snapshot alone holds (containerd's
    ``Usage.Size``): data blocks no other device references, so removing the
    snapshot would give them back. ``shared`` is what it maps and shares with
    other devices; ``mapped = size + shared``.
    """

    size: int
    shared: int
    mapped: int

    @property
    def exclusive(self) -> int:
        """The same as :attr:`size`."""
        return self.size


# --------------------------------------------------------------------------
# Filters for walk()

_CLAUSE_RE = re.compile(
    r"""^\s*(?P<field>name|parent|kind|labels\.(?:"[^"]*"|[^=!~,\s]+))\s*
        (?:(?P<op>==|!=|~=)\s*(?P<value>"[^"]*"|[^,]*?))?\s*$""",
    re.VERBOSE)
_COMMA_RE = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def _compile_filter(text: str) -> Callable[[Info], bool]:
    """Compile a containerd-style filter: ``field==value``, ``field!=value``,
    ``field~=regex`` or a bare ``field`` (present and non-empty); clauses
    joined by ``,`` must all hold. Fields: ``name``, ``parent``, ``kind``,
    ``labels.KEY`` (``labels."KEY.with.dots"``)."""
    clauses = []
    for part in _COMMA_RE.split(text):
        m = _CLAUSE_RE.match(part)
        if m is None:
            raise InvalidArgumentError(
                f"invalid filter {text!r}: expected e.g. 'kind==committed', "
                f"'parent==KEY', 'labels.KEY~=REGEX' or 'name'")
        fld, op, value = m.group("field"), m.group("op"), m.group("value")
        if value is not None:
            value = _unquote(value.strip())
        if op == "~=":
            try:
                value = re.compile(value)
            except re.error as exc:
                raise InvalidArgumentError(f"invalid regular expression in filter {text!r}: {exc}") from None
        clauses.append((fld, op, value))

    def get(info: Info, fld: str) -> str | None:
        if fld.startswith("labels."):
            return info.labels.get(_unquote(fld[len("labels."):]))
        return getattr(info, fld)

    def match(info: Info) -> bool:
        for fld, op, value in clauses:
            got = get(info, fld)
            if op is None:
                ok = bool(got)
            elif op == "==":
                ok = got == value
            elif op == "!=":
                ok = got != value
            else:
                ok = got is not None and value.search(got) is not None
            if not ok:
                return False
        return True

    return match


def compile_filter(text: str) -> Callable[[Info], bool]:
    """The predicate of one containerd-style filter string, as
    :meth:`Snapshotter.walk` takes them (InvalidArgumentError when bad)."""
    return _compile_filter(text)


def _changed_bytes(dev) -> int:
    """Bytes of the blocks ``dev`` changed since it was made (its change
    bitmap; the last block counted up to the device's end)."""
    bs = dev.pool.block_size
    return sum(min(bs, dev.size - b * bs) for b in dev.changed_blocks())


# --------------------------------------------------------------------------
# The snapshotter

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _check_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str):
        raise InvalidArgumentError(f"snapshot {what} must be a str, not {type(key).__name__}")
    if not key or "\0" in key or len(key) > 4096:
        raise InvalidArgumentError(
            f"invalid snapshot {what} {key!r}: must be 1..4096 characters without NUL")
    return key


def _check_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidArgumentError(f"labels must be a dict of str to str, not {labels!r}")
    return dict(labels)


class Snapshotter:
    """containerd-style snapshots stored as devices of ``pool``.

    ``namespace`` separates independent sets of keys on one pool (each has
    its own metadata file ``snapshots.<namespace>.json`` and device-name
    prefix). ``default_size`` is the size of a snapshot prepared without a
    parent.
    """

    def __init__(self, pool, namespace: str = "default", *,
                 default_size: int = DEFAULT_SIZE, device_prefix: str | None = None):
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise InvalidArgumentError(
                f"invalid namespace {namespace!r}: 1..32 of A-Z a-z 0-9 _ . - "
                f"starting with a letter or digit")
        if device_prefix is None:
            device_prefix = "s-" if namespace == "default" else f"{namespace}-"
        if not isinstance(device_prefix, str) or not re.match(r"^[A-Za-z0-9._-]{1,32}$", device_prefix):
            raise InvalidArgumentError(f"invalid device prefix {device_prefix!r}")
        if isinstance(default_size, bool) or not isinstance(default_size, int) or default_size <= 0:
            raise InvalidArgumentError(f"default_size must be a positive int, not {default_size!r}")
        self.pool = pool
        self.namespace = namespace
        self.device_prefix = device_prefix
        self.default_size = default_size
        self._lock = threading.RLock()
        self._file = state_file(
            pool, f"snapshots.{namespace}.json", "cowblock-snapshotter", 1,
            lambda: {"namespace": namespace, "next_id": 1, "snapshots": {}, "pending": []})
        self._file.load()

    # ---- internal helpers -------------------------------------------------

    def _doc(self) -> dict:
        return self._file.load()

    def _record(self, key: str) -> dict:
        rec = self._doc()["snapshots"].get(_check_key(key))
        if rec is None:
            raise NotFoundError(f"snapshot {key!r} not found")
        return rec

    def _info(self, key: str, rec: dict) -> Info:
        return Info(name=key, parent=rec["parent"], kind=rec["kind"],
                    labels=dict(rec["labels"]), created=rec["created"],
                    updated=rec["updated"], device=rec["device"], size=rec["size"])

    def _writable(self) -> None:
        if getattr(self.pool, "readonly", False):
            raise ReadOnlyError("the pool is open read-only; snapshots cannot change")

    def _new_device_name(self, doc: dict, key: str) -> str:
        slug = _SLUG_RE.sub("_", key).strip("_")[:24]
        while True:
            n = doc["next_id"]
            doc["next_id"] = n + 1
            name = f"{self.device_prefix}{n}" + (f"-{slug}" if slug else "")
            if name not in self.pool:
                return name

    def _finish_pending(self, doc: dict) -> list[str]:
        """Delete devices recorded as pending that no snapshot uses."""
        used = {rec["device"] for rec in doc["snapshots"].values()}
        removed = []
        for name in list(doc["pending"]):
            if name not in used and name in self.pool:
                self.pool.delete(name)
                removed.append(name)
        if removed:
            self.pool.flush()
        if doc["pending"]:
            doc["pending"] = []
            self._file.save(doc)
        return removed

    def _begin(self) -> dict:
        """Start a mutating operation: check writability, finish leftovers."""
        self._writable()
        doc = self._doc()
        if doc["pending"]:
            self._finish_pending(doc)
        return doc

    def _create(self, key: str, parent: str | None, labels: Any, readonly: bool,
                size: int | None, external: str | None):
        key = _check_key(key)
        labels = _check_labels(labels)
        with self._lock:
            doc = self._begin()
            snaps = doc["snapshots"]
            if key in snaps:
                raise ExistsError(f"snapshot {key!r} already exists")
            if parent is not None:
                prec = snaps.get(_check_key(parent, "parent"))
                if prec is None:
                    raise NotFoundError(f"parent snapshot {parent!r} not found")
                if prec["kind"] != KIND_COMMITTED:
                    raise InvalidArgumentError(
                        f"parent {parent!r} is {prec['kind']}, not committed; "
                        f"commit it first")
                if external is not None:
                    raise InvalidArgumentError("external= only applies to a snapshot without parent")
                if size is not None and size != prec["size"]:
                    raise InvalidArgumentError(
                        f"size {size} differs from the parent's size {prec['size']}; "
                        f"a snapshot has its parent's size")
                size = prec["size"]
            else:
                if external is not None:
                    external = os.path.abspath(os.fspath(external))
                    if not os.path.isfile(external):
                        raise NotFoundError(f"external base {external!r} is not a regular file")
                    if size is None:
                        size = max(512, -(-os.path.getsize(external) // 512) * 512)
                elif size is None:
                    size = self.default_size
                if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                    raise InvalidArgumentError(f"size must be a positive int, not {size!r}")

            dev_name = self._new_device_name(doc, key)
            base = dev_name + ".base" if readonly and parent is None else dev_name
            # Intent first: a crash from here on leaves only known leftovers.
            doc["pending"] = sorted({dev_name, base})
            self._file.save(doc)

            if parent is not None:
                dev = self.pool.snapshot(snaps[parent]["device"], dev_name, readonly=readonly)
            else:
                kwargs = {"external": external} if external is not None else {}
                dev = self.pool.create_device(base, size, **kwargs)
                if readonly:
                    # create_device makes writable devices: freeze an empty one.
                    dev = self.pool.snapshot(base, dev_name, readonly=True)
                    self.pool.delete(base)
            self.pool.flush()

            now = time.time()
            snaps[key] = {"device": dev_name, "parent": parent,
                          "kind": KIND_VIEW if readonly else KIND_ACTIVE,
                          "labels": labels, "created": now, "updated": now, "size": size}
            doc["pending"] = []
            self._file.save(doc)
            return dev

    # ---- containerd's Snapshotter interface --------------------------------

    def prepare(self, key: str, parent: str | None = None, labels: dict | None = None,
                *, size: int | None = None, external: str | os.PathLike | None = None):
        """Create an active (writable) snapshot ``key`` on the committed
        ``parent`` (or empty, if ``parent`` is None) and return its device.

        cowblock extensions: ``size`` sets the size of a snapshot without
        parent (default :attr:`default_size`); ``external`` makes a snapshot
        without parent whose unwritten blocks read from that existing raw file,
        used in place (its size defaults to the file's, rounded up to 512).

        Raises ExistsError if ``key`` exists, NotFoundError if ``parent``
        does not, InvalidArgumentError if ``parent`` is not committed.
        """
        return self._create(key, parent, labels, False, size, external)

    def view(self, key: str, parent: str | None = None, labels: dict | None = None,
             *, size: int | None = None, external: str | os.PathLike | None = None):
        """Create a read-only view ``key`` of the committed ``parent`` and
        return its device. Same arguments and errors as :meth:`prepare`."""
        return self._create(key, parent, labels, True, size, external)

    def commit(self, name: str, key: str, labels: dict | None = None, *,
               keep_active: bool = False) -> Info:
        """Freeze the active snapshot ``key`` as the committed snapshot ``name``.

        O(1): the committed snapshot is a read-only pool snapshot of the
        active one, so every block stays shared. As in containerd the active
        snapshot is removed afterwards, and the committed one gets ``labels``
        (not the active one's). With ``keep_active=True`` (a cowblock
        extension, how a container is committed) the active snapshot stays,
        writable, on its old parent.

        Raises NotFoundError, ExistsError if ``name`` exists, and
        InvalidArgumentError if ``key`` is a view or already committed.
        """
        name = _check_key(name, "name")
        key = _check_key(key)
        labels = _check_labels(labels)
        with self._lock:
            doc = self._begin()
            snaps = doc["snapshots"]
            rec = snaps.get(key)
            if rec is None:
                raise NotFoundError(f"snapshot {key!r} not found")
            if rec["kind"] != KIND_ACTIVE:
                raise InvalidArgumentError(
                    f"snapshot {key!r} is {rec['kind']}; only an active snapshot can be committed")
            if name in snaps:
                raise ExistsError(f"snapshot {name!r} already exists")

            dev_name = self._new_device_name(doc, name)
            doc["pending"] = [dev_name]
            self._file.save(doc)
            active = self.pool.device(rec["device"])
            changed = _changed_bytes(active)
            self.pool.snapshot(rec["device"], dev_name, readonly=True)
            self.pool.flush()

            now = time.time()
            snaps[name] = {"device": dev_name, "parent": rec["parent"], "kind": KIND_COMMITTED,
                           "labels": labels, "created": now, "updated": now, "size": rec["size"],
                           "changed": changed}
            if keep_active:
                doc["pending"] = []
                self._file.save(doc)
            else:
                del snaps[key]
                doc["pending"] = [rec["device"]]
                self._file.save(doc)
                self._finish_pending(doc)
            return self._info(name, snaps[name])

    def remove(self, key: str) -> None:
        """Remove snapshot ``key`` and give its exclusive space back.

        Raises NotFoundError, and BusyError while other snapshots have it as
        parent (remove those first).
        """
        key = _check_key(key)
        with self._lock:
            doc = self._begin()
            snaps = doc["snapshots"]
            rec = snaps.get(key)
            if rec is None:
                raise NotFoundError(f"snapshot {key!r} not found")
            children = sorted(k for k, r in snaps.items() if r["parent"] == key)
            if children:
                shown = ", ".join(repr(c) for c in children[:5])
                more = f" and {len(children) - 5} more" if len(children) > 5 else ""
                raise BusyError(
                    f"snapshot {key!r} has {len(children)} child snapshot(s): "
                    f"{shown}{more}; remove them first")
            del snaps[key]
            doc["pending"] = [rec["device"]]
            self._file.save(doc)
            self._finish_pending(doc)

    def stat(self, key: str) -> Info:
        """Return the :class:`Info` of ``key`` (NotFoundError if absent)."""
        with self._lock:
            return self._info(key, self._record(key))

    def update(self, key: str, labels: dict | None = None) -> Info:
        """Replace the labels of ``key`` (containerd's Update of
        ``labels``) and return the new Info."""
        labels = _check_labels(labels)
        with self._lock:
            self._writable()
            doc = self._doc()
            rec = self._record(key)
            rec["labels"] = labels
            rec["updated"] = time.time()
            self._file.save(doc)
            return self._info(key, rec)

    def usage(self, key: str) -> Usage:
        """Return the :class:`Usage` of ``key``: bytes it holds alone
        (``size``) and bytes it shares with other devices."""
        with self._lock:
            rec = self._record(key)
            u = self.pool.device(rec["device"]).usage()
            return Usage(size=u.exclusive, shared=u.shared, mapped=u.mapped)

    def changed(self, key: str) -> int:
        """Bytes ``key`` holds beyond its parent: the blocks it changed
        (containerd's notion of a snapshot's usage, which a layer keeps
        after children share its blocks).  Active snapshots and views are
        read from the pool's usage walk; a committed snapshot has the figure
        of the active one it was committed from."""
        with self._lock:
            rec = self._record(key)
            if rec["kind"] == KIND_COMMITTED:
                if "changed" in rec:
                    return rec["changed"]
                return _changed_bytes(self.pool.device(rec["device"]))  # older records
            return self.pool.usage().changed.get(rec["device"], 0)

    def mounts(self, key: str):
        """Return the device of the active snapshot or view ``key``.

        As in containerd, committed snapshots have no mounts: make a
        :meth:`view` of one to read it (or use :meth:`device`).
        """
        with self._lock:
            rec = self._record(key)
            if rec["kind"] == KIND_COMMITTED:
                raise InvalidArgumentError(
                    f"snapshot {key!r} is committed and has no mounts; "
                    f"create a view of it to read it")
            return self.pool.device(rec["device"])

    def walk(self, fn: Callable[[Info], Any] | None = None,
             *filters: str | Callable[[Info], bool]) -> Iterator[Info] | None:
        """Visit every snapshot, sorted by key.

        With ``fn``, call ``fn(info)`` for each and return None; without,
        return an iterator of :class:`Info`. ``filters`` are containerd-style
        strings (``"kind==committed"``, ``"parent==base"``,
        ``'labels."a.b"==x'``, ``"name~=^layer/"``; a comma joins clauses
        that must all hold) or predicates on Info; a snapshot is visited if
        any filter matches (all, when none is given).
        """
        if isinstance(fn, str):
            filters, fn = (fn, *filters), None
        preds = [f if callable(f) else _compile_filter(f) if isinstance(f, str) else None
                 for f in filters]
        if any(p is None for p in preds):
            raise InvalidArgumentError("walk filters must be strings or callables")
        with self._lock:
            infos = [self._info(k, r) for k, r in sorted(self._doc()["snapshots"].items())]
        selected = [i for i in infos if not preds or any(p(i) for p in preds)]
        if fn is None:
            return iter(selected)
        for info in selected:
            fn(info)
        return None

    def cleanup(self) -> list[str]:
        """Delete devices left over by an interrupted operation (containerd's
        Cleaner); return their names."""
        with self._lock:
            self._writable()
            return self._finish_pending(self._doc())

    # ---- cowblock extensions ---------------------------------------------

    def device(self, key: str):
        """Return the device of ``key`` whatever its kind (committed ones are
        read-only)."""
        with self._lock:
            return self.pool.device(self._record(key)["device"])

    def children(self, key: str) -> list[str]:
        """Keys of the snapshots whose parent is ``key``, sorted."""
        with self._lock:
            self._record(key)
            return sorted(k for k, r in self._doc()["snapshots"].items() if r["parent"] == key)

    def keys(self) -> list[str]:
        """Every snapshot key, sorted."""
        with self._lock:
            return sorted(self._doc()["snapshots"])

    def key_of_device(self, device_name: str) -> str | None:
        """The key whose snapshot is stored in pool device ``device_name``."""
        with self._lock:
            for k, r in self._doc()["snapshots"].items():
                if r["device"] == device_name:
                    return k
            return None

    def missing(self) -> list[str]:
        """Keys whose device no longer exists in the pool (deleted behind the
        snapshotter's back); empty when the metadata and the pool agree."""
        with self._lock:
            return sorted(k for k, r in self._doc()["snapshots"].items()
                          if r["device"] not in self.pool)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._doc()["snapshots"]

    def __len__(self) -> int:
        return len(self._doc()["snapshots"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<Snapshotter {self.namespace!r} on {self.pool.path!r}: {len(self)} snapshots>"
