"""The control socket's wire format: one JSON object per line, both ways.

A request is ``{"op": NAME, ...}``; a reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT, "type": EXCEPTION CLASS NAME}``.  Requests
are bounded (:data:`MAX_REQUEST` bytes) and checked field by field before
anything acts on them; replies are bounded on the client side
(:data:`MAX_REPLY`).  The socket lives in the pool directory
(:data:`SOCKET_NAME`), mode 0600, and the server also checks the peer's uid.
"""

from __future__ import annotations

import json
import os
import socket

from .. import errors

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
MAX_REPLY = 64 * 1024 * 1024
MAX_ARGS = 256


class ProtocolError(errors.CowblockError, ValueError):
    """A peer sent bytes that are not a valid request or reply."""


def socket_path(pool_dir: str) -> str:
    return os.path.join(pool_dir, SOCKET_NAME)


class _DirFd:
    """A short name for a long socket path: ``/proc/self/fd/N/control.sock``
    (sun_path holds 108 bytes; pool paths may be longer)."""

    def __init__(self, path: str):
        self.dir, self.base = os.path.split(os.path.abspath(path))
        self.fd = None

    def __enter__(self) -> str:
        full = os.path.join(self.dir, self.base)
        if len(os.fsencode(full)) < 100:
            return full
        self.fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self.fd}/{self.base}"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def bind(sock: socket.socket, path: str) -> None:
    with _DirFd(path) as short:
        sock.bind(short)


def connect(sock: socket.socket, path: str) -> None:
    with _DirFd(path) as short:
        sock.connect(short)


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def read_line(sock: socket.socket, limit: int) -> bytes | None:
    """One line (without its newline), at most ``limit`` bytes; None when the
    peer closed before sending anything."""
    buf = bytearray()
    while True:
        chunk = sock.recv(min(65536, limit + 1 - len(buf)))
        if not chunk:
            if buf:
                raise ProtocolError("the peer closed the connection in the middle of a line")
            return None
        buf += chunk
        nl = buf.find(b"\n")
        if nl >= 0:
            if nl + 1 != len(buf):
                raise ProtocolError("one line per message: bytes after the newline")
            return bytes(buf[:nl])
        if len(buf) > limit:
            raise ProtocolError(f"a message longer than {limit} bytes")


def decode(line: bytes) -> dict:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    except RecursionError:
        raise ProtocolError("not a JSON line: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    return obj


def field(req: dict, name: str, kind, *, required: bool = True, default=None):
    """``req[name]`` checked to be of ``kind`` (bool is not an int here)."""
    if name not in req:
        if required:
            raise ProtocolError(f"the request has no {name!r}")
        return default
    value = req[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"{name!r} must be of type {kind.__name__}")
    return value


def string_list(req: dict, name: str) -> list[str]:
    value = field(req, name, list)
    if len(value) > MAX_ARGS or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{name!r} must be a list of at most {MAX_ARGS} strings")
    if any("\0" in v for v in value):
        raise ProtocolError(f"{name!r} must not hold NUL characters")
    return value


# Exceptions a reply may name; anything else arrives as CowblockError.
_ERRORS = {cls.__name__: cls for cls in (
    errors.CowblockError, errors.InvalidArgumentError, errors.NotFoundError,
    errors.ExistsError, errors.ReadOnlyError, errors.PoolFullError, errors.CorruptError,
    errors.BusyError, errors.PoolFailedError, errors.LimitError, errors.ClosedError,
    ProtocolError)}


def error_reply(exc: BaseException) -> dict:
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "CowblockError"
    return {"ok": False, "error": str(exc) or type(exc).__name__, "type": name}


def raise_reply(reply: dict) -> dict:
    """The reply itself when it says ok; else the exception it names."""
    if reply.get("ok") is True:
        return reply
    cls = _ERRORS.get(reply.get("type"), errors.CowblockError)
    text = reply.get("error")
    raise cls(text if isinstance(text, str) else "the server refused the request")
