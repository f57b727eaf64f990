"""The CB_TESTING build of the C core, and what the tests that use it share.

Build.  :func:`build` compiles every source of ``csrc/build_ffi.py``'s
``SOURCES`` plus ``csrc/testio.c`` with ``-DCB_TESTING`` (and assertions on)
into a cffi module ``_cowblock_testing``, whose cdef is ``cowblock.cdef.h``
plus ``testio.cdef.h``.  The result is cached under the pytest cache (or a
temp dir), keyed by a hash of ``csrc/*`` and of this file, so a session
compiles at most once.  The ``testing_build`` fixture skips when there is no C
compiler.

Subprocess.  The public Python API must run over the test backend without
being changed, so a test runs its worker in a child process
(:func:`run_worker`) that puts the built module in
``sys.modules["cowblock._cowblock"]`` before importing ``cowblock``; the worker
(a function of a test module) gets JSON arguments and returns a JSON result.

Worker side (shared by test_powerloss.py and test_faults.py).
:class:`Workload` draws random operations from a seed, :func:`execute` runs
one through the public API; :class:`Model` keeps what each device must hold,
with the uncertainty the durability contract allows (DESIGN.md section 2,
invariant 4); :func:`verify_exact` and :func:`verify_crash` compare a
reopened pool with it.  :func:`make_base` makes the flushed pool a run starts
from, :func:`sparse_copy` copies it keeping its holes (the leak check looks
at them), :func:`scratch_dir` puts the copies on tmpfs.

To see that the tests catch a broken core, build from a modified copy of
csrc: ``build(cache_dir, csrc="/tmp/broken/csrc")`` and pass the result to
:func:`run_worker`.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CSRC = os.path.join(ROOT, "csrc")
MODULE = "_cowblock_testing"

# ---------------------------------------------------------------------------
# build


def _build_script(csrc=CSRC):
    """csrc/build_ffi.py as a module (for SOURCES and its compiler flags)."""
    spec = importlib.util.spec_from_file_location("_cowblock_build_ffi",
                                                  os.path.join(csrc, "build_ffi.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compiler():
    """The C compiler cffi will use, or None."""
    cc = os.environ.get("CC", "").split()
    return shutil.which(cc[0]) if cc else (shutil.which("gcc") or shutil.which("cc"))


def source_key(csrc=CSRC):
    """Hash of everything the build depends on."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(csrc)):
        path = os.path.join(csrc, name)
        if os.path.isfile(path):
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    with open(__file__, "rb") as f:
        h.update(f.read())
    h.update(sys.version.encode())
    for var in ("CC", "CFLAGS", "COWBLOCK_DEBUG", "COWBLOCK_SANITIZE"):
        h.update(f"{var}={os.environ.get(var, '')}".encode())
    return h.hexdigest()[:20]


def _find_module(directory):
    if not os.path.isdir(directory):
        return None
    for name in os.listdir(directory):
        if name.startswith(MODULE + ".") and name.endswith((".so", ".pyd")):
            return os.path.join(directory, name)
    return None


def build(cache_root, csrc=CSRC):
    """Path of the compiled test module, building it if the sources changed.

    ``csrc``: another source directory (e.g. a deliberately broken copy, to
    see that the tests catch the breakage)."""
    import fcntl

    from cffi import FFI

    key = source_key(csrc)
    final = os.path.join(cache_root, key)
    found = _find_module(final)
    if found:
        return found
    os.makedirs(cache_root, exist_ok=True)
    with open(os.path.join(cache_root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build once
        found = _find_module(final)
        if found:
            return found
        script = _build_script(csrc)
        # the build id stays this tree's, so that the package takes the test core (built
        # from another csrc, it stands in for this tree's core)
        flags = [f for f in script.flags
                 if f not in ("-DNDEBUG",) and not f.startswith("-DCB_BUILD_ID=")]
        flags.append(f'-DCB_BUILD_ID="{_build_script(CSRC).BUILD_ID}"')
        flags += ["-g", "-UNDEBUG", "-DCB_TESTING"]
        cdef = ""
        for name in ("cowblock.cdef.h", "testio.cdef.h"):
            with open(os.path.join(csrc, name)) as f:
                cdef += f.read() + "\n"
        ffi = FFI()
        ffi.cdef(cdef)
        sources = list(script.SOURCES) + ["testio.c"]
        ffi.set_source(
            MODULE,
            '#include "cowblock.h"\n#include "testio.h"\n',
            sources=[os.path.join(csrc, s) for s in sources],
            include_dirs=[csrc],
            extra_compile_args=flags,
            extra_link_args=list(script.link),
        )
        work = tempfile.mkdtemp(prefix="build-", dir=cache_root)
        try:
            built = ffi.compile(tmpdir=work, verbose=False)
            staged = os.path.join(work, "out")
            os.makedirs(staged)
            shutil.move(built, os.path.join(staged, os.path.basename(built)))
            os.replace(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return _find_module(final)


_BUILT = {}


@pytest.fixture(scope="session")
def testing_build(request):
    """Path of the CB_TESTING module (built once per session); skips without gcc."""
    if compiler() is None:
        pytest.skip("no C compiler (gcc/cc) on PATH: cannot build the CB_TESTING core")
    cache = getattr(request.config, "cache", None)
    root = (str(cache.mkdir("cowblock-testbuild")) if cache is not None else
            os.path.join(tempfile.gettempdir(), f"cowblock-testbuild-{os.getuid()}"))
    if root not in _BUILT:
        _BUILT[root] = build(root)
    return _BUILT[root]


# ---------------------------------------------------------------------------
# subprocess

_BOOT = textwrap.dedent("""
    import importlib, importlib.util, json, sys
    so, tests, modname, func, argfile, outfile = sys.argv[1:7]
    spec = importlib.util.spec_from_file_location("_cowblock_testing", so)
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    sys.modules["cowblock._cowblock"] = core
    sys.path.insert(0, tests)
    import cowblock, cowblock._lowlevel
    assert cowblock._lowlevel.lib is core.lib, "the test core is not in use"
    with open(argfile) as f:
        args = json.load(f)
    result = getattr(importlib.import_module(modname), func)(**args)
    with open(outfile, "w") as f:
        json.dump(result, f)
""")


def run_worker(so_path, module, func, timeout=600, **args):
    """Run ``module.func(**args)`` in a child over the test core; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="cbworker-") as tmp:
        argfile, outfile = os.path.join(tmp, "args.json"), os.path.join(tmp, "out.json")
        with open(argfile, "w") as f:
            json.dump(args, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONFAULTHANDLER", "1")
        proc = subprocess.run(
            [sys.executable, "-c", _BOOT, so_path, TESTS, module, func, argfile, outfile],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"worker {module}.{func} failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-8000:]}\n{proc.stdout[-2000:]}")
        with open(outfile) as f:
            return json.load(f)


# ---------------------------------------------------------------------------
# worker side: the test core, pool copies, the model and its verification


def tlib():
    """The test core's lib (only in a worker)."""
    import cowblock._lowlevel

    lib = cowblock._lowlevel.lib
    assert hasattr(lib, "cb_test_reset"), "not running over the CB_TESTING core"
    return lib


def sparse_copy(src, dst):
    """Copy a pool directory, keeping the holes of its files."""
    os.makedirs(dst)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        with open(s, "rb") as fi, open(d, "wb") as fo:
            size = os.fstat(fi.fileno()).st_size
            off = 0
            while off < size:
                try:
                    data = os.lseek(fi.fileno(), off, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                hole = os.lseek(fi.fileno(), data, os.SEEK_HOLE)
                fi.seek(data)
                fo.seek(data)
                left = hole - data
                while left:
                    chunk = fi.read(min(left, 1 << 20))
                    fo.write(chunk)
                    left -= len(chunk)
                off = hole
            fo.truncate(size)


class Dev:
    """What one device holds: exact bytes, plus what failed writes may have left."""

    def __init__(self, size, base=None, alts=()):
        import numpy as np

        self.size = size
        self.cur = np.zeros(size, np.uint8) if base is None else base.copy()
        self.alts = [(o, d, m.copy()) for o, d, m in alts]  # (off, data, still-possible mask)

    def apply(self, off, data, ok):
        import numpy as np

        n = len(data)
        if ok:
            self.cur[off:off + n] = data
            for o, d, m in self.alts:  # a write that succeeded settles its bytes
                a, b = max(o, off), min(o + len(d), off + n)
                if a < b:
                    m[a - o:b - o] = False
            self.alts = [x for x in self.alts if x[2].any()]
        else:
            self.alts.append((off, np.asarray(data, np.uint8).copy(), np.ones(n, bool)))


class Rec:
    """A device's possible content after a crash, since the last completed flush."""

    def __init__(self, durable, dev):
        self.durable = durable          # existed at that flush (must survive unless deleted)
        self.size = dev.size
        self.base = dev.cur.copy()
        self.alts = [(o, d, m.copy()) for o, d, m in dev.alts]
        self.since = []                 # (off, data) of every write or discard since
        self.deleted = False


class Model:
    """Devices as the API promised them: exact while the pool is healthy,
    and per byte "its value at the last completed flush or a later write's"
    after a crash or a failure."""

    def __init__(self):
        self.live = {}
        self.recs = {}
        self.flushes = 0
        self.last_check = None  # the report of the last operation, if it was a check

    def flushed(self):
        self.recs = {n: Rec(True, d) for n, d in self.live.items()}
        self.flushes += 1

    def create(self, name, size):
        self.live[name] = Dev(size)
        self.recs[name] = Rec(False, self.live[name])

    def snapshot(self, src, name):
        s = self.live[src]
        self.live[name] = Dev(s.size, s.cur, s.alts)
        self.recs[name] = Rec(False, self.live[name])

    def maybe_created(self, name, size, src=None):
        """A create or snapshot that failed: after a crash it may exist."""
        if name in self.recs:
            return
        s = self.live.get(src) if src else None
        self.recs[name] = Rec(False, Dev(size, s.cur if s else None, s.alts if s else ()))

    def delete(self, name, ok=True):
        if name in self.recs:
            self.recs[name].deleted = True
        if ok:
            del self.live[name]

    def write(self, name, off, data, ok=True):
        import numpy as np

        data = np.frombuffer(bytes(data), np.uint8)
        self.recs[name].since.append((off, data))
        self.live[name].apply(off, data, ok)

    def discard(self, name, off, length, ok=True):
        import numpy as np

        self.write(name, off, np.zeros(length, np.uint8).tobytes(), ok)

    def check_read(self, name, off, got):
        """A read through a healthy pool: exact, or what a failed write may have left."""
        import numpy as np

        d = self.live[name]
        got = np.frombuffer(got, np.uint8)
        want = d.cur[off:off + len(got)]
        ok = got == want
        for o, data, m in d.alts:
            a, b = max(o, off), min(o + len(data), off + len(got))
            if a < b:
                ok[a - off:b - off] |= (got[a - off:b - off] == data[a - o:b - o]) & m[a - o:b - o]
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise AssertionError(
                f"read of {name!r} at {off + bad}: got {got[bad]}, want {want[bad]} "
                f"({int((~ok).sum())} bad bytes in a read of {len(got)} at {off})")


def _mismatch(name, actual, ok, base):
    import numpy as np

    bad = np.flatnonzero(~ok)
    return (f"device {name!r}: {bad.size} bytes hold neither their flushed value nor a "
            f"later write's; first at {int(bad[0])} (got {actual[bad[0]]}, "
            f"flushed {base[bad[0]]})")


def read_all(dev):
    import numpy as np

    return np.frombuffer(dev.read(0, dev.size), np.uint8)


def verify_exact(pool, model):
    """After a clean close of a healthy pool: every device exactly as written."""
    names = set(pool.devices())
    assert names == set(model.live), f"devices {sorted(names)} != model {sorted(model.live)}"
    for name, d in model.live.items():
        actual = read_all(pool.device(name))
        ok = actual == d.cur
        for o, data, m in d.alts:
            ok[o:o + len(data)] |= (actual[o:o + len(data)] == data) & m
        assert ok.all(), _mismatch(name, actual, ok, d.cur)
    return len(names)


def verify_crash(pool, model):
    """After a crash or a failure: the durability contract, device by device."""
    names = set(pool.devices())
    extra = names - set(model.recs)
    assert not extra, f"devices that never existed at or after the last flush: {sorted(extra)}"
    for name, r in model.recs.items():
        if name not in names:
            assert not (r.durable and not r.deleted), f"flushed device {name!r} is lost"
            continue
        dev = pool.device(name)
        assert dev.size == r.size, f"device {name!r} size {dev.size} != {r.size}"
        actual = read_all(dev)
        ok = actual == r.base
        for o, data, m in r.alts:
            ok[o:o + len(data)] |= (actual[o:o + len(data)] == data) & m
        for o, data in r.since:
            ok[o:o + len(data)] |= actual[o:o + len(data)] == data
        assert ok.all(), _mismatch(name, actual, ok, r.base)
    return len(names)


def check_ok(pool, allow_leaks=False):
    """pool.check() finds nothing (leaks tolerated only when asked); the report."""
    rep = pool.check()
    assert rep.errors == 0, f"check found corruption: {rep.messages}"
    if not allow_leaks:
        assert rep.ok, f"check found leaks: {rep.messages}"
    return rep


# ---------------------------------------------------------------------------
# worker side: a random workload over the public API


class Workload:
    """Random operations (writes of every shape, copy-up into snapshots,
    discards, snapshots, creates, deletes, reads checked against the model,
    flushes, check), chosen from a seed and the model's state, so that two
    runs from the same seed make the same calls up to their first
    difference in outcome."""

    WEIGHTS = {"write": 40, "discard": 8, "snapshot": 7, "create": 3, "delete": 4,
               "read": 12, "flush": 8, "check": 1}

    def __init__(self, seed, block_size, dev_size=1 << 20, max_devices=6, weights=None):
        import random

        self.rng = random.Random(seed)
        self.bs = block_size
        self.dev_size = dev_size
        self.max_devices = max_devices
        self.weights = dict(self.WEIGHTS, **(weights or {}))
        self.serial = 0

    def _span(self, size):
        """(offset, length) of a write or discard of some shape within size."""
        r, bs = self.rng, self.bs
        shape = r.choice(["small", "sub", "block", "blocks", "span"])
        if shape == "small":                       # unaligned, inside a sub-block or across
            n = r.randint(1, 9000)
            off = r.randrange(0, size - n)
        elif shape == "sub":                       # whole 4 KiB sub-blocks
            n = 4096 * r.randint(1, 4)
            off = 4096 * r.randrange(0, (size - n) // 4096)
        elif shape == "block":                     # one whole block
            n = min(bs, size)
            off = bs * r.randrange(0, (size - n) // bs + 1)
        elif shape == "blocks":                    # several whole blocks (batched path)
            k = r.randint(2, 5)
            n = min(k * bs, size // bs * bs)
            off = bs * r.randrange(0, (size - n) // bs + 1)
        else:                                      # unaligned, over several blocks
            n = r.randint(bs, 3 * bs + 5000)
            n = min(n, size - 1)
            off = r.randrange(0, size - n)
        return off, n

    def next(self, model):
        """The next operation as a tuple: (kind, args...)."""
        r = self.rng
        live = sorted(model.live)
        kinds = list(self.weights)
        while True:
            kind = r.choices(kinds, [self.weights[k] for k in kinds])[0]
            if kind in ("write", "discard", "read", "delete", "snapshot") and not live:
                kind = "create"
            if kind in ("snapshot", "create") and len(live) >= self.max_devices:
                continue
            if kind == "delete" and len(live) <= 2:
                continue
            break
        self.serial += 1
        if kind in ("write", "discard", "read"):
            name = r.choice(live)
            off, n = self._span(model.live[name].size)
            if kind == "write":
                return ("write", name, off, r.randbytes(n))
            return (kind, name, off, n)
        if kind == "snapshot":
            return ("snapshot", r.choice(live), f"n{self.serial}")
        if kind == "create":
            size = r.choice([self.dev_size, self.dev_size // 2 + 512])
            return ("create", f"n{self.serial}", size)
        if kind == "delete":
            return ("delete", r.choice(live))
        return (kind,)


def describe(op):
    """An operation, short enough for a message."""
    if op[0] == "write":
        return f"write({op[1]!r}, off={op[2]}, len={len(op[3])})"
    return f"{op[0]}{op[1:]!r}"


def execute(pool, model, op):
    """Run one operation through the public API and update the model.

    Returns the library error it raised (None if none); reads are checked
    against the model; anything but a CowblockError propagates.  A check's
    report is left in model.last_check for the caller to judge."""
    import cowblock

    kind = op[0]
    exc = None
    result = None
    try:
        if kind == "write":
            _, name, off, data = op
            assert pool.device(name).write(off, data) == len(data)
        elif kind == "discard":
            _, name, off, n = op
            pool.device(name).discard(off, n)
        elif kind == "read":
            _, name, off, n = op
            result = pool.device(name).read(off, n)
        elif kind == "snapshot":
            pool.snapshot(op[1], op[2])
        elif kind == "create":
            pool.create_device(op[1], op[2])
        elif kind == "delete":
            pool.delete(op[1])
        elif kind == "flush":
            pool.flush()
        elif kind == "check":
            result = pool.check()
        else:
            raise AssertionError(f"unknown operation {op!r}")
    except cowblock.CowblockError as e:
        exc = e
    ok = exc is None
    if kind == "write":
        model.write(op[1], op[2], op[3], ok)
    elif kind == "discard":
        model.discard(op[1], op[2], op[3], ok)
    elif kind == "read" and ok:
        model.check_read(op[1], op[2], result)
    elif kind == "snapshot":
        if ok:
            model.snapshot(op[1], op[2])
        else:
            model.maybe_created(op[2], model.live[op[1]].size, op[1])
    elif kind == "create":
        if ok:
            model.create(op[1], op[2])
        else:
            model.maybe_created(op[1], op[2])
    elif kind == "delete":
        model.delete(op[1], ok)
    elif kind in ("flush", "check") and ok:
        model.flushed()  # check commits first: a durability point too
    model.last_check = result if kind == "check" else None
    return exc


def make_base(path, block_size, pool_size, seed, checksums=False):
    """A flushed pool: "a" written in full, "b" in patches, "s" a snapshot of
    "a" (so that writes copy up), and a last commit that freed blocks (so
    that its free log is not empty and open punches them); with data
    checksums if asked."""
    import random

    import cowblock

    rng = random.Random(seed ^ 0x5EED)
    model = Model()
    with cowblock.Pool.create(path, size=pool_size, block_size=block_size,
                              checksums=checksums) as pool:
        for name, size in (("a", 1 << 20), ("b", (1 << 20) - 1536)):
            pool.create_device(name, size)
            model.create(name, size)
        data = rng.randbytes(1 << 20)
        pool.device("a").write(0, data)
        model.write("a", 0, data)
        for _ in range(12):
            off = rng.randrange(0, model.live["b"].size - 40000)
            data = rng.randbytes(rng.randint(1, 40000))
            pool.device("b").write(off, data)
            model.write("b", off, data)
        pool.snapshot("a", "s")
        model.snapshot("a", "s")
        pool.create_device("gone", 1 << 18)
        pool.device("gone").write(0, b"g" * 70000)
        pool.flush()
        pool.delete("gone")
    model.flushed()
    return model


def capacity_full(exc, pool_size):
    """A PoolFullError from the pool's own capacity (a tight pool), which the
    workload meets by design: the write was refused, nothing else changed."""
    import cowblock

    return isinstance(exc, cowblock.PoolFullError) and pool_size < (8 << 20)


def scratch_dir(prefix):
    """A temporary directory for pool copies: on tmpfs (/dev/shm) when there
    is one, where fsync and unlink cost nothing; the simulated disk is the
    test backend's, not this file system's.  CB_TEST_TMPDIR overrides."""
    root = os.environ.get("CB_TEST_TMPDIR")
    if root is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > (512 << 20):
            root = "/dev/shm"
    return tempfile.mkdtemp(prefix=prefix, dir=root)
