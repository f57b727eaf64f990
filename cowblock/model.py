"""The Docker model on a pool: images, layers, containers, volumes and binds.

* A :class:`Layer` is a read-only device: a committed snapshot of its
  parent layer with the changes it made. A base layer is imported from a raw
  image file (only its data is copied), or uses the file in place as its
  read-only base (an *external* base, dm-thin's external origin).
* An :class:`Image` is a name for a chain of layers, base first.
* A :class:`Container` is the writable layer on top of an image: a snapshot
  of the image's top layer. It can be committed into a new layer and image,
  reset to the image, and removed, which gives its space back.
* A :class:`Volume` is a device outside every chain; it outlives containers
  and can be attached to several.
* A :class:`Bind` attaches an existing raw (sparse) image file as it is.

Devices are managed through a :class:`~cowblock.snapshotter.Snapshotter` in
the namespace ``model`` (keys ``layer/<id>``, ``container/<name>@<n>``,
``volume/<name>``); the model itself (image names, layer notes, containers,
attachments, binds) is kept in ``model.json`` in the pool directory, replaced
atomically (in a pool at a URL, RADOS, as the document ``model.json`` in the
pool's own store, replaced by one fenced atomic op: snapshotter.PoolDocument,
so that every host sharing the pool sees the same model). ``model.json`` only names snapshots that exist: new snapshots are
made before they are recorded, and records are dropped before their
snapshots are removed, so an interrupted operation can only leave unnamed
snapshots behind, which :meth:`Store.prune` removes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import numpy as np

from .errors import (BusyError, CorruptError, ExistsError, InvalidArgumentError,
                     NotFoundError, PoolFullError, ReadOnlyError)
from .imagefile import (RawImageFile, TransferResult, check_raw_file, export_raw, import_raw,
                        open_source)
from .snapshotter import Snapshotter, StateFile, Usage, state_file, state_names

__all__ = ["Store", "Image", "Layer", "Container", "Volume", "Bind", "check"]

#: The snapshotter namespace and device-name prefix of the model's devices,
#: and the file beside the pool's that holds the model itself.
NAMESPACE = "model"
DEVICE_PREFIX = "m-"
STATE_FILE = "model.json"
_TABLES = ("images", "layers", "containers", "volumes", "binds")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}$")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{what} name must be a str, not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise InvalidArgumentError(
            f"invalid {what} name {name!r}: 1..255 characters of A-Z a-z 0-9 "
            f"_ . : / @ + -, starting with a letter or digit")
    return name


def _changed_bytes(dev) -> int | None:
    """Bytes of the blocks ``dev`` changed since it was snapshotted (from the
    core's change bitmap), or None when the device cannot tell."""
    try:
        blocks = dev.changed_blocks()
    except (AttributeError, NotImplementedError):
        return None
    bs = dev.pool.block_size
    starts = np.asarray(blocks, dtype=np.uint64).astype(np.int64) * bs
    return int(np.minimum(bs, dev.size - starts).clip(min=0).sum())


def device_usages(pool) -> dict:
    """``{device name: DeviceUsage}`` for every device of ``pool``, exact, from
    one walk of the pool's metadata (not one call per device)."""
    return dict(pool.usage().devices)


def _state_file(pool) -> StateFile:
    return state_file(pool, STATE_FILE, "cowblock-model", 1, lambda: {t: {} for t in _TABLES})


def _namespaces(pool) -> list[str]:
    """The model's snapshotter namespace and every other one with a state
    file (``snapshots.<namespace>.json``) in the pool directory, or such a
    document in the store of a pool at a URL."""
    found = {NAMESPACE}
    for entry in state_names(pool):
        if entry.startswith("snapshots.") and entry.endswith(".json"):
            found.add(entry[len("snapshots."):-len(".json")])
    return sorted(found)


def check(pool) -> list[str]:
    """What is wrong with the state kept beside ``pool``'s metadata: the
    model (``model.json``) and every snapshotter namespace.  Each problem is
    one sentence naming the file and the record; an empty list means they
    agree with each other and with the pool.  Reads only.

    Checked: each file parses as its format and version; every snapshot a
    namespace records has its device; every model record has the fields it
    needs, names snapshots the model's namespace holds, and names layers,
    images, volumes and binds that exist; bind files exist.
    """
    problems: list[str] = []
    snaps: Snapshotter | None = None
    for ns in _namespaces(pool):
        prefix = DEVICE_PREFIX if ns == NAMESPACE else None
        try:
            sn = Snapshotter(pool, ns, device_prefix=prefix)
            missing = sn.missing()
        except InvalidArgumentError:
            continue  # a file of that shape that no snapshotter could have made
        except CorruptError as exc:
            problems.append(str(exc))
            continue
        except (KeyError, TypeError, AttributeError) as exc:
            where = state_file(pool, f"snapshots.{ns}.json", "", 0, dict).path
            problems.append(f"{where}: "
                            f"malformed ({type(exc).__name__}: {exc})")
            continue
        if ns == NAMESPACE:
            snaps = sn
        problems += [f"snapshot {k!r} (namespace {ns}) has no device in the pool"
                     for k in missing]
    sf = _state_file(pool)
    path = sf.path  # the file, or the document in a RADOS pool's store
    try:
        doc = sf.load()
    except CorruptError as exc:
        return problems + [str(exc)]
    for t in _TABLES:
        if not isinstance(doc.get(t), dict):
            problems.append(f"{path}: table {t!r} is missing or not an object")
            doc[t] = {}

    def bad(what: str, why: str) -> None:
        problems.append(f"{path}: {what}: {why}")

    def snapshot(what: str, rec: Any) -> None:
        key = rec.get("key") if isinstance(rec, dict) else None
        if not isinstance(key, str):
            bad(what, "no snapshot key")
        elif snaps is not None and key not in snaps:
            bad(what, f"its snapshot {key!r} does not exist")

    layers, images = doc["layers"], doc["images"]
    for lid, rec in sorted(layers.items()):
        snapshot(f"layer {lid}", rec)
        if isinstance(rec, dict) and rec.get("parent") is not None and rec["parent"] not in layers:
            bad(f"layer {lid}", f"its parent layer {rec['parent']!r} does not exist")
    for name, rec in sorted(images.items()):
        if not isinstance(rec, dict) or rec.get("top") not in layers:
            bad(f"image {name!r}", "its top layer does not exist")
    for name, rec in sorted(doc["containers"].items()):
        snapshot(f"container {name!r}", rec)
        if not isinstance(rec, dict):
            continue
        if rec.get("image") not in images:
            bad(f"container {name!r}", f"its image {rec.get('image')!r} does not exist")
        attached = rec.get("attached", [])
        for item in attached if isinstance(attached, list) else [None]:
            if (not isinstance(item, list) or len(item) != 2 or item[0] not in ("volume", "bind")
                    or item[1] not in doc[item[0] + "s"]):
                bad(f"container {name!r}", f"attachment {item!r} does not exist")
    for name, rec in sorted(doc["volumes"].items()):
        snapshot(f"volume {name!r}", rec)
    for name, rec in sorted(doc["binds"].items()):
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            bad(f"bind {name!r}", "no file path")
        elif not os.path.exists(rec["path"]):
            bad(f"bind {name!r}", f"its file {rec['path']!r} does not exist")
    return problems


IMAGE_STREAM_MAGIC = b"\x89CBIMGS\n"
IMAGE_STREAM_FORMAT = "cowblock-image-stream"


def _crc32c(data: bytes) -> int:
    from .stream import crc32c
    return crc32c(data)


def _read_exact(src, n: int, what: str) -> bytes:
    out = b""
    while len(out) < n:
        b = src.read(n - len(out))
        if not b:
            raise CorruptError(f"image stream: truncated inside {what}")
        out += b
    return out


def _read_manifest(src) -> dict:
    """The manifest at the start of an image stream, checked."""
    if _read_exact(src, len(IMAGE_STREAM_MAGIC), "the magic") != IMAGE_STREAM_MAGIC:
        raise CorruptError("not a cowblock image stream (bad magic)")
    (n,) = struct.unpack("<I", _read_exact(src, 4, "the manifest length"))
    if n > 16 << 20:
        raise CorruptError(f"image stream: manifest of {n} bytes is over the limit")
    body = _read_exact(src, n, "the manifest")
    (crc,) = struct.unpack("<I", _read_exact(src, 4, "the manifest checksum"))
    if crc != _crc32c(body):
        raise CorruptError("image stream: the manifest is damaged (bad checksum)")
    try:
        m = json.loads(body)
        if m.get("format") != IMAGE_STREAM_FORMAT or m.get("version") != 1:
            raise ValueError("not version 1 of the image stream format")
        for e in m["layers"]:
            for k in ("id", "parent", "comment", "created", "size", "sent", "origin", "device"):
                e[k]
        m["image"], m["top"], m["created"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptError(f"image stream: the manifest is not valid: {exc!r}") from None
    return m


def _new_id() -> str:
    """A random 256-bit identifier in hex, like Docker's layer and container
    IDs (an identifier, not a content digest)."""
    return secrets.token_hex(32)


class _Backed:
    """An object whose content is a snapshot of the store's snapshotter."""

    @property
    def key(self) -> str:
        """The snapshot key of its device (a container's changes on reset)."""
        return self._rec["key"]

    @property
    def device(self):
        """Its device: read-only for a layer, writable otherwise."""
        return self.store.snapshotter.device(self.key)

    @property
    def created(self) -> float:
        """Creation time, Unix seconds."""
        return self._rec["created"]

    def usage(self) -> Usage:
        """Exclusive (``size``) and shared bytes of its device."""
        return self.store.snapshotter.usage(self.key)


class Layer(_Backed):
    """A read-only layer: a committed snapshot, identified by a 64-hex ``id``.

    ``parent`` is the layer below (None for a base layer); ``device`` the
    read-only pool device; ``external`` the raw file used in place as the
    read-only base (base layers only, else None); ``comment`` what made it.
    """

    def __init__(self, store: "Store", layer_id: str):
        self.store = store
        self.id = layer_id

    @property
    def _rec(self) -> dict:
        rec = self.store._doc()["layers"].get(self.id)
        if rec is None:
            raise NotFoundError(f"layer {self.id[:12]} no longer exists")
        return rec

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]

    @property
    def parent(self) -> "Layer | None":
        """The layer below, or None for a base layer."""
        p = self._rec["parent"]
        return Layer(self.store, p) if p else None

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self.store.snapshotter.stat(self.key).size

    @property
    def external(self) -> str | None:
        """Path of the raw file used in place as this layer's base, if any."""
        return self._rec.get("external")

    @property
    def comment(self) -> str:
        """What made the layer (``import PATH``, a commit comment, ...)."""
        return self._rec.get("comment", "")

    @property
    def changed(self) -> int | None:
        """Bytes of the blocks this layer changed relative to its parent
        (all the data it holds, for a base layer), measured when it was made;
        None if unknown."""
        return self._rec.get("changed")

    @property
    def imported(self) -> TransferResult | None:
        """For a layer imported from a raw file: the byte counts of the import."""
        r = self._rec.get("imported")
        return TransferResult(**r) if r else None

    def chain(self) -> list["Layer"]:
        """This layer and its ancestors, base first."""
        out = []
        layer: Layer | None = self
        while layer is not None:
            out.append(layer)
            layer = layer.parent
        return out[::-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and other.store is self.store and other.id == self.id

    def __hash__(self) -> int:
        return hash(("layer", self.id))

    def __repr__(self) -> str:
        return f"<Layer {self.short_id}>"


class _Named:
    """An object of the model known by its name: a record in model.json."""

    _table = ""  # the record's table in model.json
    _noun = ""   # what error messages call it

    def __init__(self, store: "Store", name: str):
        self.store = store
        self.name = name

    @property
    def _rec(self) -> dict:
        rec = self.store._doc()[self._table].get(self.name)
        if rec is None:
            raise NotFoundError(f"{self._noun} {self.name!r} not found")
        return rec

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.store is self.store and other.name == self.name

    def __hash__(self) -> int:
        return hash((self._noun, self.name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Image(_Named):
    """A named chain of read-only layers (base first, see :attr:`layers`)."""

    _table = "images"
    _noun = "image"

    @property
    def top(self) -> Layer:
        """The top layer (what containers start from)."""
        return Layer(self.store, self._rec["top"])

    @property
    def layers(self) -> list[Layer]:
        """The layers, base first."""
        return self.top.chain()

    @property
    def device(self):
        """The read-only device of the top layer: the image's content."""
        return self.top.device

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self.top.size

    @property
    def created(self) -> float:
        """Creation time, Unix seconds."""
        return self._rec["created"]

    def history(self) -> list[Layer]:
        """The layers, top first (``docker history`` order)."""
        return self.layers[::-1]

    def export(self, path, *, overwrite: bool = False, progress=None) -> TransferResult:
        """Write the image's content to a raw image at ``path`` (see
        :func:`cowblock.imagefile.export_raw` for what ``path`` may be)."""
        return export_raw(self.device, path, overwrite=overwrite, progress=progress)

    def export_qcow2(self, directory, *, overwrite: bool = False) -> dict:
        """Write the image to ``directory`` as a qcow2 backing chain, one file
        per layer holding only that layer's changes (see
        :func:`cowblock.qcow2chain.export_chain`; needs qemu-img)."""
        from .qcow2chain import export_chain
        return export_chain(self, directory, overwrite=overwrite)

    def containers(self) -> list["Container"]:
        """Containers created from this image."""
        return [c for c in self.store.containers() if c._rec["image"] == self.name]

    def add_layer(self, changes: Callable[[Any], Any] | Mapping | Iterable,
                  comment: str = "") -> Layer:
        """Add a layer on top of the image and return it.

        ``changes`` is either a function called with a writable device that
        starts as a copy of the image (it may write and discard), or
        ``{offset: data}`` / an iterable of ``(offset, data)`` writes. The
        image then names the longer chain; containers already created keep
        the layer they were created on.
        """
        return self.store._add_layer(self.name, changes, comment)

    def remove(self) -> None:
        """Remove the image (see :meth:`Store.remove_image`)."""
        self.store.remove_image(self.name)


class Container(_Named, _Backed):
    """The writable layer of a container: a snapshot of its image's top layer."""

    _table = "containers"
    _noun = "container"

    @property
    def id(self) -> str:
        """A 64-hex identifier."""
        return self._rec["id"]

    @property
    def image(self) -> Image:
        """The image the container was created from."""
        return Image(self.store, self._rec["image"])

    @property
    def layer(self) -> Layer:
        """The read-only layer the container's writable layer sits on."""
        return Layer(self.store, self._rec["layer"])

    @property
    def attachments(self) -> list["Volume | Bind"]:
        """Attached volumes and binds, in attachment order."""
        out: list[Volume | Bind] = []
        for kind, name in self._rec["attached"]:
            out.append(Volume(self.store, name) if kind == "volume" else self.store.get_bind(name))
        return out

    @property
    def changed(self) -> int | None:
        """Bytes of the blocks the writable layer changed since it was
        created or reset (from the core's change bitmap); None if unknown."""
        return _changed_bytes(self.device)

    def commit(self, image_name: str, comment: str = "") -> Image:
        """Freeze the writable layer's current content as a new layer on the
        container's layer, named by a new image ``image_name``; return it.

        O(1): the new layer is a read-only snapshot sharing every block. The
        container keeps running on its own layer, as with ``docker commit``.
        """
        return self.store._commit_container(self.name, image_name, comment)

    def export(self, path, *, overwrite: bool = False, progress=None) -> TransferResult:
        """Write the container's current content to a raw image at ``path``
        (see :func:`cowblock.imagefile.export_raw` for what ``path`` may be)."""
        return export_raw(self.device, path, overwrite=overwrite, progress=progress)

    def reset(self) -> None:
        """Drop every change: the writable layer becomes a fresh snapshot of
        the image's (current) top layer. Attachments stay."""
        self.store._reset_container(self.name)

    def remove(self) -> None:
        """Remove the container: detach everything, delete the writable
        layer and give its exclusive space back."""
        self.store.remove_container(self.name)

    def attach(self, target: "Volume | Bind") -> None:
        """Attach a volume or a bind (ExistsError if already attached)."""
        self.store._attach(self.name, target)

    def detach(self, target: "Volume | Bind") -> None:
        """Detach a volume or a bind (NotFoundError if not attached)."""
        self.store._detach(self.name, target)


class Volume(_Named, _Backed):
    """A device outside every chain; outlives containers, attachable to several."""

    kind = "volume"

    _table = "volumes"
    _noun = "volume"

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self.store.snapshotter.stat(self.key).size

    @property
    def containers(self) -> list[Container]:
        """Containers the volume is attached to."""
        return self.store._attached_to("volume", self.name)

    def remove(self) -> None:
        """Remove the volume (BusyError while attached to a container)."""
        self.store.remove_volume(self.name)


class Bind(RawImageFile):
    """An existing raw image file attached as it is, with the Device surface
    (``read``, ``readinto``, ``write``, ``discard``, ``flush``, ``size``,
    ``extents``). Writes go straight to the file; ``discard`` punches holes.
    The store keeps it open until :meth:`Store.close`.
    """

    kind = "bind"

    def __init__(self, store: "Store", name: str, path: str, readonly: bool):
        super().__init__(path, readonly=readonly, name=name)
        self.store = store

    @property
    def containers(self) -> list[Container]:
        """Containers the bind is attached to."""
        return self.store._attached_to("bind", self.name)

    def remove(self) -> None:
        """Forget the bind (BusyError while attached); the file stays."""
        self.store.remove_bind(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bind) and other.store is self.store and other.name == self.name

    def __hash__(self) -> int:
        return hash(("bind", self.name))

    def __repr__(self) -> str:
        return f"<Bind {self.name!r} -> {self.path!r}>"


def _apply_changes(dev, changes) -> None:
    if callable(changes):
        changes(dev)
        return
    items = changes.items() if isinstance(changes, Mapping) else changes
    try:
        iterator = iter(items)
    except TypeError:
        raise InvalidArgumentError(
            "changes must be a function of a device, a {offset: data} mapping "
            "or an iterable of (offset, data)") from None
    for item in iterator:
        try:
            offset, data = item
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"a change must be (offset, data), not {item!r}") from None
        dev.write(offset, data)


class Store:
    """The Docker model on ``pool``; every change is persisted at once.

    One Store per pool at a time. :meth:`close` closes open binds (the pool
    stays open: it belongs to the caller). A Store is also a context manager.
    """

    def __init__(self, pool):
        self.pool = pool
        self.snapshotter = Snapshotter(pool, NAMESPACE, device_prefix=DEVICE_PREFIX)
        self._file = _state_file(pool)
        self._lock = threading.RLock()
        self._binds: dict[str, Bind] = {}
        self._file.load()

    # ---- plumbing ---------------------------------------------------------

    def _doc(self) -> dict:
        return self._file.load()

    def _save(self, doc: dict) -> None:
        self._file.save(doc)

    def _writable(self) -> None:
        if getattr(self.pool, "readonly", False):
            raise ReadOnlyError("the pool is open read-only; the model cannot change")

    def refresh(self) -> int:
        """Move a read-only Store's pool to the writer's newest commit; its generation.

        The model's documents are always read as they are now, the pool's
        devices as of its open or last refresh (:meth:`cowblock.Pool.refresh`):
        after this, every image, layer and container the model names can be
        read, as the writer last committed them.
        """
        with self._lock:
            return self.pool.refresh()

    def close(self) -> None:
        """Close the files of open binds. Idempotent."""
        with self._lock:
            for b in self._binds.values():
                b.close()
            self._binds.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- layers and images ------------------------------------------------

    def layer(self, layer_id: str) -> Layer:
        """The layer with this id, or with this unique id prefix (4+ hex digits)."""
        if not isinstance(layer_id, str):
            raise InvalidArgumentError(f"layer id must be a str, not {type(layer_id).__name__}")
        layers = self._doc()["layers"]
        if layer_id in layers:
            return Layer(self, layer_id)
        if len(layer_id) >= 4:
            found = [i for i in layers if i.startswith(layer_id)]
            if len(found) == 1:
                return Layer(self, found[0])
            if len(found) > 1:
                raise InvalidArgumentError(f"layer id prefix {layer_id!r} is ambiguous")
        raise NotFoundError(f"layer {layer_id!r} not found")

    def layers(self) -> list[Layer]:
        """Every layer, oldest first."""
        items = sorted(self._doc()["layers"].items(), key=lambda kv: (kv[1]["created"], kv[0]))
        return [Layer(self, i) for i, _ in items]

    def _named(self, cls, kind: str, name: str):
        """The ``kind`` ("image", "container", "volume") called ``name``, as ``cls``."""
        if name not in self._doc()[kind + "s"]:
            raise NotFoundError(f"{kind} {name!r} not found")
        return cls(self, name)

    def _every(self, cls, kind: str) -> list:
        return [cls(self, n) for n in sorted(self._doc()[kind + "s"])]

    def image(self, name: str) -> Image:
        """The image called ``name`` (NotFoundError)."""
        return self._named(Image, "image", name)

    def images(self) -> list[Image]:
        """Every image, sorted by name."""
        return self._every(Image, "image")

    def _new_layer_record(self, doc, lid, parent, comment, **extra) -> dict:
        rec = {"key": f"layer/{lid}", "parent": parent, "comment": comment,
               "created": time.time()}
        rec.update(extra)
        doc["layers"][lid] = rec
        return rec

    def import_image(self, name: str, path: str | os.PathLike, *, external: bool = False,
                     size: int | None = None, comment: str | None = None,
                     progress=None) -> Image:
        """Create image ``name`` with one base layer made from raw file ``path``.

        By default the file's data is copied into the layer (holes and
        all-zero blocks skipped; counts in ``image.top.imported``). With
        ``external=True`` nothing is copied: the layer reads unwritten blocks
        from the file in place, which must then not change while the layer
        exists. ``size`` defaults to the file's size rounded up to 512.
        ``path`` may be a block device when its data is copied; container
        formats (qcow2, VMDK, ...) are refused (see
        :func:`cowblock.imagefile.open_source`). ``progress(done, total)`` is
        called as the file is read.
        """
        _check_name(name, "image")
        path = os.path.abspath(os.fspath(path))
        with self._lock:
            self._writable()
            if name in self._doc()["images"]:
                raise ExistsError(f"image {name!r} already exists")
            fd, fsize = open_source(path)
            os.close(fd)
            if external and not os.path.isfile(path):
                raise InvalidArgumentError(
                    f"{path!r} is not a regular file: an external base is read in place "
                    f"and must be one; a block device can be imported by copying its data")
            if size is None:
                size = max(512, -(-fsize // 512) * 512)
            lid = _new_id()
            staging = f"import/{lid}"
            key = f"layer/{lid}"
            imported = None
            changed = 0
            try:
                if external:
                    self.snapshotter.prepare(staging, size=size, external=path)
                else:
                    dev = self.snapshotter.prepare(staging, size=size)
                    try:
                        res = import_raw(dev, path, progress=progress)
                    except PoolFullError as exc:
                        raise PoolFullError(f"import of {path!r} as image {name!r}: "
                                            f"{getattr(exc, 'detail', exc)}") from None
                    imported = {"size": res.size, "copied": res.copied,
                                "holes": res.holes, "zeros": res.zeros}
                    changed = dev.usage().mapped
                self.snapshotter.commit(key, staging, {"cowblock.layer": lid})
            except BaseException:
                if staging in self.snapshotter:
                    self.snapshotter.remove(staging)
                raise
            doc = self._doc()
            self._new_layer_record(
                doc, lid, None, comment if comment is not None else f"import {path}",
                external=path if external else None, imported=imported, changed=changed)
            now = time.time()
            doc["images"][name] = {"top": lid, "created": now, "updated": now}
            self._save(doc)
            return Image(self, name)

    def import_qcow2(self, name: str, path: str | os.PathLike) -> Image:
        """Create image ``name`` from the qcow2 backing chain whose top file
        is ``path``: one layer per file, base first, each a snapshot of the
        one below holding only what its file holds, so the layers share
        blocks as the files do (see :mod:`cowblock.qcow2chain`; needs
        qemu-img).  The chain is checked before anything is made; on any
        error the layers made so far are removed again."""
        from . import qcow2chain as Q
        _check_name(name, "image")
        path = os.path.abspath(os.fspath(path))
        with self._lock:
            self._writable()
            if name in self._doc()["images"]:
                raise ExistsError(f"image {name!r} already exists")
            members = Q.read_chain(path, self.pool.block_size)
            side = Q.sidecar_for(path, members)
            made: list[str] = []
            staging = None
            try:
                with Q.PrivateServer(self.pool, readonly=False) as srv:
                    parent = None
                    for k, m in enumerate(members):
                        lid = _new_id()
                        staging = f"import/{lid}"
                        if parent is None:
                            dev = self.snapshotter.prepare(staging, size=m["size"])
                        else:
                            dev = self.snapshotter.prepare(staging, f"layer/{parent}")
                        Q.fill_layer(srv, dev, m, members[k - 1] if k else None)
                        dev.flush()
                        changed = dev.usage().mapped if parent is None else _changed_bytes(dev)
                        self.snapshotter.commit(f"layer/{lid}", staging, {"cowblock.layer": lid})
                        staging = None
                        made.append(lid)
                        note = side["layers"][k] if side else {}
                        doc = self._doc()
                        rec = self._new_layer_record(
                            doc, lid, parent, note.get("comment") or f"import qcow2 {m['filename']}",
                            changed=changed)
                        if isinstance(note.get("created"), (int, float)):
                            rec["created"] = note["created"]
                        self._save(doc)
                        parent = lid
                doc = self._doc()
                now = time.time()
                doc["images"][name] = {"top": made[-1], "created": now, "updated": now}
                self._save(doc)
            except BaseException:
                self._undo_layers(staging, made)
                raise
            return Image(self, name)

    def create_image(self, name: str, size: int, *, fs: str = "ext4",
                     label: str | None = None, comment: str | None = None) -> Image:
        """Create image ``name`` whose base layer is an empty ``fs`` file
        system ("ext4" or "xfs") of ``size`` bytes, ready to be mounted
        once mapped (``cowblock device map``) and to take containers.

        The file system is made on a sparse scratch file and imported like
        :meth:`import_image` (only its metadata takes space); needs the
        mkfs tool (e2fsprogs, xfsprogs), not root.
        """
        import tempfile
        from .mapping.mkfs import mkfs_file
        _check_name(name, "image")
        with self._lock:
            if name in self._doc()["images"]:
                raise ExistsError(f"image {name!r} already exists")
        with tempfile.TemporaryDirectory(prefix="cowblock-mkfs-") as tmp:
            path = os.path.join(tmp, f"{fs}.img")
            mkfs_file(path, size, fs, label)
            return self.import_image(name, path, size=size,
                                     comment=comment if comment is not None else f"empty {fs}")

    def _add_layer(self, image_name: str, changes, comment: str) -> Layer:
        with self._lock:
            self._writable()
            top = self.image(image_name).top
            lid = _new_id()
            staging = f"build/{lid}"
            try:
                dev = self.snapshotter.prepare(staging, top.key)
                _apply_changes(dev, changes)
                dev.flush()
                changed = _changed_bytes(dev)
                self.snapshotter.commit(f"layer/{lid}", staging, {"cowblock.layer": lid})
            except BaseException:
                if staging in self.snapshotter:
                    self.snapshotter.remove(staging)
                raise
            doc = self._doc()
            self._new_layer_record(doc, lid, top.id, comment or "add layer", changed=changed)
            doc["images"][image_name]["top"] = lid
            doc["images"][image_name]["updated"] = time.time()
            self._save(doc)
            return Layer(self, lid)

    def remove_image(self, name: str) -> list[str]:
        """Remove image ``name`` and the layers nothing else uses; return
        the ids of the layers removed.

        Refused (BusyError) while a container was created from the image or
        another image is built on it (its top layer is below another image's
        top). Layers another image, a container or a child layer still uses
        are kept. An external base file is never touched.
        """
        with self._lock:
            self._writable()
            doc = self._doc()
            img = self.image(name)
            users = sorted(c for c, r in doc["containers"].items() if r["image"] == name)
            if users:
                raise BusyError(
                    f"image {name!r} is used by container(s) {', '.join(map(repr, users))}; "
                    f"remove them first")
            top = img.top.id
            chains = {n: [l.id for l in Image(self, n).layers] for n in doc["images"] if n != name}
            dependents = sorted(n for n, ids in chains.items() if top in ids and ids[-1] != top)
            if dependents:
                raise BusyError(
                    f"image {name!r} has dependent child image(s) "
                    f"{', '.join(map(repr, dependents))}; remove them first")
            used = {i for ids in chains.values() for i in ids}
            used |= {r["layer"] for r in doc["containers"].values()}
            doomed: list[str] = []
            for layer in img.history():
                lid = layer.id
                if lid in used:
                    break
                child_layers = {i for i, r in doc["layers"].items() if r["parent"] == lid}
                if child_layers - set(doomed):
                    break
                doomed_keys = {doc["layers"][i]["key"] for i in doomed}
                if set(self.snapshotter.children(layer.key)) - doomed_keys:
                    break
                doomed.append(lid)
            keys = [doc["layers"][i]["key"] for i in doomed]
            del doc["images"][name]
            for lid in doomed:
                del doc["layers"][lid]
            self._save(doc)
            for key in keys:  # top first: children before parents
                self.snapshotter.remove(key)
            return doomed

    # ---- containers -------------------------------------------------------

    def container(self, name: str) -> Container:
        """The container called ``name`` (NotFoundError)."""
        return self._named(Container, "container", name)

    def containers(self) -> list[Container]:
        """Every container, sorted by name."""
        return self._every(Container, "container")

    def create_container(self, name: str, image: Image | str) -> Container:
        """Create container ``name``: a writable snapshot of ``image``'s top layer."""
        _check_name(name, "container")
        image_name = image.name if isinstance(image, Image) else image
        with self._lock:
            self._writable()
            if name in self._doc()["containers"]:
                raise ExistsError(f"container {name!r} already exists")
            top = self.image(image_name).top
            key = f"container/{name}@1"
            self.snapshotter.prepare(key, top.key, {"cowblock.container": name})
            doc = self._doc()
            doc["containers"][name] = {"id": _new_id(), "image": image_name, "layer": top.id,
                                       "key": key, "gen": 1, "created": time.time(),
                                       "attached": []}
            self._save(doc)
            return Container(self, name)

    def _commit_container(self, name: str, image_name: str, comment: str) -> Image:
        _check_name(image_name, "image")
        with self._lock:
            self._writable()
            c = self.container(name)
            if image_name in self._doc()["images"]:
                raise ExistsError(f"image {image_name!r} already exists")
            lid = _new_id()
            parent = c.layer.id
            dev = c.device
            dev.flush()
            changed = _changed_bytes(dev)
            self.snapshotter.commit(f"layer/{lid}", c.key, {"cowblock.layer": lid},
                                    keep_active=True)
            doc = self._doc()
            self._new_layer_record(doc, lid, parent, comment or f"commit of container {name}",
                                   changed=changed)
            now = time.time()
            doc["images"][image_name] = {"top": lid, "created": now, "updated": now}
            self._save(doc)
            return Image(self, image_name)

    def _reset_container(self, name: str) -> None:
        with self._lock:
            self._writable()
            c = self.container(name)
            rec = c._rec
            top = c.image.top
            old_key = rec["key"]
            gen = rec["gen"] + 1
            key = f"container/{name}@{gen}"
            self.snapshotter.prepare(key, top.key, {"cowblock.container": name})
            doc = self._doc()
            rec = doc["containers"][name]
            rec.update(key=key, gen=gen, layer=top.id)
            self._save(doc)
            self.snapshotter.remove(old_key)

    def remove_container(self, name: str) -> None:
        """Remove container ``name``, detaching what is attached and giving
        its writable layer's exclusive space back."""
        with self._lock:
            self._writable()
            self.container(name)
            doc = self._doc()
            key = doc["containers"].pop(name)["key"]
            self._save(doc)
            self.snapshotter.remove(key)

    def _target(self, target) -> tuple[str, str]:
        if isinstance(target, Volume):
            self.volume(target.name)
            return ("volume", target.name)
        if isinstance(target, Bind):
            self.get_bind(target.name)
            return ("bind", target.name)
        raise InvalidArgumentError(f"can only attach a Volume or a Bind, not {target!r}")

    def _attach(self, name: str, target) -> None:
        with self._lock:
            self._writable()
            self.container(name)
            entry = list(self._target(target))
            doc = self._doc()
            attached = doc["containers"][name]["attached"]
            if entry in attached:
                raise ExistsError(f"{entry[0]} {entry[1]!r} is already attached to container {name!r}")
            attached.append(entry)
            self._save(doc)

    def _detach(self, name: str, target) -> None:
        with self._lock:
            self._writable()
            self.container(name)
            entry = list(self._target(target))
            doc = self._doc()
            attached = doc["containers"][name]["attached"]
            if entry not in attached:
                raise NotFoundError(f"{entry[0]} {entry[1]!r} is not attached to container {name!r}")
            attached.remove(entry)
            self._save(doc)

    def _attached_to(self, kind: str, name: str) -> list[Container]:
        return [Container(self, c) for c, r in sorted(self._doc()["containers"].items())
                if [kind, name] in r["attached"]]

    # ---- volumes ----------------------------------------------------------

    def volume(self, name: str) -> Volume:
        """The volume called ``name`` (NotFoundError)."""
        return self._named(Volume, "volume", name)

    def volumes(self) -> list[Volume]:
        """Every volume, sorted by name."""
        return self._every(Volume, "volume")

    def create_volume(self, name: str, size: int) -> Volume:
        """Create an empty volume of ``size`` bytes (reads as zeros)."""
        _check_name(name, "volume")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgumentError(f"volume size must be a positive int, not {size!r}")
        with self._lock:
            self._writable()
            if name in self._doc()["volumes"]:
                raise ExistsError(f"volume {name!r} already exists")
            key = f"volume/{name}"
            if key in self.snapshotter:  # left over by an interrupted removal
                self.snapshotter.remove(key)
            self.snapshotter.prepare(key, size=size, labels={"cowblock.volume": name})
            doc = self._doc()
            doc["volumes"][name] = {"key": key, "created": time.time()}
            self._save(doc)
            return Volume(self, name)

    def remove_volume(self, name: str) -> None:
        """Remove a volume and give its space back (BusyError while attached)."""
        with self._lock:
            self._writable()
            vol = self.volume(name)
            users = [c.name for c in vol.containers]
            if users:
                raise BusyError(
                    f"volume {name!r} is attached to container(s) {', '.join(map(repr, users))}; "
                    f"detach it or remove them first")
            doc = self._doc()
            key = doc["volumes"].pop(name)["key"]
            self._save(doc)
            self.snapshotter.remove(key)

    # ---- binds ------------------------------------------------------------

    def bind(self, name: str, path: str | os.PathLike, *, readonly: bool = False) -> Bind:
        """Record raw image file ``path`` as bind ``name`` and return it open.

        The file is used as it is, never copied; it must exist.
        """
        _check_name(name, "bind")
        path = os.path.abspath(os.fspath(path))
        with self._lock:
            self._writable()
            if name in self._doc()["binds"]:
                raise ExistsError(f"bind {name!r} already exists")
            b = Bind(self, name, path, bool(readonly))
            try:
                check_raw_file(path)
            except BaseException:
                b.close()
                raise
            doc = self._doc()
            doc["binds"][name] = {"path": path, "readonly": bool(readonly), "created": time.time()}
            self._save(doc)
            self._binds[name] = b
            return b

    def get_bind(self, name: str) -> Bind:
        """The bind called ``name``, opened on first use (NotFoundError)."""
        with self._lock:
            rec = self._doc()["binds"].get(name)
            if rec is None:
                raise NotFoundError(f"bind {name!r} not found")
            b = self._binds.get(name)
            if b is None or b.closed:
                b = self._binds[name] = Bind(self, name, rec["path"], rec["readonly"])
            return b

    def binds(self) -> list[Bind]:
        """Every bind, sorted by name (opened on first use)."""
        return [self.get_bind(n) for n in sorted(self._doc()["binds"])]

    def bind_names(self) -> list[str]:
        """Names of every bind, sorted, without opening the files."""
        return sorted(self._doc()["binds"])

    def bind_path(self, name: str) -> str:
        """The file path of bind ``name`` without opening it."""
        rec = self._doc()["binds"].get(name)
        if rec is None:
            raise NotFoundError(f"bind {name!r} not found")
        return rec["path"]

    def remove_bind(self, name: str) -> None:
        """Forget bind ``name`` (BusyError while attached); the file is kept."""
        with self._lock:
            self._writable()
            if name not in self._doc()["binds"]:
                raise NotFoundError(f"bind {name!r} not found")
            users = [c for c, _ in self._attached_names("bind", name)]
            if users:
                raise BusyError(
                    f"bind {name!r} is attached to container(s) {', '.join(map(repr, users))}; "
                    f"detach it or remove them first")
            doc = self._doc()
            del doc["binds"][name]
            self._save(doc)
            b = self._binds.pop(name, None)
            if b is not None:
                b.close()

    def _device_size(self, name: str) -> int | None:
        try:
            return self.pool.device(name).size
        except NotFoundError:
            return None

    def _attached_names(self, kind: str, name: str):
        return [(c, r) for c, r in sorted(self._doc()["containers"].items())
                if [kind, name] in r["attached"]]

    # ---- maintenance and accounting --------------------------------------

    def prune(self) -> list[str]:
        """Remove snapshots of the model's namespace that the model does not
        name (left by an interrupted operation); return their keys."""
        with self._lock:
            self._writable()
            doc = self._doc()
            named = {r["key"] for r in doc["layers"].values()}
            named |= {r["key"] for r in doc["containers"].values()}
            named |= {r["key"] for r in doc["volumes"].values()}
            removed: list[str] = []
            progress = True
            while progress:
                progress = False
                for key in self.snapshotter.keys():
                    if key not in named and not self.snapshotter.children(key):
                        self.snapshotter.remove(key)
                        removed.append(key)
                        progress = True
            self.snapshotter.cleanup()
            return removed

    # ---- moving images between pools (streams) ----------------------------

    def _layer_identities(self, layer: Layer) -> dict:
        """What a manifest says of a layer: the identity of its content
        wherever it was made (kept across receives), and of its device here
        (what its device stream names)."""
        from .sendrecv import identity_of
        here = identity_of(layer.device).as_dict()
        return {"origin": layer._rec.get("origin") or here, "device": here}

    def send_image(self, name: str, out, base: str | None = None) -> dict:
        """Write image ``name`` to ``out`` as an image stream: a manifest of
        the image and of every layer of its chain (id, parent, comment,
        times, identities), then one device stream per layer sent, base
        first -- full for a base layer, else incremental against its parent.
        ``base``: an image the receiver has; the layers of its chain are
        left out (they must be the bottom of this image's chain).  Returns
        what was sent."""
        from .sendrecv import send as send_device
        img = self.image(name)
        chain = img.layers
        have = {layer.id for layer in self.image(base).layers} if base is not None else set()
        kept = [layer.id in have for layer in chain]
        if kept != sorted(kept, reverse=True):
            raise InvalidArgumentError(
                f"image {base!r} is not a base of image {name!r}: its layers are not the "
                f"bottom of {name!r}'s chain")
        entries = []
        for layer, left_out in zip(chain, kept):
            rec = layer._rec
            entries.append({"id": layer.id, "parent": rec["parent"], "comment": rec.get("comment", ""),
                            "created": rec["created"], "changed": rec.get("changed"),
                            "imported": rec.get("imported"), "size": layer.size,
                            "sent": not left_out, **self._layer_identities(layer)})
        irec = img._rec
        manifest = {"format": IMAGE_STREAM_FORMAT, "version": 1, "image": name,
                    "created": irec["created"], "top": img.top.id, "layers": entries}
        body = json.dumps(manifest, sort_keys=True).encode()
        out.write(IMAGE_STREAM_MAGIC + struct.pack("<I", len(body)) + body
                  + struct.pack("<I", _crc32c(body)))
        totals = {"layers": 0, "data_bytes": 0, "stream_bytes": len(body) + 16}
        for layer, left_out in zip(chain, kept):
            if left_out:
                continue
            parent = layer.parent
            res = send_device(layer.device, out, parent.device if parent else None, progress=False)
            totals["layers"] += 1
            totals["data_bytes"] += res["data_bytes"]
            totals["stream_bytes"] += res["stream_bytes"]
        return totals

    def receive_image(self, src, name: str | None = None) -> Image:
        """Make an image from an image stream read from ``src`` (see
        :meth:`send_image`), named as in the stream or ``name``.  Layers the
        stream leaves out must be here already (same id and content
        identity); a layer sent that is here already is checked and not
        made again.  Each new layer is a snapshot of its parent with its
        stream applied, so the chain shares blocks as the source's does.
        Nothing is recorded until every stream has been verified; on any
        error the layers made so far are removed again."""
        from . import stream as S
        from .sendrecv import apply_stream, sub_block_size
        manifest = _read_manifest(src)
        name = _check_name(name or manifest["image"], "image")
        entries = manifest["layers"]
        with self._lock:
            self._writable()
            doc = self._doc()
            if name in doc["images"]:
                raise ExistsError(f"image {name!r} already exists")
            local = doc["layers"]
            prev = None
            for e in entries:
                if e["parent"] != prev:
                    raise CorruptError(f"image stream: layer {e['id'][:12]}'s parent is "
                                       f"{str(e['parent'])[:12]}, not the layer before it")
                prev = e["id"]
                here = local.get(e["id"])
                if here is not None and (here.get("origin") or self._layer_identities(
                        Layer(self, e["id"]))["origin"]) != e["origin"]:
                    raise InvalidArgumentError(
                        f"layer {e['id'][:12]} here is not the layer of that id in the stream "
                        f"(its content has another origin)")
                if here is None and not e["sent"]:
                    raise NotFoundError(
                        f"the image stream of {manifest['image']!r} leaves out layer "
                        f"{e['id'][:12]}, which this pool does not have: receive its base "
                        f"image first, or send without --from")
            if not entries or entries[-1]["id"] != manifest["top"]:
                raise CorruptError("image stream: the last layer is not the image's top")
            made: list[str] = []
            staging = None
            try:
                for k, e in enumerate(entries):
                    if not e["sent"]:
                        continue
                    reader = S.StreamReader(src, more_follows=True)
                    h = reader.header
                    parent = entries[k - 1] if k else None
                    want_base = S.Identity.from_dict(parent["device"]) if parent else None
                    if (h.block_size != self.pool.block_size
                            or h.sub_block_size != sub_block_size(self.pool.block_size)):
                        raise S.StreamError(f"layer {e['id'][:12]}: the stream is for a block "
                                            f"size of {h.block_size} bytes; this pool's is "
                                            f"{self.pool.block_size}")
                    if (h.source != S.Identity.from_dict(e["device"]) or h.base != want_base
                            or h.size != e["size"]):
                        raise S.StreamError(f"layer {e['id'][:12]}: its device stream is not the "
                                            f"one the manifest names")
                    if e["id"] in local:  # here already: check the stream, keep ours
                        for _ in reader:
                            pass
                        continue
                    lid = e["id"]
                    staging = f"receive/{lid}"
                    if parent is None:
                        dev = self.snapshotter.prepare(staging, size=e["size"])
                    else:
                        dev = self.snapshotter.prepare(staging, f"layer/{parent['id']}")
                    apply_stream(reader, dev)
                    dev.flush()
                    self.snapshotter.commit(f"layer/{lid}", staging, {"cowblock.layer": lid})
                    staging = None
                    made.append(lid)
                    doc = self._doc()
                    rec = self._new_layer_record(doc, lid, e["parent"], e["comment"],
                                                 changed=e["changed"], imported=e["imported"],
                                                 origin=e["origin"], received=time.time())
                    rec["created"] = e["created"]
                    self._save(doc)
                if src.read(1):
                    raise S.StreamError("image stream: bytes after the last layer's stream")
                doc = self._doc()
                doc["images"][name] = {"top": manifest["top"], "created": manifest["created"],
                                       "updated": time.time()}
                self._save(doc)
            except BaseException:
                self._undo_layers(staging, made)
                raise
            return Image(self, name)

    def _undo_layers(self, staging: str | None, made: list) -> None:
        """Take back what a failed import or receive made: its staging snapshot, then the
        layers in ``made``, newest first (each record before its snapshot)."""
        if staging is not None and staging in self.snapshotter:
            self.snapshotter.remove(staging)
        for lid in reversed(made):
            doc = self._doc()
            doc["layers"].pop(lid, None)
            self._save(doc)
            self.snapshotter.remove(f"layer/{lid}")

    def df(self) -> dict:
        """Space used, like ``docker system df -v``: every figure in bytes,
        from the pool's exact per-device accounting.

        Returns a dict with ``pool`` (size, used, block_size and, when the
        pool reports them, data_bytes_on_disk, meta_bytes and
        meta_bytes_on_disk), ``images``, ``layers``, ``containers``,
        ``volumes``, ``binds``, ``snapshots`` (those of other snapshotter
        namespaces, e.g. containerd's) and ``other`` (pool devices that
        belong to none of these).
        """
        doc = self._doc()
        walk = self.pool.usage()  # one walk for every device, not one per device
        devs = walk.devices
        snaps = {i.name: i for i in self.snapshotter.walk()}

        def space(key: str) -> dict:
            info = snaps.get(key)
            u = devs.get(info.device) if info else None
            return {"device": info.device if info else None,
                    "size": info.size if info else 0,
                    "mapped": u.mapped if u else 0,
                    "exclusive": u.exclusive if u else 0,
                    "shared": u.shared if u else 0}

        layers = []
        layer_space = {}
        for layer in self.layers():
            rec = doc["layers"][layer.id]
            s = space(rec["key"])
            layer_space[layer.id] = s
            layers.append({"id": layer.id, "parent": rec["parent"], "comment": rec.get("comment", ""),
                           "external": rec.get("external"), "created": rec["created"],
                           "changed": rec.get("changed"), **s})
        images = []
        for img in self.images():
            ids = [l.id for l in img.layers]
            images.append({"name": img.name, "top": ids[-1], "layers": len(ids),
                           "size": layer_space[ids[-1]]["size"],
                           "changed": sum(doc["layers"][i].get("changed") or 0 for i in ids),
                           "exclusive": sum(layer_space[i]["exclusive"] for i in ids),
                           "created": img.created,
                           "containers": sorted(c for c, r in doc["containers"].items()
                                                if r["image"] == img.name)})
        attached_to: dict = {}  # (kind, name) -> containers, in one pass over them
        containers = []
        for name, rec in sorted(doc["containers"].items()):
            for kind, target in rec["attached"]:
                users = attached_to.setdefault((kind, target), [])
                if name not in users[-1:]:
                    users.append(name)
            info = snaps.get(rec["key"])
            changed = walk.changed.get(info.device) if info else None
            containers.append({"name": name, "image": rec["image"], "layer": rec["layer"],
                               "created": rec["created"], "changed": changed,
                               "attached": [f"{k}:{n}" for k, n in rec["attached"]],
                               **space(rec["key"])})
        volumes = []
        for name, rec in sorted(doc["volumes"].items()):
            volumes.append({"name": name, "created": rec["created"],
                            "attached_to": attached_to.get(("volume", name), []),
                            **space(rec["key"])})
        binds = []
        for name, rec in sorted(doc["binds"].items()):
            try:
                st = os.stat(rec["path"])
                size, on_disk = st.st_size, st.st_blocks * 512
            except FileNotFoundError:
                size = on_disk = None
            binds.append({"name": name, "path": rec["path"], "readonly": rec["readonly"],
                          "size": size, "on_disk": on_disk,
                          "attached_to": attached_to.get(("bind", name), [])})
        model_devices = {s["device"] for s in layer_space.values()}
        model_devices |= {c["device"] for c in containers} | {v["device"] for v in volumes}
        snapshots = self._namespace_snapshots(walk)
        model_devices |= {s["device"] for s in snapshots}
        other = []
        strays = [n for n in sorted(devs) if n not in model_devices]
        if len(strays) * 4 > len(devs):
            # many: one listing of the pool costs less than a handle each
            sizes = {i.name: i.size for i in self.pool.infos()}
        else:
            sizes = {n: self._device_size(n) for n in strays}
        for dev_name in strays:
            u = devs[dev_name]
            size = sizes.get(dev_name)
            other.append({"device": dev_name, "size": size, "mapped": u.mapped,
                          "exclusive": u.exclusive, "shared": u.shared})
        pool = {"path": str(self.pool.path), "size": self.pool.size, "used": self.pool.used,
                "block_size": self.pool.block_size}
        stats = self.pool.stats()
        for k in ("data_bytes_on_disk", "meta_bytes", "meta_bytes_on_disk"):
            if stats.get(k) is not None:  # a pool at a URL has no files to measure
                pool[k] = int(stats[k])
        return {"pool": pool, "images": images, "layers": layers, "containers": containers,
                "volumes": volumes, "binds": binds, "snapshots": snapshots, "other": other}

    def _namespace_snapshots(self, walk) -> list[dict]:
        """The snapshots of every other snapshotter namespace of the pool
        (``cowblock snapshotter serve`` keeps containerd's in one), with
        both figures: ``changed`` (bytes beyond the parent, what containerd
        reports as usage) and ``exclusive`` (what removing it gives back)."""
        out = []
        for ns in _namespaces(self.pool):
            if ns == NAMESPACE:
                continue
            try:
                sn = Snapshotter(self.pool, ns)
                infos = list(sn.walk())
            except (InvalidArgumentError, CorruptError):
                continue  # reported by check()
            for info in infos:
                u = walk.devices.get(info.device)
                changed = (sn.changed(info.name) if info.kind == "committed"
                           else walk.changed.get(info.device))
                out.append({"namespace": ns, "key": info.name, "kind": info.kind,
                            "parent": info.parent, "device": info.device, "size": info.size,
                            "changed": changed, "mapped": u.mapped if u else 0,
                            "exclusive": u.exclusive if u else 0,
                            "shared": u.shared if u else 0})
        return out
