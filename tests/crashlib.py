"""SIGKILL crash harness for cowblock (DESIGN.md section 2, invariant 4).

A *writer* process (``tests/crash_writer.py``, which calls :func:`writer_main`) opens a pool
and runs an endless, deterministic sequence of operations on several devices that share blocks:
unaligned writes, 4 KiB writes into shared blocks (copy-up in flight), whole-block writes,
discards, snapshots (writable and read-only), creates, deletes and flushes.  The parent kills
it with SIGKILL at a random moment, reopens the pool and verifies it against a model:

a. every byte reads as it was at the last *completed* flush, or as a write issued after that
   flush made it (discards write zeros) -- never another device's data, never garbage;
b. for devices made after that flush by a snapshot, "as it was" means as the origin was at
   the moment of the snapshot (its state at the flush plus its writes up to the snapshot);
c. the device set (names, sizes, read-only flags) is the set after some operation between
   the last completed flush and the last operation begun: every device of the flush that was
   not deleted since must exist, nothing else may;
d. ``pool.check()`` reports no error and no leak (``report.ok``).

How the parent knows what was flushed, without trusting the pool: every operation and every
byte of data derive from a seeded PRNG (:class:`OpGen`, :func:`pattern`), so the verifier
replays the sequence.  The writer appends to a small log file ``B <i> <kind>`` before op i
and ``F <i>`` after ``flush()`` of op i returns, followed by an fsync (a kill cannot lose a
completed ``write(2)`` anyway: the page cache outlives the process).  Ops up to the last ``F``
are certain, later ones up to the last ``B`` are "maybe".

Data is self-identifying: every 16-byte slot at device offset ``a`` (a % 16 == 0) written
by op ``o`` of round ``r`` through device code ``d`` holds ``<u16 r, u16 d, u32 o, u64 a ^ k>``
(``k`` a hash of r, d, o, so every byte depends on the writer): a wrong byte is diagnosed as
"op o of round r wrote it through device d at offset a".

Rounds are chained: the pool of round n is the one round n-1 left after its crash (so kills
during open/recovery are covered and metadata pages get reused), with a fresh pool every
``--pool-every`` rounds (block size from BLOCK_SIZES in turn; every third pool's writer uses
O_DIRECT).  Kills land at a random moment of the run (flush frequency varies by round),
sometimes during interpreter start-up, sometimes just after the writer starts ``Pool.open``.
The summary counts where they landed (from the op log, and for kills inside a flush whether
the new superblock was already written).

Backends: the pools are directories by default; ``Harness(..., ceph=CLUSTER)`` puts them in
RADOS instead (``rados://`` URLs in the test cluster, tests/ceph_cluster.py), so the writer's
client is SIGKILLed with aio writes in flight and mid-way through the guarded superblock
write.  The killed writer's lock outlives it (until its lease lapses): the parent breaks it
(``Pool.unlock``, which blocklists the dead client first) before it reopens, and after the
verify it also checks the pool's RADOS objects (rawstore.check_objects).

Standalone: ``python -m tests.crashlib --rounds 5000`` (from the repository root) or
``python tests/crashlib.py --rounds 5000``; ``--help`` lists the knobs.
"""

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "crash_writer.py")
KiB = 1024
MiB = 1024 * KiB

SLOT = np.dtype([("round", "<u2"), ("dev", "<u2"), ("op", "<u4"), ("addr", "<u8")])
assert SLOT.itemsize == 16

MAX_DEVICES = 8
BLOCK_SIZES = (64 * KiB, 4 * KiB, 16 * KiB, 1 * MiB, 64 * KiB, 256 * KiB)


# --------------------------------------------------------------------------- data


def _key(rnd, dev, op):
    """64 bits mixed from the tag (splitmix64), xored into the offset field so that every
    byte of a slot depends on which op wrote it through which device."""
    z = ((rnd << 48) ^ (dev << 32) ^ op ^ 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def pattern(rnd, dev, op, off, length):
    """The bytes op ``op`` of round ``rnd`` writes through device code ``dev`` at ``off``."""
    first = off // 16
    last = (off + length + 15) // 16
    a = np.empty(last - first, SLOT)
    a["round"] = rnd
    a["dev"] = dev
    a["op"] = op
    a["addr"] = (np.arange(first, last, dtype=np.uint64) * np.uint64(16)) ^ np.uint64(_key(rnd, dev, op))
    s = off - first * 16
    return a.view(np.uint8)[s:s + length]


def describe_slot(raw16, addr):
    """A readable account of the 16 bytes at device offset ``addr`` (a multiple of 16)."""
    raw16 = bytes(raw16)
    if raw16 == bytes(16):
        return "zeros"
    r, d, o, a = np.frombuffer(raw16, SLOT)[0].tolist()
    a ^= _key(r, d, o)
    note = "" if a == addr else f" (!! tag says offset {a}, misplaced by {a - addr:+d})"
    return f"round {r} op {o} via device code {d}{note} [{raw16.hex()}]"


def committed_generation(stores):
    """Generation of the newest superblock stored (meta.h: slots at pages 0 and 1, header
    generation at byte 16, "cowblock" at 32), read raw (``stores``: rawstore.open_stores):
    a figure for the statistics only (did a kill inside a flush land after its commit
    point?).  None if unreadable."""
    try:
        head = stores.read("meta", 0, 8192)
    except (OSError, RuntimeError):
        return None
    gens = [int.from_bytes(head[o + 16:o + 24], "little")
            for o in (0, 4096) if head[o + 32:o + 40] == b"cowblock"]
    return max(gens, default=None)


def code_of(name):
    return int(name[1:])


# --------------------------------------------------------------------------- operations


@dataclasses.dataclass
class DevMeta:
    name: str
    size: int
    readonly: bool

    def as_json(self):
        return [self.name, self.size, self.readonly]


class OpGen:
    """The deterministic operation sequence of one round.

    Depends only on the seed, the round number, the pool's block size and the device set it
    starts from, so the writer and the verifier derive the same ops.  ``next()`` returns an
    op tuple and updates the generator's own view of the device set:

    ``("write", name, off, length)``  data = pattern(round, code, op, off, length)
    ``("discard", name, off, length)``
    ``("snapshot", source, name, readonly)``, ``("create", name, size)``, ``("delete", name)``
    ``("flush",)`` (pool), ``("devflush", name)`` (the same durability point via a device).
    """

    def __init__(self, seed, rnd, block_size, devices, next_code):
        self.rng = random.Random(seed)
        self.rnd = rnd
        self.bs = block_size
        self.sub = max(4096, block_size // 64)
        self.devs = {d.name: DevMeta(*d.as_json()) for d in devices}
        self.next_code = next_code
        self.nops = 0
        # rounds differ in how often they flush, so that kills land in long unflushed
        # stretches as well as in and around flushes
        self.p_flush = self.rng.choice((0.10, 0.06, 0.02))

    def _new_name(self):
        name = f"d{self.next_code}"
        self.next_code += 1
        if self.next_code >= 0xFFFF:
            raise RuntimeError("device codes exhausted: start a fresh pool")
        return name

    def _size(self):
        r = self.rng
        nb = r.randint(6, 20) if self.bs <= 64 * KiB else r.randint(3, 6)
        return nb * self.bs + 512 * r.randrange(self.bs // 512)   # often a partial last block

    def _range(self, size):
        """A write/discard range, with shapes that matter to copy-up."""
        r, bs, sub = self.rng, self.bs, self.sub
        shape = r.random()
        if shape < 0.30:                                  # small, unaligned
            length = r.randint(1, 1500)
            off = r.randrange(size)
        elif shape < 0.55:                                # one sub-block into a (shared) block
            length = sub
            off = r.randrange(size // sub) * sub
        elif shape < 0.70:                                # whole blocks, aligned
            length = bs * r.randint(1, 2)
            off = r.randrange(max(1, size // bs)) * bs
        else:                                             # large, unaligned, across blocks
            length = r.randint(1, 3 * bs)
            off = r.randrange(size)
        length = max(1, min(length, size - off))
        return off, length

    def next(self):
        self.nops += 1
        r = self.rng
        names = sorted(self.devs)
        writable = [n for n in names if not self.devs[n].readonly]
        while True:
            x = r.random()
            if not names or (len(names) < 2 and x < 0.5):
                x = 0.95  # make devices when there are too few
            if x < 0.45:
                if not writable:
                    continue
                name = r.choice(writable)
                off, length = self._range(self.devs[name].size)
                return ("write", name, off, length)
            if x < 0.55:
                if not writable:
                    continue
                name = r.choice(writable)
                if r.random() < 0.5:
                    off, length = self._range(self.devs[name].size)
                else:
                    size = self.devs[name].size
                    off = r.randrange(size)
                    length = r.randint(1, min(size - off, 2 * self.bs))
                return ("discard", name, off, length)
            if x < 0.64:
                if x >= 0.55 + self.p_flush:
                    continue
                if x < 0.55 + 0.8 * self.p_flush or not names:
                    return ("flush",)
                return ("devflush", r.choice(names))
            if x < 0.76:
                if len(names) <= 1:
                    continue
                name = r.choice(names)
                del self.devs[name]
                return ("delete", name)
            if len(names) >= MAX_DEVICES:
                continue
            if x < 0.93 and names:
                src = r.choice(names)
                name = self._new_name()
                ro = r.random() < 0.3
                self.devs[name] = DevMeta(name, self.devs[src].size, ro)
                return ("snapshot", src, name, ro)
            name = self._new_name()
            size = self._size()
            self.devs[name] = DevMeta(name, size, False)
            return ("create", name, size)


# --------------------------------------------------------------------------- the writer


def writer_main(argv=None):
    """Entry point of the writer process: ``crash_writer.py SPEC_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    _die_with_parent(spec.get("parent"))
    log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(s, sync=False):
        os.write(log, s.encode() + b"\n")
        if sync:
            os.fsync(log)

    import cowblock

    note("O")  # about to open: a kill from here to "S" lands in open/recovery
    pool = cowblock.Pool.open(spec["pool"], direct=spec.get("direct", False),
                              keep_freed=spec.get("keep_freed", 0))
    note(f"S {pool.stats()['generation']}")
    gen = OpGen(spec["seed"], spec["round"], pool.block_size,
                [DevMeta(*d) for d in spec["devices"]], spec["next_code"])
    handles = {}

    def dev(name):
        h = handles.get(name)
        if h is None:
            h = handles[name] = pool.device(name)
        return h

    rnd = spec["round"]
    for i in range(1, spec["max_ops"] + 1):
        op = gen.next()
        kind = op[0]
        note(f"B {i} {kind}")
        try:
            if kind == "write":
                _, name, off, length = op
                data = pattern(rnd, code_of(name), i, off, length)
                n = dev(name).write(off, data)
                assert n == length, (n, length)
            elif kind == "discard":
                dev(op[1]).discard(op[2], op[3])
            elif kind == "flush":
                pool.flush()
                note(f"F {i} {pool.stats()['generation']}", sync=True)
            elif kind == "devflush":
                dev(op[1]).flush()
                note(f"F {i} {pool.stats()['generation']}", sync=True)
            elif kind == "snapshot":
                handles[op[2]] = pool.snapshot(op[1], op[2], readonly=op[3])
            elif kind == "create":
                handles[op[1]] = pool.create_device(op[1], op[2])
            elif kind == "delete":
                handles.pop(op[1], None)
                pool.delete(op[1])
        except BaseException as e:  # a real error, not a crash: report it and stop
            note(f"E {i} {type(e).__name__}: {e}".replace("\n", " "), sync=True)
            os._exit(2)
        note(f"D {i}")
    note("X", sync=True)
    os._exit(0)  # no close: leaving without a commit is a crash too


# --------------------------------------------------------------------------- the model


class Model:
    """Replays one round's ops and records what the pool may show after a crash."""

    def __init__(self, rnd, block_size, baseline, devices, next_code, seed):
        self.rnd = rnd
        self.gen = OpGen(seed, rnd, block_size, devices, next_code)
        self.meta = {d.name: DevMeta(*d.as_json()) for d in devices}   # every name ever seen
        self.cur = {n: np.frombuffer(b, np.uint8).copy() for n, b in baseline.items()}
        self.at_flush = None      # name -> content at the last completed flush
        self.origin = {}          # made after the flush: name -> (source or None, op)
        self.writes = {}          # name -> [(op, off, length, data or None for zeros)] after it
        self.sets = []            # device sets after each op from the flush on
        self.kinds = {}

    def replay(self, flushed, last):
        if flushed == 0:
            self._mark_flush()
        for i in range(1, last + 1):
            op = self.gen.next()
            self.kinds[i] = op[0]
            self._apply(i, op, after_flush=i > flushed)
            if i == flushed:
                self._mark_flush()
            elif i > flushed:
                self.sets.append(frozenset(self.cur))

    def _mark_flush(self):
        self.at_flush = {n: a.copy() for n, a in self.cur.items()}
        self.origin.clear()
        self.writes = {n: [] for n in self.cur}
        self.sets = [frozenset(self.cur)]

    def _apply(self, i, op, after_flush):
        kind = op[0]
        if kind in ("write", "discard"):
            _, name, off, length = op
            data = pattern(self.rnd, code_of(name), i, off, length) if kind == "write" else None
            self.cur[name][off:off + length] = 0 if data is None else data
            if after_flush:
                self.writes[name].append((i, off, length, data))
        elif kind == "snapshot":
            _, src, name, ro = op
            self.cur[name] = self.cur[src].copy()
            self.meta[name] = DevMeta(name, self.meta[src].size, ro)
            if after_flush:
                self.origin[name] = (src, i)
                self.writes[name] = []
        elif kind == "create":
            _, name, size = op
            self.cur[name] = np.zeros(size, np.uint8)
            self.meta[name] = DevMeta(name, size, False)
            if after_flush:
                self.origin[name] = (None, i)
                self.writes[name] = []
        elif kind == "delete":
            del self.cur[op[1]]

    def allowed(self, name, actual, before=None):
        """Boolean mask: bytes of ``actual`` that some allowed history explains."""
        ok = np.zeros(actual.size, bool)
        self._explain(name, actual, ok, before)
        return ok

    def _explain(self, name, actual, ok, before):
        if name in self.origin:
            src, op = self.origin[name]
            if src is not None:
                self._explain(src, actual, ok, op)
            else:
                ok |= actual == 0
        else:
            ok |= actual == self.at_flush[name]
        for op, off, length, data in self.writes[name]:
            if before is not None and op >= before:
                break
            seg = actual[off:off + length]
            ok[off:off + length] |= (seg == 0) if data is None else (seg == data)

    def expected_at_flush(self, name, before=None):
        """One allowed content (as at the flush, or at the snapshot that made it)."""
        if name in self.origin:
            src, op = self.origin[name]
            if src is None:
                return np.zeros(self.meta[name].size, np.uint8)
            base = self.expected_at_flush(src, op).copy()
            for w_op, off, length, data in self.writes[src]:
                if w_op >= op:
                    break
                base[off:off + length] = 0 if data is None else data
            return base
        return self.at_flush[name]


# --------------------------------------------------------------------------- the parent


@dataclasses.dataclass
class Stats:
    rounds: int = 0
    ops: int = 0
    flushes: int = 0
    maybe_ops: int = 0
    bytes_verified: int = 0
    maybe_bytes_new: int = 0     # bytes written after the flush that survived the kill
    maybe_bytes_old: int = 0     # ... that read as before
    leaked_blocks: int = 0
    leaky_rounds: int = 0
    checks: int = 0
    object_checks: int = 0       # RADOS pools: objects checked after a reopen
    phases: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def summary(self):
        phases = ", ".join(f"{k}: {v}" for k, v in sorted(self.phases.items(), key=lambda x: -x[1]))
        return (f"{self.rounds} rounds survived in {self.seconds:.1f} s; {self.ops} ops, "
                f"{self.flushes} completed flushes, {self.maybe_ops} unflushed ops at kills; "
                f"{self.bytes_verified / MiB:.1f} MiB verified, unflushed bytes found new "
                f"{self.maybe_bytes_new} / old {self.maybe_bytes_old}; "
                f"leaked blocks after crashes: {self.leaked_blocks} in {self.leaky_rounds} rounds; "
                + (f"RADOS objects checked {self.object_checks} times; "
                   if self.object_checks else "")
                + f"kills landed: {phases}")


def _die_with_parent(parent):
    """In the writer, first thing: SIGKILL it if the harness dies (no orphaned writers).  Done
    here rather than between fork and exec: the harness may hold librados threads, and code
    run in a child before exec could wait for ever on a lock one of them held."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the op budget still ends it
        pass
    if parent and os.getppid() != parent:  # the harness died before the prctl
        os._exit(3)


class CrashFailure(AssertionError):
    pass


class Harness:
    """Runs crash rounds in ``workdir``.  ``strict_leaks``: a leak fails the round (else it is
    counted, repaired with ``check(repair=True)`` and the run goes on)."""

    def __init__(self, workdir, seed=None, pool_every=10, max_delay=0.35,
                 strict_leaks=True, keep_failed=None, verbose=False, ceph=None):
        import cowblock  # noqa: F401 - fail early if the core is not built

        del cowblock

        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.seed = random.randrange(1 << 32) if seed is None else seed
        self.rng = random.Random(self.seed)
        self.pool_every = pool_every
        self.max_delay = max_delay
        self.strict_leaks = strict_leaks
        self.keep_failed = keep_failed
        self.verbose = verbose
        self.ceph = ceph             # a CephCluster: pools in RADOS, else in workdir
        self.stats = Stats()
        self.startup = 0.35          # seconds from spawn to "S", measured as we go
        self.pool = None
        self.rnd = 0
        self.tamper = None           # tests of the oracle: tamper(harness, model) before verify

    # -- pool lifecycle ---------------------------------------------------------

    def _fresh_pool(self):
        import cowblock
        import rawstore

        self.npool = getattr(self, "npool", 0) + 1
        if self.ceph is None:
            self.pool = os.path.join(self.workdir, f"pool{self.npool}")
            shutil.rmtree(os.path.join(self.workdir, f"pool{self.npool - 1}"), ignore_errors=True)
        else:
            from conftest import rados_url

            if self.pool is not None:
                self.stores.remove_pool()
            self.pool = rados_url(self.ceph)
        self.stores = rawstore.open_stores(self.pool, self.ceph)
        bs = BLOCK_SIZES[(self.npool - 1) % len(BLOCK_SIZES)]
        # every other pool keeps data checksums
        with cowblock.Pool.create(self.pool, size=4096 * bs, block_size=bs,
                                  checksums=self.npool % 2 == 0):
            pass
        self.block_size = bs
        # every third pool: the writer uses O_DIRECT (RADOS has no page cache to bypass)
        self.direct = self.npool % 3 == 0 and self.ceph is None
        # pools 2, 3 of every 4: the writer keeps freed blocks for reuse (punch-free)
        self.keep_freed = (64 * bs) if self.npool % 4 in (2, 3) else 0
        self.devices = []            # [DevMeta]
        self.baseline = {}           # name -> bytes
        self.next_code = 1
        self.rnd = 0

    # -- one round ---------------------------------------------------------------

    def round(self):
        if self.pool is None or self.rnd >= self.pool_every:
            self._fresh_pool()
        self.rnd += 1
        seed = self.rng.randrange(1 << 32)
        tag = (f"seed {self.seed} pool {self.npool} (block {self.block_size}"
               f"{', O_DIRECT' if self.direct else ''}"
               f"{', keeping freed blocks' if self.keep_freed else ''}) round {self.rnd}")
        log = os.path.join(self.workdir, "oplog")
        if os.path.exists(log):
            os.unlink(log)
        spec = os.path.join(self.workdir, "spec.json")
        with open(spec, "w") as f:
            json.dump({"pool": self.pool, "log": log, "seed": seed, "round": self.rnd,
                       "parent": os.getpid(),
                       "devices": [d.as_json() for d in self.devices],
                       "next_code": self.next_code, "max_ops": 200000,
                       "direct": self.direct, "keep_freed": self.keep_freed}, f)
        # When to kill: mostly a random moment of the run; sometimes during start-up, or
        # just after the writer starts opening the pool (recovery: punching, first commit).
        mode = self.rng.random()
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, WRITER, spec], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            if mode < 0.05:
                time.sleep(self.rng.uniform(0, self.startup * 1.3))
            elif mode < 0.20:
                self._wait_for(log, proc, t0, b"O")
                time.sleep(self.rng.uniform(0, 0.012))  # Pool.open takes a few ms
            else:
                if self._wait_for(log, proc, t0, b"S "):
                    self.startup = 0.8 * self.startup + 0.2 * (time.monotonic() - t0)
                time.sleep(self.rng.uniform(0, self.max_delay))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if self.ceph is not None:
            # The dead writer's RADOS lock would keep the reopen out until its lease (30 s)
            # lapses: break it now, as `cowblock pool unlock --force` does.  That blocklists
            # the dead client first, so an op of its still on the wire cannot land later.
            import cowblock

            cowblock.Pool.unlock(self.pool)
        records = self._read_log(log)
        ran_out = proc.returncode == 0 and records and records[-1][0] == "X"
        if proc.returncode != -signal.SIGKILL and not ran_out:
            problem = [f"writer exited with {proc.returncode} instead of being killed",
                       err.decode(errors="replace")[-3000:]]
            problem += [" ".join(r) for r in records if r[0] == "E"]
            self._fail(tag, problem)
        self._verify(tag, seed, records)

    @staticmethod
    def _wait_for(log, proc, t0, marker):
        """Poll the op log until a line starts with ``marker``."""
        while time.monotonic() - t0 < 30:
            try:
                with open(log, "rb") as f:
                    if b"\n" + marker in b"\n" + f.read(64):
                        return True
            except FileNotFoundError:
                pass
            if proc.poll() is not None:
                return False
            time.sleep(0.001)
        return False

    @staticmethod
    def _read_log(log):
        try:
            with open(log) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return []
        # the last line may be torn by the kill: drop anything unterminated
        return [ln.split(" ", 2) for ln in lines[:-1] if ln]

    def _phase(self, records, committed):
        if not records:
            return "before open (start-up)"
        last = records[-1]
        if last[0] == "O":
            return "inside Pool.open (recovery)"
        if last[0] in ("S", "D"):
            return "between ops"
        if last[0] == "F":
            return "right after a flush (logging it)"
        if last[0] == "B":
            if last[2] in ("flush", "devflush"):
                where = "superblock written" if committed else "before the superblock"
                return f"inside {last[2]} ({where})"
            return f"inside {last[2]}"
        return last[0]

    # -- verification --------------------------------------------------------------

    def _verify(self, tag, seed, records):
        import cowblock

        begun = [int(r[1]) for r in records if r[0] == "B"]
        flushed = [int(r[1]) for r in records if r[0] == "F"]
        last = max(begun, default=0)
        flush = max(flushed, default=0)
        model = Model(self.rnd, self.block_size, self.baseline, self.devices, self.next_code, seed)
        model.replay(flush, last)
        gens = [int(r[-1]) for r in records if r[0] in ("S", "F")]
        st = self.stats
        st.ops += last
        st.flushes += len(flushed)
        st.maybe_ops += last - flush
        tag = f"{tag}: ops {last}, last completed flush at op {flush}"
        if self.tamper:
            self.tamper(self, model)
        problems = []
        on_disk = committed_generation(self.stores)  # before open, which may commit itself
        committed = bool(gens) and on_disk is not None and on_disk > gens[-1]
        try:
            pool = cowblock.Pool.open(self.pool)
        except Exception as e:  # noqa: BLE001
            self._fail(tag, [f"pool does not open after the crash: {type(e).__name__}: {e}"])
        phase = self._phase(records, committed)
        st.phases[phase] = st.phases.get(phase, 0) + 1
        tag = f"{tag}, killed {phase}"
        contents = {}
        try:
            names = set(pool.devices())
            if names not in model.sets:
                must = set(model.sets[0]) & set(model.sets[-1])
                may = set().union(*model.sets)
                problems.append(
                    f"device set {sorted(names)} is not the set after any op from the flush "
                    f"on; missing {sorted(must - names)}, unexpected {sorted(names - may)}")
            for name in sorted(names):
                meta = model.meta.get(name)
                if meta is None:
                    continue
                dev = pool.device(name)
                if (dev.size, dev.readonly) != (meta.size, meta.readonly):
                    problems.append(f"device {name}: size/readonly {(dev.size, dev.readonly)}, "
                                    f"expected {(meta.size, meta.readonly)}")
                    continue
                actual = np.frombuffer(dev.read(0, dev.size), np.uint8)
                contents[name] = actual.tobytes()
                st.bytes_verified += actual.size
                ok = model.allowed(name, actual)
                if not ok.all():
                    problems.append(self._explain_bad(name, actual, ok, model))
                    continue
                base = model.expected_at_flush(name)
                changed = actual != base
                st.maybe_bytes_new += int(changed.sum())
                later = np.zeros(actual.size, bool)
                for op, off, length, data in model.writes.get(name, ()):
                    later[off:off + length] = True
                st.maybe_bytes_old += int((later & ~changed).sum())
            report = pool.check()
            st.checks += 1
            if report.errors:
                problems.append(f"check: {report.errors} errors: {report.messages}")
            elif report.leaks:
                st.leaked_blocks += report.leaked_blocks
                st.leaky_rounds += 1
                if self.strict_leaks:
                    problems.append(f"check: leaks after the crash: {report.messages}")
                else:
                    fixed = pool.check(repair=True)
                    after = pool.check()
                    if not after.ok:
                        problems.append(f"check --repair did not fix the leaks: {fixed} / {after}")
        except Exception as e:  # noqa: BLE001 - any error of the pool is a finding
            problems.append(f"{type(e).__name__} while verifying: {e}\n{traceback.format_exc()}")
        finally:
            if problems:
                try:
                    pool.close()
                except Exception:  # noqa: BLE001
                    pass
        if problems:
            self._fail(tag, problems)
        pool.close()
        if self.ceph is not None:
            import rawstore

            problems = rawstore.check_objects(self.stores)
            st.object_checks += 1
            if problems:
                self._fail(tag, ["RADOS objects after the reopen: " + "; ".join(problems)])
        # what the next round starts from: the pool as it is now
        self.devices = [model.meta[n] for n in sorted(contents)]
        self.baseline = contents
        self.next_code = model.gen.next_code
        st.rounds += 1
        if self.verbose:
            print(f"ok  {tag}", flush=True)

    def _explain_bad(self, name, actual, ok, model):
        bad = np.flatnonzero(~ok)
        expect = model.expected_at_flush(name)
        lines = [f"device {name} (code {code_of(name)}): {bad.size} bytes hold a value no "
                 f"allowed history explains; first at offset {bad[0]}, "
                 f"{'made after the flush by ' + str(model.origin[name]) if name in model.origin else 'existed at the flush'}"]
        seen = set()
        for b in bad[:2000]:
            a = int(b) // 16 * 16
            if a in seen:
                continue
            seen.add(a)
            lines.append(f"  @{a} (block {a // self.block_size}): reads "
                         f"{describe_slot(actual[a:a + 16], a)}; at the flush it was "
                         f"{describe_slot(expect[a:a + 16], a)}")
            if len(seen) >= 6:
                break
        ws = [(op, off, length, "zeros" if d is None else "data")
              for op, off, length, d in model.writes.get(name, ())]
        lines.append(f"  writes to it after the flush: {ws[:20]}")
        return "\n".join(lines)

    def _fail(self, tag, problems):
        kept = ""
        if self.keep_failed:
            dest = os.path.join(self.keep_failed, f"crash-{self.seed}-{self.npool}-{self.rnd}")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.workdir, dest)
            kept = f"\n(pool, spec and op log kept in {dest})"
        raise CrashFailure(f"crash round failed ({tag}, pool {self.pool}):\n" + "\n".join(problems) + kept)

    # -- many rounds ---------------------------------------------------------------

    def run(self, rounds, progress=None):
        t0 = time.monotonic()
        try:
            for k in range(rounds):
                self.round()
                if progress and (k + 1) % progress == 0:
                    self.stats.seconds = time.monotonic() - t0
                    print(f"[{k + 1}/{rounds}] {self.stats.summary()}", flush=True)
        finally:
            self.stats.seconds = time.monotonic() - t0
        return self.stats


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m tests.crashlib",
        description="SIGKILL crash rounds against a cowblock pool, verified against a model.")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("COWBLOCK_CRASH_ROUNDS", 200)))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--pool-every", type=int, default=10, help="rounds per pool before a fresh one")
    ap.add_argument("--max-delay", type=float, default=0.35,
                    help="kill at most this many seconds after the writer opened the pool")
    ap.add_argument("--allow-leaks", action="store_true",
                    help="count leaks after crashes (and repair them) instead of failing")
    ap.add_argument("--keep-failed", default=".", help="copy a failed round's files here")
    ap.add_argument("--progress", type=int, default=50, help="print figures every N rounds")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="cowblock-crash-")
    os.makedirs(work, exist_ok=True)
    h = Harness(work, seed=args.seed, pool_every=args.pool_every, max_delay=args.max_delay,
                strict_leaks=not args.allow_leaks, keep_failed=os.path.abspath(args.keep_failed),
                verbose=args.verbose)
    print(f"crash harness: seed {h.seed}, {args.rounds} rounds, work dir {work}", flush=True)
    try:
        h.run(args.rounds, progress=args.progress)
    except CrashFailure as e:
        print(f"FAILED after {h.stats.rounds} rounds survived: {e}", flush=True)
        print(h.stats.summary())
        return 1
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(h.stats.summary())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
