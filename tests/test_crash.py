"""Crash safety under SIGKILL (DESIGN.md section 2, invariant 4), with the harness in
crashlib.py: a writer subprocess doing mixed IO, snapshots, deletes and flushes on devices
that share blocks is killed at random moments; the reopened pool must hold everything the
last completed flush promised, nothing but old-or-newer bytes elsewhere, the right devices,
and pass ``check()`` with no error and no leak.

The harness and the minimal cases run once per backend (the ``backend`` fixture): pools in a
directory, and pools in RADOS (the test cluster), where the writer's librados client dies
with aio writes in flight and inside the guarded superblock write.

Rounds: 20 by default, 500 with ``--run-slow``, or ``COWBLOCK_CRASH_ROUNDS=N``
(which wins).
The long run on its own: ``python -m tests.crashlib --rounds 5000`` from the repository root.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cowblock
import crashlib
import rawstore

KiB = 1024


def rounds(run_slow, default=20, slow=500):
    env = os.environ.get("COWBLOCK_CRASH_ROUNDS")
    if env:
        return int(env)
    return slow if run_slow else default


# --------------------------------------------------------------------------- the harness


def test_crash_rounds(tmp_path, run_slow, backend):
    """The main run.  Data, device-set and check-error failures stop it at once; leaks (free
    blocks still holding data after a crash) are counted and repaired so the run goes on,
    and are asserted at the end.  On RADOS each round also checks the pool's objects."""
    n = rounds(run_slow)
    # 7 rounds per pool: the default 20 rounds see block sizes 64 KiB, 4 KiB, and 16 KiB with
    # O_DIRECT (crashlib.BLOCK_SIZES; every third pool is opened with O_DIRECT, on files:
    # RADOS has no page cache to bypass)
    h = crashlib.Harness(tmp_path, pool_every=7,
                         strict_leaks=False, keep_failed=str(tmp_path / "failed"),
                         ceph=backend.ceph)
    stats = h.run(n)
    print(f"\ncrash harness ({backend.name}, seed {h.seed}): {stats.summary()}")
    assert stats.rounds == n
    assert stats.flushes > 0 and stats.bytes_verified > 0
    assert stats.leaked_blocks == 0, (
        f"{stats.leaked_blocks} data blocks leaked (free but still holding data in the file, so "
        f"check() is not ok) in {stats.leaky_rounds} of {n} rounds; see "
        f"test_kill_before_flush_leaks_no_block for the minimal case")


# The oracle's own tests (verifier able to fail, model unit test) are about crashlib, not a
# backend: they run on files only.


def _one_round_then(tmp_path, tamper):
    h = crashlib.Harness(tmp_path, seed=1234, strict_leaks=False)
    h.max_delay = 0.15
    h.tamper = tamper
    with pytest.raises(crashlib.CrashFailure) as exc:
        for _ in range(20):  # until a round gives the tamper something to break
            h.round()
    return str(exc.value)


def _flushed_writable(model):
    """Writable devices of the last flush that are still there."""
    names = sorted(set(model.sets[0]) & set(model.sets[-1]))
    return [n for n in names if not model.meta[n].readonly]


def test_oracle_catches_another_devices_data(tmp_path):
    """The verifier is able to fail: a page of another device's data is caught and named."""

    def tamper(h, model):
        with cowblock.Pool.open(h.pool) as p:
            present = set(p.devices())
            for name in _flushed_writable(model):
                want = model.expected_at_flush(name)
                for other in sorted(present - {name}):
                    theirs = np.frombuffer(p.device(other).read(0, p.device(other).size), np.uint8)
                    n = min(want.size, theirs.size) // 4096 * 4096
                    differ = (theirs[:n] != want[:n]).reshape(-1, 4096).sum(axis=1) > 1024
                    pages = np.flatnonzero(differ)
                    if pages.size:
                        off = int(pages[0]) * 4096
                        p.device(name).write(off, theirs[off:off + 4096].tobytes())
                        return

    msg = _one_round_then(tmp_path, tamper)
    assert "no allowed history explains" in msg and "via device code" in msg, msg


def test_oracle_catches_garbage_and_lost_devices(tmp_path):
    def tamper(h, model):
        names = _flushed_writable(model)
        if names:
            with cowblock.Pool.open(h.pool) as p:
                p.delete(names[0])

    msg = _one_round_then(tmp_path, tamper)
    assert "device set" in msg and "missing" in msg, msg

    def garble(h, model):
        names = _flushed_writable(model)
        if names:
            with cowblock.Pool.open(h.pool) as p:
                p.device(names[0]).write(100, b"\xee" * 10)

    msg = _one_round_then(tmp_path / "2", garble)
    assert "bytes hold a value no allowed history explains; first at offset 10" in msg, msg


def test_model_accepts_old_or_new_and_snapshot_lineage():
    """Unit test of the oracle: replays a short sequence and checks the allowed masks."""
    devs = [crashlib.DevMeta("d1", 256 * KiB, False)]
    base = {"d1": bytes(256 * KiB)}
    m = crashlib.Model(1, 64 * KiB, base, devs, 2, seed=7)
    # drive the model by hand: write, flush, snapshot, write to both
    m._mark_flush()
    w = crashlib.pattern(1, 1, 1, 1000, 5000)
    m._apply(1, ("write", "d1", 1000, 5000), True)
    m._apply(2, ("snapshot", "d1", "d2", False), True)
    m._apply(3, ("write", "d1", 3000, 100), True)
    w3 = crashlib.pattern(1, 1, 3, 3000, 100)
    actual = np.zeros(256 * KiB, np.uint8)
    assert m.allowed("d1", actual).all() and m.allowed("d2", actual).all()
    actual[1000:6000] = w
    assert m.allowed("d1", actual).all() and m.allowed("d2", actual).all()
    actual[3000:3100] = w3
    assert m.allowed("d1", actual).all()
    # d2 was snapshotted before op 3: op 3's bytes are not d2's (the tag's round and device
    # fields and the op's high bytes are the same as op 1's: 7 of 16 bytes, plus chance)
    assert m.allowed("d2", actual)[3000:3100].sum() < 60
    assert crashlib.describe_slot(w3[8:24].tobytes(), 3008).startswith("round 1 op 3 via device code 1")


# --------------------------------------------------------------------------- minimal cases


def _run_then_kill(script, location):
    """Run ``script`` (the pool's location in ``where``) in a subprocess that kills itself
    with SIGKILL at its end."""
    code = (f"where = {location!r}\n" + textwrap.dedent(script)
            + "\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    if "://" in location:
        # the dead writer's RADOS lock lasts its lease (30 s): break it, as
        # `cowblock pool unlock --force` does (blocklisting the dead client first)
        assert "cowblock pid" in cowblock.Pool.unlock(location)


def test_kill_after_flush_keeps_everything(backend):
    where = backend.location()
    _run_then_kill("""
        import cowblock
        p = cowblock.Pool.create(where, size=64 << 20, block_size=65536)
        a = p.create_device("a", 4 << 20)
        a.write(1000, b"A" * 200000)
        s = p.snapshot("a", "s", readonly=True)
        a.write(4096, b"B" * 4096)          # copy-up of a shared block
        p.delete("s")
        p.flush()
    """, where)
    with cowblock.Pool.open(where) as p:
        assert p.devices() == ["a"]
        got = p.device("a").read(0, 300000)
        want = bytearray(300000)
        want[1000:201000] = b"A" * 200000
        want[4096:8192] = b"B" * 4096
        assert got == bytes(want)
        r = p.check()
        assert r.ok, r.messages
    assert rawstore.check_objects(backend.stores(where)) == []


def test_kill_before_flush_leaks_no_block(backend):
    """A write into a new block after the last flush, then SIGKILL: the reopened pool reads the
    block as zeros, and the block the lost transaction allocated and wrote must not stay in the
    data file as a leak (DESIGN.md invariant 3; issue 3: "no block is leaked").  This was the
    harness's first finding; open now punches such blocks after an unclean shutdown.  On
    RADOS the punch zeroes the block inside its object, and nothing past the stores' ends
    is left behind."""
    where = backend.location()
    _run_then_kill("""
        import cowblock
        p = cowblock.Pool.create(where, size=64 << 20, block_size=65536)
        a = p.create_device("a", 4 << 20)
        a.write(0, b"x" * 100000)
        p.flush()
        a.write(1 << 20, b"y" * 5000)       # allocates and writes a block, never committed
    """, where)
    with cowblock.Pool.open(where) as p:
        a = p.device("a")
        assert a.read(0, 100000) == b"x" * 100000
        assert a.read(1 << 20, 5000) == bytes(5000)
        assert p.used == 2 * 65536
        r = p.check()
        assert r.errors == 0, r.messages
        assert r.ok, f"leak after a crash before flush: {r.messages}"
    assert rawstore.check_objects(backend.stores(where)) == []


def test_object_check_catches_strays(ceph):
    """The harness's RADOS object check is able to fail: an object past a store's end, one
    of no store, a head without its xattrs and an oversized stripe are each named."""
    from conftest import rados_url

    where = rados_url(ceph)
    with cowblock.Pool.create(where, size=64 << 20) as p:
        p.create_device("a", 1 << 20).write(0, b"x" * 5000)
    stores = rawstore.open_stores(where, ceph)
    assert rawstore.check_objects(stores) == []
    osize, _ = stores.layout("data")
    stores.put_object(stores.oid("data", (64 << 20) // osize + 3), b"stray")
    stores.put_object(stores.name + ".data.not-a-stripe", b"?")
    stores.put_object(stores.oid("meta", 0), bytes(osize + 1))
    problems = " | ".join(rawstore.check_objects(stores))
    assert "past the store's end" in problems and "not a stripe" in problems, problems
    assert "more than the object size" in problems, problems
    stores.rados("rmxattr", stores.head("meta"), "cb.seq")
    assert "cb.seq unreadable" in " | ".join(rawstore.check_objects(stores))
