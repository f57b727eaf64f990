"""The send/receive stream format: encode and decode, nothing else.

A stream carries one device's contents, whole or as the difference from a
base device, from one pool to another (README, "Stream format", is the
spec).  This module only turns records into bytes and bytes into checked
records, reading and writing the file objects it is handed; what the
records are made from and applied to is :mod:`cowblock.sendrecv`'s.

Layout: an 8-byte magic, then records.  Every record is a 16-byte frame
(type, flags, payload length, sequence number), the payload, and a
CRC-32C of frame and payload.  The first record is the HEADER, an
incremental stream resumed part-way has a RESUME record next, then DATA
and ZERO extents in increasing offset order, and last an END record with
the totals and a CRC-32C of every byte before it.  Little-endian,
fixed-width.  A record type this reader does not know is skipped if its
frame has the MAY_SKIP flag and refused otherwise.

Every decoding error is a :class:`StreamError` naming the record (its
sequence number and type) and the byte offset in the stream where it
starts.
"""
from __future__ import annotations

import base64
import dataclasses
import struct

from .errors import CowblockError
from ._lowlevel import crc32c

__all__ = ["StreamError", "Header", "Data", "Zero", "End", "Resume", "ResumeState",
           "StreamWriter", "StreamReader", "crc32c", "encode_token", "decode_token",
           "MAGIC", "VERSION"]

MAGIC = b"\x89CBSTRM\n"
VERSION = 1

T_HEADER, T_DATA, T_ZERO, T_END, T_RESUME = 1, 2, 3, 4, 5
TYPE_NAMES = {T_HEADER: "HEADER", T_DATA: "DATA", T_ZERO: "ZERO", T_END: "END",
              T_RESUME: "RESUME"}
F_MAY_SKIP = 0x0001
KNOWN_FRAME_FLAGS = F_MAY_SKIP

FRAME = struct.Struct("<HHIQ")          # type, flags, payload length, sequence number
CRC = struct.Struct("<I")
HEADER_FIXED = struct.Struct("<HHII" "III" "Q" "16sIIQ" "16sIIQ" "HHI")
assert HEADER_FIXED.size == 104
DATA_FIXED = struct.Struct("<Q")         # offset; the data follows
ZERO_BODY = struct.Struct("<QQ")         # offset, length
END_BODY = struct.Struct("<QQQQII")      # records, data bytes, zero bytes, stream bytes, crc, 0
RESUME_BODY = struct.Struct("<QQQQQII")  # next seq, stream offset, records, data, zero, crc, 0

H_INCREMENTAL = 0x1    # header flags: the base fields are set
H_READONLY = 0x2       # the source device is read-only
KNOWN_HEADER_FLAGS = H_INCREMENTAL | H_READONLY
INCOMPAT_FEATURES = 0  # feature bits a reader must know (none yet)

NAME_MAX = 127
#: Bytes of data one DATA record carries at most (a bigger block gets one
#: record per block).  A reader refuses any payload above MAX_PAYLOAD.
MAX_RECORD_DATA = 1 << 20
MAX_PAYLOAD = (16 << 20) + DATA_FIXED.size


class StreamError(CowblockError, ValueError):
    """A stream is damaged, truncated, out of order, or does not fit.

    ``record`` is the sequence number of the record at fault (None before
    the first), ``record_type`` its type name, ``offset`` the byte offset in
    the stream where it starts.
    """

    def __init__(self, message, *, record=None, record_type=None, offset=None):
        where = ""
        if offset is not None:
            what = f"record {record} " if record is not None else ""
            if record_type:
                what += f"({record_type}) "
            where = f"{what}at offset {offset}: "
        super().__init__(f"stream {where}{message}")
        self.record = record
        self.record_type = record_type
        self.offset = offset


# --------------------------------------------------------------------------
# Records

@dataclasses.dataclass(frozen=True)
class Identity:
    """A device state in a pool: what an incremental stream's base must be."""
    pool_uuid: bytes   # 16 bytes
    device_id: int
    generation: int    # the pool's snapshot clock when that state was frozen
    created_ns: int

    def as_dict(self):
        return {"pool_uuid": self.pool_uuid.hex(), "device_id": self.device_id,
                "generation": self.generation, "created_ns": self.created_ns}

    @classmethod
    def from_dict(cls, d):
        return cls(bytes.fromhex(d["pool_uuid"]), int(d["device_id"]), int(d["generation"]),
                   int(d["created_ns"]))


@dataclasses.dataclass(frozen=True)
class Header:
    block_size: int
    sub_block_size: int
    size: int
    name: str
    source: Identity
    readonly: bool = False
    base: Identity | None = None
    base_name: str = ""
    version: int = VERSION
    incompat: int = 0
    compat: int = 0

    @property
    def incremental(self):
        return self.base is not None

    def encode_payload(self):
        name, bname = self.name.encode(), self.base_name.encode()
        if not 1 <= len(name) <= NAME_MAX or len(bname) > NAME_MAX:
            raise ValueError("device names in a stream are 1..127 bytes")
        flags = (H_INCREMENTAL if self.base else 0) | (H_READONLY if self.readonly else 0)
        base = self.base or Identity(bytes(16), 0, 0, 0)
        return HEADER_FIXED.pack(
            self.version, len(name), self.incompat, self.compat,
            self.block_size, self.sub_block_size, flags, self.size,
            self.source.pool_uuid, self.source.device_id, self.source.generation,
            self.source.created_ns,
            base.pool_uuid, base.device_id, base.generation, base.created_ns,
            len(bname), 0, 0) + name + bname


@dataclasses.dataclass(frozen=True)
class Data:
    seq: int
    offset: int
    data: bytes = dataclasses.field(repr=False)
    at: int = 0  # byte offset of the record in the stream

    @property
    def length(self):
        return len(self.data)


@dataclasses.dataclass(frozen=True)
class Zero:
    seq: int
    offset: int
    length: int
    at: int


@dataclasses.dataclass(frozen=True)
class End:
    seq: int
    records: int
    data_bytes: int
    zero_bytes: int
    at: int


@dataclasses.dataclass
class ResumeState:
    """How far a stream got: enough to continue it (and to check that a
    continuation is the continuation of the same stream)."""
    next_seq: int = 1        # the first record not yet complete
    stream_offset: int = 0   # where it starts in the original stream
    records: int = 0         # DATA and ZERO records so far
    data_bytes: int = 0
    zero_bytes: int = 0
    crc: int = 0             # CRC-32C of the original stream's bytes before it
    extent_end: int = 0      # end of the last extent (the next must start at or after it)


@dataclasses.dataclass(frozen=True)
class Resume:
    seq: int
    state: ResumeState
    at: int


# --------------------------------------------------------------------------
# Resume tokens: opaque to users, checked on both sides

_TOKEN = struct.Struct("<4sH" "16sIIQ" "I" "QQQQQQII")
_TOKEN_MAGIC = b"CBRT"


def encode_token(source: Identity, header_crc: int, st: ResumeState) -> str:
    raw = _TOKEN.pack(_TOKEN_MAGIC, 1, source.pool_uuid, source.device_id, source.generation,
                      source.created_ns, header_crc, st.next_seq, st.stream_offset,
                      st.records, st.data_bytes, st.zero_bytes, st.extent_end, st.crc, 0)
    raw += CRC.pack(crc32c(raw))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str):
    """(source identity, header CRC, ResumeState) of a resume token."""
    try:
        text = token.strip()
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"resume token {token!r} is not a cowblock resume token") from None
    if len(raw) != _TOKEN.size + CRC.size or CRC.unpack_from(raw, _TOKEN.size)[0] != crc32c(
            raw[:_TOKEN.size]):
        raise ValueError(f"resume token {token!r} is damaged or not a cowblock resume token")
    (magic, version, uuid, dev_id, gen, created, hcrc, nseq, soff, recs, dbytes, zbytes,
     xend, crc, _) = _TOKEN.unpack_from(raw)
    if magic != _TOKEN_MAGIC or version != 1:
        raise ValueError(f"resume token {token!r} is of an unknown kind or version")
    return (Identity(uuid, dev_id, gen, created), hcrc,
            ResumeState(nseq, soff, recs, dbytes, zbytes, crc, xend))


# --------------------------------------------------------------------------
# Writing

class StreamWriter:
    """Writes a stream to ``out`` (any object with ``write``).

    ``resume``: a :class:`ResumeState` to continue from: the magic and the
    header are written again, then a RESUME record, then the caller's
    records from ``resume.next_seq`` on; the running totals and CRC carry on
    from the state as if the stream had never been cut.
    """

    def __init__(self, out, header: Header, resume: ResumeState | None = None):
        self._out = out
        self.header = header
        self._block_size = header.block_size
        self.header_crc = 0
        self.bytes_written_here = 0  # bytes this writer wrote (all of them)
        self._write_raw(MAGIC)
        hdr = self._frame(T_HEADER, 0, header.encode_payload())
        self.header_crc = crc32c(hdr)
        if resume is None:
            self.st = ResumeState(next_seq=1, stream_offset=len(MAGIC) + len(hdr))
            self.st.crc = crc32c(hdr, crc32c(MAGIC))
            self._write_raw(hdr)
        else:
            self._write_raw(hdr)
            self.st = dataclasses.replace(resume)
            body = RESUME_BODY.pack(resume.next_seq, resume.stream_offset, resume.records,
                                    resume.data_bytes, resume.zero_bytes, resume.crc, 0)
            self._write_raw(self._frame(T_RESUME, 0, body, seq=resume.next_seq - 1))

    def _write_raw(self, b):
        self._out.write(b)
        self.bytes_written_here += len(b)

    @staticmethod
    def _frame(rtype, flags, payload, seq=0):
        head = FRAME.pack(rtype, flags, len(payload), seq) + payload
        return head + CRC.pack(crc32c(head))

    def _record(self, rtype, payload, flags=0):
        rec = self._frame(rtype, flags, payload, self.st.next_seq)
        self._write_raw(rec)
        self.st.crc = crc32c(rec, self.st.crc)
        self.st.stream_offset += len(rec)
        self.st.next_seq += 1

    def data(self, offset, data):
        self._record(T_DATA, DATA_FIXED.pack(offset) + bytes(data))
        self.st.records += 1
        self.st.data_bytes += len(data)
        self.st.extent_end = offset + len(data)

    def zero(self, offset, length):
        self._record(T_ZERO, ZERO_BODY.pack(offset, length))
        self.st.records += 1
        self.st.zero_bytes += length
        self.st.extent_end = offset + length

    def skippable(self, rtype, payload):
        """A record of a type readers may skip (room to grow; tests)."""
        self._record(rtype, payload, F_MAY_SKIP)

    def end(self):
        st = self.st
        body = END_BODY.pack(st.records, st.data_bytes, st.zero_bytes, st.stream_offset,
                             st.crc, 0)
        self._write_raw(self._frame(T_END, 0, body, st.next_seq))

    @staticmethod
    def record_size(rtype, length):
        """Bytes a DATA record of ``length`` bytes, or a ZERO record, takes."""
        body = DATA_FIXED.size + length if rtype == T_DATA else ZERO_BODY.size
        return FRAME.size + body + CRC.size


# --------------------------------------------------------------------------
# Reading

def _decode_header(payload, err):
    if len(payload) < HEADER_FIXED.size:
        raise err(f"header is {len(payload)} bytes, shorter than its fixed part "
                  f"({HEADER_FIXED.size} bytes)")
    (version, nlen, incompat, compat, bs, sub, flags, size, suuid, sid, sgen, screated,
     buuid, bid, bgen, bcreated, blen, r1, r2) = HEADER_FIXED.unpack_from(payload)
    if version != VERSION:
        raise err(f"stream format version {version}; this cowblock reads version {VERSION}")
    if incompat & ~INCOMPAT_FEATURES:
        raise err(f"stream needs features this cowblock does not have "
                  f"(incompatible feature bits {incompat:#x})")
    if flags & ~KNOWN_HEADER_FLAGS:
        raise err(f"unknown header flags {flags:#x}")
    if r1 or r2:
        raise err("reserved header fields are not zero")
    if bs < 4096 or bs > (1 << 20) or bs & (bs - 1):
        raise err(f"block size {bs} is not a power of two from 4096 to 1048576")
    if sub < 512 or sub > bs or bs % sub or bs // sub > 64 or sub & (sub - 1):
        raise err(f"sub-block size {sub} does not divide block size {bs} into 1..64 parts")
    if size == 0 or size % 512 or size > (1 << 56):
        raise err(f"device size {size} is not a positive multiple of 512 up to 2**56")
    if not 1 <= nlen <= NAME_MAX or blen > NAME_MAX:
        raise err(f"name lengths {nlen} and {blen} are out of range (1..{NAME_MAX}, 0..{NAME_MAX})")
    if len(payload) != HEADER_FIXED.size + nlen + blen:
        raise err(f"header is {len(payload)} bytes; its fields say "
                  f"{HEADER_FIXED.size + nlen + blen}")
    try:
        name = payload[HEADER_FIXED.size:HEADER_FIXED.size + nlen].decode()
        bname = payload[HEADER_FIXED.size + nlen:].decode()
    except UnicodeDecodeError:
        raise err("a device name is not valid UTF-8") from None
    incremental = bool(flags & H_INCREMENTAL)
    base = Identity(buuid, bid, bgen, bcreated) if incremental else None
    if not incremental and (any(buuid) or bid or bgen or bcreated or blen):
        raise err("base fields are set in a full stream")
    return Header(block_size=bs, sub_block_size=sub, size=size, name=name,
                  source=Identity(suuid, sid, sgen, screated), readonly=bool(flags & H_READONLY),
                  base=base, base_name=bname, version=version, incompat=incompat, compat=compat)


class StreamReader:
    """Reads and checks a stream from ``src`` (any object with ``read``).

    The magic and the header are read at once (``header``); iterating
    yields :class:`Data` and :class:`Zero` records in order, each checked
    before it is yielded, and stops after the :class:`End` record has been
    checked against everything read (totals, stream CRC) and the stream is
    at its end.  A RESUME record (a continued stream) is checked against
    ``resume``, the state the receiver kept, and the reading carries on from
    there.  Anything wrong raises :class:`StreamError`.
    """

    def __init__(self, src, resume: ResumeState | None = None, expect_header_crc=None,
                 more_follows=False):
        self._src = src
        self._more_follows = more_follows  # another stream may follow the END record
        self._pos = 0
        self.done = False
        magic = self._read(len(MAGIC), None, "the magic")
        if magic != MAGIC:
            raise StreamError("not a cowblock stream (bad magic)", offset=0)
        self.header_at = self._pos
        rtype, flags, payload, seq, raw = self._read_record()
        if rtype != T_HEADER or seq != 0:
            raise StreamError(f"the first record is {TYPE_NAMES.get(rtype, rtype)} "
                              f"(sequence {seq}); a stream starts with its HEADER",
                              record=seq, record_type=TYPE_NAMES.get(rtype, str(rtype)),
                              offset=self.header_at)
        self.header = _decode_header(payload, self._err(0, "HEADER", self.header_at))
        self.header_crc = crc32c(raw)
        self._after_header = ResumeState(next_seq=1, stream_offset=self._pos,
                                         crc=crc32c(raw, crc32c(MAGIC)))
        if expect_header_crc is not None and self.header_crc != expect_header_crc:
            raise StreamError("this is not the stream that was being received (its header "
                              "differs from the one the resume token names)",
                              record=0, record_type="HEADER", offset=self.header_at)
        self._resume = resume
        self.resumed = False
        if resume is None:
            self.st = dataclasses.replace(self._after_header)
        else:
            self.st = None  # set by the RESUME record, or by skipping (see __iter__)

    # -- low level ---------------------------------------------------------

    def _err(self, seq, tname, at):
        return lambda msg: StreamError(msg, record=seq, record_type=tname, offset=at)

    def _read(self, n, seq, what, tname=None, at=None):
        parts = []
        got = 0
        while got < n:
            b = self._src.read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        data = b"".join(parts)
        if len(data) < n:
            raise StreamError(f"truncated: the stream ends after {self._pos + len(data)} bytes, "
                              f"inside {what}", record=seq, record_type=tname,
                              offset=self._pos if at is None else at)
        self._pos += n
        return data

    def _read_record(self):
        at = self._pos
        seq_hint = self.st.next_seq if getattr(self, "st", None) else None
        frame = self._read(FRAME.size, seq_hint, "a record frame", at=at)
        rtype, flags, length, seq = FRAME.unpack(frame)
        tname = TYPE_NAMES.get(rtype, f"type {rtype}")
        if length > MAX_PAYLOAD:
            raise StreamError(f"payload length {length} is over the limit of {MAX_PAYLOAD}",
                              record=seq, record_type=tname, offset=at)
        payload = self._read(length, seq, f"the payload of a {tname} record", tname, at)
        crc = CRC.unpack(self._read(CRC.size, seq, "a record checksum", tname, at))[0]
        if crc32c(frame + payload) != crc:
            raise StreamError("bad checksum (record damaged)", record=seq, record_type=tname,
                              offset=at)
        if flags & ~KNOWN_FRAME_FLAGS:
            raise StreamError(f"unknown record flags {flags:#x}", record=seq, record_type=tname,
                              offset=at)
        self._at = at
        return rtype, flags, payload, seq, frame + payload + CRC.pack(crc)

    # -- records -------------------------------------------------------------

    def _extent(self, err, offset, length, what):
        h, st = self.header, self.st
        if length == 0:
            raise err(f"{what} of 0 bytes")
        if offset % h.sub_block_size:
            raise err(f"{what} offset {offset} is not a multiple of the sub-block size "
                      f"{h.sub_block_size}")
        if offset + length > h.size:
            raise err(f"{what} [{offset}, {offset + length}) is outside the device of "
                      f"{h.size} bytes")
        if length % h.sub_block_size and offset + length != h.size:
            raise err(f"{what} length {length} is not a multiple of the sub-block size "
                      f"{h.sub_block_size} and does not end at the device's end")
        if offset < st.extent_end:
            raise err(f"{what} at {offset} is out of order: the previous extent ended at "
                      f"{st.extent_end}")

    def __iter__(self):
        while not self.done:
            rec = self.next()
            if rec is None:
                return
            yield rec

    def next(self):
        """The next DATA or ZERO record, or None after END (checked)."""
        while True:
            rtype, flags, payload, seq, raw = self._read_record()
            at = self._at
            tname = TYPE_NAMES.get(rtype, f"type {rtype}")
            err = self._err(seq, tname, at)
            if self.st is None:
                # a stream given to a resuming receiver: a RESUME record next
                # (a continued stream), or the original stream read again
                # from the start, whose records up to the resume point are
                # checked and passed over
                if rtype == T_RESUME:
                    self._take_resume(payload, seq, err)
                    continue
                self.st = dataclasses.replace(self._after_header)
            if rtype == T_RESUME:
                raise err("RESUME record where it cannot be (only right after the HEADER "
                          "of a continued stream)")
            if seq != self.st.next_seq:
                raise err(f"out of order: sequence number {seq} where {self.st.next_seq} "
                          f"was due")
            if (self._resume is not None and not self.resumed
                    and seq == self._resume.next_seq):
                if self.st != self._resume:
                    raise err("this stream differs, before the point the receive being resumed "
                              "reached, from the stream that was being received")
                self.resumed = True
            if rtype not in (T_DATA, T_ZERO, T_END):
                if rtype == T_HEADER:
                    raise err("a second HEADER")
                if not flags & F_MAY_SKIP:
                    raise err(f"unknown record type {rtype} without the may-skip flag")
                self._advance(raw)
                continue
            if rtype == T_END:
                return self._take_end(payload, seq, err, at)
            if rtype == T_DATA:
                if len(payload) < DATA_FIXED.size:
                    raise err(f"payload of {len(payload)} bytes is shorter than a DATA record's "
                              f"{DATA_FIXED.size}")
                (offset,) = DATA_FIXED.unpack_from(payload)
                data = payload[DATA_FIXED.size:]
                self._extent(err, offset, len(data), "data extent")
                rec = Data(seq, offset, data, at)
                self.st.data_bytes += len(data)
            else:
                if len(payload) != ZERO_BODY.size:
                    raise err(f"payload of {len(payload)} bytes; a ZERO record's is "
                              f"{ZERO_BODY.size}")
                offset, length = ZERO_BODY.unpack(payload)
                self._extent(err, offset, length, "zero extent")
                rec = Zero(seq, offset, length, at)
                self.st.zero_bytes += length
            self.st.records += 1
            self.st.extent_end = rec.offset + rec.length
            self._advance(raw)
            if self._resume is not None and seq < self._resume.next_seq:
                continue  # already applied by the receive being resumed
            return rec

    def _advance(self, raw):
        self.st.crc = crc32c(raw, self.st.crc)
        self.st.stream_offset += len(raw)
        self.st.next_seq += 1

    def _take_resume(self, payload, seq, err):
        if len(payload) != RESUME_BODY.size:
            raise err(f"payload of {len(payload)} bytes; a RESUME record's is {RESUME_BODY.size}")
        nseq, soff, recs, dbytes, zbytes, crc, _ = RESUME_BODY.unpack(payload)
        want = self._resume
        got = ResumeState(nseq, soff, recs, dbytes, zbytes, crc, want.extent_end)
        if seq != nseq - 1 or got != want:
            raise err(f"the stream continues from record {nseq} (offset {soff}); the receive "
                      f"being resumed stopped before record {want.next_seq} "
                      f"(offset {want.stream_offset})")
        self.st = dataclasses.replace(want)
        self.resumed = True

    def _take_end(self, payload, seq, err, at):
        if len(payload) != END_BODY.size:
            raise err(f"payload of {len(payload)} bytes; an END record's is {END_BODY.size}")
        recs, dbytes, zbytes, sbytes, crc, reserved = END_BODY.unpack(payload)
        st = self.st
        if reserved:
            raise err("reserved END field is not zero")
        if (recs, dbytes, zbytes) != (st.records, st.data_bytes, st.zero_bytes):
            raise err(f"totals do not match: END says {recs} records, {dbytes} data bytes, "
                      f"{zbytes} zero bytes; the stream held {st.records}, {st.data_bytes}, "
                      f"{st.zero_bytes}")
        if sbytes != st.stream_offset:
            raise err(f"END says the stream before it is {sbytes} bytes; it was "
                      f"{st.stream_offset}")
        if crc != st.crc:
            raise err(f"stream checksum mismatch (END says {crc:#010x}, the bytes give "
                      f"{st.crc:#010x})")
        extra = None if self._more_follows else self._src.read(1)
        if extra:
            raise StreamError("trailing bytes after the END record", record=seq,
                              record_type="END", offset=self._pos)
        self.done = True
        return None



# --------------------------------------------------------------------------
# Merging consecutive streams

def merge(first, second, out):
    """Write to ``out`` one stream equal to applying the stream read from
    ``first`` and then the one read from ``second`` (an incremental stream
    relative to the state ``first`` makes).  The result is relative to
    ``first``'s base (a full stream if ``first`` is full) and holds, for each
    range, the last of the two that wrote it.  Both inputs are checked in
    full, as a receiver would; memory is one record of each.  Returns the
    merged stream's :class:`ResumeState` (its totals)."""
    r1, r2 = StreamReader(first), StreamReader(second)
    h1, h2 = r1.header, r2.header
    if not h2.incremental or h2.base != h1.source:
        raise StreamError(f"the second stream ({h2.name!r}) is not relative to the state the "
                          f"first ({h1.name!r}) makes, so they cannot be merged", record=0,
                          record_type="HEADER", offset=len(MAGIC))
    if (h1.block_size, h1.sub_block_size, h1.size) != (h2.block_size, h2.sub_block_size, h2.size):
        raise StreamError("the two streams are of different block sizes or device sizes",
                          record=0, record_type="HEADER", offset=len(MAGIC))
    header = dataclasses.replace(h2, base=h1.base, base_name=h1.base_name)
    w = StreamWriter(out, header)

    def pull(r):
        rec = r.next() if not r.done else None
        if rec is None:
            return None
        if isinstance(rec, Data):
            return [rec.offset, rec.offset + rec.length, rec.data]
        return [rec.offset, rec.offset + rec.length, None]

    def emit(e):
        off, end, data = e
        if data is None:
            w.zero(off, end - off)
        else:
            w.data(off, data)

    def clip(e, start):  # e from start on
        off, end, data = e
        return [start, end, None if data is None else data[start - off:]]

    a, b = pull(r1), pull(r2)
    while a is not None or b is not None:
        if b is None or (a is not None and a[1] <= b[0]):
            emit(a)
            a = pull(r1)
        elif a is None or b[1] <= a[0]:
            emit(b)
            b = pull(r2)
        elif a[0] < b[0]:  # a starts before b: its head stands, the rest is looked at again
            emit([a[0], b[0], None if a[2] is None else a[2][:b[0] - a[0]]])
            a = clip(a, b[0])
        else:  # a starts inside b: b wins over it
            a = clip(a, b[1]) if a[1] > b[1] else pull(r1)
    w.end()
    return w.st
