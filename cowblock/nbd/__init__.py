"""NBD: serve cowblock devices to standard block clients (qemu, nbdcopy, nbd-client).

* :mod:`.protocol`: the wire format, encode and decode, no IO.
* :mod:`.negotiate`: the option phase of the handshake, a state machine with no IO.
* :mod:`.server`: the asyncio server over a pool (``cowblock serve``).
* :mod:`.listen`: its sockets (Unix, TCP), TLS and process settings.
"""
