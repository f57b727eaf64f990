"""Exceptions raised by cowblock.

Every library error derives from :class:`CowblockError`.  Errors that come
from the C core carry its code in ``code`` (None for errors raised in
Python).  Misuse errors also derive from the matching builtin, so
``except ValueError`` catches a bad argument the way it would for a file.
"""


class CowblockError(Exception):
    """Base of every cowblock error."""

    code = None

    def __init__(self, *args, code=None):
        super().__init__(*args)
        if code is not None:
            self.code = code


class InvalidArgumentError(CowblockError, ValueError, TypeError):
    """An argument is of the wrong type or out of range; nothing was changed."""


class NotFoundError(CowblockError, LookupError):
    """No device, snapshot, image, layer, container or volume of that name."""


class ExistsError(CowblockError):
    """Something of that name exists already."""


class ReadOnlyError(CowblockError):
    """The pool or the device is read-only."""


class PoolFullError(CowblockError):
    """The pool (or the file system under it) has no free block left.

    The write that could not be served did not happen; earlier data is
    intact and the pool stays usable: deleting devices makes room.  If the
    file system itself runs out while metadata is being committed, the pool
    enters the failed state instead (later calls raise PoolFailedError);
    reopen it once space is available: nothing flushed is lost.
    """


class CorruptError(CowblockError):
    """Metadata or data failed validation.

    The message says what was found, as the core saw it.  When one metadata
    page is to blame, ``page`` is its number and ``offset`` its byte offset
    in the metadata file (both None otherwise).
    """

    page = None
    offset = None


class ChecksumError(CorruptError):
    """Data read from the pool failed its checksum (pools made with ``checksums=True``).

    ``offset`` is the byte offset, in the device the call named, of the
    first damaged sub-block; nothing of the damaged bytes was returned.
    """

    offset = None


class UnsupportedVersionError(CorruptError):
    """The pool was written by a newer, incompatible version of cowblock."""


class BusyError(CowblockError):
    """The pool is in use by another process, or the object still has users."""


class PoolFailedError(CowblockError):
    """A metadata write failed; the pool refuses everything but close().

    Nothing that was flushed is lost: reopen the pool to continue.
    """


class StaleError(CowblockError):
    """A read-only opener's lease on the generation it reads has lapsed.

    Readers of a pool shared with a writer on other hosts (RADOS) register
    the generation they read under a lease the library renews.  Once the
    lease may have lapsed (the process stalled, the cluster was
    unreachable), the writer may already have reused what that generation
    reached, so reads are refused rather than served: call
    :meth:`cowblock.Pool.refresh` to move to the current commit and read on.
    """


class LimitError(CowblockError):
    """A fixed limit was reached (number of devices or external origins)."""


class ExternalOriginError(CowblockError, OSError):
    """The raw image file used as a device's external origin cannot be read."""


class ClosedError(CowblockError, ValueError):
    """The pool or device was closed."""


class IOFailedError(CowblockError, OSError):
    """An operating-system IO error (errno in ``errno``)."""
