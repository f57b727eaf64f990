"""The NBD codec and the option state machine, without sockets: round trips,
every parser against bytes no client should send, the request checks, and
hypothesis fuzzing (bounded here; bigger budgets with --run-slow)."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowblock.nbd import protocol as P
from cowblock.nbd.negotiate import ALLOCATION_ID, Action, Export, Negotiation


def budget(run_slow, fast=150, slow=4000):
    return settings(max_examples=slow if run_slow else fast, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ constants


def test_constants_are_the_specs():
    # values from doc/proto.md, checked once so that a typo cannot hide
    assert P.encode_greeting()[:16] == b"NBDMAGICIHAVEOPT"
    assert P.OPTION_REPLY_MAGIC == 0x3E889045565A9
    assert (P.REQUEST_MAGIC, P.SIMPLE_REPLY_MAGIC, P.STRUCTURED_REPLY_MAGIC) == (
        0x25609513, 0x67446698, 0x668E33EF)
    assert (P.OPT_GO, P.OPT_STRUCTURED_REPLY, P.OPT_LIST_META_CONTEXT,
            P.OPT_SET_META_CONTEXT) == (7, 8, 9, 10)
    assert (P.REP_ERR_UNSUP, P.REP_ERR_TOO_BIG) == (2**31 + 1, 2**31 + 9)
    assert (P.CMD_CACHE, P.CMD_WRITE_ZEROES, P.CMD_BLOCK_STATUS) == (5, 6, 7)
    assert (P.FLAG_CAN_MULTI_CONN, P.FLAG_SEND_CACHE, P.FLAG_SEND_FAST_ZERO) == (
        1 << 8, 1 << 10, 1 << 11)
    assert (P.EOVERFLOW, P.ENOTSUP, P.ESHUTDOWN) == (75, 95, 108)
    assert (P.REPLY_TYPE_BLOCK_STATUS, P.REPLY_TYPE_ERROR_OFFSET) == (5, 2**15 + 2)


# ------------------------------------------------------------------ handshake


def test_greeting_and_client_flags():
    assert P.parse_greeting(P.encode_greeting()) == P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES
    with pytest.raises(P.ProtocolError, match="oldstyle"):
        P.parse_greeting(struct.pack(">QQH", P.NBDMAGIC, 0x00420281861253, 0))
    assert P.parse_client_flags(P.encode_client_flags(3)) == 3
    with pytest.raises(P.ProtocolError, match="did not offer"):
        P.parse_client_flags(P.encode_client_flags(4))
    with pytest.raises(P.ProtocolError, match="did not offer"):
        P.parse_client_flags(P.encode_client_flags(2), server_flags=P.FLAG_FIXED_NEWSTYLE)
    with pytest.raises(P.ProtocolError):
        P.parse_client_flags(b"\0\0\0")


def test_option_header():
    raw = P.encode_option(P.OPT_LIST, b"abc")
    assert P.parse_option_header(raw[:16]) == (P.OPT_LIST, 3)
    with pytest.raises(P.ProtocolError, match="IHAVEOPT"):
        P.parse_option_header(b"x" * 16)


@pytest.mark.parametrize("name,infos", [("", []), ("disk", [3]), ("é" * 10, [0, 1, 2, 3, 99])])
def test_export_request_round_trip(name, infos):
    assert P.parse_export_request(P.encode_export_request(name, infos)) == (name, infos)


@pytest.mark.parametrize("data,match", [
    (b"", "at least 6"),
    (b"\0\0\0\0\0", "at least 6"),
    (struct.pack(">I", 10) + b"ab\0\0", "does not fit"),
    (struct.pack(">I", 100) + b"abc" + struct.pack(">H", 0), "does not fit"),
    (struct.pack(">I", 1) + b"a" + struct.pack(">H", 2) + b"\0\0", "need 4 bytes"),
    (struct.pack(">I", 2) + b"a\0" + struct.pack(">H", 0), "NUL"),
    (struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">H", 0), "UTF-8"),
])
def test_export_request_rejects(data, match):
    with pytest.raises(P.OptionError, match=match):
        P.parse_export_request(data)


def test_meta_context_request():
    data = P.encode_meta_context_request("d", ["base:allocation", "x-y:z"])
    assert P.parse_meta_context_request(data) == ("d", ["base:allocation", "x-y:z"])
    with pytest.raises(P.OptionError, match="cannot fit"):
        P.parse_meta_context_request(struct.pack(">I", 0) + struct.pack(">I", 2**32 - 1))
    with pytest.raises(P.OptionError, match="past the option"):
        P.parse_meta_context_request(struct.pack(">III", 0, 1, 50) + b"base:")
    with pytest.raises(P.OptionError, match="after the last"):
        P.parse_meta_context_request(struct.pack(">II", 0, 0) + b"junk")


def test_option_replies_round_trip():
    raw = P.encode_rep_server(P.OPT_LIST, "disk", "a device")
    opt, rep, n = P.parse_option_reply_header(raw[:20])
    assert (opt, rep, n) == (P.OPT_LIST, P.REP_SERVER, len(raw) - 20)
    assert P.parse_rep_server(raw[20:]) == ("disk", "a device")
    raw = P.encode_info_export(P.OPT_GO, 1 << 40, 0x1234)
    assert P.parse_info(raw[20:]) == (P.INFO_EXPORT, (1 << 40, 0x1234))
    raw = P.encode_info_block_size(P.OPT_GO, 1, 4096, 1 << 25)
    assert P.parse_info(raw[20:]) == (P.INFO_BLOCK_SIZE, (1, 4096, 1 << 25))
    raw = P.encode_rep_meta_context(P.OPT_SET_META_CONTEXT, 7, "base:allocation")
    assert P.parse_rep_meta_context(raw[20:]) == (7, "base:allocation")
    assert len(P.encode_export_name_reply(5, 1, no_zeroes=False)) == 10 + 124
    assert len(P.encode_export_name_reply(5, 1, no_zeroes=True)) == 10


def test_error_message_is_cut_to_the_string_limit():
    raw = P.encode_option_error(P.OPT_GO, P.REP_ERR_UNKNOWN, "é" * 5000)
    assert len(raw) - 20 <= P.STRING_MAX
    raw[20:].decode("utf-8")  # cut on a character boundary


# ------------------------------------------------------------------ transmission


def test_request_round_trip():
    raw = P.encode_request(P.CMD_WRITE, 2**64 - 1, 2**63, 2**32 - 1, P.CMD_FLAG_FUA)
    assert P.parse_request(raw) == P.Request(P.CMD_FLAG_FUA, P.CMD_WRITE, 2**64 - 1, 2**63,
                                             2**32 - 1)
    with pytest.raises(P.ProtocolError, match="magic"):
        P.parse_request(b"\0" * 28)
    with pytest.raises(P.ProtocolError, match="28"):
        P.parse_request(raw[:27])


RW = (P.FLAG_HAS_FLAGS | P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_TRIM
      | P.FLAG_SEND_WRITE_ZEROES | P.FLAG_SEND_FAST_ZERO | P.FLAG_SEND_CACHE | P.FLAG_SEND_DF)
SESSION = P.Session(size=1 << 20, flags=RW, structured=True, contexts=(1,), maximum=1 << 16)
RO = P.Session(size=1 << 20, flags=P.FLAG_HAS_FLAGS | P.FLAG_READ_ONLY | P.FLAG_SEND_FLUSH,
               structured=False)


def req(kind, off=0, length=0, flags=0):
    return P.Request(flags, kind, 1, off, length)


@pytest.mark.parametrize("r,session,error", [
    (req(P.CMD_READ, 0, 4096), SESSION, 0),
    (req(P.CMD_READ, (1 << 20) - 1, 1), SESSION, 0),
    (req(P.CMD_READ, (1 << 20) - 1, 2), SESSION, P.EINVAL),           # past the end
    (req(P.CMD_READ, 2**64 - 1, 2**32 - 1), SESSION, P.EINVAL),       # offset + length wraps
    (req(P.CMD_WRITE, (1 << 20), 1), SESSION, P.ENOSPC),              # write past the end
    (req(P.CMD_WRITE_ZEROES, (1 << 20) - 1, 2), SESSION, P.ENOSPC),
    (req(P.CMD_TRIM, (1 << 20), 1), SESSION, P.EINVAL),
    (req(P.CMD_READ, 0, (1 << 16) + 1), SESSION, P.EINVAL),            # over the maximum
    (req(P.CMD_READ, 0, (1 << 16) + 1, P.CMD_FLAG_DF), SESSION, P.EOVERFLOW),
    (req(P.CMD_TRIM, 0, 1 << 20), SESSION, 0),                         # trim: no maximum
    (req(P.CMD_WRITE_ZEROES, 0, 1 << 20), SESSION, P.EINVAL),
    (req(P.CMD_WRITE_ZEROES, 0, 1 << 20, P.CMD_FLAG_FAST_ZERO), SESSION, 0),
    (req(P.CMD_WRITE, 0, 1, P.CMD_FLAG_FUA), SESSION, 0),
    (req(P.CMD_WRITE, 0, 1, P.CMD_FLAG_NO_HOLE), SESSION, P.EINVAL),  # flag of another command
    (req(P.CMD_READ, 0, 1, 1 << 9), SESSION, P.EINVAL),                # unknown flag
    (req(99), SESSION, P.EINVAL),                                       # unknown command
    (req(P.CMD_FLUSH, 1, 0), SESSION, P.EINVAL),
    (req(P.CMD_BLOCK_STATUS, 0, 0), SESSION, P.EINVAL),
    (req(P.CMD_BLOCK_STATUS, 0, 1 << 20, P.CMD_FLAG_REQ_ONE), SESSION, 0),
    (req(P.CMD_BLOCK_STATUS, 0, 512), RO, P.EINVAL),                    # no context
    (req(P.CMD_WRITE, 0, 1), RO, P.EPERM),
    (req(P.CMD_TRIM, 0, 1), RO, P.EPERM),
    (req(P.CMD_WRITE_ZEROES, 0, 1), RO, P.EPERM),
    (req(P.CMD_CACHE, 0, 1), RO, P.EINVAL),                             # not offered
    (req(P.CMD_READ, 0, 1, P.CMD_FLAG_DF), RO, P.EINVAL),               # DF not offered
    (req(P.CMD_READ, 0, 1, P.CMD_FLAG_FUA), RO, P.EINVAL),              # FUA not offered
])
def test_check_request(r, session, error):
    got, message = P.check_request(r, session)
    assert got == error, message
    assert bool(message) == bool(error)


def test_check_request_alignment():
    s = P.Session(size=1 << 20, flags=RW, structured=True, minimum=512)
    assert P.check_request(req(P.CMD_READ, 512, 1024), s)[0] == 0
    assert P.check_request(req(P.CMD_READ, 1, 512), s)[0] == P.EINVAL


def test_structured_chunks_round_trip():
    raw = P.encode_data_chunk_header(9, 4096, 3) + b"abc"
    flags, kind, handle, length = P.parse_chunk_header(raw[:20])
    assert (flags, kind, handle, length) == (P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, 9, 11)
    raw = P.encode_error_chunk(9, P.EINVAL, "bad", offset=77)
    flags, kind, handle, length = P.parse_chunk_header(raw[:20])
    assert P.parse_error_chunk(kind, raw[20:]) == (P.EINVAL, "bad", 77)
    raw = P.encode_block_status_chunk(9, ALLOCATION_ID, [(512, 3), (1024, 0)])
    assert P.parse_block_status(raw[20:]) == (ALLOCATION_ID, [(512, 3), (1024, 0)])
    assert P.parse_chunk_header(P.encode_none_chunk(4)) == (P.REPLY_FLAG_DONE, 0, 4, 0)
    with pytest.raises(ValueError):
        P.encode_block_status_chunk(1, 1, [])
    with pytest.raises(ValueError):
        P.encode_error_chunk(1, 0)


def test_allocation_extents():
    H = P.STATE_HOLE | P.STATE_ZERO
    assert P.allocation_extents(0, [], 4096) == [(4096, H)]
    assert P.allocation_extents(100, [(100, 50), (1000, 24)], 2048) == [
        (50, 0), (850, H), (24, 0), (1024, H)]
    assert P.allocation_extents(0, [(512, 512)], 1024, req_one=True) == [(512, H)]
    with pytest.raises(ValueError):
        P.allocation_extents(0, [(10, 5), (12, 5)], 100)


# ------------------------------------------------------------------ negotiation


class Catalogue:
    def __init__(self, **sizes):
        self.exports = {n: Export(n, s, readonly=n.startswith("ro"), description=f"{n} dev")
                        for n, s in sizes.items()}

    def names(self):
        return sorted(self.exports)

    def lookup(self, name):
        return self.exports.get(name)


def replies(outcome):
    """[(option, reply type, data)] of an outcome, checking the framing."""
    out = []
    for raw in outcome.replies:
        opt, rep, n = P.parse_option_reply_header(raw[:20])
        assert len(raw) == 20 + n
        out.append((opt, rep, raw[20:]))
    return out


def test_negotiation_go_with_everything():
    n = Negotiation(Catalogue(disk=1 << 30), P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)
    assert replies(n.handle(P.OPT_STRUCTURED_REPLY, b""))[0][1] == P.REP_ACK
    got = replies(n.handle(P.OPT_SET_META_CONTEXT, P.encode_meta_context_request(
        "disk", ["base:allocation", "qemu:dirty-bitmap:x", "base:nothing"])))
    assert [(r, P.parse_rep_meta_context(d) if r == P.REP_META_CONTEXT else d)
            for _, r, d in got] == [(P.REP_META_CONTEXT, (ALLOCATION_ID, P.BASE_ALLOCATION)),
                                    (P.REP_ACK, b"")]
    out = n.handle(P.OPT_GO, P.encode_export_request("disk", [P.INFO_NAME, P.INFO_DESCRIPTION]))
    assert out.action is Action.TRANSMISSION and out.export.name == "disk"
    infos = dict(P.parse_info(d) for _, r, d in replies(out) if r == P.REP_INFO)
    size, flags = infos[P.INFO_EXPORT]
    assert size == 1 << 30 and flags & P.FLAG_CAN_MULTI_CONN and flags & P.FLAG_SEND_DF
    assert not flags & P.FLAG_READ_ONLY
    assert infos[P.INFO_NAME] == "disk" and infos[P.INFO_DESCRIPTION] == "disk dev"
    assert infos[P.INFO_BLOCK_SIZE] == (1, 4096, 32 << 20)
    assert out.session.structured and out.session.contexts == (ALLOCATION_ID,)


def test_negotiation_meta_context_for_another_export_is_not_kept():
    n = Negotiation(Catalogue(a=4096, b=4096))
    n.handle(P.OPT_STRUCTURED_REPLY, b"")
    n.handle(P.OPT_SET_META_CONTEXT, P.encode_meta_context_request("a", [P.BASE_ALLOCATION]))
    out = n.handle(P.OPT_GO, P.encode_export_request("b"))
    assert out.session.contexts == ()


def test_negotiation_errors_keep_the_session():
    n = Negotiation(Catalogue(disk=4096, ro=4096))
    cases = [
        (P.OPT_PEEK_EXPORT, b"", P.REP_ERR_UNSUP),
        (1234, b"xyz", P.REP_ERR_UNSUP),
        (P.OPT_LIST, b"x", P.REP_ERR_INVALID),
        (P.OPT_GO, b"\0", P.REP_ERR_INVALID),
        (P.OPT_INFO, P.encode_export_request("nope"), P.REP_ERR_UNKNOWN),
        (P.OPT_INFO, P.encode_export_request(""), P.REP_ERR_UNKNOWN),
        (P.OPT_STARTTLS, b"", P.REP_ERR_POLICY),
        (P.OPT_SET_META_CONTEXT, P.encode_meta_context_request("disk", []), P.REP_ERR_INVALID),
    ]
    for opt, data, want in cases:
        got = replies(n.handle(opt, data))
        assert got[-1][:2] == (opt, want), (opt, got)
        assert got[-1][2], "error replies carry a message"
    listing = replies(n.handle(P.OPT_LIST, b""))
    assert [P.parse_rep_server(d)[0] for _, r, d in listing if r == P.REP_SERVER] == ["disk", "ro"]
    out = n.handle(P.OPT_INFO, P.encode_export_request("ro"))
    _, flags = dict(P.parse_info(d) for _, r, d in replies(out) if r == P.REP_INFO)[P.INFO_EXPORT]
    assert flags & P.FLAG_READ_ONLY and not flags & P.FLAG_SEND_TRIM
    assert n.handle(P.OPT_GO, P.encode_export_request("disk")).action is Action.TRANSMISSION


def test_negotiation_list_meta_context_wildcards():
    n = Negotiation(Catalogue(disk=4096))
    n.handle(P.OPT_STRUCTURED_REPLY, b"")
    for queries in ([], ["base:"], ["base:allocation", "base:"]):
        got = replies(n.handle(P.OPT_LIST_META_CONTEXT,
                               P.encode_meta_context_request("disk", queries)))
        assert [P.parse_rep_meta_context(d)[1] for _, r, d in got if r == P.REP_META_CONTEXT] \
            == [P.BASE_ALLOCATION]
    got = replies(n.handle(P.OPT_LIST_META_CONTEXT,
                           P.encode_meta_context_request("disk", ["nocolon"])))
    assert got[-1][1] == P.REP_ERR_INVALID


def test_negotiation_export_name():
    n = Negotiation(Catalogue(disk=4096), P.FLAG_C_FIXED_NEWSTYLE)
    out = n.handle(P.OPT_EXPORT_NAME, b"disk")
    assert out.action is Action.TRANSMISSION and len(out.replies[0]) == 134
    assert Negotiation(Catalogue()).handle(P.OPT_EXPORT_NAME, b"x").action is Action.CLOSE


def test_negotiation_forced_tls():
    n = Negotiation(Catalogue(disk=4096), tls=True)
    assert replies(n.handle(P.OPT_LIST, b""))[0][1] == P.REP_ERR_TLS_REQD
    assert n.handle(P.OPT_EXPORT_NAME, b"disk").action is Action.CLOSE
    n.handle(P.OPT_STRUCTURED_REPLY, b"")  # refused: not remembered
    out = n.handle(P.OPT_STARTTLS, b"")
    assert out.action is Action.STARTTLS and replies(out)[0][1] == P.REP_ACK
    n.tls_started()
    assert replies(n.handle(P.OPT_STARTTLS, b""))[0][1] == P.REP_ERR_INVALID
    out = n.handle(P.OPT_GO, P.encode_export_request("disk"))
    assert out.action is Action.TRANSMISSION and not out.session.structured


def test_negotiation_refusal_and_shutdown():
    n = Negotiation(Catalogue(disk=4096), refusal="too many clients")
    out = n.handle(P.OPT_GO, P.encode_export_request("disk"))
    assert out.action is Action.CLOSE
    assert replies(out)[0][1:] == (P.REP_ERR_POLICY, b"too many clients")
    n = Negotiation(Catalogue(disk=4096), shutting_down=lambda: True)
    assert replies(n.handle(P.OPT_LIST, b""))[0][1] == P.REP_ERR_SHUTDOWN
    assert n.handle(P.OPT_ABORT, b"ignored").action is Action.CLOSE


# ------------------------------------------------------------------ fuzzing

KNOWN_OPTIONS = list(P.OPTION_NAMES) + [0, 11, 12, 2**31, 2**32 - 1]


def option_data():
    name = st.sampled_from(["disk", "ro", "", "nope", "d\0x", "é"])
    structured = st.one_of(
        st.builds(lambda n, i: P.encode_export_request(n.replace("\0", ""), i), name,
                  st.lists(st.integers(0, 65535), max_size=6)),
        st.builds(lambda n, q: P.encode_meta_context_request(n.replace("\0", ""), q), name,
                  st.lists(st.sampled_from(["base:allocation", "base:", "x:y", "nocolon", ":",
                                            "qemu:dirty-bitmap:a"]), max_size=4)),
    )
    return st.one_of(st.binary(max_size=64), structured,
                     structured.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(
                         lambda k: b[:k])),  # truncated
                     structured.flatmap(lambda b: st.binary(min_size=1, max_size=8).map(
                         lambda junk: b + junk)))  # with trailing bytes


@given(st.data())
def _negotiation_never_breaks(data):
    n = Negotiation(Catalogue(disk=1 << 20, ro=4096),
                    data.draw(st.sampled_from([0, 1, 3])), tls=data.draw(st.booleans()))
    for _ in range(data.draw(st.integers(1, 12))):
        opt = data.draw(st.sampled_from(KNOWN_OPTIONS))
        out = n.handle(opt, data.draw(option_data()))
        if opt == P.OPT_EXPORT_NAME and out.action is Action.TRANSMISSION:
            assert len(out.replies) == 1  # the export's size and flags, no option reply
            return
        got = replies(out)
        assert all(o == opt for o, _, _ in got)
        final = got[-1][1] if got else None
        if out.action is Action.TRANSMISSION:
            assert final == P.REP_ACK and out.session.size == out.export.size
            return
        if out.action is Action.STARTTLS:
            n.tls_started()
            continue
        if out.action is Action.CLOSE:
            return
        assert final == P.REP_ACK or final & (1 << 31), got
        for _, rep, body in got[:-1]:
            assert rep in (P.REP_SERVER, P.REP_INFO, P.REP_META_CONTEXT)


def test_negotiation_fuzz(run_slow):
    budget(run_slow, 300, 10000)(_negotiation_never_breaks)()


def test_parsers_fuzz(run_slow):
    parsers = [P.parse_export_request, P.parse_meta_context_request, P.parse_request,
               P.parse_option_header, P.parse_client_flags]

    @budget(run_slow, 300, 20000)
    @given(st.sampled_from(parsers), st.binary(max_size=80))
    def check(parser, data):
        try:
            parser(data)
        except (P.ProtocolError, P.OptionError):
            pass

    check()


def test_check_request_fuzz(run_slow):
    @budget(run_slow, 300, 20000)
    @given(st.integers(0, 2**16 - 1), st.integers(0, 10), st.integers(0, 2**64 - 1),
           st.integers(0, 2**32 - 1), st.sampled_from([SESSION, RO]))
    def check(flags, kind, off, length, session):
        error, message = P.check_request(P.Request(flags, kind, 1, off, length), session)
        if error == 0:  # only what lies within the export, with flags it offered
            assert off + length <= session.size
            assert kind in P.COMMAND_NAMES
        else:
            assert error in P.ERROR_NAMES and message

    check()
