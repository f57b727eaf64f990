"""The run a workload takes part in: output, run directory, shared fixtures, and the
interleaved timing of a group of engines (A, B, C, A, B, C, ...)."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from .peers import Qemu
from .results import Entry, Goal, Group
from .util import MiB, fill_file, fmt_size, fmt_time, supports_o_direct


class Runner:
    """One run: the arguments, the output, the files and pools the workloads share, the
    groups timed so far.  Workloads add groups through :meth:`run_group`."""

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

    def have_cb(self) -> bool:
        return self.cowblock is not None

    def find(self, key: str, title_part: str, mode_part: str = "") -> Optional[Group]:
        for g in self.groups:
            if g.key == key and title_part in g.title and mode_part in g.mode:
                return g
        return None
