"""Helpers of the NBD tests: a `cowblock serve` subprocess, the same pool
served by nbdkit with the cowblock plugin (csrc/nbdkit), an in-process
server on a thread, a raw-socket client built on the codec, and the skips
for missing tools."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cowblock.nbd import protocol as P
from tools import tool_env

SYSTEM_PYTHON = "/usr/bin/python3"


def need(*tools):
    """Skip unless every command is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (.ci/run installs qemu-utils, "
                    "libnbd-bin, nbdkit, python3-libnbd)")


def need_libnbd_python():
    """Skip unless the system python3 has libnbd's bindings (python3-libnbd)."""
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("python3-libnbd (the nbd module of the system python3) is not installed")


def client_env():
    """The environment for client tools: without the sanitizer runtime that
    .ci/asan preloads for the server (qemu and libnbd are not under test)."""
    return tool_env()


def run(cmd, timeout=120, check=True, **kw):
    kw.setdefault("env", client_env())
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode:
        shown = [c if len(c) < 200 else c[:60] + "..." for c in map(str, cmd)]
        raise AssertionError(f"{shown!r} exited {r.returncode}:\nstdout: {r.stdout}\n"
                             f"stderr: {r.stderr}")
    return r


def libnbd(script, *args, timeout=120, check=True):
    """Run ``script`` under the system python3 with ``import nbd`` (libnbd)."""
    return run([SYSTEM_PYTHON, "-c", "import nbd, sys\n" + script, *map(str, args)],
               timeout=timeout, check=check)


def wait_for_socket(path, proc=None, timeout=30):
    """Wait until a server answers on ``path`` with the NBD greeting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(5)
                s.connect(path)
                if P.parse_greeting(_recv_exactly(s, P.GREETING_SIZE)) is not None:
                    return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise AssertionError(f"no NBD server on {path} after {timeout} s")


class ServerProcess:
    """``python -m cowblock --pool POOL serve ...`` in a subprocess."""

    def __init__(self, pool_path, sock, *extra):
        self.pool_path = str(pool_path)
        self.socket = str(sock)
        self.extra = list(extra)
        self.proc = None

    def command(self):
        return [sys.executable, "-m", "cowblock", "--pool", self.pool_path, "serve",
                "--socket", self.socket, "--exit-with-parent", *self.extra]

    def env(self):
        return None  # the test's own: the server is under test, sanitizers and all

    def start(self):
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=self.env())
        self.log = []
        self._log_cond = threading.Condition()
        proc = self.proc

        def collect():
            for line in proc.stderr:
                with self._log_cond:
                    self.log.append(line)
                    self._log_cond.notify_all()

        self._collector = threading.Thread(target=collect, daemon=True)
        self._collector.start()
        wait_for_socket(self.socket, self.proc)
        return self

    def pid(self):
        return self.proc.pid

    def wait_log(self, text, timeout=30):
        """Wait for a line of the server's stderr that contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while not any(text in line for line in self.log):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"server never logged {text!r}: {self.log}")
                self._log_cond.wait(left)

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.socket}"

    def send_signal(self, sig):
        os.kill(self.pid(), sig)

    def stop(self, sig=signal.SIGTERM, timeout=60, signalled=False):
        """Stop by pid (``signalled``: the signal was sent already, only
        wait); the exit code (negative: killed by a signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and not signalled:
            self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"server did not exit within {timeout} s of signal {sig}")
        self.stdout = self.proc.stdout.read()
        self._collector.join(10)
        self.stderr = "".join(self.log)
        self.proc.stdout.close()
        self.proc.stderr.close()
        rc, self.proc = self.proc.returncode, None
        return rc

    def kill(self):
        return self.stop(signal.SIGKILL)


class NbdkitProcess(ServerProcess):
    """``nbdkit --exit-with-parent -U SOCKET -P PIDFILE cowblock-plugin.so
    pool=POOL`` in the foreground, stopped by the pid in its pid file.
    ``-v`` makes the plugin's debug lines (the commit after a client left)
    reach the log, but not under ``.ci/asan``: nbdkit 1.32 with ``-v`` and
    the sanitizer runtime preloaded hangs in its exit after unloading the
    plugin, so there the log has nbdkit's errors only (``wait_log`` skips)."""

    def __init__(self, plugin, pool_path, sock, options=(), params=()):
        super().__init__(pool_path, sock)
        self.plugin = str(plugin)
        self.pidfile = str(sock) + ".pid"
        self.options, self.params = list(options), list(params)
        self.verbose = not os.environ.get("COWBLOCK_SANITIZE")

    def command(self):
        return ["nbdkit", "--exit-with-parent", "-f", *(["-v"] if self.verbose else []),
                "-U", self.socket,
                "-P", self.pidfile, *self.options, self.plugin, f"pool={self.pool_path}",
                *self.params]

    def env(self):
        return plugin_env()

    def start(self):
        super().start()
        deadline = time.monotonic() + 30
        while not self._pid() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self._pid() == self.proc.pid, f"pid file {self.pidfile}: {self._pid()}"
        return self

    def wait_log(self, text, timeout=30):
        if not self.verbose:
            pytest.skip("nbdkit's debug log needs -v, which hangs nbdkit's exit under "
                        ".ci/asan")
        super().wait_log(text, timeout)

    def _pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def pid(self):
        """The pid nbdkit wrote (start checked that it is the process's)."""
        pid = self._pid()
        assert pid > 0, f"no pid in {self.pidfile}"  # never kill(0): the process group
        return pid


def plugin_env():
    """nbdkit's environment.  Under ``.ci/asan`` (COWBLOCK_SANITIZE set) the
    plugin is built with the sanitizers and, as with Python, the runtime must
    come first in the process: nbdkit gets the preload that the tools do
    not."""
    if os.environ.get("COWBLOCK_SANITIZE"):
        return dict(os.environ)
    return client_env()


_plugin = {}


def build_plugin():
    """Build csrc/nbdkit's plugin once per session into a temp dir (removed
    at exit); skip when nbdkit or its plugin header is missing."""
    if "path" not in _plugin:
        if shutil.which("nbdkit") is None:
            _plugin["skip"] = "nbdkit not installed (.ci/run installs nbdkit)"
        elif not os.path.exists("/usr/include/nbdkit-plugin.h"):
            _plugin["skip"] = ("nbdkit-plugin.h not installed (.ci/run installs "
                               "nbdkit-plugin-dev)")
        else:
            out = tempfile.mkdtemp(prefix="cowblock-nbdkit-")
            import atexit
            atexit.register(shutil.rmtree, out, True)
            build = Path(__file__).resolve().parent.parent / "csrc" / "nbdkit" / "build.py"
            r = subprocess.run([sys.executable, str(build), "--out", out],
                               capture_output=True, text=True, env=client_env())
            if r.returncode:
                raise AssertionError(f"building the nbdkit plugin failed:\n{r.stderr}")
            _plugin["skip"] = None
        _plugin["path"] = None if _plugin["skip"] else os.path.join(out, "cowblock-plugin.so")
    if _plugin["skip"]:
        pytest.skip(_plugin["skip"])
    return _plugin["path"]


SERVERS = ("serve", "nbdkit")


def start_server(kind, pool_path, sock, readonly=False):
    """A running server of ``kind`` (one of SERVERS) on ``pool_path``:
    ``cowblock serve -v`` or nbdkit with the plugin, every export read-only
    with ``readonly`` (``--readonly``; nbdkit's ``-r`` and the plugin's
    ``readonly=true``, which opens the pool read-only)."""
    if kind == "serve":
        server = ServerProcess(pool_path, sock, "-v", *(["--readonly"] if readonly else []))
    elif kind == "nbdkit":
        server = NbdkitProcess(build_plugin(), pool_path, sock,
                               options=["-r"] if readonly else [],
                               params=["readonly=true"] if readonly else [])
    else:
        raise ValueError(f"no server {kind!r}: one of {SERVERS}")
    server.kind = kind
    return server.start()


class ThreadServer:
    """A :class:`cowblock.nbd.server.Server` on its own loop in a thread."""

    def __init__(self, pool, sock, **kw):
        from cowblock.nbd.server import Server

        self.server = Server(pool, **kw)
        self.socket = str(sock)
        self.tcp_address = None
        self._ready = threading.Event()
        self._error = None
        self._thread = None
        self._loop = None

    def start(self, tcp=None):
        def main():
            async def go():
                self._loop = asyncio.get_running_loop()
                await self.server.serve(self.socket, tcp, lambda a: self._ready.set())
            try:
                asyncio.run(go())
            except BaseException as exc:  # reported by stop()
                self._error = exc
                self._ready.set()
        self._thread = threading.Thread(target=main, name="nbd-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error:
            raise AssertionError(f"server did not start: {self._error!r}")
        return self

    def stop(self, timeout=60):
        self._loop.call_soon_threadsafe(self.server.stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error:
            raise self._error


def _recv_exactly(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class RawClient:
    """An NBD client over a plain socket, built from the codec, that sends
    exactly what a test tells it to (including what no client should)."""

    def __init__(self, path=None, timeout=30, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)  # blocking: waits while the listen queue is full
            sock.settimeout(timeout)
        self.sock = sock
        self.structured = False
        self.handles = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        return _recv_exactly(self.sock, n)

    def closed_by_peer(self, timeout=10):
        """True when the server ends the connection (EOF or reset) in time."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    # -- handshake ----------------------------------------------------------

    def greet(self, flags=P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES):
        server_flags = P.parse_greeting(self.recv(P.GREETING_SIZE))
        self.send(P.encode_client_flags(flags))
        return server_flags

    def option(self, opt, data=b""):
        """Send an option; its replies [(reply type, data)] up to the final one."""
        self.send(P.encode_option(opt, data))
        return self.replies(opt)

    def replies(self, opt):
        out = []
        while True:
            ropt, reply, length = P.parse_option_reply_header(self.recv(P.OPTION_REPLY_HEADER_SIZE))
            assert ropt == opt, f"reply to option {ropt}, expected {opt}"
            out.append((reply, self.recv(length) if length else b""))
            if reply not in (P.REP_SERVER, P.REP_INFO, P.REP_META_CONTEXT):
                return out

    def go(self, name, structured=True, meta=True, infos=(P.INFO_BLOCK_SIZE,)):
        """Negotiate into transmission; (size, transmission flags)."""
        self.greet()
        if structured:
            assert self.option(P.OPT_STRUCTURED_REPLY)[-1][0] == P.REP_ACK
            self.structured = True
            if meta:
                reps = self.option(P.OPT_SET_META_CONTEXT, P.encode_meta_context_request(
                    name, [P.BASE_ALLOCATION]))
                assert reps[-1][0] == P.REP_ACK, reps
        reps = self.option(P.OPT_GO, P.encode_export_request(name, infos))
        assert reps[-1][0] == P.REP_ACK, reps
        for reply, data in reps:
            if reply == P.REP_INFO:
                kind, value = P.parse_info(data)
                if kind == P.INFO_EXPORT:
                    return value
        raise AssertionError("no NBD_INFO_EXPORT")

    # -- transmission -----------------------------------------------------------

    def request(self, kind, offset=0, length=0, flags=0, data=b""):
        self.handles += 1
        self.send(P.encode_request(kind, self.handles, offset, length, flags, data))
        return self.handles

    def reply(self, read_length=0):
        """(error, message, data, chunks) of the next reply (all its chunks).
        ``read_length``: the data length of a simple read reply, or a dict
        of them by handle when several requests are in flight."""
        head = self.recv(4)
        magic = P.parse_reply_magic(head)
        if magic == P.SIMPLE_REPLY_MAGIC:
            error, handle = P.parse_simple_reply(head + self.recv(P.SIMPLE_REPLY_SIZE - 4))
            if isinstance(read_length, dict):  # handle -> length of a read's data
                read_length = read_length.get(handle, 0)
            data = self.recv(read_length) if read_length and not error else b""
            return {"handle": handle, "error": error, "message": "", "data": data,
                    "chunks": []}
        out = {"error": 0, "message": "", "data": bytearray(), "chunks": []}
        rest = head + self.recv(P.STRUCTURED_HEADER_SIZE - 4)
        while True:
            flags, kind, handle, length = P.parse_chunk_header(rest)
            payload = self.recv(length) if length else b""
            out["handle"] = handle
            out["chunks"].append((kind, payload))
            if kind in (P.REPLY_TYPE_ERROR, P.REPLY_TYPE_ERROR_OFFSET):
                out["error"], out["message"], _ = P.parse_error_chunk(kind, payload)
            elif kind == P.REPLY_TYPE_OFFSET_DATA:
                out["data"] += payload[8:]
            if flags & P.REPLY_FLAG_DONE:
                out["data"] = bytes(out["data"])
                return out
            rest = self.recv(P.STRUCTURED_HEADER_SIZE)

    def call(self, kind, offset=0, length=0, flags=0, data=b""):
        self.request(kind, offset, length, flags, data)
        return self.reply(length if kind == P.CMD_READ else 0)
