"""Per-thread capture of ``sys.stdout`` and ``sys.stderr``.

A server runs CLI commands for clients while its other threads go on: the
text a command prints must go back to the client that asked, not to the
server's log.  :func:`captured` swaps in a router (once, process-wide) that
sends what a thread prints to that thread's buffers while it captures, and
to the real streams otherwise.
"""

from __future__ import annotations

import io
import sys
import threading
from contextlib import contextmanager

_local = threading.local()
_install_lock = threading.Lock()


class _Router(io.TextIOBase):
    def __init__(self, which: str, real):
        self._which = which
        self._real = real

    def _target(self):
        bufs = getattr(_local, "buffers", None)
        return bufs[self._which] if bufs is not None else self._real

    def write(self, text):
        return self._target().write(text)

    def flush(self):
        self._target().flush()

    def isatty(self):
        return getattr(_local, "buffers", None) is None and self._real.isatty()

    def fileno(self):
        if getattr(_local, "buffers", None) is not None:
            raise io.UnsupportedOperation("a captured stream has no file descriptor")
        return self._real.fileno()

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router("stdout", sys.stdout)
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router("stderr", sys.stderr)


@contextmanager
def captured():
    """Within the block, this thread's prints land in the yielded
    ``{"stdout": StringIO, "stderr": StringIO}``."""
    _install()
    bufs = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    _local.buffers = bufs
    try:
        yield bufs
    finally:
        _local.buffers = None
