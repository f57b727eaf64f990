"""Device.extents_range (cb_dev_extents_range): the ranged extents call behind
NBD block status, checked against the whole-device extents() it refines."""
import random

import pytest

import cowblock

B = 64 * 1024


def clip(extents, lo, hi):
    out = []
    for off, n in extents:
        a, b = max(off, lo), min(off + n, hi)
        if a < b:
            out.append((a, b - a))
    return out


def walk(dev, lo, hi, limit):
    """extents_range over [lo, hi) a part at a time, as a block status client does."""
    runs, pos, calls = [], lo, 0
    while pos < hi:
        got, end = dev.extents_range(pos, hi - pos, limit)
        assert pos < end <= hi, (pos, end, hi)
        assert len(got) <= limit
        for off, n in got:
            assert pos <= off and off + n <= end and n > 0
        if runs and got and runs[-1][0] + runs[-1][1] == got[0][0]:
            runs[-1] = (runs[-1][0], runs[-1][1] + got[0][1])  # a run cut by the limit
            got = got[1:]
        runs += got
        pos = end
        calls += 1
    return runs, calls


def test_extents_range_basics(pool):
    d = pool.create_device("d", 64 * B + 512)  # a partial last block
    assert d.extents_range(0, d.size) == ([], d.size)
    d.write(2 * B + 100, b"x")
    d.write(5 * B, b"y" * (2 * B))
    d.write(64 * B, b"z" * 512)
    assert d.extents_range(0, d.size) == (
        [(2 * B, B), (5 * B, 2 * B), (64 * B, 512)], d.size)
    # clipped to the range, unaligned ends
    assert d.extents_range(2 * B + 7, 4 * B) == ([(2 * B + 7, B - 7), (5 * B, B + 7)],
                                                 6 * B + 7)
    # the limit stops the walk where the next run starts
    assert d.extents_range(0, d.size, 1) == ([(2 * B, B)], 5 * B)
    assert d.extents_range(0, d.size, 0) == ([], 2 * B)
    assert d.extents_range(3 * B, B, 0) == ([], 4 * B)
    assert d.extents_range(7, 0) == ([], 7)
    with pytest.raises(ValueError, match="outside"):
        d.extents_range(d.size - 1, 2)
    with pytest.raises(ValueError, match="limit"):
        d.extents_range(0, 1, -1)


def test_extents_range_discard_snapshot_external(pool, tmp_path):
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\1" * (3 * B))
    d = pool.create_device("ext", 8 * B, external=raw)
    assert d.extents_range(0, d.size)[0] == [(0, 3 * B)]
    d.discard(B, B)
    assert d.extents_range(0, d.size)[0] == [(0, B), (2 * B, B)]
    d.write(6 * B, b"q" * B)
    s = pool.snapshot("ext", "snap")
    assert s.extents_range(0, s.size)[0] == [(0, B), (2 * B, B), (6 * B, B)]
    s.discard(6 * B, B)
    assert s.extents_range(4 * B, 4 * B) == ([], 8 * B)


@pytest.mark.parametrize("seed", range(6))
def test_extents_range_matches_extents(pool, seed, run_slow):
    rng = random.Random(seed)
    size = rng.choice([40, 300, 1000]) * B + rng.choice([0, 512, 4096])
    d = pool.create_device("d", size)
    for _ in range(rng.randint(0, 60)):
        off = rng.randrange(size)
        n = min(rng.choice([1, 4096, B, 3 * B]), size - off)
        if rng.random() < 0.8:
            d.write(off, b"\xee" * n)
        else:
            d.discard(off, n)
    if rng.random() < 0.5:
        d = pool.snapshot("d", "s")
        for _ in range(10):
            off = rng.randrange(size)
            d.discard(off, min(2 * B, size - off))
    whole = d.extents()
    for _ in range(40 if run_slow else 12):
        lo = rng.randrange(size)
        hi = rng.randint(lo + 1, size)
        limit = rng.choice([1, 2, 5, 256])
        runs, calls = walk(d, lo, hi, limit)
        assert runs == clip(whole, lo, hi)
        assert calls <= len(runs) // max(limit, 1) + 2 + len(runs)


def test_device_closed(pool_path):
    p = cowblock.Pool.create(pool_path, size=1 << 24)
    d = p.create_device("d", 1 << 20)
    p.close()
    with pytest.raises(cowblock.ClosedError):
        d.extents_range(0, 512)
