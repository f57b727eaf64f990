"""``cowblock volume mount`` / ``container mount``: map and mount in one
step, for a user of the model without containerd.

Needs root, /dev/fuse, loop devices and e2fsprogs; skipped otherwise.  The
map daemon the commands start exits when the last device is unmapped; the
tests check that, and clean up whatever is left on failure.
"""

import os
import subprocess

import pytest

import cowblock
from tools import tool_env
from cowblock.model import Store

from containerd_support import MiB, cb, force_clean, leftovers
from cowblock.mapping import mapping_unavailable

_why = mapping_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))


@pytest.fixture
def pool_dir(tmp_path):
    d = tmp_path / "pool"
    cowblock.Pool.create(d, size=2 << 30).close()
    try:
        yield str(d)
    finally:
        for target in (tmp_path / "a", tmp_path / "b"):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, env=tool_env())
        # the map daemon exits once nothing is mapped; stop a leftover by its pid
        from cowblock.mapping import state
        import signal
        import time
        pid = (state.load(str(d)) or {}).get("pid")
        if isinstance(pid, int) and leftovers(d):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while state.load(str(d)) and time.monotonic() < deadline:
                time.sleep(0.1)
        force_clean(d)


def _daemon_exits(pool_dir, seconds=15):
    import time
    deadline = time.monotonic() + seconds
    while leftovers(pool_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_volume_mount_keeps_data_between_mounts(pool_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cb(pool_dir, "volume", "create", "data", "128M")
    out = cb(pool_dir, "volume", "mount", "data", str(a)).stdout
    assert "made an ext4" in out  # a blank volume gets a file system once
    (a / "note").write_text("kept\n")
    cb(pool_dir, "volume", "umount", str(a))
    out = cb(pool_dir, "volume", "mount", "data", str(b)).stdout
    assert "made an ext4" not in out
    assert (b / "note").read_text() == "kept\n"
    res = cb(pool_dir, "volume", "rm", "data", check=False)
    assert res.returncode != 0 and "mapped" in res.stderr  # refused while mounted
    cb(pool_dir, "volume", "umount", str(b))
    res = cb(pool_dir, "volume", "umount", str(b), check=False)
    assert res.returncode != 0 and "nothing is mounted" in res.stderr
    cb(pool_dir, "volume", "rm", "data")
    assert leftovers(pool_dir) == [] or _daemon_exits(pool_dir)
    assert "no errors" in cb(pool_dir, "pool", "check").stdout


def test_container_mount_commit_and_a_new_container(pool_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with cowblock.Pool.open(pool_dir) as pool, Store(pool) as store:
        store.create_image("base", 256 * MiB)
    cb(pool_dir, "container", "create", "web", "base")
    cb(pool_dir, "container", "mount", "web", str(a))
    (a / "index.html").write_text("hello\n")
    cb(pool_dir, "container", "umount", str(a))
    cb(pool_dir, "container", "commit", "web", "site")
    cb(pool_dir, "container", "create", "web2", "site")
    cb(pool_dir, "container", "mount", "web2", str(b), "--readonly")
    assert (b / "index.html").read_text() == "hello\n"
    with pytest.raises(OSError):
        (b / "other").write_text("x")
    cb(pool_dir, "container", "umount", str(b))
    assert _daemon_exits(pool_dir)  # nothing mapped: the map daemon is gone
    res = cb(pool_dir, "container", "mount", "nosuch", str(b), check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    assert "no errors" in cb(pool_dir, "pool", "check").stdout
