"""The stream format (cowblock.stream) on its own: round trips, and hostile
input -- every truncation point, every bit of every field flipped, records
out of order -- each refused with a StreamError naming the record and the
offset where it starts."""
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cowblock import stream as S

SUB = 4096
BS = 65536


def header(size=8 * BS, incremental=False, name="dev"):
    src = S.Identity(bytes(range(16)), 7, 42, 1234567890)
    base = S.Identity(bytes(range(16, 32)), 3, 40, 99) if incremental else None
    return S.Header(block_size=BS, sub_block_size=SUB, size=size, name=name, source=src,
                    readonly=True, base=base, base_name="basedev" if incremental else "")


def encode(h, extents):
    out = io.BytesIO()
    w = S.StreamWriter(out, h)
    for kind, off, val in extents:
        if kind == "D":
            w.data(off, val)
        else:
            w.zero(off, val)
    w.end()
    return out.getvalue()


def decode(raw, **kw):
    r = S.StreamReader(io.BytesIO(raw), **kw)
    return r.header, list(r)


SAMPLE = [("D", 0, b"a" * SUB), ("Z", SUB, 3 * SUB), ("D", 2 * BS, bytes(range(256)) * 48),
          ("Z", 5 * BS, BS), ("D", 8 * BS - SUB, b"z" * SUB)]


@st.composite
def extent_lists(draw):
    size = draw(st.integers(1, 64)) * SUB
    cuts = sorted(draw(st.sets(st.integers(0, size // SUB), max_size=12)) | {0, size // SUB})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        kind = draw(st.sampled_from("DZ-"))
        if kind == "D":
            seed = draw(st.binary(min_size=1, max_size=32))
            n = (b - a) * SUB
            out.append(("D", a * SUB, (seed * (n // len(seed) + 1))[:n]))
        elif kind == "Z":
            out.append(("Z", a * SUB, (b - a) * SUB))
    return size, out


@settings(max_examples=60, deadline=None)
@given(extent_lists(), st.booleans(), st.text(min_size=1, max_size=20).filter(
    lambda t: "\0" not in t and len(t.encode()) <= 127))
def test_round_trip(case, incremental, name):
    size, extents = case
    h = header(size=size, incremental=incremental, name=name)
    got_h, recs = decode(encode(h, extents))
    assert got_h == h
    back = [("D", r.offset, r.data) if isinstance(r, S.Data) else ("Z", r.offset, r.length)
            for r in recs]
    assert back == extents
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))


def test_the_last_extent_may_end_short_at_the_device_end():
    h = header(size=BS + 512)
    _, recs = decode(encode(h, [("D", BS, b"q" * 512)]))
    assert recs[0].data == b"q" * 512


def test_every_truncation_point_is_refused():
    raw = encode(header(), SAMPLE)
    for cut in range(len(raw)):
        with pytest.raises(S.StreamError) as ei:
            decode(raw[:cut])
        assert "offset" in str(ei.value), cut
        assert ei.value.offset is not None and ei.value.offset <= cut


def _record_spans(raw):
    """(start, end, type) of every record of a well-formed stream."""
    spans = []
    pos = len(S.MAGIC)
    while pos < len(raw):
        rtype, flags, length, seq = S.FRAME.unpack_from(raw, pos)
        end = pos + S.FRAME.size + length + S.CRC.size
        spans.append((pos, end, rtype, seq))
        pos = end
    return spans


def test_every_flipped_bit_is_refused_naming_its_record():
    raw = encode(header(incremental=True),
                 [("D", 0, b"a" * SUB), ("Z", SUB, 3 * SUB), ("D", 7 * BS, b"e" * SUB)])
    spans = _record_spans(raw)
    # every byte of every frame, header and END; one in 61 of the data
    data = {i for s in spans if s[2] == S.T_DATA
            for i in range(s[0] + S.FRAME.size + S.DATA_FIXED.size, s[1] - S.CRC.size)}
    for i in range(len(raw)):
        if i in data and i % 61:
            continue
        for bit in (0, 3, 7):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(S.StreamError) as ei:
                decode(bytes(bad))
            err = ei.value
            if i < len(S.MAGIC):
                assert err.offset == 0 and "magic" in str(err)
                continue
            start, end, rtype, seq = next(s for s in spans if s[0] <= i < s[1])
            # a bit flipped in a record is caught at that record (its
            # checksum, or a length or type that no longer fits it)
            assert err.offset == start, (i, bit, str(err))
            if S.FRAME.size <= i - start:  # not in the frame: seq and type are intact
                assert err.record == seq
                assert err.record_type == S.TYPE_NAMES[rtype]


def test_records_out_of_order_are_refused():
    raw = encode(header(), SAMPLE)
    spans = _record_spans(raw)
    hdr, recs, end = spans[0], spans[1:-1], spans[-1]
    body = lambda s: raw[s[0]:s[1]]  # noqa: E731
    swapped = raw[:hdr[1]] + body(recs[1]) + body(recs[0]) + b"".join(
        body(s) for s in recs[2:]) + body(end)
    with pytest.raises(S.StreamError, match="out of order") as ei:
        decode(swapped)
    assert ei.value.record == 2 and ei.value.offset == hdr[1]
    dropped = raw[:hdr[1]] + b"".join(body(s) for s in recs[1:]) + body(end)
    with pytest.raises(S.StreamError, match="sequence number 2 where 1"):
        decode(dropped)
    repeated = raw[:recs[0][1]] + body(recs[0]) + raw[recs[0][1]:]
    with pytest.raises(S.StreamError, match="out of order"):
        decode(repeated)


def test_extents_out_of_order_or_overlapping_are_refused():
    for extents, what in [
        ([("D", 2 * SUB, b"a" * SUB), ("D", 0, b"b" * SUB)], "out of order"),
        ([("D", 0, b"a" * 2 * SUB), ("Z", SUB, SUB)], "out of order"),
        ([("D", 100, b"a" * SUB)], "not a multiple of the sub-block"),
        ([("D", 0, b"a" * 100)], "does not end at the device's end"),
        ([("Z", 7 * BS, 2 * BS)], "outside the device"),
        ([("Z", 0, 0)], "of 0 bytes"),
    ]:
        with pytest.raises(S.StreamError, match=what) as ei:
            decode(encode(header(), extents))
        assert ei.value.record == len(extents)  # the record at fault is the last


def test_end_totals_and_stream_checksum_are_checked():
    raw = bytearray(encode(header(), SAMPLE))
    start, end, rtype, seq = _record_spans(bytes(raw))[-1]
    assert rtype == S.T_END

    def with_end(**change):
        recs, dbytes, zbytes, sbytes, crc, r = S.END_BODY.unpack_from(raw, start + S.FRAME.size)
        vals = dict(recs=recs, dbytes=dbytes, zbytes=zbytes, sbytes=sbytes, crc=crc, r=r)
        vals.update(change)
        body = S.END_BODY.pack(*vals.values())
        rec = S.StreamWriter._frame(S.T_END, 0, body, seq)
        return bytes(raw[:start]) + rec

    decode(with_end())
    with pytest.raises(S.StreamError, match="totals do not match"):
        decode(with_end(recs=4))
    with pytest.raises(S.StreamError, match="stream checksum mismatch") as ei:
        decode(with_end(crc=1))
    assert ei.value.record_type == "END" and ei.value.offset == start
    with pytest.raises(S.StreamError, match="trailing bytes"):
        decode(bytes(raw) + b"x")


def test_unknown_records_are_skipped_only_with_the_may_skip_flag():
    out = io.BytesIO()
    w = S.StreamWriter(out, header())
    w.data(0, b"a" * SUB)
    w.skippable(77, b"something new")
    w.zero(SUB, SUB)
    w.end()
    _, recs = decode(out.getvalue())
    assert [type(r) for r in recs] == [S.Data, S.Zero]
    # the same record without the flag: refused
    raw = out.getvalue()
    start = next(s for s in _record_spans(raw) if s[2] == 77)
    frame = bytearray(raw[start[0]:start[1] - 4])
    struct.pack_into("<H", frame, 2, 0)
    fixed = bytes(frame) + S.CRC.pack(S.crc32c(bytes(frame)))
    raw2 = raw[:start[0]] + fixed + raw[start[1]:]
    with pytest.raises(S.StreamError, match="unknown record type 77 without the may-skip"):
        decode(raw2)


def test_header_fields_are_checked():
    good = header().encode_payload()

    def stream_with(payload):
        return S.MAGIC + S.StreamWriter._frame(S.T_HEADER, 0, payload)

    def field(off, fmt, value):
        p = bytearray(good)
        struct.pack_into(fmt, p, off, value)
        return bytes(p)

    for payload, what in [
        (field(0, "<H", 2), "version 2"),
        (field(4, "<I", 1), "incompatible feature"),
        (field(12, "<I", 3000), "block size 3000"),
        (field(16, "<I", 3 * BS), "sub-block size"),
        (field(20, "<I", 0x80), "unknown header flags"),
        (field(24, "<Q", 1000), "device size 1000"),
        (field(2, "<H", 0), "name lengths"),
        (good[:50], "shorter than its fixed part"),
        (good + b"x", "its fields say"),
        (field(64, "<B", 1), "base fields are set in a full stream"),
    ]:
        with pytest.raises(S.StreamError, match=what) as ei:
            decode(stream_with(payload) + b"\0" * 100)
        assert ei.value.record == 0 and ei.value.record_type == "HEADER"
        assert ei.value.offset == len(S.MAGIC)


def test_oversized_payload_length_is_refused_before_reading_it():
    frame = S.FRAME.pack(S.T_HEADER, 0, S.MAX_PAYLOAD + 1, 0)
    with pytest.raises(S.StreamError, match="over the limit"):
        decode(S.MAGIC + frame)


def test_resume_tokens_round_trip_and_refuse_damage():
    src = header().source
    st_ = S.ResumeState(next_seq=9, stream_offset=12345, records=8, data_bytes=777,
                        zero_bytes=4096, crc=0xDEADBEEF, extent_end=65536)
    tok = S.encode_token(src, 0x1234, st_)
    assert S.decode_token(tok) == (src, 0x1234, st_)
    for bad in [tok[:-2], tok[:10] + ("A" if tok[10] != "A" else "B") + tok[11:], "", "!!"]:
        with pytest.raises(ValueError, match="resume token"):
            S.decode_token(bad)


def test_a_continued_stream_carries_on_from_its_resume_record():
    h = header()
    whole = encode(h, SAMPLE)
    # the receiver's state after the first two records
    r = S.StreamReader(io.BytesIO(whole))
    it = iter(r)
    next(it), next(it)
    state = S.ResumeState(**vars(r.st))
    out = io.BytesIO()
    w = S.StreamWriter(out, h, resume=state)
    for kind, off, val in SAMPLE[2:]:
        w.data(off, val) if kind == "D" else w.zero(off, val)
    w.end()
    rest = S.StreamReader(io.BytesIO(out.getvalue()), resume=state,
                          expect_header_crc=r.header_crc)
    got = list(rest)
    assert [(x.offset) for x in got] == [e[1] for e in SAMPLE[2:]]
    assert rest.resumed
    # the whole stream again also continues: the first two are passed over
    again = list(S.StreamReader(io.BytesIO(whole), resume=state, expect_header_crc=r.header_crc))
    assert [x.seq for x in again] == [3, 4, 5]
    # a continuation from another point is refused
    other = S.ResumeState(**{**vars(state), "next_seq": 2})
    with pytest.raises(S.StreamError, match="continues from record"):
        list(S.StreamReader(io.BytesIO(out.getvalue()), resume=other))
    with pytest.raises(S.StreamError, match="header differs"):
        S.StreamReader(io.BytesIO(out.getvalue()), resume=state, expect_header_crc=1)


def apply(size, raws):
    """The bytes a device of ``size`` zeros holds after the streams (zeros
    for ZERO), and the streams' readers' headers."""
    buf = bytearray(size)
    for raw in raws:
        for r in S.StreamReader(io.BytesIO(raw)):
            if isinstance(r, S.Data):
                buf[r.offset:r.offset + r.length] = r.data
            else:
                buf[r.offset:r.offset + r.length] = bytes(r.length)
    return bytes(buf)


@settings(max_examples=60, deadline=None)
@given(extent_lists(), extent_lists(), st.booleans())
def test_merge_of_two_consecutive_streams_is_the_two_applied(c1, c2, full_first):
    size = max(c1[0], c2[0])
    h1 = header(size=size, incremental=not full_first)
    mid = S.Identity(bytes(16), 9, 50, 5)
    h1 = S.Header(**{**vars(h1), "source": mid})
    h2 = S.Header(**{**vars(header(size=size, incremental=True)), "base": mid})
    s1 = encode(h1, [e for e in c1[1]])
    s2 = encode(h2, [e for e in c2[1]])
    out = io.BytesIO()
    S.merge(io.BytesIO(s1), io.BytesIO(s2), out)
    merged = out.getvalue()
    h, _ = decode(merged)
    assert h.source == h2.source and h.base == h1.base
    assert apply(size, [merged]) == apply(size, [s1, s2])


def test_merge_refuses_streams_that_do_not_follow(tmp_path):
    s1 = encode(header(), SAMPLE)
    with pytest.raises(S.StreamError, match="not relative to the state"):
        S.merge(io.BytesIO(s1), io.BytesIO(s1), io.BytesIO())
