"""An NBD server over a pool: every device is an export under its own name.

An asyncio loop moves bytes between the wire format (:mod:`.protocol`,
:mod:`.negotiate`) and :class:`cowblock.Device` objects; every call into the
core runs on a thread pool (cffi drops the GIL), so a read that misses the
page cache or a commit never stalls the other clients.

Durability: ``NBD_CMD_FLUSH`` and ``NBD_CMD_FLAG_FUA`` are the pool's
flush (one commit serves every flush that was waiting when it started), and
their effect is visible on every connection (``NBD_FLAG_CAN_MULTI_CONN``):
all connections share one pool.  A client that disconnects after writing
gets its writes committed; on SIGTERM or SIGINT the server stops reading
requests, answers those in flight, commits and closes the pool.

Nothing a client sends is trusted (see :mod:`.protocol`).  Each connection
is bounded: requests in flight, bytes in flight (and a bound over all
connections), option data, handshake time; the number of connections is
bounded and a client over the bound is told so (``NBD_REP_ERR_POLICY``).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import threading

import numpy as np

from .. import errors
from . import protocol as P
from .listen import BACKLOG, bind_tcp, bind_unix, raise_fd_limit
from .negotiate import ALLOCATION_ID, Action, BlockSizes, Export, Negotiation

log = logging.getLogger("cowblock.nbd")

DEFAULT_SOCKET = "nbd.sock"
SMALL_READ = 64 << 10   # reads up to this size are served in batches
READ_JOBS = 2           # workers serving one connection's small reads at once
READ_BATCH = 64         # small reads one worker takes at a time
UNIX_SNDBUF = 4 << 20   # asked for; the kernel caps it (net.core.wmem_max)
_ZEROS = bytes(1 << 20)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server lets its clients use."""

    max_connections: int = 512
    requests_per_connection: int = 64      # in flight on one connection
    bytes_per_connection: int = 64 << 20   # read and write payloads in flight
    bytes_total: int = 512 << 20           # the same over all connections
    max_request: int = 32 << 20            # READ / WRITE / CACHE length (NBD_INFO_BLOCK_SIZE)
    max_option: int = 64 << 10             # option data in the handshake
    handshake_timeout: float = 30.0        # seconds from connect to transmission
    workers: int = 16                      # threads calling the core


# ----------------------------------------------------------------------------
# Exports


class PoolCatalogue:
    """The exports of a pool: every device, looked up when a client asks, so
    that devices made after the server started are there at once.  Called
    from the worker threads."""

    def __init__(self, pool, readonly=False):
        self.pool = pool
        self.readonly = readonly

    def names(self):
        return self.pool.devices()

    def lookup(self, name):
        try:
            dev = self.pool.device(name)
        except (errors.NotFoundError, errors.InvalidArgumentError):
            return None
        readonly = self.readonly or dev.readonly
        desc = f"cowblock device, {dev.size} bytes{', read-only' if readonly else ''}"
        return Export(name=name, size=dev.size, readonly=readonly, description=desc, target=dev)


def block_sizes(pool, limits):
    """Minimum 1 (the core takes any offset and length), preferred the
    copy-up unit (4 KiB, or block/64 for blocks over 256 KiB: writes of it
    into shared blocks copy nothing more), maximum ``limits.max_request``."""
    preferred = max(4096, pool.block_size // 64)
    return BlockSizes(minimum=1, preferred=preferred, maximum=limits.max_request)


def nbd_error(exc):
    """The NBD error (and message) for an exception raised by a device call."""
    if isinstance(exc, errors.ReadOnlyError):
        return P.EPERM, str(exc)
    if isinstance(exc, errors.PoolFullError):
        return P.ENOSPC, str(exc)
    if isinstance(exc, errors.ClosedError):
        return P.ESHUTDOWN, str(exc)
    if isinstance(exc, errors.InvalidArgumentError):
        return P.EINVAL, str(exc)
    if isinstance(exc, MemoryError):
        return P.ENOMEM, "out of memory"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return P.ENOSPC, str(exc)
    return P.EIO, str(exc) or type(exc).__name__


class _Refuse(Exception):
    """A request answered with an NBD error that is not an exception of the core."""

    def __init__(self, error, message):
        super().__init__(message)
        self.error = error


class _Hangup(Exception):
    """End this connection (after what was written reaches the client)."""


# ----------------------------------------------------------------------------
# Shared helpers: byte budgets and the flush that many requests share


class Budget:
    """Bytes that requests in flight may hold; ``acquire`` waits for room
    (first come, first served), which stops reading from that client."""

    def __init__(self, total):
        self.total = total
        self.free = total
        self._waiters = []

    def try_acquire(self, n):
        """Take ``n`` at once if there is room and nobody waits; True if taken."""
        if not self._waiters and self.free >= n:
            self.free -= n
            return True
        return False

    async def acquire(self, n):
        n = min(n, self.total)
        if self.try_acquire(n):
            return n
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters = [w for w in self._waiters if w[1] is not fut]
                self._wake()
            raise
        return n

    def release(self, n):
        self.free += n
        self._wake()

    def _wake(self):
        while self._waiters and self._waiters[0][0] <= self.free:
            n, fut = self._waiters.pop(0)
            if not fut.done():
                self.free -= n
                fut.set_result(None)


class Flusher:
    """Pool flushes shared by the requests that wait for one.

    A caller needs a flush that *starts* after its call (one that started
    before may miss writes that completed since).  While one runs, later
    callers wait for it and then share the next one: N concurrent FUA
    writes cost about two commits, not N.
    """

    def __init__(self, pool, run):
        self._pool = pool
        self._run = run
        self._started = 0
        self._done = 0
        self._current = None  # (task, generation)

    async def flush(self):
        if self._pool.readonly:
            return
        target = self._started + 1
        while self._done < target:
            if self._current is None:
                self._started += 1
                gen = self._started
                self._current = (asyncio.get_running_loop().create_task(self._commit(gen)), gen)
            task, gen = self._current
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                if gen >= target:
                    raise
                # an earlier flush failed: ours is the next one

    async def _commit(self, gen):
        try:
            await self._run(self._pool.flush)
            self._done = max(self._done, gen)
        finally:
            if self._current is not None and self._current[1] == gen:
                self._current = None


# ----------------------------------------------------------------------------
# One client


class Connection:
    """One client: the handshake, then its requests, then its commit."""

    def __init__(self, server, reader, writer, *, tls=None, refusal=None):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.refusal = refusal
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix client"
        self.task = None
        self.stopping = False
        self._interruptible = True   # in the handshake, or waiting for a request header
        self.writes_done = 0
        self.writes_flushed = 0
        self.export = None
        self._session = None

    # -- life -----------------------------------------------------------------

    def stop(self):
        """Server shutdown: stop reading requests; those in flight finish."""
        self.stopping = True
        if self._interruptible and self.task is not None:
            self.task.cancel()

    async def run(self):
        self.task = asyncio.current_task()
        try:
            chosen = await asyncio.wait_for(self._handshake(), self.server.limits.handshake_timeout)
            if chosen is not None:
                await self._transmission(*chosen)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        except asyncio.TimeoutError:
            log.warning("%s: no transmission after %.0f s of handshake, closing", self.peer,
                        self.server.limits.handshake_timeout)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            log.info("%s: connection ended: %s", self.peer, exc or type(exc).__name__)
        except P.ProtocolError as exc:
            log.warning("%s: protocol error, closing: %s", self.peer, exc)
        except _Hangup as exc:
            log.info("%s: closing: %s", self.peer, exc)
        except Exception:  # a defect here must not pass in silence, nor end the server
            log.exception("%s: unexpected error, closing the connection", self.peer)
        finally:
            await self._commit_on_exit()
            await self._close()

    async def _commit_on_exit(self):
        unflushed = self.writes_done - self.writes_flushed
        if unflushed > 0:
            try:
                await self.server.flusher.flush()
            except Exception as exc:  # nothing left to tell the client: say it here
                log.error("%s: commit after disconnect failed: %s", self.peer, exc)
            else:
                log.info("%s: committed %d unflushed writes after the client left",
                         self.peer, unflushed)

    async def _close(self):
        w = self.writer
        with contextlib.suppress(Exception):
            if not w.is_closing():
                await asyncio.wait_for(w.drain(), 5)
                if w.can_write_eof():
                    w.write_eof()
                # Read what the client still sends (briefly) so that closing
                # does not reset the connection before it read our last reply.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._discard(64 << 20), 2)
        with contextlib.suppress(Exception):
            w.close()
            await asyncio.wait_for(w.wait_closed(), 2)

    async def _discard(self, limit):
        while limit > 0:
            chunk = await self.reader.read(min(limit, 1 << 20))
            if not chunk:
                return
            limit -= len(chunk)

    def _send(self, *parts):
        if not self.writer.is_closing():
            self.writer.writelines(parts)

    # -- handshake --------------------------------------------------------------

    async def _handshake(self):
        srv = self.server
        self._send(P.encode_greeting())
        await self.writer.drain()
        client_flags = P.parse_client_flags(await self.reader.readexactly(P.CLIENT_FLAGS_SIZE))
        neg = Negotiation(srv.catalogue, client_flags, tls=self.tls is not None,
                          block_sizes=srv.block_sizes, refusal=self.refusal,
                          shutting_down=lambda: srv.stopping)
        while True:
            opt, length = P.parse_option_header(
                await self.reader.readexactly(P.OPTION_HEADER_SIZE))
            if length > srv.limits.max_option:
                self._send(P.encode_option_error(
                    opt, P.REP_ERR_TOO_BIG, f"{P.option_name(opt)}: {length} bytes of data; "
                    f"this server takes at most {srv.limits.max_option}"))
                raise _Hangup(f"{P.option_name(opt)} with {length} bytes of data")
            data = await self.reader.readexactly(length) if length else b""
            out = await srv.run(neg.handle, opt, data)
            self._send(*out.replies)
            await self.writer.drain()
            if out.action is Action.CONTINUE:
                continue
            if out.action is Action.STARTTLS:
                await self.writer.start_tls(self.tls)
                neg.tls_started()
                continue
            if out.action is Action.CLOSE:
                raise _Hangup(out.reason)
            return out.export, out.session

    # -- transmission -------------------------------------------------------------

    async def _transmission(self, export, session):
        self.export = export
        self._session = session
        self._data_lock = asyncio.Lock()
        self._unsent = None  # the last read buffer, until the transport has sent it
        self._reads = collections.deque()  # small reads waiting for a worker: (req, header, done)
        self._read_jobs = 0                # workers taking from it
        # drain() returns only once the buffer is empty (see _reply_data)
        self.writer.transport.set_write_buffer_limits(high=0)
        log.info("%s: serving %r%s", self.peer, export.name, " read-only" if export.readonly else "")
        limits = self.server.limits
        slots = asyncio.Semaphore(limits.requests_per_connection)
        mine = Budget(max(limits.bytes_per_connection, limits.max_request))
        tasks = set()
        self._interruptible = True  # a request half read when the server stops is dropped
        self.server._serving_add(export.name, 1)
        try:
            while not self.stopping:
                await slots.acquire()
                try:
                    req, payload, charge = await self._next_request(mine)
                except BaseException:
                    slots.release()
                    raise
                if req is None:  # NBD_CMD_DISC
                    slots.release()
                    break
                error, message = P.check_request(req, session)
                if error:
                    self._release(slots, mine, charge)
                    self._reply_error(req, error, message)
                    continue
                if req.type == P.CMD_READ and 0 < req.length <= SMALL_READ:
                    self._queue_read(req, tasks, lambda _f, c=charge: self._release(slots, mine, c))
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._serve(req, payload, export.target))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t, c=charge: self._release(slots, mine, c))
        finally:
            self._interruptible = False
            await self._finish(tasks)
            self.server._serving_add(export.name, -1)

    async def _next_request(self, mine):
        """(request, write payload, bytes charged) of the next request; None at NBD_CMD_DISC."""
        limits = self.server.limits
        req = P.parse_request(await self.reader.readexactly(P.REQUEST_SIZE))
        if req.type == P.CMD_DISC:
            log.info("%s: NBD_CMD_DISC", self.peer)
            return None, b"", 0
        if req.type == P.CMD_WRITE and req.length > limits.max_request:
            # Its payload cannot be skipped cheaply: answer, then hang up.
            self._reply_error(req, P.EINVAL, f"NBD_CMD_WRITE of {req.length} bytes exceeds "
                              f"the maximum block size {limits.max_request}")
            raise _Hangup(f"NBD_CMD_WRITE payload of {req.length} bytes")
        charge = req.length if req.type in (P.CMD_READ, P.CMD_WRITE) and \
            req.length <= limits.max_request else 0
        if not charge:
            return req, b"", 0
        if not mine.try_acquire(charge):
            await mine.acquire(charge)
        try:
            if not self.server.budget.try_acquire(charge):
                await self.server.budget.acquire(charge)
        except BaseException:
            mine.release(charge)
            raise
        try:
            payload = b""
            if req.type == P.CMD_WRITE:
                payload = await self.reader.readexactly(req.length)
        except BaseException:
            mine.release(charge)
            self.server.budget.release(charge)
            raise
        return req, payload, charge

    # -- small reads, in batches ---------------------------------------------------
    #
    # Under load, small reads arrive faster than one thread hop each can
    # serve them: each hop wakes a worker, hands the GIL back and forth and
    # sends one reply.  So they queue, and a worker takes every read queued
    # when it starts (up to READ_JOBS workers per connection at once) and
    # hands all the replies back in one call, sent with one write.

    def _queue_read(self, req, tasks, release):
        done = self.server._loop.create_future()
        tasks.add(done)
        done.add_done_callback(tasks.discard)
        done.add_done_callback(release)
        if self._session.structured:
            header = P.encode_data_chunk_header(req.handle, req.offset, req.length)
        else:
            header = P.encode_simple_reply(req.handle)
        self._reads.append((req, header, done))
        if self._read_jobs < READ_JOBS:
            self._read_jobs += 1
            self.server._executor.submit(self._read_job, self.export.target)

    def _read_job(self, dev):
        """On a worker: serve the small reads queued now."""
        items, results = [], []
        while len(items) < READ_BATCH:
            try:
                items.append(self._reads.popleft())
            except IndexError:
                break
        for req, header, _ in items:
            try:
                results.append(_read(dev, req.offset, req.length, None, header))
            except Exception as exc:
                results.append(exc)
        self.server._loop.call_soon_threadsafe(self._reads_done, dev, items, results)

    def _reads_done(self, dev, items, results):
        """On the loop: send the replies of one batch."""
        self._read_jobs -= 1
        if self._reads and self._read_jobs < READ_JOBS:  # queued while the batch ran
            self._read_jobs += 1
            self.server._executor.submit(self._read_job, dev)
        out = []
        for (req, _, _), result in zip(items, results):
            if isinstance(result, Exception):
                error, message = nbd_error(result)
                if error == P.EIO:
                    log.error("%s: NBD_CMD_READ on %r failed: %s", self.peer,
                              self.export.name, message)
                if self._session.structured:
                    out.append(P.encode_error_chunk(req.handle, error, message))
                else:
                    out.append(P.encode_simple_reply(req.handle, error))
            else:
                out.append(memoryview(result).cast("B"))
        w = self.writer
        if out and not w.is_closing():
            w.writelines(out)
        dones = [done for _, _, done in items]
        if not w.is_closing() and w.transport.get_write_buffer_size():
            # the client reads slower than we answer: hold the requests'
            # slots until it has caught up
            self.server._loop.create_task(self._settle_after_drain(dones))
        else:
            for done in dones:
                if not done.done():
                    done.set_result(None)

    async def _settle_after_drain(self, dones):
        with contextlib.suppress(Exception):
            await self.writer.drain()
        for done in dones:
            if not done.done():
                done.set_result(None)

    async def _finish(self, tasks):
        """Let the requests in flight answer; a client that stops reading its
        replies gets a bounded wait, then its connection is cut."""
        if not tasks:
            return
        _, pending = await asyncio.wait(set(tasks), timeout=10 if self.stopping else 60)
        if pending:
            log.warning("%s: %d replies not read by the client; dropping the connection",
                        self.peer, len(pending))
            self.writer.transport.abort()
            await asyncio.gather(*pending, return_exceptions=True)

    def _release(self, slots, mine, charge):
        if charge:
            mine.release(charge)
            self.server.budget.release(charge)
        slots.release()

    async def _serve(self, req, payload, dev):
        srv = self.server
        try:
            kind = req.type
            if kind == P.CMD_READ:
                if not req.length:
                    self._reply_empty_read(req)
                else:
                    if self._session.structured:
                        header = P.encode_data_chunk_header(req.handle, req.offset, req.length)
                    else:
                        header = P.encode_simple_reply(req.handle)
                    reply = await srv.run(_read, dev, req.offset, req.length, srv.buffers, header)
                    await self._send_read(reply)
            elif kind == P.CMD_BLOCK_STATUS:
                one = bool(req.flags & P.CMD_FLAG_REQ_ONE)
                extents = await srv.run(_allocation, dev, req.offset, req.length, one)
                self._send(P.encode_block_status_chunk(req.handle, ALLOCATION_ID, extents))
            else:
                if kind == P.CMD_WRITE:
                    await srv.run(dev.write, req.offset, payload)
                elif kind == P.CMD_TRIM:
                    await srv.run(dev.discard, req.offset, req.length)
                elif kind == P.CMD_WRITE_ZEROES:
                    await self._write_zeroes(req, dev)
                elif kind == P.CMD_CACHE:
                    await srv.run(_cache, dev, req.offset, req.length)
                elif kind == P.CMD_FLUSH:
                    await self._flush()
                if kind in (P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES):
                    self.writes_done += 1
                    if req.flags & P.CMD_FLAG_FUA:
                        await self._flush()
                self._send(P.encode_simple_reply(req.handle))
        except _Refuse as exc:
            self._reply_error(req, exc.error, str(exc))
        except Exception as exc:
            error, message = nbd_error(exc)
            if error == P.EIO:
                log.error("%s: %s on %r failed: %s", self.peer, P.command_name(req.type),
                          self.export.name, message)
            self._reply_error(req, error, message)
        if self.writer.transport.get_write_buffer_size():
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def _flush(self):
        covered = self.writes_done
        await self.server.flusher.flush()
        self.writes_flushed = max(self.writes_flushed, covered)

    async def _write_zeroes(self, req, dev):
        if req.flags & P.CMD_FLAG_NO_HOLE:
            if req.flags & P.CMD_FLAG_FAST_ZERO:
                raise _Refuse(P.ENOTSUP, "zeros without a hole are written like data: "
                              "not faster than NBD_CMD_WRITE")
            await self.server.run(_write_zeros, dev, req.offset, req.length)
        else:  # a discard reads as zeros and allocates nothing: always fast
            await self.server.run(dev.discard, req.offset, req.length)

    # -- replies ------------------------------------------------------------------

    def _reply_empty_read(self, req):
        if self._session.structured:
            self._send(P.encode_none_chunk(req.handle))
        else:
            self._send(P.encode_simple_reply(req.handle))

    async def _send_read(self, reply):
        """Send a read's reply (header and data in one buffer).

        One at a time, written when the transport's buffer is empty: the
        socket then takes the bytes straight from our buffer and only what
        it cannot take at once is copied (replies written while others wait
        would each be copied into the transport, and its buffer's front
        trimmed at every send).  The buffer is reused once the transport
        holds nothing of it."""
        w = self.writer
        if not self._data_lock.locked() and not w.transport.get_write_buffer_size() \
                and self._unsent is None:
            if not w.is_closing():  # the common case: nothing queued, write at once
                w.write(memoryview(reply).cast("B"))
                if w.transport.get_write_buffer_size():
                    self._unsent = reply
                else:
                    self.server.buffers.put(reply)
            return
        async with self._data_lock:
            if w.transport.get_write_buffer_size():
                await w.drain()
            if self._unsent is not None and not w.transport.get_write_buffer_size():
                self.server.buffers.put(self._unsent)
                self._unsent = None
            if w.is_closing():
                return
            w.write(memoryview(reply).cast("B"))
            if w.transport.get_write_buffer_size():
                self._unsent = reply
            else:
                self.server.buffers.put(reply)

    def _reply_error(self, req, error, message):
        if self._session.structured:
            self._send(P.encode_error_chunk(req.handle, error, message))
        else:
            self._send(P.encode_simple_reply(req.handle, error))


def _settle(fut, result, exc):
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


# Core calls, run on the worker threads.

class Buffers:
    """Read buffers kept for reuse, by size.  A fresh buffer of a few hundred
    KiB is mapped, faulted in and zeroed by the kernel at every read; one
    taken from here was used before.  A buffer comes back only once the
    transport holds no reference to it (its write buffer is empty).
    Thread-safe: deque appends and pops are atomic."""

    def __init__(self, per_size=32, max_size=4 << 20):
        self.per_size = per_size
        self.max_size = max_size
        self._free = {}

    def get(self, n):
        q = self._free.get(n)
        if q:
            try:
                return q.pop()
            except IndexError:
                pass
        # numpy's empty() does not clear: the read fills every byte
        return np.empty(n, dtype=np.uint8)

    def put(self, buf):
        n = len(buf)
        if n > self.max_size:
            return
        q = self._free.get(n)
        if q is None:
            if len(self._free) > 64:  # many odd sizes: start over
                self._free.clear()
            q = self._free.setdefault(n, collections.deque())
        if len(q) < self.per_size:
            q.append(buf)


def _read(dev, offset, length, buffers, header):
    """The reply to a read: ``header`` then the data, in one buffer, so that
    it goes out in one send.  ``buffers`` (a :class:`Buffers`) to reuse
    one, or None for a fresh one (small reads: malloc serves those cheaply)."""
    h = len(header)
    buf = buffers.get(h + length) if buffers is not None else np.empty(h + length, np.uint8)
    buf[:h] = np.frombuffer(header, dtype=np.uint8)
    try:
        dev.readinto(offset, buf[h:])
    except BaseException:
        if buffers is not None:
            buffers.put(buf)
        raise
    return buf


def _cache(dev, offset, length):
    """NBD_CMD_CACHE: read the range (into the page cache), keep nothing."""
    scratch = bytearray(min(length, 1 << 20))
    pos, end = offset, offset + length
    while pos < end:
        n = min(len(scratch), end - pos)
        dev.readinto(pos, memoryview(scratch)[:n])
        pos += n


def _write_zeros(dev, offset, length):
    pos, end = offset, offset + length
    while pos < end:
        n = min(len(_ZEROS), end - pos)
        dev.write(pos, memoryview(_ZEROS)[:n])
        pos += n


def _allocation(dev, offset, length, req_one):
    runs, end = dev.extents_range(offset, length, 1 if req_one else 256)
    return P.allocation_extents(offset, runs, end, req_one)


# ----------------------------------------------------------------------------
# The server


class Server:
    """Serves every device of ``pool`` (see the module's doc)."""

    def __init__(self, pool, *, readonly=False, limits=Limits(), tls=None):
        self.pool = pool
        self.limits = limits
        self.tls = tls
        self.catalogue = PoolCatalogue(pool, readonly=readonly or pool.readonly)
        self.block_sizes = block_sizes(pool, limits)
        self.stopping = False
        self.connections = set()
        self.refused = 0
        self._executor = None
        self._stop = None
        self.flusher = None
        self.budget = None
        self.buffers = Buffers()
        self.addresses = []
        self._serving = collections.Counter()  # export name -> clients in transmission
        self._serving_lock = threading.Lock()

    def exports_in_use(self):
        """Names of the exports some client is connected to (any thread)."""
        with self._serving_lock:
            return {name for name, n in self._serving.items() if n > 0}

    def _serving_add(self, name, n):
        with self._serving_lock:
            self._serving[name] += n
            if self._serving[name] <= 0:
                del self._serving[name]

    def run(self, fn, *args):
        """Run ``fn(*args)`` on a worker thread; an awaitable of its result.
        (The worker hands the result to the loop itself, which costs less
        than run_in_executor's chaining of two futures.)"""
        loop = self._loop
        fut = loop.create_future()

        def job():
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: B902 - handed to the awaiting task
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

        self._executor.submit(job)
        return fut

    def stop(self):
        """Stop accepting, let requests in flight finish, then return from :meth:`serve`."""
        if self._stop is not None:
            self._stop.set()

    async def serve(self, unix=None, tcp=None, ready=None):
        """Listen on a Unix socket path and/or a (host, port) until :meth:`stop`.
        ``ready(addresses)`` is called once the sockets accept connections."""
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.limits.workers, thread_name_prefix="cowblock-nbd")
        self.flusher = Flusher(self.pool, self.run)
        self.budget = Budget(max(self.limits.bytes_total, self.limits.max_request))
        servers = []
        unix_path = unix_inode = None
        try:
            if unix is not None:
                sock = bind_unix(unix)
                unix_path, unix_inode = unix, os.stat(unix).st_ino
                servers.append(await asyncio.start_unix_server(
                    lambda r, w: self._accept(r, w, None), sock=sock, limit=256 << 10,
                    backlog=BACKLOG))
                self.addresses.append(f"nbd+unix:///?socket={unix}")
            if tcp is not None:
                sock = bind_tcp(*tcp)
                servers.append(await asyncio.start_server(
                    lambda r, w: self._accept(r, w, self.tls), sock=sock, limit=256 << 10,
                    backlog=BACKLOG))
                host, port = sock.getsockname()[:2]
                scheme = "nbds" if self.tls else "nbd"
                self.addresses.append(f"{scheme}://{host}:{port}/")
            if ready is not None:
                ready(self.addresses)
            await self._stop.wait()
        finally:
            self.stopping = True
            for s in servers:
                s.close()
            for conn in list(self.connections):
                conn.stop()
            while self.connections:
                await asyncio.gather(*[c.task for c in list(self.connections) if c.task],
                                     return_exceptions=True)
                await asyncio.sleep(0)
            if unix_path is not None:
                with contextlib.suppress(OSError):
                    if os.stat(unix_path).st_ino == unix_inode:
                        os.unlink(unix_path)
            self._executor.shutdown(wait=True)

    async def _accept(self, reader, writer, tls):
        if self.stopping:
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif sock is not None:
            # A Unix socket's send buffer bounds what one send takes (about
            # 200 KiB by default): room for a whole read reply saves the
            # copy of the rest into the transport and the wakeups to send it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)
        refusal = None
        n = self.limits.max_connections
        if len(self.connections) >= n:
            if self.refused >= n:  # refusing costs too: past 2n, close at once
                log.warning("over %d connections and %d refusals: closing a new one", n, n)
                writer.close()
                return
            refusal = (f"the server has {n} clients, its limit (cowblock serve "
                       "--max-connections): try again later")
            self.refused += 1
        conn = Connection(self, reader, writer, tls=tls, refusal=refusal)
        if refusal is None:
            self.connections.add(conn)
        try:
            await conn.run()
        finally:
            if refusal is None:
                self.connections.discard(conn)
            else:
                self.refused -= 1


def serve(pool, unix=None, tcp=None, *, readonly=False, limits=Limits(), tls=None,
          out=sys.stdout, control=True):
    """Run a server on ``pool`` in the foreground until SIGTERM or SIGINT;
    then answer what is in flight and commit.  Prints where it listens.

    With ``control``, the pool's control socket answers the CLI meanwhile
    (:class:`cowblock.daemon.ControlServer`), refusing only what would pull
    a device from under its NBD clients."""
    server = Server(pool, readonly=readonly, limits=limits, tls=tls)
    control_server = None
    if control:
        from ..daemon import ControlServer

        control_server = ControlServer(pool, kind="serve", refuse=lambda a: _refuse(server, a))
        control_server.start()
    try:
        return _serve(server, pool, unix, tcp, out)
    finally:
        if control_server is not None:
            control_server.stop()


def _refuse(server, args):
    """The reason to refuse a CLI command while serving, or None."""
    noun, verb = args.noun, getattr(args, "verb", None)
    if noun != "device" or verb not in ("rm", "mkfs", "import"):
        return None
    names = list(getattr(args, "names", None) or [getattr(args, "name", "")])
    busy = sorted(set(names) & server.exports_in_use())
    if busy:
        return (f"exported over NBD with clients connected: {', '.join(busy)}; "
                "disconnect them first")
    return None


def _serve(server, pool, unix, tcp, out):
    def ready(addresses):
        for a in addresses:
            print(f"listening on {a}", file=out, flush=True)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        try:
            await server.serve(unix, tcp, ready)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    raise_fd_limit()
    asyncio.run(main())
    if not pool.readonly:
        pool.flush()
    return server
