"""Hostile input (DESIGN.md section 2, invariant 6): damaged or malicious pool files give
``CorruptError``, or open an older consistent generation, or open with exactly the original
data -- never a crash, a hang, a huge allocation or silently wrong data.

Every case runs in a forked child with ``RLIMIT_AS`` = 2 GiB and an alarm, so a segfault, a
sanitizer abort, a hang or a huge allocation (``MemoryError``) is seen as a failure instead of
taking the test run down.  The child opens the damaged pool, reads every device (whole small
devices, windows of the sparse 1 TiB one), runs ``check()`` and ``dump()``, and reports.

Damage: bit flips in every kind of page (superblocks, device table, interior nodes, leaves,
free log, external origin), zeroed ranges, garbage pages, truncation of the metadata and of
the data file, swapped or copied superblock slots, older generations, and pages crafted with
*valid* checksums (a 20-line CRC-32C below) whose fields are out of range, loop back to
themselves or point at pages of the wrong kind, with huge counts and lengths.

What each outcome must be:
* damage only to pages the newest superblock does not reach: opens, newest generation,
  every byte as before, ``check()`` finds no error;
* other damage: ``CorruptError``, or an older generation opens whose data and devices are
  exactly what they were at that generation (the pool shapes are built so that the last
  commit never changes a block the one before it shows);
* crafted pages with valid checksums that stay self-consistent (a leaf pointing at another
  valid leaf, say) describe a different pool; for them only "no crash, no hang, no huge
  allocation, errors are CowblockErrors" is asserted, and writes, snapshots, deletes, a commit
  and a reopen are run on top to reach more code.

Backends: every shape is built twice, in a directory and in RADOS (the test cluster), and
every case runs on both; the damage goes through tests/rawstore.py (bytes at an offset of the
"meta" or "data" store, whatever holds them).  On RADOS the child cannot be forked from the
test process (which has used librados: a child that then connects can hang), so a server
process that never opens a pool forks the children (``ForkServer``).  Cases about files as
such (truncation, a FIFO or a directory in place of a store) stay file-only; the damage only
RADOS can have (an object removed or cut short, bad xattrs on a head) has tests of its own.
The random budgets are smaller on RADOS, where a case costs about ten times more.

``--run-slow`` multiplies the budgets (every header bit of every page, thousands of random
cases); ``COWBLOCK_CORRUPT_SEED`` fixes the random seed (printed with each test's tally).
"""

import collections
import hashlib
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys

import pytest

import cowblock
import rawstore
from conftest import rados_url

PAGE = 4096
KiB = 1024
MiB = 1024 * KiB
BS = 8 * KiB  # two sub-blocks per block, so entries with bitmaps and origins exist

T_SUPER, T_LEAF, T_NODE = 0x42534243, 0x464C4243, 0x444E4243
T_DEVTAB, T_EXT, T_FREELOG = 0x54444243, 0x54584243, 0x4C464243
TYPE_NAMES = {T_SUPER: "super", T_LEAF: "leaf", T_NODE: "node", T_DEVTAB: "devtab",
              T_EXT: "ext", T_FREELOG: "freelog"}
M64 = (1 << 64) - 1

ASAN = "asan" in os.environ.get("LD_PRELOAD", "") or bool(os.environ.get("COWBLOCK_SANITIZE"))
CHILD_TIMEOUT = 120 if ASAN else 20
CHILD_MEMORY = 2 << 30


def seed_for(name):
    base = int(os.environ.get("COWBLOCK_CORRUPT_SEED", "20240"))
    return base ^ int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


# --------------------------------------------------------------------------- CRC-32C

def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC = _crc_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    table = _CRC
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def salt(page_type):
    return ((page_type * 0x9E3779B1) & 0xFFFFFFFF) ^ 0x636F7762


class Meta:
    """The metadata file as a bytearray, with field access and resealing (see csrc/meta.h)."""

    def __init__(self, raw):
        self.b = bytearray(raw)

    def copy(self):
        return Meta(self.b)

    @property
    def npages(self):
        return len(self.b) // PAGE

    def get(self, page, off, size):
        o = page * PAGE + off
        return int.from_bytes(self.b[o:o + size], "little")

    def put(self, page, off, size, value):
        o = page * PAGE + off
        self.b[o:o + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def put_bytes(self, page, off, data):
        o = page * PAGE + off
        self.b[o:o + len(data)] = data

    def type(self, page):
        return self.get(page, 0, 4)

    def seal(self, page, page_type=None):
        t = self.type(page) if page_type is None else page_type
        self.put(page, 0, 4, t)
        o = page * PAGE
        self.put(page, 4, 4, crc32c(self.b[o + 8:o + PAGE], salt(t)))
        return self

    def edit(self, page, off, size, value):
        """Change a field and reseal the page: a valid checksum over a bad value."""
        self.put(page, off, size, value)
        return self.seal(page)


# --------------------------------------------------------------------------- the child

def read_state(pool, windows):
    """{device name: sha256 of its bytes (or of its windows)}; read errors as 'error:Type'."""
    out = {}
    for name in pool.devices():
        try:
            dev = pool.device(name)
            h = hashlib.sha256()
            for off, length in windows.get(name, [(0, dev.size)]):
                if off < dev.size:
                    h.update(dev.read(off, min(length, dev.size - off)))
            out[name] = h.hexdigest()
        except cowblock.CowblockError as exc:
            out[name] = "error:" + type(exc).__name__
    return out


def _try(what, fn, log):
    try:
        fn()
        log.append(what + ":ok")
    except cowblock.CowblockError as exc:
        log.append(f"{what}:{type(exc).__name__}")


def probe(path, windows, writable, exercise):
    """Open, read everything, check, dump; optionally write, snapshot, delete, commit, reopen."""
    try:
        pool = cowblock.Pool.open(path, readonly=not writable)
    except cowblock.CorruptError as exc:
        return {"open": "corrupt", "error": f"{type(exc).__name__}: {exc}"}
    except cowblock.CowblockError as exc:
        return {"open": "error", "error": f"{type(exc).__name__}: {exc}"}
    res = {"open": "ok", "writable": writable}
    try:
        res["gen"] = pool.stats()["generation"]
        res["reads"] = read_state(pool, windows)
        try:
            rep = pool.check()
            res["check"] = {"errors": rep.errors, "leaks": rep.leaks,
                            "messages": [m for m in rep.messages if m.startswith("error:")]}
        except cowblock.CowblockError as exc:
            res["check"] = {"raised": type(exc).__name__}
        try:
            pool.dump()
            res["dump"] = "ok"
        except cowblock.CowblockError as exc:
            res["dump"] = type(exc).__name__
        if exercise:
            log = res["exercise"] = []
            names = pool.devices()
            for name in names[:4]:
                def io(name=name):
                    dev = pool.device(name)
                    dev.write(0, b"\xab" * 5000)
                    dev.write(max(0, dev.size - 3 * BS), b"\xcd" * BS)
                    dev.discard(0, min(dev.size, 2 * BS))
                    dev.read(0, min(dev.size, 4 * BS))
                    dev.usage()  # its own tree's walk
                _try("io", io, log)
            if names:
                _try("snapshot", lambda: pool.snapshot(names[0], "fuzz-snap"), log)
                _try("delete", lambda: pool.delete(names[-1]), log)
            _try("usage", pool.usage, log)
            _try("flush", pool.flush, log)
            _try("check", pool.check, log)
    finally:
        try:
            pool.close()
        except cowblock.CowblockError as exc:
            res["close"] = type(exc).__name__
    if exercise:
        try:
            with cowblock.Pool.open(path, readonly=True) as again:
                rep = again.check()
                read_state(again, windows)
                res["reopen"] = "ok" if rep.errors == 0 else "check-errors"
        except cowblock.CowblockError as exc:
            res["reopen"] = type(exc).__name__
    return res


def isolated(fn, *args, timeout=CHILD_TIMEOUT, memory=CHILD_MEMORY):
    """Run fn(*args) in a forked child; a signal, a hang or a stray exception is reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            if not ASAN:  # ASan reserves terabytes of address space for its shadow
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(timeout)
            try:
                out = {"ok": fn(*args)}
            except BaseException as exc:  # MemoryError from a huge allocation lands here
                out = {"exception": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(w, "wb") as f:
                f.write(json.dumps(out).encode())
        except BaseException:
            code = 70
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"crash": "hang (timeout)" if sig == signal.SIGALRM else signal.Signals(sig).name}
    if os.WEXITSTATUS(status):
        return {"crash": f"exit status {os.WEXITSTATUS(status)}"}
    return json.loads(data)


class ForkServer:
    """``isolated()`` in a process of its own that never opens a pool, for pools in RADOS:
    the test process has used librados, and a child forked from it that connects a client
    of its own can hang.  One JSON line per call each way; a crashed child is reported by the
    server as ``isolated()`` reports it."""

    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import sys; sys.path.insert(0, {here!r}); import test_corrupt; "
                "test_corrupt.serve()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self, fn, *args, timeout=CHILD_TIMEOUT):
        self.proc.stdin.write(json.dumps([fn.__name__, args, timeout]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (exit status {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve():
    for line in sys.stdin:
        name, args, timeout = json.loads(line)
        sys.stdout.write(json.dumps(isolated(globals()[name], *args, timeout=timeout)) + "\n")
        sys.stdout.flush()


@pytest.fixture(scope="module")
def fork_server():
    servers = []

    def get():
        if not servers:
            servers.append(ForkServer())
        return servers[0]

    yield get
    for srv in servers:
        srv.close()


# --------------------------------------------------------------------------- pool shapes

def sparse_copy(src, dst):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        off = 0
        while off < size:
            try:
                d = os.lseek(fi.fileno(), off, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fi.fileno(), d, os.SEEK_HOLE)
            while d < h:
                chunk = os.pread(fi.fileno(), min(h - d, 4 * MiB), d)
                os.pwrite(fo.fileno(), chunk, d)
                d += len(chunk)
            off = h
        fo.truncate(size)


class Shape:
    """A small real pool, its metadata at each commit, and what every device read then.
    ``path``: its location (a directory or a rados:// URL); ``stores``: raw access to it."""

    def __init__(self, path, stores):
        self.path = str(path)
        self.stores = stores
        self.backend = stores.backend
        self.windows = {}
        self.states = {}   # generation -> read_state
        self.metas = {}    # generation -> metadata file bytes
        self.gen = None

    def record(self, pool):
        pool.flush()
        gen = pool.stats()["generation"]
        self.states[gen] = read_state(pool, self.windows)
        self.metas[gen] = self.stores.read("meta")
        self.gen = gen
        return gen

    def finish(self):
        """Inventory of the pages the newest superblock reaches (by type and level)."""
        # close() committed once more to clear the free log: put the recorded last
        # generation back (the data file is the same), so the shape keeps its free log
        self.stores.replace("meta", self.metas[self.gen])
        with cowblock.Pool.open(self.path, readonly=True) as pool:
            d = pool.dump()
        self.dump = d
        self.meta = Meta(self.metas[self.gen])
        m = self.meta
        self.sb = d["superblock"]
        self.slot = self.sb["slot"]
        self.pages = {self.slot: ("super", None)}
        for p in self.sb["devtab_pages"]:
            self.pages[p] = ("devtab", None)
        for x in d["externals"]:
            self.pages[x["page"]] = ("ext", None)
        for p in d["free_log"]["pages"]:
            self.pages[p] = ("freelog", None)
        self.nodes = {}  # page -> level
        self.parent = {}

        def walk(page, level):
            if page in self.nodes:
                return
            self.nodes[page] = level
            self.pages[page] = ("leaf" if level == 0 else "node", level)
            if level:
                for i in range(508):
                    child = m.get(page, 32 + 8 * i, 8)
                    if child:
                        self.parent.setdefault(child, page)
                        walk(child, level - 1)

        for dev in d["devices"]:
            if dev["root"]:
                walk(dev["root"], dev["depth"])
        self.reachable = set(self.pages)
        self.devices = {dev["name"]: dev for dev in d["devices"]}
        return self

    def pages_of(self, kind):
        return sorted(p for p, (k, _) in self.pages.items() if k == kind)

    def devrec(self, name):
        """(page, offset) of a device's record in the device table."""
        for p in self.sb["devtab_pages"]:
            for j in range(15):
                o = 32 + 256 * j
                n = self.meta.get(p, o + 52, 4)
                if self.meta.get(p, o, 4) and self.meta.b[p * PAGE + o + 64:p * PAGE + o + 64 + n] == name.encode():
                    return p, o
        raise KeyError(name)

    def prev_gen(self):
        older = [g for g in self.states if g < self.gen]
        return max(older) if older else None


def build_mixed(path, stores, tmpdir):
    """Snapshots (ro and rw), copy-up entries with origins, a partial-block entry, an external
    origin with a written and a discarded block, a 1 TiB device (tree depth 3), two
    device-table pages, a deleted device, and a last commit whose free log spans two pages.
    The last commit only adds: nothing the commit before it shows is changed."""
    rng = random.Random(7)
    s = Shape(path, stores)
    ext_file = os.path.join(str(tmpdir), "external.img")
    with open(ext_file, "wb") as f:
        f.write(rng.randbytes(40 * KiB + 512))
    huge_at = [0, (1 << 30) + BS, (1 << 40) - BS]
    s.windows["huge"] = [(0, 2 * BS), ((1 << 30), 3 * BS), ((1 << 40) - 2 * BS, 2 * BS)]
    with cowblock.Pool.create(path, size=24 * MiB, block_size=BS) as pool:
        base = pool.create_device("base", 1 * MiB)  # 128 blocks: an interior node, two leaves
        base.write(0, rng.randbytes(600 * KiB))
        base.write(800 * KiB + 100, rng.randbytes(5000))  # one sub-block of a block
        ext = pool.create_device("ext", 64 * KiB, external=ext_file)
        ext.write(BS + 100, rng.randbytes(3000))
        ext.discard(2 * BS, BS)
        huge = pool.create_device("huge", 1 << 40)
        for off in huge_at:
            huge.write(off, rng.randbytes(BS))
        gone = pool.create_device("gone", 64 * KiB)
        gone.write(0, rng.randbytes(64 * KiB))
        for i in range(20):
            d = pool.create_device(f"d{i:02}", 16 * KiB)
            if i % 5 == 0:
                d.write(0, bytes([i + 1]) * 100)
        s.record(pool)
        pool.snapshot("base", "ro", readonly=True)
        rw = pool.snapshot("base", "rw")
        rw.write(4096 + 10, b"copy-up" * 100)     # sub-block 0 of block 0 only: origin entry
        rw.write(2 * BS, rng.randbytes(BS))        # a whole block: plain entry
        pool.delete("gone")
        s.record(pool)
        rw2 = pool.snapshot("rw", "rw2")
        rw2.write(4 * BS + 50, b"second" * 50)
        keep = pool.create_device("keep", 4 * MiB)
        tmp = pool.create_device("tmp", 4 * MiB)
        for i in range(270):  # interleaved: tmp's blocks are 270 separate runs once freed
            tmp.write(i * BS, b"t" * 16)
            keep.write(i * BS, b"k" * 16)
        pool.delete("tmp")
        s.record(pool)
    s.ext_file = ext_file
    return s.finish()


def build_history(path, stores, checksums=False):
    """Six commits that only ever add (no frees, no in-place overwrite of a committed
    block): any older metadata file still describes its generation's data exactly.  With
    checksums, the same on a pool that verifies its data (incompat bit, checksum table)."""
    rng = random.Random(11)
    s = Shape(path, stores)
    with cowblock.Pool.create(path, size=4 * MiB, block_size=BS, checksums=checksums) as pool:
        s.record(pool)
        a = pool.create_device("a", 256 * KiB)
        a.write(0, rng.randbytes(64 * KiB))
        s.record(pool)
        pool.snapshot("a", "s1")
        s.record(pool)
        a.write(64 * KiB, rng.randbytes(64 * KiB))
        s.record(pool)
        a.write(10, b"cow" * 10)
        s.record(pool)
        pool.create_device("b", 32 * KiB).write(0, rng.randbytes(20 * KiB))
        s.record(pool)
        pool.snapshot("s1", "s2", readonly=True)
        s.record(pool)
    return s.finish()


def build_empty(path, stores):
    s = Shape(path, stores)
    with cowblock.Pool.create(path, size=1 * MiB, block_size=BS) as pool:
        s.record(pool)
    return s.finish()


def build_shapes(root, backend, ceph=None):
    def where(name):
        loc = str(root / name) if backend == "file" else rados_url(ceph)
        return loc, rawstore.open_stores(loc, ceph)

    return {"mixed": build_mixed(*where("mixed"), root),
            "history": build_history(*where("history")),
            "empty": build_empty(*where("empty")),
            "history-checksums": build_history(*where("history-checksums"), checksums=True)}


@pytest.fixture(scope="module")
def file_shapes(tmp_path_factory):
    return build_shapes(tmp_path_factory.mktemp("shapes"), "file")


@pytest.fixture(scope="module")
def rados_shapes(tmp_path_factory, ceph):
    return build_shapes(tmp_path_factory.mktemp("rados-shapes"), "rados", ceph)


@pytest.fixture(scope="module", params=["file", "rados"])
def shapes(request):
    return request.getfixturevalue(f"{request.param}_shapes")


# --------------------------------------------------------------------------- running cases

class Runner:
    """Writes one damaged copy of a shape, probes it in a child, judges the outcome.

    Files: a fresh directory per case (the metadata written whole, the data file linked, or
    copied for a case that writes).  RADOS: one case pool, an object-for-object copy of the
    shape's, into which each case writes only the pages it changes (and puts back the pages
    the case before it changed); after a case that writes, the whole copy is made again."""

    def __init__(self, shape, workdir, name, fork_server=None):
        self.shape = shape
        self.dir = os.path.join(str(workdir), "case")
        self.name = name
        self.tally = collections.Counter()
        self.failures = []
        self.n = 0
        self.isolated = isolated
        if shape.backend == "rados":
            assert fork_server is not None, "a RADOS shape needs the fork_server fixture"
            self.isolated = fork_server()
            self.case = rawstore.open_stores(rados_url(shape.stores.ceph), shape.stores.ceph)
            self.dir = self.case.url
            self.held = None   # the case pool's metadata bytes; None: copy the shape again

    def _write_rados(self, raw, writable):
        """Make the case pool's metadata ``raw`` (RADOS), writing only what differs."""
        st, old = self.case, self.shape.metas[self.shape.gen]
        if self.held is None:
            self.shape.stores.copy_to(self.case)
            self.held = old
        held = self.held
        n = max(len(raw), len(held))
        changed = [p for p in range(0, n, PAGE) if raw[p:p + PAGE] != held[p:p + PAGE]]
        runs = []
        for p in changed:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + PAGE
            else:
                runs.append([p, p + PAGE])
        for lo, hi in runs:
            want = bytes(raw[lo:hi])
            st.write("meta", lo, want + bytes(min(hi, n) - lo - len(want)))
        if len(raw) != len(held):
            st.set_xattr("meta", "cb.size", len(raw))
        # a case that writes changes objects and heads this one does not know: copy again
        self.held = None if writable or len(raw) != len(old) else bytes(raw)

    def _write_files(self, raw, writable, data_size):
        sh = self.shape
        os.makedirs(self.dir, exist_ok=True)
        for f in ("meta", "data"):
            try:
                os.unlink(os.path.join(self.dir, f))
            except FileNotFoundError:
                pass
        with open(os.path.join(self.dir, "meta"), "wb") as f:
            f.write(raw)
        src = os.path.join(sh.path, "data")
        dst = os.path.join(self.dir, "data")
        if writable or data_size is not None:
            sparse_copy(src, dst)
            if data_size is not None:
                os.truncate(dst, data_size)
        else:
            os.link(src, dst)  # read-only opens never write

    def run(self, label, meta, kind, *, writable=False, exercise=False, data=None,
            data_size=None):
        """kind: 'auto' (from the pages touched), 'must_open', 'fallback' (an older
        generation must open), 'reject_or_fallback', 'reject', 'no_crash'."""
        sh = self.shape
        raw = meta.b if isinstance(meta, Meta) else meta
        if kind == "auto":
            kind = self._auto(raw)
        old = self.shape.metas[self.shape.gen]
        # (a truncated metadata file puts a slot's recorded size out of bounds)
        self._slots_touched = {s for s in (0, 1) if len(raw) < len(old)
                               or raw[s * PAGE:(s + 1) * PAGE] != old[s * PAGE:(s + 1) * PAGE]}
        if sh.backend == "rados":
            assert data_size is None, "data_size cuts a file: file shapes only"
            self._write_rados(raw, writable or exercise)
        else:
            self._write_files(raw, writable or exercise, data_size)
        res = self.isolated(probe, self.dir, sh.windows, writable or exercise, exercise)
        self.n += 1
        verdict, outcome = self._judge(res, kind)
        self.tally[f"{kind}: {outcome}"] += 1
        if verdict:
            self.failures.append(f"[{self.name}] {label} ({kind}): {verdict}")
        return res

    def _auto(self, raw):
        """must_open if every changed page is one the newest superblock does not reach."""
        old = self.shape.metas[self.shape.gen]
        n = max(len(raw), len(old)) // PAGE + 1
        touched = set()
        for p in range(n):
            if raw[p * PAGE:(p + 1) * PAGE] != old[p * PAGE:(p + 1) * PAGE]:
                touched.add(p)
        meta_pages = self.shape.sb["meta_pages"]
        if len(raw) < meta_pages * PAGE or touched & self.shape.reachable:
            return "reject_or_fallback"
        return "must_open"

    def _judge(self, res, kind):
        sh = self.shape
        if "crash" in res:
            return f"CRASH: {res['crash']}", "crash"
        if "exception" in res:
            return f"unexpected exception {res['exception']}", "exception"
        r = res["ok"]
        if r["open"] == "corrupt":
            if kind in ("must_open", "fallback"):
                return f"refused: {r['error']}", "corrupt"
            return None, "corrupt"
        if r["open"] == "error":
            if kind == "no_crash":
                return None, "open error " + r["error"].split(":")[0]
            return f"open failed with {r['error']}", "open error"
        outcome = f"opened gen {r['gen']}"
        problems = []
        if r.get("dump") not in (None, "ok") and kind != "no_crash":
            problems.append(f"dump raised {r['dump']}")
        if kind == "no_crash":
            extra = ""
            if "exercise" in r:
                extra = ", reopen " + r.get("reopen", "?")
            return None, "opened" + extra
        if kind == "reject":
            return f"opened (gen {r['gen']}) but should be refused", outcome
        allowed = {sh.gen: sh.states[sh.gen]}
        if kind == "fallback":
            allowed = {sh.prev_gen(): sh.states[sh.prev_gen()]}
        elif kind == "reject_or_fallback":
            allowed = dict(sh.states)
        gen = r["gen"]
        if r.get("writable") and gen not in allowed:
            gen -= 1  # a writable open commits once (to drop the clean mark)
        want = allowed.get(gen)
        if want is None:
            problems.append(f"opened generation {r['gen']}, expected one of {sorted(allowed)}")
        else:
            got = r["reads"]
            if sorted(got) != sorted(want):
                problems.append(f"devices {sorted(got)} != {sorted(want)}")
            for name in sorted(set(got) & set(want)):
                if got[name] != want[name] and got[name] != "error:CorruptError":
                    problems.append(f"device {name!r} reads {got[name][:16]} not {want[name][:16]}")
            chk = r.get("check", {})
            # check reports a damaged superblock slot (the pool stands on the
            # other one): the only errors allowed, and only for a slot touched
            bad = [m for m in chk.get("messages", [])
                   if not any(m.startswith(f"error: superblock slot {s} ")
                              for s in self._slots_touched)]
            if chk.get("errors", 1) != len(chk.get("messages", [])) or bad:
                problems.append(f"check: {chk}")
        return ("; ".join(problems) or None), outcome

    def report(self, seed):
        if self.shape.backend == "rados":
            self.case.remove_pool()
        lines = [f"{self.name}: {self.n} cases (seed {seed})"]
        lines += [f"    {k}: {v}" for k, v in sorted(self.tally.items())]
        print("\n".join(lines))
        assert not self.failures, "\n".join(self.failures[:40]) + (
            f"\n... {len(self.failures)} failures in all" if len(self.failures) > 40 else "")


def budget(run_slow, fast, slow, sh=None, rados=None):
    """The number of cases: ``rados`` (when given) instead of ``fast`` for a RADOS shape."""
    if run_slow:
        return slow
    return rados if rados is not None and sh is not None and sh.backend == "rados" else fast


# --------------------------------------------------------------------------- the tests

def test_crc32c_matches_the_core(shapes):
    sh = shapes["mixed"]
    for page in sorted(sh.reachable):
        m = sh.meta.copy()
        before = m.get(page, 4, 4)
        assert m.seal(page).get(page, 4, 4) == before, page


def test_shapes_cover_every_page_type(shapes):
    sh = shapes["mixed"]
    kinds = collections.Counter(k for k, _ in sh.pages.values())
    assert kinds["devtab"] == 2 and kinds["ext"] == 1 and kinds["freelog"] == 2
    assert kinds["node"] >= 4 and kinds["leaf"] >= 6
    assert {lvl for lvl in sh.nodes.values()} == {0, 1, 2, 3}
    assert any(m.get("flags", 1) & 2 for m in sh.devices["rw"]["mappings"])  # origin entry
    assert any(m.get("flags", 1) == 4 for m in sh.devices["ext"]["mappings"])  # zero entry
    assert len(sh.states) == 3


def test_undamaged_copies_open(shapes, tmp_path, fork_server):
    for name, sh in shapes.items():
        run = Runner(sh, tmp_path, name, fork_server)
        run.run("as is (read-only)", sh.meta, "must_open")
        run.run("as is (writable)", sh.meta, "must_open", writable=True)
        run.run("as is (exercised)", sh.meta, "no_crash", exercise=True)
        run.report(0)


def test_bit_flips(shapes, tmp_path, run_slow, fork_server):
    seed = seed_for("flips")
    rng = random.Random(seed)
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "bit flips", fork_server)
    per_page = budget(run_slow, 4, 40, sh, rados=1)
    for page in sorted(sh.reachable) + [1 - sh.slot]:
        kind = sh.pages.get(page, ("super-old",))[0]
        offsets = [rng.randrange(0, 32)] + [rng.randrange(PAGE) for _ in range(per_page - 1)]
        if run_slow:
            offsets += list(range(32))  # every header byte
        for off in offsets:
            m = sh.meta.copy()
            bit = rng.randrange(8)
            m.b[page * PAGE + off] ^= 1 << bit
            run.run(f"{kind} page {page} byte {off} bit {bit}", m, "auto")
    for _ in range(budget(run_slow, 40, 2000, sh, rados=10)):  # anywhere, reachable or not
        m = sh.meta.copy()
        off = rng.randrange(len(m.b))
        m.b[off] ^= 1 << rng.randrange(8)
        run.run(f"random byte {off}", m, "auto")
    for _ in range(budget(run_slow, 10, 200, sh, rados=3)):  # several flips at once
        m = sh.meta.copy()
        for _ in range(rng.randrange(2, 50)):
            m.b[rng.randrange(len(m.b))] ^= 1 << rng.randrange(8)
        run.run("multi-flip", m, "auto")
    run.report(seed)


def test_bit_flips_other_shapes(shapes, tmp_path, run_slow, fork_server):
    seed = seed_for("flips-other")
    rng = random.Random(seed)
    for name in ("history", "empty", "history-checksums"):
        sh = shapes[name]
        run = Runner(sh, tmp_path, f"bit flips ({name})", fork_server)
        for page in sorted(sh.reachable):
            for _ in range(budget(run_slow, 3, 30, sh, rados=1)):
                m = sh.meta.copy()
                off = rng.randrange(PAGE)
                m.b[page * PAGE + off] ^= 1 << rng.randrange(8)
                run.run(f"page {page} byte {off}", m, "auto")
        run.report(seed)


def test_zeroed_ranges_and_garbage(shapes, tmp_path, run_slow, fork_server):
    seed = seed_for("zero")
    rng = random.Random(seed)
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "zeroed ranges and garbage", fork_server)
    size = len(sh.meta.b)
    for _ in range(budget(run_slow, 30, 600, sh, rados=8)):
        m = sh.meta.copy()
        off = rng.randrange(size)
        length = rng.choice([1, 8, 32, 100, PAGE, 3 * PAGE, rng.randrange(1, 2 * PAGE)])
        m.b[off:off + length] = bytes(len(m.b[off:off + length]))
        run.run(f"zero {length} at {off}", m, "auto")
    for page in sorted(sh.reachable) + [1 - sh.slot]:
        m = sh.meta.copy()
        m.b[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
        run.run(f"zero page {page}", m, "auto")
        m = sh.meta.copy()
        m.b[page * PAGE:(page + 1) * PAGE] = rng.randbytes(PAGE)
        run.run(f"garbage page {page}", m, "auto")
    m = sh.meta.copy()
    m.b += rng.randbytes(5 * PAGE)
    run.run("garbage pages appended", m, "must_open")
    m = sh.meta.copy()
    m.b[2 * PAGE:] = bytes(len(m.b) - 2 * PAGE)
    run.run("everything but the superblocks zeroed", m, "reject")
    run.report(seed)


def test_truncation(file_shapes, tmp_path, run_slow):
    # files only: cutting a file short; a RADOS store's length is its head's cb.size, and its
    # objects cut short or removed are test_rados_objects_damaged's
    sh = file_shapes["mixed"]
    run = Runner(sh, tmp_path, "truncation")
    n = sh.meta.npages
    step = 1 if run_slow else max(1, n // 20)
    for k in list(range(0, n, step)) + [n - 1]:
        run.run(f"meta cut to {k} pages", sh.meta.b[:k * PAGE], "auto")
    for cut in (1, 100, PAGE - 1, PAGE + 1, 2 * PAGE + 77):
        run.run(f"meta cut to {cut} bytes", sh.meta.b[:cut], "auto")
    run.run("meta cut inside its last page", sh.meta.b[:-1], "auto")
    nbytes = sh.sb["nblocks"] * BS
    for size in (0, 1, BS, nbytes // 2, nbytes - 1):
        run.run(f"data cut to {size}", sh.meta, "reject", data_size=size)
    run.run("data grown", sh.meta, "must_open", data_size=nbytes + 5 * MiB)
    run.report(0)


def test_superblock_slots(shapes, tmp_path, fork_server):
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "superblock slots", fork_server)
    cur, old = sh.slot, 1 - sh.slot
    page = lambda m, p: bytes(m.b[p * PAGE:(p + 1) * PAGE])  # noqa: E731

    m = sh.meta.copy()
    a, b = page(m, 0), page(m, 1)
    m.put_bytes(0, 0, b)
    m.put_bytes(1, 0, a)
    run.run("slots swapped", m, "reject")
    m.put(0, 8, 8, 0)
    m.seal(0)
    m.put(1, 8, 8, 1)
    m.seal(1)
    run.run("slots swapped, addresses fixed and resealed (parity wrong)", m, "reject")

    m = sh.meta.copy()
    m.put_bytes(old, 0, page(m, cur))
    run.run("newest copied over the older slot", m, "must_open")
    m.put(old, 8, 8, old)
    m.seal(old)
    run.run("newest copied over the older slot, resealed there (parity wrong)", m, "must_open")

    m = sh.meta.copy()
    m.put_bytes(cur, 0, page(m, old))
    run.run("older copied over the newest slot", m, "fallback")

    m = sh.meta.copy()
    m.put_bytes(cur, 0, bytes(PAGE))
    run.run("newest slot zeroed: the generation before opens", m, "fallback")
    m = sh.meta.copy()
    m.b[cur * PAGE + 2000] ^= 0x10
    run.run("newest slot torn: the generation before opens", m, "fallback")
    m = sh.meta.copy()
    m.put_bytes(cur, 0, bytes(PAGE))
    m.put_bytes(old, 0, bytes(PAGE))
    run.run("both slots zeroed", m, "reject")

    m = sh.meta.copy()
    m.edit(cur, 16, 8, sh.gen + 1)
    run.run("newest generation + 1 (wrong slot parity)", m, "fallback")
    m = sh.meta.copy()
    m.edit(cur, 16, 8, M64 - 1 + (cur == 1))
    run.run("newest generation near 2^64", m, "fallback")
    run.report(0)


def test_older_generations(shapes, tmp_path, fork_server):
    """An older metadata file copied over the newest (as a careless backup restore would)."""
    for name in ("history", "history-checksums"):
        _older_generations(shapes[name], tmp_path, name, fork_server)


def _older_generations(sh, tmp_path, name, fork_server):
    run = Runner(sh, tmp_path, f"older generations ({name})", fork_server)
    for gen, raw in sorted(sh.metas.items()):
        res = run.run(f"metadata of generation {gen}", raw, "no_crash")
        r = res.get("ok", {})
        if r.get("open") != "ok" or r.get("gen") != gen or r.get("reads") != sh.states[gen] \
                or r.get("check", {}).get("errors") != 0:
            run.failures.append(f"generation {gen}: {r}")
        if gen > min(sh.metas):  # and with its newest slot torn: the one before it
            m = Meta(raw)
            m.b[(gen % 2) * PAGE + 100] ^= 1
            res = run.run(f"metadata of generation {gen}, newest slot torn", m, "no_crash")
            r = res.get("ok", {})
            if r.get("open") == "ok" and r.get("reads") != sh.states.get(r.get("gen")):
                run.failures.append(f"generation {gen} torn: wrong data {r}")
    run.report(0)


def _crafted(sh):
    """(label, Meta, kind): fields set to bad values under a valid checksum."""
    m0 = sh.meta
    cur = sh.slot
    nblocks = sh.sb["nblocks"]
    npages = sh.sb["meta_pages"]
    sb_time = sh.sb["time"]
    dt0, dt1 = sh.sb["devtab_pages"][:2]
    ext = sh.pages_of("ext")[0]
    fl0, fl1 = sh.dump["free_log"]["pages"][:2]
    base_root = sh.devices["base"]["root"]
    base_leaf = m0.get(base_root, 32, 8)
    huge_root = sh.devices["huge"]["root"]
    huge_l2 = next(p for p, lvl in sh.nodes.items() if lvl == 2)
    huge_l1 = next(p for p, lvl in sh.nodes.items() if lvl == 1 and sh.parent.get(p) == huge_l2)
    rw_leaf = next(p for p, lvl in sh.nodes.items() if lvl == 0 and
                   any(m0.get(p, 32 + 32 * i + 28, 4) & 2 for i in range(127)))
    origin_i = next(i for i in range(127) if m0.get(rw_leaf, 32 + 32 * i + 28, 4) & 2)
    stale = [p for p in range(2, m0.npages) if p not in sh.reachable and m0.type(p) == T_LEAF]
    out = []

    def case(label, kind, page, off, size, value):
        out.append((label, m0.copy().edit(page, off, size, value), kind))

    # superblock: any of these may fall back to the older slot, which is intact
    R = "reject_or_fallback"
    for label, off, size, val in [
            ("version 2", 40, 4, 2), ("incompat 1 (checksums, no table)", 44, 4, 1),
            ("incompat 2 (unknown)", 44, 4, 2), ("magic", 32, 8, 0x4b636f6c62776f63),
            ("block size 0", 52, 4, 0), ("block size 3000", 52, 4, 3000),
            ("block size 2 MiB", 52, 4, 2 << 20), ("block size 2^32-1", 52, 4, 0xFFFFFFFF),
            ("nblocks 0", 56, 8, 0), ("nblocks 2^36+1", 56, 8, (1 << 36) + 1),
            ("nblocks 2^64-1", 56, 8, M64), ("nblocks doubled (data too short)", 56, 8, 2 * nblocks),
            ("time 2^32", 64, 8, 1 << 32), ("time 0", 64, 8, 0),
            ("next dev id 0", 72, 8, 0), ("next dev id 1", 72, 8, 1), ("next dev id 2^32", 72, 8, 1 << 32),
            ("meta pages 0", 80, 8, 0), ("meta pages 2", 80, 8, 2),
            ("meta pages past the file", 80, 8, m0.npages + 1), ("meta pages 2^63", 80, 8, 1 << 63),
            ("free log -> superblock", 88, 8, 1), ("free log -> leaf", 88, 8, base_leaf),
            ("free log -> 2^63", 88, 8, 1 << 63), ("free log -> devtab", 88, 8, dt0),
            ("ndevtab 433", 96, 4, 433), ("ndevtab 2^32-1", 96, 4, 0xFFFFFFFF), ("ndevtab 3", 96, 4, 3),
            ("devtab[0] -> 0", 640, 8, 0), ("devtab[0] -> slot 1", 640, 8, 1),
            ("devtab[0] -> leaf", 640, 8, base_leaf), ("devtab[0] -> 2^63", 640, 8, 1 << 63),
            ("devtab[1] = devtab[0]", 648, 8, dt0), ("devtab[0] -> past meta pages", 640, 8, npages),
            ("ext[0] -> devtab", 128, 8, dt0), ("ext[1] = ext[0]", 136, 8, ext),
            ("ext[63] -> free log", 128 + 63 * 8, 8, fl0),
            ("generation 2^63", 16, 8, 1 << 63), ("own address", 8, 8, 1 - cur)]:
        case(f"superblock {label}", R, cur, off, size, val)

    # device table: every one of these must be refused outright
    p, o = sh.devrec("base")
    p2, o2 = sh.devrec("rw")
    for label, off, size, val in [
            ("id = next_dev_id", 0, 4, sh.sb["next_dev_id"]), ("id = rw's id", 0, 4, m0.get(p2, o2, 4)),
            ("flags 2", 4, 4, 2), ("size 0", 8, 8, 0), ("size 511", 8, 8, 511),
            ("size 2^56+512", 8, 8, (1 << 56) + 512), ("size 2^64-512", 8, 8, M64 - 511),
            ("depth + 1", 24, 4, sh.devices["base"]["depth"] + 1), ("depth 2^32-1", 24, 4, 0xFFFFFFFF),
            ("root -> its devtab page", 16, 8, p), ("root -> slot 1", 16, 8, 1),
            ("root -> a leaf (level 0, depth 1)", 16, 8, base_leaf), ("root -> 2^63", 16, 8, 1 << 63),
            ("root -> past meta pages", 16, 8, npages), ("root -> free log", 16, 8, fl0),
            ("root -> huge's level-2 node (wrong level)", 16, 8, huge_l2),
            ("birth time > sb time", 28, 4, sb_time + 1), ("snap time 2^32-1", 32, 4, 0xFFFFFFFF),
            ("origin id 2^31", 36, 4, 1 << 31), ("external id 65", 48, 4, 65),
            ("external id 7 (no such origin)", 48, 4, 7), ("name length 0", 52, 4, 0),
            ("name length 128", 52, 4, 128), ("name length 2^32-1", 52, 4, 0xFFFFFFFF),
            ("name with '/'", 64, 1, ord("/")), ("name with NUL", 64, 1, 0),
            ("byte after the name", 64 + 4, 1, ord("x"))]:
        case(f"devrec base: {label}", "reject", p, o + off, size, val)
    m = m0.copy()
    m.put_bytes(p, o + 64, b"rw\0\0")
    m.put(p, o + 52, 4, 2)
    out.append(("devrec base: renamed to rw (duplicate name)", m.seal(p), "reject"))

    # interior nodes: loops, wrong kinds, out of range
    for label, page, off, val in [
            ("base root child -> itself", base_root, 32, base_root),
            ("base root child -> devtab", base_root, 32, dt0),
            ("base root child -> slot 1", base_root, 32, 1),
            ("base root child -> 2^64-1", base_root, 40 + 8 * 100, M64),
            ("base root child -> past meta pages", base_root, 32 + 8 * 7, npages),
            ("base root child -> free log", base_root, 32 + 8 * 7, fl1),
            ("base root child -> ext page", base_root, 32 + 8 * 7, ext),
            ("huge level-2 child -> its parent (root)", huge_l2, 32 + 8 * 300, huge_root),
            ("huge level-2 child -> itself", huge_l2, 32 + 8 * 301, huge_l2),
            ("huge level-1 child -> level-2 node", huge_l1, 32 + 8 * 5, huge_l2),
            ("huge root child -> base's leaf (wrong level)", huge_root, 32 + 8 * 9, base_leaf),
            ("huge root child -> base root (level 1 under level 3)", huge_root, 32 + 8 * 9, base_root)]:
        case(f"node: {label}", "reject", page, off, 8, val)
    case("node: level field 5", "reject", base_root, 28, 2, 5)
    case("node: level field 0 (a node as leaf)", "reject", base_root, 28, 2, 0)
    case("node: time > sb time", "reject", base_root, 24, 4, sb_time + 1)

    # leaf entries
    e = 32 + 32 * origin_i
    full = 0b11
    for label, page, off, size, val in [
            ("unknown flag 8", rw_leaf, e + 28, 4, 8 | 3), ("origin without mapped", rw_leaf, e + 28, 4, 2),
            ("mapped with bitmap 0", rw_leaf, e + 16, 8, 0), ("bitmap bit 2 of 2", rw_leaf, e + 16, 8, 0b101),
            ("bitmap 2^64-1", rw_leaf, e + 16, 8, M64), ("origin with a full bitmap", rw_leaf, e + 16, 8, full),
            ("block = nblocks", rw_leaf, e, 8, nblocks), ("block 2^64-1", rw_leaf, e, 8, M64),
            ("origin = nblocks", rw_leaf, e + 8, 8, nblocks), ("origin 2^63", rw_leaf, e + 8, 8, 1 << 63),
            ("origin = block", rw_leaf, e + 8, 8, m0.get(rw_leaf, e, 8)),
            ("time > sb time", rw_leaf, e + 24, 4, sb_time + 1),
            ("flags 0 with a block", rw_leaf, e + 28, 4, 0),
            ("leaf level 1", rw_leaf, 28, 2, 1), ("leaf time 2^32-1", rw_leaf, 24, 4, 0xFFFFFFFF)]:
        case(f"leaf: {label}", "reject", page, off, size, val)
    plain_leaf = next(p for p, lvl in sh.nodes.items() if lvl == 0 and
                      any(m0.get(p, 32 + 32 * i + 28, 4) == 0 for i in range(127)))
    fi = next(i for i in range(127) if m0.get(plain_leaf, 32 + 32 * i + 28, 4) == 0)
    case("leaf: unmapped entry with a block", "reject", plain_leaf, 32 + 32 * fi, 8, 5)
    case("leaf: unmapped entry with a bitmap", "reject", plain_leaf, 32 + 32 * fi + 16, 8, 1)
    case("leaf: unmapped entry with an origin", "reject", plain_leaf, 32 + 32 * fi + 8, 8, 3)

    # external origin page
    for label, off, size, val in [
            ("path length 0", 40, 4, 0), ("path length 3801", 40, 4, 3801),
            ("path length 2^32-1", 40, 4, 0xFFFFFFFF), ("NUL inside the path", 48 + 3, 1, 0),
            ("size 2^57", 32, 8, 1 << 57), ("size 2^64-1", 32, 8, M64)]:
        case(f"ext: {label}", "reject", ext, off, size, val)

    # free log
    run0 = (m0.get(fl0, 48, 8), m0.get(fl0, 56, 8))
    run1 = (m0.get(fl0, 64, 8), m0.get(fl0, 72, 8))
    for label, page, off, size, val in [
            ("n 254", fl0, 40, 4, 254), ("n 2^32-1", fl0, 40, 4, 0xFFFFFFFF),
            ("count 0", fl0, 56, 8, 0), ("start = nblocks", fl0, 48, 8, nblocks),
            ("start + count overflows", fl0, 56, 8, M64 - 2), ("count 2^63", fl0, 56, 8, 1 << 63),
            ("count past the end", fl0, 56, 8, nblocks - run0[0] + 1),
            ("runs out of order", fl0, 64, 8, run0[0]), ("runs overlap", fl0, 56, 8, run1[0] - run0[0] + 1),
            ("next -> itself", fl0, 32, 8, fl0), ("second's next -> first (loop)", fl1, 32, 8, fl0),
            ("next -> leaf", fl0, 32, 8, base_leaf), ("next -> 2^63", fl0, 32, 8, 1 << 63),
            ("next -> slot 0", fl0, 32, 8, 0 if cur else 1)]:
        case(f"free log: {label}", "reject", page, off, size, val)
    # a free log naming blocks in use must not destroy them (the log is replayed at open)
    m = m0.copy()
    m.put(fl0, 40, 4, 1)
    m.put(fl0, 48, 8, 0)
    m.put(fl0, 56, 8, nblocks)
    m.put(fl0, 32, 8, 0)
    out.append(("free log: one run over the whole pool (writable open)", m.seal(fl0), "must_open_rw"))

    # crafted but self-consistent: a different pool, not a crash
    if stale:
        case("node: base root child -> a stale leaf of an older generation", "no_crash",
             base_root, 32, 8, stale[0])
    case("node: base root's two children -> the same leaf", "no_crash", base_root, 40, 8, base_leaf)
    case("leaf: block -> another block in use", "no_crash", rw_leaf, e, 8,
         m0.get(base_leaf, 32 + 32 * 40, 8))
    case("devrec base: id 0 (the record is empty)", "no_crash", p, o, 4, 0)
    case("devrec base: read-only flag", "no_crash", p, o + 4, 4, 1)
    case("superblock: ndevtab 0", "no_crash", cur, 96, 4, 0)
    case("superblock: generation + 2", "no_crash", cur, 16, 8, sh.gen + 2)
    return out


def _ext_path_cases(sh, tmp_path):
    """The external origin's path pointed at things that are not regular files."""
    ext = sh.pages_of("ext")[0]
    fifo = str(tmp_path / "fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    out = []
    for label, target in [("a FIFO (open would block)", fifo), ("/dev/zero", "/dev/zero"),
                          ("a directory", str(tmp_path)), ("a missing file", "/nonexistent/x"),
                          ("/dev/null", "/dev/null")]:
        m = sh.meta.copy()
        raw = target.encode()
        m.put_bytes(ext, 48, bytes(3800))
        m.put_bytes(ext, 48, raw)
        m.put(ext, 40, 4, len(raw))
        out.append((f"ext path -> {label}", m.seal(ext)))
    return out


def test_crafted_pages(shapes, tmp_path, fork_server):
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "crafted pages (valid checksums)", fork_server)
    for label, m, kind in _crafted(sh):
        if kind == "must_open_rw":
            run.run(label, m, "must_open", writable=True)
        elif kind == "no_crash":
            run.run(label, m, "no_crash", exercise=True)
        else:
            run.run(label, m, kind)
    for label, m in _ext_path_cases(sh, tmp_path):
        res = run.run(label, m, "no_crash", exercise=True)
        r = res.get("ok", {})
        if r.get("open") == "ok":  # every other device still reads right
            want = sh.states[sh.gen]
            bad = [n for n in want if n != "ext" and r["reads"].get(n) != want[n]]
            if bad or r["reads"].get("ext") != "error:ExternalOriginError":
                run.failures.append(f"{label}: wrong reads of {bad}, ext reads "
                                    f"{r['reads'].get('ext', '')[:24]}")
        else:
            run.failures.append(f"{label}: {res}")
    run.report(0)


def _fields(sh, page, rng):
    """Offsets and sizes of the meaningful fields of a page, by its type."""
    t = sh.meta.type(page)
    hdr = [(8, 8), (16, 8), (24, 4), (28, 2), (30, 2)]
    if t == T_SUPER:
        return hdr + [(40, 4), (44, 4), (52, 4), (56, 8), (64, 8), (72, 8), (80, 8), (88, 8),
                      (96, 4)] + [(128 + 8 * i, 8) for i in range(4)] + [(640 + 8 * i, 8) for i in range(3)]
    if t == T_LEAF:
        i = rng.randrange(127)
        return hdr + [(32 + 32 * i + o, s) for o, s in ((0, 8), (8, 8), (16, 8), (24, 4), (28, 4))]
    if t == T_NODE:
        return hdr + [(32 + 8 * rng.randrange(508), 8) for _ in range(6)]
    if t == T_DEVTAB:
        j = 32 + 256 * rng.randrange(15)
        return hdr + [(j + o, s) for o, s in ((0, 4), (4, 4), (8, 8), (16, 8), (24, 4), (28, 4),
                                              (32, 4), (36, 4), (48, 4), (52, 4), (64, 1))]
    if t == T_EXT:
        return hdr + [(32, 8), (40, 4), (48, 1)]
    if t == T_FREELOG:
        k = 48 + 16 * rng.randrange(253)
        return hdr + [(32, 8), (40, 4), (k, 8), (k + 8, 8)]
    return hdr


def test_random_sealed_mutations(shapes, tmp_path, run_slow, fork_server):
    """Structure-aware fuzzing: one to three fields of reachable pages set to interesting values,
    pages resealed.  Invalid results must be refused; valid ones must survive use."""
    seed = seed_for("sealed")
    rng = random.Random(seed)
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "random sealed mutations", fork_server)
    pages = sorted(sh.reachable)
    interesting = sorted(set(pages)) + [0, 1, 2, 3, 127, 128, 255, 508, 4096, 0xFFFF, 1 << 31,
                                        (1 << 32) - 1, 1 << 32, 1 << 36, 1 << 56, (1 << 63), M64,
                                        sh.sb["nblocks"], sh.sb["nblocks"] - 1, sh.sb["meta_pages"],
                                        sh.sb["time"], sh.sb["time"] + 1, sh.gen, sh.gen + 1]
    for _ in range(budget(run_slow, 120, 4000, sh, rados=30)):
        m = sh.meta.copy()
        touched = set()
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            page = rng.choice(pages)
            off, size = rng.choice(_fields(sh, page, rng))
            val = rng.choice(interesting + [rng.getrandbits(8 * size), m.get(page, off, size) ^ 1,
                                            m.get(page, off, size) + 1, m.get(page, off, size) - 1])
            m.put(page, off, size, val)
            touched.add(page)
        for page in touched:
            m.seal(page)
        run.run(f"fields of pages {sorted(touched)}", m, "no_crash",
                exercise=rng.random() < 0.3)
    run.report(seed)


def test_garbage_with_valid_headers(shapes, tmp_path, run_slow, fork_server):
    """Random payloads behind a correct header and checksum, in every reachable page."""
    seed = seed_for("garbage")
    rng = random.Random(seed)
    sh = shapes["mixed"]
    run = Runner(sh, tmp_path, "sealed garbage payloads", fork_server)
    for page in sorted(sh.reachable):
        for _ in range(budget(run_slow, 2, 20, sh, rados=1)):
            m = sh.meta.copy()
            start = rng.choice([32, 40, 48, 64, rng.randrange(32, PAGE)])
            m.put_bytes(page, start, rng.randbytes(PAGE - start))
            m.seal(page)
            run.run(f"{sh.pages[page][0]} page {page} garbage from {start}", m, "no_crash")
    run.report(seed)


def test_missing_stores(shapes, tmp_path, fork_server):
    """A store not there at all (its file, or its head object, gone): NotFoundError."""
    sh = shapes["empty"]
    for missing in ("meta", "data"):
        if sh.backend == "file":
            d = str(tmp_path / missing)
            os.mkdir(d)
            for f in ("meta", "data"):
                if f != missing:
                    sparse_copy(os.path.join(sh.path, f), os.path.join(d, f))
            res = isolated(probe, d, {}, False, False)
        else:
            case = rawstore.open_stores(rados_url(sh.stores.ceph), sh.stores.ceph)
            sh.stores.copy_to(case)
            case.remove_object(case.head(missing))
            d = case.url
            res = fork_server()(probe, d, {}, False, False)
        assert res == {"ok": {"open": "error", "error": res["ok"]["error"]}}, res
        assert res["ok"]["error"].startswith("NotFoundError"), res


def test_directory_as_meta(file_shapes, tmp_path):
    # files only: a directory where the metadata file should be
    sh = file_shapes["empty"]
    d = tmp_path / "dir-as-meta"
    d.mkdir()
    (d / "meta").mkdir()
    sparse_copy(os.path.join(sh.path, "data"), str(d / "data"))
    res = isolated(probe, str(d), {}, False, False)
    assert "crash" not in res and "exception" not in res, res
    assert res["ok"]["open"] != "ok", res
    assert stat.S_ISDIR(os.stat(d / "meta").st_mode)


@pytest.mark.parametrize("which", ["meta", "data"])
def test_fifo_pool_files_do_not_hang(file_shapes, tmp_path, which):
    """A FIFO where a pool file should be: a blocking open(2) would wait for ever (files
    only: a RADOS store is objects)."""
    sh = file_shapes["empty"]
    d = tmp_path / "pool"
    d.mkdir()
    for f in ("meta", "data"):
        if f == which:
            os.mkfifo(d / f)
        else:
            sparse_copy(os.path.join(sh.path, f), str(d / f))
    res = isolated(probe, str(d), {}, False, False, timeout=5)
    assert "crash" not in res and "exception" not in res, res
    assert res["ok"]["open"] != "ok", res


@pytest.fixture(scope="module", params=["file", "rados"])
def wide(request, tmp_path_factory):
    """More than 512 tree nodes: the loader's node table grows (rehashes) while it loads."""
    ceph = request.getfixturevalue("ceph") if request.param == "rados" else None
    path = tmp_path_factory.mktemp("wide") / "pool" if ceph is None else rados_url(ceph)
    s = Shape(path, rawstore.open_stores(path, ceph))
    leaves = 600
    with cowblock.Pool.create(path, size=8 * MiB, block_size=4 * KiB) as pool:
        dev = pool.create_device("wide", leaves * 127 * 4 * KiB)
        for i in range(leaves):
            dev.write(i * 127 * 4 * KiB, i.to_bytes(4, "little") * 16)
        s.windows["wide"] = [(i * 127 * 4 * KiB, 64) for i in range(0, leaves, 7)] + [
            ((leaves - 1) * 127 * 4 * KiB, 4 * KiB)]
        s.record(pool)
        pool.snapshot("wide", "snap")
        s.record(pool)
    return s.finish()


def test_wide_tree(wide, tmp_path, fork_server):
    sh = wide
    run = Runner(sh, tmp_path, "wide tree (node table rehash)", fork_server)
    assert len(sh.nodes) > 512
    leaves = sorted(p for p, lvl in sh.nodes.items() if lvl == 0)
    run.run("as is", sh.meta, "must_open")
    run.run("as is (writable)", sh.meta, "must_open", writable=True)
    for page in (leaves[0], leaves[len(leaves) // 2], leaves[-1]):
        m = sh.meta.copy()
        m.b[page * PAGE + 700] ^= 4
        run.run(f"flip in leaf {page}", m, "auto")
        run.run(f"leaf {page}: block past the end", sh.meta.copy().edit(page, 32, 8, M64), "reject")
    root = sh.devices["wide"]["root"]
    interior = [p for p, lvl in sh.nodes.items() if lvl > 0 and p != root]
    m = sh.meta.copy()
    for i in range(508):  # every child of an interior node -> the same leaf
        if m.get(interior[0], 32 + 8 * i, 8):
            m.put(interior[0], 32 + 8 * i, 8, leaves[0])
    run.run("all children -> one leaf", m.seal(interior[0]), "no_crash", exercise=True)
    run.report(0)


# --------------------------------------------------------------------------- RADOS objects


def _rados_case(sh):
    """A fresh object-for-object copy of a RADOS shape to damage."""
    case = rawstore.open_stores(rados_url(sh.stores.ceph), sh.stores.ceph)
    sh.stores.copy_to(case)
    return case


def _expect_corrupt(fork_server, case, *, windows=None, says=None):
    res = fork_server()(probe, case.url, windows or {}, False, False)
    assert "crash" not in res and "exception" not in res, res
    r = res["ok"]
    assert r["open"] in ("corrupt", "error"), r
    what = r["error"].partition(": ")[2]
    assert len(what) > 10, f"no clear message: {r}"
    if says:
        assert says in what, r
    return r


def test_rados_objects_damaged(rados_shapes, fork_server):
    """Damage only a store of objects can have: an object of the metadata removed or cut
    short, a data object of a checksummed pool removed or cut short.  Each is refused or
    reported (CorruptError, ChecksumError naming the device offset), never a crash and never
    other bytes than were written."""
    sh = rados_shapes["mixed"]
    osize, head = sh.stores.layout("meta")
    page = max(p for p in sh.reachable if p * PAGE >= head)     # a page in a stripe object
    oid = sh.stores.object_of("meta", page * PAGE)
    case = _rados_case(sh)
    case.remove_object(oid.replace(sh.stores.name, case.name, 1))
    _expect_corrupt(fork_server, case)
    case = _rados_case(sh)
    case.truncate_object(oid.replace(sh.stores.name, case.name, 1), page * PAGE % osize)
    _expect_corrupt(fork_server, case)
    # a head object cut short: the superblock slots read as zeros
    case = _rados_case(sh)
    case.truncate_object(case.head("meta"), 100)
    _expect_corrupt(fork_server, case)

    # checksummed data: a data object removed, another cut short
    sh = rados_shapes["history-checksums"]
    want = sh.states[sh.gen]
    for how in ("remove", "truncate"):
        case = _rados_case(sh)
        first = case.oid("data", 0)
        if how == "remove":
            case.remove_object(first)
        else:
            case.truncate_object(first, 4 * KiB + 100)
        res = fork_server()(probe, case.url, {}, False, False)
        r = res["ok"]
        assert r["open"] == "ok", res          # the metadata is intact
        assert r["reads"]["a"] == "error:ChecksumError", (how, r)
        for name, digest in r["reads"].items():   # what reads, reads right
            assert digest in (want[name], "error:ChecksumError"), (how, name)
        scrub = fork_server()(scrub_report, case.url)["ok"]
        assert scrub["bad"] > 0 and scrub["first"].split("@")[0] in want, (how, scrub)


def scrub_report(url):
    with cowblock.Pool.open(url, readonly=True) as pool:
        rep = pool.scrub()
        first = rep.damage[0] if rep.damage else None
        return {"bad": rep.bad, "first": f"{first.device}@{first.offset}" if first else ""}


@pytest.mark.parametrize("store, key, value, says", [
    ("meta", "cb.osize", "1000", "object size of 1000"),
    ("meta", "cb.osize", "x", "malformed cb.osize"),
    # a valid size, the wrong one: offsets would map to the wrong objects (the data store
    # spans more than 64 KiB; the meta store does not, but it must agree with the data's)
    ("meta", "cb.osize", str(64 * KiB), "different object sizes"),
    ("data", "cb.osize", str(64 * KiB), "different object sizes"),
    ("data", "cb.osize", str(8 * MiB), "different object sizes"),
    ("meta", "cb.head", "4096", "head of 4096"),
    ("meta", "cb.head", "0", None),                     # superblocks looked for in a stripe
    ("meta", "cb.size", "4096", None),                  # shorter than the pages it holds
    ("meta", "cb.size", "", "malformed cb.size"),
    ("meta", "cb.seq", "-1", "malformed cb.seq"),
    ("data", "cb.size", "65536", None),                 # shorter than the pool's blocks
    ("data", "cb.osize", str(1 << 40), "object size of"),
])
def test_rados_head_xattrs_damaged(rados_shapes, fork_server, store, key, value, says):
    """A head whose xattrs lie about its store: a clear CorruptError, never a crash."""
    case = _rados_case(rados_shapes["history"])
    case.set_xattr(store, key, value)
    r = _expect_corrupt(fork_server, case, says=says)
    assert r["open"] == "corrupt", r


@pytest.mark.parametrize("key", ["cb.osize", "cb.head", "cb.size", "cb.seq"])
def test_rados_head_xattr_missing(rados_shapes, fork_server, key):
    case = _rados_case(rados_shapes["history"])
    case.rados("rmxattr", case.head("meta"), key)
    r = _expect_corrupt(fork_server, case, says=key)
    assert r["open"] == "corrupt", r
