"""What space accounting costs over many devices (pytest-benchmark), side by side in one run.

Run:  pytest bench/test_usage.py --benchmark-group-by=group

Group "df 1000 devices": ``Store.df()`` over a pool of 1,000 devices against one ``Pool.usage()``
of the same pool, the walk df is built on, for two shapes of pool: "model" (an image, 978
containers on it each with a change of its own, 20 volumes) and "strays" (the image, 299
containers and 700 devices that belong to no model object, whose sizes df takes from one
listing of the pool).  The goal is df within 3x of that
walk: df must cost one walk plus its own bookkeeping, not a core call per device.  Read the
ratio of the two medians; ``Device.usage()`` over every device is shown for comparison (one
walk of each device's own tree: the same figures device by device).
"""

from __future__ import annotations

import os

import pytest

MiB = 2**20
DEVICES = 1000
# (containers, volumes); the rest of the 1,000 are the image's layer and stray devices
SHAPES = {"model": (978, 20), "strays": (299, 0)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def store(request, cowblock_mod, tmp_path_factory):
    """A Store whose pool holds 1,000 devices: one layer, containers on it each with a change
    of its own, volumes, and stray devices (snapshots of a device no model object owns), in
    the proportions of SHAPES[param]."""
    from cowblock.model import Store

    containers, volumes = SHAPES[request.param]
    tmp = tmp_path_factory.mktemp("usage")
    raw = tmp / "base.raw"
    raw.write_bytes(os.urandom(4 * MiB))
    pool = cowblock_mod.Pool.create(str(tmp / "pool"), size=1 << 30)
    s = Store(pool)
    s.import_image("img", raw)
    for i in range(containers):
        s.create_container(f"c{i:04d}", "img").device.write(i * 4096 % (4 * MiB), b"c" * 4096)
    for i in range(volumes):
        s.create_volume(f"v{i:02d}", 16 * MiB).device.write(0, b"v" * 65536)
    base = pool.create_device("stray-base", 4 * MiB)
    base.write(0, b"s" * MiB)
    while len(pool.devices()) < DEVICES:
        pool.snapshot("stray-base", f"stray-{len(pool.devices()):04d}").write(0, b"t")
    pool.flush()
    assert len(pool.devices()) == DEVICES
    yield s
    pool.close()


@pytest.mark.benchmark(group="df 1000 devices")
def test_pool_usage_1000_devices(benchmark, store):
    u = benchmark(store.pool.usage)
    assert len(u.devices) == DEVICES


@pytest.mark.benchmark(group="df 1000 devices")
def test_df_1000_devices(benchmark, store):
    df = benchmark(store.df)
    assert len(df["containers"]) == len(store.containers())


@pytest.mark.benchmark(group="df 1000 devices")
def test_device_usage_each_of_1000_devices(benchmark, store):
    pool = store.pool
    devs = [pool.device(n) for n in pool.devices()]
    benchmark(lambda: [d.usage() for d in devs])
