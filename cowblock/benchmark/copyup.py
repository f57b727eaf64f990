"""W1, copy-up: 4 KiB writes into a fresh snapshot of a fully written device, then one flush.

One write into every shared block (stride) or into as many distinct scattered 4 KiB-aligned
offsets as a random sample would touch (random).  Only the writes and the final flush are
timed.  :func:`write_group` is also the frame of W2 (:mod:`.sequential`): cowblock (also into
the blocks of a removed snapshot, keep_freed), qcow2 and the raw-file peers, side by side.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from . import peers
from .results import Entry, Group
from .util import KiB, fmt_size, no_gc, scattered, sync_all

if TYPE_CHECKING:
    from .runner import Runner


def cowblock_write_entry(r: Runner, name: str, direct: bool, offsets: list[int], iosize: int,
                         label: str, st: dict[str, Any], reuse: bool = False) -> Entry:
    """cowblock: fresh snapshot of 'base' (untimed), writes + pool.flush() (timed).

    With ``reuse``, the pool keeps freed blocks (keep_freed) and, untimed, a first
    snapshot takes the same writes and is deleted, as when a container is removed
    and the next one starts: the timed writes then land in the blocks it gave up.
    ``st`` receives the per-run extras (bytes written per write...) under "info"."""
    buf = r.chunk()[:iosize]
    snap = f"{label}-{name}"

    def setup(rep: int) -> None:
        pool = r.main_pool(direct)
        r.drop_device(pool, snap)
        if reuse:
            pool.set_keep_freed(pool.size)
            gone = pool.snapshot("base", snap + "-removed")
            for off in offsets:
                gone.write(off, buf)
            pool.flush()
            r.drop_device(pool, snap + "-removed")
        st["dev"] = pool.snapshot("base", snap)
        pool.flush()
        st["stats0"] = pool.stats()
        sync_all()

    def run(rep: int) -> float:
        pool = r.main_pool(direct)
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
        pool = r.main_pool(direct)
        st.pop("dev", None)
        r.drop_device(pool, snap)
        if reuse:
            pool.set_keep_freed(0)  # gives the kept blocks back

    e = Entry(name, run, setup, teardown)
    e.note = "Python API: Device.write per IO, then Pool.flush()" + (
        "; keep_freed, into the blocks of a removed snapshot" if reuse else "")
    return e


def write_group(r: Runner, key: str, title: str, direct: bool, offsets: list[int], iosize: int,
                step: Optional[int], label: str) -> Group:
    """Run the writes at ``offsets`` on every engine; ``step`` is the qemu-img bench stride
    that yields the same offsets (None: no qemu peers)."""
    state: dict[str, dict] = {}
    mode = "O_DIRECT" if direct else "page cache + final fdatasync"
    entries: list[Entry] = []
    cb_name = "cowblock (direct)" if direct else "cowblock"
    if r.have_cb():
        if direct and not r.pool_open_supports_direct():
            r.skip(f"{key} cowblock O_DIRECT: Pool.open has no 'direct' parameter")
        else:
            for name, reuse in ((cb_name, False), (cb_name + ", reusing freed blocks", True)):
                state[name] = {}
                entries.append(cowblock_write_entry(r, name, direct, offsets, iosize, label,
                                                    state[name], reuse=reuse))
    entries += peers.qemu_write_entries(r, direct, offsets, iosize, step, label)
    raw_py = "raw file (Python os.pwrite)"
    entries.append(peers.raw_write_entry(r, raw_py, direct, offsets, iosize))
    entries.append(peers.new_file_write_entry(r, "new sparse raw file (Python os.pwrite)",
                                              direct, offsets, iosize))
    entries.append(peers.new_file_write_entry(r, "fallocated raw file (Python os.pwrite)",
                                              direct, offsets, iosize, preallocate=True))
    pairs = []
    reuse = cb_name + ", reusing freed blocks"
    if any(e.name == cb_name for e in entries):
        pairs = [(cb_name, e.name) for e in entries if e.name != cb_name]
        pairs += [(reuse, e.name) for e in entries if "raw file" in e.name]
    g = Group(key, title, mode, entries, pairs)
    # stash per-run extras of cowblock (bytes written per write...) once the group ran
    r.run_group(g)
    st = state.get(cb_name)
    if st and st.get("info"):
        g.info[cb_name] = st["info"]
        r.say(f"  {cb_name}: " + ", ".join(f"{k} = {v}" for k, v in st["info"].items()))
    return g


def run(r: Runner, direct: bool) -> None:
    size, bs = r.a.size, r.a.block_size
    n = size // bs
    stride = [i * bs for i in range(n)]
    p, slots = scattered(size // (4 * KiB), n, 1, like_random=True)
    rand = [s * 4 * KiB for s in slots]
    touched = len({o // bs for o in rand})
    mode = "direct" if direct else "cache"
    write_group(
        r, "W1", f"copy-up stride: {n} x 4 KiB writes, one per shared {fmt_size(bs)} block "
        f"of a fresh snapshot of a full {fmt_size(size)} device, + flush",
        direct, stride, 4 * KiB, bs, f"w1s-{mode}")
    g = write_group(
        r, "W1", f"copy-up random: {n} x 4 KiB writes at distinct scattered 4 KiB-aligned "
        f"offsets ({touched} blocks touched) of a fresh snapshot, + flush",
        direct, rand, 4 * KiB, (p * 4 * KiB) if r.qemu.scatter_ok else None, f"w1r-{mode}")
    g.notes.append(f"offsets (k * {p} * 4 KiB) mod size, k < {n}: as many distinct blocks "
                   "as a random sample would touch; same offsets for every engine")
