"""Send a device as a stream, and receive a stream as a device.

:func:`send` turns what :meth:`Device.delta` reports (the sub-blocks where a
device reads otherwise than its base, from the mappings alone) into the
records of :mod:`cowblock.stream`; :func:`receive` checks each record and
applies it to a hidden device, which becomes the named one only once the
whole stream has been verified.

State kept beside the pool, in ``streams.json`` in the pool directory
(replaced atomically, like ``model.json``; a pool at a URL keeps it as a
document in its own store, see snapshotter.PoolDocument):

* ``received``: for each device made by a receive, the identity of the
  source state it holds (source pool UUID, device id, creation time,
  snapshot generation) and its own id and creation time here.  An
  incremental stream names its base by the source identity; a receive
  applies it only on a device whose record carries that identity and that
  is still the device the record was made for.
* ``partial``: a resumable receive that was interrupted: its hidden
  device, how far it got (a :class:`~cowblock.stream.ResumeState`) and the
  resume token.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import sys
import time

from . import stream as S
from .errors import CowblockError, ExistsError, InvalidArgumentError, NotFoundError, ReadOnlyError
from .snapshotter import StateFile, state_file

__all__ = ["send", "receive", "resume_token", "abort_receive", "received",
           "ReceiveInterrupted", "STATE_FILE"]

STATE_FILE = "streams.json"
#: A resumable receive makes what it applied durable and records how far it
#: got every this many records or bytes.
CHECKPOINT_RECORDS = 256
CHECKPOINT_BYTES = 32 << 20
SEND_PREFIX = ".send-"
RECV_PREFIX = ".recv-"


class ReceiveInterrupted(CowblockError):
    """A resumable receive stopped before the end of its stream; what it
    applied is kept.  ``token`` continues it (``send(resume=token)`` on the
    sending side, ``receive(resume=token)`` here); ``__cause__`` says why."""

    def __init__(self, message, token):
        super().__init__(message)
        self.token = token


def sub_block_size(block_size):
    """The pool's sub-block size for a block size (cb_pool_geometry's rule)."""
    sub = max(block_size // 64, 4096)
    return min(sub, block_size)


def _state(pool):
    return state_file(pool, STATE_FILE, "cowblock-streams", 1,
                      lambda: {"received": {}, "partial": {}})


def _auto_progress(progress, desc):
    """A progress(done, total) callback and its closer: tqdm on a terminal
    when progress is None, nothing when False, the caller's callable else."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
               file=sys.stderr, leave=False)

    def update(done, total):
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


# --------------------------------------------------------------------------
# Sending

def _identity(pool, info, generation=None):
    return S.Identity(pool.uuid, info.id, info.birth_time if generation is None else generation,
                      info.created_ns)


def _extents(dev, base, size):
    """(kind, offset, length) of the stream's extents, in order: "D" data,
    "Z" zeros, from the delta against base; data extents are cut at block
    boundaries to at most max(MAX_RECORD_DATA, block size) bytes."""
    bs = dev.block_size
    sub = sub_block_size(bs)
    nsub = bs // sub
    full = (1 << nsub) - 1
    limit = max(S.MAX_RECORD_DATA, bs)
    nblocks = -(-size // bs)
    kind = None
    start = length = 0
    pos = 0
    while pos < nblocks:
        deltas, pos = dev.delta(base, pos)
        for block, data, zero in deltas.tolist():
            boff = block * bs
            if data == full or zero == full:
                k = "D" if data == full else "Z"
                n = min(bs, size - boff)
                if kind == k and start + length == boff and not (k == "D" and length + bs > limit):
                    length += n
                else:
                    if kind:
                        yield kind, start, length
                    kind, start, length = k, boff, n
                continue
            for s in range(nsub):
                bit = 1 << s
                if data & bit:
                    k = "D"
                elif zero & bit:
                    k = "Z"
                else:
                    continue
                off = boff + s * sub
                if off >= size:
                    break
                n = min(sub, size - off)
                if kind == k and start + length == off and not (
                        k == "D" and s == 0 and length + bs > limit):
                    length += n
                else:
                    if kind:
                        yield kind, start, length
                    kind, start, length = k, off, n
    if kind:
        yield kind, start, length


def send(dev, out, base=None, *, resume=None, progress=None):
    """Write ``dev`` as a stream to ``out`` (anything with ``write``).

    ``base`` (a Device or a device name of the same pool, read-only, of the
    same size and external origin): an incremental stream of only what
    differs from it; a receiver applies it on its copy of ``base``.  Cost:
    the metadata where the two differ (O(changed) for a snapshot and its
    ancestor), plus reading the data that differs.  A writable ``dev`` is
    sent as it was when the send began, through a read-only snapshot made
    for the send and deleted after it.

    ``resume``: a token from an interrupted resumable receive: writes the
    rest of the stream that receive was reading (``dev`` must be the same
    read-only device, ``base`` the same base).

    Returns a dict of what was sent: records, data bytes, zero bytes,
    stream bytes written.
    """
    pool = dev.pool
    if isinstance(base, str):
        base = pool.device(base)
    info = dev._stamp()
    if base is not None:
        if base.pool is not pool:
            raise InvalidArgumentError(f"base {base.name!r} is not in the pool of {dev.name!r}")
        binfo = base._stamp()
        if not binfo.readonly and not pool.readonly:
            raise InvalidArgumentError(
                f"base {base.name!r} is writable: an incremental stream needs a base that "
                f"cannot change (a read-only snapshot or layer)")
        if binfo.size != info.size:
            raise InvalidArgumentError(
                f"base {base.name!r} is {binfo.size} bytes and {dev.name!r} {info.size}: "
                f"an incremental stream needs devices of one size")
        if binfo.external_id != info.external_id:
            raise InvalidArgumentError(
                f"base {base.name!r} and {dev.name!r} read from different external origins")
        if base.name == dev.name:
            raise InvalidArgumentError(f"a device cannot be sent against itself ({dev.name!r})")
    readonly = info.readonly
    snap = None
    src = dev
    try:
        if readonly:
            source = _identity(pool, info)
        elif pool.readonly:  # nothing can write to it while we hold the pool
            source = _identity(pool, info, pool._stat().time)
        else:
            if resume is not None:
                raise InvalidArgumentError(
                    f"{dev.name!r} is writable: a resumed send needs the read-only device "
                    f"the interrupted stream was made from")
            snap = f"{SEND_PREFIX}{secrets.token_hex(8)}"
            src = pool.snapshot(dev.name, snap, readonly=True)
            source = _identity(pool, info, src._stamp().birth_time)
        header = S.Header(
            block_size=pool.block_size, sub_block_size=sub_block_size(pool.block_size),
            size=info.size, name=dev.name, source=source, readonly=readonly,
            base=_identity(pool, binfo) if base is not None else None,
            base_name=base.name if base is not None else "")
        return _write_stream(src, base, header, out, resume, progress)
    finally:
        if snap is not None:
            pool.delete(snap)


def _write_stream(src, base, header, out, resume, progress):
    size = header.size
    state = None
    skip = 0
    if resume is not None:
        tok_source, hcrc, state = S.decode_token(resume)
        if tok_source != header.source:
            raise InvalidArgumentError(
                f"the resume token is for another device or state than {header.name!r} "
                f"as it is now")
        skip = state.next_seq - 1
    tok_hcrc = hcrc if resume is not None else None
    update, close = _auto_progress(progress, f"send {header.name}")
    total = 0
    if update is not None:
        total = sum(n for k, _, n in _extents(src, base, size) if k == "D")
    try:
        writer = None
        seq = 0
        skipped = S.ResumeState()
        done = 0
        for kind, off, n in _extents(src, base, size):
            seq += 1
            if seq <= skip:
                skipped.records += 1
                skipped.stream_offset += S.StreamWriter.record_size(
                    S.T_DATA if kind == "D" else S.T_ZERO, n)
                if kind == "D":
                    skipped.data_bytes += n
                else:
                    skipped.zero_bytes += n
                skipped.extent_end = off + n
                continue
            if writer is None:
                writer = _open_writer(out, header, state, skipped, tok_hcrc)
            if kind == "D":
                writer.data(off, src.read(off, n))
                done += n
                if update is not None:
                    update(done, total)
            else:
                writer.zero(off, n)
        if writer is None:
            writer = _open_writer(out, header, state, skipped, tok_hcrc)
        writer.end()
        st = writer.st
        return {"records": st.records, "data_bytes": st.data_bytes,
                "zero_bytes": st.zero_bytes, "stream_bytes": writer.bytes_written_here,
                "incremental": header.incremental}
    finally:
        close()


def _open_writer(out, header, state, skipped, token_header_crc):
    if state is None:
        return S.StreamWriter(out, header)
    probe = S.StreamWriter(_Discard(), header)
    if token_header_crc != probe.header_crc:
        raise InvalidArgumentError(
            "the resume token is for another stream (another base, or another format)")
    expect = (state.records, state.data_bytes, state.zero_bytes,
              state.stream_offset - probe.st.stream_offset)
    got = (skipped.records, skipped.data_bytes, skipped.zero_bytes, skipped.stream_offset)
    if expect != got:
        raise InvalidArgumentError(
            f"the resume token does not fit this device: it names record {state.next_seq} "
            f"at stream offset {state.stream_offset}, which this device's stream does not have")
    return S.StreamWriter(out, header, resume=state)


class _Discard:
    def write(self, b):
        return len(b)


# --------------------------------------------------------------------------
# Receiving

def _temp_name(name):
    return RECV_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:24]


def _local(dev):
    st = dev._stamp()
    return {"device_id": st.id, "created_ns": st.created_ns}


def received(pool):
    """``{device name: record}`` of the devices made by receives that are
    still the devices the records were made for."""
    doc = _state(pool).load()
    out = {}
    for name, rec in doc.get("received", {}).items():
        if name in pool and _local(pool.device(name)) == {
                k: rec.get(k) for k in ("device_id", "created_ns")}:
            out[name] = rec
    return out


def _find_base(pool, doc, header, base):
    want = header.base.as_dict()
    recs = doc.get("received", {})
    if base is None:
        for name, rec in sorted(recs.items()):
            if rec.get("source") == want and name in pool and _local(pool.device(name)) == {
                    k: rec.get(k) for k in ("device_id", "created_ns")}:
                return name
        raise NotFoundError(
            f"stream of {header.name!r} is incremental against {header.base_name!r} "
            f"(source generation {header.base.generation}), and no device here was received "
            f"from that state: receive the base first, or name it")
    if base not in pool:
        raise NotFoundError(f"base device {base!r} does not exist")
    rec = recs.get(base)
    if rec is None:
        raise InvalidArgumentError(
            f"base {base!r} was not made by a receive, so it cannot be the base "
            f"{header.base_name!r} the stream of {header.name!r} is relative to")
    if _local(pool.device(base)) != {k: rec.get(k) for k in ("device_id", "created_ns")}:
        raise InvalidArgumentError(
            f"base {base!r} is not the device its receive record was made for (it was "
            f"deleted and made again)")
    if rec.get("source") != want:
        src = rec.get("source", {})
        raise InvalidArgumentError(
            f"base {base!r} does not match the stream: the stream of {header.name!r} is "
            f"relative to {header.base_name!r} at generation {header.base.generation} of pool "
            f"{header.base.pool_uuid.hex()}; {base!r} holds {rec.get('source_name')!r} at "
            f"generation {src.get('generation')} of pool {src.get('pool_uuid')}")
    return base


def resume_token(pool, name):
    """The resume token of the interrupted resumable receive of ``name``, or None."""
    rec = _state(pool).load().get("partial", {}).get(name)
    return rec["token"] if rec else None


def abort_receive(pool, name):
    """Drop what an interrupted resumable receive of ``name`` kept.  Returns
    True if there was something to drop."""
    sf = _state(pool)
    doc = sf.load()
    rec = doc.get("partial", {}).pop(name, None)
    temp = _temp_name(name)
    found = rec is not None or temp in pool
    if temp in pool:
        pool.delete(temp)
        pool.flush()
    if rec is not None:
        sf.save(doc)
    return found


def receive(pool, name, src, base=None, *, resumable=False, resume=None, progress=None,
            total=None):
    """Make device ``name`` in ``pool`` from the stream read from ``src``.

    A full stream makes a new device; an incremental one is applied on a
    snapshot of ``base`` (a device made here by receiving the stream's base;
    None: the one whose receive record matches).  Nothing is visible until
    the whole stream has been verified: records go to a hidden device that
    is snapshotted into place at the end, or deleted if anything is wrong.
    The result is read-only if the source was.

    ``resumable``: if the receive stops early (damaged or cut stream, an
    error, a signal), keep what was applied and raise
    :class:`ReceiveInterrupted` with a token; ``resume`` (that token) goes
    on from there with a stream from ``send(resume=token)``, or with the
    whole stream again.  Returns the new Device.
    """
    from .pool import _name
    _name(name)
    if pool.readonly:
        raise ReadOnlyError(f"pool {pool.path!r} is read-only")
    if name.startswith((SEND_PREFIX, RECV_PREFIX)):
        raise InvalidArgumentError(f"device names starting {name[:6]!r} are kept for streams")
    sf = _state(pool)
    doc = sf.load()
    doc.setdefault("received", {})
    doc.setdefault("partial", {})
    if name in pool:
        raise ExistsError(f"device {name!r} exists already")
    temp = _temp_name(name)
    partial = doc["partial"].get(name)
    state = None
    hcrc = None
    if resume is not None:
        if partial is None or temp not in pool:
            raise NotFoundError(f"there is no interrupted receive of {name!r} to resume")
        _, hcrc, state = S.decode_token(resume)
        saved = S.ResumeState(**partial["state"])
        if state != saved or hcrc != partial["header_crc"]:
            raise InvalidArgumentError(
                f"the resume token is not the one of the interrupted receive of {name!r} "
                f"(its token is {partial['token']})")
        resumable = True
    elif partial is not None and temp in pool:
        raise ExistsError(
            f"an interrupted receive of {name!r} is kept: resume it (--resume "
            f"{partial['token']}) or drop it (--abort)")
    elif temp in pool:  # left by a receive that was killed: not resumable
        pool.delete(temp)

    reader = S.StreamReader(src, resume=state, expect_header_crc=hcrc)
    header = reader.header
    if header.block_size != pool.block_size:
        raise S.StreamError(f"the stream is for a block size of {header.block_size} bytes; "
                            f"this pool's is {pool.block_size}", record=0,
                            record_type="HEADER", offset=len(S.MAGIC))
    if header.sub_block_size != sub_block_size(pool.block_size):
        raise S.StreamError(f"the stream's sub-block size is {header.sub_block_size}; this "
                            f"pool's is {sub_block_size(pool.block_size)}", record=0,
                            record_type="HEADER", offset=len(S.MAGIC))
    if header.incremental:
        base = _find_base(pool, doc, header, base) if resume is None else partial["base"]
        bdev = pool.device(base)
        if bdev.size != header.size:
            raise InvalidArgumentError(f"base {base!r} is {bdev.size} bytes; the stream's "
                                       f"device is {header.size}")
    elif base is not None:
        raise InvalidArgumentError(
            f"the stream of {header.name!r} is a full stream: it has no base ({base!r} given)")

    applied = dataclasses.replace(reader.st) if reader.st is not None else state
    if resume is None:
        if header.incremental:
            dev = pool.snapshot(base, temp)
        else:
            dev = pool.create_device(temp, header.size)
    else:
        dev = pool.device(temp)

    def keep(st):
        token = S.encode_token(header.source, reader.header_crc, st)
        doc["partial"][name] = {"temp": temp, "base": base if header.incremental else None,
                                "header_crc": reader.header_crc, "token": token,
                                "state": dataclasses.asdict(st), "source_name": header.name,
                                "updated": time.time()}
        sf.save(doc)
        return token

    if resumable and resume is None:
        pool.flush()
        keep(applied)
    update, close = _auto_progress(progress, f"receive {name}")
    since = (0, 0)  # records and bytes since the last checkpoint
    try:
        try:
            for rec in reader:
                if isinstance(rec, S.Data):
                    dev.write(rec.offset, rec.data)
                    n = len(rec.data)
                else:
                    dev.discard(rec.offset, rec.length)
                    n = 0
                applied = dataclasses.replace(reader.st)
                since = (since[0] + 1, since[1] + n)
                if resumable and (since[0] >= CHECKPOINT_RECORDS or since[1] >= CHECKPOINT_BYTES):
                    pool.flush()
                    keep(applied)
                    since = (0, 0)
                if update is not None:
                    update(reader.st.stream_offset, total or 0)
            pool.flush()
            pool.snapshot(temp, name, readonly=header.readonly)
        except (Exception, KeyboardInterrupt) as exc:
            if not resumable:
                _drop(pool, temp)
                if name in doc["partial"]:
                    del doc["partial"][name]
                    sf.save(doc)
                raise
            if applied is None:  # resuming, and not even the start was reached
                raise
            pool.flush()
            token = keep(applied)
            raise ReceiveInterrupted(
                f"receive of {name!r} stopped before record {applied.next_seq} (stream offset "
                f"{applied.stream_offset}): {exc}; what came before is kept: resume with "
                f"--resume {token}", token) from exc
    finally:
        close()
    # the stream is complete and verified, and name exists: the rest is tidying
    new = pool.device(name)
    doc["received"][name] = dict(_local(new), source=header.source.as_dict(),
                                 source_name=header.name, readonly=header.readonly,
                                 base=base if header.incremental else None,
                                 received=time.time())
    doc["partial"].pop(name, None)
    sf.save(doc)
    pool.delete(temp)
    pool.flush()
    return new


def identity_of(dev):
    """The identity of a read-only device's content in its pool (what a
    stream of it names as its source, and an incremental one as its base)."""
    return _identity(dev.pool, dev._stamp())


def apply_stream(reader, dev, progress=None):
    """Apply every record of ``reader`` (a StreamReader, header read) to
    ``dev``, to its END, which is checked.  The caller makes the result
    visible only once this returns."""
    for rec in reader:
        if isinstance(rec, S.Data):
            dev.write(rec.offset, rec.data)
        else:
            dev.discard(rec.offset, rec.length)
        if progress is not None:
            progress(reader.st.stream_offset)


def _drop(pool, temp):
    try:
        if temp in pool:
            pool.delete(temp)
            pool.flush()
    except CowblockError:
        pass
