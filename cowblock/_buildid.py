"""Which C sources a compiled core was built from: the build id.

The id is ``"cowblock-core src <hash>"``, where ``<hash>`` is the first 16 hex digits of a
SHA-256 over the C sources (every ``*.c`` and ``*.h`` directly in ``csrc/``, the cdef
included, in name order, each as its name then its bytes).  Nothing is bumped by hand:

- The build (``csrc/build_ffi.py``) computes it with :func:`build_id` and compiles it into
  the core (``-DCB_BUILD_ID=...``); ``cb_build_id()`` returns it.
- A wheel also records it beside the Python files (``cowblock/_build_record.py``, written by
  setup.py's ``build_py``), since an installed package has no ``csrc`` to hash.
- On import, ``_lowlevel`` compares the core's id with :func:`expected`: in a source tree
  (a checkout or an editable install: ``csrc/`` next to the package) the hash of the sources
  as they are now, so a core not rebuilt since ``csrc`` changed fails loudly; in an installed
  package, the recorded id, so a core left over from another build fails the same way.

This module is loaded by file path from the build scripts (before the package can be
imported), so it uses nothing but the standard library.
"""
import ast
import hashlib
import os

PREFIX = "cowblock-core src "
RECORD = "_build_record.py"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def source_hash(csrc):
    """Hash of the C sources in directory ``csrc`` (see the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(csrc)):
        path = os.path.join(csrc, name)
        if name.endswith((".c", ".h")) and os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def build_id(csrc):
    """The build id of the sources in ``csrc``."""
    return PREFIX + source_hash(csrc)


def source_dir(package_dir=_PACKAGE):
    """The ``csrc`` directory of the tree the package sits in, or None when installed."""
    csrc = os.path.join(os.path.dirname(package_dir), "csrc")
    if os.path.isfile(os.path.join(csrc, "build_ffi.py")) and \
            os.path.isfile(os.path.join(csrc, "cowblock.h")):
        return csrc
    return None


def record_text(csrc):
    """The content of the record a wheel carries (setup.py writes it)."""
    return (f'"""Written by the build (cowblock/_buildid.py): the build id of the core '
            f'shipped with this package."""\nBUILD_ID = {build_id(csrc)!r}\n')


def expected(package_dir=_PACKAGE):
    """(the build id the package needs, where it comes from), or (None, why) if unknown."""
    csrc = source_dir(package_dir)
    if csrc is not None:
        return build_id(csrc), f"the sources in {csrc}"
    record = os.path.join(package_dir, RECORD)
    try:
        with open(record) as f:
            text = f.read()
    except OSError:
        return None, f"neither {os.path.join(os.path.dirname(package_dir), 'csrc')} nor {record}"
    for line in text.splitlines():
        if line.startswith("BUILD_ID = "):
            return ast.literal_eval(line[len("BUILD_ID = "):]), f"the build record {record}"
    return None, f"a build record without an id ({record})"


def verify(built, package_dir=_PACKAGE):
    """The id the package needs; ImportError unless ``built`` (the core's) is that id."""
    want, origin = expected(package_dir)
    if want is None:
        raise ImportError(f"cannot tell which C sources cowblock's core must come from: "
                          f"found {origin}; reinstall the package")
    if built != want:
        raise ImportError(
            f"cowblock's compiled core is stale: it reports build id {built!r}, but "
            f"{origin} give {want!r}; rebuild it with `pip install -e .` (or reinstall)")
    return want
