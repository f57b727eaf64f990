"""cowblock device map where it cannot work: a clear message, nothing started.

These run anywhere (no root needed): the conditions are simulated.
"""

import os

import pytest

import cowblock
from cowblock import cli
from cowblock.mapping import daemon, fusefile, state


@pytest.fixture
def pool_dir(tmp_path):
    path = str(tmp_path / "pool")
    with cowblock.Pool.create(path, size=64 << 20) as pool:
        pool.create_device("d", 1 << 20)
    return path


def _map(capsys, pool_dir):
    code = cli.main(["--pool", pool_dir, "device", "map", "d"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_without_root(pool_dir, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = _map(capsys, pool_dir)
    assert code == 1 and out == ""
    assert "cannot map 'd': mapping a device needs root" in err
    assert sorted(os.listdir(pool_dir)) == ["data", "meta"]  # nothing started


def test_without_dev_fuse(pool_dir, capsys, monkeypatch):
    real = os.path.exists
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/fuse" else real(p))
    code, _, err = _map(capsys, pool_dir)
    assert code == 1 and "needs /dev/fuse" in err


def test_built_without_libfuse(pool_dir, capsys, monkeypatch):
    class NoFuse:
        @staticmethod
        def cbf_available():
            return 0
    monkeypatch.setattr(fusefile, "lib", NoFuse)
    code, _, err = _map(capsys, pool_dir)
    assert code == 1 and "built without libfuse3" in err and "libfuse3-dev" in err


def test_unmap_and_mapped_without_a_daemon(pool_dir, capsys):
    assert cli.main(["--pool", pool_dir, "device", "unmap", "d"]) == 1
    assert "not mapped" in capsys.readouterr().err
    assert cli.main(["--pool", pool_dir, "--json", "device", "mapped"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_mkfs_bad_type_and_small_xfs(pool_dir, capsys):
    assert cli.main(["--pool", pool_dir, "device", "mkfs", "d", "--type", "vfat"]) == 2
    capsys.readouterr()
    assert cli.main(["--pool", pool_dir, "device", "mkfs", "d", "--type", "xfs"]) == 1
    assert "at least 300 MiB" in capsys.readouterr().err


def test_file_names_are_safe():
    assert daemon.file_name("base") == "base"
    for name in ("a/b", "../x", ".hidden", "x" * 127, "sp ace", "\u00e9"):
        f = daemon.file_name(name)
        assert "/" not in f and not f.startswith(".") and len(f) <= 200, name
    assert daemon.file_name("a/b") != daemon.file_name("a_b")


def test_stale_state_without_mounts_is_removed(pool_dir):
    state.save(pool_dir, {"pid": 2**22 + 1, "mountpoint": "/nonexistent/mnt",
                          "mappings": {"d": {"loop": "/dev/loop999", "file": "/x"}}})
    assert state.clean_stale(pool_dir, log=lambda *_: None) == []
    assert state.load(pool_dir) is None
