"""The NBD wire format: encode and decode, no IO.

Every constant and layout here is the NBD protocol's (``doc/proto.md`` of
the NetworkBlockDevice/nbd project): the fixed newstyle handshake, option
haggling with its replies and ``NBD_INFO_*`` items, transmission requests,
simple and structured replies, ``base:allocation`` block status.  All
fields are big-endian.

The server side is what the server needs: parse what a client sends
(:func:`parse_client_flags`, :func:`parse_option_header`,
:func:`parse_export_request`, :func:`parse_meta_context_request`,
:func:`parse_request`), check a request against what was negotiated
(:func:`check_request`), and build every reply.  The client side
(``encode_*`` requests, ``parse_*_reply``) is here for tests and tools, so
that a round trip can be checked.

Nothing from the client is trusted: every parser checks lengths and counts
against the bytes it was given and raises :class:`ProtocolError` (the
stream cannot be followed any more: hard disconnect) or
:class:`OptionError` (one option is malformed: answer it with
``NBD_REP_ERR_INVALID`` and go on).
"""
from __future__ import annotations

import collections
import dataclasses
import struct

# -- magics ------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943            # "NBDMAGIC", INIT_PASSWD
IHAVEOPT = 0x49484156454F5054            # "IHAVEOPT", newstyle and every option
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# -- handshake flags (server, 16 bits) and client flags (32 bits) -------------

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# -- transmission flags (16 bits) ----------------------------------------------

FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# -- options -------------------------------------------------------------------

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

OPTION_NAMES = {
    OPT_EXPORT_NAME: "NBD_OPT_EXPORT_NAME", OPT_ABORT: "NBD_OPT_ABORT",
    OPT_LIST: "NBD_OPT_LIST", OPT_PEEK_EXPORT: "NBD_OPT_PEEK_EXPORT",
    OPT_STARTTLS: "NBD_OPT_STARTTLS", OPT_INFO: "NBD_OPT_INFO", OPT_GO: "NBD_OPT_GO",
    OPT_STRUCTURED_REPLY: "NBD_OPT_STRUCTURED_REPLY",
    OPT_LIST_META_CONTEXT: "NBD_OPT_LIST_META_CONTEXT",
    OPT_SET_META_CONTEXT: "NBD_OPT_SET_META_CONTEXT",
}

# -- option replies ------------------------------------------------------------

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
_REP_ERR = 1 << 31
REP_ERR_UNSUP = _REP_ERR + 1
REP_ERR_POLICY = _REP_ERR + 2
REP_ERR_INVALID = _REP_ERR + 3
REP_ERR_PLATFORM = _REP_ERR + 4
REP_ERR_TLS_REQD = _REP_ERR + 5
REP_ERR_UNKNOWN = _REP_ERR + 6
REP_ERR_SHUTDOWN = _REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = _REP_ERR + 8
REP_ERR_TOO_BIG = _REP_ERR + 9

# -- NBD_REP_INFO items ----------------------------------------------------------

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission: commands, command flags, replies -----------------------------

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

COMMAND_NAMES = {
    CMD_READ: "NBD_CMD_READ", CMD_WRITE: "NBD_CMD_WRITE", CMD_DISC: "NBD_CMD_DISC",
    CMD_FLUSH: "NBD_CMD_FLUSH", CMD_TRIM: "NBD_CMD_TRIM", CMD_CACHE: "NBD_CMD_CACHE",
    CMD_WRITE_ZEROES: "NBD_CMD_WRITE_ZEROES", CMD_BLOCK_STATUS: "NBD_CMD_BLOCK_STATUS",
}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0

REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# -- errors (the reply's error field) ---------------------------------------------

EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

ERROR_NAMES = {
    EPERM: "NBD_EPERM", EIO: "NBD_EIO", ENOMEM: "NBD_ENOMEM", EINVAL: "NBD_EINVAL",
    ENOSPC: "NBD_ENOSPC", EOVERFLOW: "NBD_EOVERFLOW", ENOTSUP: "NBD_ENOTSUP",
    ESHUTDOWN: "NBD_ESHUTDOWN",
}

# -- base:allocation --------------------------------------------------------------

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

# -- limits of the format --------------------------------------------------------

STRING_MAX = 4096                  # an export name or message, in bytes
MESSAGE_MAX = 4096                 # an error chunk's message
ZERO_PAD = 124                     # after NBD_OPT_EXPORT_NAME without NO_ZEROES
HOLE_MAX = (1 << 32) - 1           # an OFFSET_HOLE chunk's size field
DATA_CHUNK_MAX = (1 << 32) - 9     # an OFFSET_DATA chunk's bytes (length - 8 fits 32 bits)

GREETING_SIZE = 18                 # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS_SIZE = 4
OPTION_HEADER_SIZE = 16
OPTION_REPLY_HEADER_SIZE = 20
REQUEST_SIZE = 28
SIMPLE_REPLY_SIZE = 16
STRUCTURED_HEADER_SIZE = 20

_GREETING = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_OPTION_HEADER = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_INFO_EXPORT = struct.Struct(">HQH")
_INFO_BLOCK_SIZE = struct.Struct(">HIII")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_OFFSET = struct.Struct(">Q")
_HOLE = struct.Struct(">QI")
_ERROR = struct.Struct(">IH")
_DESCRIPTOR = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer broke the framing or a MUST of the protocol: the stream
    cannot be followed, so the connection ends (a hard disconnect)."""


class OptionError(Exception):
    """One option is malformed; it is answered with ``reply`` (an
    ``NBD_REP_ERR_*``) and this message, and negotiation goes on."""

    def __init__(self, message, reply=REP_ERR_INVALID):
        super().__init__(message)
        self.reply = reply


def option_name(opt):
    return OPTION_NAMES.get(opt, f"option {opt}")


def command_name(cmd):
    return COMMAND_NAMES.get(cmd, f"command {cmd}")


def decode_string(raw, what):
    """Decode a protocol string: UTF-8, no NUL, at most STRING_MAX bytes."""
    if len(raw) > STRING_MAX:
        raise OptionError(f"{what} is {len(raw)} bytes long; the limit is {STRING_MAX}")
    if b"\0" in raw:
        raise OptionError(f"{what} contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OptionError(f"{what} is not valid UTF-8") from None


def _encode_string(text, what):
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > STRING_MAX:
        raise ValueError(f"{what} is {len(raw)} bytes long; the limit is {STRING_MAX}")
    return raw


def _message(text):
    """An error message for the wire: UTF-8, cut to MESSAGE_MAX bytes on a
    character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) > MESSAGE_MAX:
        raw = raw[:MESSAGE_MAX].decode("utf-8", "ignore").encode("utf-8")
    return raw


# ============================================================================
# Handshake

def encode_greeting(flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
    """S: NBDMAGIC, IHAVEOPT, 16 bits of handshake flags."""
    return _GREETING.pack(NBDMAGIC, IHAVEOPT, flags)


def parse_greeting(data):
    """The handshake flags of a server greeting (client side)."""
    if len(data) != GREETING_SIZE:
        raise ProtocolError(f"greeting is {len(data)} bytes, not {GREETING_SIZE}")
    magic, opt, flags = _GREETING.unpack(data)
    if magic != NBDMAGIC:
        raise ProtocolError(f"bad server magic 0x{magic:016x}")
    if opt != IHAVEOPT:
        raise ProtocolError(f"not a newstyle server (0x{opt:016x}: oldstyle is not supported)")
    return flags


def encode_client_flags(flags):
    return _U32.pack(flags)


def parse_client_flags(data, server_flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
    """The client's 32 flag bits.  A flag the server did not offer is a
    ProtocolError: the spec says the server MUST drop the connection."""
    if len(data) != CLIENT_FLAGS_SIZE:
        raise ProtocolError(f"client flags are {len(data)} bytes, not {CLIENT_FLAGS_SIZE}")
    (flags,) = _U32.unpack(data)
    known = (FLAG_C_FIXED_NEWSTYLE if server_flags & FLAG_FIXED_NEWSTYLE else 0) | (
        FLAG_C_NO_ZEROES if server_flags & FLAG_NO_ZEROES else 0)
    if flags & ~known:
        raise ProtocolError(f"client flags 0x{flags:08x} set bits the server did not offer "
                            f"(0x{flags & ~known:08x})")
    return flags


def encode_option(opt, data=b""):
    """C: IHAVEOPT, option, length, data."""
    return _OPTION_HEADER.pack(IHAVEOPT, opt, len(data)) + bytes(data)


def parse_option_header(data):
    """(option, length of its data) from the 16-byte option header."""
    if len(data) != OPTION_HEADER_SIZE:
        raise ProtocolError(f"option header is {len(data)} bytes, not {OPTION_HEADER_SIZE}")
    magic, opt, length = _OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise ProtocolError(f"bad option magic 0x{magic:016x} (expected IHAVEOPT)")
    return opt, length


def encode_export_request(name, infos=()):
    """Data of NBD_OPT_INFO / NBD_OPT_GO: name, then NBD_INFO_* requests."""
    raw = _encode_string(name, "export name")
    infos = list(infos)
    return (_U32.pack(len(raw)) + raw + _U16.pack(len(infos))
            + b"".join(_U16.pack(i) for i in infos))


def parse_export_request(data):
    """(name, [NBD_INFO_* requested]) from NBD_OPT_INFO / NBD_OPT_GO data."""
    if len(data) < 6:
        raise OptionError(f"option data is {len(data)} bytes; it needs at least 6 "
                          "(name length, name, number of information requests)")
    (nlen,) = _U32.unpack_from(data, 0)
    if nlen > len(data) - 6:
        raise OptionError(f"export name length {nlen} does not fit the option's "
                          f"{len(data)} bytes")
    name = decode_string(bytes(data[4:4 + nlen]), "export name")
    (count,) = _U16.unpack_from(data, 4 + nlen)
    rest = len(data) - 6 - nlen
    if rest != 2 * count:
        raise OptionError(f"{count} information requests need {2 * count} bytes, "
                          f"the option has {rest}")
    infos = [_U16.unpack_from(data, 6 + nlen + 2 * k)[0] for k in range(count)]
    return name, infos


def encode_meta_context_request(name, queries=()):
    """Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""
    raw = _encode_string(name, "export name")
    parts = [_U32.pack(len(raw)), raw, _U32.pack(len(queries))]
    for q in queries:
        rq = _encode_string(q, "query")
        parts += [_U32.pack(len(rq)), rq]
    return b"".join(parts)


def parse_meta_context_request(data):
    """(name, [queries]) from NBD_OPT_{LIST,SET}_META_CONTEXT data."""
    n = len(data)
    if n < 8:
        raise OptionError(f"option data is {n} bytes; it needs at least 8 "
                          "(name length, name, number of queries)")
    (nlen,) = _U32.unpack_from(data, 0)
    if nlen > n - 8:
        raise OptionError(f"export name length {nlen} does not fit the option's {n} bytes")
    name = decode_string(bytes(data[4:4 + nlen]), "export name")
    pos = 4 + nlen
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    if count > (n - pos) // 4:  # each query takes 4 bytes at least
        raise OptionError(f"{count} queries cannot fit the {n - pos} bytes left")
    queries = []
    for k in range(count):
        if n - pos < 4:
            raise OptionError(f"query {k} has no length field")
        (qlen,) = _U32.unpack_from(data, pos)
        pos += 4
        if qlen > n - pos:
            raise OptionError(f"query {k} of {qlen} bytes runs past the option's end")
        queries.append(decode_string(bytes(data[pos:pos + qlen]), f"query {k}"))
        pos += qlen
    if pos != n:
        raise OptionError(f"{n - pos} bytes after the last query")
    return name, queries


def encode_option_reply(opt, reply, data=b""):
    """S: reply magic, option, reply type, length, data."""
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, opt, reply, len(data)) + bytes(data)


def encode_option_error(opt, reply, message):
    return encode_option_reply(opt, reply, _message(message))


def parse_option_reply_header(data):
    """(option, reply type, length) of an option reply (client side)."""
    if len(data) != OPTION_REPLY_HEADER_SIZE:
        raise ProtocolError(f"option reply header is {len(data)} bytes")
    magic, opt, reply, length = _OPTION_REPLY.unpack(data)
    if magic != OPTION_REPLY_MAGIC:
        raise ProtocolError(f"bad option reply magic 0x{magic:x}")
    return opt, reply, length


def encode_rep_server(opt, name, description=""):
    """NBD_REP_SERVER: name length, name, then a description for humans."""
    raw = _encode_string(name, "export name")
    desc = _encode_string(description, "description")
    return encode_option_reply(opt, REP_SERVER, _U32.pack(len(raw)) + raw + desc)


def parse_rep_server(data):
    """(name, description) of NBD_REP_SERVER data."""
    if len(data) < 4:
        raise ProtocolError("NBD_REP_SERVER shorter than 4 bytes")
    (nlen,) = _U32.unpack_from(data, 0)
    if nlen > len(data) - 4:
        raise ProtocolError("NBD_REP_SERVER name runs past its end")
    return (bytes(data[4:4 + nlen]).decode("utf-8"),
            bytes(data[4 + nlen:]).decode("utf-8", "replace"))


def encode_info_export(opt, size, flags):
    return encode_option_reply(opt, REP_INFO, _INFO_EXPORT.pack(INFO_EXPORT, size, flags))


def encode_info_name(opt, name):
    return encode_option_reply(opt, REP_INFO, _U16.pack(INFO_NAME) + _encode_string(name, "name"))


def encode_info_description(opt, text):
    return encode_option_reply(
        opt, REP_INFO, _U16.pack(INFO_DESCRIPTION) + _encode_string(text, "description"))


def encode_info_block_size(opt, minimum, preferred, maximum):
    return encode_option_reply(
        opt, REP_INFO, _INFO_BLOCK_SIZE.pack(INFO_BLOCK_SIZE, minimum, preferred, maximum))


def parse_info(data):
    """(NBD_INFO_* type, decoded value) of NBD_REP_INFO data: (size, flags)
    for EXPORT, a str for NAME and DESCRIPTION, (min, preferred, max) for
    BLOCK_SIZE, the raw bytes for anything else."""
    if len(data) < 2:
        raise ProtocolError("NBD_REP_INFO shorter than 2 bytes")
    (kind,) = _U16.unpack_from(data, 0)
    if kind == INFO_EXPORT:
        if len(data) != _INFO_EXPORT.size:
            raise ProtocolError(f"NBD_INFO_EXPORT is {len(data)} bytes, not 12")
        _, size, flags = _INFO_EXPORT.unpack(data)
        return kind, (size, flags)
    if kind == INFO_BLOCK_SIZE:
        if len(data) != _INFO_BLOCK_SIZE.size:
            raise ProtocolError(f"NBD_INFO_BLOCK_SIZE is {len(data)} bytes, not 14")
        return kind, _INFO_BLOCK_SIZE.unpack(data)[1:]
    if kind in (INFO_NAME, INFO_DESCRIPTION):
        return kind, bytes(data[2:]).decode("utf-8", "replace")
    return kind, bytes(data[2:])


def encode_rep_meta_context(opt, context_id, name):
    return encode_option_reply(opt, REP_META_CONTEXT,
                               _U32.pack(context_id) + _encode_string(name, "context name"))


def parse_rep_meta_context(data):
    """(context id, name) of NBD_REP_META_CONTEXT data."""
    if len(data) < 4:
        raise ProtocolError("NBD_REP_META_CONTEXT shorter than 4 bytes")
    return _U32.unpack_from(data, 0)[0], bytes(data[4:]).decode("utf-8")


def encode_export_name_reply(size, flags, no_zeroes):
    """The answer to NBD_OPT_EXPORT_NAME: size, flags, 124 zeros unless NO_ZEROES."""
    return _EXPORT_NAME_REPLY.pack(size, flags) + (b"" if no_zeroes else bytes(ZERO_PAD))


# ============================================================================
# Transmission

class Request(collections.namedtuple("Request", "flags type handle offset length")):
    """One transmission request, as the client sent it (a named tuple: one
    is made per request, and a frozen dataclass costs several times more)."""

    __slots__ = ()


def encode_request(type, handle, offset=0, length=0, flags=0, data=b""):
    """C: a request header (and a write's payload)."""
    return _REQUEST.pack(REQUEST_MAGIC, flags, type, handle, offset, length) + bytes(data)


_new_request = tuple.__new__


def parse_request(data):
    """A :class:`Request` from the 28-byte header.  Bad magic is a
    ProtocolError: the stream has lost its framing."""
    if len(data) != REQUEST_SIZE:
        raise ProtocolError(f"request header is {len(data)} bytes, not {REQUEST_SIZE}")
    magic, flags, kind, handle, offset, length = _REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(f"bad request magic 0x{magic:08x} (expected 0x{REQUEST_MAGIC:08x})")
    return _new_request(Request, (flags, kind, handle, offset, length))


# Command flags each command may carry (FUA on every command when the
# export offers it: the spec says a server MUST accept it anywhere).
_FLAGS_FOR = {
    CMD_READ: CMD_FLAG_DF,
    CMD_WRITE: 0,
    CMD_DISC: 0,
    CMD_FLUSH: 0,
    CMD_TRIM: 0,
    CMD_CACHE: 0,
    CMD_WRITE_ZEROES: CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
    CMD_BLOCK_STATUS: CMD_FLAG_REQ_ONE,
}

# The transmission flag that must be set before the client may send a command.
_EXPOSED_BY = {
    CMD_FLUSH: FLAG_SEND_FLUSH,
    CMD_TRIM: FLAG_SEND_TRIM,
    CMD_WRITE_ZEROES: FLAG_SEND_WRITE_ZEROES,
    CMD_CACHE: FLAG_SEND_CACHE,
}

_WRITES = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)
_MAX_LIMITED = (CMD_READ, CMD_WRITE, CMD_CACHE, CMD_WRITE_ZEROES)


@dataclasses.dataclass(frozen=True)
class Session:
    """What a connection negotiated, against which requests are checked."""

    size: int
    flags: int                 # transmission flags sent to the client
    structured: bool           # NBD_OPT_STRUCTURED_REPLY was acknowledged
    contexts: tuple = ()       # ids of the selected metadata contexts
    minimum: int = 1           # block size constraints
    maximum: int = 32 << 20


def check_request(req, s):
    """Check a request against the session: 0 if it may run, else the NBD
    error to answer it with and a message saying why (the spec's SHOULDs:
    unknown command or flag NBD_EINVAL, writes on a read-only export
    NBD_EPERM, writes past the end NBD_ENOSPC, other ranges past the end or
    over the maximum block size NBD_EINVAL, an unfragmented read over it
    NBD_EOVERFLOW).  NBD_CMD_DISC is the caller's (it has no reply)."""
    kind, flags, off, length = req.type, req.flags, req.offset, req.length
    name = command_name(kind)
    allowed = _FLAGS_FOR.get(kind)
    if allowed is None:
        return EINVAL, f"unknown command {kind}"
    if kind in _WRITES and s.flags & FLAG_READ_ONLY:
        return EPERM, f"{name} on a read-only export"
    need = _EXPOSED_BY.get(kind)
    if need is not None and not s.flags & need:
        return EINVAL, f"{name} was not offered for this export"
    if s.flags & FLAG_SEND_FUA:
        allowed |= CMD_FLAG_FUA
    if kind == CMD_READ and not s.flags & FLAG_SEND_DF:
        allowed &= ~CMD_FLAG_DF
    if kind == CMD_WRITE_ZEROES and not s.flags & FLAG_SEND_FAST_ZERO:
        allowed &= ~CMD_FLAG_FAST_ZERO
    if flags & ~allowed:
        return EINVAL, f"{name} does not take command flags 0x{flags & ~allowed:04x}"
    if kind == CMD_BLOCK_STATUS and not (s.structured and s.contexts):
        return EINVAL, f"{name} needs a metadata context (NBD_OPT_SET_META_CONTEXT)"
    if kind == CMD_BLOCK_STATUS and not length:
        return EINVAL, f"{name} of 0 bytes: there is no status to report"
    if kind in (CMD_FLUSH, CMD_DISC):
        if off or length:
            return EINVAL, f"{name} must have offset and length 0"
        return 0, ""
    end = off + length
    if end > s.size:
        what = f"{name} of {length} bytes at offset {off} ends past the export's {s.size} bytes"
        return (ENOSPC if kind in (CMD_WRITE, CMD_WRITE_ZEROES) else EINVAL), what
    if s.minimum > 1 and (off % s.minimum or length % s.minimum):
        return EINVAL, (f"{name} at offset {off} of {length} bytes is not aligned to the "
                        f"minimum block size {s.minimum}")
    if kind in _MAX_LIMITED and length > s.maximum and not (
            kind == CMD_WRITE_ZEROES and flags & CMD_FLAG_FAST_ZERO):
        if kind == CMD_READ and flags & CMD_FLAG_DF:
            return EOVERFLOW, (f"{name} of {length} bytes cannot be sent unfragmented; the "
                               f"maximum is {s.maximum}")
        return EINVAL, (f"{name} of {length} bytes exceeds the maximum block size "
                        f"{s.maximum}")
    return 0, ""


def encode_simple_reply(handle, error=0):
    """S: simple reply header (a read's data follows it when error is 0)."""
    return _SIMPLE.pack(SIMPLE_REPLY_MAGIC, error, handle)


def parse_simple_reply(data):
    """(error, handle) of a simple reply header (client side)."""
    magic, error, handle = _SIMPLE.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise ProtocolError(f"bad simple reply magic 0x{magic:08x}")
    return error, handle


def encode_chunk_header(handle, kind, length, flags=0):
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, kind, handle, length)


def parse_chunk_header(data):
    """(flags, type, handle, length) of a structured reply chunk (client side)."""
    magic, flags, kind, handle, length = _CHUNK.unpack(data)
    if magic != STRUCTURED_REPLY_MAGIC:
        raise ProtocolError(f"bad structured reply magic 0x{magic:08x}")
    return flags, kind, handle, length


def parse_reply_magic(data):
    """Which reply the next bytes start (from their first 4)."""
    return _U32.unpack_from(data, 0)[0]


def encode_none_chunk(handle):
    return encode_chunk_header(handle, REPLY_TYPE_NONE, 0, REPLY_FLAG_DONE)


def encode_data_chunk_header(handle, offset, nbytes, done=True):
    """Header and offset of an OFFSET_DATA chunk; ``nbytes`` of data follow."""
    if not 0 < nbytes <= DATA_CHUNK_MAX:
        raise ValueError(f"an OFFSET_DATA chunk holds 1 to {DATA_CHUNK_MAX} bytes, not {nbytes}")
    return encode_chunk_header(handle, REPLY_TYPE_OFFSET_DATA, 8 + nbytes,
                               REPLY_FLAG_DONE if done else 0) + _OFFSET.pack(offset)


def encode_hole_chunk(handle, offset, size, done=False):
    if not 0 < size <= HOLE_MAX:
        raise ValueError(f"an OFFSET_HOLE chunk covers 1 to {HOLE_MAX} bytes, not {size}")
    return encode_chunk_header(handle, REPLY_TYPE_OFFSET_HOLE, _HOLE.size,
                               REPLY_FLAG_DONE if done else 0) + _HOLE.pack(offset, size)


def encode_error_chunk(handle, error, message="", offset=None, done=True):
    """An ERROR chunk, or ERROR_OFFSET when ``offset`` is given."""
    if not error:
        raise ValueError("an error chunk needs a nonzero error")
    msg = _message(message)
    body = _ERROR.pack(error, len(msg)) + msg
    kind = REPLY_TYPE_ERROR
    if offset is not None:
        body += _OFFSET.pack(offset)
        kind = REPLY_TYPE_ERROR_OFFSET
    return encode_chunk_header(handle, kind, len(body), REPLY_FLAG_DONE if done else 0) + body


def parse_error_chunk(kind, payload):
    """(error, message, offset or None) of an error chunk's payload."""
    if len(payload) < 6:
        raise ProtocolError("error chunk shorter than 6 bytes")
    error, mlen = _ERROR.unpack_from(payload, 0)
    extra = 8 if kind == REPLY_TYPE_ERROR_OFFSET else 0
    if mlen > len(payload) - 6 - extra:
        raise ProtocolError("error chunk message runs past its end")
    message = bytes(payload[6:6 + mlen]).decode("utf-8", "replace")
    offset = _OFFSET.unpack_from(payload, 6 + mlen)[0] if extra else None
    return error, message, offset


def encode_block_status_chunk(handle, context_id, extents, done=True):
    """A BLOCK_STATUS chunk: the context id, then (length, flags) descriptors."""
    if not extents:
        raise ValueError("a block status chunk needs at least one extent")
    body = [_U32.pack(context_id)]
    for length, flags in extents:
        if not 0 < length <= 0xFFFFFFFF:
            raise ValueError(f"an extent length must be 1 to 2**32-1, not {length}")
        body.append(_DESCRIPTOR.pack(length, flags))
    payload = b"".join(body)
    return encode_chunk_header(handle, REPLY_TYPE_BLOCK_STATUS, len(payload),
                               REPLY_FLAG_DONE if done else 0) + payload


def parse_block_status(payload):
    """(context id, [(length, flags)]) of a BLOCK_STATUS chunk's payload."""
    if len(payload) < 12 or (len(payload) - 4) % 8:
        raise ProtocolError(f"block status payload of {len(payload)} bytes")
    (ctx,) = _U32.unpack_from(payload, 0)
    return ctx, [_DESCRIPTOR.unpack_from(payload, 4 + 8 * k)
                 for k in range((len(payload) - 4) // 8)]


def allocation_extents(offset, runs, end, req_one=False):
    """``base:allocation`` descriptors for [offset, end) from the data runs
    of :meth:`cowblock.Device.extents_range` (sorted, within [offset, end)):
    data has status 0, the gaps between are holes that read as zeros.  A
    request's length is 32 bits, so every descriptor fits its field.  With
    ``req_one``, only the first descriptor."""
    if end <= offset:
        raise ValueError(f"empty range [{offset}, {end})")
    out = []
    pos = offset
    for start, n in runs:
        if start < pos or start + n > end or n <= 0:
            raise ValueError(f"run ({start}, {n}) is not sorted within [{offset}, {end})")
        if start > pos:
            out.append((start - pos, STATE_HOLE | STATE_ZERO))
        out.append((n, 0))
        pos = start + n
    if end > pos:
        out.append((end - pos, STATE_HOLE | STATE_ZERO))
    return out[:1] if req_one else out
