"""A hypothesis state machine against a plain in-memory model (name -> bytearray).

Random create / snapshot (rw and ro) / write (unaligned, crossing blocks) / discard / delete /
flush / close+reopen (read-write or read-only), comparing every read byte for byte with the
model, checking used <= size, pool.check(), and that deleting everything gives every block
back. Small pools and devices so it runs fast; --run-slow gives it a much bigger budget.
It runs once per backend: pools in a directory, and pools in RADOS (a smaller budget)."""

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import cowblock

NAMES = [f"d{i}" for i in range(8)]
MAX_DEVICES = 6


class PoolMachine(RuleBasedStateMachine):
    new_location = None  # a callable giving a fresh pool location (None: a temp directory)

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="cb-stateful-")
        self.path = self.dir + "/pool" if self.new_location is None else self.new_location()
        self.pool = None
        self.bs = None
        self.model = {}  # name -> bytearray
        self.ro = set()  # read-only devices
        self.pool_ro = False

    # -- setup ---------------------------------------------------------------------------------
    @initialize(bs=st.sampled_from([4096, 65536]))
    def make_pool(self, bs):
        self.bs = bs
        self.pool = cowblock.Pool.create(self.path, size=64 * 1024 * 1024, block_size=bs)

    def teardown(self):
        try:
            if self.pool is not None and self.pool_ro:
                r = self.pool.check()
                assert r.ok, (r.errors, getattr(r, "messages", None))
            elif self.pool is not None:
                # Everything deleted and committed: every data block is free again.
                for name in list(self.model):
                    self.pool.delete(name)
                self.pool.flush()
                assert self.pool.devices() == []
                assert self.pool.used == 0, f"{self.pool.used} bytes still used with no device"
                r = self.pool.check()
                assert r.ok, (r.errors, getattr(r, "messages", None))
        finally:
            if self.pool is not None:
                self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------
    def writable_names(self):
        if self.pool_ro:
            return []
        return sorted(n for n in self.model if n not in self.ro)

    def compare(self, name):
        d = self.pool.device(name)
        m = self.model[name]
        assert d.size == len(m)
        got = d.read(0, len(m))
        if got != bytes(m):
            first = next(i for i in range(len(m)) if got[i] != m[i])
            raise AssertionError(
                f"device {name!r} differs from the model at byte {first} "
                f"(block {first // self.bs}): got {got[first:first + 8].hex()} "
                f"want {bytes(m[first:first + 8]).hex()}"
            )

    # -- rules ---------------------------------------------------------------------------------
    @precondition(lambda self: not self.pool_ro and len(self.model) < MAX_DEVICES)
    @rule(name=st.sampled_from(NAMES), nsectors=st.integers(1, 640))
    def create(self, name, nsectors):
        size = nsectors * 512  # up to 320 KiB, often not a multiple of the block size
        if name in self.model:
            with pytest.raises(cowblock.ExistsError):
                self.pool.create_device(name, size)
            return
        d = self.pool.create_device(name, size)
        assert d.size == size
        self.model[name] = bytearray(size)

    @precondition(lambda self: not self.pool_ro and 0 < len(self.model) < MAX_DEVICES)
    @rule(data=st.data(), name=st.sampled_from(NAMES), readonly=st.booleans())
    def snapshot(self, data, name, readonly):
        src = data.draw(st.sampled_from(sorted(self.model)), label="source")
        if name in self.model:
            with pytest.raises(cowblock.ExistsError):
                self.pool.snapshot(src, name, readonly=readonly)
            return
        used = self.pool.used
        d = self.pool.snapshot(src, name, readonly=readonly)
        assert self.pool.used == used, "a snapshot allocated space"
        assert d.readonly == readonly
        self.model[name] = bytearray(self.model[src])
        if readonly:
            self.ro.add(name)

    @precondition(lambda self: bool(self.writable_names()))
    @rule(data=st.data())
    def write(self, data):
        name = data.draw(st.sampled_from(self.writable_names()), label="device")
        m = self.model[name]
        size = len(m)
        near_sub_block_edge = st.tuples(st.integers(0, (size - 1) // 4096), st.integers(-40, 40)).map(
            lambda t: min(max(t[0] * 4096 + t[1], 0), size - 1)
        )
        off = data.draw(
            st.one_of(
                st.integers(0, size - 1),
                near_sub_block_edge,
                st.sampled_from(sorted({0, size - 1, max(0, size - 4096)}))
                | st.integers(0, (size - 1) // self.bs).map(lambda b: b * self.bs),
            ),
            label="offset",
        )
        n = data.draw(
            st.one_of(
                st.integers(1, min(size - off, 3 * self.bs)),
                st.integers(1, min(size - off, 9000)),
                st.sampled_from([1, 512, 4096, self.bs]).filter(lambda k: k <= size - off),
            ),
            label="length",
        )
        seed = data.draw(st.integers(0, 255), label="byte")
        payload = bytes((seed + i * 7) & 0xFF for i in range(n)) if n < 64 else (
            bytes([seed, (seed * 3 + 1) & 0xFF, 0xA5, (seed ^ 0x5A)]) * (n // 4 + 1)
        )[:n]
        assert self.pool.device(name).write(off, payload) == n
        m[off : off + n] = payload

    @precondition(lambda self: bool(self.writable_names()))
    @rule(data=st.data())
    def discard(self, data):
        name = data.draw(st.sampled_from(self.writable_names()), label="device")
        m = self.model[name]
        size = len(m)
        off = data.draw(st.integers(0, size - 1), label="offset")
        n = data.draw(st.integers(1, size - off), label="length")
        self.pool.device(name).discard(off, n)
        m[off : off + n] = bytes(n)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def read(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)), label="device")
        m = self.model[name]
        off = data.draw(st.integers(0, len(m)), label="offset")
        n = data.draw(st.integers(0, len(m) - off), label="length")
        assert self.pool.device(name).read(off, n) == bytes(m[off : off + n])

    @precondition(lambda self: not self.pool_ro and bool(self.model))
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)), label="device")
        self.pool.delete(name)
        del self.model[name]
        self.ro.discard(name)
        if not self.model:
            self.pool.flush()
            assert self.pool.used == 0, "blocks leaked after deleting every device"

    @rule()
    def flush(self):
        if not self.pool_ro:
            self.pool.flush()

    @rule(readonly=st.booleans())
    def reopen(self, readonly):
        used = self.pool.used
        if not self.pool_ro:
            self.pool.flush()  # commit frees, so `used` is comparable after reopen
            used = self.pool.used
        self.pool.close()
        self.pool = cowblock.Pool.open(self.path, readonly=readonly)
        self.pool_ro = readonly
        assert self.pool.readonly == readonly
        assert self.pool.block_size == self.bs
        assert self.pool.used == used
        for name in self.model:
            self.compare(name)

    @precondition(lambda self: self.pool_ro)
    @rule()
    def readonly_pool_refuses(self):
        before = self.pool.used
        if self.model:
            name = sorted(self.model)[0]
            with pytest.raises(cowblock.ReadOnlyError):
                self.pool.device(name).write(0, b"x")
        with pytest.raises(cowblock.ReadOnlyError):
            self.pool.create_device("new", 4096)
        assert self.pool.used == before

    @rule()
    def check(self):
        r = self.pool.check()
        assert r.ok, (r.errors, getattr(r, "messages", None))

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def consistent(self):
        if self.pool is None:
            return
        assert self.pool.devices() == sorted(self.model)
        used = self.pool.used
        assert 0 <= used <= self.pool.size
        assert used % self.bs == 0
        for name in self.model:
            self.compare(name)
            # devices of a read-only pool are read-only too
            assert self.pool.device(name).readonly == (name in self.ro or self.pool_ro)
        u = self.pool.usage()
        assert set(u.devices) == set(self.model)
        for name, du in u.devices.items():
            assert du.mapped == du.exclusive + du.shared
            assert self.pool.device(name).usage() == du  # its own tree's walk agrees
            assert 0 <= du.exclusive and 0 <= du.shared
            assert du.exclusive <= used
        assert sum(du.exclusive for du in u.devices.values()) <= used


def _settings(run_slow, rados=False):
    if run_slow:
        return settings(
            max_examples=1000,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
    return settings(
        max_examples=40 if rados else 60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_pool_against_model(run_slow, backend):
    machine = PoolMachine
    if backend.name == "rados":
        from conftest import rados_url

        machine = type("RadosPoolMachine", (PoolMachine,),
                       {"new_location": staticmethod(lambda: rados_url(backend.ceph))})
    run_state_machine_as_test(machine, settings=_settings(run_slow, backend.name == "rados"))
