"""Images as qcow2 backing chains: `cowblock image export --format qcow2` and
`cowblock image import --format qcow2`, checked with qemu-img itself (each
test that needs it skipped, saying why, where qemu-utils is missing)."""
import json
import os
import random
import shutil

import pytest

import cowblock
from cowblock import cli, model, qcow2chain
from cowblock.model import Store
from tools import run_tool

MiB = 1 << 20
B = 64 * 1024
SIZE = 32 * MiB


def need_qemu():
    missing = [t for t in ("qemu-img", "qemu-io") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian package qemu-utils): "
                    "qcow2 chains are written and read by qemu's tools")


def qemu(*argv, check=True):
    r = run_tool(["qemu-img", *map(str, argv)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"qemu-img {argv}: {r.stderr}"
    return r


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def make_image(pool_path):
    """A pool with image 'img' of three layers: a base with scattered data,
    a layer of 4 KiB writes, a layer that discards, overwrites and writes."""
    rng = random.Random(11)
    with cowblock.Pool.create(pool_path, size=1 << 30, block_size=B) as pool, Store(pool) as st:
        raw = bytearray(SIZE)
        for _ in range(30):
            off = rng.randrange(0, SIZE - 300_000)
            data = rng.randbytes(rng.randrange(1, 300_000))
            raw[off:off + len(data)] = data
        src = os.path.join(os.path.dirname(str(pool_path)), "base.raw")
        with open(src, "wb") as f:
            f.write(raw)
        img = st.import_image("img", src)
        img.add_layer({rng.randrange(0, SIZE - 4096) & ~4095: rng.randbytes(4096)
                       for _ in range(40)}, "small writes")

        def third(dev):
            base_data = [o for o, n in img.layers[0].device.extents()]
            dev.discard(base_data[0], B)          # data of the base, now zeros
            dev.write(5 * B + 7, b"hello" * 3000)
            dev.write(SIZE - 100, b"t" * 100)
        img.add_layer(third, "discard and write")


def layer_devices(pool, name):
    st = Store(pool)
    return st, st.image(name).layers


def own_clusters(path):
    """Clusters (data or zero) that the file itself holds: depth-0 extents
    of its map that are not holes of the whole chain."""
    entries = json.loads(qemu("map", "--output=json", path).stdout)
    data = zero = 0
    for e in entries:
        if e["depth"] == 0 and e.get("present", True):
            assert e["start"] % B == 0  # whole clusters of the pool's block size
            if e["data"]:
                data += -(-e["length"] // B)
            else:
                zero += -(-e["length"] // B)
    return data, zero


@pytest.fixture
def exported(tmp_path, capsys):
    """(pool path, export dir, top file, raw export of the top)."""
    need_qemu()
    pool_path = tmp_path / "pool"
    make_image(pool_path)
    out = tmp_path / "chain"
    code, text, err = run(capsys, "--pool", pool_path, "image", "export", "img", out,
                          "--format", "qcow2")
    assert code == 0, err
    files = sorted(p for p in os.listdir(out) if p.endswith(".qcow2"))
    assert len(files) == 3 and "qcow2 chain of 3 file(s)" in text
    raw = tmp_path / "img.raw"
    assert run(capsys, "--pool", pool_path, "image", "export", "img", raw)[0] == 0
    return pool_path, out, out / files[-1], raw


def test_export_shows_the_chain_compares_identical_and_imports_back(exported, tmp_path, capsys):
    pool_path, out, top, raw = exported
    info = json.loads(qemu("info", "--backing-chain", "--output=json", top).stdout)
    assert [os.path.basename(m["filename"]) for m in info] == sorted(
        p for p in os.listdir(out) if p.endswith(".qcow2"))[::-1]
    for upper, lower in zip(info, info[1:]):
        # relative names: the directory can be moved
        assert upper["backing-filename"] == os.path.basename(lower["filename"])
        assert upper["backing-filename-format"] == "qcow2"
    assert "backing-filename" not in info[-1]
    assert all(m["format"] == "qcow2" and m["cluster-size"] == B and m["virtual-size"] == SIZE
               for m in info)
    r = qemu("compare", "-f", "qcow2", "-F", "raw", top, raw)
    assert "Images are identical" in r.stdout

    moved = tmp_path / "moved"
    os.rename(out, moved)
    top = moved / top.name
    assert "identical" in qemu("compare", "-f", "qcow2", "-F", "raw", top, raw).stdout

    code, text, err = run(capsys, "--pool", pool_path, "image", "import", "--format", "qcow2",
                          "back", top)
    assert code == 0 and "3 layer(s)" in text, err
    back = tmp_path / "back.raw"
    assert run(capsys, "--pool", pool_path, "image", "export", "back", back)[0] == 0
    assert back.read_bytes() == raw.read_bytes()
    assert "identical" in qemu("compare", "-f", "qcow2", "-F", "raw", top, back).stdout
    with cowblock.Pool.open(pool_path) as pool:
        st = Store(pool)
        # the comments came back from the sidecar
        assert [la.comment for la in st.image("back").layers] == [
            la.comment for la in st.image("img").layers]
        assert model.check(pool) == [] and pool.check().ok


def test_each_file_holds_only_its_layers_changes_and_checks_clean(exported):
    pool_path, out, top, _ = exported
    files = sorted(out / p for p in os.listdir(out) if p.endswith(".qcow2"))
    with cowblock.Pool.open(pool_path, readonly=True) as pool:
        _, layers = layer_devices(pool, "img")
        for k, (layer, path) in enumerate(zip(layers, files)):
            r = qemu("check", "--output=json", path, check=False)
            report = json.loads(r.stdout)
            assert r.returncode == 0 and report.get("corruptions", 0) == 0 \
                and report.get("leaks", 0) == 0, r.stdout
            data, zero = own_clusters(path)
            dev = layer.device
            parent = layers[k - 1].device if k else None
            rows, _ = dev.delta(parent, 0, 1 << 20)
            if k == 0:  # the base: its data, zero blocks and holes left out
                assert data * B == sum(n for _, n in dev.extents()) and zero == 0
            else:       # a layer: exactly the blocks it changed, zeros as zero clusters
                assert data + zero == len(rows) and zero >= (k == 2)
                assert data * B <= os.stat(path).st_blocks * 512 <= data * B + 2 * MiB
            assert report["allocated-clusters"] == data


def test_round_trip_layers_identical_and_sharing(exported, capsys):
    pool_path, out, top, _ = exported
    files = sorted(out / p for p in os.listdir(out) if p.endswith(".qcow2"))
    held = sum(own_clusters(f)[0] for f in files) * B
    with cowblock.Pool.open(pool_path) as pool:
        before = pool.used
    assert run(capsys, "--pool", pool_path, "image", "import", "--format", "qcow2", "back",
               top)[0] == 0
    with cowblock.Pool.open(pool_path) as pool:
        st = Store(pool)
        src, back = st.image("img").layers, st.image("back").layers
        assert len(back) == 3 and [la.parent and la.parent.id for la in back] == [
            None, back[0].id, back[1].id]
        for a, b in zip(src, back):
            assert a.device.read(0, SIZE) == b.device.read(0, SIZE)
            assert b.device.readonly
        # each layer took only the blocks its file holds: the chain shares the rest
        assert pool.used - before == held
        assert held < 2 * sum(n for _, n in src[0].device.extents())
        use = {la.id: la.usage() for la in back}
        assert use[back[1].id].shared > 0 and use[back[2].id].size <= 3 * B
        assert model.check(pool) == [] and pool.check().ok


def _hostile(tmp_path):
    d = tmp_path / "hostile"
    d.mkdir()
    a, b = d / "a.qcow2", d / "b.qcow2"
    qemu("create", "-q", "-f", "qcow2", a, "16M")
    qemu("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
    qemu("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)  # a -> b -> a
    gone = d / "c.qcow2"
    qemu("create", "-q", "-u", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", gone, "16M")
    small = d / "d.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", small, "16M")
    on_small = d / "e.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", on_small)
    vmdk = d / "f.vmdk"
    qemu("create", "-q", "-f", "vmdk", vmdk, "16M")
    on_vmdk = d / "g.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-b", "f.vmdk", "-F", "vmdk", on_vmdk)
    return [(b, "infinite loop"), (gone, "gone.qcow2"), (on_small, "clusters of 4096 bytes"),
            (on_vmdk, "is vmdk"), (d / "none.qcow2", "does not exist")]


def test_hostile_chains_refused_leaving_nothing(tmp_path, capsys):
    need_qemu()
    pool_path = tmp_path / "pool"
    make_image(pool_path)
    with cowblock.Pool.open(pool_path) as pool:
        state = (pool.devices(), pool.used, sorted(Store(pool)._doc()["layers"]))
    for path, why in _hostile(tmp_path):
        code, _, err = run(capsys, "--pool", pool_path, "image", "import", "--format", "qcow2",
                           "x", path)
        assert code == 1 and why in err, (path, err)
    with cowblock.Pool.open(pool_path) as pool:
        assert (pool.devices(), pool.used, sorted(Store(pool)._doc()["layers"])) == state
        assert "x" not in [i.name for i in Store(pool).images()]
        assert model.check(pool) == [] and pool.check().ok


def test_import_failing_midway_removes_the_layers_made(tmp_path):
    """A pool too small for the top file: the base layer is made, the top
    fails (the export answers ENOSPC); nothing is left behind."""
    need_qemu()
    d = tmp_path / "c"
    d.mkdir()
    base, top = d / "base.qcow2", d / "top.qcow2"
    qemu("create", "-q", "-f", "qcow2", base, "32M")
    run_tool(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 2M", str(base)], check=True,
             capture_output=True)
    qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    run_tool(["qemu-io", "-f", "qcow2", "-c", "write -P 2 4M 24M", str(top)], check=True,
             capture_output=True)
    with cowblock.Pool.create(tmp_path / "pool", size=8 * MiB, block_size=B) as pool:
        st = Store(pool)
        with pytest.raises(cowblock.CowblockError, match="top.qcow2"):
            st.import_qcow2("x", top)
        assert pool.devices() == [] and pool.used == 0 and st._doc()["layers"] == {}
        assert model.check(pool) == [] and pool.check().ok


def test_raw_import_of_a_qcow2_points_at_the_chain_import(tmp_path, capsys):
    need_qemu()
    q = tmp_path / "disk.qcow2"
    qemu("create", "-q", "-f", "qcow2", q, "16M")
    pool = tmp_path / "pool"
    assert run(capsys, "pool", "create", pool, "--size", "64M")[0] == 0
    code, _, err = run(capsys, "--pool", pool, "image", "import", "x", q)
    assert code == 1 and "--format qcow2" in err
    code, _, err = run(capsys, "--pool", pool, "image", "import", "--format", "qcow2", "x", q,
                       "--external")
    assert code == 2 and "--external and --size are for raw files" in err


def test_export_refuses_files_there_unless_forced(exported, capsys):
    pool_path, out, top, raw = exported
    before = top.stat().st_mtime_ns
    code, _, err = run(capsys, "--pool", pool_path, "image", "export", "img", out,
                       "--format", "qcow2")
    assert code == 1 and "--force" in err and top.stat().st_mtime_ns == before
    code, _, err = run(capsys, "--pool", pool_path, "image", "export", "img", out,
                       "--format", "qcow2", "--force")
    assert code == 0, err
    assert "identical" in qemu("compare", "-f", "qcow2", "-F", "raw", top, raw).stdout
    code, _, err = run(capsys, "--pool", pool_path, "image", "export", "img", raw,
                       "--format", "qcow2")
    assert code == 1 and "not a directory" in err


def test_export_through_the_server_holding_the_pool(exported, tmp_path, capsys):
    """While `cowblock serve` holds the pool, the CLI's export runs in the
    server (control socket) and works there."""
    from nbd_support import ServerProcess
    pool_path, _, _, raw = exported
    srv = ServerProcess(pool_path, tmp_path / "s.sock").start()
    try:
        out = tmp_path / "served"
        code, text, err = run(capsys, "--pool", pool_path, "image", "export", "img", out,
                              "--format", "qcow2")
        assert code == 0 and "qcow2 chain of 3 file(s)" in text, err
        top = sorted(out / p for p in os.listdir(out) if p.endswith(".qcow2"))[-1]
        assert "identical" in qemu("compare", "-f", "qcow2", "-F", "raw", top, raw).stdout
    finally:
        assert srv.stop() == 0


def test_missing_qemu_img_is_said_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(qcow2chain.ToolMissingError, match="qemu-img is not installed.*qemu-utils"):
        qcow2chain.read_chain(__file__, B)
