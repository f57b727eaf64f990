"""Closing a pool while other threads use it (issue 8, defect 1).

``Pool.close()`` may run while other threads are inside the core: it refuses
new calls (``ClosedError``), waits for those inside, commits, and frees
nothing another thread can still reach (cowblock.h, "Lifetimes").  Each
round: worker threads read, write, snapshot, delete, ask for usage and
flush, and open and drop device objects (whose C handles are then closed by
the garbage collector, racing the close); two more call the C core through
pointers they loaded before the close, as a thread of any binding may; the
main thread closes the pool at a random moment.  Every call must either complete or raise ClosedError, no
thread may hang, and every write that returned, which is every write that
returned before close() returned, must be in the pool when it is reopened.

Run it under the sanitizers with ``.ci/asan -- tests/test_close.py``: a use
after free there is an AddressSanitizer report, here at worst a crash.
"""
import gc
import os
import random
import threading
import time

import pytest

import cowblock
from cowblock import errors

BS = 4096
DEV_SIZE = 256 * BS
THREADS = 8
ROUNDS = 12
SLOTS = 16  # write slots per thread and device: thread t owns blocks t*SLOTS ..
ASAN = "asan" in os.environ.get("LD_PRELOAD", "") or bool(os.environ.get("COWBLOCK_SANITIZE"))
JOIN_TIMEOUT = 60 if ASAN else 20


def _payload(t, dev, slot, n):
    head = f"t{t} {dev} s{slot} n{n}|".encode()
    return (head * (BS // len(head) + 1))[:BS]


class Worker(threading.Thread):
    def __init__(self, pool, t, seed, bases):
        super().__init__(daemon=True, name=f"close-worker-{t}")
        self.pool, self.t, self.rng, self.bases = pool, t, random.Random(seed), bases
        self.written = {}   # (device, slot) -> payload of the last write that returned
        self.calls = 0      # calls that completed
        self.closed = 0     # calls that raised ClosedError
        self.errors = []    # anything else
        self.snaps = []

    def op(self):
        pool, rng, t = self.pool, self.rng, self.t
        what = rng.randrange(12)
        if what < 4:
            name = rng.choice(self.bases)
            slot = rng.randrange(SLOTS)
            data = _payload(t, name, slot, self.calls)
            pool.device(name).write((t * SLOTS + slot) * BS, data)
            self.written[(name, slot)] = data
        elif what < 6:
            name = rng.choice(self.bases + self.snaps)
            dev = pool.device(name)
            dev.read(rng.randrange(DEV_SIZE // BS) * BS, BS)
        elif what == 6:
            snap = f"s{t}-{self.calls}"
            pool.snapshot(rng.choice(self.bases), snap, readonly=rng.random() < 0.5)
            self.snaps.append(snap)
        elif what == 7 and self.snaps:
            pool.delete(self.snaps.pop(rng.randrange(len(self.snaps))))
        elif what == 8:
            pool.usage()
            pool.device(rng.choice(self.bases)).usage()
        elif what == 9:
            pool.flush() if rng.random() < 0.5 else pool.device(rng.choice(self.bases)).flush()
        elif what == 10:
            pool.devices()
            pool.stats()
        elif self.snaps:
            # a device object of our own made and dropped: its C handle is
            # closed by the garbage collector, maybe while the pool closes
            dev = pool.device(self.snaps[-1])
            dev.read(0, 512)
            del dev
            gc.collect(0)

    def run(self):
        while True:
            try:
                self.op()
                self.calls += 1
            except errors.ClosedError:
                self.closed += 1
                return
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
                return


class RawWorker(threading.Thread):
    """A thread of another binding: it loaded the C pointers before the close
    and goes on calling through them until the core says CB_ECLOSED."""

    def __init__(self, pool, t):
        super().__init__(daemon=True, name=f"close-raw-{t}")
        from cowblock._lowlevel import ffi, lib

        self.ffi, self.lib, self.t = ffi, lib, t
        self.h, self.dh = pool._h._p, pool.device("a")._h  # the cb_pool * and cb_dev *
        self.written = {}
        self.calls = 0
        self.errors = []

    def run(self):
        ffi, lib, t = self.ffi, self.lib, self.t
        buf, st = ffi.new("char[]", BS), ffi.new("cb_stat *")
        slot = 0
        try:
            while True:
                data = _payload(t, "a", slot, self.calls)
                buf[0:BS] = data
                rc = lib.cb_dev_write(self.dh, buf, BS, (t * SLOTS + slot) * BS)
                if rc == 0:
                    self.written[("a", slot)] = data
                    rc = lib.cb_dev_read(self.dh, buf, BS, 0)
                if rc == 0:
                    rc = lib.cb_pool_stat(self.h, st)
                if rc == lib.CB_ECLOSED:
                    return
                if rc:
                    self.errors.append(ffi.string(lib.cb_strerror(rc)).decode())
                    return
                self.calls += 1
                slot = (slot + 1) % SLOTS
                time.sleep(0)  # let the other threads have the GIL
        finally:
            self.h = self.dh = None  # the pool's memory may go now


def test_close_while_threads_use_the_pool(tmp_path):
    total_calls = 0
    for r in range(ROUNDS):
        path = tmp_path / f"p{r}"
        rng = random.Random(r)
        pool = cowblock.Pool.create(path, size=64 << 20, block_size=BS)
        bases = ["a", "b"]
        for name in bases:
            pool.create_device(name, DEV_SIZE)
        pool.flush()
        workers = [Worker(pool, t, r * 100 + t, bases) for t in range(THREADS)]
        workers += [RawWorker(pool, t) for t in range(THREADS, THREADS + 2)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(0.002, 0.06))
        pool.close()
        for w in workers:
            w.join(JOIN_TIMEOUT)
        hung = [w.name for w in workers if w.is_alive()]
        assert not hung, f"round {r}: threads still running {JOIN_TIMEOUT} s after close: {hung}"
        for w in workers:
            assert not w.errors, f"round {r}, {w.name}: {w.errors}"
            total_calls += w.calls
        with pytest.raises(errors.ClosedError):
            pool.device("a")
        del pool
        gc.collect()  # device objects of the workers: their C handles close now
        # close drained the calls inside, then committed: every write that
        # returned is there
        with cowblock.Pool.open(path, readonly=True) as again:
            for w in workers:
                for (name, slot), data in w.written.items():
                    got = again.device(name).read((w.t * SLOTS + slot) * BS, BS)
                    assert got == data, f"round {r}: write of {w.name} to {name} slot {slot} lost"
            report = again.check()
            assert report.ok, report.messages
    assert total_calls > ROUNDS * THREADS  # the threads did run before the closes


def test_calls_after_close_raise_closed_error(tmp_path):
    pool = cowblock.Pool.create(tmp_path / "p", size=1 << 20, block_size=BS)
    dev = pool.create_device("a", 16 * BS)
    dev.write(0, b"x" * BS)
    h = pool._h._p  # what a thread that loaded the handle before the close still holds
    dh = dev._h
    pool.close()
    from cowblock._lowlevel import ffi, lib

    st = ffi.new("cb_stat *")
    assert lib.cb_pool_stat(h, st) == lib.CB_ECLOSED
    assert lib.cb_pool_flush(h) == lib.CB_ECLOSED
    assert lib.cb_pool_close(h) == lib.CB_ECLOSED  # a second close through the same pointer
    buf = ffi.new("char[]", BS)
    assert lib.cb_dev_read(dh, buf, BS, 0) == lib.CB_ECLOSED
    assert lib.cb_dev_write(dh, buf, BS, 0) == lib.CB_ECLOSED
    with pytest.raises(errors.ClosedError):
        dev.read(0, 10)
    with pytest.raises(errors.ClosedError):
        pool.usage()
    pool.close()  # idempotent
    del h, dh, dev
    gc.collect()
    with cowblock.Pool.open(tmp_path / "p") as again:
        assert again.device("a").read(0, BS) == b"x" * BS
