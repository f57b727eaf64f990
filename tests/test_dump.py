"""Pool.dump() and ``cowblock pool dump``: the committed metadata as JSON, like thin_dump.

The dump is read back from the metadata file, so it is also a second reader of the on-disk
format: the strongest tests rebuild every device's bytes from the dump and the raw data file
and compare them with what the device reads.
"""

import json
import os
import threading

import pytest

import cowblock
from cowblock import cli

KiB = 1024
MiB = 1024 * KiB
B = 64 * KiB
SUB = 4 * KiB


def _runs(dev):
    """(virt, length) of every mapping run of a dumped device."""
    return [(m["virt"], m["length"]) for m in dev["mappings"]]


def _by_name(d):
    return {dev["name"]: dev for dev in d["devices"]}


def _rebuild(pool, dump, name):
    """A device's bytes rebuilt from the dump and the raw data file (no external origins)."""
    dev = _by_name(dump)[name]
    bs = dump["superblock"]["block_size"]
    sub = dump["superblock"]["sub_block_size"]
    out = bytearray(dev["size"])
    with open(os.path.join(pool.path, "data"), "rb") as f:
        def block(b):
            f.seek(b * bs)
            return f.read(bs).ljust(bs, b"\0")
        for m in dev["mappings"]:
            for k in range(m["length"]):
                v = m["virt"] + k
                flags = m.get("flags", 1)
                bitmap = m.get("bitmap", (1 << (bs // sub)) - 1)
                mine = block(m["data"] + k) if flags & 1 else bytes(bs)
                origin = block(m["origin"] + k) if flags & 2 else bytes(bs)
                content = b"".join(
                    (mine if bitmap >> s & 1 else origin)[s * sub:(s + 1) * sub]
                    for s in range(bs // sub))
                start = v * bs
                if start < len(out):
                    out[start:start + bs] = content[:len(out) - start]
    return bytes(out)


def test_fresh_pool(pool):
    d = pool.dump()
    sb = d["superblock"]
    assert sb["generation"] == 1 and sb["slot"] == 1
    assert sb["block_size"] == B and sb["sub_block_size"] == SUB
    assert sb["nblocks"] * B == pool.size
    assert sb["version"] == 1 and len(sb["uuid"]) == 32
    assert d["devices"] == [] and d["externals"] == []
    assert d["free_log"] == {"pages": [], "runs": []}
    assert d["uncommitted"] is False
    slots = {s["slot"]: s for s in d["slots"]}
    assert slots[1] == {"slot": 1, "valid": True, "generation": 1, "current": True}
    assert slots[0]["valid"] is False  # slot 0 stays zeros until the second commit


def test_devices_and_runs(pool):
    a = pool.create_device("a", 10 * B + 512)
    a.write(0, b"a" * (3 * B))            # 3 full blocks: one plain run
    a.write(5 * B + 100, b"x" * 10)       # one partial block: a bitmap entry
    pool.snapshot("a", "snap", readonly=True)
    pool.flush()
    d = pool.dump()
    devs = _by_name(d)
    assert set(devs) == {"a", "snap"}
    da, ds = devs["a"], devs["snap"]
    assert da["size"] == 10 * B + 512 and da["readonly"] is False and ds["readonly"] is True
    assert ds["origin_id"] == da["id"] and da["origin_id"] == 0
    assert da["root"] == ds["root"] != 0  # the snapshot shares the root page
    assert _runs(da) == [(0, 3), (5, 1)]
    assert da["mappings"][0].keys() == {"virt", "data", "length", "time"}
    part = da["mappings"][1]
    assert part["flags"] == 1 and part["bitmap"] == 1  # sub-block 0 only
    assert da["mapped_entries"] == 4
    assert ds["mappings"] == da["mappings"]
    for name in ("a", "snap"):
        dev = pool.device(name)
        assert _rebuild(pool, d, name) == dev.read(0, dev.size)


def test_copy_up_entry_shows_origin(pool):
    a = pool.create_device("a", 4 * B)
    a.write(0, os.urandom(4 * B))
    pool.snapshot("a", "s")
    a.write(B + SUB, b"new" * 100)       # copy-up of sub-block 1 of block 1
    pool.flush()
    d = pool.dump()
    da = _by_name(d)["a"]
    cu = [m for m in da["mappings"] if m.get("flags", 1) & 2]
    assert len(cu) == 1
    m = cu[0]
    assert m["virt"] == 1 and m["length"] == 1 and m["bitmap"] == 0b10
    assert m["flags"] == 3 and m["origin"] != m["data"]
    ds = _by_name(d)["s"]
    assert (1, 1) in [(x["virt"], x["length"]) for x in ds["mappings"]] or _runs(ds) == [(0, 4)]
    assert any(x["virt"] <= 1 < x["virt"] + x["length"] and
               x["data"] + (1 - x["virt"]) == m["origin"] for x in ds["mappings"])
    for name in ("a", "s"):
        dev = pool.device(name)
        assert _rebuild(pool, d, name) == dev.read(0, dev.size)


def test_only_committed_state(pool):
    pool.create_device("a", B)
    assert pool.dump()["devices"] == []
    assert pool.dump()["uncommitted"] is True
    pool.flush()
    d = pool.dump()
    assert [x["name"] for x in d["devices"]] == ["a"] and d["uncommitted"] is False
    assert d["superblock"]["generation"] == 2 and d["superblock"]["slot"] == 0
    assert {s["slot"]: s.get("current") for s in d["slots"]} == {0: True, 1: False}


def test_free_log_lists_freed_blocks(pool):
    a = pool.create_device("a", 8 * B)
    a.write(0, b"z" * (8 * B))
    pool.flush()
    blocks = pool.dump()["devices"][0]["mappings"]
    pool.delete("a")
    pool.flush()
    d = pool.dump()
    freed = sorted(b for r in d["free_log"]["runs"] for b in range(r["start"], r["start"] + r["count"]))
    assert freed == sorted(b for m in blocks for b in range(m["data"], m["data"] + m["length"]))
    assert len(d["free_log"]["pages"]) == 1 and d["devices"] == []
    pool.create_device("b", B)
    pool.flush()  # the next commit empties the log again
    assert pool.dump()["free_log"] == {"pages": [], "runs": []}


def test_external_origin_path_round_trips(tmp_path, pool):
    raw = os.fsencode(str(tmp_path)) + b"/ext \xff\"\\\x01.img"  # not UTF-8, JSON specials
    with open(raw, "wb") as f:
        f.write(b"E" * (2 * B + 512))
    dev = pool.create_device("e", None, external=raw)
    dev.write(0, b"w" * 10)
    pool.flush()
    d = pool.dump()
    assert len(d["externals"]) == 1
    x = d["externals"][0]
    assert os.fsencode(x["path"]) == os.path.realpath(raw)
    assert x["size"] == 2 * B + 512 and x["id"] == 1
    assert _by_name(d)["e"]["external_id"] == 1


def test_names_are_valid_json(pool):
    names = ['quote"d', "back\\slash", "tab\there", "ünïcødé ☃", "\x7fdel", "emoji 🐄"]
    for n in names:
        pool.create_device(n, B)
    pool.flush()
    assert sorted(x["name"] for x in pool.dump()["devices"]) == sorted(names)


def test_many_devices_and_deep_tree(pool):
    big = pool.create_device("big", 1 << 42)  # depth 3 tree, sparse
    for off in (0, 1 << 30, (1 << 42) - B):
        big.write(off, b"q" * B)
    for i in range(40):  # three device-table pages
        pool.snapshot("big", f"s{i}")
    pool.flush()
    d = pool.dump()
    assert len(d["devices"]) == 41 and len(d["superblock"]["devtab_pages"]) == 3
    db = _by_name(d)["big"]
    assert db["depth"] == 3
    assert _runs(db) == [(0, 1), ((1 << 30) // B, 1), ((1 << 42) // B - 1, 1)]


def test_readonly_pool_and_closed(pool_path):
    with cowblock.Pool.create(pool_path, size=64 * MiB, block_size=B) as p:
        p.create_device("a", B).write(0, b"1" * B)
    with cowblock.Pool.open(pool_path, readonly=True) as p:
        d = p.dump()
        assert _runs(_by_name(d)["a"]) == [(0, 1)]
    with pytest.raises(cowblock.CowblockError):
        p.dump()


def test_dump_detects_a_damaged_page(pool_path):
    with cowblock.Pool.create(pool_path, size=64 * MiB, block_size=B) as p:
        p.create_device("a", B).write(0, b"1" * B)
    with cowblock.Pool.open(pool_path, readonly=True) as p:
        root = p.dump()["devices"][0]["root"]
        with open(pool_path / "meta", "r+b") as f:  # damage it behind the open pool's back
            f.seek(root * 4096 + 100)
            f.write(b"\xff")
        with pytest.raises(cowblock.CorruptError):
            p.dump()


def test_dump_while_writing(pool):
    dev = pool.create_device("a", 64 * B)
    stop = threading.Event()
    errors = []

    def writer():
        i = 0
        while not stop.is_set():
            dev.write((i % 64) * B, bytes([i % 251]) * B)
            if i % 7 == 0:
                pool.flush()
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(50):
            d = pool.dump()
            if d["devices"]:
                total = sum(m["length"] for m in d["devices"][0]["mappings"])
                if total > 64:
                    errors.append(total)
    finally:
        stop.set()
        t.join()
    assert not errors
    pool.flush()
    d = pool.dump()
    assert _rebuild(pool, d, "a") == dev.read(0, dev.size)


def test_cli_dump(pool_path, capsys):
    with cowblock.Pool.create(pool_path, size=64 * MiB, block_size=B) as p:
        p.create_device("vol", 4 * B).write(0, b"v" * (2 * B))
        p.snapshot("vol", "snap")
    assert cli.main(["pool", "dump", "--json", str(pool_path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sorted(x["name"] for x in d["devices"]) == ["snap", "vol"]
    assert cli.main(["--pool", str(pool_path), "pool", "dump"]) == 0
    text = capsys.readouterr().out
    assert "superblock: slot" in text and "device 1 'vol'" in text and "0..1 -> " in text
    assert cli.main(["pool", "dump", str(pool_path / "nope")]) == 1
