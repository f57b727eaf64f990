"""Raw bytes of a pool's two stores ("meta" and "data"), whatever the backend.

The damage tests (test_corrupt.py, test_checksums.py) and the crash harness read and change
stored bytes behind the pool's back: ``open_stores(location, ceph)`` gives an object with

* ``read(store, off=0, length=None)``: bytes ``[off, off + length)`` of the store (to its end
  when ``length`` is None); what was never written reads as zeros;
* ``write(store, off, data)``: those bytes replaced, nothing else touched;
* ``flip(store, off, mask=1)``: one byte's bits flipped in place;
* ``replace(store, data)``: the store's whole content (and size) set to ``data``;
* ``size(store)``: the bytes the store spans.

``FileStores`` works on the files ``DIR/meta`` and ``DIR/data``.  ``RadosStores`` works on the
RADOS objects of a ``rados://POOL/NAME`` pool, laid out as csrc/blockio_rados.h says: the head
object ``NAME.S`` keeps the xattrs ``cb.osize``, ``cb.head``, ``cb.size``, ``cb.seq`` and,
for the meta store, bytes ``[0, cb.head)`` of the store (the two superblock slots) as its own
data; byte ``X >= cb.head`` lives in object ``NAME.S.%016x`` (``X // cb.osize``) at
``X % cb.osize``; an absent object reads as zeros.  It drives the ``rados`` command rather
than a librados binding of its own, so that it reads and writes the objects as any other
client would, behind the back of the pool under test.  It also lists, removes, truncates and
copies objects and sets xattrs, for damage only a RADOS store can have.
"""
import os
import subprocess


def open_stores(location, ceph=None):
    location = os.fspath(location)
    if location.startswith("rados://"):
        return RadosStores(ceph, location)
    return FileStores(location)


class FileStores:
    backend = "file"

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, store):
        return os.path.join(self.path, store)

    def size(self, store):
        return os.path.getsize(self.file(store))

    def read(self, store, off=0, length=None):
        with open(self.file(store), "rb") as f:
            f.seek(off)
            return f.read() if length is None else f.read(length).ljust(length, b"\0")

    def write(self, store, off, data):
        with open(self.file(store), "r+b") as f:
            f.seek(off)
            f.write(data)

    def flip(self, store, off, mask=0x01):
        self.write(store, off, bytes([self.read(store, off, 1)[0] ^ mask]))

    def replace(self, store, data):
        with open(self.file(store), "wb") as f:
            f.write(data)


def name_of(url):
    """NAME of rados://POOL/NAME?..."""
    return url.split("/")[3].split("?")[0]


class RadosStores:
    backend = "rados"

    def __init__(self, ceph, url):
        assert ceph is not None, "a rados:// pool needs the ceph fixture"
        self.ceph = ceph
        self.url = url
        self.pool = url.split("/")[2]
        self.name = name_of(url)
        self._layout = {}

    # -- the rados command -------------------------------------------------------------------

    def rados(self, *args, input=None, check=True):
        return self.ceph.cmd("rados", "-p", self.pool, *args, input=input, check=check)

    def get_object(self, oid):
        """The object's bytes, or None if it does not exist."""
        r = subprocess.run(["rados", "-c", self.ceph.conf, "-p", self.pool, "get", oid, "-"],
                           capture_output=True, timeout=60, env=_env())
        if r.returncode:
            if b"No such file" in r.stderr:
                return None
            raise RuntimeError(f"rados get {oid} failed: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def put_object(self, oid, data, offset=None):
        """Write data into the object (at offset: in place; without: the whole object)."""
        args = ["put", oid, "-"] + ([] if offset is None else ["--offset", str(offset)])
        self.rados(*args, input=bytes(data))

    def remove_object(self, *oids):
        self.rados("rm", *oids)

    def truncate_object(self, oid, size):
        self.rados("truncate", oid, str(size))

    def object_size(self, oid):
        """Its size in bytes, or None if it does not exist."""
        out = self.ceph.cmd("rados", "-p", self.pool, "stat", oid, check=False)
        return int(out.rsplit("size", 1)[1]) if "size" in out else None

    def objects(self):
        """Every object of this cowblock pool, sorted."""
        out = self.rados("ls")
        heads = (self.head("meta"), self.head("data"))
        return sorted(o for o in out.split()
                      if o in heads or o.startswith((heads[0] + ".", heads[1] + ".")))

    def head(self, store):
        return f"{self.name}.{store}"

    def oid(self, store, idx):
        return f"{self.name}.{store}.{idx:016x}"

    def get_xattr(self, store, key):
        return self.rados("getxattr", self.head(store), key)

    def set_xattr(self, store, key, value):
        self.rados("setxattr", self.head(store), key, str(value))
        self._layout.pop(store, None)

    # -- the store's layout ------------------------------------------------------------------

    def layout(self, store):
        """(object size, bytes kept in the head)."""
        if store not in self._layout:
            self._layout[store] = (int(self.get_xattr(store, "cb.osize")),
                                   int(self.get_xattr(store, "cb.head")))
        return self._layout[store]

    def size(self, store):
        return int(self.get_xattr(store, "cb.size"))

    def pieces(self, store, off, length):
        """(object, offset in it, offset in the range, length) covering [off, off + length)."""
        osize, head = self.layout(store)
        end, out = off + length, []
        while off < end:
            if off < head:
                n = min(end, head) - off
                out.append((self.head(store), off, off - (end - length), n))
            else:
                n = min(end, (off // osize + 1) * osize) - off
                out.append((self.oid(store, off // osize), off % osize, off - (end - length), n))
            off += n
        return out

    def object_of(self, store, off):
        """The object holding byte off of the store."""
        return self.pieces(store, off, 1)[0][0]

    # -- bytes ------------------------------------------------------------------------------

    def read(self, store, off=0, length=None):
        if length is None:
            length = max(0, self.size(store) - off)
        out = bytearray(length)
        got = {}
        for oid, inner, at, n in self.pieces(store, off, length):
            if oid not in got:
                got[oid] = self.get_object(oid) or b""
            part = got[oid][inner:inner + n]
            out[at:at + len(part)] = part
        return bytes(out)

    def write(self, store, off, data):
        for oid, inner, at, n in self.pieces(store, off, len(data)):
            self.put_object(oid, data[at:at + n], offset=inner)

    def flip(self, store, off, mask=0x01):
        self.write(store, off, bytes([self.read(store, off, 1)[0] ^ mask]))

    def replace(self, store, data):
        """Every object of the store rewritten whole from data, those past its end removed,
        and cb.size set to its length."""
        osize, head = self.layout(store)
        old_end = max(self.size(store), head)
        self.put_object(self.head(store), data[:head])
        for idx in range(head // osize, (max(len(data), old_end) + osize - 1) // osize):
            lo, hi = max(idx * osize, head), (idx + 1) * osize
            if lo < len(data):
                self.put_object(self.oid(store, idx), bytes(lo % osize) + data[lo:hi])
            elif self.object_size(self.oid(store, idx)) is not None:
                self.remove_object(self.oid(store, idx))
        self.set_xattr(store, "cb.size", len(data))

    # -- whole pools -------------------------------------------------------------------------

    def copy_to(self, other):
        """Make the cowblock pool ``other`` (RadosStores) an object-for-object copy of this
        one: data, xattrs (and so a lock, if any) included; other's own objects removed."""
        mine = self.objects()
        theirs = other.objects()
        if theirs:
            other.remove_object(*theirs)
        for oid in mine:
            self.rados("cp", oid, other.name + oid[len(self.name):])
        other._layout.clear()

    def remove_pool(self):
        objs = self.objects()
        if objs:
            self.remove_object(*objs)


def _env():
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}


def check_objects(stores):
    """Problems with the RADOS objects of a pool (none for a directory): every object must be
    a store's head or one of its stripes inside the store's size, the heads must say what
    the store is (object size, head bytes, size, fence sequence), and no object may be
    bigger than the object size.  check() sees only the bytes inside each store's size, so
    an object past it is a leak no check would find."""
    if stores.backend != "rados":
        return []
    problems = []
    known = {}
    for store in ("meta", "data"):
        attrs = {}
        for key in ("cb.osize", "cb.head", "cb.size", "cb.seq"):
            try:
                attrs[key] = int(stores.get_xattr(store, key))
            except (RuntimeError, ValueError) as e:
                problems.append(f"head {stores.head(store)}: {key} unreadable: {e}")
        known[store] = attrs
    for oid in stores.objects():
        store, _, idx = oid[len(stores.name) + 1:].partition(".")
        attrs = known.get(store)
        if attrs is None or len(attrs) < 4:
            problems.append(f"object {oid} belongs to no store of the pool")
            continue
        if not idx:
            if store == "meta" and (stores.object_size(oid) or 0) > attrs["cb.head"]:
                problems.append(f"head {oid} holds more than its {attrs['cb.head']} bytes")
            continue
        try:
            i = int(idx, 16)
        except ValueError:
            problems.append(f"object {oid} is not a stripe of its store")
            continue
        osize = attrs["cb.osize"]
        end = max(attrs["cb.size"], attrs["cb.head"])
        if i * osize >= end:
            problems.append(f"object {oid} lies past the store's end ({end} bytes): leaked")
        size = stores.object_size(oid)
        if size is not None and size > osize:
            problems.append(f"object {oid} holds {size} bytes, more than the object size")
    return problems
