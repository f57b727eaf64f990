"""Fault injection through the CB_TESTING IO backend (csrc/testio.c).

A representative workload (open, writes of every shape with copy-up into
snapshots, discards, snapshots, creates, deletes, reads, flushes, check,
close) runs once to count its calls of each kind on each pool file; then once
per injection point: the Nth pread, pwrite, fdatasync or punch of the data
file or of the metadata file fails with EIO or ENOSPC, once or from then on.
Each time:

* the operation that meets the fault raises a clear error: a CowblockError,
  PoolFullError for ENOSPC, IOFailedError with that errno for EIO;
* the pool either goes on correctly (every later read matches the model,
  bytes of a failed write hold their old or new value) or is in the sticky
  failed state, where everything but close raises PoolFailedError;
* after close and a reopen without faults: a pool that stayed healthy holds
  exactly what was written; a failed one everything flushed, the rest as the
  durability contract allows; check() finds nothing wrong.
"""
import copy
import errno
import os
import shutil

import pytest

from testbuild import (Workload, capacity_full, check_ok, describe, execute, make_base,  # noqa: F401
                       run_worker, scratch_dir, sparse_copy, testing_build, tlib, verify_crash,
                       verify_exact)

POOL_SIZE = 16 << 20
KINDS = ("PREAD", "PWRITE", "SYNC", "PUNCH")
FILES = ("DATA", "META")
WEIGHTS = {"flush": 10, "check": 3, "delete": 5}
# a tight pool: writes meet a full pool and commit inside the write
TIGHT = {"flush": 2, "delete": 10, "snapshot": 10, "check": 1}


# ---------------------------------------------------------------------------
# worker side


def _expect(exc, err, what):
    import cowblock

    if err == errno.ENOSPC:
        ok = isinstance(exc, cowblock.PoolFullError)
    else:
        ok = isinstance(exc, cowblock.IOFailedError) and exc.errno == err
    assert ok, f"{what}: an injected {errno.errorcode[err]} surfaced as {exc!r}"


def _is_failed(pool):
    import cowblock

    try:
        pool.devices()
        return False
    except cowblock.PoolFailedError:
        return True


def _assert_sticky(pool, model):
    """In the failed state every call but close raises PoolFailedError."""
    import cowblock

    name = sorted(model.live)[0]
    calls = {
        "flush": pool.flush, "devices": pool.devices, "used": lambda: pool.used,
        "check": pool.check, "usage": pool.usage, "stats": pool.stats,
        "create_device": lambda: pool.create_device("zz-new", 1 << 20),
        "snapshot": lambda: pool.snapshot(name, "zz-snap"),
        "delete": lambda: pool.delete(name), "info": lambda: pool.info(name),
    }
    try:
        dev = pool.device(name)  # may come from the cache of open handles
    except cowblock.PoolFailedError:
        dev = None
    if dev is not None:
        calls.update({
            "read": lambda: dev.read(0, 100), "write": lambda: dev.write(0, b"x" * 100),
            "discard": lambda: dev.discard(0, 4096), "dev.flush": dev.flush,
            "extents": dev.extents, "changed_blocks": dev.changed_blocks,
            "dev.usage": dev.usage,
        })
    for what, call in calls.items():
        try:
            call()
        except cowblock.PoolFailedError:
            continue
        except Exception as e:  # noqa: BLE001 - reported below
            raise AssertionError(f"failed pool: {what} raised {e!r}, not PoolFailedError")
        raise AssertionError(f"failed pool: {what} worked")


def _fault_run(lib, base, work, base_model, cfg, nops, kind, file, n, err, sticky, stats):
    import cowblock

    seed, bs, pool_size, _, keep = cfg
    sparse_copy(base, work)
    model = copy.deepcopy(base_model)
    wl = Workload(seed, bs, weights=_weights(pool_size))
    lib.cb_test_reset()
    k, f = getattr(lib, "CB_TEST_" + kind), getattr(lib, "CB_TEST_" + file)
    assert (lib.cb_test_fail_from if sticky else lib.cb_test_fail)(k, f, n, err) == 0
    lib.cb_test_enable(1)
    where = f"{kind} #{n} of {file} -> {errno.errorcode[err]}{' sticky' if sticky else ''}"
    errors, failed, clean_close = 0, False, False
    try:
        pool = cowblock.Pool.open(work, keep_freed=keep * bs)
    except cowblock.CowblockError as e:
        assert lib.cb_test_injected(), f"open failed without a fault: {e!r}"
        _expect(e, err, f"{where}: open")
        pool, errors = None, 1
    if pool is not None:
        for _ in range(nops):
            op = wl.next(model)
            injected = lib.cb_test_injected()
            exc = execute(pool, model, op)
            hit = lib.cb_test_injected() > injected
            rep = model.last_check
            assert rep is None or rep.errors == 0, f"{where}: check found corruption: {rep.messages}"
            if exc is None or (capacity_full(exc, pool_size) and (not hit or kind == "PUNCH")):
                continue  # a full pool, met by design (a failed punch is silent)
            errors += 1
            assert lib.cb_test_injected(), f"{where}: {describe(op)} failed without a fault: {exc!r}"
            assert not isinstance(exc, cowblock.PoolFailedError), (
                f"{where}: the pool failed with no error reported before: {describe(op)}")
            _expect(exc, err, f"{where}: {describe(op)}")
            if _is_failed(pool):
                failed = True
                _assert_sticky(pool, model)
                break
        try:
            pool.close()
            clean_close = not failed
        except cowblock.CowblockError as e:
            assert not failed, f"{where}: close of a failed pool raised {e!r}"
            _expect(e, err, f"{where}: close")
            errors += 1
    injected = lib.cb_test_injected()
    lib.cb_test_enable(0)
    assert lib.cb_test_open_files() == 0
    try:
        with cowblock.Pool.open(work) as pool:
            if clean_close:
                verify_exact(pool, model)
            else:
                verify_crash(pool, model)
            # A failed punch leaves its blocks' space allocated, by design
            # (txn.c punch_runs): check reports a leak, repair gives it back.
            rep = check_ok(pool, allow_leaks=kind == "PUNCH")
            if not rep.ok:
                assert rep.leaked_pages == 0, rep.messages
                stats["punch_leaks"] += 1
                pool.check(repair=True)
                check_ok(pool)
    except (AssertionError, cowblock.CowblockError) as e:
        raise AssertionError(f"{where}: after reopen: {e!r}") from None
    shutil.rmtree(work)
    stats["runs"] += 1
    stats["failed_state"] += failed
    stats["went_on"] += bool(errors) and not failed
    if injected and not errors:
        # An ENOSPC from the data file is absorbed when the open transaction
        # freed blocks: the core commits (which punches them) and retries.
        if err == errno.ENOSPC and file == "DATA" and kind != "PUNCH":
            stats["absorbed"] += 1
        else:
            stats["silent"][f"{kind} {file}"] = stats["silent"].get(f"{kind} {file}", 0) + 1
    return injected


def _weights(pool_size):
    return TIGHT if pool_size < POOL_SIZE else WEIGHTS


def fault_rounds(configs, nops, modes):
    """Every injection point of the workload of each (seed, block size, pool size)."""
    import cowblock

    lib = tlib()
    stats = {"runs": 0, "points": {}, "failed_state": 0, "went_on": 0, "silent": {}, "absorbed": 0,
             "calls": {}, "punch_leaks": 0, "implicit_commits": 0}
    tmp = scratch_dir("cb-faults-")
    try:
        for cfg in configs:
            seed, bs, pool_size, checksums, keep = cfg
            base, work = os.path.join(tmp, "base"), os.path.join(tmp, "work")
            base_model = make_base(base, bs, pool_size, seed, checksums)
            # dry run: count the calls
            sparse_copy(base, work)
            model = copy.deepcopy(base_model)
            wl = Workload(seed, bs, weights=_weights(pool_size))
            lib.cb_test_reset()
            lib.cb_test_enable(1)
            with cowblock.Pool.open(work, keep_freed=keep * bs) as pool:
                for _ in range(nops):
                    op = wl.next(model)
                    syncs = lib.cb_test_count(lib.CB_TEST_SYNC, lib.CB_TEST_META)
                    exc = execute(pool, model, op)
                    assert exc is None or capacity_full(exc, pool_size), (
                        f"{describe(op)} failed without a fault: {exc!r}")
                    assert model.last_check is None or model.last_check.ok
                    if (op[0] not in ("flush", "check") and
                            lib.cb_test_count(lib.CB_TEST_SYNC, lib.CB_TEST_META) > syncs):
                        stats["implicit_commits"] += 1
            counts = {(kd, fl): lib.cb_test_count(getattr(lib, "CB_TEST_" + kd),
                                                  getattr(lib, "CB_TEST_" + fl))
                      for kd in KINDS for fl in FILES}
            lib.cb_test_enable(0)
            with cowblock.Pool.open(work) as pool:
                verify_exact(pool, model)
                check_ok(pool)
            shutil.rmtree(work)
            for (kd, fl), c in counts.items():
                key = f"{kd} {fl}"
                stats["calls"][key] = stats["calls"].get(key, 0) + c
                for n in range(1, c + 1):
                    for err in (errno.EIO, errno.ENOSPC):
                        for sticky in modes:
                            injected = _fault_run(lib, base, work, base_model, cfg, nops,
                                                  kd, fl, n, err, sticky, stats)
                            assert injected, f"{key} #{n}: the fault was never injected"
                            stats["points"][key] = stats["points"].get(key, 0) + 1
            shutil.rmtree(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def backend_selftest():
    """The test backend itself: counters, once and sticky faults, cut_at."""
    import cowblock

    lib = tlib()
    tmp = scratch_dir("cb-faults-")
    path = os.path.join(tmp, "pool")
    try:
        lib.cb_test_reset()
        lib.cb_test_enable(1)
        pool = cowblock.Pool.create(path, size=POOL_SIZE, block_size=16384)
        assert lib.cb_test_open_files() == 2
        dev = pool.create_device("d", 1 << 20)
        dev.write(0, b"x" * 100000)
        pool.flush()
        lib.cb_test_reset()
        dev.read(0, 10)
        dev.read(50000, 10)
        assert lib.cb_test_count(lib.CB_TEST_PREAD, lib.CB_TEST_DATA) == 2
        assert lib.cb_test_count(lib.CB_TEST_PREAD, lib.CB_TEST_ANY) == 2
        assert lib.cb_test_count(lib.CB_TEST_PWRITE, lib.CB_TEST_ANY) == 0
        # once: the 4th read fails, the 5th works
        assert lib.cb_test_fail(lib.CB_TEST_PREAD, lib.CB_TEST_DATA, 4, errno.EIO) == 0
        dev.read(0, 10)
        with pytest.raises(cowblock.IOFailedError) as ei:
            dev.read(0, 10)
        assert ei.value.errno == errno.EIO
        assert dev.read(0, 3) == b"xxx"
        # sticky, ENOSPC: from the 6th on
        lib.cb_test_fail_from(lib.CB_TEST_PREAD, lib.CB_TEST_DATA, 6, errno.ENOSPC)
        for _ in range(3):
            with pytest.raises(cowblock.PoolFullError):
                dev.read(0, 10)
        assert lib.cb_test_injected() == 4
        lib.cb_test_reset()
        assert dev.read(0, 3) == b"xxx"
        # bad arguments
        assert lib.cb_test_fail(99, 0, 1, errno.EIO) != 0
        assert lib.cb_test_fail(0, 7, 1, errno.EIO) != 0
        assert lib.cb_test_fail(0, 0, 0, errno.EIO) != 0
        # a cut after the 1st data sync of a flush: the flush fails after it
        dev.write(200000, b"y" * 5000)
        lib.cb_test_power_cut_at(lib.CB_TEST_SYNC, lib.CB_TEST_DATA, 1, 0)
        with pytest.raises(cowblock.IOFailedError):
            pool.flush()
        assert lib.cb_test_cuts() == 1
        with pytest.raises(cowblock.PoolFailedError):
            dev.read(0, 1)
        pool.close()
        assert lib.cb_test_open_files() == 0
        lib.cb_test_enable(0)
        with cowblock.Pool.open(path) as pool:
            dev = pool.device("d")
            assert dev.read(0, 100000) == b"x" * 100000
            got = dev.read(200000, 5000)
            assert got in (bytes(5000), b"y" * 5000)
            check_ok(pool)
    finally:
        lib.cb_test_enable(0)
        shutil.rmtree(tmp, ignore_errors=True)
    return {}


def check_read_error():
    """check() meeting a metadata read error: an IO error, not "corrupt"."""
    import cowblock

    lib = tlib()
    tmp = scratch_dir("cb-faults-")
    path = os.path.join(tmp, "pool")
    try:
        lib.cb_test_reset()
        lib.cb_test_enable(1)
        with cowblock.Pool.create(path, size=POOL_SIZE, block_size=16384) as pool:
            pool.create_device("d", 1 << 20).write(0, b"x" * 100000)
            pool.flush()
            lib.cb_test_reset()
            lib.cb_test_fail(lib.CB_TEST_PREAD, lib.CB_TEST_META, 1, errno.EIO)
            try:
                rep = pool.check()
            except cowblock.IOFailedError:
                return {"outcome": "raised"}
            return {"outcome": "report", "errors": rep.errors, "messages": rep.messages}
    finally:
        lib.cb_test_enable(0)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# tests


def test_backend_selftest(testing_build):
    run_worker(testing_build, "test_faults", "backend_selftest")


def test_check_read_error_is_not_corruption(testing_build):
    # check.c used to count a page it could not read as a corruption error
    out = run_worker(testing_build, "test_faults", "check_read_error")
    assert out["outcome"] == "raised", f"check() returned a report: {out}"


def test_fault_injection(testing_build, run_slow, capsys):
    # (seed, block size, pool size, data checksums, freed blocks kept for
    # reuse); seeds 13, 18 and 32 meet the tight pool's capacity and commit
    # inside writes
    configs = [[7, 16384, POOL_SIZE, False, 64], [13, 16384, 2 << 20, True, 0]]
    if run_slow:
        configs += [[8, 4096, POOL_SIZE, True, 0], [9, 65536, POOL_SIZE, False, 0],
                    [10, 16384, POOL_SIZE, True, 64], [18, 16384, 2 << 20, False, 16],
                    [32, 16384, 2 << 20, False, 0], [7, 16384, POOL_SIZE, True, 0],
                    [9, 65536, POOL_SIZE, True, 64], [13, 16384, 2 << 20, True, 16]]
    stats = run_worker(testing_build, "test_faults", "fault_rounds",
                       timeout=4 * 3600 if run_slow else 600,
                       configs=configs, nops=80 if run_slow else 45, modes=[False, True])
    total = sum(stats["points"].values())
    with capsys.disabled():
        print(f"\n  fault injection points covered: {total} "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(stats['points'].items()))}) "
              f"= every call of the workloads x EIO/ENOSPC x once/sticky; the pool went on "
              f"after {stats['went_on']}, entered the sticky failed state after "
              f"{stats['failed_state']}; faults no call reported (punch, by design): "
              f"{stats['silent']}; data ENOSPC absorbed by commit-and-retry: "
              f"{stats['absorbed']}; leaks after a failed punch (repaired): "
              f"{stats['punch_leaks']}; "
              f"commits inside writes: {stats['implicit_commits']}")
    assert total > 0 and stats["implicit_commits"] > 0
    silent = {k: v for k, v in stats["silent"].items() if not k.startswith("PUNCH")}
    assert not silent, f"faults that no call reported: {silent}"
