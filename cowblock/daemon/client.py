"""The CLI side of the control socket."""

from __future__ import annotations

import os
import socket
import sys

from . import protocol

CONNECT_TIMEOUT = 5.0


class NoServer(Exception):
    """No process answers on the pool's control socket."""


def _connect(pool_dir: str, timeout: float | None) -> socket.socket:
    path = protocol.socket_path(pool_dir)
    if not os.path.exists(path):
        raise NoServer(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        protocol.connect(sock, path)
    except OSError as exc:  # a stale socket file: nobody listens
        sock.close()
        raise NoServer(path) from exc
    sock.settimeout(timeout)
    return sock


def request(pool_dir: str, req: dict, timeout: float | None = None) -> dict:
    """Send one request; the reply when it says ok, else its exception.
    :class:`NoServer` when nothing answers."""
    sock = _connect(pool_dir, timeout)
    with sock:
        sock.sendall(protocol.encode(req))
        line = protocol.read_line(sock, protocol.MAX_REPLY)
    if line is None:
        raise protocol.ProtocolError("the server closed the connection without a reply")
    return protocol.raise_reply(protocol.decode(line))


def server_info(pool_dir: str) -> dict | None:
    """What holds the pool (``kind``, ``pid``), or None when nothing answers."""
    try:
        return request(pool_dir, {"op": "ping"}, timeout=CONNECT_TIMEOUT)
    except (NoServer, OSError, protocol.ProtocolError):
        return None


def forward(pool_dir: str, argv: list[str], pool_arg: str | None = None) -> int | None:
    """Run a ``cowblock`` command line in the server that holds the pool.

    Prints the command's output as it would have appeared locally, plus one
    line on stderr saying the server ran it; returns its exit code, or None
    when no server answers (the caller then reports its own error).
    """
    info = server_info(pool_dir)
    if info is None:
        return None
    req = {"op": "run", "argv": list(argv), "cwd": os.getcwd()}
    if pool_arg is not None:
        req["pool"] = pool_arg
    try:
        reply = request(pool_dir, req)
    except NoServer:
        return None
    exit_code = reply.get("exit")
    out, err = reply.get("stdout"), reply.get("stderr")
    if not isinstance(exit_code, int) or not isinstance(out, str) or not isinstance(err, str):
        raise protocol.ProtocolError("the server's reply to 'run' is malformed")
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    kind, pid = info.get("kind"), info.get("pid")
    print(f"cowblock: the pool is held by a running {kind} server (pid {pid}): "
          f"the command ran there", file=sys.stderr)
    return exit_code
