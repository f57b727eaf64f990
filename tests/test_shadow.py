"""Rollback of a node copy whose reference increments fail midway (issue 8, defect 5).

Copying a shared leaf takes one more reference on every data block it names;
copying an interior node, one more on every child.  An increment fails only
on a corrupt count (at its maximum): then the copy must give back every
reference it took, so the tree and the counts are exactly as before and the
write that needed the copy fails cleanly.  The counts cannot be made that
large through a pool (they are rebuilt from the trees at open), so
tests/shadow_check.c drives the mapping layer directly.
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def test_shadow_rolls_back_a_failed_copy(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc/cc) on PATH")
    exe = tmp_path / "shadow_check"
    flags = ["-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    if os.environ.get("COWBLOCK_SANITIZE"):
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    subprocess.run([cc, *flags, "-I", CSRC, os.path.join(HERE, "shadow_check.c"),
                    os.path.join(CSRC, "mapping.c"), os.path.join(CSRC, "spacemap.c"),
                    "-o", str(exe)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked, 0 failure(s)" in out.stdout
