"""Readers of a RADOS pool shared with a writer: the reader table.

A read-only opener of a ``rados://`` pool registers the generation it reads
under a lease (a shared RADOS lock whose cookie names the generation); the
writer holds back the blocks a registered generation reaches and never
writes a committed block in place, so the reader keeps reading its commit
whatever the writer does.  ``Pool.refresh()`` moves it on; a reader whose
lease lapsed gets StaleError, never another commit's bytes.  Every test
here needs the throwaway cluster (the ``ceph`` fixture skips without it).
"""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import cowblock
from conftest import rados_url

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB


def fill(tag, n):
    return (tag * (n // len(tag) + 1))[:n]


def churn(w, dev, nblocks, tag):
    """Make the writer allocate (and so reuse, if it may) nblocks blocks."""
    d = w.create_device(dev, nblocks * B)
    d.write(0, fill(tag, nblocks * B))
    w.flush()
    return d


def test_reader_keeps_its_commit_while_the_writer_frees_and_reuses(ceph):
    """Without held blocks the writer punches the freed layer at the
    commit and then writes new data into the same blocks: the reader read
    zeros or the new bytes."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=8 * MiB, block_size=B) as w:
        base = w.create_device("layer", 16 * B)
        base.write(0, fill(b"layer-v1", 16 * B))
        w.flush()
        with cowblock.Pool.open(url, readonly=True) as r:
            rl = r.device("layer")
            assert rl.read(0, 16 * B) == fill(b"layer-v1", 16 * B)
            w.delete("layer")
            w.flush()
            # the pool has 128 blocks: fill all the others, then some
            churn(w, "new", 100, b"NEWDATA!")
            assert rl.read(0, 16 * B) == fill(b"layer-v1", 16 * B)
            assert w.check().ok
            assert w.stats()["held_blocks"] == 16   # not free yet: counted as used
            assert w.used == 116 * B
            held = [r for r in w.dump()["free_log"]["runs"] if "held_since" in r]
            assert sum(r["count"] for r in held) == 16
            info = subprocess.run([sys.executable, "-m", "cowblock", "--pool", url, "--json",
                                   "pool", "info"], capture_output=True, text=True, timeout=60)
            assert info.returncode == 0, info.stderr
            assert json.loads(info.stdout)["held"] == 16 * B
        # the reader is gone: the next commit gives the layer's blocks back
        churn(w, "more", 20, b"more....")
        assert w.check().ok
        # and they are used again (the pool could not hold 120 blocks of new data otherwise)
        assert w.stats()["held_blocks"] == 0
        assert w.used == 120 * B


def test_committed_blocks_are_not_overwritten_in_place(ceph):
    """A writer overwriting its own committed block in place changed the
    bytes under a reader of that commit."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=8 * MiB, block_size=B) as w:
        d = w.create_device("d", 4 * B)
        d.write(0, fill(b"first...", 4 * B))
        w.flush()
        with cowblock.Pool.open(url, readonly=True) as r:
            rd = r.device("d")
            d.write(4 * KiB, b"X" * 8 * KiB)        # sub-block, in block 0
            d.write(B, fill(b"second..", 2 * B))    # whole blocks 1 and 2
            w.flush()
            assert rd.read(0, 4 * B) == fill(b"first...", 4 * B)
            gen = r.refresh()
            assert gen == w.stats()["generation"]
            want = bytearray(fill(b"first...", 4 * B))
            want[4 * KiB:12 * KiB] = b"X" * 8 * KiB
            want[B:3 * B] = fill(b"second..", 2 * B)
            assert rd.read(0, 4 * B) == bytes(want)
        assert w.check().ok


def test_refresh_follows_creates_and_deletes(ceph):
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=16 * MiB, block_size=B) as w:
        w.create_device("a", 2 * B).write(0, b"a" * B)
        w.create_device("b", 2 * B).write(0, b"b" * B)
        w.flush()
        with cowblock.Pool.open(url, readonly=True) as r:
            ra, rb = r.device("a"), r.device("b")
            w.delete("b")
            w.snapshot("a", "a-snap")
            w.flush()
            assert sorted(r.devices()) == ["a", "b"]
            assert rb.read(0, 4) == b"bbbb"
            r.refresh()
            assert sorted(r.devices()) == ["a", "a-snap"]
            assert ra.read(0, 4) == b"aaaa"
            assert r.device("a-snap").read(0, 4) == b"aaaa"
            with pytest.raises(cowblock.NotFoundError):
                rb.read(0, 4)
            with pytest.raises(cowblock.ReadOnlyError):
                ra.write(0, b"no")
        assert w.check().ok


def test_refresh_on_a_writer_or_a_file_pool_changes_nothing(ceph, tmp_path):
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=4 * MiB, block_size=B) as w:
        w.create_device("d", B).write(0, b"x")
        w.flush()
        g = w.stats()["generation"]
        assert w.refresh() == g
        assert w.device("d").read(0, 1) == b"x"
    with cowblock.Pool.create(str(tmp_path / "p"), size=4 * MiB, block_size=B) as f:
        g = f.stats()["generation"]
        assert f.refresh() == g


def test_many_readers_at_different_commits(ceph):
    """Three readers pinned at three commits each read their own version;
    the writer gives space back only as the oldest ones leave."""
    url = rados_url(ceph)
    with cowblock.Pool.create(url, size=16 * MiB, block_size=B) as w:
        d = w.create_device("d", 8 * B)
        readers = []
        for v in range(3):
            d.write(0, fill(b"v%d" % v, 8 * B))
            w.flush()
            readers.append(cowblock.Pool.open(url, readonly=True))
        d.write(0, fill(b"v3", 8 * B))
        w.flush()
        try:
            for v, r in enumerate(readers):
                assert r.device("d").read(0, 8 * B) == fill(b"v%d" % v, 8 * B)
            # each of the three older versions of the 8 blocks is held
            assert w.stats()["held_blocks"] == 24
            for k, r in enumerate(readers):
                r.close()
                w.flush()  # nothing changed, but held blocks may go back
                assert w.stats()["held_blocks"] == 24 - 8 * (k + 1)
            assert w.check().ok
            assert w.used == 8 * B
        finally:
            for r in readers:
                r.close()


# ---- processes: a lapsed lease, a writer killed while blocks are held -----------

READER = textwrap.dedent("""
    import sys, cowblock
    url = sys.argv[1]
    r = cowblock.Pool.open(url, readonly=True)
    d = r.device("layer")
    print(d.read(0, 8).decode(), flush=True)
    sys.stdin.readline()                   # the parent stalls us, then says go
    try:
        print("read", d.read(0, 8).decode(), flush=True)
    except cowblock.StaleError as exc:
        print("stale", exc, flush=True)
    r.refresh()
    print("after", r.device(sys.argv[2]).read(0, 8).decode(), flush=True)
    r.close()
""")


def test_reader_whose_lease_lapsed_gets_stale_error_not_new_data(ceph):
    url = rados_url(ceph, lease=2)
    with cowblock.Pool.create(url, size=4 * MiB, block_size=B) as w:
        w.create_device("layer", 16 * B).write(0, fill(b"original", 16 * B))
        w.flush()
        p = subprocess.Popen([sys.executable, "-c", READER, url, "new"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline().strip() == "original", p.stderr.read()
            p.send_signal(signal.SIGSTOP)
            time.sleep(3.5)                   # past the 2 s lease
            w.delete("layer")
            w.flush()                         # no live reader: the blocks go back
            churn(w, "new", 60, b"NEWBYTES")  # and are written again
            p.send_signal(signal.SIGCONT)
            p.stdin.write("go\n")
            p.stdin.flush()
            line = p.stdout.readline().strip()
            assert line.startswith("stale"), line
            assert "refresh" in line
            assert p.stdout.readline().strip() == "after NEWBYTES"
            assert p.wait(timeout=60) == 0, p.stderr.read()
        finally:
            p.kill()
            p.wait()


WRITER = textwrap.dedent("""
    import sys, cowblock
    url = sys.argv[1]
    w = cowblock.Pool.open(url)
    w.delete("layer")
    w.flush()                       # the layer's blocks are held for the reader
    d = w.create_device("scratch", 4 * 65536)
    d.write(0, b"s" * 4 * 65536)
    w.flush()
    print("held", flush=True)
    sys.stdin.readline()            # killed here
""")


def test_held_blocks_survive_a_killed_writer(ceph):
    """The held runs are in the committed free log: a writer killed while
    it holds blocks for a reader, and the next writer, both keep them."""
    url = rados_url(ceph, lease=2)
    with cowblock.Pool.create(url, size=8 * MiB, block_size=B) as w:
        layer, pad = w.create_device("layer", 32 * B), w.create_device("pad", 32 * B)
        for i in range(32):  # every other block: the layer frees 32 runs, not one
            layer.write(i * B, fill(b"layer!!!", B))
            pad.write(i * B, b"p" * B)
    with cowblock.Pool.open(url, readonly=True) as r:
        rl = r.device("layer")
        p = subprocess.Popen([sys.executable, "-c", WRITER, url], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline().strip() == "held", p.stderr.read()
        finally:
            p.kill()
            p.wait()
        deadline = time.monotonic() + 20
        while True:  # the killed writer's 2 s lock lapses
            try:
                w = cowblock.Pool.open(url)
                break
            except cowblock.BusyError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        with w:
            assert w.check().ok
            churn(w, "fill", 128 - 32 - 32 - 4 - 2, b"fillfill")  # all but 2 free blocks
            assert rl.read(0, 32 * B) == fill(b"layer!!!", B) * 32
            with pytest.raises(cowblock.PoolFullError):
                churn(w, "over", 4, b"overflow")
    with cowblock.Pool.open(url) as w:  # no reader now: open gives them back
        assert w.check().ok
        churn(w, "room", 30, b"roomroom")
        assert w.check().ok
