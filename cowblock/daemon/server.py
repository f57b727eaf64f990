"""The server side of the control socket.

A process that holds a pool starts a :class:`ControlServer` with it::

    server = ControlServer(pool, kind="serve").start()   # socket in the pool dir
    ...
    server.stop()

Requests it answers by itself: ``ping`` (who holds the pool) and ``run``
(a ``cowblock`` command line, run by :func:`cowblock.cli.run_held` on the
open pool, one at a time).  ``handlers`` adds requests of the host's own
(``{"map": fn(request) -> reply dict}``); ``refuse(args)`` may veto a
command line that the host cannot run safely (it returns the reason).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from typing import Callable

from . import protocol
from .capture import captured
from .protocol import ProtocolError, field, string_list

log = logging.getLogger("cowblock.daemon")

MAX_CONNECTIONS = 64
READ_TIMEOUT = 30.0


class ControlServer:
    """Answers the CLI over ``control.sock`` in the pool directory."""

    def __init__(self, pool, *, kind: str, handlers: dict[str, Callable] | None = None,
                 refuse: Callable | None = None, path: str | None = None):
        self.pool = pool
        self.kind = kind
        self.pool_dir = os.path.abspath(str(pool.path))
        self.path = path or protocol.socket_path(self.pool_dir)
        self.handlers = dict(handlers or {})
        self.refuse = refuse
        self.started = time.time()
        self._sock = None
        self._thread = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._command_lock = threading.Lock()
        self._closing = False

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> "ControlServer":
        # The caller holds the pool for writing, so no other server can be
        # listening here: a socket file left behind is stale.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            protocol.bind(sock, self.path)
        finally:
            os.umask(old)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="cowblock-control",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and remove the socket (requests running finish)."""
        self._closing = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- connections ----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing:
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.05)
                continue
            if not self._slots.acquire(blocking=False):
                self._send(conn, {"ok": False, "type": "BusyError",
                                  "error": "the server has too many control connections"})
                conn.close()
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True,
                             name="cowblock-control-conn").start()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    def _connection(self, conn: socket.socket) -> None:
        try:
            if not self._peer_allowed(conn):
                self._send(conn, {"ok": False, "type": "CowblockError",
                                  "error": "permission denied: not the pool owner's uid"})
                return
            conn.settimeout(READ_TIMEOUT)
            while not self._closing:
                try:
                    line = protocol.read_line(conn, protocol.MAX_REQUEST)
                except ProtocolError as exc:
                    self._send(conn, protocol.error_reply(exc))
                    return
                except OSError:
                    return
                if line is None:
                    return
                self._send(conn, self.answer(line))
        finally:
            conn.close()
            self._slots.release()

    @staticmethod
    def _send(conn: socket.socket, reply: dict) -> None:
        try:
            conn.sendall(protocol.encode(reply))
        except OSError:
            pass

    # ---- requests -------------------------------------------------------------

    def answer(self, line: bytes) -> dict:
        """The reply to one request line (never raises)."""
        try:
            req = protocol.decode(line)
            op = field(req, "op", str)
            if op == "ping":
                return self.info()
            if op == "run":
                return self._run(req)
            handler = self.handlers.get(op)
            if handler is None:
                raise ProtocolError(f"this server ({self.kind}) has no request {op!r}")
            reply = handler(req)
            return {"ok": True, **reply}
        except Exception as exc:  # every failure goes back to the client as a reply
            log.debug("control request failed", exc_info=True)
            return protocol.error_reply(exc)

    def info(self) -> dict:
        return {"ok": True, "kind": self.kind, "pid": os.getpid(), "pool": self.pool_dir,
                "started": self.started}

    def _run(self, req: dict) -> dict:
        from .. import cli
        argv = string_list(req, "argv")
        cwd = field(req, "cwd", str, required=False)
        pool_arg = field(req, "pool", str, required=False)
        if cwd is not None and not os.path.isabs(cwd):
            raise ProtocolError("'cwd' must be an absolute path")
        # Commands run one at a time: they share the process (its working
        # directory, the model's state file) the way separate runs would not.
        with self._command_lock:
            here = os.getcwd()
            try:
                if cwd is not None:
                    os.chdir(cwd)
                with captured() as out:
                    code = cli.run_held(argv, self.pool, pool_arg=pool_arg,
                                        refuse=self.refuse, server=self.kind)
            finally:
                os.chdir(here)
        return {"ok": True, "exit": int(code), "stdout": out["stdout"].getvalue(),
                "stderr": out["stderr"].getvalue()}
