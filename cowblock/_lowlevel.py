"""The compiled core and the one place where its return codes become exceptions.

``ffi`` and ``lib`` are the cffi objects of ``cowblock._cowblock``;
:func:`raise_for` turns a negative return code into the matching exception.
Importing this module checks that the compiled module was built from the
same sources as this package, so a stale build fails loudly.
"""
import errno as _errno

from . import _buildid, errors

try:
    from ._cowblock import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "cowblock's C core is not built: install the package with "
        "`pip install .` (or `pip install -e .`), which compiles it"
    ) from exc

# the id of the sources the core must be built from (see _buildid): ImportError if it is not
BUILD_ID = _buildid.verify(ffi.string(lib.cb_build_id()).decode())

_CLASSES = {
    lib.CB_EINVAL: errors.InvalidArgumentError,
    lib.CB_ENOENT: errors.NotFoundError,
    lib.CB_EEXIST: errors.ExistsError,
    lib.CB_EROFS: errors.ReadOnlyError,
    lib.CB_ENOSPC: errors.PoolFullError,
    lib.CB_ECORRUPT: errors.CorruptError,
    lib.CB_EFAILED: errors.PoolFailedError,
    lib.CB_EBUSY: errors.BusyError,
    lib.CB_ETOOMANY: errors.LimitError,
    lib.CB_EVERSION: errors.UnsupportedVersionError,
    lib.CB_EEXTERNAL: errors.ExternalOriginError,
    lib.CB_ECLOSED: errors.ClosedError,
}


def strerror(code):
    """The core's description of a return code."""
    return ffi.string(lib.cb_strerror(code)).decode()


def raise_for(code, what):
    """Raise the exception for a negative return code of the core.

    ``what`` names the operation and its object, e.g. ``"write to 'base'"``.
    """
    if code == lib.CB_ECHECKSUM:
        offset = lib.cb_bad_offset()  # this thread's: the call that failed
        exc = errors.ChecksumError(
            f"{what}: data at offset {offset} failed its checksum", code=code)
        exc.offset = offset
        raise exc
    message = f"{what}: {strerror(code)}"
    if code in (lib.CB_ECORRUPT, lib.CB_EVERSION, lib.CB_EEXTERNAL):
        # this thread's detail of the failure, as the core found it
        buf = ffi.new("char[]", 512)
        page = ffi.new("uint64_t *")
        if lib.cb_corrupt_detail(buf, 512, page):
            message = f"{what}: {ffi.string(buf).decode('utf-8', 'replace')}"
            exc = _CLASSES[code](message, code=code)
            exc.page = page[0] or None
            exc.offset = page[0] * 4096 if page[0] else None
            raise exc
    cls = _CLASSES.get(code)
    if cls is not None:
        raise cls(message, code=code)
    if code == lib.CB_ENOMEM:
        raise MemoryError(message)
    err = -code
    if err in (_errno.ENOSPC, _errno.EDQUOT):
        raise errors.PoolFullError(message, code=code)
    exc = errors.IOFailedError(err, message)
    exc.code = code
    raise exc
