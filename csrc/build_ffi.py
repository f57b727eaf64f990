"""cffi build of cowblock's C core (API mode, out of line).

Holds no logic but the build: the declarations live in cowblock.cdef.h,
the values of constants come from cowblock.h at compile time, and the build
id (a hash of the sources, cowblock/_buildid.py) is passed in with -D.  Set
COWBLOCK_DEBUG=1 for -O0 -g with assertions (which include the lock contract,
store.h), COWBLOCK_SANITIZE=1 for AddressSanitizer and
UndefinedBehaviorSanitizer on top of that.

The RADOS backend (blockio_rados.c) is compiled in when librados is there
(its header, and a program calling it links with -lrados), with
CB_HAVE_RADOS defined; COWBLOCK_RADOS=0 leaves it out, COWBLOCK_RADOS=1
fails the build without it.  The build prints which backends it has.
"""
import importlib.util
import os
import shutil
import subprocess
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _buildid():
    """cowblock/_buildid.py, loaded by path: the package cannot be imported yet."""
    path = os.path.join(os.path.dirname(HERE), "cowblock", "_buildid.py")
    spec = importlib.util.spec_from_file_location("_cowblock_buildid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# bottom of the stack first (pool.c's header comment draws it)
SOURCES = ["crc32c.c", "blockio.c", "blockio_rados.c", "backend.c", "meta.c", "datafile.c",
           "spacemap.c", "csum.c", "mapping.c", "store.c", "thin.c", "txn.c", "check.c",
           "dump.c", "scrub.c", "pool.c"]
HEADERS = ["cowblock.h", "crc32c.h", "blockio.h", "blockio_rados.h", "backend.h", "meta.h",
           "datafile.h", "spacemap.h", "csum.h", "mapping.h", "store.h", "thin.h", "txn.h",
           "check.h", "dump.h", "scrub.h", "pool.h", "testio.h", "cowblock.cdef.h"]

BUILD_ID = _buildid().build_id(HERE)
flags = ["-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fvisibility=hidden",
         f'-DCB_BUILD_ID="{BUILD_ID}"']
link = []
if os.environ.get("COWBLOCK_DEBUG") or os.environ.get("COWBLOCK_SANITIZE"):
    flags += ["-O0", "-g", "-UNDEBUG"]
else:
    flags += ["-O2"]
if os.environ.get("COWBLOCK_SANITIZE"):
    flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"]
    link += ["-fsanitize=address,undefined"]


def have_librados():
    """librados' header is there and a call into it links."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("#include <rados/librados.h>\n"
                    "int main(void) { rados_t c; return rados_create(&c, 0); }\n")
        r = subprocess.run([cc, src, "-o", os.path.join(d, "t"), "-lrados"],
                           capture_output=True)
        return r.returncode == 0


want = os.environ.get("COWBLOCK_RADOS", "")
rados = want != "0" and have_librados()
if want == "1" and not rados:
    raise SystemExit("COWBLOCK_RADOS=1 but librados is missing (apt-get install librados-dev)")
if rados:
    flags += ["-DCB_HAVE_RADOS"]
    link += ["-lrados"]
print("cowblock: IO backends: file" + (" rados" if rados else
      " (no rados: COWBLOCK_RADOS=0)" if want == "0" else
      " (no rados: librados does not link here; apt-get install librados-dev)"))

ffibuilder = FFI()
with open(os.path.join(HERE, "cowblock.cdef.h")) as f:
    ffibuilder.cdef(f.read())
ffibuilder.set_source(
    "cowblock._cowblock",
    '#include "cowblock.h"',
    sources=[os.path.join("csrc", s) for s in SOURCES],
    include_dirs=["csrc"],
    depends=[os.path.join("csrc", h) for h in HEADERS],
    extra_compile_args=flags,
    extra_link_args=link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
