"""CRC-32C of the core against a bit-at-a-time reference (tests/crc32c_check.c).

The hardware path interleaves three streams for long buffers and joins them
with precomputed shifts; lengths around the lane boundaries, every
alignment and random lengths are compared with the plain definition (on
the path this CPU takes: SSE4.2 on x86-64, the table elsewhere).
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_crc32c_matches_reference(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc/cc) on PATH")
    exe = tmp_path / "crc32c_check"
    subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-I", os.path.join(ROOT, "csrc"), os.path.join(HERE, "crc32c_check.c"),
                    os.path.join(ROOT, "csrc", "crc32c.c"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked" in out.stdout
