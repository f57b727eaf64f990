"""Microbenchmarks of cowblock's hot paths (pytest-benchmark).

Run:  pytest bench/test_micro.py                      (64 MiB device, 64 KiB blocks)
      pytest bench/test_micro.py --bench-size 1G --benchmark-group-by=group
      pytest bench/test_micro.py --benchmark-compare  (after --benchmark-autosave)

Each group pairs cowblock with the plain-file call that bounds it (os.pread, os.pwrite), so the
table reads as "cost of cowblock on top of the kernel".  Every call goes through the public
Python API, so Python's own per-call cost is included, as the goals demand.  Benchmarks do not
assert speed: goals are reported by ``cowblock bench`` (bench/test_compare.py), not enforced.
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest

KiB = 1024
MiB = 1024 * KiB


def _offsets(size: int, align: int, n: int = 4096, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, size // align) * align for _ in range(n)]


@pytest.fixture
def raw_fd(base_file):
    fd = os.open(base_file, os.O_RDWR)
    yield fd
    os.close(fd)


class _Names:
    """Unique device names for benchmarks that create devices."""

    counter = itertools.count()

    @classmethod
    def next(cls, prefix: str) -> str:
        return f"{prefix}-{next(cls.counter)}"


def _fresh_snapshot(pool, prefix: str):
    name = _Names.next(prefix)
    return pool.snapshot("base", name)


def _drop(pool, names) -> None:
    for n in names:
        if n in pool.devices():
            pool.delete(n)
    pool.flush()


class _FreshSlots:
    """Round after round, the next slot of a device no round has written through yet.

    ``next()`` gives (device, offset): slot k of the current device is at
    ``k * step``; once its ``nslots`` slots are used, ``make()`` gives a new
    device.  ``drop()`` deletes every device made."""

    def __init__(self, pool, make, nslots: int, step: int):
        self.pool, self.make, self.nslots, self.step = pool, make, nslots, step
        self.dev, self.k, self.made = None, nslots, []

    def next(self):
        if self.k >= self.nslots:
            self.dev = self.make()
            self.made.append(self.dev.name)
            self.k = 0
        off = self.k * self.step
        self.k += 1
        return self.dev, off

    def drop(self) -> None:
        _drop(self.pool, self.made)


# ------------------------------------------------------------------ reads (cached, random 4 KiB)


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_os_pread(benchmark, raw_fd, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    pread = os.pread
    benchmark(lambda: pread(raw_fd, 4096, nxt()))


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_device_read(benchmark, pool, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    read = pool.device("base").read
    benchmark(lambda: read(nxt(), 4096))


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_device_readinto(benchmark, pool, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    readinto = pool.device("base").readinto
    buf = bytearray(4096)
    benchmark(lambda: readinto(nxt(), buf))


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_device_read_mmap(benchmark, pool_mmap, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    read = pool_mmap.device("base").read
    benchmark(lambda: read(nxt(), 4096))


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_device_readinto_mmap(benchmark, pool_mmap, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    readinto = pool_mmap.device("base").readinto
    buf = bytearray(4096)
    benchmark(lambda: readinto(nxt(), buf))


@pytest.mark.benchmark(group="read 4 KiB random (cached)")
def test_read_4k_os_preadv(benchmark, raw_fd, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    preadv = os.preadv
    bufs = [bytearray(4096)]
    benchmark(lambda: preadv(raw_fd, bufs, nxt()))


# ------------------------------------------------------------------ batch IO


@pytest.mark.benchmark(group="read 256 random blocks")
def test_read_blocks_batch(benchmark, pool, bench_size, bench_block_size):
    dev = pool.device("base")
    nblk = bench_size // bench_block_size
    idx = np.array(random.Random(1).sample(range(nblk), min(256, nblk)), dtype=np.uint64)
    out = np.empty((len(idx), bench_block_size), dtype=np.uint8)
    benchmark(dev.read_blocks, idx, out=out)


@pytest.mark.benchmark(group="read 256 random blocks")
def test_read_blocks_batch_mmap(benchmark, pool_mmap, bench_size, bench_block_size):
    dev = pool_mmap.device("base")
    nblk = bench_size // bench_block_size
    idx = np.array(random.Random(1).sample(range(nblk), min(256, nblk)), dtype=np.uint64)
    out = np.empty((len(idx), bench_block_size), dtype=np.uint8)
    benchmark(dev.read_blocks, idx, out=out)


@pytest.mark.benchmark(group="read 256 random blocks")
def test_read_blocks_single_calls(benchmark, pool, bench_size, bench_block_size):
    dev = pool.device("base")
    nblk = bench_size // bench_block_size
    offs = [b * bench_block_size for b in random.Random(1).sample(range(nblk), min(256, nblk))]
    out = np.empty((len(offs), bench_block_size), dtype=np.uint8)
    work = list(zip(offs, [out[i] for i in range(len(offs))]))  # same destination as the batch
    readinto = dev.readinto

    def loop():
        for off, row in work:
            readinto(off, row)

    benchmark(loop)


@pytest.mark.benchmark(group="write 256 blocks (owned, in place)")
def test_write_blocks_batch(benchmark, pool, bench_size, bench_block_size):
    dev = pool.create_device(_Names.next("wb"), bench_size)
    nblk = bench_size // bench_block_size
    idx = np.arange(min(256, nblk), dtype=np.uint64)
    data = np.full((len(idx), bench_block_size), 0x5A, dtype=np.uint8)
    dev.write_blocks(idx, data)  # map them first: the benchmark measures in-place writes
    benchmark(dev.write_blocks, idx, data)
    _drop(pool, [dev.name])


@pytest.mark.benchmark(group="write 256 blocks (owned, in place)")
def test_write_blocks_single_calls(benchmark, pool, bench_size, bench_block_size):
    dev = pool.create_device(_Names.next("ws"), bench_size)
    nblk = bench_size // bench_block_size
    offs = [b * bench_block_size for b in range(min(256, nblk))]
    buf = b"\x5a" * bench_block_size
    write = dev.write
    for off in offs:
        write(off, buf)

    def loop():
        for off in offs:
            write(off, buf)

    benchmark(loop)
    _drop(pool, [dev.name])


# ------------------------------------------------------------------ writes


@pytest.mark.benchmark(group="write 4 KiB (no flush)")
def test_write_4k_os_pwrite(benchmark, raw_fd, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    pwrite, buf = os.pwrite, b"\x5a" * 4096
    benchmark(lambda: pwrite(raw_fd, buf, nxt()))


@pytest.mark.benchmark(group="write 4 KiB (no flush)")
def test_write_4k_owned_in_place(benchmark, pool, bench_size):
    """A block the device already owns: written in place."""
    dev = pool.create_device(_Names.next("own"), bench_size)
    offs = _offsets(bench_size, 4 * KiB)
    buf = b"\x5a" * 4096
    for off in offs:
        dev.write(off, buf)
    nxt = itertools.cycle(offs).__next__
    write = dev.write
    benchmark(lambda: write(nxt(), buf))
    _drop(pool, [dev.name])


@pytest.mark.benchmark(group="write 4 KiB (no flush)")
def test_write_4k_copy_up(benchmark, pool, bench_size, bench_block_size):
    """The first 4 KiB write into a shared block: copy-up (one block per round)."""
    nblk = bench_size // bench_block_size
    buf = b"\x5a" * 4096
    # every block of a snapshot copied up: a fresh one
    slots = _FreshSlots(pool, lambda: _fresh_snapshot(pool, "cu"), nblk, bench_block_size)
    benchmark.pedantic(lambda dev, off: dev.write(off, buf), setup=lambda: (slots.next(), {}),
                       rounds=min(4 * nblk, 4096), iterations=1, warmup_rounds=0)
    slots.drop()


@pytest.mark.benchmark(group="write 4 KiB (no flush)")
def test_write_4k_unmapped(benchmark, pool, bench_size, bench_block_size):
    """The first write into an unmapped block of a thin device: allocation."""
    nblk = bench_size // bench_block_size
    buf = b"\x5a" * 4096
    slots = _FreshSlots(pool, lambda: pool.create_device(_Names.next("un"), bench_size),
                        nblk, bench_block_size)
    benchmark.pedantic(lambda dev, off: dev.write(off, buf), setup=lambda: (slots.next(), {}),
                       rounds=min(4 * nblk, 4096), iterations=1, warmup_rounds=0)
    slots.drop()


@pytest.mark.benchmark(group="write 1 MiB (full-block copy-up)")
def test_write_1m_os_pwrite(benchmark, raw_fd, bench_size):
    nxt = itertools.cycle(range(0, bench_size, MiB)).__next__
    pwrite, buf = os.pwrite, b"\x5a" * MiB
    benchmark(lambda: pwrite(raw_fd, buf, nxt()))


@pytest.mark.benchmark(group="write 1 MiB (full-block copy-up)")
def test_write_1m_copy_up(benchmark, pool, bench_size):
    n = bench_size // MiB
    buf = b"\x5a" * MiB
    slots = _FreshSlots(pool, lambda: _fresh_snapshot(pool, "fc"), n, MiB)
    benchmark.pedantic(lambda dev, off: dev.write(off, buf), setup=lambda: (slots.next(), {}),
                       rounds=min(4 * n, 512), iterations=1, warmup_rounds=0)
    slots.drop()


# ------------------------------------------------------------------ flush, snapshot, discard


@pytest.mark.benchmark(group="flush (commit)")
def test_flush_after_one_copy_up(benchmark, pool, bench_size, bench_block_size):
    """Pool.flush() after one 4 KiB copy-up: the cost of a durable commit."""
    nblk = bench_size // bench_block_size
    buf = b"\x5a" * 4096

    def make():
        dev = _fresh_snapshot(pool, "fl")
        pool.flush()
        return dev

    slots = _FreshSlots(pool, make, nblk, bench_block_size)

    def setup():
        dev, off = slots.next()
        dev.write(off, buf)
        return (), {}

    benchmark.pedantic(pool.flush, setup=setup, rounds=200, iterations=1)
    slots.drop()


@pytest.mark.benchmark(group="flush (commit)")
def test_fdatasync_after_one_write(benchmark, raw_fd, bench_size):
    nxt = itertools.cycle(_offsets(bench_size, 4 * KiB)).__next__
    buf = b"\x5a" * 4096

    def setup():
        os.pwrite(raw_fd, buf, nxt())
        return (raw_fd,), {}

    benchmark.pedantic(os.fdatasync, setup=setup, rounds=200, iterations=1)


@pytest.mark.benchmark(group="snapshot")
def test_snapshot(benchmark, pool):
    made = []

    def setup():
        name = _Names.next("sn")
        made.append(name)
        return ("base", name), {}

    benchmark.pedantic(pool.snapshot, setup=setup, rounds=300, iterations=1)
    _drop(pool, made)


@pytest.mark.benchmark(group="snapshot")
def test_snapshot_of_1tib_device(benchmark, pool, payload):
    """Snapshot cost must not depend on the device size."""
    big = pool.create_device(_Names.next("big"), 2**40)
    big.write(0, payload)
    made = [big.name]

    def setup():
        name = _Names.next("snb")
        made.append(name)
        return (big.name, name), {}

    benchmark.pedantic(pool.snapshot, setup=setup, rounds=300, iterations=1)
    _drop(pool, made[1:] + made[:1])


@pytest.mark.benchmark(group="discard")
def test_discard_block(benchmark, pool, bench_size, bench_block_size):
    """Discard one whole owned block (mapped again, untimed, before each round)."""
    dev = pool.create_device(_Names.next("dc"), bench_size)
    nblk = bench_size // bench_block_size
    buf = b"\x5a" * bench_block_size
    nxt = itertools.cycle(range(nblk)).__next__

    def setup():
        off = nxt() * bench_block_size
        dev.write(off, buf)
        return (off, bench_block_size), {}

    benchmark.pedantic(dev.discard, setup=setup, rounds=min(nblk, 1000), iterations=1)
    _drop(pool, [dev.name])


@pytest.mark.benchmark(group="discard")
def test_discard_shared_block(benchmark, pool, bench_size, bench_block_size):
    """Discard one block a fresh snapshot shares with its origin (drops a reference)."""
    nblk = bench_size // bench_block_size
    slots = _FreshSlots(pool, lambda: _fresh_snapshot(pool, "ds"), nblk, bench_block_size)
    benchmark.pedantic(lambda dev, off: dev.discard(off, bench_block_size),
                       setup=lambda: (slots.next(), {}), rounds=min(nblk, 1000), iterations=1)
    slots.drop()
