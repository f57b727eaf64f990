"""Device.delta (cb_dev_delta): where a device reads otherwise than a base,
from the mappings alone, against what the bytes say."""
import os
import random

import numpy as np
import pytest

import cowblock
from cowblock.sendrecv import sub_block_size

BS = 65536
SIZE = 3 * 127 * BS + 5 * 4096  # more than one leaf, a partial last block


def all_deltas(dev, base=None, step=7):
    out, pos = [], 0
    nblocks = -(-dev.size // dev.block_size)
    while pos < nblocks:
        arr, pos = dev.delta(base, pos, step)
        out.extend(arr.tolist())
    return out


def differing_subs(a, b, bs):
    """(block, sub) pairs whose bytes differ between two equal-size byte strings."""
    sub = sub_block_size(bs)
    x = np.frombuffer(a, np.uint8)
    y = np.frombuffer(b, np.uint8)
    pad = -len(x) % sub
    x = np.concatenate([x, np.zeros(pad, np.uint8)]).reshape(-1, sub)
    y = np.concatenate([y, np.zeros(pad, np.uint8)]).reshape(-1, sub)
    idx = np.flatnonzero((x != y).any(axis=1))
    nsub = bs // sub
    return {(int(i) // nsub, int(i) % nsub) for i in idx}


def reported(deltas, bs, kind="both"):
    nsub = bs // sub_block_size(bs)
    out = set()
    for block, data, zero in deltas:
        mask = {"data": data, "zero": zero, "both": data | zero}[kind]
        for s in range(nsub):
            if mask >> s & 1:
                out.add((block, s))
    return out


def scramble(dev, rnd, n=25):
    """Random writes and discards; returns the blocks they touched."""
    touched = set()
    for _ in range(n):
        off = rnd.randrange(0, dev.size)
        ln = min(rnd.choice([1, 512, 4096, 9000, 70000, 3 * BS]), dev.size - off)
        touched |= set(range(off // BS, (off + ln - 1) // BS + 1))
        if rnd.random() < 0.3:
            dev.discard(off, ln)
        else:
            dev.write(off, os.urandom(ln) if rnd.random() < 0.8 else bytes(ln))
    return touched


@pytest.mark.parametrize("seed", range(4))
def test_delta_reports_every_difference_and_only_changed_blocks(tmp_path, seed):
    rnd = random.Random(seed)
    with cowblock.Pool.create(tmp_path / "p", 64 << 20, BS) as pool:
        a = pool.create_device("a", SIZE)
        scramble(a, rnd)
        s1 = pool.snapshot("a", "s1", readonly=True)
        t2 = scramble(a, rnd)
        s2 = pool.snapshot("a", "s2", readonly=True)
        c = pool.snapshot("s2", "c")
        tc = scramble(c, rnd, 10)
        zero = bytes(SIZE)
        full = all_deltas(s1)
        # against zeros: every sub-block that reads non-zero is reported as data
        want = differing_subs(s1.read(0, SIZE), zero, BS)
        assert want <= reported(full, BS, "data")
        assert not reported(full, BS, "zero")
        for dev, base, changed in [(s2, s1, t2), (c, s1, t2 | tc), (c, s2, tc), (s1, s2, t2),
                                   (a, s2, set())]:
            d = all_deltas(dev, base)
            got = reported(d, BS)
            want = differing_subs(dev.read(0, SIZE), base.read(0, SIZE), BS)
            assert want <= got, (dev.name, base.name)
            # only blocks written or discarded since the two diverged are named
            assert {b for b, _ in got} <= changed
            # a sub-block reported as zero reads as zeros
            data = dev.read(0, SIZE)
            for block, s in reported(d, BS, "zero"):
                off = block * BS + s * 4096
                assert data[off:off + 4096] == bytes(len(data[off:off + 4096]))
            assert [x[0] for x in d] == sorted({x[0] for x in d})


def test_delta_of_a_snapshot_with_no_change_is_empty(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 16 << 20, BS) as pool:
        a = pool.create_device("a", 1 << 40)  # sparse: only what is mapped is walked
        a.write(123 * BS, b"x" * 4096)
        s = pool.snapshot("a", "s", readonly=True)
        arr, nxt = pool.snapshot("s", "t").delta(s)
        assert len(arr) == 0 and nxt == (1 << 40) // BS
        a.write(5 * BS + 8192, b"y")
        arr, _ = a.delta(s)
        assert arr.tolist() == [(5, 1 << 2, 0)]


def test_delta_is_resumable_at_any_block(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 32 << 20, BS) as pool:
        a = pool.create_device("a", SIZE)
        for v in range(0, 300, 3):
            a.write(v * BS + (v % 16) * 4096, b"z" * 4096)
        whole = all_deltas(a, None, 100000)
        assert len(whole) == 100
        for step in (1, 2, 13):
            assert all_deltas(a, None, step) == whole
        arr, nxt = a.delta(None, 151, 2)
        assert arr["block"].tolist() == [153, 156] and nxt == 159


def test_delta_with_an_external_origin(tmp_path):
    ext = tmp_path / "base.img"
    ext.write_bytes(os.urandom(3 * BS + 4096))
    with cowblock.Pool.create(tmp_path / "p", 16 << 20, BS) as pool:
        a = pool.create_device("a", None, external=str(ext))
        d = all_deltas(a)
        assert reported(d, BS, "data") == {(b, s) for b in range(3) for s in range(16)} | {(3, 0)}
        s = pool.snapshot("a", "s", readonly=True)
        a.discard(BS, BS)
        assert a.delta(s)[0].tolist() == [(1, 0, 0xFFFF)]


def test_delta_refuses_mismatched_devices(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 16 << 20, BS) as pool, \
            cowblock.Pool.create(tmp_path / "q", 16 << 20, BS) as other:
        a = pool.create_device("a", 4 * BS)
        b = pool.create_device("b", 8 * BS)
        with pytest.raises(cowblock.InvalidArgumentError):
            a.delta(b)
        with pytest.raises(cowblock.InvalidArgumentError):
            a.delta(other.create_device("x", 4 * BS))
        c = pool.create_device("c", 4 * BS)
        pool.delete("c")
        with pytest.raises(cowblock.NotFoundError):
            a.delta(c)
