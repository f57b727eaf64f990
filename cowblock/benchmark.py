"""Side-by-side benchmark of cowblock against qcow2 (qemu) and a raw file.

This is the engine behind ``cowblock bench`` and ``bench/test_compare.py``.  It runs the
workloads of DESIGN.md section 8 / issue 4 for cowblock and for each installed peer **in the
same run, interleaved per repetition** (A, B, C, A, B, C, ...), so that a noisy shared machine
hurts every engine alike.  Every figure is the median of ``--repeat`` runs; every ratio is
computed pair by pair within one repetition, then the median of those ratios is taken.

Workloads (``--only`` takes these keys):

W1   copy-up: a device of ``--size`` (1 GiB) with ``--block-size`` (64 KiB) blocks, fully
     written; a fresh snapshot; one 4 KiB write into every shared block (stride) or into as
     many distinct random 4 KiB-aligned offsets (random); then one flush.  Only the writes
     and the final flush are timed.
W2   sequential full-block copy-up: 1 MiB writes over the whole fresh snapshot, then flush.
W3   reads of the whole device through snapshot chains of depth 1, 10, 100, 1000
     (qcow2 at 1, 10, 100), sequential (1 MiB) and random (one read per block, permuted).
W4   snapshot cost against device size (1 GiB vs 1 TiB, same data) and mapped data.
W5   Python per-call cost: 4 KiB cached random reads through Device.read/readinto against
     os.pread/os.preadv on a plain file; the read_blocks batch call per block.  With ``--mmap``
     every cowblock figure is also taken, side by side, on the same pool opened with
     ``mmap=True`` (reads served from a mapping of the data file); both pools are then opened
     read-only, as two writable opens of one pool exclude each other.
MEM  resident memory growth and metadata bytes per mapped block (in a subprocess).

Peers: qcow2 through ``qemu-img bench`` at queue depth 1, cluster size = block size,
``extended_l2=off`` and ``on``, backing file = the raw base; the same IO pattern on a raw file
through ``qemu-img bench`` (the issue's reference for "raw") and through a plain Python
``os.pwrite``/``os.preadv`` loop (the same per-call cost as cowblock's Python API; on Linux this
is the faster of the two, qemu's thread-pool AIO costs tens of microseconds per request).
cowblock is timed through its Python API.  ``qemu-io`` is used only to build qcow2 chains.

Random patterns: ``qemu-img bench`` can only step through an image, so the "random" patterns
are scattered sequences ``offset_k = (k * P) mod size`` that qemu-img bench generates itself
(it wraps offsets modulo the image size, checked at start-up).  P is an odd multiple of the IO
size picked so that the sequence touches as many distinct blocks as a truly random sample
would (W1), or visits every block exactly once (W3).  cowblock and the Python loops use the
very same offsets.  (``qemu-io`` would allow any offsets but costs ~40-60 us per command,
which would swamp what is being measured.)

Timing of ``qemu-img bench``: it stops its clock when the last request completes, before the
image is flushed and closed, so for write tests we add the time from its "Run completed" line
to the exit of the process, which is the final flush (a clean close costs about 2 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import inspect
import json
import math
import mmap
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Optional

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "MEM")
PATTERN = 0x33  # byte written by every engine (non-zero: no engine may take a zero shortcut)

# -------------------------------------------------------------------------------------------
# small helpers


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse ``64K``, ``1G``, ``1GiB``, ``4096`` (binary suffixes) into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4096, 64K, 1G)")
    num, unit = float(m.group(1)), m.group(2).lower()
    mult = 1024 ** " kmgtpe".index(unit or " ")
    value = int(num * mult)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def fmt_size(n: float) -> str:
    """IEC units: 1 GiB, 64 KiB, 1.5 MiB."""
    for unit, mult in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= mult:
            v = n / mult
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{int(n)} B"


def fmt_time(sec: Optional[float]) -> str:
    if sec is None or (isinstance(sec, float) and math.isnan(sec)):
        return "-"
    if sec >= 1:
        return f"{sec:.3f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.2f} ms"
    if sec >= 1e-6:
        return f"{sec * 1e6:.2f} us"
    return f"{sec * 1e9:.0f} ns"


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@contextlib.contextmanager
def no_gc():
    """Disable the cyclic GC during a timed Python loop (applied to every Python engine)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def vm_rss() -> int:
    """Resident set size of this process in bytes (from /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fill_file(path: str, size: int, chunk: bytes) -> None:
    """Write ``size`` bytes of ``chunk`` repeated into a new file, then fdatasync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            n = min(len(chunk), size - off)
            os.pwrite(fd, chunk[:n] if n < len(chunk) else chunk, off)
            off += n
        os.fdatasync(fd)
    finally:
        os.close(fd)


def scattered(slots: int, count: int, seed: int, like_random: bool) -> tuple[int, list[int]]:
    """A multiplier P and the slot sequence (k * P) mod slots, k < count (all distinct).

    like_random: pick P so that the number of distinct 16-slot groups (64 KiB blocks of 4 KiB
    slots) touched is closest to what a truly random sample of ``count`` slots would touch;
    otherwise P is near slots / golden ratio (an even spread; with count == slots it is a
    permutation of every slot).
    """
    assert count <= slots
    rng = random.Random(seed)

    def ok(p: int) -> bool:
        return p % 2 == 1 and math.gcd(p, slots) == 1

    if not like_random:
        p = int(slots / 1.6180339887) | 1
        while not ok(p):
            p += 2
        return p, [(k * p) % slots for k in range(count)]
    group = 16
    groups = max(1, slots // group)
    expect = groups * (1 - (1 - count / slots) ** group)
    best = None
    for _ in range(48):
        p = rng.randrange(slots // 4, 3 * slots // 4) | 1
        if not ok(p):
            continue
        seq = [(k * p) % slots for k in range(count)]
        score = abs(len({s // group for s in seq}) - expect)
        if best is None or score < best[0]:
            best = (score, p, seq)
    if best is None:  # tiny sizes
        p = 1
        return p, list(range(count))
    return best[1], best[2]


def sync_all() -> None:
    """Write back every dirty page before a timed run, so no earlier work leaks into it."""
    os.sync()


def supports_o_direct(directory: str) -> tuple[bool, str]:
    if not hasattr(os, "O_DIRECT"):
        return False, "os.O_DIRECT not available on this platform"
    path = os.path.join(directory, ".odirect-probe")
    buf = mmap.mmap(-1, 4096)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            os.pwrite(fd, buf, 0)
        finally:
            os.close(fd)
        return True, ""
    except OSError as e:
        return False, f"O_DIRECT refused by the file system ({e.strerror})"
    finally:
        buf.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def fs_type(path: str) -> str:
    """File-system type of ``path`` from /proc/mounts (longest matching mount point)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def machine_info(directory: str) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fs": fs_type(directory),
        "dir": directory,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    qemu_img = shutil.which("qemu-img")
    if qemu_img:
        with contextlib.suppress(Exception):
            out = subprocess.run([qemu_img, "--version"], capture_output=True, text=True).stdout
            info["qemu"] = out.splitlines()[0].strip()
    with contextlib.suppress(Exception):
        import cowblock  # noqa: F401

        info["cowblock"] = getattr(cowblock, "__version__", "?")
    return info


# -------------------------------------------------------------------------------------------
# qemu runners


class Qemu:
    """Runs ``qemu-img bench`` and ``qemu-io`` and extracts honest timings."""

    def __init__(self) -> None:
        self.img = shutil.which("qemu-img")
        self.io = shutil.which("qemu-io")
        self.stdbuf = shutil.which("stdbuf")
        try:
            self.arg_max = os.sysconf("SC_ARG_MAX")
        except (ValueError, OSError):
            self.arg_max = 128 * KiB

    scatter_ok = True

    def wraps_modulo(self, directory: str) -> bool:
        """True when qemu-img bench wraps ``offset += step`` modulo the image size."""
        path = os.path.join(directory, ".wrap-probe.raw")
        n, slots, p = 8, 16, 5  # slots of 4 KiB; expected slots k*p mod 16
        try:
            with open(path, "wb") as f:
                f.truncate(slots * 4 * KiB)
            subprocess.run([self.img, "bench", "-q", "-w", "-d", "1", "-f", "raw", "-c", str(n),
                            "-s", "4096", "-S", str(p * 4 * KiB), f"--pattern={PATTERN}", path],
                           check=True, capture_output=True)
            with open(path, "rb") as f:
                data = f.read()
            got = {i for i in range(slots) if data[i * 4 * KiB] == PATTERN}
            return got == {(k * p) % slots for k in range(n)}
        except (OSError, subprocess.CalledProcessError):
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _line_buffered(self, cmd: list[str]) -> list[str]:
        # Without line buffering the "Run completed" line would arrive only at exit.
        return [self.stdbuf, "-oL", *cmd] if self.stdbuf else cmd

    def create_overlay(self, path: str, backing: str, backing_fmt: str, cluster: int,
                       extended_l2: bool, size: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        opts = (f"cluster_size={cluster},extended_l2={'on' if extended_l2 else 'off'},"
                f"backing_file={backing},backing_fmt={backing_fmt}")
        subprocess.run([self.img, "create", "-q", "-u", "-f", "qcow2", "-o", opts, path, str(size)],
                       check=True, capture_output=True)

    def bench(self, path: str, fmt: str, *, write: bool, count: int, bufsize: int, step: int,
              cache: str, offset: int = 0) -> float:
        """Run ``qemu-img bench`` at queue depth 1; return seconds (writes: + final flush)."""
        cmd = [self.img, "bench", "-f", fmt, "-t", cache, "-d", "1", "-c", str(count),
               "-s", str(bufsize), "-S", str(step), "-o", str(offset)]
        if write:
            cmd += ["-w", f"--pattern={PATTERN}"]
        cmd.append(path)
        p = subprocess.Popen(self._line_buffered(cmd), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        reported = t_line = None
        assert p.stdout is not None
        for line in p.stdout:
            m = re.search(r"Run completed in ([0-9.]+) seconds", line)
            if m:
                reported, t_line = float(m.group(1)), time.perf_counter()
        err = p.stderr.read() if p.stderr else ""
        rc = p.wait()
        t_exit = time.perf_counter()
        if rc != 0 or reported is None:
            raise RuntimeError(f"qemu-img bench failed (rc={rc}): {err.strip()[:300]}")
        if write and self.stdbuf and t_line is not None:
            # the final flush happens when qemu-img closes the image, after its clock stopped
            return reported + (t_exit - t_line)
        return reported


# -------------------------------------------------------------------------------------------
# result model


@dataclasses.dataclass
class Entry:
    """One engine (or one configuration) inside a group, timed once per repetition."""

    name: str
    run: Callable[[int], float]  # rep -> seconds (whole run, or per operation for unit "op")
    setup: Optional[Callable[[int], None]] = None  # untimed, before each run
    teardown: Optional[Callable[[int], None]] = None  # untimed, after each run
    note: str = ""


@dataclasses.dataclass
class Group:
    key: str  # workload key, e.g. "W1"
    title: str
    mode: str  # "page cache" or "O_DIRECT"
    entries: list[Entry]
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (num, den)
    per_op: bool = False  # times are per operation
    warmup: bool = False  # one untimed run of every entry before the first repetition
    times: dict[str, list[Optional[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    info: dict[str, dict] = dataclasses.field(default_factory=dict)  # per entry extras
    notes: list[str] = dataclasses.field(default_factory=list)

    def median(self, name: str) -> Optional[float]:
        return median(self.times.get(name, []))

    def ratio(self, num: str, den: str) -> Optional[float]:
        """Median over repetitions of num/den computed within each repetition."""
        a, b = self.times.get(num, []), self.times.get(den, [])
        rs = [x / y for x, y in zip(a, b) if x is not None and y]
        return statistics.median(rs) if rs else None

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "mode": self.mode,
            "per_op": self.per_op,
            "entries": [
                {
                    "name": e.name,
                    "times": self.times.get(e.name, []),
                    "median": self.median(e.name),
                    "error": self.errors.get(e.name),
                    "note": e.note,
                    "info": self.info.get(e.name, {}),
                }
                for e in self.entries
            ],
            "ratios": [
                {"num": n, "den": d, "median": self.ratio(n, d)} for n, d in self.pairs
            ],
            "notes": self.notes,
        }


@dataclasses.dataclass
class Goal:
    key: str
    text: str
    value: Optional[float]
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)
    shown: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        ok = self.value <= self.limit if self.kind == "max" else self.value >= self.limit
        return "MET" if ok else "NOT MET"


# -------------------------------------------------------------------------------------------
# the runner


class Runner:
    def __init__(self, args: argparse.Namespace, out=sys.stdout, err=sys.stderr) -> None:
        self.a = args
        self.out = out
        self.err = err
        self.qemu = Qemu()
        self.groups: list[Group] = []
        self.skipped: list[str] = []
        self.goals: list[Goal] = []
        self.extra: dict[str, Any] = {}
        self.dir = ""
        self._cleanup: list[Callable[[], None]] = []
        self.cowblock = None
        self.cowblock_error = ""
        self.direct_ok = False
        self.direct_why = ""
        self.pools: dict[str, Any] = {}

    # -- output --------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.a.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=self.err, flush=True)

    def say(self, msg: str = "") -> None:
        print(msg, file=self.out, flush=True)

    def skip(self, msg: str) -> None:
        self.skipped.append(msg)
        self.say(f"SKIP: {msg}")

    # -- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        a = self.a
        if a.dir:
            os.makedirs(a.dir, exist_ok=True)
            self.dir = tempfile.mkdtemp(prefix="cowblock-bench-", dir=a.dir)
        else:
            # same disk as the current directory (not /tmp, which may be tmpfs)
            self.dir = tempfile.mkdtemp(prefix=".cowblock-bench-", dir=os.getcwd())
        if not a.keep:
            self._cleanup.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        try:
            import cowblock

            cowblock.Pool  # noqa: B018  (fails loudly if the core is not built)
            self.cowblock = cowblock
        except Exception as e:  # pragma: no cover - depends on the build
            self.cowblock_error = f"{type(e).__name__}: {e}"
            self.skip(f"cowblock: cannot import the library ({self.cowblock_error}); peers only")
        if not self.qemu.img:
            self.skip("qcow2/raw via qemu-img bench: qemu-img not installed (apt install qemu-utils)")
        if not self.qemu.io:
            self.skip("qcow2 chains (W3): qemu-io not installed")
        if self.qemu.img and not self.qemu.wraps_modulo(self.dir):
            self.skip("qemu-img bench does not wrap offsets modulo the image size here: "
                      "random (scattered) qemu peers are left out")
            self.qemu.scatter_ok = False
        if self.qemu.img and not self.qemu.stdbuf:
            self.skip("stdbuf not found: qemu-img bench write times exclude the final flush")
        if a.direct:
            self.direct_ok, self.direct_why = supports_o_direct(self.dir)
            if not self.direct_ok:
                self.skip(f"O_DIRECT mode: {self.direct_why}")

    def close(self) -> None:
        for pool in list(self.pools.values()):
            with contextlib.suppress(Exception):
                pool.close()
        self.pools.clear()
        for fn in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                fn()

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- fixtures (built lazily, shared by workloads) ------------------------------------
    def chunk(self) -> bytes:
        # 1 MiB of pseudo-random (incompressible, non-zero) bytes, same for every engine
        if "chunk" not in self.extra:
            r = random.Random(7)
            self.extra["chunk"] = bytes(r.getrandbits(8) | 1 for _ in range(4096)) * 256
        return self.extra["chunk"]

    def base_raw(self) -> str:
        """A raw file of --size bytes, fully written: the qcow2 backing file and read peer."""
        p = self.path("base.raw")
        if not os.path.exists(p):
            self.log(f"writing raw base file {fmt_size(self.a.size)}")
            fill_file(p, self.a.size, self.chunk())
        return p

    def raw_target(self) -> str:
        """A second fully written raw file, the target of the raw-file write peers."""
        p = self.path("target.raw")
        if not os.path.exists(p):
            self.log(f"writing raw target file {fmt_size(self.a.size)}")
            fill_file(p, self.a.size, self.chunk())
        return p

    def pool_open_supports_direct(self) -> bool:
        try:
            return "direct" in inspect.signature(self.cowblock.Pool.open).parameters
        except (TypeError, ValueError, AttributeError):
            return False

    def main_pool(self, direct: bool = False):
        """Pool A: device 'base' of --size, fully written; reopened in the mode asked for."""
        cb = self.cowblock
        path = self.path("pool")
        key = "direct" if direct else "cache"
        if key in self.pools:
            return self.pools[key]
        for other in [k for k in self.pools if k in ("direct", "cache", "w5", "w5-mmap")]:
            self.pools.pop(other).close()
        if not os.path.exists(path):
            self.log(f"creating cowblock pool with a fully written {fmt_size(self.a.size)} device")
            cap = self.a.size * 4 + 256 * MiB
            pool = cb.Pool.create(path, size=cap, block_size=self.a.block_size)
            dev = pool.create_device("base", self.a.size)
            buf = self.chunk()
            for off in range(0, self.a.size, len(buf)):
                dev.write(off, buf[: min(len(buf), self.a.size - off)])
            pool.flush()
            pool.close()
        pool = cb.Pool.open(path, direct=True) if direct else cb.Pool.open(path)
        self.pools[key] = pool
        return pool

    def drop_device(self, pool, name: str) -> None:
        if name in pool.devices():
            pool.delete(name)
            pool.flush()

    # -- group execution -----------------------------------------------------------------
    def run_group(self, g: Group) -> Group:
        reps = self.a.repeat
        self.say()
        self.log(f"{g.key} {g.title} [{g.mode}]: {len(g.entries)} engines x {reps} runs")
        for e in g.entries:
            g.times[e.name] = []
        if g.warmup:
            for e in g.entries:
                self._one(g, e, -1)
        for rep in range(reps):
            for e in g.entries:  # interleaved: A, B, C, A, B, C, ...
                if e.name in g.errors:
                    g.times[e.name].append(None)
                    continue
                t = self._one(g, e, rep)
                g.times[e.name].append(t)
                if t is not None:
                    self.log(f"  {g.key} run {rep + 1}/{reps} {e.name}: {fmt_time(t)}")
        self.groups.append(g)
        self.print_group(g)
        return g

    def _one(self, g: Group, e: Entry, rep: int) -> Optional[float]:
        try:
            if e.setup:
                e.setup(rep)
            t = e.run(rep)
            if e.teardown:
                e.teardown(rep)
            return t
        except Exception as ex:  # an engine failing must not stop the others
            g.errors[e.name] = f"{type(ex).__name__}: {ex}"
            self.log(f"  {g.key} {e.name} FAILED: {g.errors[e.name]}")
            if self.a.verbose:
                import traceback

                traceback.print_exc(file=self.err)
            return None

    def print_group(self, g: Group) -> None:
        self.say(f"{g.key}  {g.title}  [{g.mode}]")
        unit = "per op" if g.per_op else "total"
        width = max([len(e.name) for e in g.entries] + [10]) + 2
        self.say(f"  {'engine'.ljust(width)}{('median ' + unit).rjust(14)}   runs")
        for e in g.entries:
            ts = g.times.get(e.name, [])
            med = g.median(e.name)
            runs = " ".join(fmt_time(t) for t in ts)
            line = f"  {e.name.ljust(width)}{fmt_time(med).rjust(14)}   {runs}"
            if e.name in g.errors:
                line += f"   FAILED: {g.errors[e.name][:120]}"
            self.say(line)
            for k, v in g.info.get(e.name, {}).items():
                self.say(f"  {''.ljust(width)}  {k}: {v}")
        for n, d in g.pairs:
            r = g.ratio(n, d)
            if r is not None:
                self.say(f"  ratio  {n} / {d} = {r:.3f}")
        for note in g.notes:
            self.say(f"  note: {note}")

    # -- the workloads -------------------------------------------------------------------
    def have_cb(self) -> bool:
        return self.cowblock is not None

    def cb_write_entry(self, name: str, direct: bool, offsets: list[int], iosize: int,
                       label: str, reuse: bool = False) -> Entry:
        """cowblock: fresh snapshot of 'base' (untimed), writes + pool.flush() (timed).

        With ``reuse``, the pool keeps freed blocks (keep_freed) and, untimed, a first
        snapshot takes the same writes and is deleted, as when a container is removed
        and the next one starts: the timed writes then land in the blocks it gave up."""
        buf = self.chunk()[:iosize]
        snap = f"{label}-{name}"
        st: dict[str, Any] = {}

        def setup(rep: int) -> None:
            pool = self.main_pool(direct)
            self.drop_device(pool, snap)
            if reuse:
                pool.set_keep_freed(pool.size)
                gone = pool.snapshot("base", snap + "-removed")
                for off in offsets:
                    gone.write(off, buf)
                pool.flush()
                self.drop_device(pool, snap + "-removed")
            st["dev"] = pool.snapshot("base", snap)
            pool.flush()
            st["stats0"] = pool.stats()
            sync_all()

        def run(rep: int) -> float:
            pool = self.main_pool(direct)
            w = st["dev"].write
            with no_gc():
                t0 = time.perf_counter()
                for off in offsets:
                    w(off, buf)
                pool.flush()
                t = time.perf_counter() - t0
            s0, s1 = st["stats0"], pool.stats()
            n = len(offsets)
            info = {}
            if "data_bytes_written" in s1:
                info["data bytes written per write"] = round(
                    (s1["data_bytes_written"] - s0.get("data_bytes_written", 0)) / n)
            if "copyup_bytes" in s1:
                info["bytes copied from origin per write"] = round(
                    (s1["copyup_bytes"] - s0.get("copyup_bytes", 0)) / n)
            if "commits" in s1:
                info["commits"] = s1["commits"] - s0.get("commits", 0)
            st["info"] = info
            return t

        def teardown(rep: int) -> None:
            pool = self.main_pool(direct)
            st.pop("dev", None)
            self.drop_device(pool, snap)
            if reuse:
                pool.set_keep_freed(0)  # gives the kept blocks back

        e = Entry(name, run, setup, teardown)
        e.note = "Python API: Device.write per IO, then Pool.flush()" + (
            "; keep_freed, into the blocks of a removed snapshot" if reuse else "")
        self._entry_state[name] = st
        return e

    def raw_py_write_entry(self, name: str, direct: bool, offsets: list[int], iosize: int,
                           path: Optional[str] = None) -> Entry:
        path = path or self.raw_target()

        def setup(rep: int) -> None:
            sync_all()

        def run(rep: int) -> float:
            flags = os.O_RDWR | (os.O_DIRECT if direct else 0)
            if direct:
                buf = mmap.mmap(-1, iosize)  # page-aligned
                buf.write(self.chunk()[:iosize])
            else:
                buf = self.chunk()[:iosize]
            fd = os.open(path, flags)
            try:
                pw = os.pwrite
                with no_gc():
                    t0 = time.perf_counter()
                    for off in offsets:
                        pw(fd, buf, off)
                    os.fdatasync(fd)
                    t = time.perf_counter() - t0
            finally:
                os.close(fd)
            return t

        return Entry(name, run, setup, note="Python loop: os.pwrite per IO, then os.fdatasync")

    def raw_py_new_file_entry(self, name: str, direct: bool, offsets: list[int],
                              iosize: int, preallocate: bool = False) -> Entry:
        """The same writes into a new sparse file: pays for block allocation and for new
        page-cache pages, as cowblock (and qcow2) do when they copy up into fresh blocks.
        With ``preallocate``, the file's space is allocated first (posix_fallocate, not
        written, not timed): what is left is the cost of writing where nothing was written
        yet, the least any copy-up into new space can cost on this file system."""
        path = self.path("prealloc.raw" if preallocate else "new.raw")
        inner = self.raw_py_write_entry(name, direct, offsets, iosize, path)

        def setup(rep: int) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with open(path, "wb") as f:
                f.truncate(self.a.size)
                if preallocate:
                    os.posix_fallocate(f.fileno(), 0, self.a.size)
            sync_all()

        def run(rep: int) -> float:
            return inner.run(rep)

        def teardown(rep: int) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        return Entry(name, run, setup, teardown,
                     note=("Python loop into a new file whose space was fallocated"
                           if preallocate else "Python loop into a new sparse file") +
                     ", then os.fdatasync")

    def qemu_write_entries(self, kind: str, direct: bool, offsets: list[int], iosize: int,
                           step: Optional[int], label: str) -> list[Entry]:
        """qcow2 l2=off/on and raw through qemu-img bench: offsets_k = (k * step) mod size."""
        q = self.qemu
        entries: list[Entry] = []
        cache = "none" if direct else "writeback"
        count = len(offsets)
        tool = "qemu-img bench"
        if not q.img or step is None:
            return entries
        assert offsets == [(k * step) % self.a.size for k in range(count)]
        base = self.base_raw()
        cluster = self.a.block_size

        def make(target: str, fmt: str) -> Callable[[int], float]:
            def run(rep: int) -> float:
                return q.bench(target, fmt, write=True, count=count, bufsize=iosize,
                               step=step, cache=cache)

            return run

        for l2 in (False, True):
            ov = self.path(f"{label}-l2{'on' if l2 else 'off'}.qcow2")

            def setup(rep: int, ov=ov, l2=l2) -> None:
                q.create_overlay(ov, base, "raw", cluster, l2, self.a.size)
                sync_all()

            def teardown(rep: int, ov=ov) -> None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ov)

            entries.append(Entry(f"qcow2 extended_l2={'on' if l2 else 'off'}", make(ov, "qcow2"),
                                 setup, teardown, note=f"{tool}, cache={cache}, QD1"))
        target = self.raw_target()
        entries.append(Entry(f"raw file ({tool})", make(target, "raw"), lambda rep: sync_all(),
                             note=f"{tool}, cache={cache}, QD1"))
        return entries

    def write_group(self, key: str, title: str, direct: bool, offsets: list[int], iosize: int,
                    step: Optional[int], label: str) -> Group:
        self._entry_state: dict[str, dict] = {}
        mode = "O_DIRECT" if direct else "page cache + final fdatasync"
        entries: list[Entry] = []
        cb_name = "cowblock (direct)" if direct else "cowblock"
        if self.have_cb():
            if direct and not self.pool_open_supports_direct():
                self.skip(f"{key} cowblock O_DIRECT: Pool.open has no 'direct' parameter")
            else:
                entries.append(self.cb_write_entry(cb_name, direct, offsets, iosize, label))
                entries.append(self.cb_write_entry(cb_name + ", reusing freed blocks", direct,
                                                   offsets, iosize, label, reuse=True))
        q_entries = self.qemu_write_entries(key, direct, offsets, iosize, step, label)
        entries += q_entries
        raw_py = "raw file (Python os.pwrite)"
        entries.append(self.raw_py_write_entry(raw_py, direct, offsets, iosize))
        entries.append(self.raw_py_new_file_entry("new sparse raw file (Python os.pwrite)",
                                                  direct, offsets, iosize))
        entries.append(self.raw_py_new_file_entry("fallocated raw file (Python os.pwrite)",
                                                  direct, offsets, iosize, preallocate=True))
        pairs = []
        reuse = cb_name + ", reusing freed blocks"
        if any(e.name == cb_name for e in entries):
            pairs = [(cb_name, e.name) for e in entries if e.name != cb_name]
            pairs += [(reuse, e.name) for e in entries if "raw file" in e.name]
        g = Group(key, title, mode, entries, pairs)
        # stash per-run extras of cowblock (bytes written per write...) once the group ran
        self.run_group(g)
        st = self._entry_state.get(cb_name)
        if st and st.get("info"):
            g.info[cb_name] = st["info"]
            self.say(f"  {cb_name}: " + ", ".join(f"{k} = {v}" for k, v in st["info"].items()))
        return g

    def w1(self, direct: bool) -> None:
        size, bs = self.a.size, self.a.block_size
        n = size // bs
        stride = [i * bs for i in range(n)]
        p, slots = scattered(size // (4 * KiB), n, 1, like_random=True)
        rand = [s * 4 * KiB for s in slots]
        touched = len({o // bs for o in rand})
        mode = "direct" if direct else "cache"
        self.write_group(
            "W1", f"copy-up stride: {n} x 4 KiB writes, one per shared {fmt_size(bs)} block "
            f"of a fresh snapshot of a full {fmt_size(size)} device, + flush",
            direct, stride, 4 * KiB, bs, f"w1s-{mode}")
        g = self.write_group(
            "W1", f"copy-up random: {n} x 4 KiB writes at distinct scattered 4 KiB-aligned "
            f"offsets ({touched} blocks touched) of a fresh snapshot, + flush",
            direct, rand, 4 * KiB, (p * 4 * KiB) if self.qemu.scatter_ok else None, f"w1r-{mode}")
        g.notes.append(f"offsets (k * {p} * 4 KiB) mod size, k < {n}: as many distinct blocks "
                       "as a random sample would touch; same offsets for every engine")

    def w2(self, direct: bool) -> None:
        size = self.a.size
        io = min(MiB, size)
        offs = list(range(0, size, io))
        mode = "direct" if direct else "cache"
        self.write_group(
            "W2", f"sequential copy-up: {len(offs)} x {fmt_size(io)} writes over a fresh "
            f"snapshot of a full {fmt_size(size)} device, + flush",
            direct, offs, io, io, f"w2-{mode}")

    # W3 --------------------------------------------------------------------------------
    def w3(self) -> None:
        size, bs = self.a.size, self.a.block_size
        nblk = size // bs
        depths = [d for d in self.a.depths if d >= 1]
        qdepths = [d for d in self.a.qcow2_depths if d >= 1]
        rng = random.Random(3)
        per_level = 3
        level_writes = [[rng.randrange(0, size // (4 * KiB)) * 4 * KiB for _ in range(per_level)]
                        for _ in range(max(depths + qdepths + [1]))]
        pstep, perm = scattered(nblk, nblk, 4, like_random=False)  # a permutation of blocks
        rand_offs = [b * bs for b in perm]
        seq_io = min(MiB, size)
        seq_offs = list(range(0, size, seq_io))
        entries_seq: list[Entry] = []
        entries_rand: list[Entry] = []
        pairs_seq: list[tuple[str, str]] = []
        pairs_rand: list[tuple[str, str]] = []
        buf4 = self.chunk()[:4 * KiB]

        # cowblock chain
        if self.have_cb():
            pool = self.main_pool(False)
            if "chain-1" not in pool.devices():
                self.log(f"building a cowblock snapshot chain of depth {max(depths)}")
                prev = "base"
                for lvl in range(1, max(depths) + 1):
                    name = f"chain-{lvl}"
                    dev = pool.snapshot(prev, name)
                    for off in level_writes[lvl - 1]:
                        dev.write(off, buf4)
                    prev = name
                pool.flush()
            maxd = max(depths)
            flat = f"flat-{maxd}"
            if flat not in pool.devices():
                # control: depth 1 holding every write of the depth-maxd device, so that
                # depth alone is compared (partly written blocks cost extra reads at any depth)
                dev = pool.snapshot("base", flat)
                for lvl in range(maxd):
                    for off in level_writes[lvl]:
                        dev.write(off, buf4)
                pool.flush()
            flat_label = f"cowblock depth 1, writes of depth {maxd}"
            targets = [("base", "cowblock depth 0")]
            targets += [(f"chain-{d}", f"cowblock depth {d}") for d in depths]
            targets += [(flat, flat_label)]
            for dname, label in targets:

                def seq(rep: int, dname=dname) -> float:
                    dev = self.main_pool(False).device(dname)
                    mv = memoryview(bytearray(seq_io))
                    ri = dev.readinto
                    with no_gc():
                        t0 = time.perf_counter()
                        for off in seq_offs:
                            ri(off, mv)
                        return time.perf_counter() - t0

                def rnd(rep: int, dname=dname) -> float:
                    dev = self.main_pool(False).device(dname)
                    mv = memoryview(bytearray(bs))
                    ri = dev.readinto
                    with no_gc():
                        t0 = time.perf_counter()
                        for off in rand_offs:
                            ri(off, mv)
                        return time.perf_counter() - t0

                entries_seq.append(Entry(label, seq, note="Device.readinto"))
                entries_rand.append(Entry(label, rnd, note="Device.readinto"))
            for d in depths:
                if d != 1 and 1 in depths:
                    pairs_seq.append((f"cowblock depth {d}", "cowblock depth 1"))
                    pairs_rand.append((f"cowblock depth {d}", "cowblock depth 1"))
            if maxd > 1:
                pairs_seq.append((f"cowblock depth {maxd}", flat_label))
                pairs_rand.append((f"cowblock depth {maxd}", flat_label))

        # qcow2 chain (extended_l2=off, the qcow2 default), backing = raw base
        q = self.qemu
        base = self.base_raw()
        if q.img and q.io and qdepths:
            cdir = self.path("qchain")
            os.makedirs(cdir, exist_ok=True)
            top = os.path.join(cdir, f"l{max(qdepths)}.qcow2")
            if not os.path.exists(top):
                self.log(f"building a qcow2 backing chain of depth {max(qdepths)}")
                prev, pfmt = base, "raw"
                for lvl in range(1, max(qdepths) + 1):
                    img = os.path.join(cdir, f"l{lvl}.qcow2")
                    q.create_overlay(img, prev, pfmt, bs, False, size)
                    args = []
                    for off in level_writes[lvl - 1]:
                        args += ["-c", f"write -q -P {PATTERN} {off} 4k"]
                    subprocess.run([q.io, "-f", "qcow2", *args, img], check=True,
                                   capture_output=True)
                    prev, pfmt = img, "qcow2"
            qmax = max(qdepths)
            qflat = os.path.join(cdir, f"flat-{qmax}.qcow2")
            if not os.path.exists(qflat):
                q.create_overlay(qflat, base, "raw", bs, False, size)
                args = []
                for lvl in range(qmax):
                    for off in level_writes[lvl]:
                        args += ["-c", f"write -q -P {PATTERN} {off} 4k"]
                subprocess.run([q.io, "-f", "qcow2", *args, qflat], check=True,
                               capture_output=True)
            qflat_label = f"qcow2 depth 1, writes of depth {qmax}"
            qtargets = [(os.path.join(cdir, f"l{d}.qcow2"), f"qcow2 depth {d}") for d in qdepths]
            qtargets.append((qflat, qflat_label))
            if qmax > 1:
                pairs_seq.append((f"qcow2 depth {qmax}", qflat_label))
                pairs_rand.append((f"qcow2 depth {qmax}", qflat_label))
            for img, label in qtargets:
                entries_seq.append(Entry(
                    label, lambda rep, img=img: q.bench(img, "qcow2", write=False,
                                                        count=len(seq_offs), bufsize=seq_io,
                                                        step=seq_io, cache="writeback"),
                    note="qemu-img bench"))
                entries_rand.append(Entry(
                    label, lambda rep, img=img: q.bench(img, "qcow2", write=False, count=nblk,
                                                        bufsize=bs, step=pstep * bs,
                                                        cache="writeback"),
                    note="qemu-img bench"))
                if label != f"qcow2 depth {qdepths[0]}" and label != qflat_label:
                    pairs_seq.append((label, f"qcow2 depth {qdepths[0]}"))
                    pairs_rand.append((label, f"qcow2 depth {qdepths[0]}"))
            entries_seq.append(Entry(
                "raw file (qemu-img bench)",
                lambda rep: q.bench(base, "raw", write=False, count=len(seq_offs),
                                    bufsize=seq_io, step=seq_io, cache="writeback")))
            entries_rand.append(Entry(
                "raw file (qemu-img bench)",
                lambda rep: q.bench(base, "raw", write=False, count=nblk, bufsize=bs,
                                    step=pstep * bs, cache="writeback")))

        def py_read(offs: list[int], io: int) -> Callable[[int], float]:
            def run(rep: int) -> float:
                fd = os.open(base, os.O_RDONLY)
                try:
                    mv = memoryview(bytearray(io))
                    pr = os.preadv
                    lst = [mv]
                    with no_gc():
                        t0 = time.perf_counter()
                        for off in offs:
                            pr(fd, lst, off)
                        return time.perf_counter() - t0
                finally:
                    os.close(fd)

            return run

        entries_seq.append(Entry("raw file (Python os.preadv)", py_read(seq_offs, seq_io)))
        entries_rand.append(Entry("raw file (Python os.preadv)", py_read(rand_offs, bs)))
        if self.have_cb():
            pairs_seq.append(("cowblock depth 0", "raw file (Python os.preadv)"))
            pairs_rand.append(("cowblock depth 0", "raw file (Python os.preadv)"))
        g1 = Group("W3", f"sequential reads of the whole {fmt_size(size)} device "
                         f"({len(seq_offs)} x {fmt_size(seq_io)}) through a snapshot chain",
                   "page cache (warm)", entries_seq, pairs_seq, warmup=True)
        g1.notes.append(f"each chain level writes {per_level} x 4 KiB at random offsets; "
                        "depth 0 = the base device / raw base file; 'depth 1, writes of depth "
                        "N' = one snapshot holding all the writes of the depth-N device (so "
                        "depth N / that = the cost of depth alone)")
        self.run_group(g1)
        g2 = Group("W3", f"random reads of the whole device ({len(rand_offs)} x {fmt_size(bs)}, "
                         "each block once, scattered order) through a snapshot chain",
                   "page cache (warm)", entries_rand, pairs_rand, warmup=True)
        g2.notes.append(f"block order (k * {pstep}) mod {nblk}: a permutation, same for every engine")
        self.run_group(g2)

    # W4 --------------------------------------------------------------------------------
    def w4(self) -> None:
        if not self.have_cb():
            self.skip("W4 snapshot cost: cowblock not importable")
            return
        cb = self.cowblock
        a = self.a
        data = min(a.size, GiB) if not a.quick else a.size
        big_dev = TiB
        big_mapped = a.big_mapped
        path = self.path("pool-w4")
        per_rep = a.snapshots_per_run
        if not os.path.exists(path):
            cap = data * 2 + big_mapped + 256 * MiB
            self.log(f"W4: creating devices: {fmt_size(data)} and {fmt_size(big_dev)} with "
                     f"{fmt_size(data)} mapped, one with {fmt_size(big_mapped)} mapped")
            pool = cb.Pool.create(path, size=cap, block_size=a.block_size)
            buf = self.chunk()
            for name, dsize, mapped in (("small", data, data), ("huge", big_dev, data),
                                        ("mapped", big_mapped, big_mapped)):
                dev = pool.create_device(name, dsize)
                for off in range(0, mapped, len(buf)):
                    dev.write(off, buf[: min(len(buf), mapped - off)])
                pool.flush()
            pool.close()
        pool = cb.Pool.open(path)
        self.pools["w4"] = pool
        counter = [0]

        def make(src: str, with_flush: bool) -> Callable[[int], float]:
            def run(rep: int) -> float:
                ts = []
                names = []
                with no_gc():
                    for _ in range(1 if with_flush else per_rep):
                        counter[0] += 1
                        name = f"s{counter[0]}"
                        t0 = time.perf_counter()
                        pool.snapshot(src, name)
                        if with_flush:
                            pool.flush()
                        ts.append(time.perf_counter() - t0)
                        names.append(name)
                for name in names:
                    pool.delete(name)
                pool.flush()
                return statistics.median(ts)

            return run

        labels = {"small": f"{fmt_size(data)} device, {fmt_size(data)} mapped",
                  "huge": f"{fmt_size(big_dev)} device, {fmt_size(data)} mapped",
                  "mapped": f"{fmt_size(big_mapped)} device, {fmt_size(big_mapped)} mapped"}
        entries = [Entry(labels[s], make(s, False)) for s in ("small", "huge", "mapped")]
        g = Group("W4", f"Pool.snapshot() time (median of {per_rep} calls per run)",
                  "in-process", entries, per_op=True, warmup=True,
                  pairs=[(labels["huge"], labels["small"]), (labels["mapped"], labels["small"])])
        if big_mapped < 64 * GiB:
            g.notes.append(f"mapped-data case scaled to {fmt_size(big_mapped)} "
                           "(use --big-mapped 64G for the full 64 GiB case; needs that much disk)")
        self.run_group(g)
        entries = [Entry(labels[s], make(s, True)) for s in ("small", "huge", "mapped")]
        g2 = Group("W4", "Pool.snapshot() + Pool.flush() (the snapshot made durable)",
                   "page cache + fdatasync", entries, per_op=True,
                   pairs=[(labels["huge"], labels["small"]), (labels["mapped"], labels["small"])])
        self.run_group(g2)
        pool.close()
        self.pools.pop("w4", None)
        if not a.keep:
            shutil.rmtree(path, ignore_errors=True)

    # W5 --------------------------------------------------------------------------------
    def w5_pools(self) -> list[tuple[str, Callable[[], Any]]]:
        """(name suffix, getter of the main pool) for each cowblock mode W5 measures."""
        if not self.a.mmap:
            return [("", lambda: self.main_pool(False))]
        self.main_pool(False)  # makes the pool if needed
        for other in [k for k in self.pools if k in ("direct", "cache")]:
            self.pools.pop(other).close()
        cb, path = self.cowblock, self.path("pool")
        self.pools["w5"] = cb.Pool.open(path, readonly=True)
        self.pools["w5-mmap"] = cb.Pool.open(path, readonly=True, mmap=True)
        return [("", lambda: self.pools["w5"]), (", mmap", lambda: self.pools["w5-mmap"])]

    def w5(self) -> None:
        a = self.a
        base = self.base_raw()
        n = a.calls
        rng = random.Random(5)
        offs = [rng.randrange(0, a.size // (4 * KiB)) * 4 * KiB for _ in range(n)]
        entries: list[Entry] = []

        fds: dict[str, int] = {}

        def fd() -> int:
            if "fd" not in fds:
                fds["fd"] = os.open(base, os.O_RDONLY)
            return fds["fd"]

        buf4 = bytearray(4 * KiB)
        # each loop is written out (no generic call wrapper) so no engine pays for extra frames
        def r_pread(rep: int) -> float:
            f, pr = fd(), os.pread
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    pr(f, 4096, off)
                return (time.perf_counter() - t0) / n

        def r_preadv(rep: int) -> float:
            f, pr, lst = fd(), os.preadv, [buf4]
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    pr(f, lst, off)
                return (time.perf_counter() - t0) / n

        entries += [Entry("os.pread(fd, 4096, off)", r_pread),
                    Entry("os.preadv(fd, [buf], off)", r_preadv)]
        pairs = []
        modes = self.w5_pools() if self.have_cb() else []
        for sfx, get_pool in modes:
            def r_read(rep: int, get_pool=get_pool) -> float:
                rd = get_pool().device("base").read
                with no_gc():
                    t0 = time.perf_counter()
                    for off in offs:
                        rd(off, 4096)
                    return (time.perf_counter() - t0) / n

            def r_readinto(rep: int, get_pool=get_pool) -> float:
                ri = get_pool().device("base").readinto
                with no_gc():
                    t0 = time.perf_counter()
                    for off in offs:
                        ri(off, buf4)
                    return (time.perf_counter() - t0) / n

            entries += [Entry(f"Device.read(off, 4096){sfx}", r_read),
                        Entry(f"Device.readinto(off, buf){sfx}", r_readinto)]
            pairs += [(f"Device.read(off, 4096){sfx}", "os.pread(fd, 4096, off)"),
                      (f"Device.readinto(off, buf){sfx}", "os.preadv(fd, [buf], off)")]
        g = Group("W5", f"Python per-call cost: {n} cached random 4 KiB reads",
                  "page cache (warm)", entries, pairs, per_op=True, warmup=True)
        g.notes.append("os.pread/os.preadv read the raw base file; Device.* read the fully "
                       "written base device (same data)")
        if a.mmap and self.have_cb():
            g.notes.append("--mmap: both cowblock pools opened read-only; ', mmap' = "
                           "Pool.open(mmap=True), reads copied from a mapping of the data file")
        self.run_group(g)
        if "fd" in fds:
            os.close(fds.pop("fd"))

        if not self.have_cb():
            self.skip("W5 batch (read_blocks): cowblock not importable")
            return
        # batch: read_blocks per block vs single calls, at the pool's block size and at 4 KiB
        import numpy as np

        cb = self.cowblock
        small_path = self.path("pool-4k")
        small_size = min(a.size, 64 * MiB)
        if not os.path.exists(small_path):
            p4 = cb.Pool.create(small_path, size=small_size * 2, block_size=4 * KiB)
            d4 = p4.create_device("base", small_size)
            buf = self.chunk()
            for off in range(0, small_size, len(buf)):
                d4.write(off, buf[: min(len(buf), small_size - off)])
            p4.flush()
            p4.close()
        if a.mmap:
            self.pools["4k"] = cb.Pool.open(small_path, readonly=True)
            self.pools["4k-mmap"] = cb.Pool.open(small_path, readonly=True, mmap=True)
        else:
            self.pools["4k"] = cb.Pool.open(small_path)
        batch_entries: list[Entry] = []
        bpairs: list[tuple[str, str]] = []
        cases = []
        for sfx, get_pool in modes:
            p4 = self.pools["4k-mmap" if sfx else "4k"]
            cases += [(fmt_size(a.block_size), sfx, lambda g=get_pool: g().device("base"),
                       a.block_size, a.size),
                      ("4 KiB", sfx, lambda p4=p4: p4.device("base"), 4 * KiB, small_size)]
        # grouped by block size, so that the two modes of one size run next to each other
        cases.sort(key=lambda c: -c[3])
        for label, sfx, get_dev, bsz, dsize in cases:
            nb = min(dsize // bsz, 16384)
            # a batch fills at most --batch-bytes (1 MiB): bigger destinations fall out of the
            # CPU caches and then the memcpy, not the call, sets the per-block cost
            batch_n = max(1, min(a.batch, a.batch_bytes // bsz, nb))
            nb -= nb % batch_n
            idx = np.array(random.Random(6).sample(range(dsize // bsz), nb), dtype=np.uint64)
            chunks = [idx[i:i + batch_n] for i in range(0, nb, batch_n)]
            # every engine reads into the same batch_n-row array (row i % batch_n), so all pay
            # the same cache footprint for the destination; Device.read allocates by contract
            out = np.empty((batch_n, bsz), dtype=np.uint8)
            rows = [out[i] for i in range(batch_n)]
            work = [(int(b) * bsz, rows[i % batch_n]) for i, b in enumerate(idx)]

            def single(rep: int, get_dev=get_dev, work=work, bsz=bsz) -> float:
                rd = get_dev().read
                with no_gc():
                    t0 = time.perf_counter()
                    for off, _row in work:
                        rd(off, bsz)
                    return (time.perf_counter() - t0) / len(work)

            def single_into(rep: int, get_dev=get_dev, work=work) -> float:
                ri = get_dev().readinto
                with no_gc():
                    t0 = time.perf_counter()
                    for off, row in work:
                        ri(off, row)
                    return (time.perf_counter() - t0) / len(work)

            def batch(rep: int, get_dev=get_dev, chunks=chunks, out=out, nb=nb) -> float:
                rb = get_dev().read_blocks
                with no_gc():
                    t0 = time.perf_counter()
                    for c in chunks:
                        rb(c, out=out)
                    return (time.perf_counter() - t0) / nb

            # pairs compare like with like: single calls and the batch on the same pool/mode
            n1 = f"Device.read, {label} blocks{sfx}"
            n2 = f"Device.readinto, {label} blocks{sfx}"
            n3 = f"Device.read_blocks ({batch_n} per call), {label} blocks{sfx}"
            batch_entries += [Entry(n1, single), Entry(n2, single_into), Entry(n3, batch)]
            bpairs += [(n1, n3), (n2, n3)]
        g2 = Group("W5", "batch call: Device.read_blocks per block vs one call per block "
                         "(random blocks)", "page cache (warm)", batch_entries, bpairs,
                   per_op=True, warmup=True)
        self.run_group(g2)
        for k in ("4k", "4k-mmap", "w5", "w5-mmap"):
            if k in self.pools:
                self.pools.pop(k).close()

    # MEM -------------------------------------------------------------------------------
    def mem(self) -> None:
        if not self.have_cb():
            self.skip("MEM memory/metadata: cowblock not importable")
            return
        a = self.a
        mapped = a.mem_size
        results: dict[str, list[Optional[float]]] = {}
        raw_runs = []

        def run(rep: int) -> float:
            path = self.path(f"pool-mem-{rep}")
            shutil.rmtree(path, ignore_errors=True)
            code = ("import json, sys; from cowblock.benchmark import _mem_child; "
                    "print(json.dumps(_mem_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))")
            p = subprocess.run([sys.executable, "-c", code, path, str(mapped), str(a.block_size)],
                               capture_output=True, text=True)
            shutil.rmtree(path, ignore_errors=True)
            if p.returncode != 0:
                raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else
                                   f"rc={p.returncode}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            raw_runs.append(r)
            for k, v in r.items():
                results.setdefault(k, []).append(v)
            return r["write_seconds"]

        g = Group("MEM", f"write {fmt_size(mapped)} into a new device (1 MiB writes), flush, "
                         "reopen; in a subprocess", "page cache", [Entry("cowblock", run)])
        self.run_group(g)
        if not raw_runs:
            return
        med = {k: median(v) for k, v in results.items() if all(isinstance(x, (int, float)) for x in v)}
        nblocks = mapped // a.block_size
        info = {
            "mapped": fmt_size(mapped),
            "RSS growth while writing": f"{fmt_size(med['rss_growth_write'])} "
                                        f"({100 * med['rss_growth_write'] / mapped:.3f} % of mapped)",
            "peak RSS (ru_maxrss) growth": f"{fmt_size(med['maxrss_growth'])} "
                                           f"({100 * med['maxrss_growth'] / mapped:.3f} %)",
            "RSS growth of a reopen + full read": f"{fmt_size(med['rss_growth_open'])} "
                                                  f"({100 * med['rss_growth_open'] / mapped:.3f} %)",
            "metadata on disk": f"{fmt_size(med['meta_bytes'])} = "
                                f"{med['meta_bytes'] / nblocks:.1f} bytes per mapped block "
                                f"({100 * med['meta_bytes'] / mapped:.4f} % of mapped)",
        }
        g.info["cowblock"] = info
        self.extra["mem"] = {"mapped": mapped, "block_size": a.block_size, "medians": med,
                             "runs": raw_runs}
        for k, v in info.items():
            self.say(f"  {k}: {v}")
        # qcow2's metadata for comparison: a fully written overlay
        if self.qemu.img:
            self.qcow2_meta()

    def qcow2_meta(self) -> None:
        q = self.qemu
        size, bs = min(self.a.mem_size, self.a.size), self.a.block_size
        for l2 in (False, True):
            img = self.path(f"meta-l2{'on' if l2 else 'off'}.qcow2")
            try:
                subprocess.run([q.img, "create", "-q", "-f", "qcow2", "-o",
                                f"cluster_size={bs},extended_l2={'on' if l2 else 'off'}",
                                img, str(size)], check=True, capture_output=True)
                q.bench(img, "qcow2", write=True, count=size // MiB, bufsize=MiB, step=MiB,
                        cache="writeback")
                out = subprocess.run([q.img, "check", "--output=json", img], capture_output=True,
                                     text=True)
                info = json.loads(out.stdout)
                alloc = info.get("allocated-clusters", 0) * bs
                end = info.get("image-end-offset", os.path.getsize(img))
                meta = max(0, end - alloc)
                nb = size // bs
                self.extra.setdefault("qcow2_meta", {})[f"extended_l2={'on' if l2 else 'off'}"] = {
                    "mapped": size, "meta_bytes": meta}
                self.say(f"  qcow2 extended_l2={'on' if l2 else 'off'} ({fmt_size(size)} written): "
                         f"metadata {fmt_size(meta)} = {meta / nb:.1f} bytes per cluster "
                         f"({100 * meta / size:.4f} %)")
            except Exception as e:
                self.say(f"  qcow2 metadata: not measured ({e})")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(img)

    # -- goals ---------------------------------------------------------------------------
    def find(self, key: str, title_part: str, mode_part: str = "") -> Optional[Group]:
        for g in self.groups:
            if g.key == key and title_part in g.title and mode_part in g.mode:
                return g
        return None

    def evaluate_goals(self) -> None:
        G = self.goals

        def add(key, text, value, limit, kind="max", shown=""):
            G.append(Goal(key, text, value, limit, kind, shown))

        for mode in ("page cache", "O_DIRECT"):
            cb = "cowblock" if mode == "page cache" else "cowblock (direct)"
            for variant, tool in (("stride", "qemu-img bench"), ("random", "qemu-img bench")):
                g = self.find("W1", f"copy-up {variant}", mode)
                if not g:
                    continue
                tag = f"W1 {variant} [{mode}]"
                add(tag, "cowblock / qcow2 extended_l2=on <= 1/1.3",
                    g.ratio(cb, "qcow2 extended_l2=on"), 1 / 1.3)
                add(tag, "cowblock / qcow2 extended_l2=off <= 1/4",
                    g.ratio(cb, "qcow2 extended_l2=off"), 0.25)
                add(tag, f"cowblock / raw file ({tool}) <= 1.15",
                    g.ratio(cb, f"raw file ({tool})"), 1.15)
                add(tag, "cowblock / raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "raw file (Python os.pwrite)"), 1.15)
                add(tag, "cowblock / new sparse raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "new sparse raw file (Python os.pwrite)"), 1.15)
                add(tag, "cowblock / fallocated raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "fallocated raw file (Python os.pwrite)"), 1.15)
                add(tag, "(keep_freed, reusing a removed snapshot's blocks) "
                    "cowblock / raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb + ", reusing freed blocks", "raw file (Python os.pwrite)"), 1.15)
            g = self.find("W2", "sequential copy-up", mode)
            if g:
                add(f"W2 [{mode}]", "cowblock / raw file (qemu-img bench) <= 1.15",
                    g.ratio(cb, "raw file (qemu-img bench)"), 1.15)
                add(f"W2 [{mode}]", "cowblock / raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "raw file (Python os.pwrite)"), 1.15)
                add(f"W2 [{mode}]", "cowblock / new sparse raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "new sparse raw file (Python os.pwrite)"), 1.15)
                add(f"W2 [{mode}]", "cowblock / fallocated raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb, "fallocated raw file (Python os.pwrite)"), 1.15)
                add(f"W2 [{mode}]", "(keep_freed, reusing a removed snapshot's blocks) "
                    "cowblock / raw file (Python os.pwrite) <= 1.15",
                    g.ratio(cb + ", reusing freed blocks", "raw file (Python os.pwrite)"), 1.15)
        for variant in ("sequential", "random"):
            g = self.find("W3", f"{variant} reads")
            if g:
                deepest = max((d for d in self.a.depths if d > 1), default=None)
                if deepest:
                    add("W3 " + variant, f"cowblock depth {deepest} / depth 1 <= 1.05",
                        g.ratio(f"cowblock depth {deepest}", "cowblock depth 1"), 1.05)
                    add("W3 " + variant, f"(depth alone) cowblock depth {deepest} / depth 1 "
                        f"with the same writes <= 1.05",
                        g.ratio(f"cowblock depth {deepest}",
                                f"cowblock depth 1, writes of depth {deepest}"), 1.05)
        g = self.find("W4", "Pool.snapshot() time")
        if g:
            names = [e.name for e in g.entries]
            add("W4", "snapshot(1 TiB device) / snapshot(1 GiB device) <= 2",
                g.ratio(names[1], names[0]), 2.0)
            add("W4", f"snapshot({names[2].split(',')[1].strip()}) / snapshot(1 GiB mapped) <= 2",
                g.ratio(names[2], names[0]), 2.0)
            worst = max((m for m in (g.median(n) for n in names) if m is not None), default=None)
            add("W4", "every snapshot() under 1 ms", worst, 1e-3, shown=fmt_time(worst))
        g = self.find("W5", "Python per-call")
        if g:
            add("W5", "Device.read(4 KiB) / os.pread <= 1.5",
                g.ratio("Device.read(off, 4096)", "os.pread(fd, 4096, off)"), 1.5)
            if "Device.read(off, 4096), mmap" in g.times:
                add("W5", "(mmap) Device.read(4 KiB), mmap / os.pread <= 1.5",
                    g.ratio("Device.read(off, 4096), mmap", "os.pread(fd, 4096, off)"), 1.5)
        g = self.find("W5", "batch call")
        if g:
            for n, d in g.pairs:
                if n.startswith("Device.read,"):
                    add("W5", f"per block: ({n}) / read_blocks >= 5", g.ratio(n, d), 5.0, "min")
        m = self.extra.get("mem")
        if m:
            med = m["medians"]
            add("MEM", "resident memory growth <= 1 % of mapped data",
                100 * max(med["rss_growth_write"], med["maxrss_growth"]) / m["mapped"], 1.0,
                shown=f"{100 * max(med['rss_growth_write'], med['maxrss_growth']) / m['mapped']:.3f} %")
            add("MEM", "metadata on disk <= 0.1 % of mapped data",
                100 * med["meta_bytes"] / m["mapped"], 0.1,
                shown=f"{100 * med['meta_bytes'] / m['mapped']:.4f} %")

        self.say()
        self.say("GOALS (medians of pair-by-pair ratios, same run)")
        for goal in G:
            val = goal.shown or ("-" if goal.value is None else f"{goal.value:.3f}")
            self.say(f"  {goal.status:>12}  {goal.key:<22} {goal.text}: {val}")

    # -- reports -------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "machine": machine_info(self.dir or os.getcwd()),
            "config": {k: v for k, v in vars(self.a).items() if k not in ("func",)},
            "skipped": self.skipped,
            "groups": [g.to_json() for g in self.groups],
            "goals": [dict(dataclasses.asdict(g), status=g.status) for g in self.goals],
            "extra": {k: v for k, v in self.extra.items() if k != "chunk"},
        }

    def plot(self, path: str) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.say(f"plot: skipped, matplotlib is not installed (pip install matplotlib); "
                     f"{path} not written")
            return
        groups = [g for g in self.groups if any(g.median(e.name) for e in g.entries)]
        if not groups:
            self.say("plot: nothing to plot")
            return
        cols = 2
        rows = (len(groups) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
        for ax, g in zip(axes.flat, groups):
            names = [e.name for e in g.entries if g.median(e.name)]
            meds = [g.median(n) for n in names]
            scale, unit = (1e6, "us per op") if g.per_op else (1.0, "seconds")
            colors = ["tab:gray" if "raw file" in n or n.startswith("os.") else
                      "tab:blue" if n.startswith("qcow2") else "tab:green" for n in names]
            ax.barh(range(len(names)), [m * scale for m in meds], color=colors)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(f"median, {unit}", fontsize=8)
            ax.set_title(f"{g.key} {g.title[:70]} [{g.mode}]", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        m = machine_info(self.dir or os.getcwd())
        fig.suptitle(f"cowblock bench - {m['nproc']} x {m['cpu']}, {m['fs']}, "
                     f"repeat {self.a.repeat}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.98))
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.say(f"plot written to {path}")

    def summary(self) -> None:
        """The compact table printed at the end (also the README table)."""
        m = machine_info(self.dir or os.getcwd())
        self.say()
        self.say("=" * 100)
        self.say(f"cowblock bench  {m['date']}  repeat={self.a.repeat}  size={fmt_size(self.a.size)}"
                 f"  block={fmt_size(self.a.block_size)}")
        self.say(f"machine: {m['nproc']} x {m['cpu']}, {fmt_size(m['memory'])} RAM, fs {m['fs']}, "
                 f"kernel {m['kernel']}, Python {m['python']}, {m.get('qemu', 'qemu: none')}")
        self.say("=" * 100)
        for g in self.groups:
            ref = next((e.name for e in g.entries if e.name.startswith("cowblock")), None)
            self.say(f"{g.key} {g.title} [{g.mode}]")
            for e in g.entries:
                med = g.median(e.name)
                ratio = ""
                for n, d in g.pairs:
                    if n == ref and d == e.name and g.ratio(n, d) is not None:
                        ratio = f"{ref}/this = {g.ratio(n, d):.2f}"
                    elif n == e.name and n != ref and g.ratio(n, d) is not None:
                        ratio = f"this/{d} = {g.ratio(n, d):.2f}"
                err = "  FAILED" if e.name in g.errors else ""
                self.say(f"  {e.name:<48}{fmt_time(med):>12}  {ratio}{err}")
                for k, v in g.info.get(e.name, {}).items():
                    self.say(f"  {'':<48}{'':>12}  {k}: {v}")


def _mem_child(path: str, mapped: int, block_size: int) -> dict:
    """Run in a fresh interpreter: memory and metadata of a pool with ``mapped`` bytes mapped."""
    import cowblock

    chunk = bytes(range(1, 256)) * (MiB // 255) + b"\x01" * (MiB % 255)
    rss_start = vm_rss()
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pool = cowblock.Pool.create(path, size=mapped + 64 * MiB, block_size=block_size)
    dev = pool.create_device("m", mapped)
    rss0 = vm_rss()
    t0 = time.perf_counter()
    w = dev.write
    for off in range(0, mapped, MiB):
        w(off, chunk[: min(MiB, mapped - off)])
    pool.flush()
    t_write = time.perf_counter() - t0
    rss1 = vm_rss()
    max1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = pool.stats()
    used = pool.used
    pool.close()
    rss_closed = vm_rss()
    pool = cowblock.Pool.open(path)
    dev = pool.device("m")
    buf = bytearray(MiB)
    for off in range(0, mapped, MiB):
        dev.readinto(off, memoryview(buf)[: min(MiB, mapped - off)])
    rss_open = vm_rss()
    stats2 = pool.stats()
    pool.close()
    return {
        "write_seconds": t_write,
        "rss_start": rss_start,
        "rss_growth_write": rss1 - rss0,
        "maxrss_growth": max(0, max1 - max(max0, rss0)),
        "rss_growth_open": rss_open - rss_closed,
        "meta_bytes": stats2.get("meta_bytes", stats.get("meta_bytes", 0)),
        "data_bytes_on_disk": stats2.get("data_bytes_on_disk", 0),
        "used": used,
    }


# -------------------------------------------------------------------------------------------
# command line


def build_parser(prog: str = "cowblock bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark cowblock side by side with qcow2 (qemu-img/qemu-io) and a raw "
                    "file on this machine: copy-up (W1, W2), chain reads (W3), snapshot cost "
                    "(W4), Python per-call cost (W5), memory and metadata (MEM).",
        epilog="Each figure is the median of --repeat runs, engines interleaved per run; "
               "ratios are computed pair by pair within a run. Exit status: 0 when the "
               "benchmark ran (goals are reported, not enforced), 2 on bad arguments.")
    p.add_argument("--dir", help="where to put the files (default: a temporary directory under "
                                 "the current directory, i.e. on the same disk)")
    p.add_argument("--size", type=parse_size, default=None, help="device size (default 1G)")
    p.add_argument("--block-size", type=parse_size, default=64 * KiB,
                   help="cowblock block size = qcow2 cluster size (default 64K)")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3; 1 with --quick)")
    p.add_argument("--direct", action="store_true",
                   help="also run W1/W2 with O_DIRECT (qemu -t none, cowblock direct=True)")
    p.add_argument("--only", default="", help=f"comma-separated workloads from {','.join(WORKLOADS)}")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    p.add_argument("--big-mapped", type=parse_size, default=None,
                   help="W4: mapped data of the large case (default 8G, quick 128M; the "
                        "issue's full case is 64G and needs that much free disk)")
    p.add_argument("--mem-size", type=parse_size, default=None,
                   help="MEM: bytes mapped in the memory/metadata test (default 4G)")
    p.add_argument("--depths", default=None, help="W3 cowblock chain depths (default 1,10,100,1000)")
    p.add_argument("--qcow2-depths", default=None, help="W3 qcow2 chain depths (default 1,10,100)")
    p.add_argument("--calls", type=int, default=None, help="W5 calls per run (default 200000)")
    p.add_argument("--mmap", action="store_true",
                   help="W5: also measure cowblock with Pool.open(mmap=True), side by side "
                        "(reads from a read-only mapping of the data file)")
    p.add_argument("--batch", type=int, default=256,
                   help="W5: at most this many blocks per read_blocks call (default 256)")
    p.add_argument("--batch-bytes", type=parse_size, default=MiB,
                   help="W5: and at most this many bytes per read_blocks call (default 1M)")
    p.add_argument("--snapshots-per-run", type=int, default=50, help="W4 snapshot() calls per run")
    p.add_argument("--keep", action="store_true", help="keep the files afterwards")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failed engines")
    return p


def _finish_args(a: argparse.Namespace) -> argparse.Namespace:
    q = a.quick
    a.size = a.size or (64 * MiB if q else GiB)
    a.repeat = a.repeat or (1 if q else 3)
    a.big_mapped = a.big_mapped or (256 * MiB if q else 8 * GiB)
    a.mem_size = a.mem_size or (64 * MiB if q else 4 * GiB)
    a.calls = a.calls or (20000 if q else 200000)
    a.depths = [int(x) for x in (a.depths or "1,10,100,1000").split(",") if x.strip()]
    a.qcow2_depths = [int(x) for x in (a.qcow2_depths or ("1,10" if q else "1,10,100")).split(",")
                      if x.strip()]
    if a.block_size & (a.block_size - 1) or not 4 * KiB <= a.block_size <= MiB:
        raise argparse.ArgumentTypeError("--block-size must be a power of two in [4K, 1M]")
    if a.size % a.block_size:
        raise argparse.ArgumentTypeError("--size must be a multiple of --block-size")
    if a.repeat < 1:
        raise argparse.ArgumentTypeError("--repeat must be at least 1")
    only = [w.strip().upper() for w in a.only.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {bad}; choose from {WORKLOADS}")
    a.only = only or list(WORKLOADS)
    return a


def run(argv: Optional[list[str]] = None, out=sys.stdout, err=sys.stderr) -> dict:
    """Run the benchmark; return the JSON-able results (also printed as tables)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        a = _finish_args(a)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    r = Runner(a, out, err)
    try:
        r.prepare()
        m = machine_info(r.dir)
        r.say(f"cowblock bench: size {fmt_size(a.size)}, block {fmt_size(a.block_size)}, "
              f"repeat {a.repeat}, in {r.dir} ({m['fs']}); {m['nproc']} x {m['cpu']}")
        steps = [("W1", lambda: r.w1(False)), ("W2", lambda: r.w2(False)), ("W3", r.w3),
                 ("W4", r.w4), ("W5", r.w5), ("MEM", r.mem)]
        if a.direct and r.direct_ok:  # after the page-cache runs: cowblock reopens direct
            steps += [("W1", lambda: r.w1(True)), ("W2", lambda: r.w2(True))]
        for key, fn in steps:
            if key in a.only:
                try:
                    fn()
                except Exception as e:  # one broken workload must not hide the others
                    r.skip(f"{key}: aborted: {type(e).__name__}: {e}")
                    if a.verbose:
                        import traceback

                        traceback.print_exc(file=err)
        r.evaluate_goals()
        r.summary()
        result = r.to_json()
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1, default=str)
            r.say(f"JSON written to {a.json}")
        if a.plot:
            r.plot(a.plot)
        return result
    finally:
        r.close()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``cowblock bench`` (called by cowblock.cli with the remaining argv)."""
    try:
        run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # python -m cowblock.benchmark
    sys.exit(main())
