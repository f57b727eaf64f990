"""cowblock.cli: the ``cowblock`` command, its output and exit codes."""

import json
import os
import stat
import subprocess
import sys
import types

import pytest

import cowblock
from cowblock import cli

MiB = 2**20


@pytest.fixture
def pool_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COWBLOCK_POOL", raising=False)
    path = str(tmp_path / "pool")
    assert cli.main(["pool", "create", path, "--size", "1G", "--block-size", "64K"]) == 0
    capsys.readouterr()
    return path


def run(capsys, *argv):
    """Run the command; return (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "base.raw"
    with open(path, "wb") as fh:
        fh.truncate(4 * MiB)
        fh.write(b"B" * 100_000)
        fh.seek(3 * MiB)
        fh.write(b"C" * 4096)
    return str(path)


def test_pool_create_info_stats_check(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("COWBLOCK_POOL", raising=False)
    path = str(tmp_path / "p")
    code, out, _ = run(capsys, "pool", "create", path, "--size", "2G", "--block-size", "128K")
    assert code == 0
    assert "2.0 GiB (2147483648 B)" in out and "128.0 KiB (131072 B)" in out
    info = run_json(capsys, "pool", "info", path)
    assert info["size"] == 2 * 2**30 and info["block_size"] == 128 * 1024
    assert info["used"] == 0 and info["devices"] == 0
    code, out, _ = run(capsys, "pool", "info", path)
    assert code == 0 and "1073741824" not in out and "2147483648 B" in out
    stats = run_json(capsys, "pool", "stats", path)
    assert isinstance(stats["writes"], int)
    code, out, _ = run(capsys, "pool", "check", path)
    assert code == 0 and "no errors found" in out
    assert run_json(capsys, "pool", "check", path) == {"ok": True, "errors": [], "leaks": 0}
    code, _, err = run(capsys, "pool", "create", path)
    assert code == 1 and err.startswith("cowblock: error:")


def test_pool_from_option_or_environment(capsys, pool_dir, monkeypatch):
    code, _, err = run(capsys, "device", "ls")
    assert code == 2 and "COWBLOCK_POOL" in err
    assert run(capsys, "--pool", pool_dir, "device", "create", "a", "1M")[0] == 0
    assert run(capsys, "device", "create", "b", "1M", "--pool", pool_dir)[0] == 0
    monkeypatch.setenv("COWBLOCK_POOL", pool_dir)
    names = [d["name"] for d in run_json(capsys, "device", "ls")]
    assert names == ["a", "b"]
    # --json is accepted after the verb too.
    code, out, _ = run(capsys, "device", "ls", "--json")
    assert [d["name"] for d in json.loads(out)] == ["a", "b"]


def test_sizes_in_and_out(capsys, pool_dir):
    p = ("--pool", pool_dir)
    code, out, _ = run(capsys, *p, "device", "create", "d", "1G")
    assert code == 0 and "1.0 GiB (1073741824 B)" in out
    info = run_json(capsys, *p, "device", "info", "d")
    assert info["size"] == 2**30 and info["mapped"] == 0
    code, out, _ = run(capsys, *p, "device", "ls")
    assert "1.0 GiB (1073741824 B)" in out
    code, _, err = run(capsys, *p, "device", "create", "e", "10GB")
    assert code == 2 and "ambiguous" in err
    code, _, err = run(capsys, *p, "device", "create", "e", "lots")
    assert code == 2 and "invalid size" in err
    assert "e" not in cowblock.Pool.open(pool_dir, readonly=True).devices()


def test_user_errors_exit_1_with_a_message_not_a_traceback(capsys, pool_dir):
    p = ("--pool", pool_dir)
    code, _, err = run(capsys, *p, "device", "rm", "missing")
    assert code == 1 and err.startswith("cowblock: error:") and "missing" in err
    code, _, err = run(capsys, *p, "device", "create", "bad/name", "1M")
    assert code == 1 and "cowblock: error:" in err
    code, _, err = run(capsys, "--pool", pool_dir + "-nope", "device", "ls")
    assert code == 1 and "cowblock: error:" in err
    code, _, err = run(capsys, *p, "image", "import", "x", "/nonexistent/file.raw")
    assert code == 1 and "does not exist" in err


def test_usage_errors_exit_2(capsys):
    assert run(capsys)[0] == 2
    assert run(capsys, "device")[0] == 2
    assert run(capsys, "device", "frobnicate")[0] == 2
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes" in out


def test_device_snapshot_rm_and_space_given_back(capsys, pool_dir):
    p = ("--pool", pool_dir)
    run(capsys, *p, "device", "create", "a", "4M")
    with cowblock.Pool.open(pool_dir) as pool:
        pool.device("a").write(0, os.urandom(256 * 1024))
    assert run(capsys, *p, "device", "snapshot", "a", "snap", "--readonly")[0] == 0
    info = run_json(capsys, *p, "device", "info", "snap")
    assert info["readonly"] and info["origin"] == "a"
    assert info["shared"] == 256 * 1024 and info["exclusive"] == 0
    res = run_json(capsys, *p, "device", "rm", "snap")
    assert res["freed"] == 0
    res = run_json(capsys, *p, "device", "rm", "a")
    assert res["freed"] == 256 * 1024


def test_device_import_and_export(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    res = run_json(capsys, *p, "device", "import", "img", raw)
    assert res["copied"] == 100_000 + (4096 - 100_000 % 4096) + 4096
    assert res["copied"] + res["holes"] + res["zeros"] == 4 * MiB
    out = str(tmp_path / "out.raw")
    code, text, _ = run(capsys, *p, "device", "export", "img", out)
    assert code == 0 and "holes" in text
    assert open(out, "rb").read() == open(raw, "rb").read()
    code, _, err = run(capsys, *p, "device", "export", "img", out)
    assert code == 1 and "exists" in err
    assert run(capsys, *p, "device", "export", "img", out, "--force")[0] == 0


def test_image_container_volume_bind_workflow(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    code, out, _ = run(capsys, *p, "image", "import", "app:1", raw)
    assert code == 0 and "copied" in out
    code, out, _ = run(capsys, *p, "image", "import", "ext", raw, "--external")
    assert code == 0 and "nothing copied" in out
    images = run_json(capsys, *p, "image", "ls")
    assert [i["name"] for i in images] == ["app:1", "ext"]
    assert images[0]["layers"] == 1 and images[0]["size"] == 4 * MiB

    assert run(capsys, *p, "container", "create", "web", "app:1")[0] == 0
    with cowblock.Pool.open(pool_dir) as pool:
        from cowblock.model import Store
        with Store(pool) as store:
            store.container("web").device.write(0, b"W" * 8192)
    cont = run_json(capsys, *p, "container", "ls")
    assert cont[0]["name"] == "web" and cont[0]["exclusive"] == 64 * 1024
    code, out, _ = run(capsys, *p, "container", "ls")
    assert "65536 B" in out

    res = run_json(capsys, *p, "container", "commit", "web", "app:2", "-m", "wrote W")
    assert res["image"] == "app:2"
    hist = run_json(capsys, *p, "image", "history", "app:2")
    assert [h["comment"] for h in hist][0] == "wrote W" and len(hist) == 2
    code, out, _ = run(capsys, *p, "image", "history", "app:2")
    assert "wrote W" in out

    assert run(capsys, *p, "volume", "create", "data", "16M")[0] == 0
    vols = run_json(capsys, *p, "volume", "ls")
    assert vols[0]["size"] == 16 * MiB
    scratch = tmp_path / "s.raw"
    with open(scratch, "wb") as fh:
        fh.truncate(MiB)
    assert run(capsys, *p, "bind", "create", "scratch", str(scratch))[0] == 0
    assert run(capsys, *p, "container", "attach", "web", "--volume", "data")[0] == 0
    assert run(capsys, *p, "container", "attach", "web", "--bind", "scratch")[0] == 0
    assert run(capsys, *p, "container", "attach", "web")[0] == 2
    assert run_json(capsys, *p, "container", "ls")[0]["attached"] == ["volume:data", "bind:scratch"]
    assert run_json(capsys, *p, "bind", "ls")[0]["attached_to"] == ["web"]

    code, _, err = run(capsys, *p, "volume", "rm", "data")
    assert code == 1 and "attached" in err
    code, _, err = run(capsys, *p, "image", "rm", "app:1")
    assert code == 1 and "container" in err

    df = run_json(capsys, *p, "df")
    assert {"pool", "images", "layers", "containers", "volumes", "binds"} <= set(df)
    code, out, _ = run(capsys, *p, "df")
    assert code == 0 and "Containers" in out and "Layers:" not in out
    code, out, _ = run(capsys, *p, "df", "-v")
    assert code == 0 and "Layers:" in out and "web" in out and "scratch" in out

    assert run(capsys, *p, "container", "detach", "web", "--bind", "scratch")[0] == 0
    assert run(capsys, *p, "container", "reset", "web")[0] == 0
    res = run_json(capsys, *p, "container", "rm", "web")
    assert res["removed"] == ["web"]
    assert run(capsys, *p, "volume", "rm", "data")[0] == 0
    assert run(capsys, *p, "bind", "rm", "scratch")[0] == 0
    assert os.path.exists(scratch)
    code, _, err = run(capsys, *p, "image", "rm", "app:1")
    assert code == 1 and "dependent" in err
    assert run(capsys, *p, "image", "rm", "app:2", "app:1", "ext")[0] == 0
    assert run_json(capsys, *p, "image", "ls") == []
    assert run_json(capsys, *p, "pool", "info")["used"] == 0
    assert run(capsys, *p, "pool", "check")[0] == 0


def test_pool_check_exit_codes(capsys, pool_dir, monkeypatch):
    def fake_report(errors, leaks):
        return types.SimpleNamespace(errors=errors, leaked_blocks=leaks, leaked_pages=0,
                                     leaks=leaks, messages=["bad node"] if errors else [],
                                     ok=not errors and not leaks)

    monkeypatch.setattr(cowblock.Pool, "check", lambda self, repair=False: fake_report(0, 3))
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 3 and "leaked" in out
    monkeypatch.setattr(cowblock.Pool, "check", lambda self, repair=False: fake_report(1, 0))
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 2 and "bad node" in out and "corrupted" in out


def test_pool_check_reports_corrupt_model_metadata(capsys, pool_dir):
    with open(os.path.join(pool_dir, "snapshots.model.json"), "w") as fh:
        fh.write("garbage")
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 2 and "snapshots.model.json" in out


def test_bench_is_delegated(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("cowblock.benchmark")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "cowblock.benchmark", fake)
    monkeypatch.setattr(cowblock, "benchmark", fake, raising=False)
    assert cli.main(["bench", "--quick", "x"]) == 0
    assert seen == [["--quick", "x"]]


def test_bench_missing_module_exits_2(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cowblock.benchmark", None)
    monkeypatch.delattr(cowblock, "benchmark", raising=False)
    code, _, err = run(capsys, "bench")
    assert code == 2 and "benchmark module" in err


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, COWBLOCK_POOL=str(tmp_path / "p"))
    res = subprocess.run([sys.executable, "-m", "cowblock", "pool", "create"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "cowblock", "device", "rm", "nope"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("cowblock: error:") and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "cowblock", "--json", "pool", "info"],
                         capture_output=True, text=True, env=env)
    assert json.loads(res.stdout)["size"] == 10 * 2**30


def _damage_other_superblock_slot(path):
    with cowblock.Pool.open(path, readonly=True) as pool:
        other = 1 - pool.stats()["generation"] % 2
    with open(os.path.join(path, "meta"), "r+b") as fh:
        fh.seek(other * 4096 + 1000)
        fh.write(b"garbage!")
    return other


def test_pool_check_repair_rewrites_a_damaged_superblock_slot(capsys, pool_dir):
    other = _damage_other_superblock_slot(pool_dir)
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 2 and f"error: superblock slot {other} (offset {hex(other * 4096)}): " \
        "bad checksum" in out and "corrupted" in out
    code, out, _ = run(capsys, "pool", "check", "--repair", pool_dir)
    assert code == 0, out
    assert f"repaired: superblock slot {other} " in out and "no errors found" in out
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 0 and out.strip().endswith("no errors found")


def test_pool_check_repair_gives_leaked_blocks_back(capsys, pool_dir):
    with open(os.path.join(pool_dir, "data"), "r+b") as fh:  # data in a free block
        fh.seek(100 * 65536)
        fh.write(b"L" * 65536)
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 3 and "--repair gives it back" in out
    code, out, _ = run(capsys, "pool", "check", "--repair", pool_dir)
    assert code == 0 and "punched out" in out
    assert run(capsys, "pool", "check", pool_dir)[0] == 0


def test_pool_check_reports_a_broken_model_file(capsys, pool_dir, raw):
    assert run(capsys, "--pool", pool_dir, "image", "import", "base", raw)[0] == 0
    path = os.path.join(pool_dir, "model.json")
    with open(path, "w") as fh:
        fh.write('{"format": "cowblock-model", "version": 1, "images": {')
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 2 and f"error: {path}: not valid JSON" in out
    data = run(capsys, "--json", "pool", "check", pool_dir)
    assert data[0] == 2 and not json.loads(data[1])["ok"]


def test_pool_check_reports_an_edited_external_base(capsys, pool_dir, raw):
    assert run(capsys, "--pool", pool_dir, "image", "import", "base", raw, "--external")[0] == 0
    assert run(capsys, "pool", "check", pool_dir)[0] == 0
    with open(raw, "r+b") as fh:
        fh.write(b"edited")
    os.utime(raw, ns=(0, 0))
    code, out, _ = run(capsys, "pool", "check", pool_dir)
    assert code == 2 and f"external origin '{raw}' changed since it was attached" in out


# --------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("argv, value", [
    (["pool", "create", "{tmp}/p", "--size", "99999999999999999999G"], "99999999999999999999G"),
    (["pool", "create", "{tmp}/p", "--size", "8P"], "8P"),
    (["pool", "create", "{tmp}/p", "--size", "-5G"], "-5G"),
    (["pool", "create", "{tmp}/p", "--size", "1K"], "1K"),
    (["pool", "create", "{tmp}/p", "--block-size", "3K"], "3K"),
    (["pool", "create", "{tmp}/p", "--block-size", "12K"], "12K"),
    (["pool", "create", "{tmp}/p", "--block-size", "-64K"], "-64K"),
    (["--pool", "{tmp}/p", "device", "create", "d", "99999999999999999999G"],
     "99999999999999999999G"),
    (["--pool", "{tmp}/p", "device", "create", "d", "-5G"], "-5G"),
    (["--pool", "{tmp}/p", "device", "create", "d", "100P"], "100P"),
    (["--pool", "{tmp}/p", "device", "create", "d", "1000"], "1000"),
    (["--pool", "{tmp}/p", "volume", "create", "v", "-1M"], "-1M"),
    (["--pool", "{tmp}/p", "device", "import", "d", "x.raw", "--size", "-1M"], "-1M"),
    (["--pool", "{tmp}/p", "pool", "scrub", "--rate", "-100M"], "-100M"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_size_errors_name_the_value_and_the_range(capsys, tmp_path, argv, value):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert repr(value) in err and "expected one argument" not in err
    assert "must be" in err and (" to " in err or "at least" in err), err
    assert not os.path.exists(tmp_path / "p")


def test_pool_size_range_follows_the_block_size(capsys, tmp_path):
    code, _, err = run(capsys, "pool", "create", str(tmp_path / "p"), "--size", "8P")
    assert code == 2 and "4.0 PiB (4503599627370496 B)" in err and "64.0 KiB blocks" in err
    code, _, err = run(capsys, "pool", "create", str(tmp_path / "p"), "--size", "300T",
                       "--block-size", "4K")
    assert code == 2 and "'300T'" in err and "256.0 TiB" in err and "4.0 KiB blocks" in err


def test_file_too_large_names_the_size(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, resource.RLIM_INFINITY))

    res = subprocess.run([sys.executable, "-m", "cowblock", "pool", "create",
                          str(tmp_path / "p"), "--size", "4G"],
                         capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "[Errno" not in res.stderr
    assert "4.0 GiB (4294967296 B)" in res.stderr and "too large" in res.stderr
    assert "at most 1.0 GiB" in res.stderr and "smaller --size" in res.stderr


# --------------------------------------------------------------------------- export targets

def test_export_without_force_names_the_flag(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    assert run(capsys, *p, "device", "import", "img", raw)[0] == 0
    out = tmp_path / "o.raw"
    out.write_bytes(b"keep")
    code, _, err = run(capsys, *p, "device", "export", "img", str(out))
    assert code == 1 and "--force" in err and "overwrite" not in err
    assert out.read_bytes() == b"keep"


def test_export_force_never_removes_a_node_or_fifo(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    assert run(capsys, *p, "device", "import", "img", raw)[0] == 0
    targets = {}
    try:
        os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        targets["character device"] = tmp_path / "null"
    except PermissionError:
        pass
    os.mkfifo(tmp_path / "fifo")
    targets["FIFO"] = tmp_path / "fifo"   # last: opening it for writing would block
    for kind, path in targets.items():
        mode = os.lstat(path).st_mode
        for force in ((), ("--force",)):
            code, _, err = run(capsys, *p, "device", "export", "img", str(path), *force)
            assert code == 1 and kind in err, err
            assert os.lstat(path).st_mode == mode     # still there, still what it was


def test_export_to_stdout_streams_into_a_pipe(pool_dir, raw):
    env = dict(os.environ, COWBLOCK_POOL=pool_dir)
    cmd = [sys.executable, "-m", "cowblock"]
    subprocess.run(cmd + ["device", "import", "img", raw], check=True, env=env,
                   capture_output=True)
    res = subprocess.run(cmd + ["device", "export", "img", "-"], env=env, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == open(raw, "rb").read()        # the bytes, in order, holes as zeros
    assert b"standard output" in res.stderr           # the report goes to stderr


def test_image_and_container_export_by_name(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    assert run(capsys, *p, "image", "import", "app", raw)[0] == 0
    out = tmp_path / "app.raw"
    code, text, _ = run(capsys, *p, "image", "export", "app", str(out))
    assert code == 0 and "image app" in text
    assert out.read_bytes() == open(raw, "rb").read()
    assert run(capsys, *p, "container", "create", "web", "app")[0] == 0
    with cowblock.Pool.open(pool_dir) as pool:
        from cowblock.model import Store
        with Store(pool) as store:
            store.container("web").device.write(0, b"W" * 4096)
    res = run_json(capsys, *p, "container", "export", "web", str(tmp_path / "web.raw"))
    assert res["size"] == 4 * MiB
    data = (tmp_path / "web.raw").read_bytes()
    assert data[:4096] == b"W" * 4096 and data[4096:] == open(raw, "rb").read()[4096:]
    code, _, err = run(capsys, *p, "image", "export", "nope", str(tmp_path / "n.raw"))
    assert code == 1 and "image 'nope' not found" in err
    assert not (tmp_path / "n.raw").exists()


# --------------------------------------------------------------------------- import messages

def test_import_says_what_a_source_is(capsys, pool_dir, tmp_path):
    p = ("--pool", pool_dir)
    for verb in ("image", "device"):
        code, _, err = run(capsys, *p, verb, "import", "x", str(tmp_path))
        assert code == 1 and "is a directory" in err and "does not exist" not in err
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(1 << 16))
    q = str(qcow)
    for argv in (("image", "import", "x", q), ("image", "import", "x", q, "--external"),
                 ("device", "import", "x", q), ("device", "create", "x", "--external", q),
                 ("bind", "create", "x", q)):
        code, _, err = run(capsys, *p, *argv)
        assert code == 1 and "qcow2" in err and "qemu-img convert -f qcow2 -O raw" in err, argv
    assert run_json(capsys, *p, "device", "ls") == []
    assert run_json(capsys, *p, "bind", "ls") == []


def test_pool_full_names_the_image_not_the_internal_device(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("COWBLOCK_POOL", raising=False)
    pool = str(tmp_path / "small")
    assert run(capsys, "pool", "create", pool, "--size", "1M")[0] == 0
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(4 * MiB))
    code, _, err = run(capsys, "--pool", pool, "image", "import", "app", str(big))
    assert code == 1 and "image 'app'" in err and "m-" not in err.split("image 'app'")[1]
    assert "import_" not in err and "the pool is full" in err and "of 1.0 MiB" in err


# --------------------------------------------------------------------------- progress

def test_progress_bars_for_import_and_export(capsys, pool_dir, raw, tmp_path):
    p = ("--pool", pool_dir)
    code, _, err = run(capsys, *p, "image", "import", "a", raw)   # stderr is not a terminal
    assert code == 0 and err == ""
    code, _, err = run(capsys, *p, "image", "import", "b", raw, "--progress")
    assert code == 0 and "import" in err
    code, _, err = run(capsys, *p, "device", "import", "c", raw, "--progress")
    assert code == 0 and "import" in err
    code, _, err = run(capsys, *p, "device", "export", "c", str(tmp_path / "c.raw"), "--progress")
    assert code == 0 and "export" in err
    code, _, err = run(capsys, *p, "image", "export", "a", str(tmp_path / "a.raw"))
    assert code == 0 and err == ""
