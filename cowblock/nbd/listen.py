"""Where an NBD server listens: Unix and TCP sockets, TLS, and the process
settings a long-running server wants."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import stat

from .. import errors

BACKLOG = 1024  # connections the kernel queues before the loop accepts them


def bind_unix(path, backlog=BACKLOG):
    """A listening Unix socket at ``path``, which exists only once it accepts
    (bound under a temporary name, then renamed).  A stale socket left by a
    killed server is replaced; a live one, or anything that is not a
    socket, is an error."""
    raw = os.fsencode(path)
    if len(raw) > 107:
        raise errors.InvalidArgumentError(
            f"socket path {path!r} is {len(raw)} bytes long; Unix sockets take at most 107 "
            "(use --socket with a shorter path)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise errors.ExistsError(f"{path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: left by a server that died
        else:
            raise errors.BusyError(f"a server is listening on {path!r} already")
        finally:
            probe.close()
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{os.getpid()}")
    if len(os.fsencode(tmp)) > 107:
        tmp = path  # no room for a longer name: bind in place
    with contextlib.suppress(FileNotFoundError):
        if tmp != path:
            os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        sock.listen(backlog)
        if tmp != path:
            os.rename(tmp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sock.setblocking(False)
    return sock


def bind_tcp(host, port, backlog=BACKLOG):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def parse_tcp(text):
    """HOST:PORT (``[v6]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise errors.InvalidArgumentError(
            f"--tcp needs HOST:PORT with a port from 0 to 65535, not {text!r}")
    return host.strip("[]"), int(port)


def tls_context(cert, key):
    """A server-side TLS context (TLS 1.2 or later) from PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidArgumentError(f"cannot load TLS certificate {cert!r} "
                                          f"and key {key!r}: {exc}") from None
    return ctx


def exit_with_parent():
    """Get SIGTERM when the parent process exits (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() == 1:  # the parent is gone already
        os.kill(os.getpid(), signal.SIGTERM)


def raise_fd_limit():
    """Let the process hold as many sockets as its hard limit allows."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
