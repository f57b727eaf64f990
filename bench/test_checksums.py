"""What data checksums cost (pytest-benchmark), side by side with the same pool without them.

Run:  pytest bench/test_checksums.py --benchmark-group-by=group
      pytest bench/test_checksums.py --bench-size 1G --benchmark-group-by=group

Each group runs one workload on two pools made alike but for ``checksums``; read the ratio of
the two medians.  What it covers:
  read 4K     cached random 4 KiB reads (one CRC-32C of 4 KiB per read)
  copy-up 4K  one 4 KiB write into every block of a fresh snapshot, then flush (W1 stride)
  write 1M    1 MiB writes over a fresh snapshot, then flush (W2)
  rewrite 4K  4 KiB writes into blocks the device alone holds, flushed before: with checksums
              a committed block is never rewritten in place, so this is where they cost most;
              also with keep_freed, which saves the punches of the blocks each round frees
"""

from __future__ import annotations

import random

import pytest

KiB = 1024
MiB = 1024 * KiB
MODES = [False, True]


@pytest.fixture(scope="module")
def pools(tmp_path_factory, cowblock_mod, bench_size, bench_block_size, payload):
    """{checksums: pool} with a fully written, flushed device "base" in each."""
    out = {}
    for csum in MODES:
        path = tmp_path_factory.mktemp("csum" if csum else "plain") / "pool"
        pool = cowblock_mod.Pool.create(path, size=4 * bench_size + 64 * MiB,
                                        block_size=bench_block_size, checksums=csum)
        base = pool.create_device("base", bench_size)
        for off in range(0, bench_size, len(payload)):
            base.write(off, payload[: bench_size - off])
        pool.flush()
        out[csum] = pool
    yield out
    for pool in out.values():
        pool.close()


def _label(csum: bool) -> str:
    return "checksums" if csum else "plain"


@pytest.mark.parametrize("csum", MODES, ids=_label)
def test_read_4k(benchmark, pools, bench_size, csum):
    benchmark.group = "csum: read 4K random (cached)"
    dev = pools[csum].device("base")
    rng = random.Random(1)
    offsets = [rng.randrange(0, bench_size // 4096) * 4096 for _ in range(4096)]
    dev.read(0, bench_size)  # warm the cache

    def run():
        for off in offsets:
            dev.read(off, 4096)

    benchmark(run)


def _snapshot_round(pool, counter=[0]):  # noqa: B006 - a per-process name counter
    counter[0] += 1
    name = f"snap{counter[0]}"
    return pool.snapshot("base", name), name


def _drop(pool, name):
    pool.delete(name)
    pool.flush()


@pytest.mark.parametrize("csum", MODES, ids=_label)
def test_copy_up_4k(benchmark, pools, bench_size, bench_block_size, csum):
    benchmark.group = "csum: copy-up 4K per block + flush"
    pool = pools[csum]
    data = b"\x5a" * 4096

    def setup():
        dev, name = _snapshot_round(pool)
        return (dev, name), {}

    def run(dev, name):
        for off in range(0, bench_size, bench_block_size):
            dev.write(off, data)
        pool.flush()
        _drop(pool, name)

    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("csum", MODES, ids=_label)
def test_write_1m(benchmark, pools, bench_size, payload, csum):
    benchmark.group = "csum: write 1M sequential + flush"
    pool = pools[csum]

    def setup():
        dev, name = _snapshot_round(pool)
        return (dev, name), {}

    def run(dev, name):
        for off in range(0, bench_size, MiB):
            dev.write(off, payload[: min(MiB, bench_size - off)])
        pool.flush()
        _drop(pool, name)

    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("csum,keep", [(False, False), (True, False), (True, True)],
                         ids=["plain", "checksums", "checksums+keep_freed"])
def test_rewrite_4k_after_flush(benchmark, pools, bench_size, bench_block_size, csum, keep):
    benchmark.group = "csum: rewrite 4K of own blocks + flush"
    pool = pools[csum]
    pool.set_keep_freed(bench_size if keep else 0)
    data = b"\xa5" * 4096
    rng = random.Random(2)
    offsets = [rng.randrange(0, bench_size // 4096) * 4096 for _ in range(2048)]
    dev = pool.create_device("own", bench_size) if "own" not in pool.devices() else pool.device("own")
    for off in range(0, bench_size, MiB):
        dev.write(off, b"\x11" * min(MiB, bench_size - off))
    pool.flush()

    def run():
        for off in offsets:
            dev.write(off, data)
        pool.flush()

    benchmark.pedantic(run, rounds=5)
