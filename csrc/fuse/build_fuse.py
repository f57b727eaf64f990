"""cffi build of cowblock._fusefile, the FUSE side of ``cowblock device map``.

Links libfuse3 when ``pkg-config fuse3`` finds it (Debian: libfuse3-dev and
pkg-config); otherwise builds the same module without it, so that the
package still installs and ``device map`` says what is missing.
COWBLOCK_DEBUG and COWBLOCK_SANITIZE as for the core (csrc/build_ffi.py).
"""
import os
import shlex
import subprocess

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.join("csrc", "fuse")


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
flags = ["-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fvisibility=hidden"]
link = []
if cflags is None or libs is None:
    flags += ["-DCBF_NO_FUSE"]
    cflags, libs = [], []
if os.environ.get("COWBLOCK_DEBUG") or os.environ.get("COWBLOCK_SANITIZE"):
    flags += ["-O0", "-g", "-UNDEBUG"]
else:
    flags += ["-O2"]
if os.environ.get("COWBLOCK_SANITIZE"):  # as csrc/build_ffi.py
    flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"]
    link += ["-fsanitize=address,undefined"]

ffibuilder = FFI()
with open(os.path.join(HERE, "fusefile.cdef.h")) as f:
    ffibuilder.cdef(f.read())
ffibuilder.set_source(
    "cowblock._fusefile",
    '#include "fusefile.h"',
    sources=[os.path.join(REL, "fusefile.c")],
    include_dirs=[REL],
    depends=[os.path.join(REL, n) for n in ("fusefile.h", "fusefile.cdef.h")],
    extra_compile_args=flags + cflags,
    extra_link_args=libs + link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
