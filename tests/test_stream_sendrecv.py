"""Send and receive between pools: round trips of chains against the bytes
of the source, sharing (usage) as in the source, hostile streams refused
with nothing left behind, and resuming after the receiver was killed."""
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import cowblock
from cowblock import sendrecv
from cowblock import stream as S
from conftest import read_state

BS = 65536
SIZE = 2 * 127 * BS + 3 * 4096 + 1024  # over a leaf, a partial last block and sub-block


def scramble(dev, rnd, n=20):
    for _ in range(n):
        off = rnd.randrange(0, dev.size)
        ln = min(rnd.choice([1, 600, 4096, 9000, 70000, 2 * BS + 5]), dev.size - off)
        r = rnd.random()
        if r < 0.25:
            dev.discard(off, ln)
        elif r < 0.35:
            dev.write(off, bytes(ln))
        else:
            dev.write(off, rnd.randbytes(ln))


def transfer(src_dev, dst_pool, name=None, base=None, dst_base=None):
    buf = io.BytesIO()
    res = src_dev.send(buf, base, progress=False)
    assert res["stream_bytes"] == len(buf.getvalue())
    buf.seek(0)
    dev = dst_pool.receive(name or src_dev.name, buf, dst_base, progress=False)
    return dev, res, buf.getvalue()


def usage_table(pool):
    u = pool.usage()
    return {name: (d.mapped, d.exclusive, d.shared) for name, d in u.devices.items()}


def same_bytes(a, b):
    assert a.size == b.size
    for off in range(0, a.size, 1 << 20):
        n = min(1 << 20, a.size - off)
        assert a.read(off, n) == b.read(off, n), (a.name, off)


@pytest.mark.parametrize("seed", range(3))
def test_chain_round_trip_reads_and_shares_as_the_source(tmp_path, seed):
    """A chain of snapshots with random writes and discards, and a branch:
    the root sent full, every later link incremental; then every link full
    and incremental into a third pool, checked byte for byte."""
    rnd = random.Random(seed)
    with cowblock.Pool.create(tmp_path / "p", 64 << 20, BS) as p, \
            cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        a = p.create_device("a", SIZE)
        scramble(a, rnd)
        links = []  # (name, base name or None)
        prev = None
        for i in range(3):
            name = f"a@{i}"
            p.snapshot("a", name, readonly=True)
            links.append((name, prev))
            prev = name
            scramble(a, rnd)
        p.snapshot("a@0", "branch")
        scramble(p.device("branch"), rnd, 8)
        p.snapshot("branch", "branch@0", readonly=True)
        links.append(("branch@0", "a@0"))
        links.append(("a", "a@2"))  # the writable heads, through a snapshot
        links.append(("branch", "branch@0"))
        for name, base in links:
            dev, res, raw = transfer(p.device(name), q, name, base)
            assert res["incremental"] == (base is not None)
            same_bytes(p.device(name), dev)
            assert dev.readonly == p.device(name).readonly
        assert q.devices() == p.devices()
        assert q.used == p.used
        assert usage_table(q) == usage_table(p)
        assert p.check().ok and q.check().ok
        assert not [n for n in q.devices() if n.startswith(".")]
        # every link, full and incremental, into a third pool
        with cowblock.Pool.create(tmp_path / "r", 64 << 20, BS) as r:
            for name, base in links:
                if base is None:
                    continue
                transfer(p.device(base), r, f"{name}.base")
                full, _, _ = transfer(p.device(name), r, f"{name}.full")
                inc, _, _ = transfer(p.device(name), r, f"{name}.inc", base, f"{name}.base")
                same_bytes(p.device(name), full)
                same_bytes(p.device(name), inc)
            assert r.check().ok


def test_an_incremental_stream_is_as_small_as_the_change(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 64 << 20, BS) as p, \
            cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        a = p.create_device("a", 16 << 20)
        a.write(0, os.urandom(16 << 20))
        p.snapshot("a", "s0", readonly=True)
        offsets = random.Random(5).sample(range(0, 16 << 20, BS), 40)
        for off in offsets:  # 4 KiB into 40 distinct 64 KiB blocks
            a.write(off + 8192, os.urandom(4096))
        p.snapshot("a", "s1", readonly=True)
        transfer(p.device("s0"), q)
        _, res, raw = transfer(p.device("s1"), q, base="s0")
        assert res["data_bytes"] == 40 * 4096
        assert len(raw) <= 40 * (4096 + 8 + 20) + 400
        assert q.used == p.used


def test_a_writable_device_is_sent_as_it_was_when_the_send_began(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 64 << 20, BS) as p, \
            cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        a = p.create_device("a", 4 << 20)
        before = os.urandom(4 << 20)
        a.write(0, before)
        calls = []

        def progress(done, total):
            if not calls:
                a.write(0, b"\xff" * (4 << 20))  # while the send runs
            calls.append(done)

        buf = io.BytesIO()
        a.send(buf, progress=progress)
        assert calls and p.devices() == ["a"]  # the send's snapshot is gone
        buf.seek(0)
        dev = q.receive("a", buf, progress=False)
        assert dev.read(0, 4 << 20) == before
        assert not dev.readonly


def test_base_must_be_read_only_and_of_the_same_size(tmp_path):
    with cowblock.Pool.create(tmp_path / "p", 16 << 20, BS) as p:
        a = p.create_device("a", 1 << 20)
        p.snapshot("a", "w")
        p.create_device("small", 1 << 19)
        p.snapshot("small", "small@", readonly=True)
        with pytest.raises(cowblock.InvalidArgumentError, match="writable"):
            a.send(io.BytesIO(), "w")
        with pytest.raises(cowblock.InvalidArgumentError, match="one size"):
            a.send(io.BytesIO(), "small@")


# --------------------------------------------------------------------------
# Hostile streams: refused, nothing left behind, the pool unchanged

@pytest.fixture
def pair(tmp_path, location):
    """A source pool in a directory and a receiving pool at ``location`` (each backend)."""
    p = cowblock.Pool.create(tmp_path / "p", 64 << 20, BS)
    q = cowblock.Pool.create(location, 64 << 20, BS)
    a = p.create_device("a", 2 << 20)
    rnd = random.Random(9)
    scramble(a, rnd, 10)
    p.snapshot("a", "s0", readonly=True)
    scramble(a, rnd, 6)
    p.snapshot("a", "s1", readonly=True)
    transfer(p.device("s0"), q)
    full = io.BytesIO()
    p.device("s1").send(full, progress=False)
    inc = io.BytesIO()
    p.device("s1").send(inc, "s0", progress=False)
    yield p, q, full.getvalue(), inc.getvalue()
    p.close()
    q.close()


def snapshot_of(q):
    state = json.loads(read_state(q, sendrecv.STATE_FILE))
    return q.devices(), q.used, usage_table(q), state


def refused(q, raw, *, base=None, exc=S.StreamError, match=None):
    before = snapshot_of(q)
    with pytest.raises(exc, match=match) as ei:
        q.receive("s1", io.BytesIO(raw), base, progress=False)
    q.flush()
    assert snapshot_of(q) == before
    return ei.value


def spans(raw):
    out, pos = [], len(S.MAGIC)
    while pos < len(raw):
        rtype, _, length, seq = S.FRAME.unpack_from(raw, pos)
        out.append((pos, pos + S.FRAME.size + length + S.CRC.size, rtype, seq))
        pos = out[-1][1]
    return out


def test_truncated_streams_are_refused_leaving_nothing(pair):
    p, q, full, inc = pair
    rnd = random.Random(1)
    for raw in (full, inc):
        cuts = {0, 5, len(S.MAGIC), len(raw) - 1}
        for start, end, _, _ in spans(raw):
            cuts |= {start, start + 1, end - 1}
        cuts |= set(rnd.sample(range(len(raw)), 30))
        for cut in sorted(c for c in cuts if c < len(raw)):
            err = refused(q, raw[:cut])
            assert "truncated" in str(err) or "magic" in str(err)
            assert err.offset is not None
    assert q.check().ok


def test_damaged_streams_are_refused_naming_the_record(pair):
    p, q, full, inc = pair
    rnd = random.Random(2)
    for raw in (full, inc):
        recs = spans(raw)
        for start, end, rtype, seq in recs:
            for i in {start, start + 3, start + 9, start + 16, (start + end) // 2, end - 1}:
                bad = bytearray(raw)
                bad[i] ^= 1 << rnd.randrange(8)
                err = refused(q, bytes(bad))
                assert err.offset == start, str(err)
                assert f"offset {start}" in str(err)
    assert q.check().ok


def test_reordered_records_are_refused(pair):
    p, q, full, inc = pair
    recs = spans(full)
    assert len(recs) >= 4
    body = [full[s:e] for s, e, _, _ in recs]
    swapped = S.MAGIC + body[0] + body[2] + body[1] + b"".join(body[3:])
    err = refused(q, swapped, match="out of order")
    assert err.record == 2


def test_a_stream_for_another_block_size_is_refused(tmp_path, pair):
    p, q, full, inc = pair
    with cowblock.Pool.create(tmp_path / "big", 64 << 20, 2 * BS) as big:
        before = big.devices(), big.used
        with pytest.raises(S.StreamError, match="block size of 65536 bytes; this pool's is 131072"):
            big.receive("s1", io.BytesIO(full), progress=False)
        assert (big.devices(), big.used) == before


def test_a_base_that_does_not_match_is_refused(tmp_path, pair):
    p, q, full, inc = pair
    # s1's stream is relative to s0; give it another device as the base
    transfer(p.device("a"), q, "other")
    refused(q, inc, base="other", exc=cowblock.InvalidArgumentError, match="does not match")
    refused(q, inc, base="nope", exc=cowblock.NotFoundError)
    # the base deleted and made again under its name is not the base
    q.delete("s0")
    transfer(p.device("s0"), q, "s0")  # a new receive: a new record
    q.receive("s1", io.BytesIO(inc), progress=False)  # matches again
    q.delete("s1")
    q.delete("s0")
    dev = q.create_device("s0", 2 << 20)
    assert dev
    refused(q, inc, base="s0", exc=cowblock.InvalidArgumentError, match="not made by a receive|not the device")
    # with no base at all
    with cowblock.Pool.create(tmp_path / "empty", 64 << 20, BS) as e:
        with pytest.raises(cowblock.NotFoundError, match="receive the base first"):
            e.receive("s1", io.BytesIO(inc), progress=False)
        assert e.devices() == []


def test_an_existing_name_is_refused(pair):
    p, q, full, inc = pair
    with pytest.raises(cowblock.ExistsError):
        q.receive("s0", io.BytesIO(full), progress=False)


# --------------------------------------------------------------------------
# Resuming

class Cut(io.RawIOBase):
    """Reads from raw but fails after `limit` bytes."""

    def __init__(self, raw, limit):
        self._b = io.BytesIO(raw)
        self._left = limit

    def readable(self):
        return True

    def read(self, n=-1):
        if self._left <= 0:
            raise OSError("connection lost")
        n = min(n if n >= 0 else self._left, self._left)
        b = self._b.read(n)
        self._left -= len(b)
        return b


def big_chain(tmp_path):
    p = cowblock.Pool.create(tmp_path / "p", 64 << 20, BS)
    a = p.create_device("a", 8 << 20)
    a.write(0, os.urandom(8 << 20))
    p.snapshot("a", "s0", readonly=True)
    rnd = random.Random(3)
    for off in rnd.sample(range(0, 8 << 20, 8192), 500):
        a.write(off, os.urandom(4096))
    p.snapshot("a", "s1", readonly=True)
    return p


def test_resumable_receive_keeps_what_came_and_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(sendrecv, "CHECKPOINT_RECORDS", 16)
    p = big_chain(tmp_path)
    with p, cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        transfer(p.device("s0"), q)
        inc = io.BytesIO()
        p.device("s1").send(inc, "s0", progress=False)
        inc = inc.getvalue()
        with pytest.raises(sendrecv.ReceiveInterrupted) as ei:
            q.receive("s1", Cut(inc, len(inc) // 3), resumable=True, progress=False)
        token = ei.value.token
        assert sendrecv.resume_token(q, "s1") == token
        assert "s1" not in q.devices()
        with pytest.raises(cowblock.ExistsError, match="interrupted receive"):
            q.receive("s1", io.BytesIO(inc), progress=False)
        # the sender writes the rest; it is shorter than the whole
        rest = io.BytesIO()
        p.device("s1").send(rest, "s0", resume=token, progress=False)
        assert len(rest.getvalue()) < len(inc) * 0.8
        # cut again, resume again with the rest, then finish
        with pytest.raises(sendrecv.ReceiveInterrupted) as ei2:
            q.receive("s1", Cut(rest.getvalue(), len(rest.getvalue()) // 2), resume=token,
                      progress=False)
        token2 = ei2.value.token
        assert token2 != token
        with pytest.raises(cowblock.InvalidArgumentError, match="not the one"):
            q.receive("s1", io.BytesIO(inc), resume=token, progress=False)
        dev = q.receive("s1", io.BytesIO(inc), resume=token2, progress=False)  # the whole again
        same_bytes(p.device("s1"), dev)
        assert q.used == p.used
        assert usage_table(q)["s1"][0] == usage_table(p)["s1"][0]
        assert sendrecv.resume_token(q, "s1") is None
        assert not [n for n in q.devices() if n.startswith(".")]
        assert q.check().ok


def test_abort_drops_an_interrupted_receive(tmp_path, monkeypatch):
    monkeypatch.setattr(sendrecv, "CHECKPOINT_RECORDS", 16)
    p = big_chain(tmp_path)
    with p, cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        before = q.devices(), q.used
        full = io.BytesIO()
        p.device("s0").send(full, progress=False)
        with pytest.raises(sendrecv.ReceiveInterrupted):
            q.receive("s0", Cut(full.getvalue(), 3 << 20), resumable=True, progress=False)
        assert q.used > before[1]
        assert sendrecv.abort_receive(q, "s0")
        q.flush()
        assert (q.devices(), q.used) == before
        assert sendrecv.resume_token(q, "s0") is None


def test_without_resumable_a_failed_receive_leaves_nothing(tmp_path):
    p = big_chain(tmp_path)
    with p, cowblock.Pool.create(tmp_path / "q", 64 << 20, BS) as q:
        full = io.BytesIO()
        p.device("s0").send(full, progress=False)
        with pytest.raises(OSError, match="connection lost"):
            q.receive("s0", Cut(full.getvalue(), 3 << 20), progress=False)
        q.flush()
        assert q.devices() == [] and q.used == 0
        assert sendrecv.resume_token(q, "s0") is None


RECEIVER = r"""
import sys, time
import cowblock
from cowblock import sendrecv
sendrecv.CHECKPOINT_RECORDS = 8

class Slow:
    def __init__(self, f):
        self.f = f
    def read(self, n):
        time.sleep(0.0005)
        return self.f.read(n)

pool = cowblock.Pool.open(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    pool.receive("s1", Slow(f), resumable=True, progress=False)
pool.close()
print("done")
"""


@pytest.mark.parametrize("seed", range(3))
def test_resume_after_the_receiver_is_killed(tmp_path, seed):
    p = big_chain(tmp_path)
    rnd = random.Random(seed)
    with p:
        qpath = str(tmp_path / "q")
        with cowblock.Pool.create(qpath, 64 << 20, BS) as q:
            transfer(p.device("s0"), q)
        stream = tmp_path / "s1.stream"
        with open(stream, "wb") as f:
            p.device("s1").send(f, "s0", progress=False)
        script = tmp_path / "recv.py"
        script.write_text(RECEIVER)
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cowblock.__file__)))
        child = subprocess.Popen([sys.executable, str(script), qpath, str(stream)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.4 + rnd.random() * 0.8)
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        with cowblock.Pool.open(qpath) as q:
            token = sendrecv.resume_token(q, "s1")
            if "s1" not in q.devices():
                if token is None:  # killed before anything was kept
                    dev = q.receive("s1", open(stream, "rb"), progress=False)
                else:
                    rest = io.BytesIO()
                    p.device("s1").send(rest, "s0", resume=token, progress=False)
                    rest.seek(0)
                    dev = q.receive("s1", rest, resume=token, progress=False)
            else:
                dev = q.device("s1")
            same_bytes(p.device("s1"), dev)
            assert not [n for n in q.devices() if n.startswith(".")]
            assert q.check().ok
            assert q.used == p.used  # shared with s0 as in the source
            assert usage_table(q)["s1"][0] == usage_table(p)["s1"][0]


# --------------------------------------------------------------------------
# The command line

def cli(*args, stdin=None, check=True):
    r = subprocess.run([sys.executable, "-m", "cowblock", *args], input=stdin,
                       capture_output=True)
    if check and r.returncode:
        raise AssertionError(r.stderr.decode())
    return r


def test_cli_send_receive_pipe_and_resume(tmp_path):
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    cli("--pool", pa, "pool", "create", "--size", "64M")
    cli("--pool", pb, "pool", "create", "--size", "64M")
    raw = tmp_path / "img"
    raw.write_bytes(os.urandom(3 << 20))
    cli("--pool", pa, "device", "import", "d", str(raw))
    cli("--pool", pa, "device", "snapshot", "d", "d@1", "--readonly")
    full = cli("--pool", pa, "device", "send", "d@1").stdout
    assert full.startswith(S.MAGIC)
    cli("--pool", pb, "device", "receive", "d@1", stdin=full)
    with cowblock.Pool.open(pa) as a:
        a.device("d").write(4096, b"x" * 4096)
    inc = cli("--pool", pa, "device", "send", "d", "--from", "d@1").stdout
    r = cli("--pool", pb, "device", "receive", "d", "--resumable", stdin=inc[:len(inc) - 10],
            check=False)
    assert r.returncode == 1 and b"truncated" in r.stderr
    token = r.stdout.decode().strip()
    shown = cli("--pool", pb, "device", "receive", "d", "--show-token").stdout.decode().strip()
    assert shown == token
    cli("--pool", pb, "device", "receive", "d", "--resume", token, stdin=inc)
    out = tmp_path / "out"
    cli("--pool", pb, "device", "export", "d", str(out))
    want = bytearray(raw.read_bytes())
    want[4096:8192] = b"x" * 4096
    assert out.read_bytes()[:len(want)] == bytes(want)
    r = cli("--pool", pb, "device", "receive", "e", "--resume", token, stdin=inc, check=False)
    assert r.returncode == 1
    r = cli("--pool", pb, "device", "receive", "zz", stdin=b"garbage, not a stream", check=False)
    assert r.returncode == 1 and b"bad magic" in r.stderr
    assert "zz" not in cli("--pool", pb, "device", "ls").stdout.decode()
    r = cli("--pool", pb, "pool", "check")
    assert r.returncode == 0


def test_cli_merge_of_two_increments_applies_as_both(tmp_path):
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    with cowblock.Pool.create(pa, 64 << 20, BS) as p:
        a = p.create_device("a", 4 << 20)
        rnd = random.Random(4)
        scramble(a, rnd)
        for i in range(3):
            p.snapshot("a", f"a@{i}", readonly=True)
            scramble(a, rnd, 8)
        with cowblock.Pool.create(pb, 64 << 20, BS) as q:
            transfer(p.device("a@0"), q)
        for i in (1, 2):
            with open(tmp_path / f"s{i}", "wb") as f:
                p.device(f"a@{i}").send(f, f"a@{i - 1}", progress=False)
    cli("stream", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "-o",
        str(tmp_path / "m"))
    cli("--pool", pb, "device", "receive", "a@2", "-i", str(tmp_path / "m"))
    r = cli("stream", "merge", str(tmp_path / "s2"), str(tmp_path / "s1"), check=False)
    assert r.returncode in (1, 2) and b"not relative" in r.stderr
    with cowblock.Pool.open(pa) as p, cowblock.Pool.open(pb) as q:
        same_bytes(p.device("a@2"), q.device("a@2"))
        assert q.check().ok
