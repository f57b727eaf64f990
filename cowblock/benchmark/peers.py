"""The engines cowblock is compared with: qcow2 through qemu, and raw files.

qcow2 is driven by ``qemu-img bench`` at queue depth 1 (cluster size = block size,
``extended_l2=off`` and ``on``, backing file = the raw base); ``qemu-io`` only builds chains.
The same IO patterns go to a raw file through ``qemu-img bench`` (the issue's reference for
"raw") and through plain Python ``os.pwrite``/``os.pread``/``os.preadv`` loops, which pay the
same per-call cost as cowblock's Python API (on Linux the loops are the faster of the two:
qemu's thread-pool AIO costs tens of microseconds per request).  Every function here builds :class:`Entry` objects for the group a workload runs;
``r`` is the :class:`~cowblock.benchmark.runner.Runner` that owns the files.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Callable, Optional

from .results import Entry
from .util import KiB, MiB, PATTERN, fmt_size, no_gc, sync_all

if TYPE_CHECKING:
    from .runner import Runner


# -------------------------------------------------------------------------------------------
# qemu


class Qemu:
    """Runs ``qemu-img bench`` and ``qemu-io`` and extracts honest timings."""

    def __init__(self) -> None:
        self.img = shutil.which("qemu-img")
        self.io = shutil.which("qemu-io")
        self.stdbuf = shutil.which("stdbuf")

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

    def write_4k(self, image: str, offsets: list[int]) -> None:
        """Write 4 KiB of PATTERN at each offset of a qcow2 image, in one qemu-io run."""
        args: list[str] = []
        for off in offsets:
            args += ["-c", f"write -q -P {PATTERN} {off} 4k"]
        subprocess.run([self.io, "-f", "qcow2", *args, image], check=True, capture_output=True)

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
# writes (W1, W2)


def raw_write_entry(r: Runner, name: str, direct: bool, offsets: list[int], iosize: int,
                    path: Optional[str] = None) -> Entry:
    """The writes into a fully written raw file (the limit), then one fdatasync."""
    path = path or r.raw_target()

    def setup(rep: int) -> None:
        sync_all()

    def run(rep: int) -> float:
        flags = os.O_RDWR | (os.O_DIRECT if direct else 0)
        if direct:
            buf = mmap.mmap(-1, iosize)  # page-aligned
            buf.write(r.chunk()[:iosize])
        else:
            buf = r.chunk()[:iosize]
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


def new_file_write_entry(r: Runner, name: str, direct: bool, offsets: list[int],
                         iosize: int, preallocate: bool = False) -> Entry:
    """The same writes into a new sparse file: pays for block allocation and for new
    page-cache pages, as cowblock (and qcow2) do when they copy up into fresh blocks.
    With ``preallocate``, the file's space is allocated first (posix_fallocate, not
    written, not timed): what is left is the cost of writing where nothing was written
    yet, the least any copy-up into new space can cost on this file system."""
    path = r.path("prealloc.raw" if preallocate else "new.raw")
    inner = raw_write_entry(r, name, direct, offsets, iosize, path)

    def setup(rep: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with open(path, "wb") as f:
            f.truncate(r.a.size)
            if preallocate:
                os.posix_fallocate(f.fileno(), 0, r.a.size)
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


def qemu_write_entries(r: Runner, direct: bool, offsets: list[int], iosize: int,
                       step: Optional[int], label: str) -> list[Entry]:
    """qcow2 l2=off/on and raw through qemu-img bench: offsets_k = (k * step) mod size."""
    q = r.qemu
    entries: list[Entry] = []
    cache = "none" if direct else "writeback"
    count = len(offsets)
    tool = "qemu-img bench"
    if not q.img or step is None:
        return entries
    assert offsets == [(k * step) % r.a.size for k in range(count)]
    base = r.base_raw()
    cluster = r.a.block_size

    def make(target: str, fmt: str) -> Callable[[int], float]:
        def run(rep: int) -> float:
            return q.bench(target, fmt, write=True, count=count, bufsize=iosize,
                           step=step, cache=cache)

        return run

    for l2 in (False, True):
        ov = r.path(f"{label}-l2{'on' if l2 else 'off'}.qcow2")

        def setup(rep: int, ov=ov, l2=l2) -> None:
            q.create_overlay(ov, base, "raw", cluster, l2, r.a.size)
            sync_all()

        def teardown(rep: int, ov=ov) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ov)

        entries.append(Entry(f"qcow2 extended_l2={'on' if l2 else 'off'}", make(ov, "qcow2"),
                             setup, teardown, note=f"{tool}, cache={cache}, QD1"))
    target = r.raw_target()
    entries.append(Entry(f"raw file ({tool})", make(target, "raw"), lambda rep: sync_all(),
                         note=f"{tool}, cache={cache}, QD1"))
    return entries


# -------------------------------------------------------------------------------------------
# reads (W3, W5)


def qcow2_chain(r: Runner, base: str, depths: list[int],
                level_writes: list[list[int]]) -> tuple[list[tuple[str, str]], str]:
    """A qcow2 backing chain (extended_l2=off, the qcow2 default) over the raw ``base``, one
    image per level, level ``i`` taking the 4 KiB writes ``level_writes[i - 1]``; and a depth-1
    control image holding the writes of the deepest level.  Built once per run directory.

    Returns ``[(image, label)]`` for each depth asked for and the control, and the control's
    label."""
    q = r.qemu
    size, bs = r.a.size, r.a.block_size
    cdir = r.path("qchain")
    os.makedirs(cdir, exist_ok=True)
    top = os.path.join(cdir, f"l{max(depths)}.qcow2")
    if not os.path.exists(top):
        r.log(f"building a qcow2 backing chain of depth {max(depths)}")
        prev, pfmt = base, "raw"
        for lvl in range(1, max(depths) + 1):
            img = os.path.join(cdir, f"l{lvl}.qcow2")
            q.create_overlay(img, prev, pfmt, bs, False, size)
            q.write_4k(img, level_writes[lvl - 1])
            prev, pfmt = img, "qcow2"
    qmax = max(depths)
    qflat = os.path.join(cdir, f"flat-{qmax}.qcow2")
    if not os.path.exists(qflat):
        q.create_overlay(qflat, base, "raw", bs, False, size)
        q.write_4k(qflat, [off for lvl in range(qmax) for off in level_writes[lvl]])
    qflat_label = f"qcow2 depth 1, writes of depth {qmax}"
    targets = [(os.path.join(cdir, f"l{d}.qcow2"), f"qcow2 depth {d}") for d in depths]
    targets.append((qflat, qflat_label))
    return targets, qflat_label


def qemu_read(q: Qemu, image: str, fmt: str, *, count: int, bufsize: int,
              step: int) -> Callable[[int], float]:
    """The run of one ``qemu-img bench`` read pass (page cache) over ``image``."""
    return lambda rep: q.bench(image, fmt, write=False, count=count, bufsize=bufsize,
                               step=step, cache="writeback")


def preadv_loop(path: str, offs: list[int], io: int) -> Callable[[int], float]:
    """The run of a Python loop of ``os.preadv`` of ``io`` bytes at ``offs`` in ``path``."""
    def run(rep: int) -> float:
        fd = os.open(path, os.O_RDONLY)
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


class PlainReads:
    """4 KiB ``os.pread`` and ``os.preadv`` calls on a plain file: the floor of W5's per-call
    cost.  The file stays open across runs, until :meth:`close`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def entries(self, offs: list[int]) -> list[Entry]:
        n = len(offs)
        buf4 = bytearray(4 * KiB)

        # each loop is written out (no generic call wrapper) so no engine pays for extra frames
        def r_pread(rep: int) -> float:
            f, pr = self.fd(), os.pread
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    pr(f, 4096, off)
                return (time.perf_counter() - t0) / n

        def r_preadv(rep: int) -> float:
            f, pr, lst = self.fd(), os.preadv, [buf4]
            with no_gc():
                t0 = time.perf_counter()
                for off in offs:
                    pr(f, lst, off)
                return (time.perf_counter() - t0) / n

        return [Entry("os.pread(fd, 4096, off)", r_pread),
                Entry("os.preadv(fd, [buf], off)", r_preadv)]


# -------------------------------------------------------------------------------------------
# metadata (MEM)


def qcow2_metadata(r: Runner) -> None:
    """qcow2's metadata for comparison with MEM: a fully written overlay, l2=off and on."""
    q = r.qemu
    size, bs = min(r.a.mem_size, r.a.size), r.a.block_size
    for l2 in (False, True):
        img = r.path(f"meta-l2{'on' if l2 else 'off'}.qcow2")
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
            r.extra.setdefault("qcow2_meta", {})[f"extended_l2={'on' if l2 else 'off'}"] = {
                "mapped": size, "meta_bytes": meta}
            r.say(f"  qcow2 extended_l2={'on' if l2 else 'off'} ({fmt_size(size)} written): "
                  f"metadata {fmt_size(meta)} = {meta / nb:.1f} bytes per cluster "
                  f"({100 * meta / size:.4f} %)")
        except Exception as e:
            r.say(f"  qcow2 metadata: not measured ({e})")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(img)
