"""``cowblock demo``: a guided tour of the engine that measures what it shows.

In a temporary directory (or a given one) it makes a pool, writes a sparse
raw base image and imports it as the base layer of an image, adds layers that
change it, starts two containers, writes into them (4 KiB writes into shared
blocks, to show copy-up), commits one container into a new image, attaches a
volume to both containers and a bound raw file to one, exports an image to a
sparse raw file and removes a container. Then it prints a table of every
layer, container, volume and bind with its exclusive and shared space, the
pool's use on disk against the logical sizes, and the copy-up counters.

Every figure printed is measured (pool accounting, pool counters, st_blocks);
none is estimated. A few read-back checks (isolation, sharing) run along the
way and make the demo fail loudly if they do not hold.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import TextIO

import numpy as np

from .errors import CowblockError, ExistsError
from .table import print_fields, print_table
from .units import format_exact, format_size

__all__ = ["run", "DemoCheckError"]

POOL_SIZE = 2 * 2**30
BLOCK_SIZE = 64 * 2**10
BASE_SIZE = 64 * 2**20
VOLUME_SIZE = 256 * 2**20
SCRATCH_SIZE = 32 * 2**20
SMALL = 4096
SEED = 20240601


class DemoCheckError(CowblockError):
    """A property the demo checks did not hold (isolation, sharing, ...)."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise DemoCheckError(f"check failed: {what}")


def _on_disk(path: str) -> int:
    return os.stat(path).st_blocks * 512


def _write_base_image(path: str, rng: np.random.Generator) -> dict:
    """A sparse raw file with scattered random data, one run of explicit
    zeros, and holes everywhere else."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, BASE_SIZE)
        data = 0
        for i in range(12):
            length = int(rng.integers(4, 33)) * 64 * 2**10          # 256 KiB .. 2 MiB
            offset = int(rng.integers(0, (BASE_SIZE - length) // BLOCK_SIZE)) * BLOCK_SIZE
            os.pwrite(fd, rng.integers(0, 256, length, dtype=np.uint8).tobytes(), offset)
            data += length
        zero_off = 40 * 2**20
        os.pwrite(fd, bytes(2 * 2**20), zero_off)                   # zeros, not a hole
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"size": BASE_SIZE, "on_disk": _on_disk(path)}


class _Report:
    """Numbered steps on ``out``."""

    def __init__(self, out: TextIO):
        self.out = out
        self.n = 0

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}] {text}", file=self.out)

    def line(self, text: str = "") -> None:
        print(f"    {text}" if text else "", file=self.out)


def _exact_or_dash(n: int | None) -> str:
    return "-" if n is None else format_exact(n)


def _delta(after: dict, before: dict, key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


def run(directory: str | None = None, *, keep: bool = False, out: TextIO | None = None) -> int:
    """Run the demo; return the exit code (0 on success).

    ``directory`` (created if missing; must be empty) is kept afterwards; by
    default a temporary directory is used and removed unless ``keep``.
    """
    out = out or sys.stdout
    if directory is not None:
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
            raise ExistsError(f"{directory!r} exists and is not an empty directory; "
                              f"give a new or empty one")
        os.makedirs(directory, exist_ok=True)
        workdir, remove = directory, False
    else:
        workdir = tempfile.mkdtemp(prefix="cowblock-demo-")
        remove = not keep
    try:
        _demo(workdir, out)
    except DemoCheckError as exc:
        print(f"cowblock demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
    if remove:
        print(f"\n(the demo directory {workdir} was removed; run `cowblock demo DIR` to keep one)",
              file=out)
    else:
        print(f"\nthe pool is kept: try `cowblock --pool {workdir}/pool df -v`", file=out)
    return 0


def _demo(workdir: str, out: TextIO) -> None:
    from . import Pool
    from .model import Store

    t0 = time.monotonic()
    rep = _Report(out)
    rng = np.random.default_rng(SEED)
    print(f"cowblock demo in {workdir}", file=out)

    pool_path = os.path.join(workdir, "pool")
    base_path = os.path.join(workdir, "base.raw")
    scratch_path = os.path.join(workdir, "scratch.raw")
    export_path = os.path.join(workdir, "app-v2.raw")

    with Pool.create(pool_path, size=POOL_SIZE, block_size=BLOCK_SIZE) as pool, \
            Store(pool) as store:
        bs = pool.block_size
        rep.step(f"created pool {pool_path}: capacity {format_exact(pool.size)}, "
                 f"block size {format_size(bs)}")

        # -- base image --------------------------------------------------------
        base = _write_base_image(base_path, rng)
        rep.step(f"wrote raw base image {os.path.basename(base_path)}: "
                 f"{format_exact(base['size'])} logical, {format_exact(base['on_disk'])} on disk")
        stats0 = pool.stats()
        app1 = store.import_image("demo/app:1", base_path, comment="import base.raw")
        imp = app1.top.imported
        rep.step("imported it as the base layer of image demo/app:1")
        rep.line(f"copied {format_exact(imp.copied)}; skipped {format_exact(imp.holes)} of holes "
                 f"(never read) and {format_exact(imp.zeros)} of all-zero blocks")
        rep.line(f"pool used: {format_exact(pool.used)}")
        base_dev = app1.top.device
        with open(base_path, "rb") as fh:
            _check(base_dev.read(0, BASE_SIZE) == fh.read(), "the base layer reads as base.raw")

        # -- layers --------------------------------------------------------------
        rep.step("added three layers to demo/app:1 (changed: blocks the layer changed, from the "
                 "change bitmap; allocated: growth of pool used)")
        new_data = rng.integers(0, 256, 4 * 2**20, dtype=np.uint8).tobytes()
        extents = base_dev.extents()
        mapped_blocks = [o // bs for off, ln in extents for o in range(off, off + ln, bs)]
        cfg_blocks = rng.choice(mapped_blocks, size=16, replace=False)
        gone_off = 8 * 2**20
        recipes = [
            ({8 * 2**20: new_data}, "install packages (4 MiB written)"),
            ([(int(b) * bs, (b"config=%d\n" % i).ljust(SMALL, b"\0"))
              for i, b in enumerate(cfg_blocks)], "edit config (16 x 4 KiB into shared blocks)"),
            (lambda dev: dev.discard(gone_off, 2**20), "remove cache (discard 1 MiB)"),
        ]
        new_layers = []
        for changes, comment in recipes:
            used = pool.used
            layer = app1.add_layer(changes, comment=comment)
            new_layers.append(layer)
            rep.line(f"layer {layer.short_id}  {comment}: changed {_exact_or_dash(layer.changed)}, "
                     f"allocated {format_exact(pool.used - used)}")
        l2 = new_layers[0]
        top = app1.device
        _check(top.read(gone_off, 2**20) == bytes(2**20), "the discarded range reads as zeros")
        _check(l2.device.read(gone_off, 2**20) == new_data[:2**20],
               "the layer below still holds the discarded data")

        # -- containers --------------------------------------------------------
        used = pool.used
        web = store.create_container("web", app1)
        worker = store.create_container("worker", app1)
        rep.step("started containers web and worker from demo/app:1")
        rep.line(f"space allocated by the two snapshots: {format_exact(pool.used - used)}")
        _check(pool.used == used, "creating containers allocates nothing")

        # -- copy-up -----------------------------------------------------------
        top_extents = top.extents()
        shared_blocks = sorted({o // bs for off, ln in top_extents
                                for o in range(off, off + ln, bs)})
        picks = rng.choice(shared_blocks, size=96, replace=False)
        web_blocks, worker_blocks = picks[:64], picks[64:]
        s1, used1 = pool.stats(), pool.used
        t_copy = time.monotonic()
        web_dev = web.device
        payload = {}
        for i, b in enumerate(web_blocks):
            off = int(b) * bs + int(rng.integers(0, bs // SMALL)) * SMALL
            payload[off] = (b"web-%04d" % i).ljust(SMALL, b".")
            web_dev.write(off, payload[off])
        worker_dev = worker.device
        for i, b in enumerate(worker_blocks):
            worker_dev.write(int(b) * bs, (b"worker-%04d" % i).ljust(SMALL, b"."))
        pool.flush()
        t_copy = time.monotonic() - t_copy
        s2, used2 = pool.stats(), pool.used
        n_small = len(web_blocks) + len(worker_blocks)
        rep.step(f"wrote {n_small} x 4 KiB into blocks the containers share with the image "
                 f"({64} in web, {n_small - 64} in worker)")
        copyups = _delta(s2, s1, "copyups")
        user_bytes = _delta(s2, s1, "bytes_written")
        phys_bytes = _delta(s2, s1, "data_bytes_written")
        rep.line(f"copy-ups: {copyups}; blocks allocated: {(used2 - used1) // bs} "
                 f"({format_exact(used2 - used1)})")
        rep.line(f"bytes written by the user: {format_exact(user_bytes)}; "
                 f"physical bytes written to the data file: {format_exact(phys_bytes)}")
        if copyups:
            rep.line(f"physical bytes per 4 KiB copy-up: {format_exact(phys_bytes // copyups)} "
                     f"(a whole-block copy would be {format_exact(bs)} each); "
                     f"{n_small / t_copy:,.0f} writes/s")
        for off, data in payload.items():
            _check(web_dev.read(off, SMALL) == data, "web reads its own writes")
            _check(worker_dev.read(off, SMALL) == top.read(off, SMALL),
                   "worker does not see web's writes")
        rep.line("checked: web reads back its writes; worker and the image still read the old data")

        # -- commit --------------------------------------------------------------
        used = pool.used
        app2 = web.commit("demo/app:2", comment="commit of container web")
        rep.step(f"committed container web as image demo/app:2 "
                 f"({len(app2.layers)} layers, top {app2.top.short_id})")
        rep.line(f"space allocated by the commit: {format_exact(pool.used - used)}")
        off0, data0 = next(iter(payload.items()))
        _check(app2.device.read(off0, SMALL) == data0, "the new image holds web's writes")

        # -- volume and bind -----------------------------------------------------
        vol = store.create_volume("data", VOLUME_SIZE)
        vol.device.write(0, rng.integers(0, 256, 2**20, dtype=np.uint8).tobytes())
        web.attach(vol)
        worker.attach(vol)
        rep.step(f"created volume data ({format_exact(VOLUME_SIZE)}), wrote 1 MiB, "
                 f"attached it to web and worker")
        rep.line(f"volume exclusive space: {format_exact(vol.usage().size)}")
        fd = os.open(scratch_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.ftruncate(fd, SCRATCH_SIZE)
        os.close(fd)
        bind = store.bind("scratch", scratch_path)
        bind.write(2**20, b"S" * (128 * 2**10))
        bind.flush()
        worker.attach(bind)
        rep.step(f"bound raw file {os.path.basename(scratch_path)} ({format_exact(SCRATCH_SIZE)}) "
                 f"as it is, wrote 128 KiB through it, attached it to worker")
        rep.line(f"file on disk: {format_exact(_on_disk(scratch_path))}")

        # -- export --------------------------------------------------------------
        from .imagefile import export_raw
        res = export_raw(app2.device, export_path)
        rep.step(f"exported demo/app:2 to {os.path.basename(export_path)}")
        rep.line(f"wrote {format_exact(res.copied)}; {format_exact(res.skipped)} left as holes; "
                 f"file on disk: {format_exact(_on_disk(export_path))}")

        # -- remove a container ---------------------------------------------------
        pool.flush()
        used = pool.used
        excl = worker.usage().size
        worker.remove()
        pool.flush()
        rep.step("removed container worker (volume and bind stay)")
        rep.line(f"worker held {format_exact(excl)} alone; pool used went from "
                 f"{format_exact(used)} to {format_exact(pool.used)} "
                 f"(given back: {format_exact(used - pool.used)})")
        _check(vol.device.read(0, 16) != bytes(16), "the volume outlives the container")

        # -- the table --------------------------------------------------------------
        pool.flush()
        df = store.df()
        _print_summary(store, df, pool, stats0, out)
        report = store.pool.check()
        _check(report.ok, f"pool check passes ({report.errors} errors, {report.leaks} leaks)")

    print(f"\npool check: ok. demo finished in {time.monotonic() - t0:.1f} s", file=out)


def _print_summary(store, df: dict, pool, stats0: dict, out: TextIO) -> None:
    images_of: dict[str, list[str]] = {}
    for img in store.images():
        for layer in img.layers:
            images_of.setdefault(layer.id, []).append(img.name)
    rows = []
    devices = []
    for l in df["layers"]:
        devices.append(l)
        rows.append((f"layer {l['id'][:12]}", ",".join(images_of.get(l["id"], [])) or "-",
                     format_size(l["size"]), _exact_or_dash(l["changed"]),
                     format_exact(l["exclusive"]), format_exact(l["shared"]), l["comment"]))
    for c in df["containers"]:
        devices.append(c)
        rows.append((f"container {c['name']}", c["image"], format_size(c["size"]),
                     _exact_or_dash(c["changed"]), format_exact(c["exclusive"]),
                     format_exact(c["shared"]), "attached: " + (",".join(c["attached"]) or "-")))
    for v in df["volumes"]:
        devices.append(v)
        rows.append((f"volume {v['name']}", "-", format_size(v["size"]), format_exact(v["mapped"]),
                     format_exact(v["exclusive"]), format_exact(v["shared"]),
                     "attached to: " + (",".join(v["attached_to"]) or "-")))
    for b in df["binds"]:
        rows.append((f"bind {b['name']}", "-", format_size(b["size"]), "-", "-", "-",
                     f"raw file outside the pool, {format_exact(b['on_disk'])} on disk"))
    print("\nSpace by object. changed: blocks it changed over its parent (change bitmap); "
          "exclusive: held by\nthis device alone (given back on removal); shared: also "
          "referenced by another device", file=out)
    print_table(["OBJECT", "IMAGES", " VIRTUAL", " CHANGED", " EXCLUSIVE", " SHARED", "NOTE"],
                rows, out)

    p = df["pool"]
    logical = sum(d["size"] for d in devices)
    mapped = sum(d["mapped"] for d in devices)
    exclusive = sum(d["exclusive"] for d in devices)
    stats = pool.stats()
    meta_json = sum(os.path.getsize(os.path.join(p["path"], f)) for f in os.listdir(p["path"])
                    if f.endswith(".json"))
    print("\nPool on disk against logical sizes", file=out)
    kv = [
        ("devices in the pool", str(len(devices))),
        ("sum of their virtual sizes", format_exact(logical)),
        ("sum of their mapped bytes", format_exact(mapped)),
        ("pool used (blocks allocated)", format_exact(p["used"])),
        ("  held by one device", format_exact(exclusive)),
        ("  shared (used - held by one)", format_exact(p["used"] - exclusive)),
        ("data file on disk (st_blocks)", format_exact(int(stats.get("data_bytes_on_disk", 0)))),
        ("metadata in use (core)", format_exact(int(stats.get("meta_bytes", 0)))),
        ("metadata file on disk (core)",
         format_exact(int(stats.get("meta_bytes_on_disk", stats.get("meta_bytes", 0))))),
        ("model and snapshot JSON", format_exact(meta_json)),
    ]
    print_fields(kv, out)
    if int(stats.get("data_bytes_on_disk", p["used"])) < p["used"]:
        print("  (the data file holds less than 'used': a block allocated by a 4 KiB copy-up "
              "has only\n   the sub-blocks written to it; the rest stay holes in the file)",
              file=out)

    print("\nCounters over the whole demo (pool.stats())", file=out)
    kv = [
        ("writes", str(_delta(stats, stats0, "writes"))),
        ("bytes written by the user", format_exact(_delta(stats, stats0, "bytes_written"))),
        ("physical bytes written", format_exact(_delta(stats, stats0, "data_bytes_written"))),
        ("copy-ups", str(_delta(stats, stats0, "copyups"))),
        ("bytes copied from origin blocks", format_exact(_delta(stats, stats0, "copyup_bytes"))),
        ("metadata commits", str(_delta(stats, stats0, "commits"))),
    ]
    print_fields(kv, out)
