"""A read-only open writes nothing (issue 8, defect 2).

Opening an uncleanly closed pool with ``readonly=True`` used to punch the
blocks of the last commit's free log out of the data file (through a
read-only descriptor: EBADF, which then set the leaky and dirty marks).  Now
a read-only open changes nothing and tries nothing: both files keep every
byte and every allocated extent (SEEK_DATA/SEEK_HOLE map); the core holds
them O_RDONLY only; files of mode 0444 open; and the test IO backend counts
not one write, sync, punch or truncate.  What the read-only open cannot
reclaim -- free blocks that still hold data -- ``check()`` reports as leaked
blocks, and the next writable open reclaims them.
"""
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import cowblock
from testbuild import run_worker, testing_build, tlib  # noqa: F401 - fixture

MiB = 1 << 20

_CRASH = textwrap.dedent("""
    import os, signal, sys
    import cowblock
    pool = cowblock.Pool.create(sys.argv[1], size=64 << 20, block_size=65536)
    a = pool.create_device("a", 8 << 20)
    b = pool.create_device("b", 8 << 20)
    a.write(0, b"a" * (1 << 20))
    b.write(0, b"b" * (1 << 20))
    pool.flush()
    pool.delete("b")
    pool.flush()                        # this commit's free log lists b's blocks
    a.write(2 << 20, b"c" * (1 << 20))  # never committed: free blocks holding data
    os.kill(os.getpid(), signal.SIGKILL)
""")


def make_unclean(path):
    out = subprocess.run([sys.executable, "-c", _CRASH, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr


def file_state(path):
    """Size, allocated blocks, data extents and a hash of every byte of both files."""
    state = {}
    for name in ("meta", "data"):
        with open(os.path.join(path, name), "rb") as f:
            fd = f.fileno()
            st = os.fstat(fd)
            extents, off = [], 0
            while off < st.st_size:
                try:
                    start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    break
                off = os.lseek(fd, start, os.SEEK_HOLE)
                extents.append((start, off))
            digest = hashlib.sha256()
            f.seek(0)
            for chunk in iter(lambda: f.read(4 * MiB), b""):
                digest.update(chunk)
            state[name] = (st.st_size, st.st_blocks, extents, digest.hexdigest())
    return state


def pool_fds(path):
    """{file name: access mode} of this process's descriptors open on the pool's files."""
    modes = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.dirname(target) == str(path):
            with open(f"/proc/self/fdinfo/{fd}") as f:
                flags = int(next(x for x in f if x.startswith("flags:")).split()[1], 8)
            modes.setdefault(os.path.basename(target), set()).add(flags & os.O_ACCMODE)
    return modes


def _look(path):
    """Open read-only, read, check; the report and the descriptors' modes."""
    with cowblock.Pool.open(path, readonly=True) as pool:
        assert pool.devices() == ["a"]
        assert pool.device("a").read(0, MiB) == b"a" * MiB
        modes = pool_fds(path)
        report = pool.check()
    return report, modes


def test_readonly_open_of_an_unclean_pool_changes_nothing(tmp_path):
    path = tmp_path / "pool"
    make_unclean(path)
    # Once first: ext4 reports the cached pages of a preallocated (unwritten)
    # extent as data, so reading every byte changes the map of the next look.
    file_state(path)
    before = file_state(path)
    assert before["data"][2], "the crash left no data"

    report, modes = _look(path)
    assert modes == {"meta": {os.O_RDONLY}, "data": {os.O_RDONLY}}
    # what it could not reclaim is reported, not hidden
    assert report.errors == 0 and report.leaked_blocks > 0, report
    assert file_state(path) == before

    # files nobody may write (root ignores the mode: the O_RDONLY
    # descriptors above and the count below prove no write is tried)
    for name in ("meta", "data"):
        os.chmod(path / name, 0o444)
    report2, _ = _look(path)
    assert report2.leaked_blocks == report.leaked_blocks
    assert file_state(path) == before

    # the next writable open reclaims the leaked blocks
    for name in ("meta", "data"):
        os.chmod(path / name, 0o644)
    with cowblock.Pool.open(path) as pool:
        after = pool.check()
        assert after.ok, after
        assert pool.device("a").read(2 * MiB, MiB) == bytes(MiB)


def readonly_counts(path):
    """Worker: IO calls of a read-only open, read and check, over the test backend."""
    lib = tlib()
    lib.cb_test_enable(1)
    lib.cb_test_reset()
    with cowblock.Pool.open(path, readonly=True) as pool:
        pool.device("a").read(0, MiB)
        leaked = pool.check().leaked_blocks
    counts = {kind: int(lib.cb_test_count(getattr(lib, "CB_TEST_" + kind), lib.CB_TEST_ANY))
              for kind in ("PREAD", "PWRITE", "SYNC", "PUNCH", "TRUNCATE", "MUTATE")}
    counts["leaked"] = leaked
    return counts


def test_readonly_open_attempts_no_write(testing_build, tmp_path):
    path = tmp_path / "pool"
    make_unclean(path)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    counts = run_worker(testing_build, "test_readonly_open", "readonly_counts", path=str(copy))
    assert counts["PREAD"] > 0  # the backend did see the pool's files
    assert counts["leaked"] > 0
    for kind in ("PWRITE", "SYNC", "PUNCH", "TRUNCATE", "MUTATE"):
        assert counts[kind] == 0, f"a read-only open made {counts[kind]} {kind} call(s): {counts}"
