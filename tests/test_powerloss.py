"""Power loss, simulated by the CB_TESTING IO backend (csrc/testio.c).

SIGKILL keeps the page cache; a power cut does not.  The test backend holds
every write to the pool files in memory until that file's fdatasync, and a
simulated cut drops whatever is pending (optionally letting a torn prefix of
the last write, or a random subset of the pending writes, reach the disk).

Each round: a base pool is made and flushed; a random workload (writes of
every shape, copy-up into snapshots, discards, snapshots, creates, deletes,
flushes) runs once uncut to count its IO events (every pwrite, fdatasync,
punch and truncate, on either file) and where each flush's events lie; then
it runs again from a copy of the base pool once per chosen cut point: after
every event of some flushes (cuts inside the commit protocol) and after
random others, with and without torn writes.  After each cut the pool is
closed, reopened with the plain backend and verified (DESIGN.md section 2,
invariant 4): everything written before the last completed flush is intact,
every other byte holds its value at that flush or a later write's, check()
finds nothing, leaks included.

Default: a bounded run.  With --run-slow: many more rounds.
"""
import copy
import os
import random
import shutil

import pytest

from testbuild import (Workload, capacity_full, check_ok, describe, execute, make_base,  # noqa: F401
                       run_worker, scratch_dir, sparse_copy, testing_build, tlib, verify_crash,
                       verify_exact)

POOL_SIZE = 16 << 20
# (block size, pool size, workload weights) by seed % 4; the last is tight,
# so that writes meet a full pool and commit inside the write to reuse what
# deletes and discards freed
TIGHT = {"flush": 2, "delete": 10, "snapshot": 10, "check": 0}
CONFIGS = [(4096, POOL_SIZE, None), (16384, POOL_SIZE, None), (65536, POOL_SIZE, None),
           (16384, 2 << 20, TIGHT)]


# ---------------------------------------------------------------------------
# worker side (runs in the child, over the test core)


def _open(work, seed, bs):
    """The pool the workload runs on: seeds 8-15, 24-31, ... keep freed
    blocks for reuse instead of punching them."""
    import cowblock

    return cowblock.Pool.open(work, keep_freed=64 * bs if seed & 8 else 0)


def _events(lib):
    return lib.cb_test_count(lib.CB_TEST_MUTATE, lib.CB_TEST_ANY)


def _meta_syncs(lib):
    return lib.cb_test_count(lib.CB_TEST_SYNC, lib.CB_TEST_META)


def _dry_run(lib, base, work, base_model, seed, cfg, nops):
    """The workload uncut: the IO events of each operation, whether it
    committed; verifies a clean close too."""
    import cowblock

    bs, pool_size, weights = cfg
    sparse_copy(base, work)
    model = copy.deepcopy(base_model)
    wl = Workload(seed, bs, weights=weights)
    lib.cb_test_reset()
    lib.cb_test_enable(1)
    pool = _open(work, seed, bs)
    spans = [("open", 0, _events(lib), _meta_syncs(lib) > 0)]
    for _ in range(nops):
        op = wl.next(model)
        before, syncs = _events(lib), _meta_syncs(lib)
        exc = execute(pool, model, op)
        assert exc is None or capacity_full(exc, pool_size), (
            f"{describe(op)} failed without any fault: {exc!r}")
        if model.last_check is not None:
            assert model.last_check.errors == 0, model.last_check.messages
        spans.append((op[0], before, _events(lib), _meta_syncs(lib) > syncs))
    pool.close()
    total = _events(lib)
    lib.cb_test_enable(0)
    with cowblock.Pool.open(work) as pool:
        verify_exact(pool, model)
        check_ok(pool)
    shutil.rmtree(work)
    return spans, total


def _cut_run(lib, base, work, base_model, seed, cfg, nops, k, torn, keep, figures):
    """The workload with a power cut after IO event k; then power on, reopen
    with the plain backend and verify.  Returns (the op index of the cut, -1
    for open; whether a torn write reached the disk)."""
    import cowblock

    bs, pool_size, weights = cfg
    sparse_copy(base, work)
    model = copy.deepcopy(base_model)
    wl = Workload(seed, bs, weights=weights)
    lib.cb_test_reset()
    if keep:
        lib.cb_test_reorder(keep, seed * 1000003 + k)
    assert lib.cb_test_power_cut_at(lib.CB_TEST_MUTATE, lib.CB_TEST_ANY, k, torn) == 0
    lib.cb_test_enable(1)
    where = None
    try:
        pool = _open(work, seed, bs)
    except cowblock.CowblockError:
        assert lib.cb_test_cuts(), "open failed without a power cut"
        pool, where = None, -1
    if pool is not None:
        for i in range(nops):
            op = wl.next(model)
            exc = execute(pool, model, op)
            rep = model.last_check
            assert rep is None or rep.errors == 0, f"check found corruption: {rep.messages}"
            if exc is not None and not (capacity_full(exc, pool_size) and not lib.cb_test_cuts()):
                assert lib.cb_test_cuts(), f"{describe(op)} failed before the cut: {exc!r}"
                assert isinstance(exc, (cowblock.IOFailedError, cowblock.PoolFailedError)), (
                    f"{describe(op)} after a power cut raised {exc!r}")
            if lib.cb_test_cuts():
                where = i
                break
        cut_before_close = lib.cb_test_cuts()
        try:
            pool.close()
            if not cut_before_close:
                model.flushed()  # close committed: the cut came after its last sync
        except cowblock.CowblockError:
            pass  # the machine is off: the closing commit cannot work
    assert lib.cb_test_cuts() == 1, f"no power cut at event {k}"
    torn_applied = lib.cb_test_torn() > 0
    assert lib.cb_test_open_files() == 0
    # Sometimes the power fails again while open recovers (punching what the
    # lost transaction allocated, committing): after its jth IO event.
    rng = random.Random(seed * 7919 + k)
    if rng.random() < 0.3:
        lib.cb_test_reset()
        lib.cb_test_power_cut_at(lib.CB_TEST_MUTATE, lib.CB_TEST_ANY, rng.randint(1, 6),
                                 rng.choice([0, 0, 512, 2048]))
        try:
            again = cowblock.Pool.open(work)
            try:
                again.close()
            except cowblock.CowblockError:
                pass
        except cowblock.CowblockError:
            pass
        figures["recovery_cuts"] += lib.cb_test_cuts()
        assert lib.cb_test_open_files() == 0
    lib.cb_test_enable(0)
    # power back on: the plain backend, as after a reboot
    try:
        with cowblock.Pool.open(work) as pool:
            verify_crash(pool, model)
            check_ok(pool)
        with cowblock.Pool.open(work) as pool:  # recovery is stable
            check_ok(pool)
    except (AssertionError, cowblock.CowblockError) as e:
        raise AssertionError(f"seed {seed} config {cfg} cut after IO event {k} torn {torn} "
                             f"keep {keep}% (op {where}): {e!r}") from None
    shutil.rmtree(work)
    return where, torn_applied


def powerloss_rounds(seeds, nops, random_cuts, commit_cuts):
    """Rounds of cut runs; returns the figures."""
    lib = tlib()
    figures = {"rounds": 0, "cuts": 0, "in_commit": 0, "after_commit": 0, "torn": 0,
               "reordered": 0, "open": 0, "events": 0, "implicit_commits": 0,
               "recovery_cuts": 0}
    tmp = scratch_dir("cb-powerloss-")
    try:
        for seed in seeds:
            cfg = CONFIGS[seed % len(CONFIGS)]
            bs = cfg[0]
            rng = random.Random(seed)
            base, work = os.path.join(tmp, "base"), os.path.join(tmp, "work")
            # seeds 4-7, 12-15, ...: every config again with data checksums
            base_model = make_base(base, bs, cfg[1], seed, checksums=bool(seed & 4))
            spans, total = _dry_run(lib, base, work, base_model, seed, cfg, nops)
            figures["events"] += total
            commits = [(b, e) for kind, b, e, committed in spans if committed]
            # cut points: after every IO event of some commits (all of those made
            # inside a write), and random others
            implicit = [(b, e) for kind, b, e, c in spans
                        if c and kind not in ("flush", "check", "open")]
            chosen = set()
            for b, e in implicit + rng.sample(commits, min(commit_cuts, len(commits))):
                chosen.update(range(b + 1, e + 1))
            chosen.update(rng.randint(1, total) for _ in range(random_cuts))
            for k in sorted(chosen):
                r = rng.random()
                torn = rng.choice([512, 1536, 4096, 6144, bs // 2, bs + 1024]) if r < 0.5 else 0
                keep = rng.choice([25, 50, 90]) if 0.5 <= r < 0.7 else 0
                where, torn_applied = _cut_run(lib, base, work, base_model, seed, cfg, nops,
                                               k, torn, keep, figures)
                figures["cuts"] += 1
                figures["torn"] += torn_applied
                figures["reordered"] += bool(keep)
                figures["open"] += where == -1
                for b, e in commits:
                    if b < k <= e:
                        figures["in_commit" if k < e else "after_commit"] += 1
            shutil.rmtree(base)
            figures["rounds"] += 1
            figures["implicit_commits"] += len(implicit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def manual_cut_demo():
    """cb_test_power_cut: pending writes are visible before the cut, lost after it."""
    import cowblock

    lib = tlib()
    tmp = scratch_dir("cb-powerloss-")
    path = os.path.join(tmp, "pool")
    try:
        lib.cb_test_reset()
        lib.cb_test_enable(1)
        pool = cowblock.Pool.create(path, size=POOL_SIZE, block_size=16384)
        dev = pool.create_device("d", 1 << 20)
        dev.write(0, b"A" * 40000)
        pool.flush()
        assert lib.cb_test_pending(lib.CB_TEST_ANY) == 0
        dev.write(10000, b"B" * 100000)
        pool.snapshot("d", "s")
        assert lib.cb_test_pending(lib.CB_TEST_DATA) > 0
        assert dev.read(10000, 5) == b"BBBBB"  # the page cache
        lib.cb_test_power_cut(0)
        with pytest.raises(cowblock.IOFailedError):
            dev.read(0, 10)
        with pytest.raises(cowblock.IOFailedError):
            dev.write(0, b"x")
        try:
            pool.close()
        except cowblock.CowblockError:
            pass
        lib.cb_test_enable(0)
        with cowblock.Pool.open(path) as pool:
            assert pool.devices() == ["d"]
            assert pool.device("d").read(0, 40000) == b"A" * 40000
            assert pool.device("d").read(40000, 70000) == bytes(70000)
            check_ok(pool)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {}


# ---------------------------------------------------------------------------
# tests (run in pytest; the work happens in a child)


def test_power_cut_drops_unsynced_writes(testing_build):
    run_worker(testing_build, "test_powerloss", "manual_cut_demo")


def test_power_cuts(testing_build, run_slow, capsys):
    rounds = 400 if run_slow else 16
    f = run_worker(testing_build, "test_powerloss", "powerloss_rounds",
                   timeout=4 * 3600 if run_slow else 300,
                   seeds=list(range(1, rounds + 1)), nops=60,
                   random_cuts=40 if run_slow else 25, commit_cuts=3 if run_slow else 2)
    with capsys.disabled():
        print(f"\n  power cuts survived: {f['cuts']} in {f['rounds']} rounds "
              f"({f['in_commit']} inside a commit, {f['after_commit']} right after its last "
              f"sync, {f['torn']} with a torn last write, {f['reordered']} with reordered "
              f"writes, {f['open']} during open, {f['recovery_cuts']} more while open "
              f"recovered from one; {f['implicit_commits']} commits inside writes)")
    assert f["cuts"] > 0 and f["in_commit"] > 0 and f["torn"] > 0
