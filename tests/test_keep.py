"""keep_freed: freed blocks kept allocated in the data file and reused first.

The crash, power-loss and fault harnesses run some pools with it (crashlib,
test_powerloss, test_faults); this file checks the feature itself.
"""
import os
import random
import subprocess
import sys
import textwrap

import pytest

import cowblock

BS = 64 * 1024
MiB = 1 << 20


def disk(path):
    return os.stat(os.path.join(path, "data")).st_blocks * 512


@pytest.fixture(params=[False, True], ids=["plain", "checksums"])
def checksums(request):
    return request.param


def test_kept_blocks_are_reused_and_given_back_at_close(tmp_path, checksums):
    path = str(tmp_path / "pool")
    with cowblock.Pool.create(path, size=256 * BS, checksums=checksums,
                              keep_freed=64 * BS) as p:
        a = p.create_device("a", 32 * BS)
        a.write(0, b"a" * 32 * BS)
        p.flush()
        full = disk(path)
        p.delete("a")
        p.flush()
        st = p.stats()
        assert p.used == 0 and st["kept_blocks"] == 32 and st["punched_blocks"] == 0
        assert disk(path) == full  # space kept
        assert p.check().ok  # kept blocks are not leaks
        b = p.create_device("b", 32 * BS)
        for k in range(32):  # 4 KiB into each block: the rest must read as zeros
            b.write(k * BS + 8192, b"b" * 4096)
        assert p.stats()["kept_blocks"] == 0
        assert disk(path) == full  # the writes went into kept space
        for k in range(32):
            blk = b.read(k * BS, BS)
            assert blk == bytes(8192) + b"b" * 4096 + bytes(BS - 12288), k
        p.flush()
        p.delete("b")
        p.flush()
        assert p.stats()["kept_blocks"] == 32
    # close gave them back: the pool is clean and small again
    assert disk(path) < full // 4
    with cowblock.Pool.open(path) as p:
        assert p.check().ok and p.stats()["kept_blocks"] == 0


def test_bound_is_kept_and_lowering_it_punches(tmp_path):
    path = str(tmp_path / "pool")
    with cowblock.Pool.create(path, size=256 * BS, keep_freed=10 * BS) as p:
        a = p.create_device("a", 32 * BS)
        a.write(0, b"a" * 32 * BS)
        p.flush()
        p.delete("a")
        p.flush()
        st = p.stats()
        assert st["kept_blocks"] == 10 and st["punched_blocks"] == 22
        before = disk(path)
        p.set_keep_freed(4 * BS)
        assert p.stats()["kept_blocks"] == 4
        assert disk(path) == before - 6 * BS
        p.set_keep_freed(0)
        assert p.stats()["kept_blocks"] == 0 and p.check().ok


def test_whole_block_writes_into_kept_blocks_coalesce(tmp_path):
    """Kept blocks come back in ascending order, so a large write into them
    is still one pwrite per run of blocks."""
    with cowblock.Pool.create(tmp_path / "pool", size=256 * BS, keep_freed=64 * BS) as p:
        a = p.create_device("a", 32 * BS)
        a.write(0, b"a" * 32 * BS)
        p.flush()
        blocks = [m["data"] for m in p.dump()["devices"][0]["mappings"]]
        p.delete("a")
        p.flush()
        b = p.create_device("b", 32 * BS)
        b.write(0, b"b" * 32 * BS)
        p.flush()
        (run,) = p.dump()["devices"][0]["mappings"]
        assert run["data"] == blocks[0] and run["length"] == 32


def test_random_workload_matches_a_model(tmp_path, checksums):
    rng = random.Random(5)
    size = 24 * BS
    model = {}
    with cowblock.Pool.create(tmp_path / "pool", size=96 * BS, checksums=checksums,
                              keep_freed=16 * BS) as p:
        for step in range(400):
            r = rng.random()
            if r < 0.1 and len(model) < 4:
                name = f"d{step}"
                p.create_device(name, size)
                model[name] = bytearray(size)
            elif r < 0.15 and model:
                name = rng.choice(sorted(model))
                p.delete(name)
                del model[name]
            elif r < 0.22 and model and len(model) < 4:
                src = rng.choice(sorted(model))
                p.snapshot(src, f"s{step}")
                model[f"s{step}"] = bytearray(model[src])
            elif r < 0.3:
                p.flush()
            elif model:
                name = rng.choice(sorted(model))
                off = rng.randrange(size)
                n = min(size - off, rng.choice([1, 4096, 5000, BS, 3 * BS]))
                if rng.random() < 0.2:
                    p.device(name).discard(off, n)
                    model[name][off:off + n] = bytes(n)
                else:
                    data = rng.randbytes(n)
                    try:
                        p.device(name).write(off, data)
                    except cowblock.PoolFullError:
                        continue
                    model[name][off:off + n] = data
        for name, want in model.items():
            assert p.device(name).read(0, size) == want, name
        assert p.check().ok
        if checksums:
            assert p.scrub().ok


def test_crash_with_kept_blocks_reclaims_them(tmp_path):
    """A process that dies holding kept blocks leaves them in the data file;
    the next open sees the unclean shutdown and punches them."""
    path = str(tmp_path / "pool")
    script = textwrap.dedent(f"""
        import os, cowblock
        p = cowblock.Pool.create({path!r}, size=256 * {BS}, keep_freed=64 * {BS})
        a = p.create_device("a", 32 * {BS}); a.write(0, b"a" * 32 * {BS}); p.flush()
        p.create_device("b", {BS}).write(0, b"b" * 100)
        p.delete("a"); p.flush()
        assert p.stats()["kept_blocks"] == 32
        os._exit(0)  # no close
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert disk(path) >= 32 * BS
    with cowblock.Pool.open(path) as p:
        assert p.check().ok
        assert p.device("b").read(0, 100) == b"b" * 100
    assert disk(path) < 4 * BS


def test_bad_arguments(tmp_path):
    with cowblock.Pool.create(tmp_path / "pool", size=16 * BS) as p:
        with pytest.raises(ValueError):
            p.set_keep_freed(-1)
        with pytest.raises(TypeError):
            p.set_keep_freed("1M")
        p.set_keep_freed(1 << 60)  # more than the pool: bounded by it
    with pytest.raises(ValueError):
        cowblock.Pool.open(tmp_path / "pool", readonly=True, keep_freed=BS)
