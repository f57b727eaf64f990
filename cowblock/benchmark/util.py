"""Small helpers shared by the workloads: units, timing, files, the machine.

Sizes given on the command line are parsed by :func:`cowblock.units.parse_size`, like every
other size the library takes.  Sizes in the tables are written by :func:`fmt_size` ("64 KiB",
"1.50 MiB"): the tables name engines by them (``Device.read, 64 KiB blocks``), and those names
are the keys of the JSON results, so they keep this short form.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import mmap
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
from typing import Iterable, Optional

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "MEM")
PATTERN = 0x33  # byte written by every engine (non-zero: no engine may take a zero shortcut)


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
