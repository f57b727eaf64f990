"""The build id is a hash of the C sources (cowblock/_buildid.py): a core built from other
sources is refused on import, in a source tree (the hash of csrc as it is now) and in an
installed package (the id the wheel recorded)."""

import os
import shutil
import subprocess
import sys

import pytest

import cowblock
from cowblock import _buildid, _lowlevel

PACKAGE = os.path.dirname(os.path.abspath(cowblock.__file__))
CSRC = _buildid.source_dir()
BUILT = _lowlevel.ffi.string(_lowlevel.lib.cb_build_id()).decode()

in_tree = pytest.mark.skipif(CSRC is None, reason="an installed package: no csrc to hash")


@in_tree
def test_core_id_is_the_hash_of_the_sources():
    assert BUILT == _buildid.build_id(CSRC) == _lowlevel.BUILD_ID
    assert BUILT.startswith(_buildid.PREFIX) and len(BUILT) == len(_buildid.PREFIX) + 16


def _tree(tmp_path, csrc=True, record=None):
    """A fake tree: tmp/cowblock (empty) and, if asked, a copy of csrc and a record."""
    pkg = tmp_path / "cowblock"
    pkg.mkdir(parents=True)
    if csrc:
        shutil.copytree(CSRC, tmp_path / "csrc")
    if record is not None:
        (pkg / _buildid.RECORD).write_text(f"BUILD_ID = {record!r}\n")
    return str(pkg)


@in_tree
def test_every_source_file_counts(tmp_path):
    pkg = _tree(tmp_path)
    assert _buildid.verify(BUILT, pkg) == BUILT
    csrc = tmp_path / "csrc"
    for name in ("pool.c", "store.h", "cowblock.cdef.h"):
        path = csrc / name
        keep = path.read_bytes()
        path.write_bytes(keep + b"\n")
        with pytest.raises(ImportError, match="stale"):
            _buildid.verify(BUILT, pkg)
        path.write_bytes(keep)
    (csrc / "new.h").write_text("/* a new header */\n")
    with pytest.raises(ImportError, match="stale"):
        _buildid.verify(BUILT, pkg)
    (csrc / "new.h").unlink()
    (csrc / "notes.txt").write_text("not a source\n")
    assert _buildid.verify(BUILT, pkg) == BUILT


@in_tree
def test_installed_package_checks_the_record(tmp_path):
    good = _tree(tmp_path / "a", csrc=False, record=BUILT)
    assert _buildid.verify(BUILT, good) == BUILT
    other = _tree(tmp_path / "b", csrc=False, record=_buildid.PREFIX + "0" * 16)
    with pytest.raises(ImportError, match="stale.*build record"):
        _buildid.verify(BUILT, other)
    neither = _tree(tmp_path / "c", csrc=False)
    with pytest.raises(ImportError, match="cannot tell"):
        _buildid.verify(BUILT, neither)
    # the record a wheel carries is the one setup.py writes
    rec = tmp_path / "d"
    pkg = _tree(rec, csrc=False)
    with open(os.path.join(pkg, _buildid.RECORD), "w") as f:
        f.write(_buildid.record_text(CSRC))
    assert _buildid.expected(pkg)[0] == BUILT


@in_tree
def test_stale_core_fails_the_import(tmp_path):
    """An editable install whose csrc changed after the last build: import fails loudly."""
    shutil.copytree(PACKAGE, tmp_path / "cowblock",
                    ignore=shutil.ignore_patterns("__pycache__", _buildid.RECORD))
    shutil.copytree(CSRC, tmp_path / "csrc")
    code = "import cowblock; print(cowblock.__file__)"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    ok = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(str(tmp_path))
    with open(tmp_path / "csrc" / "thin.c", "a") as f:
        f.write("/* changed after the build */\n")
    stale = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert stale.returncode != 0
    assert "ImportError" in stale.stderr and "stale" in stale.stderr, stale.stderr


@pytest.mark.skipif(CSRC is not None, reason="a source tree: the sources are hashed")
def test_installed_core_matches_the_record():
    want, origin = _buildid.expected()
    assert "build record" in origin
    assert want == BUILT == _lowlevel.BUILD_ID
