"""The control socket: a process that holds a pool answers the CLI.

One process holds a pool for writing (the map daemon, ``cowblock serve``).
While it does, ``cowblock`` commands on that pool reach it over a Unix
socket in the pool directory (:data:`protocol.SOCKET_NAME`) and it runs the
very command functions the CLI runs locally, on its open pool, sending back
their output and exit code.

- :class:`~cowblock.daemon.server.ControlServer`: what a long-running
  process starts with its open pool (``start()``/``stop()``), optionally
  with handlers of its own requests (the map daemon adds map/unmap/mapped);
- :mod:`~cowblock.daemon.client`: the CLI side (``request``, ``forward``);
- :mod:`~cowblock.daemon.protocol`: JSON lines, bounded and checked.
"""

from .protocol import SOCKET_NAME, ProtocolError, socket_path
from .server import ControlServer
from .client import forward, request, server_info

__all__ = ["ControlServer", "ProtocolError", "SOCKET_NAME", "forward", "request",
           "server_info", "socket_path"]
