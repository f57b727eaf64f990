"""A failed ``Pool.create`` leaves nothing behind (issue 8, defects 3 and 9).

Create is all or nothing: when any step after the files exist fails, the
files it made are removed, and the directory too if create made it; a
directory that existed keeps its other contents.  A retry then succeeds.
Two ways to make the steps fail: the test IO backend failing each write,
sync and truncate of create in turn (tests/testbuild.py), and a real
RLIMIT_FSIZE below the data file's size (what a file system with a lower
file size limit does: ``File too large``).
"""
import errno
import os
import subprocess
import sys
import textwrap

import pytest

import cowblock
from testbuild import run_worker, testing_build, tlib  # noqa: F401 - fixture

MiB = 1 << 20
KINDS = ("PREAD", "PWRITE", "SYNC", "PUNCH", "TRUNCATE")
FILES = ("DATA", "META")


def _counts(lib):
    return {(k, f): int(lib.cb_test_count(getattr(lib, "CB_TEST_" + k), getattr(lib, "CB_TEST_" + f)))
            for k in KINDS for f in FILES}


def create_faults(root):
    """Worker: fail each IO call of a create in turn; report what was left."""
    lib = tlib()
    lib.cb_test_enable(1)
    out = []
    for checksums in (False, True):
        lib.cb_test_reset()
        probe = os.path.join(root, f"probe-{checksums}")
        cowblock.Pool.create(probe, size=4 * MiB, block_size=64 * 1024,
                             checksums=checksums).close()
        calls = _counts(lib)  # every call a create makes (and its close, counted too)
        for (kind, file), n in sorted(calls.items()):
            if kind == "PREAD":
                continue
            for i in range(1, n + 1):
                for existing in (False, True):
                    path = os.path.join(root, f"{checksums}-{kind}-{file}-{i}-{existing}")
                    if existing:
                        os.makedirs(path)
                        with open(os.path.join(path, "notes.txt"), "w") as f:
                            f.write("not the pool's")
                    lib.cb_test_reset()
                    lib.cb_test_fail(getattr(lib, "CB_TEST_" + kind),
                                     getattr(lib, "CB_TEST_" + file), i, errno.EIO)
                    error = None
                    try:
                        pool = cowblock.Pool.create(path, size=4 * MiB, block_size=64 * 1024,
                                                    checksums=checksums)
                    except (cowblock.CowblockError, OSError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    else:  # the call that failed was close's, not one of create's
                        try:
                            pool.close()
                        except (cowblock.CowblockError, OSError):
                            pass
                    injected = int(lib.cb_test_injected())
                    lib.cb_test_reset()
                    left = sorted(os.listdir(path)) if os.path.exists(path) else None
                    retry = None
                    if error is not None:
                        try:
                            with cowblock.Pool.create(path, size=4 * MiB, block_size=64 * 1024,
                                                      checksums=checksums) as p:
                                p.create_device("d", MiB).write(0, b"x" * 4096)
                            with cowblock.Pool.open(path) as p:
                                retry = p.device("d").read(0, 1) == b"x" and p.check().ok
                        except (cowblock.CowblockError, OSError) as exc:
                            retry = f"{type(exc).__name__}: {exc}"
                    out.append(dict(checksums=checksums, kind=kind, file=file, n=i,
                                    existing=existing, error=error, injected=injected,
                                    left=left, retry=retry))
    return out


def test_failed_create_leaves_nothing(testing_build, tmp_path):
    cases = run_worker(testing_build, "test_create", "create_faults", root=str(tmp_path))
    failed = [c for c in cases if c["error"] is not None]
    assert failed, "no injected fault made a create fail"
    # every write, sync and truncate of both files was hit at least once
    assert {(c["kind"], c["file"]) for c in failed} >= {
        ("PWRITE", "META"), ("SYNC", "META"), ("SYNC", "DATA"), ("TRUNCATE", "DATA")}
    for c in cases:
        assert c["injected"] == 1 or c["error"] is None, c
        if c["error"] is None:
            continue
        want = ["notes.txt"] if c["existing"] else None
        assert c["left"] == want, f"left behind after a failed create: {c}"
        assert c["retry"] is True, f"retry after a failed create: {c}"


_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    import cowblock
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        cowblock.Pool.create(sys.argv[1], size=int(sys.argv[3]))
    except cowblock.InvalidArgumentError as exc:
        print("INVALID", exc)
    except Exception as exc:
        print("OTHER", type(exc).__name__, exc)
    else:
        print("CREATED")
""")


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-dir"])
def test_create_larger_than_the_file_size_limit(tmp_path, existing):
    path = tmp_path / "pool"
    if existing:
        path.mkdir()
        (path / "notes.txt").write_text("not the pool's")
    size = 1 << 30
    out = subprocess.run([sys.executable, "-c", _LIMITED, str(path), str(64 * MiB), str(size)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("INVALID"), out.stdout + out.stderr
    message = out.stdout
    assert str(size) in message and "file system" in message and "smaller size" in message
    if existing:
        assert sorted(os.listdir(path)) == ["notes.txt"]
    else:
        assert not path.exists()
    with cowblock.Pool.create(path, size=size) as pool:  # no limit here: the retry works
        pool.create_device("d", MiB).write(0, b"y")
    with cowblock.Pool.open(path) as pool:
        assert pool.device("d").read(0, 1) == b"y"
